"""Walk-forward folds on a fixed calendar grid, so a fold is the same whatever range is asked for.

`features.splits.walk_forward_splits` places its folds backwards from the newest sample: add a day
of candles and every fold moves. Research needs the opposite: fold k tests the hours
[origin + k * fold_hours, origin + (k + 1) * fold_hours), fixed by the calendar alone, so a fold's
predictions can be cached and a report over any --start/--end reuses them unchanged. Which folds
exist depends on the data (enough training samples before, at least one test sample inside); the
requested range only chooses among them.

Training for fold k uses samples that end before test_start - purge (purge >= horizon + sequence
length, as in `features.splits`): their label windows close before the first test sample's input
window opens. Nothing after a test fold ever trains a model for it, so no embargo is needed here;
`leaky_kfold` keeps the seed's shuffled protocol for comparison only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.exchange import HOUR, HOUR_NS


@dataclass(frozen=True)
class FoldGrid:
    """Consecutive test spans of `fold_hours` hours anchored at `origin` (a KST hour)."""

    origin: pd.Timestamp
    fold_hours: int

    def __post_init__(self) -> None:
        if self.fold_hours < 1:
            raise ValueError(f"fold_hours must be >= 1, got {self.fold_hours}")
        if self.origin != self.origin.floor("h"):
            raise ValueError(f"the fold grid origin {self.origin} must be on the hour")

    def number(self, time: pd.Timestamp) -> int:
        """The fold whose test span holds `time` (negative before the origin)."""
        return int((pd.Timestamp(time).value - self.origin.value) // (self.fold_hours * HOUR_NS))

    def span(self, number: int) -> tuple[pd.Timestamp, pd.Timestamp]:
        """[start, end) of fold `number`'s test hours."""
        start = self.origin + number * self.fold_hours * HOUR
        return start, start + self.fold_hours * HOUR


@dataclass(frozen=True)
class TrainWindow:
    """Which samples before a fold may train: all of them, or the newest `train_hours`."""

    purge_hours: int
    train_hours: int | None = None  # None: expanding (all history)
    min_train_samples: int = 1
    min_test_samples: int = 1

    def __post_init__(self) -> None:
        if self.purge_hours < 0 or (self.train_hours is not None and self.train_hours < 1):
            raise ValueError(f"invalid training window {self}")


@dataclass(frozen=True)
class AnchoredFold:
    """Positions into the sample-time array: the samples that train and test fold `number`."""

    number: int
    test_start: pd.Timestamp
    test_end: pd.Timestamp  # exclusive
    train: np.ndarray
    test: np.ndarray

    @property
    def label(self) -> str:
        return f"{self.test_start:%Y-%m-%d %H:%M}..{self.test_end - HOUR:%Y-%m-%d %H:%M}"


def train_positions(times: np.ndarray, test_start: int, window: TrainWindow) -> np.ndarray:
    """Sample positions that may train a fold starting at `test_start` (int ns)."""
    cutoff = test_start - window.purge_hours * HOUR_NS
    keep = times < cutoff
    if window.train_hours is not None:
        keep &= times >= cutoff - window.train_hours * HOUR_NS
    return np.flatnonzero(keep)


def anchored_folds(
    sample_times: pd.DatetimeIndex, grid: FoldGrid, window: TrainWindow
) -> list[AnchoredFold]:
    """Every fold of `grid` these samples can support, oldest first.

    A fold exists when it has at least `min_test_samples` samples in its span and
    `min_train_samples` allowed training samples before it; both depend on the data only.
    """
    if len(sample_times) == 0:
        return []
    t = sample_times.asi8
    first, last = grid.number(sample_times[0]), grid.number(sample_times[-1])
    folds = []
    for number in range(first, last + 1):
        start, end = grid.span(number)
        test = np.flatnonzero((t >= start.value) & (t < end.value))
        if len(test) < window.min_test_samples:
            continue
        train = train_positions(t, start.value, window)
        if len(train) < window.min_train_samples:
            continue
        folds.append(AnchoredFold(number, start, end, train, test))
    return folds


def folds_in_range(
    folds: list[AnchoredFold], start: pd.Timestamp | None, end: pd.Timestamp | None
) -> list[AnchoredFold]:
    """The folds whose test span overlaps [start, end]; each is whole, the report trims hours."""
    return [
        f
        for f in folds
        if (start is None or f.test_end > start) and (end is None or f.test_start <= end)
    ]


def leaky_kfold(n_samples: int, parts: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The seed's protocol as K-fold: shuffled parts of overlapping windows. LEAKS by design.

    Each sample is tested exactly once, by a model trained on the other parts, whose neighbouring
    hours share 23 of its 24 input rows: the gap between this and walk-forward is the leak.
    """
    if parts < 2 or n_samples < parts:
        raise ValueError(f"leaky K-fold needs 2 <= parts <= samples, got {parts} and {n_samples}")
    order = np.random.default_rng(seed).permutation(n_samples)
    chunks = np.array_split(order, parts)
    return [
        (np.sort(np.concatenate(chunks[:j] + chunks[j + 1 :])), np.sort(chunks[j]))
        for j in range(parts)
    ]


def purged_parts(
    times: np.ndarray, positions: np.ndarray, shares: dict[str, float], purge_hours: int
) -> dict[str, np.ndarray]:
    """Consecutive named parts of a training window (oldest first, in `shares` order), each
    without the samples within `purge_hours` after its predecessor's last one, so no part's
    windows or labels touch its neighbour's. `times` are int ns of every dataset row."""
    total = sum(shares.values())
    bounds = np.round(np.cumsum([0.0, *shares.values()]) / total * len(positions)).astype(int)
    parts: dict[str, np.ndarray] = {}
    previous_end: int | None = None
    for name, a, b in zip(shares, bounds[:-1], bounds[1:], strict=True):
        part = positions[a:b]
        if previous_end is not None:
            part = part[times[part] > previous_end + purge_hours * HOUR_NS]
        if len(part) == 0:
            raise ValueError(
                f"slice {name!r} is empty after purging: the training window is too short"
            )
        parts[name] = part
        previous_end = int(times[part[-1]])
    return parts
