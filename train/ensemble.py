"""The ensemble family: the hybrid's and the gbm's calibrated probabilities, averaged with a weight.

The weight on the hybrid is fitted on the two components' out-of-sample predictions of hours
before the test hours (`fold_weights`: the previous folds' walk-forward rows, purged by the label
horizon), never on the hours it is scored on; 0.5 until enough such hours exist. A bundle holds
both component bundles in `hybrid/` and `gbm/` and its weight in metadata.json; no pickle.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.exchange import HOUR
from train.bundle_io import BundleError, bundle_family, bundle_feature_set, feature_metadata
from train.research_cache import THRESHOLD

COMPONENTS = ("hybrid", "gbm")
WEIGHT_GRID = np.linspace(0.0, 1.0, 21)
PROBA = ["p_sell", "p_hold", "p_buy"]


def blend(p_hybrid: np.ndarray, p_gbm: np.ndarray, weight: float) -> np.ndarray:
    return weight * np.asarray(p_hybrid) + (1.0 - weight) * np.asarray(p_gbm)


def fit_weight(p_hybrid: np.ndarray, p_gbm: np.ndarray, y: np.ndarray) -> float:
    """The weight on the hybrid (a 0.05 grid over [0, 1]) with the lowest log loss on `y`."""
    rows = np.arange(len(y))
    losses = [
        -np.log(np.clip(blend(p_hybrid, p_gbm, w)[rows, y], 1e-15, 1.0)).mean() for w in WEIGHT_GRID
    ]
    return float(WEIGHT_GRID[int(np.argmin(losses))])


def fold_weights(
    hybrid: pd.DataFrame,
    gbm: pd.DataFrame,
    labels: pd.Series,
    horizon: int,
    lookback_folds: int,
    min_hours: int,
) -> dict[int, float]:
    """Per test fold: the weight fitted on the `lookback_folds` folds before it.

    `hybrid` and `gbm` are walk-forward predictions (index time, columns fold + PROBA); only hours
    whose label was known before the fold's first test hour count (t + horizon < start).
    """
    both = hybrid[["fold", *PROBA]].join(gbm[PROBA], rsuffix="_g", how="inner")
    both = both.join(labels.rename("label"), how="inner").dropna(subset=["label"])
    weights = {}
    for fold in sorted(hybrid["fold"].unique()):
        start = hybrid.index[hybrid["fold"] == fold].min()
        known = both[(both["fold"] < fold) & (both["fold"] >= fold - lookback_folds)]
        known = known[known.index + horizon * HOUR < start]
        if len(known) < min_hours:
            weights[int(fold)] = 0.5
            continue
        y = known["label"].to_numpy(dtype=np.int64)
        g = known[[f"{c}_g" for c in PROBA]].to_numpy()
        weights[int(fold)] = fit_weight(known[PROBA].to_numpy(), g, y)
    return weights


def blend_folds(hybrid: pd.DataFrame, gbm: pd.DataFrame, weights: dict[int, float]) -> pd.DataFrame:
    """The ensemble's walk-forward predictions on the hours both components predicted, with the
    gbm's fold label threshold where it has one (both components label the same training rows)."""
    both = hybrid[["fold", *PROBA]].join(gbm[PROBA], rsuffix="_g", how="inner")
    w = both["fold"].map(weights).to_numpy()[:, None]
    proba = blend(both[PROBA].to_numpy(), both[[f"{c}_g" for c in PROBA]].to_numpy(), w)
    out = pd.DataFrame(proba, index=both.index, columns=PROBA).assign(fold=both["fold"])
    if THRESHOLD in gbm:
        out[THRESHOLD] = gbm[THRESHOLD].reindex(both.index)
    return out


@dataclass
class EnsembleModel:
    """Same interface as the hybrid: `predict_proba` of raw windows, `metadata`, `version`."""

    hybrid: Any
    gbm: Any
    weight: float  # on the hybrid
    metadata: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "unregistered"))

    @property
    def novelty(self) -> Any:
        """The components were refit on the same hours, so they hold the same gate
        (`train.novelty`); the hybrid's, kept in `hybrid/`, is the ensemble's."""
        return self.hybrid.novelty

    def predict_proba(self, windows: np.ndarray) -> np.ndarray:
        raw = np.asarray(windows, dtype="float64")
        return blend(self.hybrid.predict_proba(raw), self.gbm.predict_proba(raw), self.weight)

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        self.hybrid.save(directory / "hybrid")
        self.gbm.save(directory / "gbm")
        meta = {
            **self.metadata,
            "family": "ensemble",
            **feature_metadata(bundle_feature_set(self.metadata)),  # both components' columns
            "ensemble_weight": self.weight,
            "components": list(COMPONENTS),
        }
        (directory / "metadata.json").write_text(json.dumps(meta, indent=1, default=str))
        return directory


def load_ensemble(
    directory: Path, meta: dict[str, Any], load_component: Callable[[Path], Any]
) -> EnsembleModel:
    """An ensemble bundle; each component goes through the one loader (`load_component`)."""
    weight = float(meta.get("ensemble_weight", float("nan")))
    if not 0.0 <= weight <= 1.0:
        raise BundleError(f"{directory / 'metadata.json'}: ensemble_weight {weight} not in [0, 1]")
    models = {}
    for name in COMPONENTS:
        sub = directory / name
        if not sub.is_dir():
            raise BundleError(f"ensemble bundle {directory} lacks its {name}/ component")
        models[name] = load_component(sub)
        if bundle_family(models[name].metadata) != name:
            raise BundleError(f"{sub} holds a {bundle_family(models[name].metadata)} bundle")
    return EnsembleModel(models["hybrid"], models["gbm"], weight, meta)
