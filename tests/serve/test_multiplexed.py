"""The multiplexed predictor deployed by `serve deploy` on the session's Ray head, over HTTP.

Six markets (the four shared candle files, and two more made from them under new names, prices
scaled) share a pool of two replicas holding two bundles each, so Serve evicts while the test
runs. Every market's bundle has its own calibration temperature, so each market's answer differs
and a mix-up would show: every answer is compared with its bundle's own in-process prediction.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from features.indicators import CANDLES_FOR_SERVING, SERVING_WINDOW
from features.sources import ParquetDirSource
from serve.config import MULTIPLEXED_DEPLOYMENT
from serve.predict import predict_candles
from trading.serve_client import candle_rows
from train.bundle import load_bundle
from train.registry import ModelRegistry

from standins.serve_app import PROJECT_ROOT, deploy_beside, deploy_config, wait_ready

pytestmark = pytest.mark.slow
APP = "mux"
# market -> (shared file it is made from, price scale); the last two are new names
MARKETS = {
    "KRW-BTC": ("KRW-BTC", 1.0),
    "KRW-ETH": ("KRW-ETH", 1.0),
    "KRW-XRP": ("KRW-XRP", 1.0),
    "KRW-SOL": ("KRW-SOL", 1.0),
    "KRW-MXA": ("KRW-BTC", 0.001),
    "KRW-MXB": ("KRW-ETH", 3.0),
}
TEMPERATURES = dict(zip(MARKETS, (0.6, 0.8, 1.0, 1.3, 1.7, 2.2), strict=True))
POOL = {"mode": "multiplexed", "replicas": 2, "models_per_replica": 2}  # 4 bundles < 6 markets


def make_candles(source: Path, data: Path) -> None:
    for market, (original, scale) in MARKETS.items():
        frame = pd.read_parquet(source / f"{original}_minute60.parquet")
        for column in ("open", "high", "low", "close"):
            frame[column] = frame[column] * scale
        frame["value"] = frame["value"] * scale
        frame.to_parquet(data / f"{market}_minute60.parquet")


def rule_sizing(path: Path) -> Path:
    """The sizing node on its rule alone: this module is about predictors, not the LLMs."""
    sizing = yaml.safe_load((PROJECT_ROOT / "configs" / "sizing.yaml").read_text())
    sizing["groq"]["enabled"] = sizing["ollama"]["enabled"] = False
    path.write_text(yaml.safe_dump(sizing))
    return path


def register(registry: ModelRegistry, market: str, bundle: Path, temperature: float) -> str:
    """The smoke bundle as `market`'s next version, with its own calibration temperature."""
    metadata = {"market": market, "temperature": temperature}
    return registry.register(market, bundle, metadata=metadata)


@pytest.fixture(scope="module")
def mux(ray_local, ray_head, smoke_bundle, ohlcv_dir, serve_port, tmp_path_factory):
    root = tmp_path_factory.mktemp("mux")
    data = root / "ohlcv"
    data.mkdir()
    make_candles(ohlcv_dir, data)
    registry = ModelRegistry(str(root / "registry"))
    for market, temperature in TEMPERATURES.items():
        version = register(registry, market, smoke_bundle, temperature)
        registry.promote(market, version)
    sizing = rule_sizing(root / "sizing.yaml")
    config = deploy_config(root / "registry", data, sizing, serve_port, list(MARKETS))
    (app,) = config["applications"]
    app.update(name=APP, route_prefix=f"/{APP}")
    app["args"]["serving"] = POOL
    app["deployments"] = [d for d in app["deployments"] if d["name"] in {"Ingress", "SizingNode"}]
    token = os.environ["RAY_AUTH_TOKEN"]
    deploy_beside(config, root / "deploy.yaml", ray_head.dashboard_url, token)
    url = f"http://127.0.0.1:{serve_port}/{APP}"
    wait_ready(url, sorted(MARKETS))
    yield {"url": url, "root": root, "data": data, "registry": registry}
    from ray import serve

    serve.delete(APP)


