"""What the policy may know of one market's account, from any broker."""

from __future__ import annotations

from features.domain import AccountState
from trading.broker import Broker
from trading.paper import PaperBroker, currency_of


def account_state(
    broker: Broker, market: str, price: float, peak_equity: float | None
) -> AccountState:
    """Cash, this market's position and equity marked at `price`; drawdown from `peak_equity`."""
    if isinstance(broker, PaperBroker):
        return broker.account_state(market, price, peak_equity or None)
    balances = broker.balances()
    cash = balances["KRW"].balance if "KRW" in balances else 0.0
    coin = balances.get(currency_of(market))
    position = coin.balance + coin.locked if coin else 0.0
    equity = cash + position * price
    drawdown = 0.0
    if peak_equity and peak_equity > 0:
        drawdown = min(1.0, max(0.0, 1.0 - equity / peak_equity))
    return AccountState(
        cash=cash,
        position=position,
        entry_price=coin.avg_buy_price if coin and position > 0 else 0.0,
        equity=equity,
        drawdown=drawdown,
    )


def holdings_value(state: AccountState, price: float) -> float:
    return state.position * price
