"""The candle contract: every malformed frame is refused with a reason; gaps repaired honestly."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from features.candles import (
    CandleError,
    drop_forming,
    repair_gaps,
    repair_segments,
    split_segments,
    validate_candles,
)


def make_candles(hours: int, start: str = "2024-01-01 09:00", price: float = 100.0) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    close = price * np.exp(np.cumsum(rng.normal(0, 0.01, hours)))
    open_ = np.concatenate([[price], close[:-1]])
    high = np.maximum(open_, close) * 1.002
    low = np.minimum(open_, close) * 0.998
    volume = rng.uniform(1, 10, hours)
    index = pd.date_range(start, periods=hours, freq="h", name="time")
    return pd.DataFrame(
        {
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
            "value": volume * close,
        },
        index=index,
    )


def test_valid_frame_passes_unchanged() -> None:
    candles = make_candles(48)
    assert validate_candles(candles) is candles


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda df: df.drop(columns=["value"]), "missing column(s): value"),
        (
            lambda df: df.assign(close=df.close.where(df.index != df.index[5], np.nan)),
            "NaN or inf in 'close'",
        ),
        (
            lambda df: df.assign(volume=df.volume.where(df.index != df.index[3], np.inf)),
            "NaN or inf in 'volume'",
        ),
        (
            lambda df: df.assign(low=df.low.where(df.index != df.index[7], -1.0)),
            "non-positive price in 'low'",
        ),
        (lambda df: df.assign(high=df.low * 0.5), "high < low"),
        (lambda df: df.assign(close=df.high * 1.01), "close outside [low, high]"),
        (lambda df: df.assign(volume=-df.volume), "negative volume"),
        (lambda df: pd.concat([df.iloc[:5], df.iloc[4:5], df.iloc[5:]]), "duplicate time"),
        (lambda df: df.iloc[::-1], "unsorted times"),
        (lambda df: df.set_axis(df.index + pd.Timedelta(minutes=30)), "not on the hour"),
        (lambda df: df.reset_index(drop=True), "DatetimeIndex"),
        (lambda df: df.tz_localize("Asia/Seoul"), "tz-naive"),
    ],
)
def test_invalid_frames_name_the_first_problem(breakage, message: str) -> None:
    with pytest.raises(
        CandleError,
        match=message.replace("(", r"\(")
        .replace(")", r"\)")
        .replace("[", r"\[")
        .replace("]", r"\]"),
    ):
        validate_candles(breakage(make_candles(24)))


def test_error_names_the_offending_hour() -> None:
    candles = make_candles(24)
    candles.loc[candles.index[10], "close"] = np.nan
    with pytest.raises(CandleError, match=str(candles.index[10])):
        validate_candles(candles)


def test_repair_fills_flat_zero_volume_candles_at_previous_close() -> None:
    candles = make_candles(30)
    holed = candles.drop(candles.index[[10, 11, 12, 20]])
    repaired = repair_gaps(holed, max_gap_hours=3)
    assert repaired.candles.index.equals(candles.index)
    assert repaired.filled_hours == 4
    assert list(repaired.filled[repaired.filled].index) == list(candles.index[[10, 11, 12, 20]])
    prev_close = candles.close.iloc[9]
    for hour in candles.index[[10, 11, 12]]:
        row = repaired.candles.loc[hour]
        assert row[["open", "high", "low", "close"]].tolist() == [prev_close] * 4
        assert row.volume == 0.0 and row.value == 0.0
    observed = repaired.candles.loc[~repaired.filled]
    pd.testing.assert_frame_equal(observed, holed, check_freq=False)
    validate_candles(repaired.candles)


def test_repair_refuses_a_gap_longer_than_allowed() -> None:
    candles = make_candles(30)
    holed = candles.drop(candles.index[5:13])
    with pytest.raises(CandleError, match="gap of 8 hours"):
        repair_gaps(holed, max_gap_hours=6)


def test_long_gap_splits_segments_and_short_ones_are_filled() -> None:
    candles = make_candles(100)
    holed = candles.drop(candles.index[list(range(30, 50)) + [70, 71]])
    segments = split_segments(holed, max_gap_hours=6)
    assert [len(s) for s in segments] == [30, 48]
    repaired = repair_segments(holed, max_gap_hours=6)
    assert [len(r.candles) for r in repaired] == [30, 50]
    assert [r.filled_hours for r in repaired] == [0, 2]


def test_real_data_repairs_with_upbit_maintenance_gaps(real_candles) -> None:
    for market, candles in real_candles.items():
        validate_candles(candles)
        parts = repair_segments(candles, max_gap_hours=6)
        assert len(parts) == 1, market  # the largest real gap is 5 hours
        assert parts[0].filled_hours > 0
        assert parts[0].candles.index.is_monotonic_increasing


def test_crash_hour_is_kept(real_candles) -> None:
    btc = real_candles["KRW-BTC"]
    crash = pd.Timestamp("2024-12-03 22:00")
    assert crash in btc.index
    move = abs(np.log(btc.close.loc[crash] / btc.close.shift(1).loc[crash]))
    assert move > 0.05


def test_forming_candle_is_dropped_at_eleven_oh_five() -> None:
    candles = make_candles(30, start="2024-03-01 00:00")
    clock = datetime(2024, 3, 1, 11, 0, 5)
    closed = drop_forming(candles, clock)
    assert closed.index[-1] == pd.Timestamp("2024-03-01 10:00")
