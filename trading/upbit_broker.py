"""`UpbitBroker`: the Broker seam over Upbit's private REST API, for live trading.

Balances go through pyupbit (routed by `UpbitHttp`). Orders do not: pyupbit 0.2.34's market-order
calls take no `identifier` and cannot look one up, and its JWT helper hashes the percent-encoded
query string while Upbit hashes it unencoded, which breaks for identifiers such as
`KRW-BTC|2025-09-30T08:00|bid`. So the broker signs `POST /v1/orders` and
`GET /v1/order?identifier=` itself (PyJWT, HS256, `query_hash` = SHA512 hex of
`unquote(urlencode(params))`, as Upbit's authentication guide specifies) and sends them through
`UpbitHttp.send`, which gives them the same base URL, timeout, rate budget and redaction.

Every signed attempt carries a fresh nonce, so 429s are retried here (re-signed) under
`UpbitHttp`'s `RetryPolicy` and end in `BrokerRateLimited`; a 418 raises `BrokerBanned` at once.

Retry contract for callers (the trading loop):
- `place` never sends an order twice, except after a 429, which Upbit answers before the order
  is taken. When the reply to the POST is lost (5xx, timeout, unreadable body) it looks the
  identifier up and returns what Upbit has, or raises `OrderOutcomeUnknown`.
- After any error from `place`, call `lookup(identifier)` first: a Fill means the order exists
  (record it, do not resend). Upbit refuses an identifier that was ever sent, even when its
  order was refused, so a refused identifier (one market, hour and side) is spent for good.
- Sending an identifier again is safe: if Upbit holds an order under it for the same market and
  side, `place` returns that order's Fill instead of failing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Mapping
from decimal import ROUND_FLOOR, Decimal
from typing import Any, TypeVar
from urllib.parse import unquote, urlencode

import jwt
import pyupbit
import requests

from features.domain import Order, Side
from features.upbit_http import (
    UPBIT_API,
    RetryPolicy,
    UpbitBadReply,
    UpbitBanned,
    UpbitError,
    UpbitHttp,
    UpbitRateLimited,
    UpbitUnavailable,
    redact,
)
from trading.broker import (
    Balance,
    BrokerBanned,
    BrokerError,
    BrokerRateLimited,
    Fill,
    OrderRejected,
    OrderState,
)

logger = logging.getLogger(__name__)

ACCESS_KEY_ENV = "UPBIT_ACCESS_KEY"
SECRET_KEY_ENV = "UPBIT_SECRET_KEY"
ORDERS_PATH = "/v1/orders"
ORDER_PATH = "/v1/order"
OPEN_ORDERS_PATH = "/v1/orders/open"
OPEN_ORDERS_PAGE = 100  # Upbit's largest page of open orders
JSON_UTF8 = "application/json; charset=utf-8"
VOLUME_STEP = Decimal("0.00000001")  # Upbit takes coin volumes to 8 decimal places
ORDER_NOT_FOUND = "order_not_found"
# Upbit's error table names no error for a reused identifier; the stand-in calls it this. The
# broker does not rely on the name: any refusal is checked against a lookup of the identifier.
DUPLICATE_IDENTIFIER = "duplicate_identifier"

T = TypeVar("T")


class MissingUpbitKeys(RuntimeError):
    """Live trading was asked for without the API keys in the environment."""


class OrderOutcomeUnknown(BrokerError):
    """The order may or may not have reached Upbit; look its identifier up before any retry."""


def upbit_query_string(params: Mapping[str, str]) -> str:
    """What Upbit hashes into `query_hash`: the parameters in order, not percent-encoded."""
    return unquote(urlencode(list(params.items()), doseq=True))


def order_body(order: Order) -> dict[str, str]:
    """Upbit's market order: a bid spends `price` KRW (whole won, floored; the fee comes on top),
    an ask sells `volume` coins (8 decimals, floored so it never exceeds what was asked)."""
    if not order.identifier:
        raise ValueError("an Upbit order needs an identifier: it is what makes a resend safe")
    if order.side is Side.BID:
        amount = {"ord_type": "price", "price": str(math.floor(order.krw_amount))}
    else:
        volume = Decimal(repr(order.volume)).quantize(VOLUME_STEP, rounding=ROUND_FLOOR)
        amount = {"ord_type": "market", "volume": f"{volume:f}"}
    return {
        "market": order.market,
        "side": order.side.value,
        **amount,
        "identifier": order.identifier,
    }


def fill_from_order(payload: Any, identifier: str = "") -> Fill:
    """A Fill from Upbit's order object; the price is the trades' volume-weighted average."""
    if not isinstance(payload, Mapping):
        raise ValueError(f"an order object was expected, got {type(payload).__name__}")
    trades = payload.get("trades") or []
    traded = sum(float(t["volume"]) for t in trades)
    funds = sum(float(t["funds"]) for t in trades)
    return Fill(
        identifier=str(payload.get("identifier") or identifier),
        market=str(payload["market"]),
        side=Side(payload["side"]),
        state=OrderState(payload["state"]),
        volume=float(payload.get("executed_volume") or 0.0),
        price=funds / traded if traded > 0 else 0.0,
        fee=float(payload.get("paid_fee") or 0.0),
        uuid=str(payload.get("uuid", "")),
    )


def balances_from_accounts(rows: Any) -> dict[str, Balance]:
    if not isinstance(rows, list):
        raise ValueError(f"a list of accounts was expected, got {type(rows).__name__}")
    return {
        str(row["currency"]): Balance(
            currency=str(row["currency"]),
            balance=float(row["balance"]),
            locked=float(row.get("locked") or 0.0),
            avg_buy_price=float(row.get("avg_buy_price") or 0.0),
        )
        for row in rows
    }


class UpbitBroker:
    """Market orders and balances on one Upbit account; keys stay private and out of messages.

    `fill_wait_s` bounds how long `place` polls an accepted order that still reads `wait`
    (market orders fill within moments); after it, the Fill comes back with state WAIT.
    """

    durable = True  # Upbit keeps every order: one the loop cannot find may still exist

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        *,
        base_url: str = UPBIT_API,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        fill_wait_s: float = 5.0,
        poll_interval_s: float = 0.25,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not access_key or not secret_key:
            raise MissingUpbitKeys("UpbitBroker needs both an access key and a secret key")
        self._access_key = access_key
        self._secret_key = secret_key
        self._secrets = (access_key, secret_key)
        self.http = UpbitHttp(
            base_url, timeout=timeout, retry=retry, sleep=sleep, secrets=self._secrets
        )
        self._client = pyupbit.Upbit(access_key, secret_key)
        self.fill_wait_s = fill_wait_s
        self.poll_interval_s = poll_interval_s
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def from_env(
        cls, *, base_url: str = UPBIT_API, environ: Mapping[str, str] | None = None, **options: Any
    ) -> UpbitBroker:
        """The broker for the keys in UPBIT_ACCESS_KEY / UPBIT_SECRET_KEY; a missing or empty
        one is an error that names the variable (never a value), so live trading cannot start
        half-configured."""
        env = os.environ if environ is None else environ
        missing = [name for name in (ACCESS_KEY_ENV, SECRET_KEY_ENV) if not env.get(name)]
        if missing:
            raise MissingUpbitKeys(
                "live trading on Upbit needs its API keys in the environment; missing or empty: "
                + ", ".join(missing)
            )
        return cls(env[ACCESS_KEY_ENV], env[SECRET_KEY_ENV], base_url=base_url, **options)

    def __repr__(self) -> str:
        return f"UpbitBroker(base_url={self.http.base_url!r})"

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> UpbitBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the Broker protocol ---------------------------------------------------------------------
    def balances(self) -> dict[str, Balance]:
        try:
            rows = self._with_backoff(lambda: self.http.call(self._client.get_balances))
        except UpbitError as exc:
            raise self._broker_error("balances", exc) from exc
        return self._read("balances", balances_from_accounts, rows)

    def lookup(self, identifier: str) -> Fill | None:
        params = {"identifier": identifier}
        try:
            payload = self._signed("GET", ORDER_PATH, params=params).json()
        except UpbitError as exc:
            if exc.status == 404 and exc.error_name == ORDER_NOT_FOUND:
                return None
            raise self._broker_error(f"lookup({identifier})", exc) from exc
        return self._read(f"lookup({identifier})", fill_from_order, payload, identifier)

    def open_orders(self) -> list[Fill]:
        """Every order still waiting at Upbit (`GET /v1/orders/open`, state wait, all markets),
        page by page; what a restart reconciles against the ledger."""
        found: list[Fill] = []
        for page in range(1, 1000):
            params = {"state": "wait", "page": str(page), "limit": str(OPEN_ORDERS_PAGE)}
            try:
                rows = self._signed("GET", OPEN_ORDERS_PATH, params=params).json()
            except UpbitError as exc:
                raise self._broker_error("open_orders", exc) from exc
            if not isinstance(rows, list):
                reason = f"UpbitBroker.open_orders: a list was expected, got {rows!r:.160}"
                raise BrokerError(self._clean(reason))
            found += [self._read("open_orders", fill_from_order, row) for row in rows]
            if len(rows) < OPEN_ORDERS_PAGE:
                break
        return found

    def place(self, order: Order, reference_price: float) -> Fill:
        """Send a market order and return its Fill; `reference_price` (the paper fill price) is
        not sent: Upbit prices a market order itself."""
        body = order_body(order)
        what = f"place({order.identifier})"
        try:
            reply = self._signed("POST", ORDERS_PATH, body=body).json()
        except (UpbitUnavailable, UpbitBadReply) as exc:
            return self._recover_lost_reply(order, exc)
        except UpbitError as exc:
            if exc.status == 400:
                return self._refused(order, exc)
            raise self._broker_error(what, exc) from exc
        accepted = self._read(what, fill_from_order, reply, order.identifier)
        return self._settled(order, accepted)

    # -- placing ---------------------------------------------------------------------------------
    def _settled(self, order: Order, accepted: Fill) -> Fill:
        """Poll the accepted order until it leaves `wait`; a failing lookup does not undo the
        acceptance, so it is logged and the accepted (WAIT) Fill is returned, except for a ban,
        which the loop must see."""
        try:
            return self._poll(order.identifier) or accepted
        except BrokerBanned:
            raise
        except BrokerError as exc:
            logger.warning("order %s accepted, fill not read yet: %s", order.identifier, exc)
            return accepted

    def _recover_lost_reply(self, order: Order, lost: UpbitError) -> Fill:
        """The POST may have reached Upbit: find the order by identifier, never resend it."""
        what = f"place({order.identifier})"
        try:
            found = self._poll(order.identifier)
        except BrokerBanned:
            raise
        except BrokerError as exc:
            reason = (
                f"UpbitBroker.{what}: the reply to POST {ORDERS_PATH} was lost ({lost.reason}) "
                f"and the lookup failed too ({exc}); the outcome is unknown: look the identifier "
                "up before sending anything for this hour"
            )
            raise OrderOutcomeUnknown(self._clean(reason)) from lost
        if found is None:
            reason = (
                f"UpbitBroker.{what}: the reply to POST {ORDERS_PATH} was lost ({lost.reason}) "
                f"and Upbit shows no order under this identifier after {self.fill_wait_s} s; the "
                "outcome is unknown: look it up again before sending anything for this hour"
            )
            raise OrderOutcomeUnknown(self._clean(reason)) from lost
        return found

    def _refused(self, order: Order, exc: UpbitError) -> Fill:
        """A 400. If Upbit already holds an order under this identifier for the same market and
        side (a resend after a restart), that order is the answer; otherwise it is a refusal."""
        refusal = f"UpbitBroker.place({order.identifier}): {exc.reason}"
        try:
            existing = self.lookup(order.identifier)
        except BrokerBanned:
            raise
        except BrokerError as lookup_failure:
            note = f"; looking the identifier up failed too: {lookup_failure}"
            raise OrderRejected(self._clean(refusal + note)) from exc
        if existing is None:
            note = " (the identifier is spent: Upbit never accepts it again)"
        elif (existing.market, existing.side) == (order.market, order.side):
            logger.info("order %s was already placed; returning its fill", order.identifier)
            return self._poll(order.identifier) or existing
        else:
            note = f" (Upbit holds a {existing.side} {existing.market} order under it)"
        raise OrderRejected(self._clean(refusal + note)) from exc

    def _poll(self, identifier: str) -> Fill | None:
        deadline = self._clock() + self.fill_wait_s
        fill = self.lookup(identifier)
        while (fill is None or fill.state is OrderState.WAIT) and self._clock() < deadline:
            self._sleep(self.poll_interval_s)
            fill = self.lookup(identifier)
        return fill

    # -- signing and sending ---------------------------------------------------------------------
    def _authorization(self, params: Mapping[str, str] | None) -> dict[str, str]:
        payload = {"access_key": self._access_key, "nonce": str(uuid.uuid4())}
        if params:
            digest = hashlib.sha512(upbit_query_string(params).encode()).hexdigest()
            payload |= {"query_hash": digest, "query_hash_alg": "SHA512"}
        token = jwt.encode(payload, self._secret_key, algorithm="HS256")
        return {"Authorization": f"Bearer {token}"}

    def _signed(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """One signed call, re-signed for every attempt (Upbit accepts a nonce once)."""

        def attempt() -> requests.Response:
            headers = self._authorization(params if body is None else body)
            if body is None:
                return self.http.send(method, UPBIT_API + path, params=params, headers=headers)
            headers |= {"Content-Type": JSON_UTF8, "Accept": "application/json"}
            data = json.dumps(body).encode()
            return self.http.send(method, UPBIT_API + path, data=data, headers=headers)

        return self._with_backoff(attempt)

    def _with_backoff(self, send: Callable[[], T]) -> T:
        """Retry 429s under the http's RetryPolicy; anything else goes straight to the caller."""
        policy = self.http.retry
        for attempt in range(policy.retries + 1):
            try:
                return send()
            except UpbitRateLimited as exc:
                if attempt >= policy.retries:
                    reason = f"{exc.reason} (still 429 after {attempt + 1} attempts)"
                    raise UpbitRateLimited(
                        reason, status=exc.status, error_name=exc.error_name
                    ) from exc
                self._sleep(policy.delay(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

    # -- errors ----------------------------------------------------------------------------------
    def _broker_error(self, what: str, exc: UpbitError) -> BrokerError:
        kind = BrokerError
        if isinstance(exc, UpbitBanned):
            kind = BrokerBanned
        elif isinstance(exc, UpbitRateLimited):
            kind = BrokerRateLimited
        return kind(self._clean(f"UpbitBroker.{what}: {exc.reason}"))

    def _read(self, what: str, parse: Callable[..., T], payload: Any, *args: Any) -> T:
        try:
            return parse(payload, *args)
        except (KeyError, TypeError, ValueError) as exc:
            snippet = repr(payload)[:160]
            reason = (
                f"UpbitBroker.{what}: unreadable reply ({type(exc).__name__}: {exc}): {snippet}"
            )
            raise BrokerError(self._clean(reason)) from exc

    def _clean(self, text: str) -> str:
        return redact(text, self._secrets)
