"""The ledger's books that keep money safe across processes and restarts (schemas 3 and 4).

- `LoopLease`: one trading loop per ledger file, across clusters. The loop takes the lease when it
  starts and renews it with a heartbeat; a second loop finds a live lease held by someone else
  and refuses, naming the holder and its mode. A restarted loop (Ray keeps its actor id, so its
  holder name) takes its own lease back at once.
- `MarketHalts`: a market the loop must not trade until a person acknowledges why (an order whose
  outcome is unknown, a difference with the exchange at start). Rows are never deleted: an
  acknowledgement records who and when (`python -m trading reconcile --ack --by NAME`).
- `BalanceSnapshots`: the exchange balances the live loop last saw at the end of an hour, and how
  many fills the ledger held then, so a restart can tell what the exchange should hold now.
- `EntryHighs`: each position's highest close since entry and its entry hour
  (`trading.stops.EntryHigh`), so the trailing stop and the label's time limit survive a restart.

They share the ledger's connection (`trading.ledger_db.LedgerFile`); each write is one
transaction, like every other ledger write. Times are KST wall times without an offset.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from features.exchange import now_kst
from trading.ledger_db import LedgerFile, get_row
from trading.ledger_rows import (
    LedgerError,
    OrderStatus,
    Position,
    fill_from_row,
    from_text,
    now_text,
    to_text,
)
from trading.upbit_rules import is_dust


# -- the lease -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lease:
    holder: str
    mode: str
    acquired_at: datetime
    heartbeat_at: datetime
    expires_at: datetime

    def live(self, now: datetime) -> bool:
        return self.expires_at > now

    def describe(self, now: datetime) -> str:
        age = (now - self.heartbeat_at).total_seconds()
        return (
            f"{self.holder} ({self.mode} mode; heartbeat {age:.0f} s ago, lease until "
            f"{self.expires_at:%Y-%m-%d %H:%M:%S} KST)"
        )


class LeaseHeld(LedgerError):
    """Another loop holds this ledger's lease; the message names it and its mode."""

    def __init__(self, message: str, lease: Lease) -> None:
        super().__init__(message)
        self.lease = lease


class LeaseLost(LedgerError):
    """The lease this loop held is gone or now someone else's: it must stop trading."""


def _lease(row) -> Lease:
    return Lease(
        row["holder"], row["mode"], from_text(row["acquired_at"]),
        from_text(row["heartbeat_at"]), from_text(row["expires_at"]),
    )  # fmt: skip


class LoopLease:
    def __init__(self, file: LedgerFile) -> None:
        self._file = file

    def current(self) -> Lease | None:
        rows = self._file.read("SELECT * FROM loop_lease WHERE id = 1", ())
        return _lease(rows[0]) if rows else None

    def acquire(self, holder: str, mode: str, ttl_s: float, now: datetime | None = None) -> Lease:
        """Take the lease, or LeaseHeld when another holder's lease is still live."""
        now = now or now_kst()
        with self._file.write() as conn:
            row = get_row(conn, "loop_lease", {"id": 1})
            held = _lease(row) if row else None
            if held is not None and held.holder != holder and held.live(now):
                raise LeaseHeld(
                    f"{self._file.path}: another trading loop holds this ledger: "
                    f"{held.describe(now)}. One loop per ledger: stop it first "
                    "(python -m cluster down), or wait for its lease to expire if it died",
                    held,
                )
            acquired = held.acquired_at if held is not None and held.holder == holder else now
            values = (holder, mode, to_text(acquired), to_text(now), to_text(now + _s(ttl_s)))
            conn.execute(
                "INSERT OR REPLACE INTO loop_lease (id, holder, mode, acquired_at, heartbeat_at, "
                "expires_at) VALUES (1, ?, ?, ?, ?, ?)",
                values,
            )
        return Lease(holder, mode, acquired, now, now + _s(ttl_s))

    def renew(self, holder: str, ttl_s: float, now: datetime | None = None) -> None:
        """The heartbeat; LeaseLost when the lease is no longer this holder's."""
        now = now or now_kst()
        with self._file.write() as conn:
            row = get_row(conn, "loop_lease", {"id": 1})
            if row is None or row["holder"] != holder:
                who = "nobody" if row is None else _lease(row).describe(now)
                raise LeaseLost(f"{self._file.path}: this loop's lease is now held by {who}")
            conn.execute(
                "UPDATE loop_lease SET heartbeat_at = ?, expires_at = ? WHERE id = 1",
                (to_text(now), to_text(now + _s(ttl_s))),
            )

    def release(self, holder: str) -> None:
        with self._file.write() as conn:
            conn.execute("DELETE FROM loop_lease WHERE id = 1 AND holder = ?", (holder,))


def _s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


# -- market halts ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Halt:
    id: int
    market: str
    reason: str
    raised_at: datetime
    acked_by: str | None = None
    acked_at: datetime | None = None


def _halt(row) -> Halt:
    acked = row["acked_at"]
    return Halt(
        row["id"], row["market"], row["reason"], from_text(row["raised_at"]), row["acked_by"],
        from_text(acked) if acked else None,
    )  # fmt: skip


ACK_ERROR = "abandoned: {by} acknowledged at {at} that the exchange shows no such order"