class Expected:
    """Each market's bundle's own prediction, in this process, on the candles a request carries
    (`rows`) or the replica reads from the source (`source`)."""

    def __init__(self, mux: dict[str, Any]) -> None:
        self.registry: ModelRegistry = mux["registry"]
        self.scratch: Path = mux["root"] / "expected"
        self.source = ParquetDirSource(str(mux["data"]))
        self.frames = {m: pd.read_parquet(mux["data"] / f"{m}_minute60.parquet") for m in MARKETS}

    def rows(self, market: str) -> list[dict[str, Any]]:
        return candle_rows(self.frames[market].iloc[-(SERVING_WINDOW + 3) :])

    def probabilities(self, market: str, version: str, with_rows: bool) -> np.ndarray:
        model = load_bundle(self.registry.fetch(market, version, dest_dir=self.scratch))
        candles = (
            self.frames[market].iloc[-(SERVING_WINDOW + 3) :]
            if with_rows
            else self.source.latest(market, CANDLES_FOR_SERVING)
        )
        view = predict_candles(model, market, candles)
        return np.array(view.probabilities.as_tuple())


@pytest.fixture(scope="module")
def expected(mux) -> Expected:
    return Expected(mux)


def ask(mux: dict[str, Any], expected: Expected, market: str, with_rows: bool) -> requests.Response:
    body = {"candles": expected.rows(market)} if with_rows else None
    return requests.post(f"{mux['url']}/v1/predict/{market}", json=body, timeout=60)


def answer(mux: dict[str, Any], expected: Expected, market: str, with_rows: bool) -> dict:
    reply = ask(mux, expected, market, with_rows)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["market"] == market
    return body


def probabilities(body: dict[str, Any]) -> np.ndarray:
    p = body["probabilities"]
    return np.array((p["sell"], p["hold"], p["buy"]))


def pool_statuses() -> dict[str, dict[str, Any]]:
    """Each pool replica's status, by replica (calls without a model id reach either one)."""
    from ray import serve

    pool = serve.get_deployment_handle(MULTIPLEXED_DEPLOYMENT, app_name=APP)
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(24):
        status = pool.status.remote().result(timeout_s=60)
        seen[status["replica"]] = status
    return seen


def test_more_markets_than_the_pool_holds_answer_right_while_it_evicts(mux, expected) -> None:
    wanted = {
        (m, rows): expected.probabilities(m, "v0001", rows) for m in MARKETS for rows in (1, 0)
    }
    distinct = {tuple(np.round(p, 6)) for (_, rows), p in wanted.items() if rows}
    assert len(distinct) == len(MARKETS), "two markets would answer alike: a mix-up could hide"
    for round_ in range(3):  # round robin over six markets through four slots: every ask misses
        for market in MARKETS:
            with_rows = (round_ + len(market)) % 2 == 0
            body = answer(mux, expected, market, with_rows)
            assert body["model_version"] == "v0001"
            np.testing.assert_allclose(probabilities(body), wanted[(market, with_rows)], atol=1e-6)
            if with_rows:
                assert body["time"] == expected.rows(market)[-1]["time"]
    replicas = pool_statuses()
    held = sum(len(s["models"]) for s in replicas.values())
    loads = sum(s["loads"] for s in replicas.values())
    assert all(len(s["models"]) <= POOL["models_per_replica"] for s in replicas.values())
    assert loads > held, f"no eviction happened: {replicas}"


def wait_for(mux, expected, market: str, check, timeout_s: float = 60) -> requests.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        reply = ask(mux, expected, market, True)
        if check(reply) or time.monotonic() > deadline:
            return reply
        time.sleep(0.3)


def version_is(version: str):
    return lambda r: r.status_code == 200 and r.json()["model_version"] == version


