"""The loop's schedule without Ray: on the accelerated clock it runs every stored hour even when an
hour takes longer than the clock gives it, and offline, past the newest stored candle, it says it
has caught up and records nothing. The real trader runs each hour against a slow HTTP server that
answers 503, so every hour leaves its rows in a real ledger. A loop stopped between an hour's
trades and its equity mark resumes at that hour."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from trading.ledger import Ledger
from trading.loop import LoopCore
from trading.loop_settings import ClockSettings, LoopSettings

from standins.http_server import LocalHttpServer, QuietHandler
from standins.signals import BUY, SELL, FixedSignal

SPEED = 14_400.0  # an hour every 0.25 s
SLOW_S = 0.4  # each Serve call: longer than the clock gives an hour


class SlowServeHandler(QuietHandler):
    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(SLOW_S)
        self.reply(503, b'{"detail": "busy"}')


class SlowServe(LocalHttpServer):
    def handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        return SlowServeHandler


@pytest.fixture
def slow_serve() -> Iterator[str]:
    with SlowServe() as server:
        yield server.url


@pytest.fixture
def stored(real_candles, tmp_path: Path) -> tuple[Path, pd.Timestamp]:
    """KRW-BTC's candles up to a newest hour well inside the shared file."""
    candles = real_candles["KRW-BTC"].loc[:"2025-06-01 12:00"].iloc[-2000:]
    folder = tmp_path / "ohlcv"
    folder.mkdir()
    candles.to_parquet(folder / "KRW-BTC_minute60.parquet")
    return folder, candles.index[-1]


def run(core: LoopCore, until: str, timeout_s: float = 60) -> dict:
    thread = threading.Thread(target=core.schedule, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and core.phase() != until:
        time.sleep(0.1)
    status = core.status()
    core.stop_event.set()
    thread.join(timeout=10)
    return status


def settings(folder: Path, tmp_path: Path, url: str, clock: ClockSettings) -> LoopSettings:
    return LoopSettings(
        data_dir=str(folder), serve_url=url, markets=["KRW-BTC"],
        ledger=str(tmp_path / "ledger.sqlite"), clock=clock,
    )  # fmt: skip


def test_accelerated_replay_runs_every_stored_hour_then_catches_up(
    stored, slow_serve, tmp_path
) -> None:
    folder, newest = stored
    first = newest - pd.Timedelta(hours=5)
    start = first + pd.Timedelta(hours=1, seconds=5)  # the first hour's close + the loop's delay
    clock = ClockSettings(kind="accelerated", start=start.to_pydatetime(), speed=SPEED)
    core = LoopCore(settings(folder, tmp_path, slow_serve, clock))
    status = run(core, "caught_up")
    assert status["phase"] == "caught_up", status["activity"]
    assert status["hours_run"] == 6 and pd.Timestamp(status["last_hour"]) == newest
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        hours = [pd.Timestamp(t) for t in ledger.equity_curve("llm").index]
        reasons = set(ledger.decisions_frame()["reason"])
    assert hours == list(pd.date_range(first, newest, freq="h")), "an hour was skipped"
    assert all("503" in r for r in reasons), reasons
    assert "caught up" in status["activity"] and "records nothing" in status["activity"]


def test_offline_on_the_wall_clock_nothing_is_recorded(stored, slow_serve, tmp_path) -> None:
    folder, newest = stored
    core = LoopCore(settings(folder, tmp_path, slow_serve, ClockSettings()))
    status = run(core, "caught_up", timeout_s=30)
    assert status["phase"] == "caught_up" and status["running"]
    assert status["hours_run"] == 0 and pd.Timestamp(status["stored_until"]) == newest
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        assert ledger.decisions_frame().empty and ledger.equity_curve("llm").empty


def test_a_restart_finishes_the_hour_it_was_killed_in_and_marks_no_hour_twice(
    stored, tmp_path
) -> None:
    """Bought at h0 and sold at h1, the loop dies after h1's trades and before h1's equity mark.
    Restarted, it resumes at h1 (the newest hour with any row), not at h0 (the newest marked
    one): re-marking h0 from an account that already holds h1's sale was the ledger's
    "already recorded differently" error that a kill at the wrong moment raised."""
    folder, newest = stored
    h0, h1 = newest - pd.Timedelta(hours=2), newest - pd.Timedelta(hours=1)

    def loop(anchor: float, signal: FixedSignal) -> LoopCore:
        """The same run's loop (one start: h0 has just closed), its clock read at `anchor`."""
        start = h0 + pd.Timedelta(hours=1, seconds=30)
        clock = ClockSettings(
            kind="accelerated", start=start.to_pydatetime(), speed=1.0, anchor=anchor
        )
        loop_settings = settings(folder, tmp_path, "http://127.0.0.1:9", clock)
        return LoopCore(loop_settings, holder="test-loop", predictor=signal)

    def killed(*_) -> None:
        raise RuntimeError("killed before the equity mark")

    core = loop(time.time(), FixedSignal(BUY))
    core.run_hour(h0)
    core.trader.predictor = FixedSignal(SELL)
    core.trader._snapshot = killed
    core.run_hour(h1)
    assert len(core.errors) == 1 and "killed before the equity mark" in core.errors[0]
    core.stop_event.set()
    core.release()
    core.ledger.close()

    again = loop(time.time() - 3600, FixedSignal(SELL))  # an hour on: its clock is past h1
    resumed = again._first_hour()
    assert resumed == h1
    again.run_hour(resumed)
    assert again.errors == []
    again.stop_event.set()
    again.release()
    again.ledger.close()
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        for arm in ("fixed", "llm"):
            sides = [(pd.Timestamp(o.hour), o.side.value) for o in ledger.orders(arm=arm)]
            assert sides == [(h0, "bid"), (h1, "ask")], sides
            curve = ledger.equity_curve(arm)
            assert [pd.Timestamp(t) for t in curve.index] == [h0, h1]
            assert curve["positions_value"].iloc[0] > 0 and curve["positions_value"].iloc[1] == 0
        assert pd.Timestamp(ledger.newest_hour()) == h1
