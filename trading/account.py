"""One arm's account in one market: its broker, its kill switch, where its sizing ratio comes from,
and how a Decision is executed and recorded.

The live loop (`trading.hourly`), the backtester (`trading.backtest`) and the replay of recorded
live hours (`trading.replay`, through the backtester) all trade through `ArmAccount`, so an order
is planned, sent and settled the same way everywhere; `trading.step.plan_hour` stays the one
decision. What differs between them is passed in:
- the arm's `RatioSource`: `fixed_ratio` (the A/B control arm), `rule_ratio` (the sizing node's
  fractional-Kelly fallback), `served_ratio` (what Serve's sizing node answered: the `llm` arm and
  live trading), or a replay's recorded ratios;
- the `OrderJournal` an order is written to before it is sent: the ledger in the loop, so a
  restart looks an order up instead of sending it again; `NO_JOURNAL` in a backtest, which keeps
  its own per-hour rows and whose paper broker is new every run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np

from features.domain import AccountState, Decision, Order, Prediction, drawdown
from serve.schema import Sizing
from serve.sizing import SizingConfig, SizingRequest, rule_sizing
from trading.broker import Broker, BrokerBanned, BrokerError, Fill, OrderRejected, OrderState
from trading.config import TradingConfig
from trading.ledger import Ledger
from trading.ledger_rows import OrderRecord, OrderStatus
from trading.paper import PaperBroker, currency_of
from trading.risk import RiskGuard
from trading.step import plan_hour

RatioSource = Callable[[Prediction, AccountState, float, Sizing | None], tuple[float, str]]
"""(prediction, account, recent volatility, Serve's sizing if asked) -> (ratio, sizing source)."""
SERVED_ARMS = frozenset({"llm", "live"})  # the arms that act on Serve's sizing node


# -- where an arm's ratio comes from --------------------------------------------------------------
def fixed_ratio(ratio: float) -> RatioSource:
    """The A/B control arm: the same share of the account on every BUY."""

    def source(p: Prediction, a: AccountState, v: float, s: Sizing | None) -> tuple[float, str]:
        return ratio, "fixed"

    return source


def rule_ratio(sizing: SizingConfig) -> RatioSource:
    """The fractional-Kelly rule the sizing node falls back to, on this hour's inputs."""

    def source(p: Prediction, a: AccountState, v: float, s: Sizing | None) -> tuple[float, str]:
        result = rule_sizing(SizingRequest(p.market, p.signal, p.probabilities, v, a), sizing)
        return result.ratio, result.source

    return source


def served_ratio(
    p: Prediction, a: AccountState, v: float, served: Sizing | None
) -> tuple[float, str]:
    """What Serve's sizing node answered for this hour (LLMs checked against each other)."""
    if served is None:
        raise ValueError(f"{p.market} {p.time}: this arm sizes with Serve's answer; there is none")
    return served.ratio, served.source


def arm_source(arm: str, config: TradingConfig, sizing: SizingConfig | None = None) -> RatioSource:
    """The sizing of a named arm: fixed, rule (needs `sizing`), or llm/live (Serve's)."""
    if arm == "fixed":
        return fixed_ratio(config.ab.fixed_ratio)
    if arm == "rule" and sizing is not None:
        return rule_ratio(sizing)
    if arm in SERVED_ARMS:
        return served_ratio
    raise ValueError(f"no sizing for arm {arm!r} (fixed, rule with a sizing config, llm, live)")


# -- what an account knows ---------------------------------------------------------------------
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
    return AccountState(
        cash=cash,
        position=position,
        entry_price=coin.avg_buy_price if coin and position > 0 else 0.0,
        equity=equity,
        drawdown=drawdown(equity, peak_equity),
    )


# -- where orders are recorded ---------------------------------------------------------------
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
    outcome is not known yet) and a note for the decision's reason ("" when it went through)."""

    fill: Fill | None = None
    note: str = ""


NOTHING_SENT = Execution()


