"""Price-only exits: the hard stop-loss and the trailing stop, and the high since entry they need.

They protect a held position from the close alone, so they run every hour whether or not a model
answered: `trading.step.plan_hour` applies them after the model's decision, and
`trading.step.protect_hour` applies them alone in an hour without a usable prediction (Serve
silent, no model, a refusal). The backtester calls the same two functions, so it sells where the
loop would.

Why they exist beside the emergency score: that score's loss term weighs at most
`loss_weight` (0.5) against a 0.7 threshold, so a slow slide with a calm model (a HOLD, no
volatility spike) never reaches it; a position 40-50 % under water was kept. The stops need no
model and no volatility: below `stop_loss` from the average entry, or `trailing_stop` below the
highest close since entry, the whole position is sold.

The high since entry is state (`EntryHigh`), and so is the hour the position was opened (the
triple-barrier label's time limit counts from it, `trading.barrier_exits`): the loop keeps both in
the ledger (so they survive a restart) and folds in the closes of any hours it missed; the
backtester keeps them in memory. Everything here is pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from features.domain import AccountState, Decision, Order, Side, Signal
from trading.broker import order_identifier
from trading.config import StopConfig
from trading.upbit_rules import is_dust


@dataclass(frozen=True)
class EntryHigh:
    """The highest close seen while the position was held, the last hour folded in, and the
    hour the position was opened: the hour of its first buy since it was last flat (a buy that
    adds to a held position does not move it)."""

    high: float = 0.0
    seen: datetime | None = None  # None: flat at the last hour seen (or nothing tracked yet)
    entered: datetime | None = None  # None: flat, or opened by a buy not folded in yet

    def opened(self, hour: datetime) -> EntryHigh:
        """After a buy filled in `hour`: it opened the position unless one was already held."""
        return self if self.entered is not None else replace(self, entered=hour)

    def to_dict(self) -> dict[str, object]:
        return {"high": self.high, "seen": _text(self.seen), "entered": _text(self.entered)}

    @classmethod
    def from_dict(cls, data: dict[str, object] | None) -> EntryHigh:
        if not data:
            return cls()
        seen, entered = _time(data.get("seen")), _time(data.get("entered"))
        return cls(float(data["high"]) if seen is not None else 0.0, seen, entered)  # type: ignore[arg-type]


def _text(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _time(text: object) -> datetime | None:
    return None if text is None else datetime.fromisoformat(str(text))


def holding(account: AccountState, price: float) -> bool:
    """A position the exchange would let us sell (dust is not one)."""
    return account.position > 0 and not is_dust(account.position * price)


def follow_high(
    previous: EntryHigh,
    account: AccountState,
    price: float,
    hour: datetime,
    missed_closes: Iterable[float] = (),
    opened: datetime | None = None,
) -> EntryHigh:
    """The high since entry after `hour`: reset when flat, else the previous high, the entry
    price, this close and `missed_closes` (the closes after `previous.seen` and before `hour`,
    which a restarted loop reads from its candles).

    The entry hour is kept while the position is held: `previous.entered` (set by the buy that
    opened it, `EntryHigh.opened`), else `opened` (what the caller recovered, e.g. the loop from
    the ledger's fills), else `hour`: a position whose opening nobody saw (coins bought by hand)
    counts from the first hour it was seen, so its time limit comes late, never early."""
    if not holding(account, price):
        return EntryHigh()
    start = previous.high if previous.seen is not None else account.entry_price
    entered = previous.entered or opened or hour
    return EntryHigh(max(start, price, *missed_closes), hour, entered)


def stop_reason(account: AccountState, price: float, high: float, config: StopConfig) -> str | None:
    """Why the close alone says: sell everything now; None while both stops hold (or flat)."""
    if not holding(account, price):
        return None
    entry = account.entry_price
    if config.stop_loss is not None and entry > 0 and price <= entry * (1.0 - config.stop_loss):
        return (
            f"stop-loss: close {price:,.0f} is {1.0 - price / entry:.1%} below the entry "
            f"{entry:,.0f} KRW (limit {config.stop_loss:.1%})"
        )
    top = max(high, entry)
    if config.trailing_stop is not None and top > 0 and price <= top * (1 - config.trailing_stop):
        return (
            f"trailing stop: close {price:,.0f} is {1.0 - price / top:.1%} below the highest "
            f"close since entry {top:,.0f} KRW (limit {config.trailing_stop:.1%})"
        )
    return None


def stop_order(market: str, position: float, hour: datetime, reason: str) -> Order:
    """A market sell of the whole position: the hour's one ask (`market|hour|ask`)."""
    identifier = order_identifier(market, hour, Side.ASK)
    return Order(market, Side.ASK, volume=position, identifier=identifier, reason=reason)


def apply_stops(
    decision: Decision, account: AccountState, price: float, high: float, config: StopConfig
) -> Decision:
    """`decision`, or a whole-position SELL in its place when a stop fires (whatever the model
    said: a BUY is replaced, a partial SELL becomes a full one)."""
    reason = stop_reason(account, price, high, config)
    if reason is None:
        return decision
    order = stop_order(decision.market, account.position, decision.time, reason)
    current = decision.order
    if current is not None and current == replace(order, reason=current.reason):
        return decision  # already a sale of everything (the model's, or the emergency rule's)
    text = f"{reason}, overrides {decision.signal.name} ({decision.reason})"
    return replace(decision, signal=Signal.SELL, order=replace(order, reason=text), reason=text)
