"""What the ledger keeps on disk: its tables, row types, migrations and the checks made on open.

Kept apart from `trading.ledger` (the API) so the whole on-disk contract reads in one place and a
schema change is one more entry in `MIGRATIONS`, applied in its own transaction when a file is
opened. Opening never writes to a file before it has been recognised as a ledger this code can
read, so a corrupt file or somebody else's database is refused untouched.
"""

from __future__ import annotations

import enum
import json
import math
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from features.domain import Decision, Order, Side, Signal
from trading.broker import Fill, OrderState

KST = timezone(timedelta(hours=9), "KST")  # Korea keeps no daylight saving time
DEFAULT_ARM = "main"
LEGACY_SUFFIX = "|0"  # identifiers of schema 1 ended in a retry counter that was always 0
BUSY_TIMEOUT_MS = 10_000
_SQLITE_HEADER = b"SQLite format 3\x00"
_DUST = 1e-12  # coin units below which a position is flat (float residue of selling it all)
_Row = TypeVar("_Row")


class LedgerError(RuntimeError):
    """The ledger cannot do what was asked; the message names the file or the row, and why."""


class OrderStatus(enum.StrEnum):
    PENDING = "pending"  # intent written; the order may or may not have left
    SENT = "sent"  # the exchange accepted it; its outcome is not known yet
    UNKNOWN = "unknown"  # the send failed in a way that leaves the exchange's view unknown
    FILLED = "filled"
    CANCELLED = "cancelled"  # possibly partly filled (Upbit ends market bids this way)
    REJECTED = "rejected"


FINAL_STATUSES = frozenset({OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED})
OPEN_STATUSES = tuple(s.value for s in OrderStatus if s not in FINAL_STATUSES)
_TO_FINAL = frozenset({OrderStatus.UNKNOWN, *FINAL_STATUSES})
# A final status never changes: a later non-final report of it is stale and ignored, and a
# different outcome is a contradiction to surface, not to overwrite.
NEXT_STATUSES: Mapping[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset({OrderStatus.SENT, *_TO_FINAL}),
    OrderStatus.SENT: _TO_FINAL,
    OrderStatus.UNKNOWN: frozenset({OrderStatus.SENT, *FINAL_STATUSES}),
}
# Only a fill carries the executed volume, so only `record_fill` may end an order filled or
# cancelled; a `wait` fill is not an outcome yet and is refused.
FILL_STATUS: Mapping[OrderState, OrderStatus] = {
    OrderState.DONE: OrderStatus.FILLED,
    OrderState.CANCEL: OrderStatus.CANCELLED,
    OrderState.REJECTED: OrderStatus.REJECTED,
}


@dataclass(frozen=True)
class OrderRecord:
    """An order intent and what is known of its fate."""

    identifier: str
    arm: str
    market: str
    hour: datetime
    side: Side
    krw_amount: float
    volume: float
    reason: str
    status: OrderStatus
    error: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_order(self) -> Order:
        return Order(
            self.market, self.side, self.krw_amount, self.volume, self.identifier, self.reason
        )


@dataclass(frozen=True)
class Position:
    """The coins one arm holds in one market as its own fills say (flat when it never traded)."""

    arm: str
    market: str
    volume: float = 0.0
    avg_entry_price: float = 0.0  # KRW per coin, fees excluded (as Upbit's avg_buy_price)
    realised_pnl: float = 0.0  # KRW from sells against the entry price, fees excluded
    fees: float = 0.0  # KRW paid on every fill of this market
    updated_at: datetime | None = None

    def after(self, fill: Fill, at: datetime) -> Position:
        """Buys average the entry price; sells book against it; selling past the holding (coins
        bought before the ledger existed) goes flat instead of negative."""
        volume, entry, pnl = self.volume, self.avg_entry_price, self.realised_pnl
        if fill.side is Side.BID:
            entry = (volume * entry + fill.volume * fill.price) / (volume + fill.volume)
            volume += fill.volume
        else:
            pnl += min(fill.volume, volume) * (fill.price - entry)
            volume = max(volume - fill.volume, 0.0)
        if volume < _DUST:
            volume, entry = 0.0, 0.0
        return replace(
            self, volume=volume, avg_entry_price=entry, realised_pnl=pnl,
            fees=self.fees + fill.fee, updated_at=at,
        )  # fmt: skip


