"""Score a stored bundle on any later window of candles: how a model is judged after it shipped.

Candles before `start` only warm the indicators up; a gap longer than the bundle's max_gap_hours
restarts the warm-up instead of failing. The bundle's own horizon and threshold label the hours, and
the majority-class baseline uses the class shares of the bundle's *training* window.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.dataset import build_dataset
from train.bundle import HybridModel
from train.evaluate import evaluate_predictions, one_hot
from train.pipeline import next_returns, persistence_labels


def score_window(
    model: HybridModel, candles: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp | None = None
) -> dict[str, Any]:
    meta = model.metadata
    market = str(meta.get("market", "unknown"))
    data = build_dataset(candles, market, int(meta["horizon"]), int(meta["max_gap_hours"]))
    times = data.sample_times
    keep = (times >= start) & (times <= (end if end is not None else times.max()))
    positions = data.samples[keep]
    if len(positions) == 0:
        raise ValueError(
            f"no scorable hours for {market} in [{start}, {end or 'end'}]: the candles there "
            f"span {data.times.min()} .. {data.times.max()} (each hour needs warm-up before it "
            f"and {data.horizon} hours after it for its label)"
        )
    threshold = float(meta["label_threshold"])
    y = data.labels(threshold, positions)
    nxt = next_returns(data, positions)
    proba = model.predict_proba(data.raw_windows(positions))
    majority = int(np.argmax(meta.get("train_class_shares", [0.0, 1.0, 0.0])))
    return {
        "market": market,
        "version": model.version,
        "window": [str(data.times[positions[0]]), str(data.times[positions[-1]])],
        "hours": int(len(positions)),
        "model": evaluate_predictions(y, proba, nxt),
        "baselines": {
            "majority class (training window)": evaluate_predictions(
                y, one_hot(np.full(len(y), majority)), nxt
            ),
            "persistence (label t-H)": evaluate_predictions(
                y, one_hot(persistence_labels(data, positions, threshold)), nxt
            ),
        },
    }
