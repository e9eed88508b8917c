"""The candle frame contract: what every source returns and every feature consumes.

A candle frame is what `pyupbit.get_ohlcv(..., interval="minute60")` returns: a DatetimeIndex named
`time` holding each candle's *open* time in KST (tz-naive), strictly increasing on the hour, and the
float64 columns open, high, low, close, volume, value. Validation names the first problem it
finds so that a bad file or reply is rejected with a reason instead of silently skewing features.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from features.exchange import HOUR_NS, KST, now_kst

CANDLE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume", "value")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")


class CandleError(ValueError):
    """A candle frame breaks the contract; the message names the first problem found."""


def to_kst(moment: datetime | pd.Timestamp) -> pd.Timestamp:
    """A tz-naive KST timestamp; tz-aware input is converted, naive input is taken as KST."""
    stamp = pd.Timestamp(moment)
    return stamp.tz_convert(KST).tz_localize(None) if stamp.tzinfo is not None else stamp


def current_hour_kst(now: datetime | None = None) -> pd.Timestamp:
    """The open time of the hour still forming at `now` (KST, tz-naive)."""
    return to_kst(now if now is not None else now_kst()).floor("h")


def drop_forming(candles: pd.DataFrame, now: datetime | None = None) -> pd.DataFrame:
    """Drop rows whose hour has not closed yet at `now`.

    Upbit returns the unfinished current hour as the last row; it is not a candle yet, and a model
    that saw it would see a different bar in training than in serving.
    """
    return candles.loc[candles.index < current_hour_kst(now)]


def empty_candles() -> pd.DataFrame:
    index = pd.DatetimeIndex([], name="time", dtype="datetime64[ns]")
    return pd.DataFrame({c: pd.Series(dtype="float64") for c in CANDLE_COLUMNS}, index=index)


def normalize_candles(frame: pd.DataFrame) -> pd.DataFrame:
    """Coerce a frame with the candle columns to the exact contract dtypes (no value changes)."""
    missing = [c for c in CANDLE_COLUMNS if c not in frame.columns]
    if missing:
        raise CandleError(f"missing column(s): {', '.join(missing)}")
    out = frame.loc[:, list(CANDLE_COLUMNS)].astype("float64")
    index = pd.DatetimeIndex(out.index)
    if index.tz is not None:
        index = index.tz_convert(KST).tz_localize(None)
    out.index = index.astype("datetime64[ns]").rename("time")
    return out


def candle_arrays(candles: pd.DataFrame) -> list[np.ndarray]:
    """The six candle columns as float64 arrays, in CANDLE_COLUMNS order.

    A frame holding exactly those columns as one float64 block (what `normalize_candles`, the
    sources and the serving parser build) hands out views of it without a copy or a Series each.
    """
    if tuple(candles.columns) == CANDLE_COLUMNS:
        block = candles.to_numpy(dtype="float64")
        return [block[:, i] for i in range(len(CANDLE_COLUMNS))]
    return [candles[column].to_numpy(dtype="float64") for column in CANDLE_COLUMNS]


def validate_candles(candles: pd.DataFrame) -> pd.DataFrame:
    """Check the contract and return the frame unchanged; raise CandleError on the first problem."""
    missing = [c for c in CANDLE_COLUMNS if c not in candles.columns]
    if missing:
        raise CandleError(f"missing column(s): {', '.join(missing)}")
    if not isinstance(candles.index, pd.DatetimeIndex):
        raise CandleError(
            f"index must be a DatetimeIndex of open times, got {type(candles.index).__name__}"
        )
    if candles.index.tz is not None:
        raise CandleError("index must be tz-naive KST open times, got tz-aware times")
    _check_times(candles.index)
    for column, dtype in candles.dtypes.items():
        if column in CANDLE_COLUMNS and not np.issubdtype(dtype, np.number):
            raise CandleError(f"column {column!r} is not numeric ({dtype})")
    # On plain arrays: the serving path validates every request (a pandas Series per check
    # cost ~0.5 ms of it).
    columns = dict(zip(CANDLE_COLUMNS, candle_arrays(candles), strict=True))
    _check_finite(columns, candles.index)
    _check_prices(columns, candles.index)
    _check_volumes(columns, candles.index)
    return candles


def _first(mask: np.ndarray, index: pd.Index) -> str:
    return str(index[int(np.argmax(mask))])


def _check_times(index: pd.DatetimeIndex) -> None:
    if len(index) < 2:
        return
    deltas = np.diff(index.asi8)
    if (deltas == 0).any():
        raise CandleError(f"duplicate time {_first(deltas == 0, index[1:])}")
    if (deltas < 0).any():
        raise CandleError(
            f"unsorted times: {_first(deltas < 0, index[1:])} comes after a later hour"
        )
    off_hour = (index.asi8 % HOUR_NS) != 0
    if off_hour.any():
        raise CandleError(f"time {_first(off_hour, index)} is not on the hour (minute60 candles)")


def _check_finite(columns: dict[str, np.ndarray], index: pd.Index) -> None:
    for column in CANDLE_COLUMNS:
        bad = ~np.isfinite(columns[column])
        if bad.any():
            raise CandleError(f"NaN or inf in {column!r} at {_first(bad, index)}")


def _check_prices(columns: dict[str, np.ndarray], index: pd.Index) -> None:
    for column in PRICE_COLUMNS:
        bad = columns[column] <= 0
        if bad.any():
            raise CandleError(f"non-positive price in {column!r} at {_first(bad, index)}")
    high, low = columns["high"], columns["low"]
    bad = high < low
    if bad.any():
        raise CandleError(f"high < low at {_first(bad, index)}")
    for column in ("open", "close"):
        price = columns[column]
        bad = (price < low) | (price > high)
        if bad.any():
            raise CandleError(f"{column} outside [low, high] at {_first(bad, index)}")


def _check_volumes(columns: dict[str, np.ndarray], index: pd.Index) -> None:
    for column in ("volume", "value"):
        bad = columns[column] < 0
        if bad.any():
            raise CandleError(f"negative {column} at {_first(bad, index)}")


@dataclass(frozen=True)
class RepairedCandles:
    """A gap-free hourly frame and which of its rows were filled in rather than observed."""

    candles: pd.DataFrame
    filled: pd.Series  # bool, aligned with candles.index

    @property
    def filled_hours(self) -> int:
        return int(self.filled.sum())


def gap_lengths(index: pd.DatetimeIndex) -> np.ndarray:
    """Missing hours before each row (0 for the first row and for consecutive hours)."""
    if len(index) == 0:
        return np.zeros(0, dtype=np.int64)
    steps = np.diff(index.asi8) // HOUR_NS
    return np.concatenate([[0], steps - 1]).astype(np.int64)


def repair_gaps(candles: pd.DataFrame, max_gap_hours: int) -> RepairedCandles:
    """Re-index to every hour, filling each missing hour with a flat candle at the previous close.

    A filled hour has open = high = low = close = previous close and zero volume and value: the
    exchange traded nothing we know of, so nothing is invented. A gap longer than `max_gap_hours`
    is refused: bridging a multi-day outage with flat candles would fake a calm market; split such a
    series with `split_segments` instead.
    """
    validate_candles(candles)
    gaps = gap_lengths(candles.index)
    too_long = gaps > max_gap_hours
    if too_long.any():
        at = candles.index[int(np.argmax(too_long))]
        raise CandleError(
            f"gap of {int(gaps[too_long][0])} hours before {at} "
            f"exceeds max_gap_hours={max_gap_hours}"
        )
    frame = candles.loc[:, list(CANDLE_COLUMNS)].astype("float64")
    if len(frame) == 0:
        return RepairedCandles(frame, pd.Series(np.zeros(0, dtype=bool), index=frame.index))
    times = frame.index.asi8
    hours = int((times[-1] - times[0]) // HOUR_NS) + 1
    columns = [frame[c].to_numpy() for c in CANDLE_COLUMNS]
    filled_columns, observed = fill_hours(times, columns, int(times[0]), hours)
    full = pd.date_range(frame.index[0], periods=hours, freq="h", name="time")
    out = pd.DataFrame(dict(zip(CANDLE_COLUMNS, filled_columns, strict=True)), index=full)
    return RepairedCandles(out, pd.Series(~observed, index=full, name="filled"))


def fill_hours(
    times: np.ndarray, columns: list[np.ndarray], start: int, hours: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """The gap-fill rule in numpy, shared by `repair_gaps` and the serving path.

    `columns` are the candle columns in CANDLE_COLUMNS order at open times `times` (int ns); the
    result covers every hour from `start` for `hours` hours. A missing hour becomes a flat candle at
    the close of the last row before it, with zero volume and value. The first hour must have a row
    at or before it. Returns the filled columns and which hours were observed.
    """
    slots = (times - start) // HOUR_NS
    hour = np.arange(hours)
    source = np.searchsorted(slots, hour, side="right") - 1  # last row at or before each hour
    observed = slots[source] == hour
    close = columns[CANDLE_COLUMNS.index("close")][source]
    filled = [
        np.where(observed, column[source], close if name in PRICE_COLUMNS else 0.0)
        for name, column in zip(CANDLE_COLUMNS, columns, strict=True)
    ]
    return filled, observed


def split_segments(candles: pd.DataFrame, max_gap_hours: int) -> list[pd.DataFrame]:
    """Split at every gap longer than `max_gap_hours`; each segment warms its indicators up anew."""
    validate_candles(candles)
    if len(candles) == 0:
        return []
    starts = np.flatnonzero(gap_lengths(candles.index) > max_gap_hours)
    bounds = [0, *starts.tolist(), len(candles)]
    return [candles.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def repair_segments(candles: pd.DataFrame, max_gap_hours: int) -> list[RepairedCandles]:
    """Split at long gaps, then fill the short gaps inside each segment."""
    return [repair_gaps(part, max_gap_hours) for part in split_segments(candles, max_gap_hours)]
