"""`train fit --family ensemble`: the ensemble assembled from its components' fits.

Both components ran the same walk-forward folds on the same hours (one `fit_market` each), so the
ensemble's record is theirs blended: fold k with the weight fitted on the folds before it
(`train.ensemble.fold_weights`), and the bundle with the weight fitted on the newest
`lookback_folds` folds of the record, every one of whose hours precedes what the bundle serves.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from train.config import ReferenceLabel
from train.ensemble import PROBA, EnsembleModel, blend_folds, fit_weight, fold_weights
from train.evaluate import evaluate_predictions
from train.pipeline import MarketFit
from train.reference import reference_block


def _scores(frame: pd.DataFrame) -> dict[str, Any]:
    return evaluate_predictions(
        frame["label"].to_numpy(), frame[PROBA].to_numpy(), frame["next_return"].to_numpy()
    )


def bundle_weight(
    oos: pd.DataFrame, h: pd.DataFrame, g: pd.DataFrame, lookback_folds: int, min_hours: int
) -> float:
    newest = oos[oos["fold"] > oos["fold"].max() - lookback_folds]
    if len(newest) < min_hours:
        return 0.5
    y = newest["label"].to_numpy(dtype=np.int64)
    return fit_weight(
        h.loc[newest.index, PROBA].to_numpy(), g.loc[newest.index, PROBA].to_numpy(), y
    )


def ensemble_reference(oos: pd.DataFrame, hybrid: MarketFit) -> dict[str, Any]:
    """The ensemble's calls against the components' reference label, priced from the closes of
    the out-of-sample hours (an hour whose reference horizon leaves them is not counted)."""
    label = hybrid.report.get("reference", {}).get("label")
    reference = ReferenceLabel.model_validate(label) if label else ReferenceLabel()
    close = oos["close"].astype("float64")
    proba = {"walk_forward": oos[PROBA].to_numpy()}
    return reference_block(close, oos.index, oos["next_return"].to_numpy(), proba, reference)


def assemble(hybrid: MarketFit, gbm: MarketFit, lookback_folds: int, min_hours: int) -> MarketFit:
    h, g = hybrid.oos, gbm.oos
    horizon = int(hybrid.model.metadata["horizon"])
    weights = fold_weights(h, g, h["label"], horizon, lookback_folds, min_hours)
    blended = blend_folds(h, g, weights)
    oos = h.loc[blended.index].copy()
    oos[PROBA] = blended[PROBA]
    report = {
        "family": "ensemble",
        "walk_forward": _scores(oos),
        "baselines": hybrid.report.get("baselines", {}),
        "folds": [
            _scores(part) | {"name": f"fold {k}", "weight": weights[int(k)]}
            for k, part in oos.groupby("fold")
        ],
        "components": {
            "hybrid": hybrid.report.get("walk_forward"),
            "gbm": gbm.report.get("walk_forward"),
        },
        "reference": ensemble_reference(oos, hybrid),
    }
    meta = {
        **hybrid.model.metadata,
        "family": "ensemble",
        "metrics": report,
        "fold_weights": {str(k): v for k, v in weights.items()},
    }
    weight = bundle_weight(oos, h, g, lookback_folds, min_hours)
    return MarketFit(
        hybrid.market, EnsembleModel(hybrid.model, gbm.model, weight, meta), oos, report
    )