# -- the account -------------------------------------------------------------------------------
@dataclass
class ArmAccount:
    """One arm's account in one market: its broker, its kill switch and its sizing."""

    arm: str
    market: str
    broker: Broker
    guard: RiskGuard
    sizing: RatioSource

    @property
    def risk_key(self) -> str:
        return f"{self.arm}/{self.market}"

    def state(self, price: float) -> AccountState:
        """The account marked at `price`, drawdown from the kill switch's peak."""
        return account_state(self.broker, self.market, price, self.guard.peak_equity)

    def plan(
        self,
        prediction: Prediction,
        state: AccountState,
        price: float,
        closes: np.ndarray,
        volatility: float,
        served: Sizing | None,
        config: TradingConfig,
    ) -> Decision:
        """This hour's Decision through `plan_hour`, sized by the arm; the guard moves on."""
        ratio, source = self.sizing(prediction, state, volatility, served)
        decision, self.guard = plan_hour(
            prediction, ratio, source, state, price, prediction.time, closes, self.guard, config
        )
        return decision

    def observe(self, hour: datetime, state: AccountState) -> None:
        """An hour without a decision: the kill switch still sees its equity."""
        self.guard = self.guard.observe(hour, state.equity)

    def execute(self, decision: Decision, price: float, journal: OrderJournal) -> Execution:
        """Send `decision.order` once: written to the journal first; an identifier the journal
        already holds is looked up at the broker instead, and a settled one is left alone."""
        order = decision.order
        if order is None:
            return NOTHING_SENT
        record = journal.order(order.identifier, self.arm)
        if record is not None and record.is_final:
            return NOTHING_SENT
        if record is None:
            journal.record_order_intent(order, decision.time, self.arm)
        else:
            known = self.broker.lookup(order.identifier)
            if known is not None:
                return self._settle(order, known, journal)
        return self._send(order, price, journal)

    def reconcile(self, record: OrderRecord, hour: datetime, journal: OrderJournal) -> None:
        """Settle an order whose outcome the journal does not know (a crash, a lost reply, a
        wait). One the broker never saw is sent by this hour's run if it belongs to this hour; an
        older one is abandoned, since its price is gone."""
        fill = self.broker.lookup(record.identifier)
        if fill is None:
            if record.hour != hour:
                reason = "never reached the broker; its hour passed"
                journal.mark_order(record.identifier, self.arm, "rejected", reason)
            return
        self._settle(record.to_order(), fill, journal)

    def _send(self, order: Order, price: float, journal: OrderJournal) -> Execution:
        try:
            fill = self.broker.place(order, price)
        except OrderRejected as exc:
            journal.mark_order(order.identifier, self.arm, "rejected", str(exc))
            refused = Fill(order.identifier, order.market, order.side, OrderState.REJECTED, 0, 0, 0)
            return Execution(refused, f"; rejected: {exc}")
        except BrokerBanned:
            raise
        except BrokerError as exc:
            journal.mark_order(order.identifier, self.arm, "unknown", str(exc))
            return Execution(None, f"; outcome unknown: {exc}")
        return self._settle(order, fill, journal)

    def _settle(self, order: Order, fill: Fill, journal: OrderJournal) -> Execution:
        if fill.state is OrderState.REJECTED:
            journal.mark_order(order.identifier, self.arm, "rejected", "refused by the broker")
            return Execution(fill, "; rejected by the broker")
        if fill.state is OrderState.WAIT:
            journal.mark_order(order.identifier, self.arm, "sent")
            return Execution(None, "; accepted, not filled yet")
        journal.record_fill(fill, self.arm)
        return Execution(fill)


def loop_accounts(
    config: TradingConfig, markets: list[str], ledger: Ledger, mode: str, upbit_url: str
) -> dict[tuple[str, str], ArmAccount]:
    """The loop's accounts by (arm, market). Paper: each A/B arm's paper account per market,
    rebuilt from the ledger's fills. Live: one Upbit account (keys from the environment) for
    every market, sized by Serve. Kill switches come back from the ledger's last risk state."""
    arms = list(config.ab.arms) if mode == "paper" else ["live"]
    live = None
    if mode == "live":
        from trading.upbit_broker import UpbitBroker

        live = UpbitBroker.from_env(base_url=upbit_url)
    accounts = {}
    for arm in arms:
        for market in markets:
            broker = live or PaperBroker(
                config.paper.initial_krw,
                config.paper.slippage_bps,
                ledger.fills(arm=arm, market=market),
            )
            stored = ledger.risk_state(f"{arm}/{market}")
            guard = (
                RiskGuard.from_dict(stored, config.risk)
                if stored
                else RiskGuard.from_config(config.risk)
            )
            accounts[(arm, market)] = ArmAccount(
                arm, market, broker, guard, arm_source(arm, config)
            )
    return accounts
