"""The ledger on real SQLite files: round trips, replays, restarts, damage, SIGKILL mid-cycle."""

from __future__ import annotations

import importlib.util
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from features.domain import Decision, Order, Side, Signal
from trading import ledger_schema
from trading.broker import Fill, OrderState, order_identifier
from trading.ledger import Ledger, LedgerError, OrderStatus

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("ledger_child.py")
HOUR = datetime(2025, 1, 2, 9)
BTC = "KRW-BTC"


def _child_module():
    spec = importlib.util.spec_from_file_location("ledger_child", CHILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _decision(
    hour: datetime = HOUR, signal_: Signal = Signal.BUY, ratio: float = 0.2, market: str = BTC
) -> Decision:
    order = Order(market, Side.BID, krw_amount=50_000.0, reason="buy") if ratio else None
    return Decision(market, hour, signal_, ratio, "fixed", "v0001", order, "why", (0.1, 0.2, 0.7))


def _at(k: int) -> datetime:
    return HOUR + timedelta(hours=k)


def _bid(k: int = 0, krw: float = 100_000.0) -> Order:
    """The bid of the hour `k` hours after HOUR (one order per market, hour and side)."""
    return Order(BTC, Side.BID, krw_amount=krw, identifier=order_identifier(BTC, _at(k), Side.BID))


def _ask(volume: float, k: int = 0) -> Order:
    return Order(BTC, Side.ASK, volume=volume, identifier=order_identifier(BTC, _at(k), Side.ASK))


def _hour_of(order: Order) -> datetime:
    return datetime.strptime(order.identifier.split("|")[1], "%Y-%m-%dT%H:%M")


def _fill(order: Order, volume: float, price: float, state: OrderState = OrderState.DONE) -> Fill:
    return Fill(
        order.identifier, order.market, order.side, state, volume, price, volume * price * 5e-4
    )


def _trade(ledger: Ledger, order: Order, volume: float, price: float, arm="main"):
    ledger.record_order_intent(order, _hour_of(order), arm)
    ledger.mark_order(order.identifier, arm, OrderStatus.SENT)
    fill = _fill(order, volume, price)
    assert ledger.record_fill(fill, arm)
    return fill


@pytest.fixture
def ledger(tmp_path: Path):
    with Ledger(tmp_path / "deep" / "dir" / "ledger.db") as opened:
        yield opened


# -- decisions -------------------------------------------------------------------------------


def test_decision_round_trip_replay_and_conflict(ledger: Ledger) -> None:
    decision = _decision()
    assert ledger.record_decision(decision, arm="llm") is True
    assert ledger.record_decision(decision, arm="llm") is False  # a restarted loop replays
    assert ledger.decision(BTC, HOUR, arm="llm") == decision
    assert ledger.decision(BTC, HOUR) is None  # another arm
    with pytest.raises(LedgerError, match="ratio: stored 0.2, new 0.3"):
        ledger.record_decision(_decision(ratio=0.3), arm="llm")
    flat = _decision(HOUR + timedelta(hours=1), Signal.HOLD, ratio=0.0)
    ledger.record_decision(flat, arm="llm")
    assert ledger.decision(BTC, flat.time, arm="llm") == flat


def test_aware_times_are_stored_as_kst_wall_time(ledger: Ledger) -> None:
    utc = datetime(2025, 1, 2, 0, tzinfo=UTC)
    ledger.record_decision(_decision(hour=utc))
    assert ledger.decision(BTC, HOUR).time == HOUR


def test_no_decisions_sit_beside_decisions_in_the_frame(ledger: Ledger) -> None:
    ledger.record_decision(_decision(), arm="llm")
    later = HOUR + timedelta(hours=1)
    assert ledger.record_no_decision(BTC, later, arm="llm", reason="stale candles")
    assert not ledger.record_no_decision(BTC, later, arm="llm", reason="stale candles")
    ledger.record_no_decision(BTC, later, arm="llm", reason="serve did not answer")
    with pytest.raises(LedgerError, match="reason"):
        ledger.record_no_decision(BTC, later, arm="llm")
    frame = ledger.decisions_frame(arm="llm")
    assert list(frame["kind"]) == ["decision", "no_decision", "no_decision"]
    assert frame["time"].tolist() == [pd.Timestamp(HOUR), pd.Timestamp(later), pd.Timestamp(later)]
    assert frame["signal"].iloc[0] == Signal.BUY and pd.isna(frame["signal"].iloc[1])
    assert set(frame.loc[frame["kind"] == "no_decision", "reason"]) == {
        "stale candles",
        "serve did not answer",
    }
    assert ledger.decisions_frame(arm="fixed").empty


def test_ratios_per_arm(ledger: Ledger) -> None:
    for k, ratio in enumerate((0.05, 0.4, 1.0)):
        ledger.record_decision(_decision(HOUR + timedelta(hours=k), ratio=ratio), arm="llm")
    ledger.record_decision(_decision(ratio=0.1), arm="fixed")
    assert ledger.ratios("llm")["ratio"].tolist() == [0.05, 0.4, 1.0]
    assert ledger.ratios("fixed")["ratio"].tolist() == [0.1]


# -- orders and fills ------------------------------------------------------------------------


def test_order_intent_is_pending_until_its_outcome_is_known(ledger: Ledger) -> None:
    order = _bid()
    record = ledger.record_order_intent(order, HOUR)
    assert (record.status, record.identifier, record.hour) == ("pending", order.identifier, HOUR)
    assert [o.identifier for o in ledger.pending_orders()] == [order.identifier]
    assert ledger.mark_order(order.identifier, "main", "sent").status is OrderStatus.SENT
    assert (
        ledger.mark_order(order.identifier, "main", "unknown", error="timeout").error == "timeout"
    )
    assert [o.status for o in ledger.pending_orders(arm="main")] == [OrderStatus.UNKNOWN]
    assert ledger.pending_orders(arm="llm") == []
    rejected = ledger.mark_order(order.identifier, "main", "rejected", error="insufficient funds")
    assert rejected.is_final and ledger.pending_orders() == []
    assert ledger.order(order.identifier).to_order() == order
    # a replayed intent is a no-op that reports the order as it stands
    assert ledger.record_order_intent(order, HOUR).status is OrderStatus.REJECTED


def test_order_rules_are_enforced(ledger: Ledger) -> None:
    order = _bid()
    with pytest.raises(LedgerError, match="no order intent"):
        ledger.mark_order(order.identifier, "main", "sent")
    with pytest.raises(LedgerError, match="does not match"):
        ledger.record_order_intent(order, _at(1))  # the identifier names another hour
    ledger.record_order_intent(order, HOUR)
    with pytest.raises(LedgerError, match="krw_amount"):
        ledger.record_order_intent(_bid(krw=1.0), HOUR)
    with pytest.raises(LedgerError, match="record_fill"):
        ledger.mark_order(order.identifier, "main", "filled")
    ledger.mark_order(order.identifier, "main", "rejected")
    # a stale report changes nothing; a contradicting outcome is an error to surface
    assert ledger.mark_order(order.identifier, "main", "sent").status is OrderStatus.REJECTED
    with pytest.raises(LedgerError, match="'rejected' and cannot become 'filled'"):
        ledger.record_fill(_fill(order, 0.001, 100_000_000.0))
    assert ledger.fills() == []
    with pytest.raises(ValueError):
        ledger.mark_order(order.identifier, "main", "lost")


def test_orders_written_under_schema_1_are_read_and_settled_after_the_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Schema 1 kept a retry counter (always 0) in the identifier and an `attempt` column; a file
    written then opens under schema 2 and its orders are found, settled and kept by their old
    identifiers, while new orders get `market|hour|side`."""
    path, legacy = tmp_path / "ledger.db", f"{order_identifier(BTC, HOUR, Side.BID)}|0"
    with monkeypatch.context() as old_code:
        for later in [v for v in ledger_schema.MIGRATIONS if v > 1]:
            old_code.delitem(ledger_schema.MIGRATIONS, later)
        Ledger(path).close()
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO orders (arm, identifier, market, hour, side, attempt, krw_amount, volume, "
        "reason, status, created_at, updated_at) VALUES ('main', ?, ?, ?, 'bid', 0, 100000.0, "
        "0.0, '', 'sent', '2025-01-02T09:00:05', '2025-01-02T09:00:05')",
        (legacy, BTC, HOUR.isoformat()),
    )
    conn.commit()
    conn.close()
    with Ledger(path) as ledger:
        newest = max(ledger_schema.MIGRATIONS)
        assert ledger_schema.stored_version(ledger._file.connection(), path) == newest
        (pending,) = ledger.pending_orders()
        assert (pending.identifier, pending.status, pending.hour) == (legacy, "sent", HOUR)
        order = pending.to_order()
        assert ledger.record_order_intent(order, HOUR).identifier == legacy  # a replayed intent
        assert ledger.record_fill(_fill(order, 0.001, 100_000_000.0))
        assert ledger.position(BTC).volume == pytest.approx(0.001)
        fresh = _trade(ledger, _ask(0.001, 1), 0.001, 101_000_000.0)
        assert fresh.identifier == f"{BTC}|2025-01-02T10:00|ask"
        assert [o.identifier for o in ledger.orders()] == [legacy, fresh.identifier]


def test_fills_move_orders_and_positions_once(ledger: Ledger) -> None:
    first = _trade(ledger, _bid(0), 0.002, 100_000_000.0)
    assert ledger.order(first.identifier).status is OrderStatus.FILLED
    assert ledger.record_fill(first) is False  # replay: the position is not counted twice
    _trade(ledger, _bid(1), 0.002, 110_000_000.0)
    held = ledger.position(BTC)
    assert held.volume == pytest.approx(0.004)
    assert held.avg_entry_price == pytest.approx(105_000_000.0)
    _trade(ledger, _ask(0.001, 1), 0.001, 115_000_000.0)
    held = ledger.position(BTC)
    assert held.volume == pytest.approx(0.003)
    assert held.realised_pnl == pytest.approx(10_000.0)
    assert held.avg_entry_price == pytest.approx(105_000_000.0)
    _trade(ledger, _ask(0.003, 2), 0.003, 100_000_000.0)
    flat = ledger.position(BTC)
    assert (flat.volume, flat.avg_entry_price) == (0.0, 0.0)
    assert flat.realised_pnl == pytest.approx(10_000.0 - 15_000.0)
    assert flat.fees == pytest.approx(sum(f.fee for f in ledger.fills()))
    assert ledger.position("KRW-ETH").volume == 0.0
    assert [p.market for p in ledger.positions()] == [BTC]


def test_fill_outcomes_and_refusals(ledger: Ledger) -> None:
    cancelled, rejected, waiting = _bid(0), _bid(1), _bid(2)
    for order in (cancelled, rejected, waiting):
        ledger.record_order_intent(order, _hour_of(order))
    with pytest.raises(LedgerError, match="no order intent"):
        ledger.record_fill(_fill(_bid(7), 0.001, 1.0))
    with pytest.raises(LedgerError, match="not an outcome yet"):
        ledger.record_fill(_fill(waiting, 0.0, 0.0, OrderState.WAIT))
    partial = _fill(cancelled, 0.0005, 100_000_000.0, OrderState.CANCEL)
    ledger.record_fill(partial)  # Upbit ends market bids as 'cancel' with the executed part
    with pytest.raises(LedgerError, match="already recorded differently"):
        ledger.record_fill(_fill(cancelled, 0.0006, 100_000_000.0, OrderState.CANCEL))
    ledger.record_fill(_fill(rejected, 0.0, 0.0, OrderState.REJECTED))
    assert ledger.order(cancelled.identifier).status is OrderStatus.CANCELLED
    assert ledger.order(rejected.identifier).status is OrderStatus.REJECTED
    assert ledger.position(BTC).volume == pytest.approx(0.0005)
    assert [o.identifier for o in ledger.pending_orders()] == [waiting.identifier]


def test_fills_rebuild_an_account_per_arm_and_market(ledger: Ledger) -> None:
    made = [_trade(ledger, _bid(k), 0.001 * (k + 1), 100_000_000.0, "llm") for k in range(3)]
    other = _trade(ledger, _bid(0), 0.5, 90_000_000.0, "fixed")  # same identifier, other arm
    assert ledger.fills(arm="llm") == made
    assert ledger.fills(arm="fixed", market=BTC) == [other]
    assert ledger.fills(market="KRW-ETH") == []
    assert len(ledger.fills()) == 4
    assert ledger.position(BTC, "fixed").volume == 0.5


# -- equity, outcomes, risk ------------------------------------------------------------------


def test_equity_curve_tracks_peak_and_drawdown(ledger: Ledger) -> None:
    marks = [(1_000_000.0, 0.0), (500_000.0, 700_000.0), (300_000.0, 600_000.0)]
    for k, (cash, value) in enumerate(marks):
        ledger.record_equity(HOUR + timedelta(hours=k), cash, value, arm="llm")
    replay = ledger.record_equity(HOUR + timedelta(hours=1), 500_000.0, 700_000.0, arm="llm")
    assert (replay.equity, replay.peak_equity, replay.drawdown) == (1_200_000.0, 1_200_000.0, 0.0)
    with pytest.raises(LedgerError, match="already recorded differently"):
        ledger.record_equity(HOUR + timedelta(hours=1), 1.0, 0.0, arm="llm")
    with pytest.raises(LedgerError, match="time order"):
        ledger.record_equity(HOUR - timedelta(hours=1), 1.0, 0.0, arm="llm")
    with pytest.raises(LedgerError, match="finite"):
        ledger.record_equity(HOUR + timedelta(hours=9), math.nan, 0.0, arm="llm")
    curve = ledger.equity_curve("llm")
    assert list(curve.index) == [pd.Timestamp(HOUR + timedelta(hours=k)) for k in range(3)]
    assert curve["equity"].tolist() == [1_000_000.0, 1_200_000.0, 900_000.0]
    assert curve["peak_equity"].tolist() == [1_000_000.0, 1_200_000.0, 1_200_000.0]
    assert curve["drawdown"].iloc[-1] == pytest.approx(0.25)
    assert ledger.equity_curve("fixed").empty


def test_realised_accuracy_over_the_last_decisions(ledger: Ledger) -> None:
    # (signal, true label) oldest first; window 5 keeps the last five.
    pairs = [
        (Signal.SELL, Signal.BUY),  # outside the window
        (Signal.BUY, Signal.BUY),
        (Signal.BUY, Signal.HOLD),
        (Signal.HOLD, Signal.HOLD),
        (Signal.SELL, Signal.SELL),
        (Signal.HOLD, Signal.BUY),
    ]
    for k, (predicted, truth) in enumerate(pairs):
        hour = HOUR + timedelta(hours=k)
        ledger.record_decision(_decision(hour, predicted), arm="llm")
        ledger.record_decision(_decision(hour, truth), arm="fixed")
        ledger.record_outcome(BTC, hour, 6, truth, 0.01 * (k - 3))
    ledger.record_decision(
        _decision(HOUR + timedelta(hours=6), Signal.SELL), arm="llm"
    )  # no outcome
    scored = ledger.realised_accuracy(BTC, window=5, arm="llm")
    assert (scored.n, scored.horizon) == (5, 6)
    assert scored.accuracy == pytest.approx(3 / 5)
    assert scored.recall == {Signal.SELL: 1.0, Signal.HOLD: 0.5, Signal.BUY: 0.5}
    assert scored.balanced_accuracy == pytest.approx(2 / 3)
    assert ledger.realised_accuracy(BTC, window=50, arm="fixed").accuracy == 1.0
    empty = ledger.realised_accuracy("KRW-ETH", window=5, arm="llm")
    assert empty.n == 0 and math.isnan(empty.accuracy) and math.isnan(empty.balanced_accuracy)
    assert not ledger.record_outcome(BTC, HOUR, 6, Signal.BUY, -0.03)
    with pytest.raises(LedgerError, match="label"):
        ledger.record_outcome(BTC, HOUR, 6, Signal.SELL, -0.03)


def test_risk_state_is_an_append_only_history(ledger: Ledger) -> None:
    assert ledger.risk_state() is None
    when = datetime(2025, 1, 2, 9, 30)
    ledger.set_risk_state({"on": True, "reason": "drawdown 20%", "by": "monitor", "when": when})
    ledger.set_risk_state({"on": False, "reason": "reviewed", "by": "operator"})
    assert ledger.risk_state() == {"on": False, "reason": "reviewed", "by": "operator"}
    events = ledger.risk_events()
    assert [e.state["on"] for e in events] == [True, False]
    assert events[0].state["when"] == "2025-01-02T09:30:00"
    assert ledger.risk_state(arm="llm") is None
    with pytest.raises(LedgerError, match="JSON"):
        ledger.set_risk_state({"on": True, "by": object()})
    assert len(ledger.risk_events()) == 2


# -- files, processes, threads ---------------------------------------------------------------


def test_file_settings_and_lifecycle(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "ledger.db"
    with Ledger(path) as ledger:
        conn = ledger._file.connection()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    with pytest.raises(LedgerError, match="closed"):
        ledger.decision(BTC, HOUR)
    ledger.close()  # twice is fine
    with Ledger(path) as reopened:
        assert reopened.integrity_check() == "ok"


def test_a_reader_is_not_blocked_by_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    writer, reader = Ledger(path), Ledger(path)
    writer.record_decision(_decision())
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    holder.execute("DELETE FROM decisions")
    started = time.monotonic()
    assert reader.decision(BTC, HOUR) is not None  # the committed row, not the pending delete
    assert time.monotonic() - started < 5.0  # far below the 10 s busy timeout
    holder.execute("ROLLBACK")
    holder.close()

    total, seen = 60, []

    def write() -> None:
        for k in range(total):
            _trade(writer, _bid(k), 0.001, 100_000_000.0)

    thread = threading.Thread(target=write)
    thread.start()
    while thread.is_alive():
        seen.append(len(reader.fills()))
    thread.join()
    seen.append(len(reader.fills()))
    assert seen == sorted(seen) and seen[-1] == total
    assert reader.position(BTC).volume == pytest.approx(0.001 * total)
    writer.close()
    reader.close()


def test_threads_share_one_ledger(ledger: Ledger) -> None:
    def decide(market: str) -> None:
        for k in range(25):
            ledger.record_decision(_decision(HOUR + timedelta(hours=k), market=market))

    markets = ["KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL"]
    threads = [threading.Thread(target=decide, args=(m,)) for m in markets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ledger.decisions_frame().groupby("market").size().to_dict() == dict.fromkeys(markets, 25)


def test_garbage_and_foreign_files_are_refused_untouched(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is a csv, not a ledger\n" * 100)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE candles (time TEXT, close REAL)")
    conn.close()
    for path, problem in ((garbage, "not a SQLite database"), (foreign, "not a ledger")):
        before = path.read_bytes()
        with pytest.raises(LedgerError, match=problem) as raised:
            Ledger(path)
        assert str(path) in str(raised.value)
        assert path.read_bytes() == before


def test_a_damaged_ledger_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        for k in range(150):
            ledger.record_decision(_decision(HOUR + timedelta(hours=k)))
    damaged = bytearray(path.read_bytes())
    page = 4096
    assert len(damaged) > 6 * page
    damaged[3 * page : 5 * page] = random.Random(0).randbytes(2 * page)
    path.write_bytes(bytes(damaged))
    with pytest.raises(LedgerError, match=str(path)):
        Ledger(path)
    assert path.read_bytes() == bytes(damaged)


def test_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (99, '2030-01-01T00:00:00')")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(LedgerError, match="schema version 99 is newer"):
        Ledger(path)
    assert path.read_bytes() == before


def test_a_refused_file_keeps_its_leftover_wal_unapplied(tmp_path: Path) -> None:
    """A process killed after a commit leaves its pages in the -wal file: refusing the ledger must
    not checkpoint them into the main file (a read-write open would, when it closes)."""
    source, copy = tmp_path / "source", tmp_path / "copy"
    source.mkdir()
    copy.mkdir()
    Ledger(source / "ledger.db").close()
    writer = sqlite3.connect(source / "ledger.db", isolation_level=None)
    writer.execute("INSERT INTO schema_migrations VALUES (99, '2030-01-01T00:00:00')")
    for name in ("ledger.db", "ledger.db-wal"):  # what a SIGKILL would leave on disk
        (copy / name).write_bytes((source / name).read_bytes())
    writer.close()
    before = {name: (copy / name).read_bytes() for name in ("ledger.db", "ledger.db-wal")}
    with pytest.raises(LedgerError, match="newer"):
        Ledger(copy / "ledger.db")
    assert {name: (copy / name).read_bytes() for name in before} == before


def test_migrations_run_once_on_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        ledger.record_decision(_decision())
    calls = []

    def add_notes(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("CREATE TABLE notes (text TEXT)")

    following = max(ledger_schema.MIGRATIONS) + 1
    monkeypatch.setitem(ledger_schema.MIGRATIONS, following, add_notes)
    for _ in range(2):
        with Ledger(path) as ledger:
            conn = ledger._file.connection()
            assert ledger_schema.stored_version(conn, path) == following
            assert ledger.decision(BTC, HOUR) is not None
    assert calls == [1]


# -- durability across SIGKILL ---------------------------------------------------------------

KILL_POINTS = [str(k) for k in range(len(_child_module().CYCLE) + 1)] + ["inside-fill"]


@pytest.fixture(scope="module")
def killed_ledgers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every kill point's child, run at once (each pays ~0.5 s of imports), SIGKILLed."""
    python_path = [str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}
    paths = {k: tmp_path_factory.mktemp(f"killed-{k}") / "ledger.db" for k in KILL_POINTS}
    children = {
        k: subprocess.Popen(
            [sys.executable, str(CHILD), str(path), k],
            cwd=PROJECT_ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k, path in paths.items()
    }
    for k, child in children.items():
        _, stderr = child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL, f"kill point {k}: {stderr}"
    return paths


@pytest.mark.parametrize("kill_after", KILL_POINTS)
def test_every_committed_step_survives_a_kill(killed_ledgers: dict[str, Path], kill_after: str):
    child = _child_module()
    committed = 3 if kill_after == "inside-fill" else int(kill_after)
    names = [name for name, _ in child.CYCLE[:committed]]
    with Ledger(killed_ledgers[kill_after]) as ledger:
        assert ledger.integrity_check() == "ok"
        _assert_cycle_state(ledger, child, names)
        # The restarted loop replays the whole hour: stored steps are no-ops, the rest complete it.
        for _, step in child.CYCLE:
            step(ledger)
        _assert_cycle_state(ledger, child, [name for name, _ in child.CYCLE])


def _assert_cycle_state(ledger: Ledger, child, names: list[str]) -> None:
    arm, order = child.ARM, child.ORDER
    assert (ledger.decision(child.MARKET, child.HOUR, arm) is not None) == ("decision" in names)
    stored = ledger.order(order.identifier, arm)
    expected_status = {"intent": "pending", "sent": "sent", "fill": "filled"}
    reached = [expected_status[n] for n in names if n in expected_status]
    assert (stored.status if stored else None) == (reached[-1] if reached else None)
    is_pending = stored is not None and not stored.is_final
    assert [o.identifier for o in ledger.pending_orders(arm)] == (
        [order.identifier] if is_pending else []
    )
    filled = "fill" in names
    assert ledger.fills(arm) == ([child.FILL] if filled else [])
    assert ledger.position(child.MARKET, arm).volume == (child.FILL.volume if filled else 0.0)
    assert len(ledger.equity_curve(arm)) == ("equity" in names)
    assert ledger.risk_state(arm) == (child.KILL_SWITCH if "risk" in names else None)
