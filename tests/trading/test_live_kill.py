"""A live loop process SIGKILLed between Upbit accepting its order and the fill reaching the
ledger, then started again: the stand-in received exactly one POST (counted as POSTs, not as
accepted orders). When the restarted loop finds the order, it settles it; when the exchange does
not show it, the market halts instead of sending the order again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from trading.ledger import Ledger
from trading.upbit_broker import ACCESS_KEY_ENV, SECRET_KEY_ENV

from standins.upbit_private import ACCESS_KEY, SECRET_KEY, UpbitPrivateStandIn

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("live_child.py")
MARKET = "KRW-BTC"
HOLDER = "live-child"  # the same name across the restart, as a Ray actor keeps its id


def child(ledger: Path, data_dir: Path, exchange, hour: pd.Timestamp) -> subprocess.Popen:
    python_path = [str(PROJECT_ROOT), str(PROJECT_ROOT / "tests"), os.environ.get("PYTHONPATH")]
    env = {
        **os.environ, "PYTHONPATH": os.pathsep.join(filter(None, python_path)),
        ACCESS_KEY_ENV: ACCESS_KEY, SECRET_KEY_ENV: SECRET_KEY,
    }  # fmt: skip
    command = [sys.executable, str(CHILD), str(ledger), str(data_dir), exchange.url, str(hour)]
    return subprocess.Popen(
        [*command, HOLDER], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.fixture
def killed(ohlcv_dir, real_candles, tmp_path):
    """The first run, killed once the stand-in has booked its order (its reply held back)."""
    hour = real_candles[MARKET].index[-1]
    candles = {MARKET: real_candles[MARKET].iloc[-48:]}
    ledger = tmp_path / "ledger.sqlite"
    with UpbitPrivateStandIn(candles, balances={"KRW": 1_000_000.0}) as exchange:
        exchange.lose_order_replies(1, status=500, delay_s=120)  # booked; the reply never comes
        first = child(ledger, ohlcv_dir, exchange, hour)
        deadline = time.monotonic() + 120
        while exchange.order_count() == 0 and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()
            time.sleep(0.02)
        assert exchange.order_count() == 1, "the order never reached the stand-in"
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        assert first.returncode == -signal.SIGKILL
        yield {"exchange": exchange, "ledger": ledger, "hour": hour, "data": ohlcv_dir}


def restart(killed) -> dict:
    again = child(killed["ledger"], killed["data"], killed["exchange"], killed["hour"])
    out, err = again.communicate(timeout=180)
    assert again.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_killed_after_the_exchange_accepted_restarted_settles_without_a_second_post(killed):
    identifier = f"{MARKET}|{killed['hour']:%Y-%m-%dT%H:00}|bid"
    with Ledger(killed["ledger"]) as ledger:  # what the kill left: the intent, no fill
        assert [o.status.value for o in ledger.pending_orders()] == ["pending"]
        assert ledger.fills() == []
    status = restart(killed)
    assert status == {"halted": {}, "errors": []}
    assert killed["exchange"].posted_orders() == [identifier]  # one POST, ever
    with Ledger(killed["ledger"]) as ledger:
        (fill,) = ledger.fills(arm="live")
        assert fill.identifier == identifier and fill.volume > 0
        assert not ledger.pending_orders() and not ledger.halts.open()


def test_killed_and_the_order_invisible_the_market_halts_instead_of_resending(killed):
    identifier = f"{MARKET}|{killed['hour']:%Y-%m-%dT%H:00}|bid"
    killed["exchange"].hide_orders(identifier)  # Upbit has it, but its lookups show nothing
    status = restart(killed)
    assert list(status["halted"]) == [MARKET] and status["errors"] == []
    assert "outcome unknown, not resent" in status["halted"][MARKET]
    assert killed["exchange"].posted_orders() == [identifier]  # still one POST: never resent
    with Ledger(killed["ledger"]) as ledger:
        assert ledger.order(identifier, "live").status == "unknown"
        frame = ledger.decisions_frame()
        (planned,) = frame[frame["kind"] == "decision"].itertuples()  # the killed run's BUY
        assert planned.order_identifier == identifier
        (halted,) = frame[frame["kind"] == "no_decision"]["reason"]  # the restart's hour
        assert halted.startswith("market halted") and "reconcile --ack" in halted
        assert ledger.lease.current() is None  # the clean exit gave the lease up
