"""Where candles come from: one `CandleSource` protocol and its adapters.

Every source returns closed candles only, in the contract of `features.candles` (validated and
normalised), so training, serving and backtests cannot tell which adapter fed them. `now` is the
caller's clock: the candle still forming at `now` is never returned, and a past `now` lets a
backtest ask "what did the exchange know then".

- `ParquetDirSource`: a folder (or pyarrow.fs URI) of `<MARKET>_minute60.parquet` files.
- `UpbitSource`: Upbit's REST API through the real pyupbit client and `UpbitHttp`.
- `CachedSource`: a Parquet cache (a folder or pyarrow.fs URI) in front of any source, fetching
  only the hours it lacks.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pyupbit
from pyarrow import fs as pafs

from features.candles import (
    CandleError,
    current_hour_kst,
    drop_forming,
    empty_candles,
    normalize_candles,
    to_kst,
    validate_candles,
)
from features.exchange import HOUR, KST, UnknownMarketError, now_kst
from features.upbit_http import UPBIT_API, RetryPolicy, UpbitHttp, UpbitNoData

logger = logging.getLogger(__name__)

FILE_SUFFIX = "_minute60.parquet"
# Set on a cache file once it reaches back to the market's first candle on the exchange.
COMPLETE_KEY = b"hybrid_trader.history_from_listing"
UPBIT_CHUNK = 2000  # candles per pyupbit call (10 pages) when back-filling to the listing date


class CandleSource(Protocol):
    """Closed hourly candles per market; `now` (KST, default: the real clock) bounds them."""

    def markets(self) -> list[str]: ...

    def history(
        self,
        market: str,
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
        *,
        now: datetime | None = None,
    ) -> pd.DataFrame:
        """Candles with open time in [start, end] (None: unbounded) that closed before `now`."""
        ...

    def latest(self, market: str, count: int, *, now: datetime | None = None) -> pd.DataFrame:
        """The newest `count` candles closed before `now` (fewer only if history is shorter)."""
        ...


def candle_file_name(market: str) -> str:
    return f"{market}{FILE_SUFFIX}"


def as_kst(moment: datetime | pd.Timestamp | None) -> pd.Timestamp | None:
    return None if moment is None else to_kst(moment)


def _now(now: datetime | None) -> pd.Timestamp:
    return to_kst(now if now is not None else now_kst())


def closed_window(
    candles: pd.DataFrame,
    start: pd.Timestamp | None,
    end: pd.Timestamp | None,
    now: pd.Timestamp,
) -> pd.DataFrame:
    """Rows with open time in [start, end] whose hour had closed at `now`."""
    out = drop_forming(candles, now)
    if start is not None:
        out = out.loc[out.index >= start]
    if end is not None:
        out = out.loc[out.index <= end]
    return out


def _check_count(count: int) -> None:
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")


def _read_table(filesystem: pafs.FileSystem, path: str) -> tuple[pd.DataFrame, dict[bytes, bytes]]:
    """Read and check one candle file; any problem becomes a CandleError naming the file."""
    try:
        table = pq.read_table(path, filesystem=filesystem)
        frame = table.to_pandas()
        if "time" in frame.columns:  # written without pandas metadata
            frame = frame.set_index("time")
        validate_candles(frame)
        return normalize_candles(frame), dict(table.schema.metadata or {})
    except (pa.ArrowException, OSError, ValueError, TypeError, KeyError) as exc:
        raise CandleError(f"{path}: {exc}") from exc


def read_candle_file(filesystem: pafs.FileSystem, path: str) -> pd.DataFrame:
    return _read_table(filesystem, path)[0]


def _filesystem(directory: str) -> tuple[pafs.FileSystem, str]:
    if "://" in directory:
        return pafs.FileSystem.from_uri(directory)
    return pafs.LocalFileSystem(), str(Path(directory).resolve())


class ParquetDirSource:
    """Candles stored as `<MARKET>_minute60.parquet` in a local folder or an object-store URI."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = str(directory)
        self._fs, self._root = _filesystem(self.directory)

    def markets(self) -> list[str]:
        infos = self._fs.get_file_info(pafs.FileSelector(self._root))
        names = [info.base_name for info in infos if info.base_name.endswith(FILE_SUFFIX)]
        return sorted(name[: -len(FILE_SUFFIX)] for name in names)

    def history(
        self,
        market: str,
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
        *,
        now: datetime | None = None,
    ) -> pd.DataFrame:
        return closed_window(self._read(market), as_kst(start), as_kst(end), _now(now))

    def latest(self, market: str, count: int, *, now: datetime | None = None) -> pd.DataFrame:
        _check_count(count)
        return closed_window(self._read(market), None, None, _now(now)).tail(count)

    def _read(self, market: str) -> pd.DataFrame:
        path = f"{self._root}/{candle_file_name(market)}"
        if self._fs.get_file_info(path).type != pafs.FileType.File:
            raise UnknownMarketError(market, self.markets())
        return read_candle_file(self._fs, path)


