"""Facts of the exchange and of time that every package shares, each defined here and only here.

They live in `features` because every other package depends on it: the fee that a label must clear
(features), the fee a backtest charges (train, trading), the minimum order the policy respects
(trading) and the time zone of every candle (all of them) are one fact each, imported everywhere.

Upbit's KRW market (https://docs.upbit.com/kr/docs/krw-market-info): 0.05 % fee per side, orders
of at least 5,000 KRW. Candle times are open times in KST (UTC+9, no daylight saving), on the hour.
The KRW tick table is an order-pricing rule and stays with the brokers (`trading.upbit_rules`).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pandas as pd

FEE_RATE = 0.0005
"""Upbit's fee on an executed KRW amount, per side (a buy and a sell each pay it)."""
ROUND_TRIP_FEE = 2 * FEE_RATE
"""A buy and its sell: what a trade must earn before it earns anything."""
MIN_ORDER_KRW = 5_000.0
"""The smallest order total Upbit accepts, fee excluded; a holding worth less cannot be sold."""

KST = timezone(timedelta(hours=9), name="KST")
"""Upbit's candle time zone (Korea keeps no daylight saving time)."""
HOUR = pd.Timedelta(hours=1)
HOUR_NS = HOUR.value

MARKET_PATTERN = re.compile(r"^[A-Z]{2,5}-[A-Z0-9]{2,10}$")
"""Upbit market codes (KRW-BTC, BTC-ETH, ...). Checked before a name becomes a path component or
a deployment name, so "../x" or "a/b" can never reach a filesystem."""


class InvalidMarketError(ValueError):
    """A market name that is not an Upbit market code."""


class UnknownMarketError(LookupError):
    """A well-formed market that a candle source or the model registry does not hold; the message
    lists the markets it does hold."""

    def __init__(self, market: str, known: list[str]) -> None:
        super().__init__(f"unknown market {market!r}; known: {', '.join(known) or 'none'}")
        self.market = market
        self.known = known


def check_market(market: object) -> str:
    """`market` itself when it is an Upbit market code, else InvalidMarketError naming it."""
    if not isinstance(market, str) or not MARKET_PATTERN.fullmatch(market):
        raise InvalidMarketError(
            f"invalid market name {market!r}: expected an Upbit code like KRW-BTC"
            f" (pattern {MARKET_PATTERN.pattern})"
        )
    return market


def now_kst() -> datetime:
    """The current wall-clock time in KST as a tz-naive datetime, comparable with candle times."""
    return datetime.now(KST).replace(tzinfo=None)
