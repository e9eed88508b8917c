"""The 46 model features: one numpy core shared by training (batch) and serving (window).

`feature_matrix` is the only place a feature is defined. The batch path (`compute_features` over
each repaired segment, which `features.dataset.build_dataset` runs to train; `build_features` for a
whole history) and the serving path (`features.serving`) both call it, so the two cannot drift
apart; serving only hands over less history, and `WARMUP_HOURS` is measured
(tests/features/test_serving_parity.py) so that this history is enough for every column to equal
the batch value within rtol 1e-6.

Definitions follow TA-Lib where TA-Lib has the indicator (RSI 14 Wilder, MACD 12/26/9, BBANDS 20/2
with population std, ATR 14 Wilder, SMA, EMA, MOM, ROC) including its seeding: an EMA starts at the
SMA of its first N inputs, Wilder averages start at the mean of their first 14 inputs, and MACD's
fast EMA starts on the same hour as its slow EMA (TA-Lib's quirk). Tests check agreement on the real
Upbit candles. The features that TA-Lib lacks are defined here so that they stay finite on the flat
zero-volume candles that gap repair inserts:

- volume_change = (v_t - v_{t-1}) / (v_t + v_{t-1}), 0 when both are 0 (bounded in [-1, 1];
  a percent change would be infinite after a zero-volume hour).
- volume_ma_ratio = v_t / SMA20(v), 1.0 when the 20-hour mean is 0 (nothing traded: "as usual").
- rsi = 50 when the average gain and loss are both 0 (TA-Lib says 0; a flat market is neutral).
- bb_position = (close - lower) / (upper - lower), 0.5 when the 20 closes are all equal.
- volatility_N = sample std (ddof=1, as pandas' rolling std) of `returns` over N hours.

The two kinds of loop numpy runs badly, the seeded averages (a recursion) and the sliding window
sums (a tree of whole-length temporaries), are numba-compiled in features/recursions.py; their
results are bit-identical to the numpy and scipy code they replaced.

Importing this module never imports torch, ray, lightgbm or talib: serving replicas stay small.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd

from features.candles import CANDLE_COLUMNS, CandleError, repair_segments, validate_candles
from features.exchange import HOUR_NS
from features.recursions import Average, seeded_averages, window_moments, window_sums

SEQUENCE_LENGTH = 24
MA_WINDOWS: tuple[int, ...] = (5, 10, 20, 50, 100)
VOLATILITY_WINDOWS: tuple[int, ...] = (5, 20)
MOMENTUM_WINDOWS: tuple[int, ...] = (5, 10, 20)

FEATURE_PARAMS: dict[str, Any] = {
    "revision": 1,  # bump when a formula changes without a parameter changing
    "rsi": {"period": 14, "smoothing": "wilder"},
    "macd": {"fast": 12, "slow": 26, "signal": 9},
    "bbands": {"period": 20, "nbdev_up": 2.0, "nbdev_down": 2.0, "ma": "sma", "std_ddof": 0},
    "atr": {"period": 14, "smoothing": "wilder"},
    "moving_averages": list(MA_WINDOWS),
    "volatility": {"windows": list(VOLATILITY_WINDOWS), "ddof": 1},
    "momentum": list(MOMENTUM_WINDOWS),
    "volume_ma": 20,
}

FEATURE_NAMES: tuple[str, ...] = (
    *CANDLE_COLUMNS,
    "returns",
    "log_returns",
    "high_low_ratio",
    "close_open_ratio",
    "volume_change",
    "volume_ma_ratio",
    "rsi",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_upper",
    "bb_middle",
    "bb_lower",
    "bb_width",
    "bb_position",
    "atr",
    "atr_ratio",
    *(f"{kind}_{n}" for n in MA_WINDOWS for kind in ("sma", "ema", "price_to_sma")),
    *(f"volatility_{n}" for n in VOLATILITY_WINDOWS),
    *(f"{kind}_{n}" for n in MOMENTUM_WINDOWS for kind in ("momentum", "roc")),
)
"""The design's order. Moving averages go per window (sma_5, ema_5, price_to_sma_5, sma_10, ...),
momentum likewise (momentum_5, roc_5, momentum_10, ...). A model is only valid for this order."""

_PRICE_LEVEL = {"open", "high", "low", "close", "macd", "macd_signal", "macd_hist"}
_PRICE_LEVEL |= {"bb_upper", "bb_middle", "bb_lower", "atr"}
_PRICE_LEVEL |= {f"{k}_{n}" for n in MA_WINDOWS for k in ("sma", "ema")}
_PRICE_LEVEL |= {f"momentum_{n}" for n in MOMENTUM_WINDOWS}
PRICE_LEVEL_FEATURES: tuple[str, ...] = tuple(n for n in FEATURE_NAMES if n in _PRICE_LEVEL)
"""Columns in KRW price units (levels and price differences); every other column is a ratio,
a percent or a unit-free oscillator, except the two below."""
VOLUME_LEVEL_FEATURES: tuple[str, ...] = ("volume", "value")


def feature_hash(names: tuple[str, ...], params: dict[str, Any]) -> str:
    """sha256 of the names and parameters: a bundle trained on other features refuses to load."""
    text = json.dumps({"names": list(names), "params": params}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


FEATURE_HASH: str = feature_hash(FEATURE_NAMES, FEATURE_PARAMS)

WARMUP_HOURS = 800
"""Rows a contiguous segment needs before every feature equals its full-history value within
rtol 1e-6 (first WARMUP_HOURS - 1 rows of every segment are NaN). Measured, not guessed, by
tests/features/test_serving_parity.py: over 2,500 random hours per market plus the 250 hardest
(crash weeks, screened by the EMA-100 seed error) the largest need on the four Upbit markets was
711 rows (KRW-SOL, Dec 2022); 800 is that plus ~12 %, rounded up to a hundred. EMA-100 binds:
its seed error shrinks by 99/101 an hour, so 800 rows absorb a seed off by the whole price."""
SERVING_HEADROOM_HOURS = 48
"""Candles fetched beyond SERVING_WINDOW: the row before the window, whose close fills a gap the
window starts in, and spare rows, so a fetch never ends one row short."""


def serving_windows(warmup_hours: int) -> tuple[int, int]:
    """(SERVING_WINDOW, CANDLES_FOR_SERVING) for a warm-up of `warmup_hours`: the one derivation,
    also used by tests that change the warm-up."""
    serving_window = warmup_hours + SEQUENCE_LENGTH - 1
    return serving_window, serving_window + SERVING_HEADROOM_HOURS


SERVING_WINDOW, CANDLES_FOR_SERVING = serving_windows(WARMUP_HOURS)
# SERVING_WINDOW: contiguous hours serving needs to produce SEQUENCE_LENGTH converged rows.
# CANDLES_FOR_SERVING: how many candles to fetch (or keep of a request) to serve one prediction.
# Serving code reads these three names through the module at call time (`indicators.SERVING_WINDOW`,
# not `from features.indicators import SERVING_WINDOW`), so a test that patches the warm-up (the
# `warmup_hours` fixture of tests/conftest.py sets all three) changes every window of the process.

_FLAT_STD = 1e-6  # windows with std below this fraction of their mean are checked for flatness
_INDEX = {name: j for j, name in enumerate(FEATURE_NAMES)}


class _Sheet:
    """The (n, 46) result, Fortran-ordered: each feature is one contiguous column.

    Helpers write into the columns in place (`out=`): on a 50k-hour history the time goes into
    moving memory, so every temporary that is not made is time saved.
    """

    def __init__(self, rows: int) -> None:
        self.data = np.empty((rows, len(FEATURE_NAMES)), order="F")

    def __getitem__(self, name: str) -> np.ndarray:
        return self.data[:, _INDEX[name]]

    def unknown_before(self, names: tuple[str, ...], start: int) -> None:
        """Mark rows before `start` NaN: the indicator is not defined there yet."""
        for name in names:
            self[name][:start] = np.nan


def _change_columns(s: _Sheet, o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray) -> None:
    returns, logs = s["returns"][1:], s["log_returns"][1:]
    np.divide(c[1:], c[:-1], out=returns)
    np.log(returns, out=logs)
    returns -= 1.0
    np.divide(h, lo, out=s["high_low_ratio"])
    np.divide(c, o, out=s["close_open_ratio"])
    s.unknown_before(("returns", "log_returns"), 1)


def _volume_columns(s: _Sheet, v: np.ndarray) -> None:
    """Finite on zero volumes: a change between two zero hours is 0, a ratio to a zero mean is 1."""
    change = s["volume_change"][1:]
    np.subtract(v[1:], v[:-1], out=change)
    total = v[1:] + v[:-1]
    np.divide(change, total, out=change, where=total != 0)  # total == 0 leaves 0 - 0 = 0
    n = FEATURE_PARAMS["volume_ma"]
    ratio = s["volume_ma_ratio"][n - 1 :]
    window_sums(v, (n,), (ratio,))
    ratio /= n  # the mean, divided into the volume in place
    quiet = ratio == 0
    np.divide(v[n - 1 :], ratio, out=ratio, where=~quiet)
    ratio[quiet] = 1.0
    s.unknown_before(("volume_change",), 1)
    s.unknown_before(("volume_ma_ratio",), n - 1)


def _wilder_columns(s: _Sheet, h: np.ndarray, lo: np.ndarray, c: np.ndarray) -> None:
    """RSI (average gain / (gain + loss)) and ATR, Wilder-smoothed from hour `period` on."""
    period = FEATURE_PARAMS["rsi"]["period"]
    atr_period = FEATURE_PARAMS["atr"]["period"]
    change = c[1:] - c[:-1]
    gain, loss = np.maximum(change, 0.0), np.maximum(-change, 0.0, out=change)
    true_range = np.subtract(h[1:], lo[1:])
    buffer = np.empty(len(true_range))
    np.fmax(true_range, np.abs(np.subtract(h[1:], c[:-1], out=buffer), out=buffer), out=true_range)
    np.fmax(true_range, np.abs(np.subtract(lo[1:], c[:-1], out=buffer), out=buffer), out=true_range)
    average_gain, average_loss = s["rsi"][1:], buffer
    seeded_averages(
        (
            Average(average_gain, gain, 1.0 / period, period - 1, period),
            Average(average_loss, loss, 1.0 / period, period - 1, period),
            Average(s["atr"][1:], true_range, 1.0 / atr_period, atr_period - 1, atr_period),
        )
    )
    average_loss += average_gain
    average_gain *= 100.0
    np.divide(average_gain, average_loss, out=average_gain, where=average_loss != 0)
    average_gain[average_loss == 0] = 50.0
    np.divide(s["atr"], c, out=s["atr_ratio"])
    s.unknown_before(("rsi",), period)
    s.unknown_before(("atr", "atr_ratio"), atr_period)


def _macd_columns(s: _Sheet, c: np.ndarray) -> None:
    """TA-Lib's MACD: both EMAs start on hour slow-1 (the fast one at the mean of the `fast`
    closes ending there); all three outputs start on the signal's first hour."""
    fast, slow, signal = (FEATURE_PARAMS["macd"][k] for k in ("fast", "slow", "signal"))
    line, slow_ema = s["macd"], np.empty(len(c))
    seeded_averages(
        (
            Average(line, c, 2.0 / (fast + 1), slow - 1, fast),
            Average(slow_ema, c, 2.0 / (slow + 1), slow - 1, slow),
        )
    )
    line -= slow_ema
    s["macd_signal"][: slow - 1] = np.nan
    alpha = 2.0 / (signal + 1)
    signal_line = s["macd_signal"][slow - 1 :]
    seeded_averages((Average(signal_line, line[slow - 1 :], alpha, signal - 1, signal),))
    np.subtract(line, s["macd_signal"], out=s["macd_hist"])
    s.unknown_before(("macd", "macd_hist"), slow + signal - 2)


