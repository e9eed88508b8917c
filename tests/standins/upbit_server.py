"""A local Upbit REST stand-in on 127.0.0.1 that answers the way Upbit does.

The real client (pyupbit) talks to it through `features.upbit_http.UpbitHttp`, so the tests exercise
pyupbit's own request building and reply parsing. It serves the public quotation endpoints from
candle frames it is given (real candles in the tests), adds the still-forming hour as the newest
row the way Upbit does, sends `Remaining-Req` on every reply, records every request, and can be
told to misbehave for the next N requests (429, 418, 5xx, malformed body, slow reply).

Private endpoints (JWT-signed /v1/accounts, /v1/orders) belong in a subclass that registers them
with `add_route`; the dispatch, faults, rate budget and request log are shared.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pandas as pd

from features.candles import current_hour_kst
from features.exchange import HOUR, KST

from standins.http_server import LocalHttpServer, QuietHandler
from standins.upbit_ticker import market_event, ticker_json

MAX_CANDLES_PER_PAGE = 200
UPBIT_TIME = "%Y-%m-%dT%H:%M:%S"
NAMES = {"BTC": "Bitcoin", "ETH": "Ethereum", "XRP": "Ripple", "SOL": "Solana"}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received, so tests can assert paging, retries and headers."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"

    @classmethod
    def json(cls, payload: Any, status: int = 200) -> Reply:
        return cls(status, json.dumps(payload).encode())

    @classmethod
    def error(cls, status: int, name: str | int, message: str) -> Reply:
        return cls.json({"error": {"name": name, "message": message}}, status)


RATE_LIMITED = Reply.error(429, "too_many_requests", "Too many API requests.")


@dataclass(frozen=True)
class Fault:
    """What the next request(s) get instead of the normal answer (`delay` first, then `reply`)."""

    reply: Reply | None = None
    delay_s: float = 0.0

    @classmethod
    def rate_limited(cls) -> Fault:
        return cls(RATE_LIMITED)

    @classmethod
    def banned(cls) -> Fault:
        return cls(Reply.error(418, "blocked", "IP blocked for calling on after 429"))

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        return cls(Reply(status, b"<html><body>Internal Server Error</body></html>", "text/html"))

    @classmethod
    def malformed(cls) -> Fault:
        return cls(Reply(200, b'[{"market": "KRW-BTC", "candle_date_time_utc": '))

    @classmethod
    def unexpected_shape(cls) -> Fault:
        return cls(Reply.json({"notice": "maintenance"}))

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        return cls(None, seconds)


Handler = Callable[[RecordedRequest], Reply]


@dataclass
class _Route:
    handler: Handler
    group: str


@dataclass
class _Budget:
    """Upbit's per-second request budget for one group, reported in `Remaining-Req`."""

    per_second: int
    used: dict[tuple[str, int], int] = field(default_factory=dict)

    def spend(self, group: str, now: float) -> int:
        key = (group, int(now))
        self.used[key] = self.used.get(key, 0) + 1
        return self.per_second - self.used[key]


def parse_to(text: str) -> pd.Timestamp:
    """Upbit's `to` cursor: `yyyy-MM-dd HH:mm:ss` is UTC; ISO-8601 may carry its own offset."""
    moment = pd.Timestamp(text)
    if moment.tzinfo is None:
        moment = moment.tz_localize("UTC")
    return moment.tz_convert(KST).tz_localize(None)


def candle_json(market: str, opened: pd.Timestamp, row: Mapping[str, float], stamp_ms: int) -> dict:
    """One candle in Upbit's reply schema (`candle_date_time_*` are open times)."""
    return {
        "market": market,
        "candle_date_time_utc": opened.tz_localize(KST).tz_convert("UTC").strftime(UPBIT_TIME),
        "candle_date_time_kst": opened.strftime(UPBIT_TIME),
        "opening_price": float(row["open"]),
        "high_price": float(row["high"]),
        "low_price": float(row["low"]),
        "trade_price": float(row["close"]),
        "timestamp": stamp_ms,
        "candle_acc_trade_price": float(row["value"]),
        "candle_acc_trade_volume": float(row["volume"]),
        "unit": 60,
    }


def _epoch_ms(kst: datetime) -> int:
    return int(pd.Timestamp(kst).tz_localize(KST).timestamp() * 1000)


