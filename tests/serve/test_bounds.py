"""Bounded serving, over HTTP against the session's Serve graph (`serve deploy` of
configs/serve_deploy.yaml): a body over the size limit (413), a market list with a repeat (422)
and a flood (503) each get a fast refusal while the trading loop's own requests still answer;
the prediction routes need the token once `require_token` is on; every prediction says the
model's age, whether it is stale and its novelty score, and /v1/models shows the age."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from features.domain import AccountState
from features.indicators import SERVING_WINDOW
from serve.admin import ADMIN_TOKEN_ENV
from serve.predict import predict_candles
from trading.serve_client import ServeClient, candle_rows
from train.bundle import load_bundle

from standins.serve_app import serve_deploy

pytestmark = pytest.mark.slow
MARKET = "KRW-BTC"
FLOOD_THREADS = 32
FLOOD_S = 8.0


@pytest.fixture(scope="module")
def url(serve_app) -> str:
    return serve_app.url


@pytest.fixture(scope="module")
def candles(real_candles):
    return real_candles[MARKET].iloc[-(SERVING_WINDOW + 48) :]


def test_a_body_over_the_limit_is_refused_before_it_is_read(url) -> None:
    big = b'{"candles": "' + b"x" * 2_000_001 + b'"}'
    started = time.perf_counter()
    sized = requests.post(f"{url}/v1/predict/{MARKET}", data=big, timeout=30,
                          headers={"content-type": "application/json"})  # fmt: skip
    took = time.perf_counter() - started
    assert sized.status_code == 413, sized.text
    assert "over the limit of 2,000,000" in sized.json()["detail"] and took < 10

    def chunks():  # no Content-Length: counted as it streams in
        for _ in range(40):
            yield b"x" * 100_000

    streamed = requests.post(f"{url}/v1/predict", data=chunks(), timeout=30)
    assert streamed.status_code == 413 and "more was coming" in streamed.json()["detail"]


def test_a_market_list_with_a_repeat_is_refused_naming_it(url) -> None:
    body = {"markets": [MARKET, "KRW-ETH", MARKET]}
    refused = requests.post(f"{url}/v1/predict", json=body, timeout=30)
    assert refused.status_code == 422 and f"{MARKET} more than once" in refused.json()["detail"]
    stray = {"markets": [MARKET], "accounts": {"KRW-ETH": AccountState.flat(1e6).__dict__}}
    refused = requests.post(f"{url}/v1/predict", json=stray, timeout=30)
    assert refused.status_code == 422 and "not asked for" in refused.json()["detail"]


def test_a_flood_gets_fast_503s_while_the_loops_requests_answer(url, candles) -> None:
    import json

    body = json.dumps({"candles": candle_rows(candles)}).encode()
    results: list[tuple[int, float, str]] = []
    stop = time.monotonic() + FLOOD_S

    def flood() -> None:
        session = requests.Session()
        while time.monotonic() < stop:
            started = time.perf_counter()
            reply = session.post(f"{url}/v1/predict/{MARKET}", data=body, timeout=60,
                                 headers={"content-type": "application/json"})  # fmt: skip
            detail = reply.text[:200] if reply.status_code != 200 else ""
            results.append((reply.status_code, time.perf_counter() - started, detail))

    threads = [threading.Thread(target=flood) for _ in range(FLOOD_THREADS)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # the flood is on
    loop = ServeClient(url, token=os.environ[ADMIN_TOKEN_ENV])
    answered = []
    while time.monotonic() < stop - 1.0:
        started = time.perf_counter()
        reply = loop.predict(MARKET, candles, AccountState.flat(1_000_000.0))
        answered.append((reply.market, time.perf_counter() - started))
    for thread in threads:
        thread.join(90)
    busy = [took for status, took, detail in results if status == 503 and "busy" in detail]
    served = [took for status, took, _ in results if status == 200]
    other = {status for status, _, _ in results} - {200, 503}
    print(
        f"\nflood: {len(results)} requests from {FLOOD_THREADS} threads in {FLOOD_S:g} s: "
        f"{len(served)} answered (p50 {np.median(served):.3f} s), {len(busy)} refused 503 "
        f"(p50 {np.median(busy):.4f} s, p90 {np.percentile(busy, 90):.4f} s); the loop's "
        f"{len(answered)} requests: max {max(t for _, t in answered):.3f} s"
    )
    assert not other, f"unexpected statuses {other}"
    assert len(busy) > len(served), "the flood was not refused"
    assert np.percentile(busy, 90) < 1.0, "the refusals were not fast"
    assert answered and all(market == MARKET for market, _ in answered)


def test_the_prediction_routes_need_the_token_when_required(serve_app, ray_head, tmp_path) -> None:
    """`require_token` (what `cluster up` sets when Serve listens beyond loopback) reaches the
    running Ingress through its user_config, without a restart."""
    url = serve_app.url
    original = Path(serve_app.registry).parent / "deploy.yaml"
    config = yaml.safe_load(original.read_text())
    (ingress,) = [d for d in config["applications"][0]["deployments"] if d["name"] == "Ingress"]
    ingress["user_config"]["require_token"] = True
    required = tmp_path / "required.yaml"
    required.write_text(yaml.safe_dump(config))
    token = {"Authorization": f"Bearer {os.environ[ADMIN_TOKEN_ENV]}"}
    serve_deploy(required, ray_head.dashboard_url)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            refused = requests.post(f"{url}/v1/predict/{MARKET}", timeout=30)
            if refused.status_code == 401:
                break
            time.sleep(1)
        assert refused.status_code == 401 and "Bearer" in refused.json()["detail"]
        wrong = {"Authorization": "Bearer nope"}
        assert requests.post(f"{url}/v1/predict", headers=wrong, timeout=30).status_code == 401
        allowed = requests.post(f"{url}/v1/predict/{MARKET}", headers=token, timeout=60)
        assert allowed.status_code == 200, allowed.text
    finally:
        serve_deploy(original, ray_head.dashboard_url)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if requests.post(f"{url}/v1/predict/{MARKET}", timeout=30).status_code == 200:
                break
            time.sleep(1)


def test_every_prediction_says_the_models_age_and_models_shows_it(
    url, candles, smoke_bundle
) -> None:
    rows = candle_rows(candles)
    reply = requests.post(f"{url}/v1/predict/{MARKET}", json={"candles": rows}, timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["stale"] is False and isinstance(body["model_age_hours"], float)
    # The novelty gate: the served bundle's score of this hour, as computed in this process,
    # and the loop's client reads the same fields.
    expected = predict_candles(load_bundle(smoke_bundle), MARKET, candles)
    assert body["dissimilarity"] == pytest.approx(expected.dissimilarity, rel=1e-9)
    assert body["novel"] is expected.novel
    parsed = ServeClient(url).predict(MARKET, candles, AccountState.flat(1_000_000.0))
    assert (parsed.dissimilarity, parsed.novel) == (body["dissimilarity"], body["novel"])
    # The label the served bundle was trained on, which the loop trades with
    threshold = load_bundle(smoke_bundle).metadata["label_threshold"]
    assert body["label"] == {"up": threshold, "down": threshold, "barriers": None}
    assert parsed.label == expected.label
    model = requests.get(f"{url}/v1/models", timeout=30).json()["models"][MARKET]
    assert model["trained_through"] and model["max_model_age_hours"] == 2160
    assert model["stale"] is False
    assert model["age_at"] is None or isinstance(model["age_hours"], float)  # once it predicted