def _average_columns(s: _Sheet, c: np.ndarray) -> None:
    """SMA, EMA and close/SMA per window."""
    window_sums(c, MA_WINDOWS, [s[f"sma_{n}"][n - 1 :] for n in MA_WINDOWS])
    for n in MA_WINDOWS:
        sma = s[f"sma_{n}"]
        sma[: n - 1] = np.nan
        sma[n - 1 :] /= n
        np.divide(c, sma, out=s[f"price_to_sma_{n}"])
    seeded_averages([Average(s[f"ema_{n}"], c, 2.0 / (n + 1), n - 1, n) for n in MA_WINDOWS])


def _bollinger_columns(s: _Sheet, c: np.ndarray) -> None:
    """Bands at nbdev population std around the SMA, as TA-Lib's BBANDS; position 0.5 if flat."""
    params = FEATURE_PARAMS["bbands"]
    n = params["period"]
    middle, upper, lower, width, position = (
        s[name][n - 1 :]
        for name in ("bb_middle", "bb_upper", "bb_lower", "bb_width", "bb_position")
    )
    var = np.empty(len(middle))
    window_moments(c, n, params["std_ddof"], _FLAT_STD, middle, var)
    std = np.sqrt(var, out=var)
    np.add(middle, np.multiply(params["nbdev_up"], std, out=upper), out=upper)
    np.subtract(middle, np.multiply(params["nbdev_down"], std, out=lower), out=lower)
    np.subtract(upper, lower, out=width)
    np.subtract(c[n - 1 :], lower, out=position)
    np.divide(position, width, out=position, where=width != 0)
    position[width == 0] = 0.5
    width /= middle
    s.unknown_before(("bb_upper", "bb_middle", "bb_lower", "bb_width", "bb_position"), n - 1)


