"""The accelerated TradingLoop actor holding a position while its Serve application is deleted:
for several hours no model answers, the price falls through the stop-loss, and the loop still
sells, on the price alone. Real candles (an hour where BTC then fell), the real Serve graph (its
own application beside the session's, deleted mid-run with `serve.delete`), real paper accounts
rebuilt from the ledger."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import requests
import yaml

from features.domain import Order, Side
from trading.broker import Fill, OrderState, order_identifier
from trading.ledger import Ledger
from trading.loop import get_loop, start_loop
from trading.loop_settings import ClockSettings, LoopSettings

from standins.serve_app import serve_deploy

pytestmark = pytest.mark.slow
MARKET = "KRW-BTC"
APP = "guarded"
STOP = 0.01  # the stop-loss for this test: 1 % under the entry
SPEED = 300.0  # an hour every 12 s: time to delete the app before the price falls through
HELD_HOURS = 3  # model-less hours the loop holds through before the price falls through the stop
SLACK_S = 30.0  # the clock reads its start this long after start_loop: the actor comes up


@pytest.fixture(scope="module")
def entry_hour(real_candles) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(h0, h0 + HELD_HOURS + 1): the first hour whose close is STOP under close(h0) comes right
    after HELD_HOURS hours above it, so the run is no longer than the test needs (an hour of the
    accelerated clock is 12 s)."""
    close = real_candles[MARKET]["close"].loc["2025-06-01":]
    span = HELD_HOURS + 2
    for i in range(len(close) - span):
        window = close.iloc[i : i + span]
        if (window.index[-1] - window.index[0]) != pd.Timedelta(hours=span - 1):
            continue  # a gap: the loop would not find the hour's candle
        below = window.iloc[1:] <= window.iloc[0] * (1 - STOP)
        if below.iloc[-1] and not below.iloc[:-1].any():
            return window.index[0], window.index[-1]
    raise AssertionError("no hour in the stored candles with a fall like that")


@pytest.fixture(scope="module")
def guarded_url(serve_app, ray_head, tmp_path_factory) -> str:
    """A second application of the same graph (KRW-BTC only) under /guarded, beside the
    session's: this test deletes it."""
    session = yaml.safe_load((Path(serve_app.registry).parent / "deploy.yaml").read_text())
    (hybrid,) = session["applications"]
    guarded = yaml.safe_load(yaml.safe_dump(hybrid))
    guarded.update(name=APP, route_prefix=f"/{APP}")
    guarded["args"]["markets"] = [MARKET]
    guarded["deployments"] = [d for d in guarded["deployments"] if d["name"] != "KRW-ETH"]
    both = {**session, "applications": [hybrid, guarded]}
    path = tmp_path_factory.mktemp("guarded") / "deploy.yaml"
    path.write_text(yaml.safe_dump(both))
    serve_deploy(path, ray_head.dashboard_url)
    url = f"{serve_app.url}/{APP}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=10).json().get("ready") == [MARKET]:
                return url
        except (requests.RequestException, ValueError):
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not become ready")


def held_position(ledger: Path, hour: pd.Timestamp, price: float) -> None:
    """Both paper arms bought at `hour`'s close in an earlier run: the loop rebuilds them."""
    with Ledger(ledger) as opened:
        for arm in ("fixed", "llm"):
            identifier = order_identifier(MARKET, hour.to_pydatetime(), Side.BID)
            order = Order(MARKET, Side.BID, 300_000.0, identifier=identifier)
            opened.record_order_intent(order, hour.to_pydatetime(), arm)
            fill = Fill(identifier, MARKET, Side.BID, OrderState.DONE, 300_000 / price, price, 150)
            opened.record_fill(fill, arm)


def test_serve_deleted_for_hours_the_loop_still_sells_on_the_stop(
    guarded_url, ohlcv_dir, real_candles, entry_hour, tmp_path
) -> None:
    from ray import serve

    h0, falls_at = entry_hour
    ledger = tmp_path / "ledger.sqlite"
    held_position(ledger, h0, float(real_candles[MARKET].loc[h0, "close"]))
    start = h0 + pd.Timedelta(hours=2, seconds=30)  # the first hour it trades: h0 + 1
    clock = ClockSettings(
        kind="accelerated", start=start.to_pydatetime(), speed=SPEED, anchor=time.time() + SLACK_S
    )
    overrides = [
        f"loop.markets=[{MARKET}]", f"ledger.path={ledger}", f"risk.stops.stop_loss={STOP}",
        "risk.stops.trailing_stop=null", "policy.min_confidence=0.99",  # the model only HOLDs
    ]  # fmt: skip
    settings = LoopSettings(
        serve_url=guarded_url, data_dir=str(ohlcv_dir), overrides=overrides, clock=clock,
        max_hours=14,
    )  # fmt: skip
    loop = start_loop(settings)
    try:
        with Ledger(ledger) as opened:
            deadline = time.monotonic() + 240
            while not (opened.decisions_frame()["kind"] == "decision").any():
                assert time.monotonic() < deadline, ray.get(loop.status.remote())
                time.sleep(0.5)
        serve.delete(APP)  # the model is gone; the position is held and the price falls
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with Ledger(ledger) as opened:
                sold = [f for f in opened.fills() if f.side is Side.ASK]
            if len(sold) == 2:
                break
            time.sleep(1)
        status = ray.get(loop.status.remote(), timeout=60)
    finally:
        ray.get(get_loop().stop.remote(), timeout=180)
        ray.kill(get_loop(), no_restart=True)
    assert status["errors"] == [], status["errors"]
    with Ledger(ledger) as opened:
        frame = opened.decisions_frame()
        sold = [f for f in opened.fills() if f.side is Side.ASK]
        positions = {arm: opened.position(MARKET, arm).volume for arm in ("fixed", "llm")}
    assert len(sold) == 2, frame[["time", "arm", "kind", "reason"]].tail(12).to_string()
    assert positions == {"fixed": 0.0, "llm": 0.0}
    sale_hour = pd.Timestamp(sold[0].identifier.split("|")[1])
    assert sale_hour == falls_at  # the first close under the stop
    at_sale = frame[frame["time"] == sale_hour]
    decided = at_sale[at_sale["kind"] == "decision"]
    assert set(decided["sizing_source"]) == {"protective"}, at_sale.to_string()
    assert decided["reason"].str.contains("stop-loss").all()
    silent = frame[(frame["kind"] == "no_decision") & (frame["time"] <= sale_hour)]
    assert len(set(silent["time"])) >= 2, "Serve was not gone for several hours"
    assert silent["reason"].str.contains("Serve").all(), silent["reason"].tolist()
    modelled = frame[(frame["kind"] == "decision") & (frame["model_version"] != "")]
    assert len(modelled) >= 2 and (modelled["time"] < sale_hour).all()  # before the delete
