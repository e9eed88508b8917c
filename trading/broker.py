"""The broker seam: what the trading loop and the backtester may ask of an exchange account.

`PaperBroker` and `UpbitBroker` implement it; callers take the protocol, so a test or a live run
swaps the adapter, not the loop. Every order carries a client `identifier`
(`market|candle hour|side`, see `order_identifier`) that the ledger records before the order is
sent, so a restart can ask the broker what became of it instead of sending it again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from features.domain import Order, Side


class OrderState(enum.StrEnum):
    """Upbit's order states, plus REJECTED for an order the exchange refused outright."""

    WAIT = "wait"  # accepted, not (fully) filled yet
    DONE = "done"  # filled
    CANCEL = "cancel"  # cancelled; may be partly filled (`volume` > 0)
    REJECTED = "rejected"  # refused before it reached the book (its identifier is still spent)


@dataclass(frozen=True)
class Fill:
    """What became of one order: the executed part, its average price and the fee paid."""

    identifier: str
    market: str
    side: Side
    state: OrderState
    volume: float  # coin units executed
    price: float  # average execution price in KRW (0 when nothing executed)
    fee: float  # KRW paid in fees
    uuid: str = ""  # the exchange's id for the order ("" for paper)

    @property
    def funds(self) -> float:
        """KRW value of the executed part, fee excluded."""
        return self.volume * self.price


@dataclass(frozen=True)
class Balance:
    currency: str  # "KRW", "BTC", ...
    balance: float  # free units
    locked: float = 0.0  # units held by open orders
    avg_buy_price: float = 0.0  # KRW


class BrokerError(RuntimeError):
    """An exchange call failed; the message says which call and why, never a key."""


class OrderRejected(BrokerError):
    """The exchange refused the order (bad size, insufficient funds, reused identifier...)."""


class BrokerRateLimited(BrokerError):
    """429 persisted past the back-off budget; the caller may try again next hour."""


class BrokerBanned(BrokerError):
    """418: the exchange has banned this client for a while; the loop must stop and alarm."""


class Broker(Protocol):
    # True when the exchange keeps orders beyond this process (Upbit): an order the ledger sent
    # but cannot find again may still exist, so it is never resent. False for the paper broker,
    # whose book is this process's memory (rebuilt from the ledger's fills): an order it lost
    # died with the process.
    durable: bool

    def place(self, order: Order, reference_price: float) -> Fill:
        """Send a market order; `reference_price` is the candle close (the paper fill price)."""
        ...

    def lookup(self, identifier: str) -> Fill | None:
        """The order sent under `identifier`, or None when the exchange never saw it."""
        ...

    def balances(self) -> dict[str, Balance]:
        """Every currency the account holds, keyed by currency code."""
        ...


def order_identifier(market: str, hour: datetime, side: Side) -> str:
    """`market|candle hour|side`: at most one order per market, hour and side, stable across
    restarts. Upbit never accepts an identifier twice, so an order refused in an hour is not tried
    again in that hour. (Ledgers written before this scheme hold `...|side|0`: the ledger reads
    both, see `trading.ledger_rows.LEGACY_SUFFIX`.)"""
    return f"{market}|{hour:%Y-%m-%dT%H:00}|{side.value}"