def _trend_columns(s: _Sheet, c: np.ndarray) -> None:
    """Volatility of hourly returns, and momentum/ROC over 5, 10, 20 hours."""
    ddof = FEATURE_PARAMS["volatility"]["ddof"]
    returns = s["returns"][1:]  # returns[0] is unknown
    means = np.empty(len(returns))  # not a feature: the volatility kernel's by-product
    for n in VOLATILITY_WINDOWS:
        column = s[f"volatility_{n}"]
        column[:n] = np.nan
        window_moments(returns, n, ddof, _FLAT_STD, means[: max(len(column) - n, 0)], column[n:])
        np.sqrt(column[n:], out=column[n:])
    for n in MOMENTUM_WINDOWS:
        momentum, roc = s[f"momentum_{n}"], s[f"roc_{n}"]
        s.unknown_before((f"momentum_{n}", f"roc_{n}"), n)
        np.subtract(c[n:], c[:-n], out=momentum[n:])
        np.divide(c[n:], c[:-n], out=roc[n:])
        roc[n:] -= 1.0
        roc[n:] *= 100.0


def feature_matrix(
    open: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    value: np.ndarray,
    *,
    warmup_hours: int | None = None,
) -> np.ndarray:
    """The 46 features of one contiguous hourly segment, shape (n, 46), columns in FEATURE_NAMES.

    Row t uses rows <= t only. The first `warmup_hours - 1` rows are NaN: their values still depend
    on where the segment starts, so training must not see them and serving never produces them.
    `warmup_hours` (default WARMUP_HOURS) exists for the tests that measure WARMUP_HOURS.
    The result is Fortran-ordered (one contiguous column per feature).
    """
    arrays = (open, high, low, close, volume, value)
    # contiguous: the compiled kernels have one cached version, for contiguous float64 arrays
    o, h, lo, c, v, _ = inputs = [np.asarray(a, np.float64, order="C") for a in arrays]
    if len({a.shape for a in inputs}) != 1 or c.ndim != 1:
        raise ValueError(f"six 1-D arrays of one length expected, got {[a.shape for a in inputs]}")
    sheet = _Sheet(len(c))
    for name, column in zip(CANDLE_COLUMNS, inputs, strict=True):
        sheet[name][:] = column
    _change_columns(sheet, o, h, lo, c)
    _volume_columns(sheet, v)
    _wilder_columns(sheet, h, lo, c)
    _macd_columns(sheet, c)
    _average_columns(sheet, c)
    _bollinger_columns(sheet, c)
    _trend_columns(sheet, c)  # reads the returns column written above
    warmup = WARMUP_HOURS if warmup_hours is None else warmup_hours
    sheet.data[: max(warmup - 1, 0)] = np.nan
    return sheet.data


