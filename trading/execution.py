"""How an order reaches a broker: written to a journal first, sent once, looked up, never twice.

`trading.account.ArmAccount.execute` and `.reconcile` call these for the loop, the backtester and
the replay alike; the journal is the ledger in the loop (`NO_JOURNAL` in a backtest).

The rule for an order whose outcome is unknown (a lost reply, a timeout, a crash between the send
and the fill reaching the ledger): its identifier is looked up for up to `lookup_s` seconds. Found,
it is settled. Still nowhere on a durable exchange (Upbit), it is marked `unknown` and the caller
halts its market with an alarm: it is never sent again, because an identifier the exchange does
not show may still be on its way (and Upbit's refusal of a reused identifier is not something to
bet money on). The paper broker is not durable: its book is this process's memory, rebuilt from
the ledger's fills, so an order it cannot find died with the process and is sent again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from features.domain import Order
from trading.broker import (
    Broker,
    BrokerBanned,
    BrokerError,
    BrokerRateLimited,
    Fill,
    OrderRejected,
    OrderState,
)
from trading.ledger_rows import OrderRecord, OrderStatus

LOOKUP_INTERVAL_S = 1.0  # between lookups of an order whose outcome is unknown


class OrderJournal(Protocol):
    """The part of `trading.ledger.Ledger` that execution writes to and reads back."""

    def order(self, identifier: str, arm: str) -> OrderRecord | None: ...

    def record_order_intent(self, order: Order, hour: datetime, arm: str) -> object: ...

    def mark_order(
        self, identifier: str, arm: str, status: OrderStatus | str, error: str | None = None
    ) -> object: ...

    def record_fill(self, fill: Fill, arm: str) -> object: ...


class _NoJournal:
    """A backtest's journal: nothing is stored, nothing was sent before."""

    def order(self, identifier: str, arm: str) -> OrderRecord | None:
        return None

    def record_order_intent(self, order: Order, hour: datetime, arm: str) -> None:
        return None

    def mark_order(
        self, identifier: str, arm: str, status: OrderStatus | str, error: str | None = None
    ) -> None:
        return None

    def record_fill(self, fill: Fill, arm: str) -> None:
        return None


NO_JOURNAL: OrderJournal = _NoJournal()


@dataclass(frozen=True)
class Execution:
    """What became of a decision's order: the fill (None when nothing reached the book or the
    outcome is not known yet), a note for the decision's reason ("" when it went through), and,
    when the outcome is unknown, why: the caller halts the market on it."""

    fill: Fill | None = None
    note: str = ""
    unknown: str = ""


NOTHING_SENT = Execution()


@dataclass(frozen=True)
class Desk:
    """One arm's way to its broker. `sleep` and `clock` are the real ones outside unit tests."""

    arm: str
    broker: Broker
    lookup_s: float = 0.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def find(self, identifier: str, lookup_s: float | None = None) -> tuple[Fill | None, str]:
        """The order under `identifier`, looked up for up to `lookup_s` (a non-durable broker:
        once); (None, why) when it never showed up. A ban goes to the caller at once."""
        wait = self.lookup_s if lookup_s is None else lookup_s
        deadline = self.clock() + (wait if self.broker.durable else 0.0)
        while True:
            try:
                fill = self.broker.lookup(identifier)
                error = ""
            except BrokerBanned:
                raise
            except BrokerError as exc:
                fill, error = None, f"the lookup kept failing ({exc})"
            if fill is not None or self.clock() >= deadline:
                break
            self.sleep(max(0.0, min(LOOKUP_INTERVAL_S, deadline - self.clock())))
        return fill, error or f"the exchange shows no order under it after {wait:g} s of lookups"

    def send(self, order: Order, price: float, journal: OrderJournal) -> Execution:
        """Place an order whose intent the journal holds; a failure that leaves the exchange's
        view unknown is looked up, and what stays unknown is marked so (never resent)."""
        try:
            fill = self.broker.place(order, price)
        except OrderRejected as exc:
            journal.mark_order(order.identifier, self.arm, "rejected", str(exc))
            refused = Fill(order.identifier, order.market, order.side, OrderState.REJECTED, 0, 0, 0)
            return Execution(refused, f"; rejected: {exc}")
        except BrokerBanned:
            raise
        except BrokerError as exc:
            return self._after_failure(order, exc, journal)
        return self.settle(order, fill, journal)

    def _after_failure(self, order: Order, exc: BrokerError, journal: OrderJournal) -> Execution:
        found, why = self.find(order.identifier)
        if found is not None:
            return self.settle(order, found, journal)
        if isinstance(exc, BrokerRateLimited):  # 429 comes before Upbit takes an order
            journal.mark_order(order.identifier, self.arm, "rejected", f"not placed: {exc}")
            return Execution(None, f"; not placed (rate limited): {exc}")
        return self.unknown(order.identifier, journal, f"{exc}; {why}")

    def resume(self, record: OrderRecord, price: float, journal: OrderJournal) -> Execution:
        """An order the journal already holds, outcome not final: the same run again after a
        crash, or an hour re-run. Looked up first; resent only by a non-durable broker."""
        found, why = self.find(record.identifier)
        if found is not None:
            return self.settle(record.to_order(), found, journal)
        if not self.broker.durable:
            return self.send(record.to_order(), price, journal)
        if record.status is OrderStatus.UNKNOWN:
            return Execution(None, f"; outcome still unknown, not resent ({why})", why)
        return self.unknown(record.identifier, journal, f"written before a restart; {why}")

    def reconcile(self, record: OrderRecord, hour: datetime, journal: OrderJournal) -> Execution:
        """Settle an order the journal does not know the outcome of, before an hour trades. An
        order already marked unknown gets one lookup an hour: its market is halted already."""
        again = record.status is OrderStatus.UNKNOWN
        found, why = self.find(record.identifier, 0.0 if again else None)
        if found is not None:
            return self.settle(record.to_order(), found, journal)
        if not self.broker.durable:
            if record.hour != hour:  # this hour's run sends it again; an older one's price is gone
                reason = "never reached the broker; its hour passed"
                journal.mark_order(record.identifier, self.arm, "rejected", reason)
            return NOTHING_SENT
        if again:  # its market was halted when it was marked unknown
            return NOTHING_SENT
        return self.unknown(record.identifier, journal, f"found open at a restart; {why}")

    def unknown(self, identifier: str, journal: OrderJournal, why: str) -> Execution:
        reason = f"order {identifier}: outcome unknown, not resent: {why}"
        journal.mark_order(identifier, self.arm, "unknown", reason)
        return Execution(None, f"; {reason}", reason)

    def settle(self, order: Order, fill: Fill, journal: OrderJournal) -> Execution:
        if fill.state is OrderState.REJECTED:
            journal.mark_order(order.identifier, self.arm, "rejected", "refused by the broker")
            return Execution(fill, "; rejected by the broker")
        if fill.state is OrderState.WAIT:
            journal.mark_order(order.identifier, self.arm, "sent")
            return Execution(None, "; accepted, not filled yet")
        journal.record_fill(fill, self.arm)
        return Execution(fill)
