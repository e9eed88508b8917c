"""The serving path: the newest feature rows of one market from its latest closed candles.

Serving runs `feature_matrix`, the function training runs, over only the last SERVING_WINDOW hours,
which is enough for every feature to equal the batch value (tests/features/test_serving_parity.py
shows it on the real markets and derives WARMUP_HOURS). Short gaps are filled by
`features.candles.fill_hours`, the numpy rule `repair_gaps` itself uses, applied to the tail only
(a pandas reindex of the window alone took ~4 ms of the 5 ms budget); Upbit's quarterly maintenance
gaps sit inside a 34-day window about half of the time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import indicators
from features.candles import CandleError, candle_arrays, fill_hours, gap_lengths, validate_candles
from features.exchange import HOUR, HOUR_NS
from features.groups import BASE_SET, FeatureSet, MarketContext
from features.indicators import SEQUENCE_LENGTH, feature_matrix


def _segment_start(times: np.ndarray, index: pd.DatetimeIndex, max_gap_hours: int) -> int:
    """Open time (ns) of the last segment: the first row after the last gap over max_gap_hours."""
    long_gaps = np.flatnonzero(gap_lengths(index) > max_gap_hours)
    return int(times[long_gaps[-1]] if len(long_gaps) else times[0])


def _hourly_tail(window: pd.DataFrame, hours: int, max_gap_hours: int) -> list[np.ndarray]:
    """The candle columns of the last `hours` hours, short gaps filled as repair_gaps fills them.

    The row before the tail is kept when there is one: if the tail starts inside a gap, that row's
    close is the fill price, exactly as the batch path (which repairs the whole history) fills it.
    """
    times = window.index.asi8
    start = int(times[-1]) - (hours - 1) * HOUR_NS
    first = max(int(np.searchsorted(times, start)) - 1, 0)
    times = times[first:]
    segment_start = _segment_start(times, window.index[first:], max_gap_hours)
    if segment_start > start:
        raise CandleError(
            f"serving needs {hours} contiguous hours ending {window.index[-1]}, but the last "
            f"segment starts {pd.Timestamp(segment_start)} "
            f"({(int(times[-1]) - segment_start) // HOUR_NS + 1} hours): fetch more candles; "
            f"a gap over max_gap_hours={max_gap_hours} restarts the warm-up"
        )
    return fill_hours(times, candle_arrays(window.iloc[first:]), start, hours)[0]


def serving_matrix(
    window: pd.DataFrame,
    rows: int = SEQUENCE_LENGTH,
    max_gap_hours: int = 6,
    *,
    feature_set: FeatureSet = BASE_SET,
    context: MarketContext | None = None,
    market: str = "",
) -> np.ndarray:
    """The last `rows` feature rows (rows x len(feature_set.names)) from the newest closed hourly
    candles; the newest row is the hour `window.index[-1]`. All finite except where a nullable
    group's input is missing (a Binance hour: NaN, as in training).

    Group columns come from `feature_set.columns`, the batch path's code, over the same hours;
    `context` (features.context.serving_context) must reach the newest hour, else
    MissingContextError (a CandleError) names what is missing.

    `window` holds at least SERVING_WINDOW closed candles (drop the forming hour first, see
    `features.candles.drop_forming`); short gaps are filled as in training. Only the last
    WARMUP_HOURS + rows - 1 hours are computed. Raises CandleError, naming the problem, when the
    window's last contiguous segment is shorter than that. The array, not a frame: the predictor
    needs nothing else, and labelling 46 columns cost a tenth of a request.
    """
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    hours = max(indicators.SERVING_WINDOW, indicators.WARMUP_HOURS + rows - 1)
    validate_candles(window)
    if len(window) == 0:
        raise CandleError(f"serving needs {hours} hours of candles, got none")
    tail = _hourly_tail(window, hours, max_gap_hours)
    base = feature_matrix(*tail)[-rows:]
    if not feature_set.groups:
        return base
    times = int(window.index.asi8[-1]) - np.arange(hours - 1, -1, -1, dtype=np.int64) * HOUR_NS
    extra = feature_set.columns(
        market, times, tail, context, max_gap_hours=max_gap_hours, serving=True
    )
    return np.hstack([base, extra[-rows:]])


def serving_features(
    window: pd.DataFrame,
    rows: int = SEQUENCE_LENGTH,
    max_gap_hours: int = 6,
    *,
    feature_set: FeatureSet = BASE_SET,
    context: MarketContext | None = None,
    market: str = "",
) -> pd.DataFrame:
    """`serving_matrix` as a frame indexed by hour, columns named as `feature_set.names`."""
    matrix = serving_matrix(
        window, rows, max_gap_hours, feature_set=feature_set, context=context, market=market
    )
    end = window.index[-1]
    index = pd.date_range(end - (rows - 1) * HOUR, end, freq="h", name="time")
    return pd.DataFrame(matrix, index=index, columns=list(feature_set.names))
