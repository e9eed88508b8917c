"""Binance spot hourly candles, the USDT side of the Upbit premium feature group.

Two adapters behind one small protocol (`UsdtCandleSource`): `BinanceParquetSource` reads the
shared `binance_<SYMBOL>_1h.parquet` files (training, research, offline serving) and
`BinanceHttpSource` asks Binance's public REST API, `GET /api/v3/klines` (live serving). Both
return the candle contract's columns with naive **UTC** open times, as Binance states them; the
premium group matches them to Upbit's KST hours by instant (features.groups). The forming hour
(close time in the future) is dropped, as Upbit's is: it is not a candle yet. Every failure is a
`BinanceError` naming the symbol and the reason.

Wire format (https://developers.binance.com/docs/binance-spot-api-docs/rest-api/market-data-endpoints):
each kline is `[open_time_ms, "open", "high", "low", "close", "volume", close_time_ms,
"quote_volume", trades, "taker_base", "taker_quote", "ignore"]`; at most 1000 per request.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import requests

from features.candles import CANDLE_COLUMNS, CandleError, validate_candles
from features.exchange import HOUR
from features.sources import read_candle_file

BINANCE_API = "https://api.binance.com"
KLINES_PATH = "/api/v3/klines"
MAX_KLINES = 1000
SYMBOL_PATTERN = re.compile(r"^[A-Z0-9]{2,10}USDT$")


class BinanceError(OSError):
    """Binance candles could not be had (file missing, HTTP failure, unreadable reply)."""


class BinanceUnknownSymbol(BinanceError):
    """The source answers but holds no candles of that pair (no file; Binance's -1121)."""


class UsdtCandleSource(Protocol):
    """Closed Binance hourly candles of a USDT pair, naive UTC open times."""

    def latest(self, symbol: str, count: int, *, now: datetime | None = None) -> pd.DataFrame: ...


def _check_symbol(symbol: str) -> str:
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.fullmatch(symbol):
        raise BinanceError(f"invalid Binance symbol {symbol!r}: expected a USDT pair like BTCUSDT")
    return symbol


def _now_utc(now: datetime | None) -> pd.Timestamp:
    """`now` as naive UTC; a naive `now` is taken as UTC (this module's clock)."""
    stamp = pd.Timestamp(now if now is not None else datetime.now(UTC))
    return stamp.tz_convert(UTC).tz_localize(None) if stamp.tzinfo else stamp


def _closed(frame: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
    return frame.loc[frame.index + HOUR <= now]


def binance_file_name(symbol: str) -> str:
    return f"binance_{_check_symbol(symbol)}_1h.parquet"


class BinanceParquetSource:
    """`binance_<SYMBOL>_1h.parquet` in a local folder or an object-store URI."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = str(directory)
        if "://" in self.directory:
            self._fs, self._root = pafs.FileSystem.from_uri(self.directory)
        else:
            self._fs, self._root = pafs.LocalFileSystem(), str(Path(self.directory).resolve())

    def history(self, symbol: str) -> pd.DataFrame:
        path = f"{self._root}/{binance_file_name(symbol)}"
        if self._fs.get_file_info(path).type != pafs.FileType.File:
            raise BinanceUnknownSymbol(f"no Binance candles for {symbol} in {self.directory}")
        try:
            return read_candle_file(self._fs, path)
        except CandleError as exc:
            raise BinanceError(f"{symbol}: {exc}") from exc

    def latest(self, symbol: str, count: int, *, now: datetime | None = None) -> pd.DataFrame:
        return _closed(self.history(symbol), _now_utc(now)).tail(count)


def parse_klines(payload: Any, symbol: str) -> pd.DataFrame:
    """Binance's kline arrays -> candle frame (value = quote-asset volume), naive UTC times."""
    if not isinstance(payload, list):
        raise BinanceError(f"{symbol}: klines reply is not a list: {str(payload)[:160]}")
    try:
        rows = np.array([[float(k[i]) for i in (1, 2, 3, 4, 5, 7)] for k in payload])
        times = pd.to_datetime([int(k[0]) for k in payload], unit="ms")
    except (TypeError, ValueError, IndexError) as exc:
        raise BinanceError(f"{symbol}: malformed kline: {exc}") from exc
    frame = pd.DataFrame(
        rows.reshape(-1, len(CANDLE_COLUMNS)),
        index=pd.DatetimeIndex(times, name="time").astype("datetime64[ns]"),
        columns=list(CANDLE_COLUMNS),
    )
    try:
        validate_candles(frame)
    except CandleError as exc:
        raise BinanceError(f"{symbol}: {exc}") from exc
    return frame


class BinanceHttpSource:
    """Binance's public klines endpoint, with a timeout and paging by `endTime` (oldest last)."""

    def __init__(self, base_url: str = BINANCE_API, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def latest(self, symbol: str, count: int, *, now: datetime | None = None) -> pd.DataFrame:
        """The newest `count` closed hours (fewer only when Binance has fewer)."""
        _check_symbol(symbol)
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        now_utc = _now_utc(now)
        end_ms = int(now_utc.value // 1_000_000) - 1
        pages: list[pd.DataFrame] = []
        have = 0
        while have < count:
            page = _closed(self._page(symbol, min(count - have + 1, MAX_KLINES), end_ms), now_utc)
            if page.empty:
                break
            pages.append(page)
            have += len(page)
            end_ms = int(page.index[0].value // 1_000_000) - 1
        if not pages:
            raise BinanceError(f"{symbol}: Binance returned no closed hourly candles")
        frame = pd.concat(pages[::-1]).sort_index()
        return frame.loc[~frame.index.duplicated()].tail(count)

    def _page(self, symbol: str, limit: int, end_ms: int) -> pd.DataFrame:
        params = {"symbol": symbol, "interval": "1h", "limit": limit, "endTime": end_ms}
        try:
            reply = self.session.get(
                self.base_url + KLINES_PATH, params=params, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise BinanceError(f"{symbol}: Binance klines request failed: {exc}") from exc
        if reply.status_code == 400 and '"code":-1121' in reply.text.replace(" ", ""):
            raise BinanceUnknownSymbol(f"{symbol}: Binance answered {reply.text[:160]}")
        if reply.status_code != 200:
            raise BinanceError(
                f"{symbol}: Binance answered {reply.status_code}: {reply.text[:160]}"
            )
        try:
            payload = reply.json()
        except ValueError as exc:
            raise BinanceError(f"{symbol}: Binance reply is not JSON: {exc}") from exc
        return parse_klines(payload, symbol)
