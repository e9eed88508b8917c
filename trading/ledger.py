"""The trading loop's durable memory: one SQLite file (WAL, synchronous=FULL) per deployment.

Every public write is one transaction, committed to disk before it returns, so a process killed
between any two calls leaves every earlier call stored and nothing half-written: an order intent
without its fill reads back as a pending order to reconcile, and a fill never exists without the
position change it caused. Writes of a row that is already there are no-ops when the values agree
and a `LedgerError` when they do not, so a restarted loop may safely replay its last step.

Several processes may open the same file (the loop actor writing, a `status` command reading):
WAL lets readers proceed while a write is in progress. Within a process one connection is shared
by all threads under a lock. Times are KST wall times without tzinfo; every row but the outcomes
(market facts, shared by all arms) carries the A/B `arm` it belongs to.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType

import pandas as pd

from features.domain import Decision, Order, Signal, drawdown
from features.exchange import now_kst
from trading.broker import Fill, order_identifier
from trading.ledger_books import BalanceSnapshots, EntryHighs, LoopLease, MarketHalts
from trading.ledger_db import LedgerFile, filters, get_row, insert_once
from trading.ledger_rows import (
    DEFAULT_ARM,
    FILL_STATUS,
    FINAL_STATUSES,
    LEGACY_SUFFIX,
    NEXT_STATUSES,
    OPEN_STATUSES,
    EquitySnapshot,
    LedgerError,
    OrderRecord,
    OrderStatus,
    Position,
    RealisedAccuracy,
    RiskEvent,
    decision_from_row,
    decision_values,
    encode_risk_state,
    equity_from_row,
    fill_from_row,
    fill_values,
    from_text,
    now_text,
    order_from_row,
    order_values,
    position_from_row,
    risk_event_from_row,
    to_text,
)

__all__ = [
    "DEFAULT_ARM",
    "EquitySnapshot",
    "Ledger",
    "LedgerError",
    "OrderRecord",
    "OrderStatus",
    "Position",
    "RealisedAccuracy",
    "RiskEvent",
]

_DECISION_COLUMNS = (
    "signal, p_sell, p_hold, p_buy, ratio, sizing_source, model_version, order_side, "
    "order_krw_amount, order_volume, order_identifier, order_reason, reason"
)


class Ledger:
    """One ledger file; safe to share between threads, and to open from several processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = LedgerFile(self.path)
        # The money-safety books (trading.ledger_books), on the same connection.
        self.lease = LoopLease(self._file)
        self.halts = MarketHalts(self._file)
        self.snapshots = BalanceSnapshots(self._file)
        self.highs = EntryHighs(self._file)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType
    ) -> None:
        self.close()

    # -- decisions ---------------------------------------------------------------------------

    def record_decision(self, decision: Decision, arm: str = DEFAULT_ARM) -> bool:
        """Store what the policy decided for one hour; False when that hour was already stored."""
        values = decision_values(decision)
        key = {"arm": arm, "market": decision.market, "time": to_text(decision.time)}
        with self._file.write() as conn:
            return insert_once(conn, "decisions", key, values, {"created_at": now_text()})

    def record_no_decision(
        self, market: str, hour: datetime, arm: str = DEFAULT_ARM, reason: str = ""
    ) -> bool:
        """Note an hour the loop could not decide (stale data, failed fetch, Serve silent)."""
        if not reason:
            raise LedgerError("a no-decision needs its reason: it is what the operator reads")
        key = {"arm": arm, "market": market, "time": to_text(hour), "reason": reason}
        with self._file.write() as conn:
            return insert_once(conn, "no_decisions", key, {}, {"created_at": now_text()})

    def decision(self, market: str, hour: datetime, arm: str = DEFAULT_ARM) -> Decision | None:
        """The decision stored for this hour, so a restarted loop knows the hour is done."""
        rows = self._file.read(
            f"SELECT market, time, {_DECISION_COLUMNS} FROM decisions "
            "WHERE arm = ? AND market = ? AND time = ?",
            (arm, market, to_text(hour)),
        )
        return decision_from_row(rows[0]) if rows else None

    def decisions_frame(self, arm: str | None = None, market: str | None = None) -> pd.DataFrame:
        """Decisions and no-decisions in time order; `kind` tells them apart."""
        sql = (
            f"SELECT time, market, arm, 'decision' AS kind, {_DECISION_COLUMNS}, created_at "
            "FROM decisions UNION ALL "
            "SELECT time, market, arm, 'no_decision', NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
            "NULL, NULL, NULL, NULL, NULL, reason, created_at FROM no_decisions"
        )
        where, params = filters(arm=arm, market=market)
        frame = self._file.frame(f"SELECT * FROM ({sql}){where} ORDER BY time, market, arm", params)
        frame["signal"] = frame["signal"].astype("Int64")
        return frame

    def newest_hour(self) -> datetime | None:
        """The newest hour any arm's step stored a row for: a decision, a no-decision, an order
        or an equity mark. An hour's trades are stored before its equity mark, so a loop killed
        in between resumes at this hour; resuming at the newest marked one would mark it again
        from an account that already holds the later hour's fills."""
        rows = self._file.read(
            "SELECT MAX(newest) AS newest FROM (SELECT MAX(time) AS newest FROM decisions "
            "UNION ALL SELECT MAX(time) FROM no_decisions UNION ALL SELECT MAX(hour) FROM orders "
            "UNION ALL SELECT MAX(time) FROM equity)",
            (),
        )
        newest = rows[0]["newest"] if rows else None
        return from_text(newest) if newest is not None else None

    def ratios(self, arm: str = DEFAULT_ARM) -> pd.DataFrame:
        """The sizing ratio chosen each hour, to compare how the arms size their bets."""
        return self._file.frame(
            "SELECT time, market, ratio, sizing_source, model_version FROM decisions "
            "WHERE arm = ? ORDER BY time, market",
            (arm,),
        )

    # -- orders and fills --------------------------------------------------------------------

    def record_order_intent(
        self, order: Order, hour: datetime, arm: str = DEFAULT_ARM
    ) -> OrderRecord:
        """Write the intent before the order is sent, so a restart asks instead of resending.

        The identifier must be the order's market, hour and side (`order_identifier`); one an
        earlier ledger wrote (`...|0`) is kept as it is, so its order is still looked up by it.
        """
        expected = order_identifier(order.market, hour, order.side)
        identifier = order.identifier or expected
        if identifier.removesuffix(LEGACY_SUFFIX) != expected:
            raise LedgerError(
                f"order identifier {identifier!r} does not match its market, hour and side "
                f"({expected!r})"
            )
        values = order_values(order, hour)
        now = now_text()
        stamps = {"status": OrderStatus.PENDING.value, "created_at": now, "updated_at": now}
        with self._file.write() as conn:
            insert_once(conn, "orders", {"arm": arm, "identifier": identifier}, values, stamps)
            return order_from_row(_get_order(conn, identifier, arm))

    def mark_order(
        self, identifier: str, arm: str, status: OrderStatus | str, error: str | None = None
    ) -> OrderRecord:
        """Move an order to sent, unknown or rejected; filled and cancelled come with a fill."""
        status = OrderStatus(status)
        if status in (OrderStatus.FILLED, OrderStatus.CANCELLED):
            raise LedgerError(
                f"order {identifier!r}: {status.value!r} carries an executed volume; "
                "record_fill sets it together with the position"
            )
        with self._file.write() as conn:
            _set_status(conn, _get_order(conn, identifier, arm), status, error)
            return order_from_row(_get_order(conn, identifier, arm))

    def order(self, identifier: str, arm: str = DEFAULT_ARM) -> OrderRecord | None:
        rows = self._file.read(
            "SELECT * FROM orders WHERE arm = ? AND identifier = ?", (arm, identifier)
        )
        return order_from_row(rows[0]) if rows else None

    def orders(self, arm: str | None = None, market: str | None = None) -> list[OrderRecord]:
        where, params = filters(arm=arm, market=market)
        rows = self._file.read(f"SELECT * FROM orders{where} ORDER BY created_at, rowid", params)
        return [order_from_row(row) for row in rows]

    def pending_orders(self, arm: str | None = None) -> list[OrderRecord]:
        """Intents whose outcome is not final: what a restarted loop must look up at the broker."""
        where, params = filters(arm=arm)
        marks = ", ".join("?" for _ in OPEN_STATUSES)
        where = f"{where} AND" if where else " WHERE"
        rows = self._file.read(
            f"SELECT * FROM orders{where} status IN ({marks}) ORDER BY created_at, rowid",
            (*params, *OPEN_STATUSES),
        )
        return [order_from_row(row) for row in rows]

    def record_fill(
        self, fill: Fill, arm: str = DEFAULT_ARM, filled_at: datetime | None = None
    ) -> bool:
        """Store an order's outcome, end the order and move the position, all in one commit."""
        status = FILL_STATUS.get(fill.state)
        if status is None:
            raise LedgerError(
                f"fill {fill.identifier!r} is {fill.state.value!r}, not an outcome yet: "
                "mark the order 'sent' and record the fill once it is final"
            )
        stamps = {"filled_at": to_text(filled_at or now_kst())}
        with self._file.write() as conn:
            order = _get_order(conn, fill.identifier, arm)
            if (order["market"], order["side"]) != (fill.market, fill.side.value):
                raise LedgerError(
                    f"fill {fill.identifier!r} does not match its order's market/side"
                )
            key = {"arm": arm, "identifier": fill.identifier}
            if not insert_once(conn, "fills", key, fill_values(fill), stamps):
                return False
            _set_status(conn, order, status, None)
            if fill.volume > 0:
                _store_position(
                    conn, self._position_in(conn, fill.market, arm).after(fill, now_kst())
                )
            return True

    def fills(self, arm: str | None = None, market: str | None = None) -> list[Fill]:
        """Fills in the order they were recorded, enough to rebuild a paper account."""
        where, params = filters(arm=arm, market=market)
        rows = self._file.read(f"SELECT * FROM fills{where} ORDER BY rowid", params)
        return [fill_from_row(row) for row in rows]

    def position(self, market: str, arm: str = DEFAULT_ARM) -> Position:
        """What the arm holds in the market by its own fills; flat when it never traded."""
        rows = self._file.read(
            "SELECT * FROM positions WHERE arm = ? AND market = ?", (arm, market)
        )
        return position_from_row(rows[0]) if rows else Position(arm=arm, market=market)

    def positions(self, arm: str = DEFAULT_ARM) -> list[Position]:
        rows = self._file.read("SELECT * FROM positions WHERE arm = ? ORDER BY market", (arm,))
        return [position_from_row(row) for row in rows]

    # -- equity, outcomes, risk --------------------------------------------------------------

    def record_equity(
        self, time: datetime, cash: float, positions_value: float, arm: str = DEFAULT_ARM
    ) -> EquitySnapshot:
        """Mark the account at an hour; the peak and drawdown continue from the stored curve."""
        for name, value in (("cash", cash), ("positions_value", positions_value)):
            if not math.isfinite(value) or value < 0:
                raise LedgerError(f"equity {name} must be finite and >= 0, got {value}")
        key = {"arm": arm, "time": to_text(time)}
        values = {"cash": float(cash), "positions_value": float(positions_value)}
        with self._file.write() as conn:
            last = conn.execute(
                "SELECT time, peak_equity FROM equity WHERE arm = ? ORDER BY time DESC LIMIT 1",
                (arm,),
            ).fetchone()
            if last is not None and last["time"] > key["time"] and not get_row(conn, "equity", key):
                raise LedgerError(
                    f"equity at {key['time']} is older than the stored {last['time']} for arm "
                    f"{arm!r}: the curve is written in time order"
                )
            equity = values["cash"] + values["positions_value"]
            peak = max(equity, last["peak_equity"] if last else equity)
            derived = {
                "equity": equity,
                "peak_equity": peak,
                "drawdown": drawdown(equity, peak),
                "created_at": now_text(),
            }
            insert_once(conn, "equity", key, values, derived)
            return equity_from_row(get_row(conn, "equity", key))

    def equity_curve(self, arm: str = DEFAULT_ARM) -> pd.DataFrame:
        frame = self._file.frame(
            "SELECT time, cash, positions_value, equity, peak_equity, drawdown FROM equity "
            "WHERE arm = ? ORDER BY time",
            (arm,),
        )
        return frame.set_index("time")

    def record_outcome(
        self, market: str, time: datetime, horizon: int, label: Signal, realised_return: float
    ) -> bool:
        """Store the class that came true `horizon` hours after the decision hour `time`."""
        if not math.isfinite(realised_return):
            raise LedgerError(f"realised_return must be finite, got {realised_return}")
        key = {"market": market, "time": to_text(time), "horizon": int(horizon)}
        values = {"label": int(Signal(label)), "realised_return": float(realised_return)}
        with self._file.write() as conn:
            return insert_once(conn, "outcomes", key, values, {"created_at": now_text()})

    def realised_accuracy(
        self, market: str, window: int, arm: str = DEFAULT_ARM, horizon: int | None = None
    ) -> RealisedAccuracy:
        """Score the last `window` model decisions whose outcome is known (horizon: the newest
        one's); a protective sell made without a model (model_version '') is no prediction."""
        if horizon is None:
            newest = self._file.read(
                "SELECT horizon FROM outcomes WHERE market = ? ORDER BY time DESC LIMIT 1",
                (market,),
            )
            horizon = newest[0][0] if newest else None
        rows = self._file.read(
            "SELECT d.signal, o.label FROM decisions d JOIN outcomes o "
            "ON o.market = d.market AND o.time = d.time AND o.horizon = ? "
            "WHERE d.market = ? AND d.arm = ? AND d.model_version <> '' "
            "ORDER BY d.time DESC LIMIT ?",
            (horizon, market, arm, window),
        )
        return RealisedAccuracy.score(
            market, arm, horizon, [(Signal(r[0]), Signal(r[1])) for r in rows]
        )

    def set_risk_state(self, state: Mapping[str, object], arm: str = DEFAULT_ARM) -> RiskEvent:
        """Append a kill-switch event; earlier events stay, so the history can be audited."""
        text = encode_risk_state(state)
        with self._file.write() as conn:
            cursor = conn.execute(
                "INSERT INTO risk_events (arm, state, recorded_at) VALUES (?, ?, ?)",
                (arm, text, now_text()),
            )
            return risk_event_from_row(get_row(conn, "risk_events", {"id": cursor.lastrowid}))

    def risk_state(self, arm: str = DEFAULT_ARM) -> dict[str, object] | None:
        """The newest risk state of the arm (datetimes come back as ISO text), None if never set."""
        rows = self._file.read(
            "SELECT state FROM risk_events WHERE arm = ? ORDER BY id DESC LIMIT 1", (arm,)
        )
        return json.loads(rows[0][0]) if rows else None

    def risk_events(self, arm: str | None = None) -> list[RiskEvent]:
        where, params = filters(arm=arm)
        return [
            risk_event_from_row(r)
            for r in self._file.read(f"SELECT * FROM risk_events{where} ORDER BY id", params)
        ]

    def integrity_check(self) -> str:
        """SQLite's own verdict on the file: 'ok', or the problems it found."""
        return "\n".join(row[0] for row in self._file.read("PRAGMA integrity_check", ()))

    @staticmethod
    def _position_in(conn: sqlite3.Connection, market: str, arm: str) -> Position:
        row = get_row(conn, "positions", {"arm": arm, "market": market})
        return position_from_row(row) if row else Position(arm=arm, market=market)


