"""The Parquet candle cache: `CachedSource`, a `CandleSource` in front of another (meant for Upbit)
that keeps each market's hours in a `<MARKET>_minute60.parquet` file (the `ParquetDirSource`
layout) and fetches only the hours it lacks.

The cache is a local folder or a pyarrow.fs URI; writes replace a file whole (an atomic rename on
a local disk, one upload on an object store), so a reader on any node sees the old file or the
new one, never half.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from features.candles import (
    CandleError,
    current_hour_kst,
    drop_forming,
    empty_candles,
    validate_candles,
)
from features.exchange import HOUR
from features.sources import (
    CandleSource,
    as_kst,
    candle_file_name,
    check_count,
    closed_window,
    filesystem_root,
    read_candle_table,
    resolve_now,
)

logger = logging.getLogger(__name__)

# Set on a cache file once it reaches back to the market's first candle on the exchange.
COMPLETE_KEY = b"hybrid_trader.history_from_listing"


def _candle_table(candles: pd.DataFrame, metadata: dict[bytes, bytes]) -> pa.Table:
    table = pa.Table.from_pandas(candles, preserve_index=True)
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})


def _write_atomic(path: Path, candles: pd.DataFrame, metadata: dict[bytes, bytes]) -> None:
    """Write a temp file beside `path`, fsync, rename: readers see old or new, never half."""
    table = _candle_table(candles, metadata)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        pq.write_table(table, temp)
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _put_object(
    filesystem: pafs.FileSystem, path: str, candles: pd.DataFrame, metadata: dict[bytes, bytes]
) -> None:
    """An object store has no rename, but one object written whole replaces the old one for every
    reader at once; so the file is serialised in memory first and uploaded in one stream, and a
    failure while serialising uploads nothing."""
    buffer = pa.BufferOutputStream()
    pq.write_table(_candle_table(candles, metadata), buffer)
    with filesystem.open_output_stream(path) as out:
        out.write(buffer.getvalue())


@dataclass(frozen=True)
class _CacheFile:
    candles: pd.DataFrame
    complete: bool  # reaches back to the market's first candle on the exchange


class CachedSource:
    """A Parquet cache (ParquetDirSource layout) in front of `upstream`, meant for Upbit.

    Each market's file holds one unbroken stretch of the exchange's history, so a missing hour
    inside it is a real exchange gap, never a hole in the cache; requests extend the stretch at
    either end. `start=None` means "from the listing": the first such call back-fills once and
    marks the file. A corrupt cache file is logged and rebuilt from upstream.

    `cache_dir` is a local folder or a pyarrow.fs URI (`s3://bucket/cache?endpoint_override=...`),
    so every node of a cluster can share one cache; credentials come from the environment.
    """

    def __init__(self, upstream: CandleSource, cache_dir: str | Path) -> None:
        self.upstream = upstream
        self.cache_dir = str(cache_dir)
        self._fs, self._root = filesystem_root(self.cache_dir)
        self._local = isinstance(self._fs, pafs.LocalFileSystem)
        try:
            self._fs.create_dir(self._root, recursive=True)
        except OSError as exc:
            raise OSError(f"candle cache {self.cache_dir} cannot be used: {exc}") from exc

    def markets(self) -> list[str]:
        return self.upstream.markets()

    def path(self, market: str) -> str:
        """The market's cache file inside the cache's filesystem (an OS path for a local folder)."""
        return f"{self._root}/{candle_file_name(market)}"

    def history(
        self,
        market: str,
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
        *,
        now: datetime | None = None,
    ) -> pd.DataFrame:
        moment, start, end = resolve_now(now), as_kst(start), as_kst(end)
        cache = self._load(market)
        if cache.candles.empty:
            fetched = [self.upstream.history(market, start, end, now=moment)]
        else:
            fetched = [
                *self._newer(market, cache.candles, end, moment),
                *self._older(market, cache, start),
            ]
        cache = self._store(market, cache, fetched, moment, cache.complete or start is None)
        return closed_window(cache.candles, start, end, moment)

    def latest(self, market: str, count: int, *, now: datetime | None = None) -> pd.DataFrame:
        check_count(count)
        moment = resolve_now(now)
        cache = self._load(market)
        if not cache.candles.empty:
            fetched = self._newer(market, cache.candles, None, moment)
            cache = self._store(market, cache, fetched, moment, cache.complete)
        have = closed_window(cache.candles, None, None, moment)
        if len(have) < count and not cache.complete:
            older = self._older_by_count(market, cache.candles, count - len(have), moment)
            cache = self._store(market, cache, older, moment, cache.complete)
            have = closed_window(cache.candles, None, None, moment)
        return have.tail(count)

    def _newer(
        self, market: str, cached: pd.DataFrame, end: pd.Timestamp | None, moment: pd.Timestamp
    ) -> list[pd.DataFrame]:
        """The hours after the cache, up to `end` or the last closed hour at `moment`."""
        last_closed = current_hour_kst(moment) - HOUR
        until = last_closed if end is None else min(end, last_closed)
        after = cached.index[-1] + HOUR
        if until < after:
            return []
        return [self.upstream.history(market, after, until, now=moment)]

    def _older(
        self, market: str, cache: _CacheFile, start: pd.Timestamp | None
    ) -> list[pd.DataFrame]:
        """The hours before the cache back to `start` (None: to the listing, unless done)."""
        first = cache.candles.index[0]
        if cache.complete or (start is not None and start >= first):
            return []
        return [self.upstream.history(market, start, first - HOUR, now=first)]

    def _older_by_count(
        self, market: str, cached: pd.DataFrame, missing: int, moment: pd.Timestamp
    ) -> list[pd.DataFrame]:
        """`missing` candles before the cache (or before `moment`, bridging to the cache)."""
        if cached.empty:
            return [self.upstream.latest(market, missing, now=moment)]
        first = cached.index[0]
        cursor = min(first, current_hour_kst(moment))
        older = [self.upstream.latest(market, missing, now=cursor)]
        if cursor < first:
            older.append(self.upstream.history(market, cursor, first - HOUR, now=first))
        return older

    def _load(self, market: str) -> _CacheFile:
        path = self.path(market)
        if self._fs.get_file_info(path).type == pafs.FileType.NotFound:
            return _CacheFile(empty_candles(), complete=False)
        try:
            candles, metadata = read_candle_table(self._fs, path)
        except CandleError as exc:
            logger.warning("discarding corrupt candle cache, refetching: %s", exc)
            return _CacheFile(empty_candles(), complete=False)
        return _CacheFile(candles, complete=metadata.get(COMPLETE_KEY) == b"1")

    def _store(
        self,
        market: str,
        cache: _CacheFile,
        fetched: list[pd.DataFrame],
        moment: pd.Timestamp,
        complete: bool,
    ) -> _CacheFile:
        """Merge what was fetched (it wins on overlap), validate, rewrite the file if changed."""
        fresh = [drop_forming(frame, moment) for frame in fetched if not frame.empty]
        if not fresh and complete == cache.complete:
            return cache
        merged = pd.concat([cache.candles, *fresh]) if fresh else cache.candles
        merged = merged.loc[~merged.index.duplicated(keep="last")].sort_index()
        validate_candles(merged)
        if not merged.empty:
            self._write(market, merged, {COMPLETE_KEY: b"1" if complete else b"0"})
        return _CacheFile(merged, complete)

    def _write(self, market: str, candles: pd.DataFrame, metadata: dict[bytes, bytes]) -> None:
        if self._local:
            _write_atomic(Path(self.path(market)), candles, metadata)
        else:
            _put_object(self._fs, self.path(market), candles, metadata)