class UpbitStandIn(LocalHttpServer):
    """Serve `candles` ({market: candle frame}) as Upbit would at the KST time `now`.

    Rows after the current hour are the future and are not served; the current hour is served as
    the newest, still-forming row (the frame's row for that hour if it has one, else a flat candle
    at the last close).
    """

    thread_name = "upbit-standin"

    def __init__(
        self,
        candles: Mapping[str, pd.DataFrame],
        *,
        now: datetime | None = None,
        per_second: int = 10,
        enforce_limit: bool = False,
        other_markets: Sequence[str] = ("BTC-ETH", "USDT-BTC"),
        warned: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.candles = dict(candles)
        self.warned = set(warned)  # markets under Upbit's investment warning (market_event)
        last = max(frame.index[-1] for frame in self.candles.values())
        self.now: datetime = now or (last + HOUR + pd.Timedelta(seconds=5)).to_pydatetime()
        self.enforce_limit = enforce_limit
        self.other_markets = tuple(other_markets)
        self._budget = _Budget(per_second)
        self._faults: list[tuple[Fault, str | None]] = []
        self._log: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._routes: dict[tuple[str, str], _Route] = {}
        self.add_route("GET", "/v1/market/all", self._market_all, group="market")
        self.add_route("GET", "/v1/candles/minutes/60", self._candles, group="candles")
        self.add_route("GET", "/v1/ticker", self._ticker, group="ticker")

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _make_handler(self)

    # -- test controls ---------------------------------------------------------------------------
    def add_route(
        self, method: str, path: str, handler: Handler, *, group: str = "default"
    ) -> None:
        self._routes[(method, path)] = _Route(handler, group)

    def inject(self, fault: Fault, times: int = 1, *, path: str | None = None) -> None:
        """The next `times` requests (to `path`, or any path) get `fault`."""
        with self._lock:
            self._faults.extend([(fault, path)] * times)

    def requests(self, path: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self._log if path is None or r.path == path]

    def candle_requests(self) -> list[RecordedRequest]:
        return self.requests("/v1/candles/minutes/60")

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def visible(self, market: str) -> pd.DataFrame:
        """What Upbit would hold for `market` at `now`: closed hours plus the forming one."""
        frame = self.candles[market]
        forming = current_hour_kst(self.now)
        closed = frame.loc[frame.index < forming]
        if forming in frame.index:
            current = frame.loc[[forming]]
        else:
            close = float(closed["close"].iloc[-1])
            values = dict(open=close, high=close, low=close, close=close, volume=0.0, value=0.0)
            current = pd.DataFrame(values, index=pd.DatetimeIndex([forming], name="time"))
        return pd.concat([closed, current])

    # -- dispatch (handler threads) --------------------------------------------------------------
    def dispatch(self, request: RecordedRequest) -> tuple[Reply, str]:
        """The reply to one request and the `Remaining-Req` header to send with it."""
        route = self._routes.get((request.method, request.path))
        group = route.group if route else "default"
        with self._lock:
            self._log.append(request)
            remaining = self._budget.spend(group, request.at)
            fault = self._take_fault(request.path)
        header = f"group={group}; min=1800; sec={max(remaining, 0)}"
        if fault is not None:
            self._stopping.wait(fault.delay_s)
            if fault.reply is not None:
                return fault.reply, header
        if self.enforce_limit and remaining < 0:
            return RATE_LIMITED, header
        if route is None:
            return Reply.error(404, "not_found", f"no route {request.path}"), header
        return route.handler(request), header

    def _take_fault(self, path: str) -> Fault | None:
        for i, (fault, only) in enumerate(self._faults):
            if only is None or only == path:
                del self._faults[i]
                return fault
        return None

    # -- public endpoints ------------------------------------------------------------------------
    def _market_all(self, request: RecordedRequest) -> Reply:
        details = request.query.get("isDetails", "false") == "true"
        rows = []
        for market in [*self.candles, *self.other_markets]:
            coin = market.split("-", 1)[1]
            row = {"market": market, "korean_name": coin, "english_name": NAMES.get(coin, coin)}
            warned = market in self.warned
            rows.append({**row, "market_event": market_event(warned)} if details else row)
        return Reply.json(rows)

    def _ticker(self, request: RecordedRequest) -> Reply:
        markets = [m for m in request.query.get("markets", "").split(",") if m]
        if not markets:
            return Reply.error(400, "validation_error", "markets is required")
        if any(market not in self.candles for market in markets):
            return Reply.error(404, 404, "Code not found")
        return Reply.json([ticker_json(m, self.visible(m), self.now) for m in markets])

    def _candles(self, request: RecordedRequest) -> Reply:
        market = request.query.get("market", "")
        if market not in self.candles:
            return Reply.error(404, 404, "Code not found")
        try:
            count = int(request.query.get("count", "1"))
            before = parse_to(request.query["to"]) if "to" in request.query else None
        except ValueError as exc:
            return Reply.error(400, "validation_error", str(exc))
        if not 1 <= count <= MAX_CANDLES_PER_PAGE:
            return Reply.error(400, "validation_error", f"count must be 1..{MAX_CANDLES_PER_PAGE}")
        rows = self.visible(market)
        if before is not None:
            rows = rows.loc[rows.index < before]
        page = rows.iloc[-count:].iloc[::-1]
        forming = current_hour_kst(self.now)
        stamps = [
            _epoch_ms(self.now) if t == forming else _epoch_ms(t + HOUR) - 1 for t in page.index
        ]
        body = [
            candle_json(market, t, row, s)
            for (t, row), s in zip(page.iterrows(), stamps, strict=True)
        ]
        return Reply.json(body)


def _make_handler(standin: UpbitStandIn) -> type[BaseHTTPRequestHandler]:
    class _UpbitHandler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def do_DELETE(self) -> None:  # noqa: N802
            self._serve("DELETE")

        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = RecordedRequest(
                method=method,
                path=parts.path,
                # A repeated key (`markets=A&markets=B`, as requests sends a list) reads as
                # "A,B", the way Upbit's server binds it.
                query={k: ",".join(v) for k, v in parse_qs(parts.query).items()},
                headers=dict(self.headers.items()),
                body=self.rfile.read(length) if length else b"",
                at=time.time(),
            )
            reply, remaining = standin.dispatch(request)
            self.reply(reply.status, reply.body, reply.content_type, {"Remaining-Req": remaining})

    return _UpbitHandler
