"""From candles to one prediction: the same feature code as training, on the serving window.

Pure functions, no Ray: the predictor deployment calls them, and so do the in-process benchmark
baseline and the tests. Request problems raise `RequestError` with the HTTP status they deserve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.candles import CANDLE_COLUMNS, CandleError, normalize_candles, validate_candles
from features.indicators import SEQUENCE_LENGTH, SERVING_WINDOW
from features.serving import serving_features
from serve.sizing import sizing_volatility
from train.bundle import HybridModel


class RequestError(ValueError):
    """A request the server cannot answer; `status` is the HTTP code it maps to."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RawPrediction:
    market: str
    time: pd.Timestamp  # open time (KST) of the newest closed candle the model saw
    probabilities: tuple[float, float, float]
    model_version: str
    volatility: float  # std of the last 24 hourly log returns, for sizing


def candles_from_rows(rows: list[dict[str, Any]], max_rows: int) -> pd.DataFrame:
    """Request rows ({time, open, high, low, close, volume, value}) -> a validated candle frame.

    Built column by column (half the time of a DataFrame of dicts, on the serving hot path).
    """
    if not isinstance(rows, list) or not rows:
        raise RequestError(422, "candles must be a non-empty list")
    if len(rows) > max_rows:
        raise RequestError(422, f"at most {max_rows} candles per request, got {len(rows)}")
    try:
        n = len(rows)
        columns = {c: np.fromiter((r[c] for r in rows), "float64", n) for c in CANDLE_COLUMNS}
        times = pd.DatetimeIndex(pd.to_datetime([r["time"] for r in rows], format="ISO8601"))
    except KeyError as exc:
        raise RequestError(422, f"a candle lacks the field {exc.args[0]!r}") from exc
    except (ValueError, TypeError) as exc:
        raise RequestError(422, f"malformed candles: {exc}") from exc
    try:
        candles = normalize_candles(pd.DataFrame(columns, index=times))
        validate_candles(candles)
    except (CandleError, ValueError) as exc:
        raise RequestError(422, f"malformed candles: {exc}") from exc
    return candles


def warm_up() -> None:
    """Run the feature kernels once so the first request does not pay their JIT load/compile."""
    hours = SERVING_WINDOW + 1
    close = 100.0 * np.exp(np.cumsum(np.full(hours, 1e-3)))
    index = pd.date_range("2024-01-01", periods=hours, freq="h", name="time")
    shape = pd.DataFrame(
        {"open": close, "high": close * 1.01, "low": close * 0.99, "close": close,
         "volume": np.ones(hours), "value": close},
        index=index,
    )  # fmt: skip
    serving_features(shape, SEQUENCE_LENGTH)


def predict_candles(model: HybridModel, market: str, candles: pd.DataFrame) -> RawPrediction:
    """The newest closed hour's probabilities; too few or gappy candles are a 422."""
    if len(candles) < SERVING_WINDOW:
        raise RequestError(
            422, f"{market}: need at least {SERVING_WINDOW} hourly candles, got {len(candles)}"
        )
    try:
        rows = serving_features(candles.iloc[-SERVING_WINDOW - 48 :], SEQUENCE_LENGTH,
                                int(model.metadata.get("max_gap_hours", 6)))  # fmt: skip
    except CandleError as exc:
        raise RequestError(422, f"{market}: {exc}") from exc
    proba = model.predict_proba(rows.to_numpy()[None, :, :])[0]
    return RawPrediction(
        market=market,
        time=rows.index[-1],
        probabilities=(float(proba[0]), float(proba[1]), float(proba[2])),
        model_version=model.version,
        volatility=sizing_volatility(candles["close"].to_numpy()),
    )
