"""One open ledger file in a process, and the few statements every ledger write is made of.

`LedgerFile` shares one connection between the threads of a process under a lock; each write is
one `BEGIN IMMEDIATE` transaction that holds the write lock from its first read, so a replayed
write is checked and stored atomically. `insert_once` is the ledger's idempotence rule: writing a
row that is already there is a no-op when the values agree and a `LedgerError` when they do not.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from trading.ledger_rows import LedgerError
from trading.ledger_schema import open_ledger


class LedgerFile:
    """The connection to one ledger file; every SQLite error comes back naming the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = open_ledger(path)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(f"{self.path}: the ledger is closed")
        return self._conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One transaction, holding the write lock from its first read so replays are atomic."""
        with self._lock:
            conn = self.connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise LedgerError(f"{self.path}: {exc}") from exc
                raise

    def read(self, sql: str, params: tuple[object, ...]) -> list[sqlite3.Row]:
        return self._query(sql, params)[0]

    def frame(self, sql: str, params: tuple[object, ...]) -> pd.DataFrame:
        """The query's rows as a frame; `time` and `created_at` columns parsed to timestamps."""
        rows, columns = self._query(sql, params)
        frame = pd.DataFrame([tuple(row) for row in rows], columns=columns)
        for column in ("time", "created_at"):
            if column in frame:
                frame[column] = pd.to_datetime(frame[column], format="ISO8601")
        return frame

    def _query(self, sql: str, params: tuple[object, ...]) -> tuple[list[sqlite3.Row], list[str]]:
        with self._lock:
            try:
                cursor = self.connection().execute(sql, params)
                return cursor.fetchall(), [column[0] for column in cursor.description]
            except sqlite3.Error as exc:
                raise LedgerError(f"{self.path}: {exc}") from exc


def filters(**equal: str | None) -> tuple[str, tuple[object, ...]]:
    """A WHERE clause for the given column = value pairs, skipping the None ones."""
    given = {column: value for column, value in equal.items() if value is not None}
    if not given:
        return "", ()
    return " WHERE " + " AND ".join(f"{c} = ?" for c in given), tuple(given.values())


def get_row(conn: sqlite3.Connection, table: str, key: Mapping[str, object]) -> sqlite3.Row | None:
    where = " AND ".join(f"{column} = ?" for column in key)
    return conn.execute(f"SELECT * FROM {table} WHERE {where}", tuple(key.values())).fetchone()


def insert_once(
    conn: sqlite3.Connection,
    table: str,
    key: Mapping[str, object],
    values: Mapping[str, object],
    extra: Mapping[str, object],
) -> bool:
    """Insert a row, or check a stored one: same `values` is a replay (False), else an error.

    `extra` (timestamps, a first status) is written on insert and not compared on replay.
    """
    stored = get_row(conn, table, key)
    if stored is not None:
        differing = [
            f"{c}: stored {stored[c]!r}, new {v!r}" for c, v in values.items() if stored[c] != v
        ]
        if differing:
            raise LedgerError(
                f"{table} {dict(key)} already recorded differently ({'; '.join(differing)})"
            )
        return False
    row = {**key, **values, **extra}
    marks = ", ".join("?" for _ in row)
    conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})", tuple(row.values()))
    return True
