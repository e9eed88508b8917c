"""From candles to one prediction: the same feature code as training, on the serving window.

Pure functions, no Ray: the predictor deployment calls them, and so do the in-process benchmark
baseline and the tests. Request problems raise `RequestError` with the HTTP status they deserve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.candles import CANDLE_COLUMNS, CandleError, normalize_candles, validate_candles
from features.indicators import SEQUENCE_LENGTH, SERVING_WINDOW
from features.serving import serving_features
from train.bundle import HybridModel

VOLATILITY_HOURS = 24


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
    """Request rows ({time, open, high, low, close, volume, value}) -> a validated candle frame."""
    if not rows:
        raise RequestError(422, "candles is empty")
    if len(rows) > max_rows:
        raise RequestError(422, f"at most {max_rows} candles per request, got {len(rows)}")
    frame = pd.DataFrame(rows)
    missing = [c for c in ("time", *CANDLE_COLUMNS) if c not in frame.columns]
    if missing:
        raise RequestError(422, f"candles lack field(s): {', '.join(missing)}")
    try:
        frame.index = pd.DatetimeIndex(pd.to_datetime(frame.pop("time")))
        candles = normalize_candles(frame)
        validate_candles(candles)
    except (CandleError, ValueError, TypeError) as exc:
        raise RequestError(422, f"malformed candles: {exc}") from exc
    return candles


def volatility(candles: pd.DataFrame, hours: int = VOLATILITY_HOURS) -> float:
    closes = candles["close"].to_numpy()[-(hours + 1) :]
    if len(closes) < 3:
        return 0.0
    value = float(np.std(np.diff(np.log(closes)), ddof=1))
    return value if math.isfinite(value) else 0.0


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
        volatility=volatility(candles),
    )
