"""Sell / Hold / Buy labels from the forward return over a horizon.

A label at hour t is known only at t + H; everything that uses labels (splits, thresholds) must
treat the label window (t, t + H] as part of the sample, which `features.splits` does.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.domain import Signal
from features.exchange import ROUND_TRIP_FEE


def forward_returns(close: pd.Series, horizon: int) -> pd.Series:
    """close[t + H] / close[t] - 1 by *time*, NaN where t + H is not in the index.

    Lookup is by time, not position, so a label never silently spans a long gap between segments.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1 hour, got {horizon}")
    future = close.reindex(close.index + pd.Timedelta(hours=horizon)).to_numpy()
    return pd.Series(
        future / close.to_numpy() - 1.0, index=close.index, name=f"fwd_return_{horizon}h"
    )


def check_threshold(threshold: float) -> float:
    if not np.isfinite(threshold) or threshold < ROUND_TRIP_FEE:
        raise ValueError(
            f"label threshold {threshold} must cover the round-trip fee ({ROUND_TRIP_FEE}): "
            "a BUY label that cannot pay its own fees teaches the model to churn"
        )
    return float(threshold)


def label_returns(returns: np.ndarray, threshold: float) -> np.ndarray:
    """0 (SELL) below -threshold, 2 (BUY) above +threshold, 1 (HOLD) between; NaN stays NaN."""
    check_threshold(threshold)
    r = np.asarray(returns, dtype="float64")
    labels = np.full(r.shape, float(Signal.HOLD))
    labels[r > threshold] = float(Signal.BUY)
    labels[r < -threshold] = float(Signal.SELL)
    labels[~np.isfinite(r)] = np.nan
    return labels


def fit_quantile_threshold(train_returns: np.ndarray, hold_share: float) -> float:
    """The symmetric threshold that leaves `hold_share` of the *training* returns in HOLD.

    Fitted on training rows only (a threshold from all rows would leak the test period's
    volatility), and never below the round-trip fee.
    """
    if not 0.0 < hold_share < 1.0:
        raise ValueError(f"hold_share must be in (0, 1), got {hold_share}")
    r = np.abs(np.asarray(train_returns, dtype="float64"))
    r = r[np.isfinite(r)]
    if len(r) == 0:
        raise ValueError("cannot fit a label threshold on zero training returns")
    return max(float(np.quantile(r, hold_share)), ROUND_TRIP_FEE)


def class_shares(labels: np.ndarray) -> tuple[float, float, float]:
    """Share of SELL, HOLD, BUY among the finite labels."""
    y = np.asarray(labels, dtype="float64")
    y = y[np.isfinite(y)]
    if len(y) == 0:
        return (0.0, 0.0, 0.0)
    counts = np.bincount(y.astype(np.int64), minlength=3)
    return tuple(float(c) / len(y) for c in counts[:3])  # type: ignore[return-value]


def fold_threshold(
    mode: str, threshold: float, hold_share: float, train_returns: np.ndarray
) -> float:
    """The threshold a fold labels with: the fixed one, or a quantile of its training returns.

    Triple-barrier labels (`features.barriers`) come from the barriers, not from a threshold; the
    fixed threshold is still returned for what reads one (the bundle's `label_threshold`).
    """
    if mode in ("fixed", "triple_barrier"):
        return check_threshold(threshold)
    if mode == "quantile":
        return fit_quantile_threshold(train_returns, hold_share)
    expected = "'fixed', 'quantile' or 'triple_barrier'"
    raise ValueError(f"unknown label mode {mode!r}; expected {expected}")
