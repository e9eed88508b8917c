"""A local Binance spot REST stand-in on 127.0.0.1 serving `GET /api/v3/klines` as Binance does.

It answers from candle frames it is given (real Binance candles from the shared folder in the
tests, naive UTC open times) at a settable `now`: the kline arrays with prices and volumes as
8-decimal strings, open and close times in epoch milliseconds, the still-forming hour as the newest
kline (its close time in the future), at most `limit` (<= 1000) klines with open time <= `endTime`,
oldest first, the `X-MBX-USED-WEIGHT-1M` header, and Binance's error body `{"code", "msg"}` for an
unknown symbol or a bad limit. Tests point `features.binance.BinanceHttpSource` at it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import pandas as pd

from features.exchange import HOUR

from standins.http_server import LocalHttpServer, QuietHandler

MAX_LIMIT = 1000
DEFAULT_LIMIT = 500


def _ms(stamp: pd.Timestamp) -> int:
    return int(stamp.value // 1_000_000)


def _kline(opened: pd.Timestamp, row: pd.Series) -> list:
    money = [f"{row[c]:.8f}" for c in ("open", "high", "low", "close", "volume")]
    closes = _ms(opened + HOUR) - 1
    return [_ms(opened), *money, closes, f"{row['value']:.8f}", 1000, "0", "0", "0"]


class BinanceStandIn(LocalHttpServer):
    """Serves `candles` (symbol -> frame, naive UTC) as Binance would at `now` (naive UTC)."""

    thread_name = "binance-standin"

    def __init__(self, candles: Mapping[str, pd.DataFrame], now: pd.Timestamp) -> None:
        super().__init__()
        self.candles = dict(candles)
        self.now = now
        self.requests: list[dict[str, str]] = []
        self.fail_next: int | None = None  # HTTP status of the next reply, once

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _make_handler(self)

    def klines(self, query: dict[str, str]) -> tuple[int, object]:
        self.requests.append(query)
        if self.fail_next is not None:
            status, self.fail_next = self.fail_next, None
            return status, {"code": -1003, "msg": "Too much request weight used."}
        symbol = query.get("symbol", "")
        if symbol not in self.candles:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        limit = int(query.get("limit", DEFAULT_LIMIT))
        if not 1 <= limit <= MAX_LIMIT:
            return 400, {"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."}
        frame = self.candles[symbol]
        frame = frame.loc[frame.index <= self.now]  # the forming hour is included, as Binance does
        if "endTime" in query:
            end = pd.Timestamp(int(query["endTime"]), unit="ms")
            frame = frame.loc[frame.index <= end]
        if "startTime" in query:
            start = pd.Timestamp(int(query["startTime"]), unit="ms")
            frame = frame.loc[frame.index >= start].head(limit)
        return 200, [_kline(t, row) for t, row in frame.tail(limit).iterrows()]


def _make_handler(standin: BinanceStandIn) -> type[BaseHTTPRequestHandler]:
    class _BinanceHandler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if url.path == "/api/v3/klines":
                status, payload = standin.klines(query)
            else:
                status, payload = 404, {"code": -1000, "msg": f"no route {url.path}"}
            weight = {"X-MBX-USED-WEIGHT-1M": str(2 * len(standin.requests))}
            self.reply(
                status, json.dumps(payload).encode(), "application/json;charset=UTF-8", weight
            )

    return _BinanceHandler
