"""What the ledger keeps on disk: its tables, their migrations and the checks made on open.

The whole on-disk contract reads in one place, and a schema change is one more entry in
`MIGRATIONS`, applied in its own transaction when a file is opened. Opening never writes to a file
before it has been recognised as a ledger this code can read, so a corrupt file or somebody else's
database is refused untouched.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from trading.ledger_rows import LedgerError, now_text

BUSY_TIMEOUT_MS = 10_000
_SQLITE_HEADER = b"SQLite format 3\x00"


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

# Schema 3 (money safety): the loop's lease on the file (one loop per ledger, across clusters),
# market halts a person acknowledges, the exchange balances the loop last saw (what a restart
# reconciles against), and each position's high since entry (the trailing stop's memory).
_V3 = (
    """CREATE TABLE loop_lease (
        id INTEGER PRIMARY KEY CHECK (id = 1), holder TEXT NOT NULL, mode TEXT NOT NULL,
        acquired_at TEXT NOT NULL, heartbeat_at TEXT NOT NULL, expires_at TEXT NOT NULL)""",
    """CREATE TABLE halts (
        id INTEGER PRIMARY KEY AUTOINCREMENT, market TEXT NOT NULL,
        reason TEXT NOT NULL CHECK (reason <> ''), raised_at TEXT NOT NULL,
        acked_by TEXT, acked_at TEXT)""",
    "CREATE INDEX halts_open ON halts (market) WHERE acked_at IS NULL",
    """CREATE TABLE balance_snapshots (
        id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, balances TEXT NOT NULL,
        fills_seen INTEGER NOT NULL, note TEXT NOT NULL, recorded_at TEXT NOT NULL)""",
    """CREATE TABLE entry_highs (
        arm TEXT NOT NULL, market TEXT NOT NULL, high REAL NOT NULL CHECK (high >= 0),
        seen TEXT, updated_at TEXT NOT NULL, PRIMARY KEY (arm, market))""",
)

# Schema 4: each position's entry hour beside its high since entry (the triple-barrier label's
# time limit counts from it). Rows written under schema 3 keep their high and read `entered` NULL:
# the loop then recovers it from the fills (`EntryHighs.opened`).
_V4 = ("ALTER TABLE entry_highs ADD COLUMN entered TEXT",)

# version -> step from version-1; each runs in one transaction together with its version row.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _run_all(_V1),
    2: _run_all(_V2),
    3: _run_all(_V3),
    4: _run_all(_V4),
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
                    (version, now_text()),
                )
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
