"""The TradingLoop actor end to end: accelerated hours through the real Serve graph, paper arms,
the ledger, a kill and restart in the middle, and a clean stop."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray

from trading.ledger import Ledger
from trading.loop import ClockSettings, LoopSettings, get_loop, start_loop

pytestmark = pytest.mark.slow
START = "2025-06-01T00:00:30"  # KST; the newest closed hour at start is 2025-05-31 23:00


def settings(serve_app, ohlcv_dir: Path, ledger: Path, hours: int) -> LoopSettings:
    return LoopSettings(
        mode="paper",
        serve_url=serve_app.url,
        data_dir=str(ohlcv_dir),
        overrides=["loop.markets=[KRW-BTC]", f"ledger.path={ledger}"],
        clock=ClockSettings(kind="accelerated", start=START, speed=900.0),  # an hour in 4 s
        max_hours=hours,
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


def test_accelerated_paper_loop_survives_a_kill(serve_app, ohlcv_dir, tmp_path) -> None:
    ledger_path = tmp_path / "ledger.sqlite"
    loop = start_loop(settings(serve_app, ohlcv_dir, ledger_path, hours=3))
    assert start_loop(settings(serve_app, ohlcv_dir, ledger_path, hours=3)) == loop  # one loop
    wait_hours(loop, 2)
    ray.kill(loop, no_restart=False)  # the actor restarts from its constructor
    status = wait_hours(get_loop(), 3)
    assert status["errors"] == [] and status["alarm"] is None
    final = ray.get(get_loop().stop.remote(), timeout=180)
    ray.kill(get_loop(), no_restart=True)
    with Ledger(ledger_path) as ledger:
        decisions = ledger.decisions_frame()
        assert set(decisions["arm"]) == {"llm", "fixed"}
        hours = sorted(set(decisions["time"]))
        assert len(hours) >= 4  # 2 before the kill, the re-run of the newest, 1+ after
        assert not decisions.duplicated(["arm", "market", "time"]).any()
        orders = ledger.orders()
        assert len({(o.arm, o.identifier) for o in orders}) == len(orders)
        assert all(o.status.value in {"filled", "rejected"} for o in orders)
        assert not ledger.pending_orders()
        curve = ledger.equity_curve("llm")
        assert len(curve) >= 4 and (curve["equity"] > 0).all()
        assert ledger.integrity_check() == "ok"
    assert final["running"] is False and set(final["arms"]) == {"llm", "fixed"}
