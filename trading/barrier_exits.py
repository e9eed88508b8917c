"""The triple-barrier label's exits in the loop: a model trained on "did the take-profit come
before the stop-loss, within the time limit?" has its position closed where its label would have
closed the trade.

The barriers come with the model's label moves (`features.barriers.LabelMoves.barriers`): the
live loop reads them from Serve's reply (`serve.schema.LabelView`, built from the served bundle's
`label_barriers`), the backtester from the bundle itself (`features.barriers.bundle_moves`), so
both close a position at the barriers that model was trained on, never at another label's. They
act after the model's decision, like `trading.stops`:
- take-profit: the close has gained `take_profit` over the average entry *after* the round-trip
  fee (the label's BUY condition);
- stop-loss: the close is `stop_loss` below the average entry (the label's SELL condition);
- time limit: `horizon` hours have passed since the position was opened (the label's HOLD: the
  trade it describes ends at the close of entry hour + horizon, whatever the price).
The entry price is the ledger's average entry; the entry hour is the hour of the first buy since
the position was last flat (`trading.stops.EntryHigh.entered`, kept in the ledger beside the
high since entry, so a restarted loop keeps it). A buy that adds to a held position moves the
average entry but does not restart the clock: the label's trade is the one that opened it, and a
position topped up every hour would otherwise never reach its time limit.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from features.barriers import Barriers
from features.domain import AccountState, Decision, Signal
from features.exchange import ROUND_TRIP_FEE
from trading.stops import holding, stop_order

ONE_HOUR = timedelta(hours=1)


def barrier_exit_reason(
    account: AccountState,
    price: float,
    barriers: Barriers,
    hour: datetime | None = None,
    entered: datetime | None = None,
) -> str | None:
    """Why the label's barriers say: sell everything now at the close of `hour`; None while
    none is touched (`entered`: the entry hour; None: unknown, no time limit)."""
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
    if hour is None or entered is None:
        return None
    held = (hour - entered) / ONE_HOUR
    if held >= barriers.horizon:
        return (
            f"time limit: held {held:.0f} h since the entry hour {entered:%Y-%m-%d %H:00} "
            f"(the label's limit {barriers.horizon} h); close {price:,.0f} is {gain:+.2%} from "
            f"the entry {account.entry_price:,.0f} KRW"
        )
    return None


def apply_barrier_exits(
    decision: Decision,
    account: AccountState,
    price: float,
    barriers: Barriers | None,
    entered: datetime | None = None,
) -> Decision:
    """`decision`, or a whole-position SELL in its place when a barrier is touched or the time
    limit since `entered` has passed at `decision.time`."""
    if barriers is None:
        return decision
    reason = barrier_exit_reason(account, price, barriers, decision.time, entered)
    if reason is None:
        return decision
    order = stop_order(decision.market, account.position, decision.time, reason)
    current = decision.order
    if current is not None and current == replace(order, reason=current.reason):
        return decision  # already a sale of everything
    text = f"{reason}, overrides {decision.signal.name} ({decision.reason})"
    return replace(decision, signal=Signal.SELL, order=replace(order, reason=text), reason=text)
