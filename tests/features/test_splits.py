"""No test label window may overlap a training sequence or label, for any allowed split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.exchange import HOUR
from features.splits import SplitSpec, seed_leaky_split, walk_forward_splits, windows_overlap


def hourly_times(n: int, holes: list[int]) -> pd.DatetimeIndex:
    times = pd.date_range("2023-01-01", periods=n, freq="h")
    return times.delete(sorted(set(h for h in holes if h < n)))


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(600, 3000),
    holes=st.lists(st.integers(0, 2999), max_size=30),
    n_folds=st.integers(1, 5),
    horizon=st.integers(1, 24),
    length=st.integers(1, 48),
    purge=st.integers(0, 100),
    embargo=st.integers(0, 50),
    rolling=st.booleans(),
)
def test_no_fold_leaks(n, holes, n_folds, horizon, length, purge, embargo, rolling) -> None:
    times = hourly_times(n, holes)
    spec = SplitSpec(
        n_folds=n_folds,
        min_train_hours=200,
        horizon=horizon,
        sequence_length=length,
        scheme="rolling" if rolling else "expanding",
        train_hours=300 if rolling else None,
        purge_hours=purge,
        embargo_hours=embargo,
    )
    folds = walk_forward_splits(times, spec)
    assert len(folds) == n_folds
    for fold in folds:
        assert not windows_overlap(times, fold, spec)
        assert times[fold.train].max() < fold.test_start
        assert set(fold.train).isdisjoint(fold.test)
    tests = np.concatenate([f.test for f in folds])
    assert len(np.unique(tests)) == len(tests), "test folds must not overlap each other"
    ends = [f.test_end for f in folds]
    assert ends == sorted(ends)


def test_purge_is_never_below_horizon_plus_sequence() -> None:
    spec = SplitSpec(n_folds=2, min_train_hours=100, horizon=6, sequence_length=24, purge_hours=5)
    assert spec.purge == 30
    times = pd.date_range("2023-01-01", periods=1000, freq="h")
    for fold in walk_forward_splits(times, spec):
        gap_hours = (fold.test_start - times[fold.train[-1]]) / HOUR
        assert gap_hours > 30


def test_expanding_keeps_the_start_rolling_moves_it() -> None:
    times = pd.date_range("2023-01-01", periods=2000, freq="h")
    kwargs = dict(n_folds=3, min_train_hours=500, horizon=6, sequence_length=24)
    expanding = walk_forward_splits(times, SplitSpec(**kwargs))
    rolling = walk_forward_splits(times, SplitSpec(**kwargs, scheme="rolling", train_hours=400))
    assert {f.train[0] for f in expanding} == {0}
    assert [f.train[0] for f in rolling] == sorted({f.train[0] for f in rolling})
    assert rolling[-1].train[0] > 0
    assert all(len(f.train) <= 400 for f in rolling)


def test_too_little_data_is_a_clear_error() -> None:
    times = pd.date_range("2023-01-01", periods=300, freq="h")
    with pytest.raises(ValueError, match="cannot hold 3 test folds"):
        walk_forward_splits(
            times, SplitSpec(n_folds=3, min_train_hours=400, horizon=6, sequence_length=24)
        )


def test_seed_leaky_split_is_random_and_does_leak() -> None:
    times = pd.date_range("2023-01-01", periods=1000, freq="h")
    train, test = seed_leaky_split(len(times), 0.2, seed=1)
    assert len(test) == 200 and len(train) == 800
    assert set(train).isdisjoint(test)
    # neighbours of test hours sit in training: exactly the overlap walk-forward forbids
    assert np.isin(test + 1, train).mean() > 0.5