class MarketHalts:
    def __init__(self, file: LedgerFile) -> None:
        self._file = file

    def halt(self, market: str, reason: str) -> bool:
        """Halt `market`; False when it is already halted for this very reason (a re-run)."""
        if not reason:
            raise LedgerError("a halt needs its reason: it is what the person acknowledges")
        with self._file.write() as conn:
            same = conn.execute(
                "SELECT 1 FROM halts WHERE market = ? AND reason = ? AND acked_at IS NULL",
                (market, reason),
            ).fetchone()
            if same:
                return False
            conn.execute(
                "INSERT INTO halts (market, reason, raised_at) VALUES (?, ?, ?)",
                (market, reason, now_text()),
            )
            return True

    def open(self) -> dict[str, list[Halt]]:
        """Every halted market and its unacknowledged reasons, oldest first."""
        rows = self._file.read("SELECT * FROM halts WHERE acked_at IS NULL ORDER BY id", ())
        halted: dict[str, list[Halt]] = {}
        for row in rows:
            halted.setdefault(row["market"], []).append(_halt(row))
        return halted

    def all(self) -> list[Halt]:
        return [_halt(r) for r in self._file.read("SELECT * FROM halts ORDER BY id", ())]

    def acknowledge(self, by: str, market: str | None = None) -> list[Halt]:
        """A person has checked the exchange: the open halts (of `market`, or all) end, recorded
        with `by`, and those markets' orders of unknown outcome are abandoned (rejected, with
        who and when in their error), so no restart looks them up or halts for them again."""
        if not by.strip():
            raise LedgerError("an acknowledgement needs the name of the person who checked")
        at = now_text()
        where, params = ("acked_at IS NULL", ()) if market is None else (
            "acked_at IS NULL AND market = ?", (market,)
        )  # fmt: skip
        with self._file.write() as conn:
            rows = conn.execute(f"SELECT * FROM halts WHERE {where} ORDER BY id", params).fetchall()
            conn.execute(
                f"UPDATE halts SET acked_by = ?, acked_at = ? WHERE {where}", (by, at, *params)
            )
            for name in sorted({row["market"] for row in rows}):
                conn.execute(
                    "UPDATE orders SET status = ?, error = ?, updated_at = ? "
                    "WHERE market = ? AND status = ?",
                    (OrderStatus.REJECTED.value, ACK_ERROR.format(by=by, at=at), at, name,
                     OrderStatus.UNKNOWN.value),
                )  # fmt: skip
        return [_halt(row) for row in rows]


# -- balance snapshots -------------------------------------------------------------------------
@dataclass(frozen=True)
class BalanceSnapshot:
    time: datetime
    balances: Mapping[str, float]  # currency -> units held (free + locked)
    fills_seen: int  # the ledger's newest fill (rowid) when it was taken
    note: str


class BalanceSnapshots:
    def __init__(self, file: LedgerFile) -> None:
        self._file = file

    def record(self, time: datetime, balances: Mapping[str, float], note: str = "") -> None:
        text = json.dumps({k: float(v) for k, v in sorted(balances.items())})
        with self._file.write() as conn:
            seen = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM fills").fetchone()[0]
            conn.execute(
                "INSERT INTO balance_snapshots (time, balances, fills_seen, note, recorded_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (to_text(time), text, seen, note, now_text()),
            )

    def latest(self) -> BalanceSnapshot | None:
        rows = self._file.read("SELECT * FROM balance_snapshots ORDER BY id DESC LIMIT 1", ())
        if not rows:
            return None
        row = rows[0]
        return BalanceSnapshot(
            from_text(row["time"]), json.loads(row["balances"]), row["fills_seen"], row["note"]
        )

    def net_fills_since(self, fills_seen: int, arm: str) -> dict[str, float]:
        """Coin units the arm's fills recorded after `fills_seen` added, by market."""
        rows = self._file.read(
            "SELECT market, SUM(CASE side WHEN 'bid' THEN volume ELSE -volume END) FROM fills "
            "WHERE arm = ? AND rowid > ? GROUP BY market",
            (arm, fills_seen),
        )
        return {row[0]: float(row[1]) for row in rows}


# -- highs since entry -------------------------------------------------------------------------
class EntryHighs:
    def __init__(self, file: LedgerFile) -> None:
        self._file = file

    def get(self, arm: str, market: str) -> dict[str, object] | None:
        rows = self._file.read(
            "SELECT high, seen, entered FROM entry_highs WHERE arm = ? AND market = ?",
            (arm, market),
        )
        return dict(rows[0]) if rows else None

    def set(self, arm: str, market: str, state: Mapping[str, object]) -> None:
        high = float(state["high"])  # type: ignore[arg-type]
        with self._file.write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO entry_highs (arm, market, high, seen, entered, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (arm, market, high, state["seen"], state.get("entered"), now_text()),
            )

    def opened(self, arm: str, market: str) -> datetime | None:
        """The hour of the first filled buy since this arm's own fills in `market` were last
        flat (the order's candle hour); None when they are flat. What a loop recovers when its
        row holds no entry hour (written under schema 3, or the buy filled and the process died
        before the next hour was seen)."""
        rows = self._file.read(
            "SELECT f.identifier, f.market, f.side, f.state, f.volume, f.price, f.fee, f.uuid, "
            "o.hour FROM fills f JOIN orders o ON o.arm = f.arm AND o.identifier = f.identifier "
            "WHERE f.arm = ? AND f.market = ? AND f.volume > 0 ORDER BY f.rowid",
            (arm, market),
        )
        position, entered = Position(arm=arm, market=market), None
        for row in rows:
            position = position.after(fill_from_row(row), now_kst())
            if is_dust(position.volume * row["price"]):  # what is left cannot be sold: flat
                entered = None
            elif entered is None:
                entered = from_text(row["hour"])
        return entered