def test_a_promotion_reaches_the_pool_and_an_evicted_model_comes_back_current(
    mux, expected, smoke_bundle
) -> None:
    registry: ModelRegistry = mux["registry"]
    new = register(registry, "KRW-MXA", smoke_bundle, 3.5)
    registry.promote("KRW-MXA", new)
    reply = wait_for(mux, expected, "KRW-MXA", version_is(new))
    assert version_is(new)(reply), reply.text
    promoted = expected.probabilities("KRW-MXA", new, True)
    np.testing.assert_allclose(probabilities(reply.json()), promoted, atol=1e-6)
    for _ in range(6):  # the other five markets push KRW-MXA out of every replica's two slots
        for market in [m for m in MARKETS if m != "KRW-MXA"]:
            answer(mux, expected, market, True)
        if not any(f"KRW-MXA@{new}" in s["models"] for s in pool_statuses().values()):
            break
    else:
        pytest.fail("KRW-MXA was never evicted: the test would prove nothing")
    for _ in range(3):
        body = answer(mux, expected, "KRW-MXA", True)
        assert body["model_version"] == new
        np.testing.assert_allclose(probabilities(body), promoted, atol=1e-6)
    registry.rollback("KRW-MXA")
    reply = wait_for(mux, expected, "KRW-MXA", version_is("v0001"))
    assert version_is("v0001")(reply), reply.text
    first = expected.probabilities("KRW-MXA", "v0001", True)
    np.testing.assert_allclose(probabilities(reply.json()), first, atol=1e-6)


def test_a_bundle_that_fails_to_load_is_a_503_for_its_market_only(
    mux, expected, smoke_bundle
) -> None:
    registry: ModelRegistry = mux["registry"]
    broken = register(registry, "KRW-MXB", smoke_bundle, 1.0)
    head = mux["root"] / "registry" / "KRW-MXB" / broken / "lightgbm.txt"
    head.write_bytes(b"x" * head.stat().st_size)  # same size: the manifest still vouches for it
    registry.promote("KRW-MXB", broken)
    reply = wait_for(mux, expected, "KRW-MXB", lambda r: r.status_code == 503)
    assert reply.status_code == 503, reply.text
    detail = reply.json()["detail"]
    assert "KRW-MXB" in detail and broken in detail and "Traceback" not in detail
    for market in ("KRW-BTC", "KRW-MXA", "KRW-SOL"):
        assert answer(mux, expected, market, True)["model_version"] == "v0001"
    status = requests.get(f"{mux['url']}/v1/models", timeout=30).json()["models"]["KRW-MXB"]
    assert status["version"] is None and broken in status["last_error"]
    health = requests.get(f"{mux['url']}/healthz", timeout=30).json()
    assert health["without_model"] == ["KRW-MXB"]
    registry.rollback("KRW-MXB")
    reply = wait_for(mux, expected, "KRW-MXB", version_is("v0001"))
    assert version_is("v0001")(reply), reply.text


def test_the_http_api_is_the_same_in_multiplexed_mode(mux, expected) -> None:
    url = mux["url"]
    assert requests.get(f"{url}/v1/markets", timeout=10).json() == {"markets": sorted(MARKETS)}
    assert requests.post(f"{url}/v1/predict/KRW-DOGE", timeout=10).status_code == 404
    short = {"candles": expected.rows("KRW-ETH")[-50:]}
    refused = requests.post(f"{url}/v1/predict/KRW-ETH", json=short, timeout=30)
    assert refused.status_code == 422 and str(SERVING_WINDOW) in refused.json()["detail"]
    everything = requests.post(f"{url}/v1/predict", json={}, timeout=120)
    assert everything.status_code == 200, everything.text
    body = everything.json()
    assert sorted(p["market"] for p in body["predictions"]) == sorted(MARKETS)
    assert body["errors"] == {}
    models = requests.get(f"{url}/v1/models", timeout=30).json()["models"]
    assert {m: s["model_id"] for m, s in models.items()} == {m: f"{m}@v0001" for m in MARKETS}