@dataclass(frozen=True)
class EquitySnapshot:
    arm: str
    time: datetime
    cash: float
    positions_value: float
    equity: float
    peak_equity: float
    drawdown: float  # fraction below peak_equity, in [0, 1]


@dataclass(frozen=True)
class RealisedAccuracy:
    """How the recorded signals fared against the labels that came true; NaN when n is 0."""

    market: str
    arm: str
    horizon: int | None
    n: int
    accuracy: float
    balanced_accuracy: float  # mean recall over the classes that occurred
    recall: Mapping[Signal, float]

    @classmethod
    def score(
        cls, market: str, arm: str, horizon: int | None, pairs: list[tuple[Signal, Signal]]
    ) -> RealisedAccuracy:
        """Score (predicted, true) pairs; balanced accuracy as scikit-learn defines it."""
        recall: dict[Signal, float] = {}
        for label in sorted({truth for _, truth in pairs}):
            of_label = [predicted for predicted, truth in pairs if truth is label]
            recall[label] = sum(p is label for p in of_label) / len(of_label)
        n = len(pairs)
        accuracy = sum(p is t for p, t in pairs) / n if n else math.nan
        balanced = sum(recall.values()) / len(recall) if recall else math.nan
        return cls(market, arm, horizon, n, accuracy, balanced, recall)


@dataclass(frozen=True)
class RiskEvent:
    id: int
    arm: str
    state: Mapping[str, object]
    recorded_at: datetime


def to_text(moment: datetime) -> str:
    """KST wall time as ISO text; an aware time is converted first, so no offset is stored."""
    if not isinstance(moment, datetime):
        raise TypeError(f"expected a datetime, got {type(moment).__name__}: {moment!r}")
    if moment.tzinfo is not None:
        moment = moment.astimezone(KST).replace(tzinfo=None)
    return moment.isoformat()


def from_text(text: str) -> datetime:
    return datetime.fromisoformat(text)


def now_kst() -> datetime:
    return datetime.now(KST).replace(tzinfo=None)


_V1 = (
    """CREATE TABLE decisions (
        arm TEXT NOT NULL, market TEXT NOT NULL, time TEXT NOT NULL,
        signal INTEGER NOT NULL CHECK (signal IN (0, 1, 2)),
        p_sell REAL NOT NULL, p_hold REAL NOT NULL, p_buy REAL NOT NULL,
        ratio REAL NOT NULL CHECK (ratio BETWEEN 0 AND 1),
        sizing_source TEXT NOT NULL, model_version TEXT NOT NULL,
        order_side TEXT CHECK (order_side IN ('bid', 'ask')),
        order_krw_amount REAL, order_volume REAL, order_identifier TEXT, order_reason TEXT,
        reason TEXT NOT NULL, created_at TEXT NOT NULL,
        PRIMARY KEY (arm, market, time))""",
    """CREATE TABLE no_decisions (
        id INTEGER PRIMARY KEY, arm TEXT NOT NULL, market TEXT NOT NULL, time TEXT NOT NULL,
        reason TEXT NOT NULL CHECK (reason <> ''), created_at TEXT NOT NULL,
        UNIQUE (arm, market, time, reason))""",
    """CREATE TABLE orders (
        arm TEXT NOT NULL, identifier TEXT NOT NULL, market TEXT NOT NULL, hour TEXT NOT NULL,
        side TEXT NOT NULL CHECK (side IN ('bid', 'ask')),
        attempt INTEGER NOT NULL CHECK (attempt >= 0),
        krw_amount REAL NOT NULL, volume REAL NOT NULL, reason TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN
            ('pending', 'sent', 'unknown', 'filled', 'cancelled', 'rejected')),
        error TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (arm, identifier))""",
    "CREATE INDEX orders_open ON orders (status) WHERE status IN ('pending', 'sent', 'unknown')",
    """CREATE TABLE fills (
        arm TEXT NOT NULL, identifier TEXT NOT NULL, market TEXT NOT NULL,
        side TEXT NOT NULL CHECK (side IN ('bid', 'ask')),
        state TEXT NOT NULL CHECK (state IN ('done', 'cancel', 'rejected')),
        volume REAL NOT NULL CHECK (volume >= 0), price REAL NOT NULL CHECK (price >= 0),
        fee REAL NOT NULL CHECK (fee >= 0), uuid TEXT NOT NULL, filled_at TEXT NOT NULL,
        PRIMARY KEY (arm, identifier),
        FOREIGN KEY (arm, identifier) REFERENCES orders (arm, identifier))""",
    """CREATE TABLE positions (
        arm TEXT NOT NULL, market TEXT NOT NULL,
        volume REAL NOT NULL CHECK (volume >= 0), avg_entry_price REAL NOT NULL,
        realised_pnl REAL NOT NULL, fees REAL NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (arm, market))""",
    """CREATE TABLE equity (
        arm TEXT NOT NULL, time TEXT NOT NULL, cash REAL NOT NULL, positions_value REAL NOT NULL,
        equity REAL NOT NULL, peak_equity REAL NOT NULL,
        drawdown REAL NOT NULL CHECK (drawdown BETWEEN 0 AND 1), created_at TEXT NOT NULL,
        PRIMARY KEY (arm, time))""",
    """CREATE TABLE outcomes (
        market TEXT NOT NULL, time TEXT NOT NULL, horizon INTEGER NOT NULL CHECK (horizon > 0),
        label INTEGER NOT NULL CHECK (label IN (0, 1, 2)), realised_return REAL NOT NULL,
        created_at TEXT NOT NULL, PRIMARY KEY (market, time, horizon))""",
    """CREATE TABLE risk_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, arm TEXT NOT NULL, state TEXT NOT NULL,
        recorded_at TEXT NOT NULL)""",
)


