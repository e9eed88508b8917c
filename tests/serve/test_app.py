"""The Serve graph deployed by `serve deploy` on the session's Ray head, checked over HTTP."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from features.indicators import SERVING_WINDOW
from serve.admin import ADMIN_TOKEN_ENV
from serve.schema import BadRequest, PredictionReply, ServeError, Unavailable, refusal
from trading.serve_client import candle_rows
from train.registry import ModelRegistry

from standins.groq_server import Turn
from standins.serve_app import APP_NAME

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app_url(serve_app) -> str:
    return serve_app.url


@pytest.fixture(scope="module")
def root(serve_app) -> Path:
    return serve_app.registry.parent


@pytest.fixture(scope="module")
def llms(llm_standins):
    return llm_standins


def test_predict_one_market_with_candles(app_url, real_candles, llms) -> None:
    groq, ollama = llms
    groq.script(Turn.ratio(0.30))
    ollama.script(Turn.ratio(0.25))
    rows = candle_rows(real_candles["KRW-BTC"].iloc[-(SERVING_WINDOW + 10) :])
    reply = requests.post(f"{app_url}/v1/predict/KRW-BTC", json={"candles": rows}, timeout=30)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["market"] == "KRW-BTC" and body["time"] == rows[-1]["time"]
    assert body["signal"] in {"SELL", "HOLD", "BUY"}
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert body["confidence"] == max(body["probabilities"].values())
    assert body["model_version"] == "v0001"
    assert body["sizing"]["source"] == "llm-agree" and body["sizing"]["ratio"] == 0.25
    parsed = PredictionReply.model_validate(body)  # the model ServeClient parses with
    assert parsed.signal == body["signal"] and parsed.served_by == body["served_by"] != ""


def test_predict_reads_the_configured_source_without_candles(app_url, llms) -> None:
    reply = requests.post(f"{app_url}/v1/predict/KRW-BTC", timeout=30)
    assert reply.status_code == 200, reply.text
    assert 0.05 <= reply.json()["sizing"]["ratio"] <= 1.0


def test_predict_all_keeps_working_when_one_market_has_no_model(app_url) -> None:
    reply = requests.post(f"{app_url}/v1/predict", json={}, timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert [p["market"] for p in body["predictions"]] == ["KRW-BTC"]
    eth = body["errors"]["KRW-ETH"]
    assert eth["status"] == 503 and "KRW-ETH" in eth["message"]
    assert "Traceback" not in eth["message"]  # the refusal's own message, not Ray's wrapper


def test_error_codes_name_the_problem(app_url, real_candles) -> None:
    assert requests.post(f"{app_url}/v1/predict/KRW-DOGE", timeout=10).status_code == 404
    missing = requests.post(f"{app_url}/v1/predict/KRW-ETH", timeout=30)
    assert missing.status_code == 503 and "KRW-ETH" in missing.json()["detail"]
    few = candle_rows(real_candles["KRW-BTC"].iloc[-50:])
    short = requests.post(f"{app_url}/v1/predict/KRW-BTC", json={"candles": few}, timeout=30)
    assert short.status_code == 422 and str(SERVING_WINDOW) in short.json()["detail"]
    bad = candle_rows(real_candles["KRW-BTC"].iloc[-(SERVING_WINDOW + 5) :])
    bad[-1]["high"] = bad[-1]["low"] / 2
    malformed = requests.post(f"{app_url}/v1/predict/KRW-BTC", json={"candles": bad}, timeout=30)
    assert malformed.status_code == 422 and "high" in malformed.json()["detail"]
    junk = requests.post(f"{app_url}/v1/predict/KRW-BTC", json={"candles": "x"}, timeout=10)
    assert junk.status_code == 422
    rows = candle_rows(real_candles["KRW-BTC"].iloc[-(SERVING_WINDOW + 5) :])
    account = {"cash": -1.0, "position": 0.0, "entry_price": 0.0, "equity": 0.0, "drawdown": 0.0}
    for wrong, named in ((account, "AccountState.cash"), ({**account, "cash": 1.0, "x": 1}, "x")):
        bad = {"candles": rows, "account": wrong}
        refused = requests.post(f"{app_url}/v1/predict/KRW-BTC", json=bad, timeout=30)
        assert refused.status_code == 422 and named in refused.text, refused.text


def test_refusals_cross_deployment_handles_as_their_own_class(serve_app) -> None:
    """A predictor's refusal reaches its caller through a DeploymentHandle as an instance of its
    own class (Ray's RayTaskError subclass of it), with the status and message it was raised
    with."""
    from ray import serve

    eth = serve.get_deployment_handle("KRW-ETH", app_name=APP_NAME)
    with pytest.raises(Unavailable) as no_model:
        eth.predict.remote(None).result(timeout_s=60)
    status, message = refusal(no_model.value)
    assert isinstance(no_model.value, ServeError) and status == 503
    assert "KRW-ETH" in message and "Traceback" not in message
    btc = serve.get_deployment_handle("KRW-BTC", app_name=APP_NAME)
    with pytest.raises(BadRequest) as empty:
        btc.predict.remote([]).result(timeout_s=60)
    assert refusal(empty.value) == (422, "candles must be a non-empty list")


def test_markets_models_and_health(app_url) -> None:
    assert requests.get(f"{app_url}/v1/markets", timeout=10).json() == {
        "markets": ["KRW-BTC", "KRW-ETH"]
    }
    models = requests.get(f"{app_url}/v1/models", timeout=10).json()["models"]
    assert models["KRW-BTC"]["version"] == "v0001" and models["KRW-ETH"]["version"] is None
    assert requests.get(f"{app_url}/healthz", timeout=10).json()["without_model"] == ["KRW-ETH"]


def test_admin_reload_refuses_without_the_token(app_url) -> None:
    url = f"{app_url}/v1/admin/reload/KRW-BTC"
    assert requests.post(url, timeout=10).status_code == 401
    wrong = requests.post(url, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    token = os.environ[ADMIN_TOKEN_ENV]
    ok = requests.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert ok.status_code == 200 and ok.json()["market"] == "KRW-BTC"


def versions_seen(app_url: str, rows: list[dict[str, Any]], n: int = 16) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for _ in range(n):
        body = requests.post(
            f"{app_url}/v1/predict/KRW-BTC", json={"candles": rows}, timeout=30
        ).json()
        seen.setdefault(body["model_version"], set()).add(body["served_by"])
    return seen


def wait_for_version(app_url: str, rows: list[dict[str, Any]], version: str) -> set[str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen = versions_seen(app_url, rows)
        if set(seen) == {version}:
            return seen[version]
        time.sleep(0.5)
    raise AssertionError(f"replicas did not all move to {version}: {seen}")


def test_promotion_and_rollback_reach_both_replicas(app_url, root, real_candles) -> None:
    rows = candle_rows(real_candles["KRW-BTC"].iloc[-(SERVING_WINDOW + 2) :])
    registry = ModelRegistry(str(root / "registry"))
    registry.promote("KRW-BTC", "v0002")
    replicas = wait_for_version(app_url, rows, "v0002")
    assert len(replicas) == 2, f"only {replicas} answered; both replicas must have moved"
    registry.rollback("KRW-BTC")
    assert len(wait_for_version(app_url, rows, "v0001")) == 2


def test_a_bundle_that_fails_to_load_leaves_the_old_one_serving(
    app_url, root, smoke_bundle, real_candles
) -> None:
    rows = candle_rows(real_candles["KRW-BTC"].iloc[-(SERVING_WINDOW + 2) :])
    registry = ModelRegistry(str(root / "registry"))
    broken = registry.register("KRW-BTC", smoke_bundle)
    head = root / "registry" / "KRW-BTC" / broken / "lightgbm.txt"
    head.write_bytes(b"x" * head.stat().st_size)  # same size: the manifest still vouches for it
    registry.promote("KRW-BTC", broken)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = requests.get(f"{app_url}/v1/models", timeout=10).json()["models"]["KRW-BTC"]
        if status["last_error"]:
            break
        time.sleep(0.5)
    assert broken in status["last_error"] and status["version"] == "v0001"
    assert set(versions_seen(app_url, rows, 6)) == {"v0001"}
    registry.rollback("KRW-BTC")


def test_metrics_reach_rays_prometheus_export(app_url, ray_head, real_candles) -> None:
    rows = candle_rows(real_candles["KRW-BTC"].iloc[-(SERVING_WINDOW + 2) :])
    requests.post(f"{app_url}/v1/predict/KRW-BTC", json={"candles": rows}, timeout=30)
    wanted = [
        "ray_hybrid_predictions_total{",
        "ray_hybrid_serve_requests_total{",
        "ray_hybrid_serve_latency_ms_bucket{",
        "ray_hybrid_sizing_source_total{",
        "ray_hybrid_model_version{",
    ]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = requests.get(ray_head.metrics_url, timeout=10).text
        lines = [line for line in text.splitlines() if line.startswith("ray_hybrid_")]
        if all(any(line.startswith(w) for line in lines) for w in wanted):
            break
        time.sleep(2)
    missing = [w for w in wanted if not any(line.startswith(w) for line in lines)]
    assert not missing, f"not exported: {missing}; got {lines[:10]}"
    btc = [line for line in lines if line.startswith("ray_hybrid_predictions_total{")]
    assert any('market="KRW-BTC"' in line for line in btc)