def _get_order(conn: sqlite3.Connection, identifier: str, arm: str) -> sqlite3.Row:
    row = get_row(conn, "orders", {"arm": arm, "identifier": identifier})
    if row is None:
        raise LedgerError(
            f"no order intent {identifier!r} for arm {arm!r}: record it before sending"
        )
    return row


def _set_status(
    conn: sqlite3.Connection, order: sqlite3.Row, status: OrderStatus, error: str | None
) -> None:
    current = OrderStatus(order["status"])
    if current in FINAL_STATUSES and status not in FINAL_STATUSES:
        return  # a stale report (a replayed 'sent'): the outcome already known stands
    if status is not current and status not in NEXT_STATUSES.get(current, ()):
        raise LedgerError(
            f"order {order['identifier']!r} is {current.value!r} and cannot become {status.value!r}"
        )
    conn.execute(
        "UPDATE orders SET status = ?, error = COALESCE(?, error), updated_at = ? "
        "WHERE arm = ? AND identifier = ?",
        (status.value, error, now_text(), order["arm"], order["identifier"]),
    )


def _store_position(conn: sqlite3.Connection, position: Position) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO positions "
        "(arm, market, volume, avg_entry_price, realised_pnl, fees, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            position.arm, position.market, position.volume, position.avg_entry_price,
            position.realised_pnl, position.fees, to_text(position.updated_at or now_kst()),
        ),
    )  # fmt: skip