def _run_all(statements: tuple[str, ...]) -> Callable[[sqlite3.Connection], None]:
    def migrate(conn: sqlite3.Connection) -> None:
        for statement in statements:
            conn.execute(statement)

    return migrate


# Schema 2: identifiers are `market|hour|side`, so the always-0 retry counter goes. Rows written
# under schema 1 keep their identifiers (`...|0`), and are read and looked up by them as before.
_V2 = ("ALTER TABLE orders DROP COLUMN attempt",)

# version -> step from version-1; each runs in one transaction together with its version row.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _run_all(_V1),
    2: _run_all(_V2),
}
_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
)


def open_ledger(path: Path) -> sqlite3.Connection:
    """Connect to `path`, refuse what is not a ledger this code can read, then migrate it."""
    if path.exists() and path.stat().st_size > 0:
        _check_existing(path)
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise LedgerError(f"{path}: SQLite refused WAL mode (a network file system?)")
        conn.execute("PRAGMA synchronous = FULL")  # a commit is on disk before it returns
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise LedgerError(f"{path}: cannot be used as a ledger: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _check_existing(path: Path) -> None:
    """Vet a file through a read-only connection, which can neither write to it nor checkpoint
    a leftover WAL into it, so whatever is refused here is left exactly as it was."""
    with path.open("rb") as handle:
        header = handle.read(len(_SQLITE_HEADER))
    if header != _SQLITE_HEADER:
        raise LedgerError(f"{path}: not a SQLite database (header {header!r}); left as is")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _check_version(path, stored_version(conn, path))
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]  # O(size), ~0.1 s/20 MB
        if problems != ["ok"]:
            raise LedgerError(f"{path}: damaged ({'; '.join(problems[:3])}); left as is")
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"{path}: damaged or not a ledger ({exc}); left as is") from exc
    finally:
        conn.close()


def stored_version(conn: sqlite3.Connection, path: Path) -> int:
    """The file's schema version, 0 for an empty database; reads only."""
    tables = {
        row[0]
        for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if not row[0].startswith("sqlite_")
    }
    if "schema_migrations" in tables:
        return conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
    if tables:
        raise LedgerError(
            f"{path}: a SQLite database but not a ledger (tables {sorted(tables)}); left as is"
        )
    return 0