class UpbitSource:
    """Upbit's candles through the real pyupbit client, routed by `UpbitHttp`.

    pyupbit pages by itself for count > 200, moving its `to` cursor (naive UTC, exclusive) to the
    oldest candle of each page; this class only chooses the count and the first cursor. `now` is
    sent as the first cursor, so the forming hour comes back and is dropped here.
    """

    def __init__(
        self,
        base_url: str = UPBIT_API,
        timeout: float = 10.0,
        *,
        retry: RetryPolicy | None = None,
        http: UpbitHttp | None = None,
    ) -> None:
        self.http = http if http is not None else UpbitHttp(base_url, timeout=timeout, retry=retry)
        self._known: list[str] | None = None

    def close(self) -> None:
        self.http.close()

    def markets(self) -> list[str]:
        self._known = sorted(self.http.call(pyupbit.get_tickers, fiat="KRW"))
        return list(self._known)

    def history(
        self,
        market: str,
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
        *,
        now: datetime | None = None,
    ) -> pd.DataFrame:
        self._check_market(market)
        moment, start, end = _now(now), as_kst(start), as_kst(end)
        before = moment if end is None else min(moment, end + HOUR)
        if start is None:
            candles = self._back_to_listing(market, before)
        elif before > start:
            candles = self._fetch(market, math.ceil((before - start) / HOUR), before)
        else:
            candles = empty_candles()
        return closed_window(candles, start, end, moment)

    def latest(self, market: str, count: int, *, now: datetime | None = None) -> pd.DataFrame:
        _check_count(count)
        self._check_market(market)
        moment = _now(now)
        return closed_window(self._fetch(market, count + 1, moment), None, None, moment).tail(count)

    def _check_market(self, market: str) -> None:
        known = self._known if self._known and market in self._known else self.markets()
        if market not in known:
            raise UnknownMarketError(market, known)

    def _fetch(self, market: str, count: int, before: pd.Timestamp) -> pd.DataFrame:
        """The `count` newest candles opened before `before` (KST), or fewer near the listing."""
        # pyupbit sends `to` as it is, and Upbit reads a time without an offset as UTC.
        to_utc = before.tz_localize(KST).tz_convert("UTC").tz_localize(None).to_pydatetime()
        try:
            raw = self.http.call(
                pyupbit.get_ohlcv, market, interval="minute60", count=count, to=to_utc, period=0.0
            )
        except UpbitNoData:
            return empty_candles()
        try:
            return validate_candles(normalize_candles(raw))
        except CandleError as exc:
            raise CandleError(f"Upbit {market} candles before {before}: {exc}") from exc

    def _back_to_listing(self, market: str, before: pd.Timestamp) -> pd.DataFrame:
        """Everything before `before`: pyupbit needs a count up front and the listing date is
        unknown, so fetch fixed chunks until one comes back short."""
        chunks: list[pd.DataFrame] = []
        while True:
            chunk = self._fetch(market, UPBIT_CHUNK, before)
            chunks.append(chunk)
            if len(chunk) < UPBIT_CHUNK:
                return pd.concat(chunks[::-1]) if len(chunks) > 1 else chunk
            before = chunk.index[0]


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
        self._fs, self._root = _filesystem(self.cache_dir)
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
        moment, start, end = _now(now), as_kst(start), as_kst(end)
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
        _check_count(count)
        moment = _now(now)
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
            candles, metadata = _read_table(self._fs, path)
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
