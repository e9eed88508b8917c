"""One market's training material: features, forward returns and the hours usable as samples.

Serving computes the same features with `features.serving.serving_features`; this module only
decides which batch rows may become (sequence, label) samples, so the two paths share one core.
The columns are a `features.groups.FeatureSet` (the base 46 unless groups are enabled); group
columns are computed per repaired segment by the same `FeatureSet.columns` serving runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features import indicators
from features.barriers import Barriers, triple_barrier_labels
from features.candles import candle_arrays, repair_segments
from features.config import FeaturesConfig
from features.exchange import HOUR_NS
from features.groups import BASE_SET, FeatureSet, MarketContext
from features.indicators import SEQUENCE_LENGTH, compute_features
from features.labels import forward_returns, label_returns
from features.transform import windows


@dataclass(frozen=True)
class MarketDataset:
    """Features of every repaired hour, and the end positions of the usable samples."""

    market: str
    times: pd.DatetimeIndex
    features: np.ndarray  # (T, F) float64, NaN in warm-up rows; columns feature_set.names
    close: np.ndarray
    filled: np.ndarray  # True where the hour was a repaired gap, not an observed candle
    forward_returns: np.ndarray  # close[t+H]/close[t] - 1, NaN where t+H is unknown
    samples: np.ndarray  # positions t usable as sample ends
    horizon: int
    sequence_length: int = SEQUENCE_LENGTH
    feature_set: FeatureSet = BASE_SET
    # Triple-barrier labels of every hour (0/1/2 as float, NaN unknown); None: the threshold label.
    barrier_labels: np.ndarray | None = None

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.feature_set.names

    @property
    def sample_times(self) -> pd.DatetimeIndex:
        return self.times[self.samples]

    @property
    def filled_hours(self) -> int:
        return int(self.filled.sum())

    def labels(self, threshold: float, positions: np.ndarray | None = None) -> np.ndarray:
        """Labels (0/1/2, int64) of the samples at `positions` (default: all samples).

        With triple-barrier labels `threshold` plays no part: the barriers decided at build time.
        """
        pos = self.samples if positions is None else positions
        if self.barrier_labels is not None:
            return self.barrier_labels[pos].astype(np.int64)
        return label_returns(self.forward_returns[pos], threshold).astype(np.int64)

    def raw_windows(self, positions: np.ndarray) -> np.ndarray:
        return windows(self.features, positions, self.sequence_length)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.features, index=self.times, columns=list(self.feature_names))


def usable_samples(
    times: pd.DatetimeIndex,
    features: np.ndarray,
    filled: np.ndarray,
    fwd: np.ndarray,
    length: int,
    required: np.ndarray | None = None,
) -> np.ndarray:
    """Positions whose whole window is finite and contiguous, observed at its end, with a label.

    `required` (per column, default all) names the columns that must be finite: a nullable
    group's NaN (a missing Binance hour) is data, not a reason to drop the hour."""
    checked = features if required is None else features[:, required]
    finite_rows = np.isfinite(checked).all(axis=1).astype(np.int64)
    run = np.convolve(finite_rows, np.ones(length, dtype=np.int64), mode="full")[: len(finite_rows)]
    ends = np.arange(len(times))
    ok = (ends >= length - 1) & (run == length) & ~filled & np.isfinite(fwd)
    candidates = np.flatnonzero(ok)
    span = times.asi8[candidates] - times.asi8[candidates - (length - 1)]
    return candidates[span == (length - 1) * HOUR_NS]


def build_dataset(
    candles: pd.DataFrame,
    market: str,
    horizon: int,
    max_gap_hours: int,
    sequence_length: int = SEQUENCE_LENGTH,
    feature_set: FeatureSet = BASE_SET,
    context: MarketContext | None = None,
    barriers: Barriers | None = None,
) -> MarketDataset:
    """Repair, split into segments, compute the feature set per segment, find the usable samples.

    `context` carries the other series the cross-market and premium groups read
    (`features.context.batch_context`); the base set needs none. With `barriers` the labels are
    triple-barrier labels whose time limit must be `horizon` (the horizon the splits purge by); a
    sample then needs its whole barrier path.
    """
    if barriers is not None and barriers.horizon != horizon:
        raise ValueError(
            f"the barriers' time limit ({barriers.horizon} h) must be the label horizon "
            f"({horizon} h): the splits purge by the horizon"
        )
    parts = repair_segments(candles, max_gap_hours)
    if not parts:
        raise ValueError(f"{market}: no candles to build a dataset from")
    feature_frames = [compute_features(p.candles) for p in parts]
    times = pd.DatetimeIndex(np.concatenate([f.index.asi8 for f in feature_frames]), name="time")
    times = pd.DatetimeIndex(times.astype("datetime64[ns]"), name="time")
    blocks = [f.to_numpy(dtype="float64") for f in feature_frames]
    if feature_set.groups:
        blocks = [
            np.hstack([block, _group_block(feature_set, market, p.candles, context, max_gap_hours)])
            for block, p in zip(blocks, parts, strict=True)
        ]
    feats = np.concatenate(blocks)
    close = np.concatenate([p.candles["close"].to_numpy() for p in parts])
    filled = np.concatenate([p.filled.to_numpy() for p in parts])
    fwd = forward_returns(pd.Series(close, index=times), horizon).to_numpy()
    tb = None
    known = fwd
    if barriers is not None:
        tb = triple_barrier_labels(pd.Series(close, index=times), barriers)
        known = np.where(np.isfinite(tb), fwd, np.nan)
    samples = usable_samples(times, feats, filled, known, sequence_length, feature_set.required)
    return MarketDataset(
        market,
        times,
        feats,
        close,
        filled,
        fwd,
        samples,
        horizon,
        sequence_length,
        feature_set,
        tb,
    )


def _group_block(
    feature_set: FeatureSet,
    market: str,
    segment: pd.DataFrame,
    context: MarketContext | None,
    max_gap_hours: int,
) -> np.ndarray:
    """The group columns of one repaired segment, NaN in its warm-up rows as the base columns."""
    block = feature_set.columns(
        market, segment.index.asi8, candle_arrays(segment), context, max_gap_hours=max_gap_hours
    )
    block[: indicators.WARMUP_HOURS - 1] = np.nan  # through the module: tests patch it
    return block


def configured_dataset(
    candles: pd.DataFrame,
    market: str,
    features: FeaturesConfig,
    context: MarketContext | None = None,
) -> MarketDataset:
    """The dataset a features config describes: its groups, label (threshold or barriers) and gap
    policy; training and research build theirs here so the two cannot drift apart."""
    lab = features.labels
    return build_dataset(
        candles,
        market,
        lab.horizon_hours,
        features.max_gap_hours,
        feature_set=features.feature_set(),
        context=context,
        barriers=lab.barriers(),
    )