def _matrix_of(candles: pd.DataFrame) -> np.ndarray:
    return feature_matrix(*(candles[c].to_numpy(dtype=np.float64) for c in CANDLE_COLUMNS))


def _frame(matrix: np.ndarray, index: pd.Index) -> pd.DataFrame:
    return pd.DataFrame(matrix, index=index, columns=list(FEATURE_NAMES), copy=False)


def _is_contiguous(index: pd.DatetimeIndex) -> bool:
    return len(index) < 2 or bool((np.diff(index.asi8) == HOUR_NS).all())


def compute_features(candles: pd.DataFrame) -> pd.DataFrame:
    """Features of one gap-free hourly segment, NaN in its first WARMUP_HOURS - 1 rows.

    A gap is refused rather than bridged: indicators over a hidden gap would read two distant
    hours as neighbours. Repair or split first (`build_features` does both).
    """
    validate_candles(candles)
    if not _is_contiguous(candles.index):
        raise CandleError("compute_features needs one contiguous hourly segment; repair gaps first")
    return _frame(_matrix_of(candles), candles.index)


def build_features(candles: pd.DataFrame, max_gap_hours: int = 6) -> pd.DataFrame:
    """The batch (training) path: every hour of the repaired segments, each segment warmed up anew.

    Gaps up to max_gap_hours are filled with flat zero-volume candles (`repair_segments`); longer
    gaps split the history, and each segment's first WARMUP_HOURS - 1 rows are NaN.
    """
    parts = repair_segments(candles, max_gap_hours)
    if not parts:
        return _frame(np.empty((0, len(FEATURE_NAMES))), candles.index[:0])
    frames = [_frame(_matrix_of(p.candles), p.candles.index) for p in parts]
    return frames[0] if len(frames) == 1 else pd.concat(frames)
