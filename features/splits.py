"""Walk-forward splits that cannot leak, and the seed's leaky protocol kept for comparison.

A sample ending at hour t reads the candles (t - L, t] (its sequence); its label reads (t, t + H].
Two samples leak into each other when those information windows overlap, so training samples are
purged from `purge_hours >= H + L` before a test fold and embargoed for `embargo_hours` after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from features.exchange import HOUR, HOUR_NS


@dataclass(frozen=True)
class SplitSpec:
    """Resolved split parameters (see `features.config.SplitConfig` for the YAML side)."""

    n_folds: int
    min_train_hours: int
    horizon: int
    sequence_length: int
    test_hours: int | None = None
    scheme: Literal["expanding", "rolling"] = "expanding"
    train_hours: int | None = None
    purge_hours: int = 0
    embargo_hours: int = 0

    @property
    def purge(self) -> int:
        """The purge actually applied: never less than H + L, whatever the config says."""
        return max(self.purge_hours, self.horizon + self.sequence_length)

    @property
    def embargo(self) -> int:
        return max(self.embargo_hours, self.horizon)


@dataclass(frozen=True)
class Fold:
    """Positions into the sample-time array of one walk-forward fold."""

    number: int
    train: np.ndarray
    test: np.ndarray
    test_start: pd.Timestamp
    test_end: pd.Timestamp  # exclusive

    def describe(self, times: pd.DatetimeIndex) -> str:
        first, last = times[self.train[0]], times[self.train[-1]]
        return (
            f"fold {self.number}: train {first:%Y-%m-%d %H:%M} .. {last:%Y-%m-%d %H:%M} "
            f"({len(self.train)} samples), test {self.test_start:%Y-%m-%d %H:%M} .. "
            f"{self.test_end - HOUR:%Y-%m-%d %H:%M} ({len(self.test)} samples)"
        )


def information_window(times: pd.DatetimeIndex, spec: SplitSpec) -> tuple[np.ndarray, np.ndarray]:
    """First and last hour (int ns) each sample reads: its sequence start and its label end."""
    t = times.asi8
    return t - (spec.sequence_length - 1) * HOUR_NS, t + spec.horizon * HOUR_NS


def train_mask(
    times: pd.DatetimeIndex, test_start: int, test_end: int, spec: SplitSpec
) -> np.ndarray:
    """Samples allowed in training around one test window [test_start, test_end) (int ns).

    Excludes [test_start - purge, test_end + embargo): a purged sample's label window would reach
    into the test period, an embargoed one's sequence would start from inside it.
    """
    t = times.asi8
    purged = (t >= test_start - spec.purge * HOUR_NS) & (t < test_end + spec.embargo * HOUR_NS)
    return ~purged


def _test_bounds(times: pd.DatetimeIndex, spec: SplitSpec) -> list[tuple[int, int]]:
    first_test = times.asi8[0] + (spec.min_train_hours + spec.purge) * HOUR_NS
    end = times.asi8[-1] + HOUR_NS
    if spec.test_hours is None:
        hours = (end - first_test) // HOUR_NS // spec.n_folds
    else:
        hours = spec.test_hours
    start = end - spec.n_folds * hours * HOUR_NS
    if hours < 1 or start < first_test:
        span = (end - times.asi8[0]) // HOUR_NS
        raise ValueError(
            f"{span} hours of samples cannot hold {spec.n_folds} test folds of "
            f"{spec.test_hours or 'at least 1'} hours after {spec.min_train_hours} training hours "
            f"and a {spec.purge}-hour purge"
        )
    return [
        (start + k * hours * HOUR_NS, start + (k + 1) * hours * HOUR_NS)
        for k in range(spec.n_folds)
    ]


def walk_forward_splits(times: pd.DatetimeIndex, spec: SplitSpec) -> list[Fold]:
    """Consecutive test folds ending at the newest sample; training only before each fold.

    `times` are the end hours of the usable samples, strictly increasing (gaps allowed).
    """
    if spec.n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {spec.n_folds}")
    if len(times) == 0:
        raise ValueError("no samples to split")
    t = times.asi8
    folds = []
    for number, (start, end) in enumerate(_test_bounds(times, spec)):
        before = (t < start) & train_mask(times, start, end, spec)
        if spec.scheme == "rolling" and spec.train_hours is not None:
            before &= t >= start - (spec.purge + spec.train_hours) * HOUR_NS
        test = np.flatnonzero((t >= start) & (t < end))
        train = np.flatnonzero(before)
        if len(train) == 0 or len(test) == 0:
            raise ValueError(
                f"fold {number} has {len(train)} training and {len(test)} test samples"
            )
        folds.append(Fold(number, train, test, pd.Timestamp(start), pd.Timestamp(end)))
    return folds


def windows_overlap(times: pd.DatetimeIndex, fold: Fold, spec: SplitSpec) -> bool:
    """True when any training sample's information window touches any test sample's window."""
    lo, hi = information_window(times, spec)
    test_lo, test_hi = lo[fold.test].min(), hi[fold.test].max()
    train_lo, train_hi = lo[fold.train], hi[fold.train]
    return bool(np.any((train_hi >= test_lo) & (train_lo <= test_hi)))


def seed_leaky_split(
    n_samples: int, test_fraction: float = 0.2, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """The seed's protocol: a random split of overlapping windows. LEAKS; kept to show how much.

    Neighbouring hours share 23 of 24 input rows and most of their label window, so a random split
    puts near-copies of every test sample into training and inflates accuracy.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n_samples)
    n_test = max(1, int(round(n_samples * test_fraction)))
    return np.sort(order[n_test:]), np.sort(order[:n_test])
