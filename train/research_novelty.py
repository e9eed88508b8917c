"""The novelty gate in research: each fold's test hours scored against that fold's training rows,
and the report's block on them.

A fold's reference is the one a bundle trained on that fold's rows would keep (`train.novelty`:
the same sample size, seed, purge and threshold rule), drawn from the training window the model
families use (`profile.data.last_hours` before the purge). It depends on the rows only, not on the
family, so one score per hour serves every family's row of the report. Computed at each run
(seconds per market), never cached: it holds no model.

The report gives each market's share of novel hours and each model's balanced accuracy on the
novel and on the familiar hours: if the models do worse on novel hours, the gate keeps the loop
out of the hours it would guess on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.folds import AnchoredFold, TrainWindow, train_positions
from train.config import NoveltyConfig
from train.novelty import dataset_scores, fit_novelty
from train.research_jobs import MarketMaterial
from train.research_stats import point_metrics

PROBA = ["p_sell", "p_hold", "p_buy"]
NOVELTY_COLUMNS = ["fold", "dissimilarity", "novel", "threshold"]


def market_novelty(
    material: MarketMaterial,
    folds: list[AnchoredFold],
    purge_hours: int,
    train_hours: int | None,
    config: NoveltyConfig,
) -> pd.DataFrame:
    """Index time (every test hour of `folds`); fold, dissimilarity, novel, threshold."""
    data = material.data
    t = data.sample_times.asi8
    window = TrainWindow(purge_hours, train_hours)
    frames = []
    for fold in folds:
        test = data.samples[(t >= fold.test_start.value) & (t < fold.test_end.value)]
        train = data.samples[train_positions(t, fold.test_start.value, window)]
        if len(test) == 0 or len(train) <= config.neighbours:
            continue
        novelty = fit_novelty(data, train, config, purge_hours)
        score = dataset_scores(novelty, data, test)
        frames.append(
            pd.DataFrame(
                {
                    "fold": fold.number,
                    "dissimilarity": score,
                    "novel": score > novelty.threshold,
                    "threshold": novelty.threshold,
                },
                index=pd.DatetimeIndex(data.times[test], name="time"),
            )  # fmt: skip
        )
    return pd.concat(frames) if frames else pd.DataFrame(columns=NOVELTY_COLUMNS)


def _balanced_accuracy(y: np.ndarray, proba: np.ndarray) -> float | None:
    return float(point_metrics(y, proba)["balanced_accuracy"]) if len(y) else None


def novelty_block(
    novelty: pd.DataFrame,
    hours: pd.DatetimeIndex,
    labels: pd.Series,
    frames: dict[str, pd.DataFrame],
) -> dict[str, Any]:
    """Share of novel hours among the report's `hours`, and each model's balanced accuracy on
    the novel and on the familiar ones (`frames`: the models to score, index time, PROBA)."""
    novel = novelty["novel"].reindex(hours).astype("boolean").fillna(False).to_numpy(dtype=bool)
    score = novelty["dissimilarity"].reindex(hours).to_numpy(dtype=float)
    y = labels.reindex(hours).to_numpy(dtype=np.int64)
    models = {}
    for name, frame in frames.items():
        proba = frame.reindex(hours)[PROBA].to_numpy(dtype=float)
        models[name] = {
            "balanced_accuracy_novel": _balanced_accuracy(y[novel], proba[novel]),
            "balanced_accuracy_familiar": _balanced_accuracy(y[~novel], proba[~novel]),
        }
    return {
        "hours": int(len(hours)),
        "novel_hours": int(novel.sum()),
        "share_novel": float(novel.mean()) if len(hours) else 0.0,
        "dissimilarity_median": float(np.nanmedian(score)) if np.isfinite(score).any() else None,
        "models": models,
    }


def gated(frame: pd.DataFrame, novelty: pd.DataFrame) -> pd.DataFrame:
    """A model's predictions with the `novel` flag of each hour, so its replay opens no position
    on a novel hour, as the loop would not."""
    flags = novelty["novel"].reindex(frame.index).astype("boolean").fillna(False)
    return frame.assign(novel=flags.to_numpy(dtype=bool))
