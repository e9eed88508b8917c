"""The live broker through the real pyupbit + UpbitHttp against a local Upbit private API that
checks every JWT and query hash. A user relies on orders that fill with the fee, on never paying
twice for one order (lost replies, resends, restarts), on refusals and rate limits that say why,
and on keys that never show up in an error."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import jwt
import pandas as pd
import pytest
import pyupbit
import requests

from features.domain import Order, Side
from features.exchange import FEE_RATE
from features.upbit_http import RetryPolicy
from trading.broker import (
    Balance,
    BrokerBanned,
    BrokerError,
    BrokerRateLimited,
    OrderRejected,
    OrderState,
    order_identifier,
)
from trading.upbit_broker import MissingUpbitKeys, OrderOutcomeUnknown, UpbitBroker

from standins.upbit_private import ACCESS_KEY, SECRET_KEY, UpbitPrivateStandIn
from standins.upbit_server import Fault

HOUR = datetime(2025, 9, 30, 8)
START_KRW = 1_000_000.0
START_ETH = 0.5
FAST = {
    "timeout": 2.0,
    "retry": RetryPolicy(retries=2, backoff_s=0.01, max_backoff_s=0.02),
    "fill_wait_s": 1.0,
    "poll_interval_s": 0.01,
}


@pytest.fixture(scope="module")
def candles(ohlcv_dir: Path) -> dict[str, pd.DataFrame]:
    return {m: pd.read_parquet(ohlcv_dir / f"{m}_minute60.parquet").iloc[-48:] for m in MARKETS}


MARKETS = ("KRW-BTC", "KRW-ETH")


@pytest.fixture
def standin(candles: dict[str, pd.DataFrame]) -> Iterator[UpbitPrivateStandIn]:
    balances = {"KRW": START_KRW, "ETH": START_ETH}
    with UpbitPrivateStandIn(candles, balances=balances, per_second=10_000) as server:
        yield server


@pytest.fixture
def broker(standin: UpbitPrivateStandIn) -> Iterator[UpbitBroker]:
    with UpbitBroker(ACCESS_KEY, SECRET_KEY, base_url=standin.url, **FAST) as live:
        yield live


def bid(krw: float, later: int = 0, market: str = "KRW-BTC") -> Order:
    """The bid of the hour `later` hours after HOUR."""
    ident = order_identifier(market, HOUR + timedelta(hours=later), Side.BID)
    return Order(market, Side.BID, krw_amount=krw, identifier=ident)


def ask(volume: float, later: int = 0, market: str = "KRW-ETH") -> Order:
    ident = order_identifier(market, HOUR + timedelta(hours=later), Side.ASK)
    return Order(market, Side.ASK, volume=volume, identifier=ident)


def claims(request) -> dict:
    token = request.headers["Authorization"].removeprefix("Bearer ")
    return jwt.decode(token, options={"verify_signature": False})


def leaked(exc: BaseException, *secrets: str) -> bool:
    """True if a secret or any JWT shows anywhere in the exception or its causes."""
    while exc is not None:
        text = f"{exc} {exc!r}"
        if "eyJ" in text or any(secret in text for secret in secrets):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# -- balances and fills -----------------------------------------------------------------------


def test_balances_parsed_from_pyupbit_accounts(
    standin: UpbitPrivateStandIn, broker: UpbitBroker
) -> None:
    assert broker.balances() == {
        "KRW": Balance("KRW", START_KRW, 0.0, 0.0),
        "ETH": Balance("ETH", START_ETH, 0.0, 0.0),
    }
    (request,) = standin.requests("/v1/accounts")
    payload = claims(request)  # signed by pyupbit itself: no parameters, so no query_hash
    assert payload["access_key"] == ACCESS_KEY and uuid.UUID(payload["nonce"]).version == 4
    assert "query_hash" not in payload


def test_market_buy_fills_with_fee_and_moves_balances(
    standin: UpbitPrivateStandIn, broker: UpbitBroker
) -> None:
    price = standin.prices["KRW-BTC"]
    order = bid(100_000.0)
    fill = broker.place(order, reference_price=price)

    assert (fill.identifier, fill.market, fill.side, fill.state) == (
        order.identifier,
        "KRW-BTC",
        Side.BID,
        OrderState.DONE,
    )
    assert fill.volume == pytest.approx(100_000.0 / price, abs=1e-8)  # Upbit's volume step
    assert fill.price == pytest.approx(price)
    assert fill.funds == pytest.approx(100_000.0, rel=1e-4)
    assert fill.fee == pytest.approx(fill.funds * FEE_RATE) and fill.uuid
    held = broker.balances()
    assert held["KRW"].balance == pytest.approx(START_KRW - fill.funds - fill.fee)
    assert held["BTC"].balance == pytest.approx(fill.volume)
    assert held["BTC"].avg_buy_price == pytest.approx(price)

    (post,) = standin.requests("/v1/orders")
    body = json.loads(post.body)
    assert body == {
        "market": "KRW-BTC",
        "side": "bid",
        "ord_type": "price",
        "price": "100000",
        "identifier": "KRW-BTC|2025-09-30T08:00|bid",
    }
    signed = claims(post)  # the hash of the unencoded body, as Upbit specifies
    query = "&".join(f"{k}={v}" for k, v in body.items())
    assert signed["query_hash"] == hashlib.sha512(query.encode()).hexdigest()
    assert signed["query_hash_alg"] == "SHA512"


def test_market_sell_fills_with_fee(standin: UpbitPrivateStandIn, broker: UpbitBroker) -> None:
    price = standin.prices["KRW-ETH"]
    fill = broker.place(ask(START_ETH), reference_price=price)

    assert fill.state is OrderState.DONE and fill.side is Side.ASK
    assert fill.volume == pytest.approx(START_ETH) and fill.price == pytest.approx(price)
    assert fill.fee == pytest.approx(START_ETH * price * FEE_RATE)
    held = broker.balances()
    assert held["KRW"].balance == pytest.approx(START_KRW + fill.funds - fill.fee)
    assert "ETH" not in held  # Upbit drops a currency once nothing of it is held
    assert json.loads(standin.requests("/v1/orders")[0].body)["volume"] == "0.50000000"


def test_place_polls_an_order_that_still_reads_wait(
    standin: UpbitPrivateStandIn, broker: UpbitBroker
) -> None:
    standin.hold_fills(3)
    fill = broker.place(bid(10_000.0), reference_price=0.0)
    assert fill.state is OrderState.DONE and fill.volume > 0
    assert len(standin.requests("/v1/order")) == 4


# -- authentication ---------------------------------------------------------------------------


def test_wrong_secret_is_refused_naming_the_call_without_leaking_it(
    standin: UpbitPrivateStandIn,
) -> None:
    wrong = SECRET_KEY[:-4] + "oops"
    with UpbitBroker(ACCESS_KEY, wrong, base_url=standin.url, **FAST) as broker:
        calls = {
            "balances": broker.balances,
            "lookup": lambda: broker.lookup("KRW-BTC|2025-09-30T08:00|bid"),
            "place": lambda: broker.place(bid(10_000.0), reference_price=0.0),
        }
        for name, call in calls.items():
            with pytest.raises(BrokerError) as caught:
                call()
            message = str(caught.value)
            assert type(caught.value) is BrokerError, name
            assert f"UpbitBroker.{name}" in message and "HTTP 401 jwt_verification" in message
            assert not leaked(caught.value, wrong, SECRET_KEY), name
        assert wrong not in repr(broker) and ACCESS_KEY not in repr(broker)
    assert standin.order_count() == 0


def test_stand_in_checks_query_hash_and_nonce_as_upbit_does(
    standin: UpbitPrivateStandIn,
) -> None:
    def token(params: dict[str, str] | None = None, nonce: str | None = None) -> dict[str, str]:
        payload = {"access_key": ACCESS_KEY, "nonce": nonce or str(uuid.uuid4())}
        if params:
            query = "&".join(f"{k}={v}" for k, v in params.items())
            payload |= {
                "query_hash": hashlib.sha512(query.encode()).hexdigest(),
                "query_hash_alg": "SHA512",
            }
        return {"Authorization": f"Bearer {jwt.encode(payload, SECRET_KEY, algorithm='HS256')}"}

    def error(response: requests.Response) -> tuple[int, str]:
        return response.status_code, response.json()["error"]["name"]

    ident = "KRW-BTC|2025-09-30T08:00|bid"
    order_url = f"{standin.url}/v1/order"
    signed_for_other = token({"identifier": ident + "x"})
    tampered = requests.get(order_url, params={"identifier": ident}, headers=signed_for_other)
    assert error(tampered) == (401, "invalid_query_payload")
    ok = requests.get(order_url, params={"identifier": ident}, headers=token({"identifier": ident}))
    assert error(ok) == (404, "order_not_found")  # authenticated; there is no such order

    once = token()
    assert requests.get(f"{standin.url}/v1/accounts", headers=once).status_code == 200
    assert error(requests.get(f"{standin.url}/v1/accounts", headers=once)) == (401, "nonce_used")

    # pyupbit's helper hashes the percent-encoded query: Upbit refuses it for such identifiers,
    # which is why the broker signs its own order calls.
    encoded = pyupbit.Upbit(ACCESS_KEY, SECRET_KEY)._request_headers({"identifier": ident})
    refused = requests.get(order_url, params={"identifier": ident}, headers=encoded)
    assert error(refused) == (401, "invalid_query_payload")


# -- identifiers, lookups and lost replies ----------------------------------------------------


def test_lookup_by_identifier(standin: UpbitPrivateStandIn, broker: UpbitBroker) -> None:
    placed = broker.place(bid(20_000.0), reference_price=0.0)
    assert broker.lookup(placed.identifier) == placed
    assert broker.lookup(bid(20_000.0, later=7).identifier) is None


def test_identifier_is_refused_even_after_a_rejected_order_and_the_next_hours_succeeds(
    standin: UpbitPrivateStandIn, broker: UpbitBroker
) -> None:
    with pytest.raises(OrderRejected, match="HTTP 400 under_min_total_bid"):
        broker.place(bid(4_000.0), reference_price=0.0)
    with pytest.raises(
        OrderRejected, match="HTTP 400 duplicate_identifier.*never accepts it again"
    ):
        broker.place(bid(10_000.0), reference_price=0.0)
    assert standin.order_count() == 0

    fill = broker.place(bid(10_000.0, later=1), reference_price=0.0)
    assert fill.state is OrderState.DONE and fill.identifier == "KRW-BTC|2025-09-30T09:00|bid"
    assert standin.order_count() == 1


def test_insufficient_funds_is_a_rejection_with_upbits_name(broker: UpbitBroker) -> None:
    with pytest.raises(OrderRejected, match="insufficient_funds_bid"):
        broker.place(bid(START_KRW), reference_price=0.0)  # the fee comes on top
    with pytest.raises(OrderRejected, match="insufficient_funds_ask"):
        broker.place(ask(START_ETH * 2), reference_price=0.0)


def test_resending_an_accepted_identifier_returns_that_order(
    standin: UpbitPrivateStandIn, broker: UpbitBroker
) -> None:
    first = broker.place(bid(30_000.0), reference_price=0.0)
    again = broker.place(bid(30_000.0), reference_price=0.0)  # e.g. after a restart
    assert again == first and standin.order_count() == 1
    assert broker.balances()["KRW"].balance == pytest.approx(START_KRW - first.funds - first.fee)


@pytest.mark.parametrize("lost", [{"status": 500}, {"status": 200, "delay_s": 1.0}])
def test_lost_reply_after_the_order_was_placed_is_not_resent(
    standin: UpbitPrivateStandIn, lost: dict
) -> None:
    standin.lose_order_replies(1, **lost)  # a 500, or a reply later than the client waits
    with UpbitBroker(ACCESS_KEY, SECRET_KEY, base_url=standin.url, **FAST | {"timeout": 0.4}) as b:
        fill = b.place(bid(50_000.0), reference_price=0.0)
        assert fill.state is OrderState.DONE and fill.funds == pytest.approx(50_000.0, rel=1e-4)
        assert len(standin.requests("/v1/orders")) == 1
        assert b.balances()["KRW"].balance == pytest.approx(START_KRW - fill.funds - fill.fee)


def test_lost_reply_with_no_order_behind_it_is_an_unknown_outcome(
    standin: UpbitPrivateStandIn,
) -> None:
    standin.inject(Fault.server_error(502), path="/v1/orders")  # refused before the book
    options = FAST | {"fill_wait_s": 0.1}
    with UpbitBroker(ACCESS_KEY, SECRET_KEY, base_url=standin.url, **options) as broker:
        with pytest.raises(OrderOutcomeUnknown, match="HTTP 502.*outcome is unknown") as caught:
            broker.place(bid(10_000.0), reference_price=0.0)
        assert "KRW-BTC|2025-09-30T08:00|bid" in str(caught.value)
        assert len(standin.requests("/v1/orders")) == 1
        assert broker.lookup(bid(10_000.0).identifier) is None  # the caller's first step
        assert broker.place(bid(10_000.0, later=1), reference_price=0.0).volume > 0


# -- rate limits ------------------------------------------------------------------------------


def test_429_backs_off_then_succeeds_with_a_fresh_nonce(
    standin: UpbitPrivateStandIn, broker: UpbitBroker
) -> None:
    standin.inject(Fault.rate_limited(), path="/v1/accounts")
    assert broker.balances()["KRW"].balance == START_KRW
    nonces = {claims(r)["nonce"] for r in standin.requests("/v1/accounts")}
    assert len(nonces) == 2

    standin.inject(Fault.rate_limited(), path="/v1/orders")
    fill = broker.place(bid(10_000.0), reference_price=0.0)
    assert fill.state is OrderState.DONE
    assert len(standin.requests("/v1/orders")) == 2 and standin.order_count() == 1


def test_persistent_429_raises_rate_limited(
    standin: UpbitPrivateStandIn, broker: UpbitBroker
) -> None:
    standin.inject(Fault.rate_limited(), times=3, path="/v1/accounts")
    with pytest.raises(BrokerRateLimited, match="balances.*429.*after 3 attempts"):
        broker.balances()
    assert len(standin.requests("/v1/accounts")) == 3


def test_418_is_a_ban_at_once(standin: UpbitPrivateStandIn, broker: UpbitBroker) -> None:
    standin.inject(Fault.banned(), path="/v1/orders")
    with pytest.raises(BrokerBanned, match="HTTP 418"):
        broker.place(bid(10_000.0), reference_price=0.0)
    assert len(standin.requests()) == 1  # no retry, no lookup
    standin.inject(Fault.banned(), path="/v1/accounts")
    with pytest.raises(BrokerBanned, match="balances"):
        broker.balances()
    assert len(standin.requests("/v1/accounts")) == 1


# -- keys -------------------------------------------------------------------------------------


def test_from_env_names_the_missing_variable_never_a_value(
    standin: UpbitPrivateStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UPBIT_ACCESS_KEY", raising=False)
    monkeypatch.delenv("UPBIT_SECRET_KEY", raising=False)
    with pytest.raises(MissingUpbitKeys, match="empty: UPBIT_ACCESS_KEY, UPBIT_SECRET_KEY$"):
        UpbitBroker.from_env(base_url=standin.url)

    monkeypatch.setenv("UPBIT_ACCESS_KEY", ACCESS_KEY)
    monkeypatch.setenv("UPBIT_SECRET_KEY", "")  # empty counts as missing
    with pytest.raises(MissingUpbitKeys) as caught:
        UpbitBroker.from_env(base_url=standin.url)
    assert "UPBIT_SECRET_KEY" in str(caught.value)
    assert "UPBIT_ACCESS_KEY" not in str(caught.value) and ACCESS_KEY not in str(caught.value)

    monkeypatch.setenv("UPBIT_SECRET_KEY", SECRET_KEY)
    with UpbitBroker.from_env(base_url=standin.url, **FAST) as broker:
        assert broker.balances()["KRW"].balance == START_KRW
