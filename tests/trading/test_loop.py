"""The TradingLoop actor end to end: accelerated hours through the real Serve graph (Groq and
Ollama stand-ins answering), both paper arms, a kill and restart in the middle, a clean stop;
then the A/B report of that run. And a live loop against the Upbit private stand-in, killed in
the middle too: the stand-in counts what was POSTed."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest
import ray

from serve.predict import predict_candles
from trading.ab_report import ab_report, format_report, write_ab_report
from trading.ledger import Ledger
from trading.loop import get_loop, start_loop
from trading.loop_settings import ClockSettings, LoopSettings
from trading.upbit_broker import ACCESS_KEY_ENV, SECRET_KEY_ENV
from train.bundle import load_bundle

from standins.groq_server import Turn
from standins.upbit_private import ACCESS_KEY, SECRET_KEY, UpbitPrivateStandIn

pytestmark = pytest.mark.slow
MARKET = "KRW-BTC"
SEARCH_FROM = pd.Timestamp("2025-06-01 00:00")  # KST
SPEED = 900.0  # an hour in 4 s
CLOCK_SLACK_S = 10.0  # the clock reads `start` this long after start_loop: the actor comes up
QUIET_HOURS = int(CLOCK_SLACK_S * SPEED / 3600) + 2  # no BUY this long before the buy hour
HOURS_AFTER = 4


@pytest.fixture(scope="module")
def buy_hour(smoke_bundle: Path, real_candles) -> pd.Timestamp:
    """An hour at which the served model (the smoke bundle: v0001 of the session's Serve graph)
    says BUY after QUIET_HOURS without one, computed the way Serve computes it. A loop whose clock
    reaches it after the actor is up (at most QUIET_HOURS early) makes its first buy there, so
    what follows is asserted without an `if`."""
    model, candles = load_bundle(smoke_bundle), real_candles[MARKET]
    quiet = 0
    for hour in candles.loc[SEARCH_FROM:].index[:2000]:
        if predict_candles(model, MARKET, candles.loc[:hour]).signal != "BUY":
            quiet += 1
        elif quiet >= QUIET_HOURS:
            return hour
        else:
            quiet = 0
    raise AssertionError(f"no BUY after {QUIET_HOURS} quiet hours within 2000 hours")


def settings(serve_app, ohlcv_dir: Path, ledger: Path, buy_hour: pd.Timestamp, **fields):
    start = buy_hour + pd.Timedelta(hours=1, seconds=30)  # the newest closed hour: buy_hour
    clock = ClockSettings(
        kind="accelerated", start=start.isoformat(), speed=SPEED, anchor=time.time() + CLOCK_SLACK_S
    )
    return LoopSettings(
        serve_url=serve_app.url,
        data_dir=str(ohlcv_dir),
        overrides=[f"loop.markets=[{MARKET}]", f"ledger.path={ledger}"],
        clock=clock,
        max_hours=QUIET_HOURS + 2 * HOURS_AFTER,  # a bound: the test stops it sooner
        **fields,
    )


def wait_past(loop, hour: pd.Timestamp, timeout_s: float = 240) -> dict:
    """Until the loop has run an hour after `hour`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = ray.get(loop.status.remote(), timeout=30)
        if status["last_hour"] is not None and pd.Timestamp(status["last_hour"]) > hour:
            return status
        assert status["running"], f"the loop stopped before {hour}: {status}"
        time.sleep(1)
    raise AssertionError(f"the loop did not get past {hour} in {timeout_s} s")


def wait_hours(loop, hours: int, timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = ray.get(loop.status.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            time.sleep(1)  # restarting
            continue
        if status["hours_run"] >= hours:
            return status
        time.sleep(1)
    raise AssertionError(f"the loop did not run {hours} hours in {timeout_s} s")


def run_with_a_kill(
    loop_settings: LoopSettings, buy_hour: pd.Timestamp, env: dict[str, str] | None = None
) -> dict:
    """Start the loop, kill its actor once it is past the buy hour (Ray restarts it from the
    constructor), let it run on, then stop it cleanly."""
    loop = start_loop(loop_settings, env=env)
    again = start_loop(loop_settings, env=env)
    wait_past(loop, buy_hour)
    ray.kill(loop, no_restart=False)
    status = wait_hours(get_loop(), HOURS_AFTER)
    final = ray.get(get_loop().stop.remote(), timeout=180)
    ray.kill(get_loop(), no_restart=True)
    return {"status": status, "final": final, "same": again == loop}


@pytest.fixture(scope="module")
def paper_run(serve_app, llm_standins, ohlcv_dir, buy_hour, tmp_path_factory) -> dict:
    groq, ollama = llm_standins
    groq.default, ollama.default = Turn.ratio(0.6), Turn.ratio(0.65)  # they agree: 0.6
    ledger = tmp_path_factory.mktemp("loop") / "ledger.sqlite"
    run = run_with_a_kill(settings(serve_app, ohlcv_dir, ledger, buy_hour, mode="paper"), buy_hour)
    return {**run, "ledger": ledger}


@pytest.fixture(scope="module")
def live_run(serve_app, llm_standins, ohlcv_dir, real_candles, buy_hour, tmp_path_factory):
    """A live loop whose exchange is the Upbit private stand-in; its keys reach the loop's
    process only (its runtime environment)."""
    groq, ollama = llm_standins
    groq.default, ollama.default = Turn.ratio(0.6), Turn.ratio(0.65)
    candles = {MARKET: real_candles[MARKET].loc[: buy_hour + pd.Timedelta(hours=48)]}
    ledger = tmp_path_factory.mktemp("live") / "ledger.sqlite"
    with UpbitPrivateStandIn(candles, balances={"KRW": 1_000_000.0}) as exchange:
        loop_settings = settings(
            serve_app, ohlcv_dir, ledger, buy_hour, mode="live", upbit_base_url=exchange.url
        )
        keys = {ACCESS_KEY_ENV: ACCESS_KEY, SECRET_KEY_ENV: SECRET_KEY}
        run = run_with_a_kill(loop_settings, buy_hour, keys)
        posted = [json.loads(r.body)["identifier"] for r in exchange.requests("/v1/orders")]
    return {**run, "ledger": ledger, "posted": posted}


def test_one_loop_survives_a_kill(paper_run, buy_hour) -> None:
    assert paper_run["same"], "a second start_loop created a second loop"
    assert paper_run["status"]["errors"] == [] and paper_run["status"]["alarm"] is None
    with Ledger(paper_run["ledger"]) as ledger:
        decisions = ledger.decisions_frame()
        assert (decisions["kind"] == "decision").all(), decisions["reason"].tolist()
        hours = sorted(set(decisions["time"]))
        assert hours[0] <= buy_hour < hours[-1] and len(hours) >= HOURS_AFTER + 1
        arms_per_hour = decisions.groupby("time")["arm"].apply(sorted)
        assert all(arms == ["fixed", "llm"] for arms in arms_per_hour)  # both, every hour
        orders = ledger.orders()
        assert orders and all(o.status.value in {"filled", "rejected"} for o in orders)
        assert not ledger.pending_orders()
        curve = ledger.equity_curve("llm")
        assert len(curve) >= len(hours) and (curve["equity"] > 0).all()
        assert ledger.integrity_check() == "ok"
    assert paper_run["final"]["running"] is False


def test_a_live_loop_killed_midway_posts_each_order_once(live_run, buy_hour) -> None:
    assert live_run["status"]["errors"] == [] and live_run["status"]["alarm"] is None
    posted = live_run["posted"]
    with Ledger(live_run["ledger"]) as ledger:
        recorded = [o.identifier for o in ledger.orders(arm="live")]
        assert ledger.decisions_frame()["time"].max() > buy_hour
        assert not ledger.pending_orders()
    assert posted[0] == f"{MARKET}|{buy_hour:%Y-%m-%dT%H:00}|bid"  # the buy hour's order
    assert sorted(posted) == sorted(set(posted)), f"an identifier was POSTed twice: {posted}"
    assert sorted(posted) == sorted(recorded)  # nothing sent that the ledger does not know of


def test_ab_report_compares_the_arms(paper_run, buy_hour, tmp_path) -> None:
    with Ledger(paper_run["ledger"]) as ledger:
        report = ab_report(ledger, ["llm", "fixed"], 1_000_000.0)
        paths = write_ab_report(ledger, ["llm", "fixed"], 1_000_000.0, tmp_path)
        first_bids = {arm: ledger.fills(arm=arm)[0] for arm in ("llm", "fixed")}
    llm, fixed = report["llm"], report["fixed"]
    assert set(llm["sizing_sources"]) == {"llm-agree"}  # both stand-ins answered, agreeing
    assert llm["mean_ratio"] == pytest.approx(0.6) and fixed["mean_ratio"] == pytest.approx(0.3)
    assert set(fixed["sizing_sources"]) == {"fixed"}
    # Each arm's first fill is the buy hour's, from the same flat 1,000,000 KRW.
    assert {f.identifier for f in first_bids.values()} == {
        f"{MARKET}|{buy_hour:%Y-%m-%dT%H:00}|bid"
    }
    assert first_bids["llm"].funds / first_bids["fixed"].funds == pytest.approx(2.0, rel=0.01)
    table = format_report(report)
    assert "llm" in table and "fixed" in table and "Sharpe" in table
    assert json.loads(paths["json"].read_text())["llm"]["hours"] == llm["hours"]
    assert paths["png"].stat().st_size > 10_000


def test_status_command_reads_the_ledger(paper_run, capsys) -> None:
    from trading.__main__ import main

    assert main(["status", "--ledger", str(paper_run["ledger"])]) == 0
    out = capsys.readouterr().out
    for arm in ("llm", "fixed"):
        line = rf"^\s*{arm}: equity [\d,]+ KRW  return [+-]\d+\.\d\d %  drawdown \d+\.\d\d %"
        assert re.search(line, out, re.MULTILINE), out
    assert f"{MARKET}: realised accuracy" in out


def test_replay_finds_no_difference_then_the_changed_candle(
    paper_run, serve_app, ohlcv_dir, tmp_path, capsys
) -> None:
    from trading.__main__ import main

    args = ["replay", "--ledger", str(paper_run["ledger"]), "--registry", str(serve_app.registry)]
    assert main([*args, "--data-dir", str(ohlcv_dir)]) == 0, capsys.readouterr().out
    assert "no difference" in capsys.readouterr().out
    with Ledger(paper_run["ledger"]) as ledger:
        changed_hour = pd.Timestamp(ledger.decisions_frame()["time"].max())
    candles = pd.read_parquet(ohlcv_dir / f"{MARKET}_minute60.parquet")
    candles.loc[changed_hour, ["close", "high"]] *= 1.05  # one candle, changed after the fact
    data = tmp_path / "changed"
    data.mkdir()
    candles.to_parquet(data / f"{MARKET}_minute60.parquet")
    assert main([*args, "--data-dir", str(data)]) == 1
    out = capsys.readouterr().out
    assert "difference(s)" in out and str(changed_hour) in out and "p_" in out
