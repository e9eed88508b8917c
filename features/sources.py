"""Where candles come from: one `CandleSource` protocol and its adapters.

Every source returns closed candles only, in the contract of `features.candles` (validated and
normalised), so training, serving and backtests cannot tell which adapter fed them. `now` is the
caller's clock: the candle still forming at `now` is never returned, and a past `now` lets a
backtest ask "what did the exchange know then".

- `ParquetDirSource`: a folder (or pyarrow.fs URI) of `<MARKET>_minute60.parquet` files.
- `UpbitSource`: Upbit's REST API through the real pyupbit client and `UpbitHttp`.

The Parquet cache in front of a source, `CachedSource`, lives in `features.candle_cache`.
"""

from __future__ import annotations

import math
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
    drop_forming,
    empty_candles,
    normalize_candles,
    to_kst,
    validate_candles,
)
from features.exchange import HOUR, KST, UnknownMarketError, now_kst
from features.upbit_http import UPBIT_API, RetryPolicy, UpbitHttp, UpbitNoData

FILE_SUFFIX = "_minute60.parquet"
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


def resolve_now(now: datetime | None) -> pd.Timestamp:
    """The caller's clock as a KST timestamp; the real clock when it gives none."""
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


def check_count(count: int) -> None:
    """`latest(count=...)` asks for at least one candle; anything else is the caller's bug."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")


def read_candle_table(
    filesystem: pafs.FileSystem, path: str
) -> tuple[pd.DataFrame, dict[bytes, bytes]]:
    """Read and check one candle file, with its schema metadata; any problem becomes a CandleError
    naming the file."""
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
    return read_candle_table(filesystem, path)[0]


def filesystem_root(directory: str) -> tuple[pafs.FileSystem, str]:
    """A local folder or a pyarrow.fs URI as (filesystem, root path inside it)."""
    if "://" in directory:
        return pafs.FileSystem.from_uri(directory)
    return pafs.LocalFileSystem(), str(Path(directory).resolve())


class ParquetDirSource:
    """Candles stored as `<MARKET>_minute60.parquet` in a local folder or an object-store URI."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = str(directory)
        self._fs, self._root = filesystem_root(self.directory)

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
        return closed_window(self._read(market), as_kst(start), as_kst(end), resolve_now(now))

    def latest(self, market: str, count: int, *, now: datetime | None = None) -> pd.DataFrame:
        check_count(count)
        return closed_window(self._read(market), None, None, resolve_now(now)).tail(count)

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
        moment, start, end = resolve_now(now), as_kst(start), as_kst(end)
        before = moment if end is None else min(moment, end + HOUR)
        if start is None:
            candles = self._back_to_listing(market, before)
        elif before > start:
            candles = self._fetch(market, math.ceil((before - start) / HOUR), before)
        else:
            candles = empty_candles()
        return closed_window(candles, start, end, moment)

    def latest(self, market: str, count: int, *, now: datetime | None = None) -> pd.DataFrame:
        check_count(count)
        self._check_market(market)
        moment = resolve_now(now)
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
