"""The plain LightGBM baseline: a fixed recipe that every model in every report is judged against.

Issue 15 measured it beating the hybrid by 1.5-5 points of balanced accuracy, so any later model
must beat *this*, on the same hours. The recipe is constants, never tuned and not configurable:
a baseline that moves with the search it judges is no baseline. 17 features per hour:
    log returns over 1, 3, 6, 12, 24, 48 and 96 h        (7)
    std of 1-hour log returns over 6, 24 and 96 h       (3)
    volume over its 24-hour mean                        (1)
    (high - low) / close                                (1)
    RSI 14 (the feature column)                         (1)
    close over SMA 20, 50, 100 (the feature columns)    (3)
    hour of day, KST                                    (1)
Lags are taken by time, so a lag that crosses a long outage is missing (NaN), which LightGBM
handles. 200 trees, LightGBM's defaults otherwise, class weights inverse to the class shares of the
fold's training hours; the probabilities are LightGBM's own, uncalibrated. Two variants run:
`plain-12m` trains on the 8,760 hours before each fold, `plain-all` on all history.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.dataset import MarketDataset
from features.exchange import HOUR
from features.indicators import FEATURE_NAMES
from train.calibration import process_threads

RETURN_HOURS = (1, 3, 6, 12, 24, 48, 96)
VOLATILITY_HOURS = (6, 24, 96)
PLAIN_TREES = 200
PLAIN_VARIANTS: dict[str, int | None] = {"plain-12m": 8760, "plain-all": None}
PLAIN_NAMES: tuple[str, ...] = (
    *(f"log_return_{h}h" for h in RETURN_HOURS),
    *(f"volatility_{h}h" for h in VOLATILITY_HOURS),
    "volume_ratio_24h",
    "high_low_range",
    "rsi",
    "close_over_sma_20",
    "close_over_sma_50",
    "close_over_sma_100",
    "hour_kst",
)
RECIPE_REVISION = 1  # bump when the recipe changes: it is part of every cached baseline's key


def _column(data: MarketDataset, name: str) -> np.ndarray:
    return data.features[:, FEATURE_NAMES.index(name)]


def plain_features(data: MarketDataset) -> np.ndarray:
    """The 17 columns for every hour of the dataset (T, 17); NaN where history is missing."""
    times = data.times
    close = pd.Series(data.close, index=times)
    log_close = np.log(close)

    def lagged(series: pd.Series, hours: int) -> np.ndarray:
        return series.reindex(times - hours * HOUR).to_numpy()

    returns_1h = log_close.to_numpy() - lagged(log_close, 1)
    r1 = pd.Series(returns_1h, index=times)
    columns = [log_close.to_numpy() - lagged(log_close, h) for h in RETURN_HOURS]
    columns += [r1.rolling(h, min_periods=h).std().to_numpy() for h in VOLATILITY_HOURS]
    volume = pd.Series(_column(data, "volume"), index=times)
    mean_volume = volume.rolling(24, min_periods=24).mean().to_numpy()
    columns.append(np.divide(volume.to_numpy(), mean_volume, where=mean_volume > 0,
                             out=np.full(len(times), np.nan)))  # fmt: skip
    columns.append((_column(data, "high") - _column(data, "low")) / data.close)
    columns.append(_column(data, "rsi"))
    columns += [_column(data, f"price_to_sma_{n}") for n in (20, 50, 100)]
    columns.append(times.hour.to_numpy().astype("float64"))
    return np.column_stack(columns)


def balanced_weights(y: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
    """Per-row weights n / (3 * count(class)), LightGBM's and sklearn's 'balanced'; with `base`
    (per-row weights, e.g. recency) the counts are its sums, so each class still carries a third
    of the total weight, and each row's weight is its base times its class's factor."""
    base = np.ones(len(y)) if base is None else np.asarray(base, dtype="float64")
    if base.shape != (len(y),):
        raise ValueError(f"base weights {base.shape} do not match {len(y)} labels")
    counts = np.bincount(y, weights=base, minlength=3)
    per_class = base.sum() / (3 * np.where(counts > 0, counts, 1.0))
    return base * per_class[y]


def fit_plain(x: np.ndarray, y: np.ndarray, seed: int = 0) -> lgb.Booster:
    params = {
        "objective": "multiclass",
        "num_class": 3,
        "seed": seed,
        "deterministic": True,
        "num_threads": process_threads(),
        "verbose": -1,
    }
    dataset = lgb.Dataset(x, label=y, weight=balanced_weights(y))
    return lgb.train(params, dataset, num_boost_round=PLAIN_TREES)


def plain_proba(booster: lgb.Booster, x: np.ndarray) -> np.ndarray:
    proba = booster.predict(x, num_threads=process_threads())
    return np.asarray(proba).reshape(len(x), 3)
