"""The TradingLoop actor end to end: accelerated hours through the real Serve graph (Groq and
Ollama stand-ins answering), both paper arms, a kill and restart in the middle, a clean stop;
then the A/B report of that run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import ray

from trading.ab_report import ab_report, format_report, write_ab_report
from trading.ledger import Ledger
from trading.loop import ClockSettings, LoopSettings, get_loop, start_loop

from standins.groq_server import Turn

pytestmark = pytest.mark.slow
START = "2025-06-01T00:00:30"  # KST; the newest closed hour at start is 2025-05-31 23:00
HOURS_BEFORE_KILL, HOURS_AFTER = 3, 4


def settings(serve_app, ohlcv_dir: Path, ledger: Path) -> LoopSettings:
    return LoopSettings(
        mode="paper",
        serve_url=serve_app.url,
        data_dir=str(ohlcv_dir),
        overrides=["loop.markets=[KRW-BTC]", f"ledger.path={ledger}"],
        clock=ClockSettings(kind="accelerated", start=START, speed=900.0),  # an hour in 4 s
        max_hours=HOURS_AFTER,
    )


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


@pytest.fixture(scope="module")
def paper_run(serve_app, llm_standins, ohlcv_dir, tmp_path_factory) -> dict:
    groq, ollama = llm_standins
    groq.default, ollama.default = Turn.ratio(0.6), Turn.ratio(0.65)  # they agree: 0.6
    ledger = tmp_path_factory.mktemp("loop") / "ledger.sqlite"
    loop = start_loop(settings(serve_app, ohlcv_dir, ledger))
    again = start_loop(settings(serve_app, ohlcv_dir, ledger))
    wait_hours(loop, HOURS_BEFORE_KILL)
    ray.kill(loop, no_restart=False)  # the actor restarts from its constructor
    status = wait_hours(get_loop(), HOURS_AFTER)
    final = ray.get(get_loop().stop.remote(), timeout=180)
    ray.kill(get_loop(), no_restart=True)
    return {"ledger": ledger, "status": status, "final": final, "same": again == loop}


def test_one_loop_survives_a_kill_without_repeating_an_order(paper_run) -> None:
    assert paper_run["same"], "a second start_loop created a second loop"
    assert paper_run["status"]["errors"] == [] and paper_run["status"]["alarm"] is None
    with Ledger(paper_run["ledger"]) as ledger:
        decisions = ledger.decisions_frame()
        assert set(decisions["arm"]) == {"llm", "fixed"}
        assert (decisions["kind"] == "decision").all(), decisions["reason"].tolist()
        hours = sorted(set(decisions["time"]))
        assert len(hours) >= HOURS_BEFORE_KILL + HOURS_AFTER - 1  # one re-run after the restart
        assert not decisions.duplicated(["arm", "market", "time"]).any()
        orders = ledger.orders()
        assert len({(o.arm, o.identifier) for o in orders}) == len(orders)
        assert all(o.status.value in {"filled", "rejected"} for o in orders)
        assert not ledger.pending_orders()
        curve = ledger.equity_curve("llm")
        assert len(curve) >= len(hours) and (curve["equity"] > 0).all()
        assert ledger.integrity_check() == "ok"
    assert paper_run["final"]["running"] is False


def test_ab_report_compares_the_arms(paper_run, tmp_path) -> None:
    with Ledger(paper_run["ledger"]) as ledger:
        report = ab_report(ledger, ["llm", "fixed"], 1_000_000.0)
        paths = write_ab_report(ledger, ["llm", "fixed"], 1_000_000.0, tmp_path)
        bids = {arm: [f for f in ledger.fills(arm=arm) if f.side.value == "bid"]
                for arm in ("llm", "fixed")}  # fmt: skip
    llm, fixed = report["llm"], report["fixed"]
    assert set(llm["sizing_sources"]) == {"llm-agree"}  # both stand-ins answered, agreeing
    assert llm["mean_ratio"] == pytest.approx(0.6) and fixed["mean_ratio"] == pytest.approx(0.3)
    assert set(fixed["sizing_sources"]) == {"fixed"}
    if bids["llm"] and bids["fixed"]:  # the first buy of each arm: same hour, same cash
        assert bids["llm"][0].funds / bids["fixed"][0].funds == pytest.approx(2.0, rel=0.01)
    table = format_report(report)
    assert "llm" in table and "fixed" in table and "Sharpe" in table
    assert json.loads(paths["json"].read_text())["llm"]["hours"] == llm["hours"]
    assert paths["png"].stat().st_size > 10_000


def test_status_command_reads_the_ledger(paper_run, capsys) -> None:
    from trading.__main__ import main

    assert main(["status", "--ledger", str(paper_run["ledger"])]) == 0
    out = capsys.readouterr().out
    assert "llm: equity" in out.replace("   ", " ").replace("  ", " ") or "llm" in out
    assert "KRW-BTC: realised accuracy" in out


def test_replay_finds_no_difference_then_the_changed_candle(
    paper_run, serve_app, ohlcv_dir, tmp_path, capsys
) -> None:
    import pandas as pd

    from trading.__main__ import main

    args = ["replay", "--ledger", str(paper_run["ledger"]), "--registry", str(serve_app.registry)]
    assert main([*args, "--data-dir", str(ohlcv_dir)]) == 0, capsys.readouterr().out
    assert "no difference" in capsys.readouterr().out
    with Ledger(paper_run["ledger"]) as ledger:
        changed_hour = pd.Timestamp(ledger.decisions_frame()["time"].max())
    candles = pd.read_parquet(ohlcv_dir / "KRW-BTC_minute60.parquet")
    candles.loc[changed_hour, ["close", "high"]] *= 1.05  # one candle, changed after the fact
    data = tmp_path / "changed"
    data.mkdir()
    candles.to_parquet(data / "KRW-BTC_minute60.parquet")
    assert main([*args, "--data-dir", str(data)]) == 1
    out = capsys.readouterr().out
    assert "difference(s)" in out and str(changed_hour) in out and "p_" in out
