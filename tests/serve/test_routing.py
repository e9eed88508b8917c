"""The pieces of multiplexed serving that need no Ray: model ids, the ingress's CURRENT cache, the
serving mode in the config, and the columns request candles cross a handle as."""

from __future__ import annotations

import pickle

import pandas as pd
import pytest
from pydantic import ValidationError

from features.indicators import SERVING_WINDOW
from serve.config import MULTIPLEXED_DEPLOYMENT, ServeConfig
from serve.multiplexed import BundleUnavailable, model_id, parse_model_id
from serve.predict import CandleColumns, candles_from_rows, request_candles
from serve.routing import CurrentVersions
from serve.schema import BadRequest, refusal
from trading.serve_client import candle_rows
from train.registry import ModelRegistry


def test_a_model_id_carries_the_version() -> None:
    assert model_id("KRW-BTC", "v0007") == "KRW-BTC@v0007"
    assert parse_model_id("KRW-BTC@v0007") == ("KRW-BTC", "v0007")
    for wrong in ("KRW-BTC", "KRW-BTC@latest", "KRW-BTC@", "btc@v0001", "@v0001"):
        with pytest.raises(BundleUnavailable) as refused:
            parse_model_id(wrong)
        status, message = refusal(refused.value)
        assert status == 503 and repr(wrong) in message


def test_the_serving_mode_decides_the_predictor_deployments() -> None:
    markets = ["KRW-BTC", "KRW-ETH"]
    assert ServeConfig(markets=markets).predictor_deployments() == markets  # per_market default
    pooled = ServeConfig(markets=markets, serving={"mode": "multiplexed"})
    assert pooled.predictor_deployments() == [MULTIPLEXED_DEPLOYMENT]
    for wrong, field in (({"mode": "pooled"}, "mode"), ({"models_per_replica": 0}, "models_per")):
        with pytest.raises(ValidationError, match=f"serving.{field}"):
            ServeConfig(serving=wrong)


def test_current_versions_follow_promotions_and_keep_routing_through_a_bad_current(
    tmp_path, smoke_bundle
) -> None:
    registry = ModelRegistry(str(tmp_path / "registry"))
    first = registry.register("KRW-BTC", smoke_bundle)
    second = registry.register("KRW-BTC", smoke_bundle)
    versions = CurrentVersions(registry, ["KRW-BTC", "KRW-ETH"], poll_s=3600)  # no thread
    assert versions.refresh("KRW-BTC") is False
    assert versions.get("KRW-BTC").version is None
    assert "no model promoted for KRW-BTC" in versions.get("KRW-BTC").problem
    registry.promote("KRW-BTC", first)
    assert versions.get("KRW-BTC").version is None  # cached until the next read
    assert versions.refresh("KRW-BTC") is True
    current = versions.get("KRW-BTC")
    assert (current.version, current.problem) == (first, None)
    assert current.train_window == registry.read_metadata("KRW-BTC", first)["train_window"]
    registry.promote("KRW-BTC", second)
    assert versions.refresh("KRW-BTC") and versions.get("KRW-BTC").version == second
    pointer = tmp_path / "registry" / "KRW-BTC" / "CURRENT"
    pointer.write_text("garbage\n")
    assert versions.refresh("KRW-BTC") is False
    kept = versions.get("KRW-BTC")
    assert kept.version == second and "CURRENT" in kept.problem and "garbage" in kept.problem
    pointer.write_text(f"{first}\n")  # what a rollback writes
    assert versions.refresh("KRW-BTC") and versions.get("KRW-BTC").problem is None
    assert versions.get("KRW-BTC").version == first
    assert versions.get("KRW-ETH").version is None  # a market without a directory at all


def test_request_candles_cross_a_handle_as_columns_equal_to_the_rows(real_candles) -> None:
    rows = candle_rows(real_candles["KRW-BTC"].iloc[-(SERVING_WINDOW + 7) :])
    columns = CandleColumns.parse(rows, 5000)
    pd.testing.assert_frame_equal(columns.frame(), candles_from_rows(rows, 5000))
    assert len(pickle.dumps(columns, protocol=5)) < len(pickle.dumps(rows, protocol=5)) * 0.7
    shipped = pickle.loads(pickle.dumps(columns, protocol=5))
    pd.testing.assert_frame_equal(request_candles(shipped, 5000), columns.frame())
    pd.testing.assert_frame_equal(request_candles(rows, 5000), columns.frame())  # other callers
    assert request_candles(None, 5000) is None
    with pytest.raises(BadRequest, match="at most 100 candles"):
        request_candles(columns, 100)
    bad = [*rows[:-1], {**rows[-1], "high": rows[-1]["low"] / 2}]
    with pytest.raises(BadRequest, match="high"):
        CandleColumns.parse(bad, 5000)
