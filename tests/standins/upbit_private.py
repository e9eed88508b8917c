"""Upbit's private (JWT-signed) REST API on 127.0.0.1: accounts, market orders, order lookup.

It checks every private call the way Upbit's authentication guide specifies, so a client that
signs wrongly fails here as it would against Upbit:
- `Authorization: Bearer <JWT>`, signed HS256 or HS512 with the secret paired with `access_key`;
- payload `access_key`, `nonce` (a UUID4 string, accepted once), and, for a call with parameters,
  `query_hash` = SHA512 hex of the parameters as a query string that is NOT percent-encoded
  (Upbit's own example hashes `unquote(urlencode(params, doseq=True))`), `query_hash_alg` "SHA512".
  For GET the parameters are the query string, for POST the JSON body's fields in body order.
Failures answer 401 with Upbit's `{"error": {"name", "message"}}`: `jwt_verification` (no or
badly signed token), `invalid_access_key`, `invalid_query_payload` (payload or hash wrong),
`nonce_used`.

Orders fill at once at `prices[market]` (default: the newest closed candle's close) with the
0.05 % fee, and balances move accordingly. A market bid buys its KRW amount's worth floored to
Upbit's 8-decimal volume step and leaves the remainder unspent; such a bid reads `done` here,
while Upbit may show it as `cancel` with its executed part (the broker treats both as final).
Refusals use Upbit's names (`insufficient_funds_*`, `under_min_total_*`, `create_*_error`,
`validation_error`). A reused `identifier` is refused even when its first order was refused
(an Upbit fact in design.md). Upbit's published error tables (REST API guide, pyupbit's errors.py,
ccxt's upbit exceptions) name no error for it, so the name used here, `DUPLICATE_IDENTIFIER`
("duplicate_identifier"), is ours: clients must not depend on it.

`GET /v1/orders/open` lists the orders still `wait` (state, page and limit as Upbit takes them).

Test controls beyond the inherited faults: `lose_order_replies` (the order is placed, then the
reply is a 5xx or arrives too late: "sent but reply lost"), `hold_fills` (new orders read as
`wait` for the next N lookups), `hide_orders` (lookups of these identifiers answer
`order_not_found` although the orders exist: the exchange's view lags or is lost),
`fail_lookups` (lookups of these identifiers answer a 5xx) and `place_by_hand` (an order a person
placed on the exchange, open, that no ledger knows).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode

import jwt
import pandas as pd

from features.exchange import FEE_RATE, MIN_ORDER_KRW

from standins.upbit_server import RecordedRequest, Reply, UpbitStandIn

ACCESS_KEY = "standin-access-key-0123456789abcdefghij"
SECRET_KEY = "standin-secret-key-9876543210zyxwvutsrq"
DUPLICATE_IDENTIFIER = "duplicate_identifier"
JWT_ALGORITHMS = ["HS256", "HS512"]  # Upbit accepts both; pyupbit signs HS256
KST_OFFSET = "+09:00"
LOST_REPLY_BODY = b"<html><body>Internal Server Error</body></html>"

PrivateHandler = Callable[[RecordedRequest, dict[str, str]], Reply]


def upbit_query_string(params: Sequence[tuple[str, str]]) -> str:
    """The string Upbit hashes: parameters in request order, joined, not percent-encoded."""
    return unquote(urlencode(list(params), doseq=True))


def upbit_number(value: float) -> str:
    """Upbit writes amounts as decimal strings with at most 8 places ("5000.0", "0.00062")."""
    text = f"{value:.8f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _floor8(value: float) -> float:
    return math.floor(value * 1e8 + 1e-6) / 1e8


def _unauthorized(name: str, message: str) -> Reply:
    return Reply.error(401, name, message)


def _header(headers: Mapping[str, str], name: str) -> str:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), "")


def _is_uuid4(text: object) -> bool:
    try:
        return uuid.UUID(str(text)).version == 4
    except ValueError:
        return False


def _payload_problem(claims: Mapping[str, Any], params: Sequence[tuple[str, str]]) -> str | None:
    if not _is_uuid4(claims.get("nonce")):
        return "nonce must be a UUID4 string"
    if not params:
        return None
    if claims.get("query_hash_alg") != "SHA512":
        return "query_hash_alg must be SHA512"
    expected = hashlib.sha512(upbit_query_string(params).encode()).hexdigest()
    if claims.get("query_hash") != expected:
        return "query_hash does not match the request parameters"
    return None


@dataclass
class Holding:
    balance: float
    locked: float = 0.0
    avg_buy_price: float = 0.0


@dataclass
class _Order:
    """One accepted order: what Upbit stores and shows at GET /v1/order."""

    body: dict[str, Any]
    volume: float  # executed coin units
    price: float  # execution price
    funds: float  # KRW value executed
    fee: float
    created_at: str
    lookups_until_done: int = 0
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))

    def view(self, *, with_trades: bool) -> dict[str, Any]:
        done = self.lookups_until_done <= 0 and with_trades
        side, market = self.body["side"], self.body["market"]
        payload: dict[str, Any] = {
            "uuid": self.uuid,
            "side": side,
            "ord_type": self.body["ord_type"],
            "price": self.body.get("price"),
            "state": "done" if done else "wait",
            "market": market,
            "created_at": self.created_at,
            "volume": self.body.get("volume"),
            "remaining_volume": "0.0" if done else self.body.get("volume"),
            "reserved_fee": upbit_number(self.fee),
            "remaining_fee": "0.0" if done else upbit_number(self.fee),
            "paid_fee": upbit_number(self.fee if done else 0.0),
            "locked": "0.0" if done else upbit_number(self.funds + self.fee),
            "executed_volume": upbit_number(self.volume if done else 0.0),
            "trades_count": 1 if done else 0,
            "identifier": self.body.get("identifier"),
        }
        if with_trades:
            trade = {
                "market": market,
                "uuid": str(uuid.uuid5(uuid.NAMESPACE_OID, self.uuid)),
                "price": upbit_number(self.price),
                "volume": upbit_number(self.volume),
                "funds": upbit_number(self.funds),
                "trend": "up" if side == "bid" else "down",
                "created_at": self.created_at,
                "side": side,
            }
            payload["trades"] = [trade] if done else []
        return payload


@dataclass(frozen=True)
class _LostReply:
    status: int
    delay_s: float


class UpbitPrivateStandIn(UpbitStandIn):
    """`UpbitStandIn` plus the private endpoints, for one account with the given key pair(s).

    `balances` is {currency: free units} (default 1,000,000 KRW); `prices` overrides the fill
    price per market. Balances settle when an order is accepted, even while `hold_fills` makes
    lookups show it as `wait`.
    """

    def __init__(
        self,
        candles: Mapping[str, pd.DataFrame],
        *,
        keys: Mapping[str, str] | None = None,
        balances: Mapping[str, float] | None = None,
        prices: Mapping[str, float] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(candles, **options)
        self.keys = dict(keys if keys is not None else {ACCESS_KEY: SECRET_KEY})
        self.prices = {m: float(self.visible(m)["close"].iloc[-2]) for m in self.candles}
        self.prices.update(prices or {})
        start = balances if balances is not None else {"KRW": 1_000_000.0}
        self.holdings = {currency: Holding(float(units)) for currency, units in start.items()}
        self._orders: dict[str, _Order] = {}  # by identifier (orders sent without one: by uuid)
        self._spent: set[str] = set()  # identifiers named by any order, accepted or refused
        self._nonces: set[str] = set()
        self._lost: list[_LostReply] = []
        self._hold_lookups = 0
        self._hidden: set[str] = set()
        self._failing: dict[str, int] = {}
        self._book = threading.Lock()
        self.add_route("GET", "/v1/accounts", self._private(self._accounts))
        self.add_route("POST", "/v1/orders", self._private(self._create_order), group="order")
        self.add_route("GET", "/v1/order", self._private(self._order))
        self.add_route("GET", "/v1/orders/open", self._private(self._open_orders))

    # -- test controls ---------------------------------------------------------------------------
    def lose_order_replies(
        self, times: int = 1, *, status: int = 500, delay_s: float = 0.0
    ) -> None:
        """The next `times` orders are placed, then answered `status` after `delay_s` (a delay
        past the client's timeout makes the client see no reply at all)."""
        with self._book:
            self._lost.extend([_LostReply(status, delay_s)] * times)

    def hold_fills(self, lookups: int) -> None:
        """Orders accepted from now on read as `wait` for their first `lookups` lookups."""
        self._hold_lookups = lookups

    def hide_orders(self, *identifiers: str) -> None:
        """Lookups of these identifiers answer 404 `order_not_found` from now on."""
        with self._book:
            self._hidden.update(identifiers)

    def fail_lookups(self, identifier: str, status: int = 500) -> None:
        """Lookups of `identifier` answer `status` (an HTML error page) from now on."""
        with self._book:
            self._failing[identifier] = status

    def place_by_hand(self, market: str, side: str, amount: float) -> str:
        """An order a person placed outside the loop (no identifier), left open: its uuid."""
        params = {"market": market, "side": side, "ord_type": "price" if side == "bid" else
                  "market", "price" if side == "bid" else "volume": str(amount)}  # fmt: skip
        with self._book:
            order = self._execute(params)
            order.lookups_until_done = 10**9
            self._orders[order.uuid] = order
        return order.uuid

    def posted_orders(self) -> list[str]:
        """The identifier of every POST /v1/orders received, accepted or not, in order."""
        return [
            json.loads(r.body or b"{}").get("identifier", "")
            for r in self.requests("/v1/orders")
            if r.method == "POST"
        ]

    def order_count(self) -> int:
        with self._book:
            return len(self._orders)

    # -- authentication --------------------------------------------------------------------------
    def _private(self, handler: PrivateHandler) -> Callable[[RecordedRequest], Reply]:
        def serve(request: RecordedRequest) -> Reply:
            params = self._params(request)
            if isinstance(params, Reply):
                return params
            refusal = self._authenticate(request, list(params.items()))
            return refusal if refusal is not None else handler(request, params)

        return serve

    @staticmethod
    def _params(request: RecordedRequest) -> dict[str, str] | Reply:
        if request.method == "GET":
            return dict(request.query)
        try:
            body = json.loads(request.body or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return Reply.error(400, "validation_error", "the body must be a JSON object")
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in body.items()}

    def _authenticate(
        self, request: RecordedRequest, params: Sequence[tuple[str, str]]
    ) -> Reply | None:
        bearer = _header(request.headers, "Authorization")
        if not bearer.startswith("Bearer "):
            return _unauthorized("jwt_verification", "no bearer token")
        token = bearer[len("Bearer ") :]
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return _unauthorized("jwt_verification", "the token cannot be decoded")
        secret = self.keys.get(str(claims.get("access_key")))
        if secret is None:
            return _unauthorized("invalid_access_key", "unknown access key")
        try:
            jwt.decode(token, secret, algorithms=JWT_ALGORITHMS)
        except jwt.PyJWTError:
            return _unauthorized("jwt_verification", "the token signature does not verify")
        problem = _payload_problem(claims, params)
        if problem is not None:
            return _unauthorized("invalid_query_payload", problem)
        with self._book:
            if claims["nonce"] in self._nonces:
                return _unauthorized("nonce_used", "this nonce was used before")
            self._nonces.add(claims["nonce"])
        return None

    # -- endpoints -------------------------------------------------------------------------------
    def _accounts(self, request: RecordedRequest, params: dict[str, str]) -> Reply:
        with self._book:
            rows = [
                {
                    "currency": currency,
                    "balance": upbit_number(held.balance),
                    "locked": upbit_number(held.locked),
                    "avg_buy_price": upbit_number(held.avg_buy_price),
                    "avg_buy_price_modified": False,  # a JSON boolean at Upbit too
                    "unit_currency": "KRW",
                }
                for currency, held in self.holdings.items()
                if currency == "KRW" or held.balance > 0 or held.locked > 0
            ]
        return Reply.json(rows)

    def _order(self, request: RecordedRequest, params: dict[str, str]) -> Reply:
        key = params.get("identifier") or params.get("uuid")
        if not key:
            return Reply.error(400, "validation_error", "uuid or identifier is required")
        with self._book:
            if key in self._failing:
                return Reply(self._failing[key], LOST_REPLY_BODY, "text/html")
            order = self._orders.get(key) or next(
                (o for o in self._orders.values() if o.uuid == key), None
            )
            if order is None or key in self._hidden:
                return Reply.error(404, "order_not_found", "주문을 찾지 못했습니다.")
            view = order.view(with_trades=True)
            order.lookups_until_done -= 1
        return Reply.json(view)

    def _open_orders(self, request: RecordedRequest, params: dict[str, str]) -> Reply:
        if params.get("state", "wait") != "wait":
            return Reply.error(400, "validation_error", "only state=wait is served here")
        try:
            page, limit = int(params.get("page", "1")), int(params.get("limit", "100"))
        except ValueError as exc:
            return Reply.error(400, "validation_error", str(exc))
        if not 1 <= limit <= 100 or page < 1:
            return Reply.error(400, "validation_error", "page >= 1, limit 1..100")
        market = params.get("market")
        with self._book:
            rows = [
                order.view(with_trades=False)
                for order in self._orders.values()
                if order.lookups_until_done > 0 and market in (None, order.body["market"])
            ]
        return Reply.json(rows[(page - 1) * limit : page * limit])

    def _create_order(self, request: RecordedRequest, params: dict[str, str]) -> Reply:
        with self._book:
            identifier = params.get("identifier")
            if identifier is not None and identifier in self._spent:
                return Reply.error(400, DUPLICATE_IDENTIFIER, "identifier was used before")
            if identifier is not None:
                self._spent.add(identifier)  # spent even if the order is refused below
            refusal = self._check_order(params)
            if refusal is not None:
                return refusal
            order = self._execute(params)
            self._orders[identifier or order.uuid] = order
            lost = self._lost.pop(0) if self._lost else None
        if lost is not None:
            self._stopping.wait(lost.delay_s)
            return Reply(lost.status, LOST_REPLY_BODY, "text/html")
        return Reply.json(order.view(with_trades=False), status=201)

    # -- order book (called under self._book) ----------------------------------------------------
    def _check_order(self, params: dict[str, str]) -> Reply | None:
        side, ord_type, market = params.get("side"), params.get("ord_type"), params.get("market")
        if market not in self.prices:
            return Reply.error(400, "validation_error", f"market {market!r} does not exist")
        if (side, ord_type) not in (("bid", "price"), ("ask", "market")):
            return Reply.error(400, "validation_error", "only market orders are served here")
        wrong_field = "volume" if side == "bid" else "price"
        if params.get(wrong_field) is not None:
            return Reply.error(
                400, f"create_{side}_error", f"a market {side} takes no {wrong_field}"
            )
        try:
            amount = float(params["price" if side == "bid" else "volume"])
        except (KeyError, ValueError):
            return Reply.error(400, "validation_error", "price (bid) or volume (ask) is required")
        total = amount if side == "bid" else amount * self.prices[market]
        if not total >= MIN_ORDER_KRW:
            return Reply.error(400, f"under_min_total_{side}", f"below {MIN_ORDER_KRW:.0f} KRW")
        currency = "KRW" if side == "bid" else market.split("-", 1)[1]
        needed = amount * (1 + FEE_RATE) if side == "bid" else amount
        held = self.holdings.get(currency, Holding(0.0)).balance
        if held + 1e-9 < needed:
            return Reply.error(
                400, f"insufficient_funds_{side}", "매수/매도 가능 잔고가 부족합니다."
            )
        return None

    def _execute(self, params: dict[str, str]) -> _Order:
        market = params["market"]
        coin, price = market.split("-", 1)[1], self.prices[market]
        krw, held = self.holdings["KRW"], self.holdings.setdefault(coin, Holding(0.0))
        if params["side"] == "bid":
            volume = _floor8(float(params["price"]) / price)
            funds = volume * price  # the remainder below one volume step is not spent
            fee = funds * FEE_RATE
            cost = held.avg_buy_price * held.balance + funds
            held.balance += volume
            held.avg_buy_price = cost / held.balance
            krw.balance -= funds + fee
        else:
            volume = float(params["volume"])
            funds = volume * price
            fee = funds * FEE_RATE
            held.balance -= volume
            krw.balance += funds - fee
        created = pd.Timestamp(self.now).strftime("%Y-%m-%dT%H:%M:%S") + KST_OFFSET
        return _Order(dict(params), volume, price, funds, fee, created, self._hold_lookups)
