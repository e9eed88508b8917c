"""The triple-barrier label's exits in the loop: a model trained on "did the take-profit come
before the stop-loss?" has its position closed where its label would have closed the trade.

The barriers come with the model's label moves (`features.barriers.LabelMoves.barriers`, read
from the bundle's `label_barriers` or the `labels` block of configs/features.yaml: the one place
for the values; `features/` cannot import this package, so the numbers live there). They act on
the close alone, like `trading.stops`, after the model's decision:
- take-profit: the close has gained `take_profit` over the average entry *after* the round-trip
  fee (the label's BUY condition);
- stop-loss: the close is `stop_loss` below the average entry (the label's SELL condition).
The label's third barrier, the time limit, is not applied: the ledger keeps the average entry
price but not the entry hour, so a held position runs until a barrier, a SELL or a stop.
"""

from __future__ import annotations

from dataclasses import replace

from features.barriers import Barriers
from features.domain import AccountState, Decision, Signal
from features.exchange import ROUND_TRIP_FEE
from trading.stops import holding, stop_order


def barrier_exit_reason(account: AccountState, price: float, barriers: Barriers) -> str | None:
    """Why the label's barriers say: sell everything now; None while neither is touched."""
    if not holding(account, price) or account.entry_price <= 0:
        return None
    gain = price / account.entry_price - 1.0
    if gain - ROUND_TRIP_FEE >= barriers.take_profit:
        return (
            f"take-profit: close {price:,.0f} is {gain:+.2%} over the entry "
            f"{account.entry_price:,.0f} KRW ({barriers.take_profit:.2%} after fees reached)"
        )
    if gain <= -barriers.stop_loss:
        return (
            f"label stop-loss: close {price:,.0f} is {gain:+.2%} from the entry "
            f"{account.entry_price:,.0f} KRW (barrier {barriers.stop_loss:.2%})"
        )
    return None


def apply_barrier_exits(
    decision: Decision, account: AccountState, price: float, barriers: Barriers | None
) -> Decision:
    """`decision`, or a whole-position SELL in its place when a barrier is touched."""
    if barriers is None:
        return decision
    reason = barrier_exit_reason(account, price, barriers)
    if reason is None:
        return decision
    order = stop_order(decision.market, account.position, decision.time, reason)
    current = decision.order
    if current is not None and current == replace(order, reason=current.reason):
        return decision  # already a sale of everything
    text = f"{reason}, overrides {decision.signal.name} ({decision.reason})"
    return replace(decision, signal=Signal.SELL, order=replace(order, reason=text), reason=text)
