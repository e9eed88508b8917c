"""The gbm family: LightGBM on the window's last row plus lagged summaries, no sequence model.

Its inputs come from the very (n, 24, F) raw window the predictor already builds for the hybrid,
so serving needs no extra candles and one function (`window_inputs`) feeds training and serving.
Price columns are read relative to the window's last close and volumes relative to the window's
mean (`features.transform.relative_windows`, fit-free), so a tree split learnt at 2022 prices
still reads 2025 prices. Columns are looked up by name: feature groups added to the window later
reach the last row without touching this file.

Slices of a training window (oldest first, purged apart): `fit` grows the trees, `early_stop`
picks how many, `calibrate` fits the softmax temperature on hours the trees never saw.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from features.dataset import MarketDataset
from features.exchange import HOUR_NS
from features.groups import FeatureSet
from features.indicators import FEATURE_NAMES
from features.transform import relative_windows
from train.bundle_io import BundleError, bundle_feature_set, feature_metadata, require_files
from train.calibration import calibrated_proba, fit_temperature, process_threads
from train.config import GbmConfig
from train.novelty import Novelty, load_novelty, save_novelty
from train.plain_gbm import balanced_weights

GBM_FILES = ("lightgbm.txt", "metadata.json")
RETURN_LAGS = (1, 3, 6, 12, 23)
VOLATILITY_SPANS = (6, 24)
SUMMARY_COLUMNS = (
    "rsi",
    "bb_position",
    "macd_hist",
    "volume_ma_ratio",
    "atr_ratio",
    "high_low_ratio",
    "close_open_ratio",
    "volume_change",
)
SUMMARY_LAGS = (1, 6, 12, 23)
INPUT_REVISION = 1  # bump when window_inputs changes: part of the research cache key
_CHUNK = 4096


def input_names(feature_names: tuple[str, ...] = FEATURE_NAMES) -> tuple[str, ...]:
    return (
        *(f"last_{n}" for n in feature_names),
        *(f"log_return_{k}h" for k in RETURN_LAGS),
        *(f"volatility_{k}h" for k in VOLATILITY_SPANS),
        *(f"{c}_lag{k}" for c in SUMMARY_COLUMNS for k in SUMMARY_LAGS),
        *(f"{c}_mean24" for c in SUMMARY_COLUMNS),
        "window_high",
        "window_low",
    )


def window_inputs(raw: np.ndarray, feature_names: tuple[str, ...] = FEATURE_NAMES) -> np.ndarray:
    """(n, L, F) raw windows -> (n, len(input_names())) float64 tree inputs."""
    if raw.ndim != 3 or raw.shape[2] != len(feature_names):
        raise ValueError(f"expected windows (n, L, {len(feature_names)}), got {raw.shape}")
    rel = relative_windows(raw)
    col = {name: j for j, name in enumerate(feature_names)}
    close = rel[:, :, col["close"]]  # the last hour is 1 by construction
    log_ret = raw[:, :, col["log_returns"]]
    parts = [rel[:, -1, :]]
    parts.append(np.column_stack([-np.log(close[:, -1 - k]) for k in RETURN_LAGS]))
    parts.append(np.column_stack([log_ret[:, -k:].std(axis=1, ddof=1) for k in VOLATILITY_SPANS]))
    summary = rel[:, :, [col[c] for c in SUMMARY_COLUMNS]]
    lags = summary[:, [-1 - k for k in SUMMARY_LAGS], :]  # (n, lags, columns)
    parts.append(lags.transpose(0, 2, 1).reshape(len(raw), -1))
    parts.append(summary.mean(axis=1))
    parts.append(rel[:, :, col["high"]].max(axis=1)[:, None] - 1.0)
    parts.append(1.0 - rel[:, :, col["low"]].min(axis=1)[:, None])
    return np.concatenate(parts, axis=1)


def design_rows(data: MarketDataset, positions: np.ndarray) -> np.ndarray:
    """`window_inputs` of the windows ending at `positions`, in chunks so memory stays flat."""
    names = data.feature_names
    out = np.empty((len(positions), len(input_names(names))))
    for start in range(0, len(positions), _CHUNK):
        chunk = positions[start : start + _CHUNK]
        out[start : start + len(chunk)] = window_inputs(data.raw_windows(chunk), names)
    return out


def booster_params(config: GbmConfig, seed: int) -> dict[str, Any]:
    bagging = {"bagging_fraction": config.bagging_fraction, "bagging_freq": 1}
    return {
        **(bagging if config.bagging_fraction < 1.0 else {}),
        "objective": "multiclass",
        "num_class": 3,
        "num_leaves": config.num_leaves,
        "learning_rate": config.learning_rate,
        "min_data_in_leaf": config.min_data_in_leaf,
        "feature_fraction": config.feature_fraction,
        "lambda_l2": config.lambda_l2,
        "max_bin": config.max_bin,
        "seed": seed,
        "deterministic": True,
        "num_threads": process_threads(),
        "verbose": -1,
    }


def raw_scores(booster: lgb.Booster, x: np.ndarray) -> np.ndarray:
    scores = booster.predict(x, raw_score=True, num_threads=process_threads())
    return np.asarray(scores).reshape(len(x), 3)


@dataclass(frozen=True)
class GbmSlices:
    """Rows (already tree inputs) and labels of the three slices of one training window, and the
    hours (epoch nanoseconds, `DatetimeIndex.asi8`) of the rows trees may fit, which a recency
    half-life needs."""

    fit: tuple[np.ndarray, np.ndarray]
    early_stop: tuple[np.ndarray, np.ndarray]
    calibrate: tuple[np.ndarray, np.ndarray]
    fit_times: np.ndarray | None = None
    early_stop_times: np.ndarray | None = None
    pooled: PooledRows | None = None  # other markets' rows the trees fit too (`pool_weight`)


@dataclass(frozen=True)
class PooledRows:
    """Other markets' tree inputs, labels and hours (epoch ns), up to a fit slice's last hour."""

    x: np.ndarray
    y: np.ndarray
    times: np.ndarray
    member: np.ndarray | None = None  # each row's market, 1.. (0 is the fitting market's own)

    def __post_init__(self) -> None:
        if not len(self.x) == len(self.y) == len(self.times):
            raise ValueError("pooled rows: inputs, labels and hours differ in length")
        if self.member is not None and len(self.member) != len(self.y):
            raise ValueError("pooled rows: markets and labels differ in length")


RowsOf = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # positions -> (inputs, labels)


PoolOf = Callable[[int], PooledRows | None]  # last fit hour (epoch ns) -> other markets' rows


def gbm_slices(
    parts: Mapping[str, np.ndarray], xy: RowsOf, times_ns: np.ndarray, pool: PoolOf | None = None
) -> GbmSlices:
    """The slices of a window cut into `parts` (sample positions: fit, early_stop, calibrate),
    with the hours of the rows the trees may fit and, with a `pool`, the other markets' rows up
    to the last fit hour: one construction for `train fit` and research."""
    fit_times = times_ns[parts["fit"]]
    pooled = pool(int(fit_times.max())) if pool is not None and len(fit_times) else None
    return GbmSlices(
        xy(parts["fit"]), xy(parts["early_stop"]), xy(parts["calibrate"]),
        fit_times, times_ns[parts["early_stop"]], pooled,
    )  # fmt: skip


def recency_weights(times_ns: np.ndarray, halflife_hours: float) -> np.ndarray:
    """2^(-age / half-life), age in hours before the newest of `times_ns` (epoch nanoseconds):
    the newest row weighs 1."""
    t = np.asarray(times_ns, dtype="int64")
    if len(t) == 0:
        return np.ones(0)
    age_hours = (t.max() - t) / HOUR_NS
    return np.exp2(-age_hours / float(halflife_hours))


def fit_weights(
    config: GbmConfig,
    y: np.ndarray,
    times: np.ndarray | None,
    market: np.ndarray | None = None,
    member: np.ndarray | None = None,
) -> np.ndarray | None:
    """Weights of rows the trees fit: recency (with a half-life) times `market` (each row's
    market weight: 1 for the market's own, `pool_weight` for pooled rows), then class balance
    (if on): over all rows, or with `pool_balance: market` within each `member` (the row's
    market) on its own."""
    base = market
    if config.halflife_hours is not None:
        if times is None or len(times) != len(y):
            raise ValueError("a recency half-life needs the hour of every row the trees fit")
        recency = recency_weights(times, config.halflife_hours)
        base = recency if market is None else recency * market
    if not config.balanced:
        return base
    if config.pool_balance == "all" or member is None:
        return balanced_weights(y, base)
    base = np.ones(len(y)) if base is None else base
    weights = np.empty(len(y))
    for group in np.unique(member):
        rows = member == group
        weights[rows] = balanced_weights(y[rows], base[rows])
    return weights


def _with_pool(
    rows: tuple[np.ndarray, np.ndarray],
    times: np.ndarray | None,
    pooled: PooledRows | None,
    weight: float,
) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """The fit rows with the pooled ones after them, their hours, each row's market weight and
    each row's market (0: the market's own; None without pooled rows, or with pooling off)."""
    if pooled is None or weight <= 0.0 or len(pooled.y) == 0:
        return rows, times, None, None
    if times is None:
        raise ValueError("pooled rows need the hour of every row the trees fit")
    if pooled.x.shape[1] != rows[0].shape[1]:
        raise ValueError(
            f"pooled rows have {pooled.x.shape[1]} inputs where the market's have "
            f"{rows[0].shape[1]}: markets whose feature columns differ cannot be pooled"
        )
    x = np.concatenate([rows[0], pooled.x])
    y = np.concatenate([rows[1], pooled.y])
    own = len(rows[1])
    market = np.concatenate([np.ones(own), np.full(len(pooled.y), weight)])
    others = np.ones(len(pooled.y), dtype="int64") if pooled.member is None else pooled.member
    member = np.concatenate([np.zeros(own, dtype="int64"), others])
    return (x, y), np.concatenate([times, pooled.times]), market, member


def _train(
    config: GbmConfig,
    seed: int,
    rows: tuple[np.ndarray, np.ndarray],
    times: np.ndarray | None,
    rounds: int,
    early_stop: tuple[np.ndarray, np.ndarray] | None = None,
    pooled: PooledRows | None = None,
) -> lgb.Booster:
    (x, y), times, market, member = _with_pool(rows, times, pooled, config.pool_weight)
    weight = fit_weights(config, y, times, market, member)
    train = lgb.Dataset(x, label=y, weight=weight, free_raw_data=True)
    callbacks, valid = [], []
    if early_stop is not None and config.early_stopping_rounds is not None:
        valid = [lgb.Dataset(early_stop[0], label=early_stop[1], reference=train)]
        callbacks = [lgb.early_stopping(config.early_stopping_rounds, verbose=False)]
    return lgb.train(
        booster_params(config, seed), train, rounds, valid_sets=valid, callbacks=callbacks
    )


def fit_gbm(config: GbmConfig, slices: GbmSlices, seed: int = 0) -> tuple[lgb.Booster, float]:
    """Trees on `fit` (and the pooled rows, with `pool_weight`; stopped early on `early_stop`),
    temperature on `calibrate`. With
    `refit_early_stop`, the trees are grown again, as many as early stopping chose, on `fit` and
    `early_stop` together: the newest hours before calibration, which a half-life weighs most,
    then shape the trees too instead of only counting them."""
    booster = _train(
        config, seed, slices.fit, slices.fit_times, config.num_rounds, slices.early_stop,
        slices.pooled,
    )  # fmt: skip
    # With early stopping, predict() and save_model() both use the best iteration only.
    if config.refit_early_stop:
        rounds = booster.best_iteration or booster.current_iteration()
        x, y = (np.concatenate(p) for p in zip(slices.fit, slices.early_stop, strict=True))
        times = None
        if slices.fit_times is not None and slices.early_stop_times is not None:
            times = np.concatenate([slices.fit_times, slices.early_stop_times])
        booster = _train(config, seed, (x, y), times, max(rounds, 1), None, slices.pooled)
    x_cal, y_cal = slices.calibrate
    return booster, fit_temperature(raw_scores(booster, x_cal), y_cal)


@dataclass
class GbmModel:
    """A fitted gbm: the same interface as the hybrid (`predict_proba` of raw windows)."""

    booster: lgb.Booster
    temperature: float
    metadata: dict[str, Any]
    novelty: Novelty | None = None  # the gate's reference (train.novelty)

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "unregistered"))

    @property
    def feature_set(self) -> FeatureSet:
        return bundle_feature_set(self.metadata)

    def predict_proba(self, windows: np.ndarray) -> np.ndarray:
        """(n, 24, F) raw feature windows -> (n, 3) calibrated SELL/HOLD/BUY probabilities."""
        raw = np.asarray(windows, dtype="float64")
        if len(raw) == 0:
            return np.zeros((0, 3))
        return self.predict_inputs(window_inputs(raw, self.feature_set.names))

    def predict_inputs(self, x: np.ndarray) -> np.ndarray:
        return calibrated_proba(raw_scores(self.booster, x), self.temperature)

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(directory / "lightgbm.txt"))
        save_novelty(self.novelty, directory)
        meta = {
            **self.metadata,
            "family": "gbm",
            **feature_metadata(self.feature_set),
            "gbm_inputs": list(input_names(self.feature_set.names)),
            "temperature": self.temperature,
        }
        (directory / "metadata.json").write_text(json.dumps(meta, indent=1, default=str))
        return directory


def load_gbm(directory: Path, meta: dict[str, Any]) -> GbmModel:
    """A gbm bundle; refused with the reason when its inputs or temperature do not fit."""
    require_files(directory, GBM_FILES)
    names = input_names(bundle_feature_set(meta, directory).names)
    if tuple(meta.get("gbm_inputs", ())) != names:
        raise BundleError(
            f"{directory / 'metadata.json'}: the bundle's gbm inputs differ from this code's "
            f"{len(names)} window summaries: retrain it"
        )
    try:
        booster = lgb.Booster(model_file=str(directory / "lightgbm.txt"))
    except lgb.basic.LightGBMError as exc:
        raise BundleError(f"{directory / 'lightgbm.txt'} is not a LightGBM model: {exc}") from exc
    if booster.num_feature() != len(names):
        raise BundleError(
            f"{directory / 'lightgbm.txt'} reads {booster.num_feature()} inputs, "
            f"the window gives {len(names)}"
        )
    temperature = float(meta.get("temperature", float("nan")))
    if not np.isfinite(temperature) or temperature <= 0:
        raise BundleError(f"{directory / 'metadata.json'}: temperature {temperature} is not > 0")
    return GbmModel(booster, temperature, meta, load_novelty(directory))
