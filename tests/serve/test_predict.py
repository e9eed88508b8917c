"""The predictor's pure path, without Ray: request rows -> candles -> one prediction."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.barriers import Barriers, LabelMoves
from features.candles import normalize_candles
from features.exchange import KST
from features.indicators import CANDLES_FOR_SERVING, SERVING_WINDOW
from features.serving import serving_features, serving_matrix
from serve.predict import candles_from_rows, predict_candles
from serve.schema import BadRequest, Unavailable
from serve.sizing import sizing_volatility
from trading.serve_client import candle_rows
from train.bundle import load_bundle

ROWS = CANDLES_FOR_SERVING


@pytest.fixture(scope="module")
def btc(real_candles: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return real_candles["KRW-BTC"].iloc[-ROWS:]


def pandas_parse(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The plain pandas route the fast parser must agree with."""
    frame = pd.DataFrame(rows)
    index = pd.DatetimeIndex(pd.to_datetime(frame.pop("time"), format="ISO8601"))
    return normalize_candles(frame.set_index(index))


def refused(rows: Any) -> str:
    with pytest.raises(BadRequest) as caught:
        candles_from_rows(rows, 5000)
    assert caught.value.status == 422
    return str(caught.value)


def test_naive_iso_rows_parse_as_pandas_parses_them(btc: pd.DataFrame) -> None:
    rows = candle_rows(btc)
    parsed = candles_from_rows(rows, 5000)
    pd.testing.assert_frame_equal(parsed, pandas_parse(rows))
    pd.testing.assert_frame_equal(parsed, btc.astype("float64"), check_freq=False)
    assert parsed.index.name == "time" and parsed.index.tz is None


def test_zoned_and_other_iso_spellings_end_as_naive_kst(btc: pd.DataFrame) -> None:
    rows = candle_rows(btc.iloc[-30:])
    expected = candles_from_rows(rows, 5000)
    kst = [{**r, "time": r["time"] + "+09:00"} for r in rows]
    utc = [
        {**r, "time": pd.Timestamp(r["time"]).tz_localize(KST).tz_convert(None).isoformat() + "Z"}
        for r in rows
    ]
    spaced = [{**r, "time": r["time"].replace("T", " ")} for r in rows]
    for variant in (kst, utc, spaced):
        pd.testing.assert_frame_equal(candles_from_rows(variant, 5000), expected)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"time": "yesterday-ish"}, "malformed candles"),
        ({"time": 1_700_000_000}, "malformed candles"),
        ({"open": "abc"}, "malformed candles"),
        ({"open": [1.0, 2.0]}, "malformed candles"),
        ({"high": 1.0}, "high"),
        ({"close": float("nan")}, "'close'"),
        ({"volume": -1.0}, "negative volume"),
        ({"time": "2025-09-30T08:30:00"}, "not on the hour"),
    ],
)
def test_a_bad_candle_is_a_422_naming_the_problem(
    btc: pd.DataFrame, change: dict[str, Any], named: str
) -> None:
    rows = candle_rows(btc.iloc[-5:])
    rows[-1] = {**rows[-1], **change}
    assert named in refused(rows)


def test_malformed_requests_are_refused_with_a_reason(btc: pd.DataFrame) -> None:
    rows = candle_rows(btc.iloc[-5:])
    without_value = {k: v for k, v in rows[-1].items() if k != "value"}
    assert "lacks the field 'value'" in refused([*rows[:-1], without_value])
    assert "non-empty list" in refused([])
    assert "non-empty list" in refused({"time": "2025-09-30T08:00:00"})
    assert "malformed candles" in refused([*rows[:-1], ["not", "a", "dict"]])
    assert "duplicate time" in refused([*rows, rows[-1]])
    with pytest.raises(BadRequest, match="at most 3 candles"):
        candles_from_rows(rows, 3)


def test_serving_matrix_is_serving_features_without_the_labels(btc: pd.DataFrame) -> None:
    frame = serving_features(btc)
    matrix = serving_matrix(btc)
    np.testing.assert_array_equal(matrix, frame.to_numpy())
    assert frame.index[-1] == btc.index[-1]


def test_predict_candles_matches_the_bundle_on_the_same_window(
    btc: pd.DataFrame, smoke_bundle
) -> None:
    model = load_bundle(smoke_bundle)
    view = predict_candles(model, "KRW-BTC", candles_from_rows(candle_rows(btc), 5000))
    expected = model.predict_proba(serving_features(btc).to_numpy()[None])[0]
    assert view.time == btc.index[-1] and view.market == "KRW-BTC"
    np.testing.assert_array_equal(np.array(view.probabilities.as_tuple()), expected)
    assert view.signal == ("SELL", "HOLD", "BUY")[int(np.argmax(expected))]
    assert view.confidence == max(expected)
    # sizing's input: the std of simple (not log) hourly returns over the last 24 hours
    closes = btc["close"].to_numpy()[-25:]
    assert view.volatility == pytest.approx(np.std(closes[1:] / closes[:-1] - 1), rel=1e-12)
    assert view.volatility == sizing_volatility(btc["close"].to_numpy())
    with pytest.raises(BadRequest, match=f"need at least {SERVING_WINDOW}"):
        predict_candles(model, "KRW-BTC", candles_from_rows(candle_rows(btc.iloc[-100:]), 5000))


def test_every_view_carries_the_label_its_bundle_was_trained_on(
    btc: pd.DataFrame, smoke_bundle, barrier_fit
) -> None:
    """What the loop prices and closes a trade with: the bundle's threshold label (the smoke
    bundle) or its barriers (one trained on triple-barrier labels), never the config's."""
    fixed = load_bundle(smoke_bundle)
    threshold = fixed.metadata["label_threshold"]
    view = predict_candles(fixed, "KRW-BTC", btc)
    assert view.label.moves() == LabelMoves.of_threshold(threshold)
    _, fit = barrier_fit
    view = predict_candles(fit.model, "KRW-BTC", btc)
    assert view.label.moves() == LabelMoves.of_barriers(Barriers(0.01, 0.01, 12))
    assert view.label.barriers is not None and view.label.barriers.horizon == 12
    unlabelled = {k: v for k, v in fixed.metadata.items() if k != "label_threshold"}
    broken = replace(fixed, metadata=unlabelled)
    with pytest.raises(Unavailable, match="names no usable label"):
        predict_candles(broken, "KRW-BTC", btc)
