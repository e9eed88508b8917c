"""`PaperBroker`: an in-memory Upbit account that fills market orders at the candle close.

It refuses what Upbit refuses (orders under 5,000 KRW, not enough KRW for amount + fee, not
enough coin, a reused identifier) with `OrderRejected`, so a strategy that works on paper does
not fail on its first live order for a reason paper hid. Fill arithmetic:
    bid: price = close x (1 + slippage), volume = krw_amount / price, fee = krw_amount x FEE_RATE,
         KRW -= krw_amount + fee
    ask: price = close x (1 - slippage), funds = volume x price, fee = funds x FEE_RATE,
         KRW += funds - fee
The minimum-order check values both sides at the close (`reference_price`), as the policy does.

State is exactly the replay of its fills: a restarted loop rebuilds the account by passing the
ledger's fills to the constructor, and gets the same balances as before the restart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from features.domain import AccountState, Order, Side, drawdown
from features.exchange import MIN_ORDER_KRW
from trading.broker import Balance, Fill, OrderRejected, OrderState
from trading.upbit_rules import fee

KRW = "KRW"
_TOLERANCE = 1e-9  # relative slack for float round-off when an order uses the whole balance


@dataclass
class _Holding:
    volume: float = 0.0
    avg_buy_price: float = 0.0


def currency_of(market: str) -> str:
    """`KRW-BTC` -> `BTC`; only KRW markets are tradable here."""
    quote, sep, base = market.partition("-")
    if quote != KRW or not sep or not base:
        raise OrderRejected(f"paper broker trades KRW markets only, got {market!r}")
    return base


class PaperBroker:
    """The Broker protocol over simulated balances; not thread-safe (one loop owns it)."""

    durable = False  # its book lives in this process: an order it never filled died with it

    def __init__(
        self, initial_krw: float, slippage_bps: float = 0.0, fills: Iterable[Fill] = ()
    ) -> None:
        if not math.isfinite(initial_krw) or initial_krw < 0:
            raise ValueError(f"initial_krw must be finite and >= 0, got {initial_krw}")
        if not math.isfinite(slippage_bps) or not 0 <= slippage_bps < 10_000:
            raise ValueError(f"slippage_bps must be in [0, 10000), got {slippage_bps}")
        self.initial_krw = float(initial_krw)
        self.slippage = slippage_bps / 10_000
        self._krw = float(initial_krw)
        self._holdings: dict[str, _Holding] = {}
        self._fills: dict[str, Fill] = {}
        for prior in fills:
            self._replay(prior)

    # -- the Broker protocol -------------------------------------------------------------------

    def place(self, order: Order, reference_price: float) -> Fill:
        """Fill `order` now at `reference_price` +/- slippage, or raise OrderRejected.

        The identifier is spent even when the order is refused (as on Upbit); `lookup` then
        answers with a REJECTED fill, so a restarted loop knows the order was refused.
        """
        if not order.identifier:
            raise OrderRejected(f"{order.market} {order.side.value}: an order needs an identifier")
        if order.identifier in self._fills:
            raise OrderRejected(
                f"identifier {order.identifier!r} was already used "
                f"({self._fills[order.identifier].state.value}); Upbit never accepts it twice"
            )
        try:
            fill = self._execute(order, reference_price)
        except OrderRejected:
            self._fills[order.identifier] = Fill(
                order.identifier, order.market, order.side, OrderState.REJECTED, 0.0, 0.0, 0.0
            )
            raise
        self._apply(fill)
        return fill

    def lookup(self, identifier: str) -> Fill | None:
        return self._fills.get(identifier)

    def balances(self) -> dict[str, Balance]:
        """KRW always, plus every coin with a non-zero balance."""
        result = {KRW: Balance(KRW, self._krw)}
        for currency, holding in sorted(self._holdings.items()):
            if holding.volume > 0:
                result[currency] = Balance(currency, holding.volume, 0.0, holding.avg_buy_price)
        return result

    # -- views for the loop and the backtester -------------------------------------------------

    @property
    def fills(self) -> tuple[Fill, ...]:
        """Every order seen, in the order it was placed (REJECTED ones included)."""
        return tuple(self._fills.values())

    def equity(self, prices: Mapping[str, float]) -> float:
        """KRW plus every holding at `prices` (market -> close); a held market must be priced."""
        total = self._krw
        for currency, holding in self._holdings.items():
            if holding.volume > 0:
                market = f"{KRW}-{currency}"
                if market not in prices:
                    raise KeyError(f"no price for {market}, which the paper account holds")
                total += holding.volume * prices[market]
        return total

    def account_state(
        self, market: str, price: float, peak_equity: float | None = None
    ) -> AccountState:
        """What the policy may know of `market`: cash, this position, equity marked at `price`."""
        holding = self._holdings.get(currency_of(market), _Holding())
        equity = self._krw + holding.volume * price
        return AccountState(
            cash=self._krw,
            position=holding.volume,
            entry_price=holding.avg_buy_price if holding.volume > 0 else 0.0,
            equity=equity,
            drawdown=drawdown(equity, peak_equity),
        )

    # -- internals -----------------------------------------------------------------------------

    def _execute(self, order: Order, reference_price: float) -> Fill:
        if not math.isfinite(reference_price) or reference_price <= 0:
            raise OrderRejected(
                f"{order.identifier}: reference price must be > 0, got {reference_price}"
            )
        currency = currency_of(order.market)
        if order.side is Side.BID:
            return self._bid(order, reference_price)
        return self._ask(order, reference_price, currency)

    def _bid(self, order: Order, reference_price: float) -> Fill:
        amount = order.krw_amount
        if amount < MIN_ORDER_KRW:
            raise OrderRejected(
                f"{order.identifier}: bid of {amount:,.2f} KRW is below Upbit's minimum order "
                f"of {MIN_ORDER_KRW:,.0f} KRW"
            )
        cost = amount + fee(amount)
        if cost > self._krw * (1 + _TOLERANCE):
            raise OrderRejected(
                f"{order.identifier}: insufficient KRW: the bid needs {cost:,.2f} KRW "
                f"({amount:,.2f} + fee {fee(amount):,.2f}), the account has {self._krw:,.2f}"
            )
        price = reference_price * (1 + self.slippage)
        return Fill(
            identifier=order.identifier,
            market=order.market,
            side=Side.BID,
            state=OrderState.DONE,
            volume=amount / price,
            price=price,
            fee=fee(amount),
        )

    def _ask(self, order: Order, reference_price: float, currency: str) -> Fill:
        held = self._holdings.get(currency, _Holding()).volume
        if order.volume > held * (1 + _TOLERANCE):
            raise OrderRejected(
                f"{order.identifier}: insufficient {currency}: the ask sells {order.volume:.8g}, "
                f"the account holds {held:.8g}"
            )
        value = order.volume * reference_price
        if value < MIN_ORDER_KRW:
            raise OrderRejected(
                f"{order.identifier}: ask worth {value:,.2f} KRW is below Upbit's minimum order "
                f"of {MIN_ORDER_KRW:,.0f} KRW"
            )
        volume = min(order.volume, held)
        price = reference_price * (1 - self.slippage)
        return Fill(
            identifier=order.identifier,
            market=order.market,
            side=Side.ASK,
            state=OrderState.DONE,
            volume=volume,
            price=price,
            fee=fee(volume * price),
        )

    def _apply(self, fill: Fill) -> None:
        """Move balances by one executed fill; `place` and replay share it, so they agree."""
        self._fills[fill.identifier] = fill
        if fill.volume <= 0:
            return
        holding = self._holdings.setdefault(currency_of(fill.market), _Holding())
        if fill.side is Side.BID:
            spent = fill.funds + fill.fee
            total = holding.volume + fill.volume
            holding.avg_buy_price = (
                holding.volume * holding.avg_buy_price + fill.volume * fill.price
            ) / total
            holding.volume = total
            self._krw = max(0.0, self._krw - spent)
        else:
            holding.volume = max(0.0, holding.volume - fill.volume)
            if holding.volume == 0.0:
                holding.avg_buy_price = 0.0
            self._krw += fill.funds - fill.fee

    def _replay(self, fill: Fill) -> None:
        if fill.identifier in self._fills:
            raise ValueError(f"fill {fill.identifier!r} appears twice in the replayed history")
        if fill.side is Side.BID and fill.funds + fill.fee > self._krw * (1 + _TOLERANCE):
            raise ValueError(
                f"replayed fill {fill.identifier!r} spends {fill.funds + fill.fee:,.2f} KRW, "
                f"more than the {self._krw:,.2f} KRW the account had: wrong initial_krw?"
            )
        self._apply(fill)
