"""The ledger's safety books on a real SQLite file: the loop's lease, market halts and their
acknowledgement, balance snapshots, highs since entry."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from features.domain import Order, Side
from trading import ledger_schema
from trading.broker import Fill, OrderState, order_identifier
from trading.ledger import Ledger, LedgerError
from trading.ledger_books import LeaseHeld, LeaseLost
from trading.stops import EntryHigh

BTC, ETH = "KRW-BTC", "KRW-ETH"
HOUR = datetime(2025, 1, 2, 9)
NOW = datetime(2025, 1, 2, 10, 0, 5)
SECOND = timedelta(seconds=1)


def test_a_second_holder_is_refused_by_name_until_the_lease_expires(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.lease.acquire("head-a:loop-1", "live", ttl_s=120, now=NOW)
        with pytest.raises(LeaseHeld, match=r"head-a:loop-1 \(live mode") as held:
            ledger.lease.acquire(
                "head-b:loop-9", "paper", ttl_s=120, now=NOW + timedelta(seconds=60)
            )
        assert held.value.lease.mode == "live"
        # The holder itself (a restarted actor keeps its name) takes it back at once.
        again = ledger.lease.acquire(
            "head-a:loop-1", "live", ttl_s=120, now=NOW + timedelta(seconds=5)
        )
        assert again.acquired_at == NOW
        later = NOW + timedelta(seconds=300)  # its heartbeat stopped: the lease expired
        taken = ledger.lease.acquire("head-b:loop-9", "paper", ttl_s=120, now=later)
        assert taken.holder == "head-b:loop-9"
        with pytest.raises(LeaseLost, match="head-b:loop-9"):
            ledger.lease.renew("head-a:loop-1", ttl_s=120, now=later)
        ledger.lease.release("head-b:loop-9")
        assert ledger.lease.current() is None


def _unknown_order(ledger: Ledger, market: str) -> str:
    order = Order(market, Side.BID, 100_000.0, identifier=order_identifier(market, HOUR, Side.BID))
    ledger.record_order_intent(order, HOUR, "live")
    ledger.mark_order(order.identifier, "live", "unknown", "lost reply")
    return order.identifier


def test_halts_stay_until_a_person_acknowledges_them(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db") as ledger:
        identifier = _unknown_order(ledger, BTC)
        assert ledger.halts.halt(BTC, "order outcome unknown")
        assert not ledger.halts.halt(BTC, "order outcome unknown")  # the same reason: once
        ledger.halts.halt(ETH, "balance differs")
        assert sorted(ledger.halts.open()) == [BTC, ETH]
        with pytest.raises(LedgerError, match="name"):
            ledger.halts.acknowledge(" ")
        (acked,) = ledger.halts.acknowledge("alice", market=BTC)
        assert acked.market == BTC and acked.reason == "order outcome unknown"
        assert list(ledger.halts.open()) == [ETH]
        (btc,) = [h for h in ledger.halts.all() if h.market == BTC]
        assert btc.acked_by == "alice" and btc.acked_at is not None
        order = ledger.order(identifier, "live")
        assert order.status == "rejected" and "alice acknowledged" in order.error
        assert not ledger.pending_orders()  # a restart no longer looks it up


def test_balance_snapshots_know_the_fills_recorded_after_them(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.snapshots.record(HOUR, {"KRW": 1_000_000.0, "BTC": 0.0})
        order = Order(BTC, Side.BID, 100_000.0, identifier=order_identifier(BTC, HOUR, Side.BID))
        ledger.record_order_intent(order, HOUR, "live")
        fill = Fill(order.identifier, BTC, Side.BID, OrderState.DONE, 0.001, 1e8, 50.0, "u")
        ledger.record_fill(fill, "live")
        snapshot = ledger.snapshots.latest()
        assert snapshot.balances == {"BTC": 0.0, "KRW": 1_000_000.0}
        assert ledger.snapshots.net_fills_since(snapshot.fills_seen, "live") == {BTC: 0.001}
        ledger.snapshots.record(HOUR + timedelta(hours=1), {"BTC": 0.001}, note="hour end")
        later = ledger.snapshots.latest()
        assert ledger.snapshots.net_fills_since(later.fills_seen, "live") == {}


def test_the_high_since_entry_survives_a_reopen(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.highs.set("live", BTC, EntryHigh(123.0, HOUR).to_dict())
    with Ledger(tmp_path / "l.db") as ledger:
        assert EntryHigh.from_dict(ledger.highs.get("live", BTC)) == EntryHigh(123.0, HOUR)
        assert ledger.highs.get("live", ETH) is None


def test_the_entry_hour_survives_a_reopen_and_a_schema_3_row_migrates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "l.db"
    with monkeypatch.context() as old_code:  # a ledger written before the entry hour was kept
        old_code.delitem(ledger_schema.MIGRATIONS, 4)
        with Ledger(path) as ledger:
            conn = ledger._file.connection()
            conn.execute(
                "INSERT INTO entry_highs (arm, market, high, seen, updated_at) "
                "VALUES ('live', ?, 123.0, ?, ?)",
                (BTC, HOUR.isoformat(), NOW.isoformat()),
            )
    with Ledger(path) as ledger:  # migrated to 4: the row is kept, its entry hour unknown
        assert ledger_schema.stored_version(ledger._file.connection(), path) == 4
        assert EntryHigh.from_dict(ledger.highs.get("live", BTC)) == EntryHigh(123.0, HOUR)
        entered = HOUR - timedelta(hours=5)
        ledger.highs.set("live", BTC, EntryHigh(125.0, HOUR, entered).to_dict())
    with Ledger(path) as ledger:
        assert EntryHigh.from_dict(ledger.highs.get("live", BTC)) == EntryHigh(125.0, HOUR, entered)


def _filled(ledger: Ledger, hour: datetime, side: Side, volume: float) -> None:
    identifier = order_identifier(BTC, hour, side)
    amount = volume * 100_000_000.0 if side is Side.BID else 0.0
    order = Order(BTC, side, amount, volume if side is Side.ASK else 0.0, identifier)
    ledger.record_order_intent(order, hour, "fixed")
    fill = Fill(identifier, BTC, side, OrderState.DONE, volume, 100_000_000.0, 50.0)
    ledger.record_fill(fill, "fixed")


def test_the_entry_hour_is_recovered_from_the_fills(tmp_path: Path) -> None:
    """The first buy since the arm's fills were last flat; adding does not move it."""
    at = [HOUR + timedelta(hours=k) for k in range(6)]
    with Ledger(tmp_path / "l.db") as ledger:
        assert ledger.highs.opened("fixed", BTC) is None  # never traded
        _filled(ledger, at[0], Side.BID, 0.002)
        _filled(ledger, at[1], Side.BID, 0.001)  # adds to the position
        assert ledger.highs.opened("fixed", BTC) == at[0]
        _filled(ledger, at[2], Side.ASK, 0.003)  # sold everything: flat
        assert ledger.highs.opened("fixed", BTC) is None
        _filled(ledger, at[3], Side.BID, 0.002)  # a new position
        _filled(ledger, at[4], Side.ASK, 0.001)  # partly sold: still open
        assert ledger.highs.opened("fixed", BTC) == at[3]
        assert ledger.highs.opened("llm", BTC) is None  # another arm's fills are its own