def _check_version(path: Path, version: int) -> None:
    newest = max(MIGRATIONS)
    if version > newest:
        raise LedgerError(
            f"{path}: schema version {version} is newer than this code knows ({newest}); "
            "upgrade the code instead of opening it with an old one"
        )


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    known = stored_version(conn, path)  # an up-to-date file is opened without taking the lock
    for version in sorted(v for v in MIGRATIONS if v > known):
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_VERSION_TABLE)
            # Re-read under the write lock: another process may have migrated meanwhile.
            current = stored_version(conn, path)
            _check_version(path, current)
            if version > current:
                MIGRATIONS[version](conn)
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, to_text(now_kst())),
                )
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def _from_row(cls: type[_Row], row: sqlite3.Row, **parse: Callable[[Any], object]) -> _Row:
    """Build a row type from the columns of the same names, parsing the ones that need it."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    return cls(**{n: parse[n](row[n]) if n in parse else row[n] for n in names})


def order_from_row(row: sqlite3.Row) -> OrderRecord:
    return _from_row(
        OrderRecord, row, hour=from_text, side=Side, status=OrderStatus,
        created_at=from_text, updated_at=from_text,
    )  # fmt: skip


def position_from_row(row: sqlite3.Row) -> Position:
    return _from_row(Position, row, updated_at=from_text)


def equity_from_row(row: sqlite3.Row) -> EquitySnapshot:
    return _from_row(EquitySnapshot, row, time=from_text)


def risk_event_from_row(row: sqlite3.Row) -> RiskEvent:
    return _from_row(RiskEvent, row, state=json.loads, recorded_at=from_text)


def fill_from_row(row: sqlite3.Row) -> Fill:
    return _from_row(Fill, row, side=Side, state=OrderState)


def decision_values(decision: Decision) -> dict[str, object]:
    """The decisions row of `decision`, key columns and timestamps excluded."""
    order = decision.order
    return {
        "signal": int(decision.signal),
        "p_sell": float(decision.probabilities[0]),
        "p_hold": float(decision.probabilities[1]),
        "p_buy": float(decision.probabilities[2]),
        "ratio": float(decision.ratio),
        "sizing_source": decision.sizing_source,
        "model_version": decision.model_version,
        "order_side": order.side.value if order else None,
        "order_krw_amount": float(order.krw_amount) if order else None,
        "order_volume": float(order.volume) if order else None,
        "order_identifier": order.identifier if order else None,
        "order_reason": order.reason if order else None,
        "reason": decision.reason,
    }


def order_values(order: Order, hour: datetime) -> dict[str, object]:
    """The orders row of an intent, key columns, status and timestamps excluded."""
    return {
        "market": order.market,
        "hour": to_text(hour),
        "side": order.side.value,
        "krw_amount": float(order.krw_amount),
        "volume": float(order.volume),
        "reason": order.reason,
    }


def fill_values(fill: Fill) -> dict[str, object]:
    """The fills row of `fill`, key columns and the recording time excluded."""
    return {
        "market": fill.market,
        "side": fill.side.value,
        "state": fill.state.value,
        "volume": float(fill.volume),
        "price": float(fill.price),
        "fee": float(fill.fee),
        "uuid": fill.uuid,
    }


def decision_from_row(row: sqlite3.Row) -> Decision:
    order = None
    if row["order_side"] is not None:
        order = Order(
            row["market"], Side(row["order_side"]), row["order_krw_amount"], row["order_volume"],
            row["order_identifier"], row["order_reason"],
        )  # fmt: skip
    return Decision(
        market=row["market"],
        time=from_text(row["time"]),
        signal=Signal(row["signal"]),
        ratio=row["ratio"],
        sizing_source=row["sizing_source"],
        model_version=row["model_version"],
        order=order,
        reason=row["reason"],
        probabilities=(row["p_sell"], row["p_hold"], row["p_buy"]),
    )


def encode_risk_state(state: Mapping[str, object]) -> str:
    """JSON text of a risk state; datetimes become ISO text, anything else unknown is refused."""

    def default(value: object) -> object:
        if isinstance(value, datetime | date):
            return value.isoformat()
        raise TypeError(f"{type(value).__name__} is not JSON-serialisable: {value!r}")

    try:
        return json.dumps(dict(state), sort_keys=True, default=default)
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"risk state must be JSON-serialisable: {exc}") from exc
