"""The reference label, and the `reference` block every report carries.

Models may train on different labels (fixed, quantile, triple barrier, other horizons); their own
scores then answer different questions. Every report therefore also scores a model's Sell/Hold/Buy
calls against one label that never changes, `research.reference_label` (6 h, 0.5 % by default;
`train.config.ReferenceLabel` is its one definition), so models stay comparable with each other
and with the baselines. `train research` scores everything against it; `train fit`/`train report`
and `train evaluate` add a `reference` block beside the model's own-label figures.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.labels import forward_returns, label_returns
from train.config import ReferenceLabel
from train.evaluate import evaluate_predictions


def reference_labels(close: pd.Series, reference: ReferenceLabel) -> pd.Series:
    """The reference label of every hour of `close` (indexed by time; NaN where unknown)."""
    fwd = forward_returns(close, reference.horizon_hours).to_numpy()
    return pd.Series(label_returns(fwd, reference.threshold), index=close.index)


def reference_block(
    close: pd.Series,
    times: pd.DatetimeIndex,
    next_returns: np.ndarray,
    predictions: dict[str, np.ndarray],
    reference: ReferenceLabel,
) -> dict[str, Any]:
    """Every named prediction (rows aligned with `times`) scored against the reference label on
    the hours of `times` where that label is known; `n` says how many."""
    y = reference_labels(close, reference).reindex(times).to_numpy()
    known = np.isfinite(y)
    labels = y[known].astype(np.int64)
    nxt = np.asarray(next_returns)[known]
    return {
        "label": reference.model_dump(),
        "hours": int(known.sum()),
        "scores": {
            name: evaluate_predictions(labels, np.asarray(proba)[known], nxt)
            for name, proba in predictions.items()
        },
    }
