"""Calendar-anchored folds: a fold is fixed by the calendar, never by the range asked for."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.folds import (
    FoldGrid,
    TrainWindow,
    anchored_folds,
    folds_in_range,
    leaky_kfold,
    purged_parts,
)

GRID = FoldGrid(pd.Timestamp("2018-01-01"), 720)


def _hours(start: str, periods: int) -> pd.DatetimeIndex:
    return pd.date_range(start, periods=periods, freq="h")


def test_a_fold_is_the_same_whatever_history_surrounds_it() -> None:
    window = TrainWindow(purge_hours=30, min_train_samples=500)
    long = anchored_folds(_hours("2023-01-01", 6000), GRID, window)
    short = anchored_folds(_hours("2023-03-01", 3000), GRID, window)
    spans_long = {f.number: (f.test_start, f.test_end) for f in long}
    for fold in short[:-1]:  # the last fold of the shorter history is cut by its end
        assert spans_long[fold.number] == (fold.test_start, fold.test_end)
    assert all((f.test_start - GRID.origin) / pd.Timedelta(hours=720) == f.number for f in long)


def test_training_rows_end_a_purge_before_the_fold_and_rolling_keeps_the_newest() -> None:
    times = _hours("2023-01-01", 8000)
    expanding = anchored_folds(times, GRID, TrainWindow(30, None, 500))
    rolling = anchored_folds(times, GRID, TrainWindow(30, 1000, 500))
    for fold in expanding + rolling:
        assert times[fold.train].max() < fold.test_start - pd.Timedelta(hours=30)
        assert ((times[fold.test] >= fold.test_start) & (times[fold.test] < fold.test_end)).all()
    assert expanding[-1].train[0] == 0
    assert len(rolling[-1].train) == 1000


def test_range_selects_whole_folds_and_short_histories_have_none() -> None:
    folds = anchored_folds(_hours("2023-01-01", 8000), GRID, TrainWindow(30, None, 500))
    chosen = folds_in_range(folds, pd.Timestamp("2023-06-15"), pd.Timestamp("2023-07-20"))
    assert all(f.test_start <= pd.Timestamp("2023-07-20") for f in chosen)
    assert chosen[0].test_start < pd.Timestamp("2023-06-15") < chosen[0].test_end
    assert [f.number for f in chosen] == list(range(chosen[0].number, chosen[-1].number + 1))
    assert len(chosen) == 2
    assert anchored_folds(_hours("2023-01-01", 100), GRID, TrainWindow(30, None, 500)) == []


@settings(max_examples=30, deadline=None)
@given(n=st.integers(10, 500), parts=st.integers(2, 8), seed=st.integers(0, 100))
def test_leaky_kfold_tests_every_sample_once(n: int, parts: int, seed: int) -> None:
    if n < parts:
        with pytest.raises(ValueError):
            leaky_kfold(n, parts, seed)
        return
    splits = leaky_kfold(n, parts, seed)
    tested = np.concatenate([test for _, test in splits])
    assert sorted(tested) == list(range(n))
    for train, test in splits:
        assert not set(train) & set(test) and len(train) + len(test) == n


def test_purged_parts_keep_their_order_and_gaps() -> None:
    times = _hours("2024-01-01", 3000).asi8
    parts = purged_parts(
        times, np.arange(3000), {"fit": 0.8, "early_stop": 0.1, "calibrate": 0.1}, 30
    )
    assert list(parts) == ["fit", "early_stop", "calibrate"]
    for a, b in zip(list(parts)[:-1], list(parts)[1:], strict=True):
        assert times[parts[b][0]] - times[parts[a][-1]] > 30 * 3_600_000_000_000
    with pytest.raises(ValueError, match="empty after purging"):
        purged_parts(times[:50], np.arange(50), {"a": 0.5, "b": 0.5}, 40)
