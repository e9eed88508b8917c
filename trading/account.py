"""One arm's account in one market: its broker, its kill switch, where its sizing ratio comes from,
and how a Decision is executed and recorded.

The live loop (`trading.hourly`), the backtester (`trading.backtest`) and the replay of recorded
live hours (`trading.replay`, through the backtester) all trade through `ArmAccount`, so an order
is planned, sent and settled the same way everywhere; `trading.step.plan_hour` stays the one
decision. What differs between them is passed in:
- the arm's `RatioSource`: `FixedRatio` (the A/B control arm), `RuleRatio` (the sizing node's
  fractional-Kelly fallback), `served_ratio` (what Serve's sizing node answered: the `llm` arm and
  live trading), or a replay's recorded ratios;
- the `OrderJournal` an order is written to before it is sent (`trading.execution`): the ledger
  in the loop, so a restart looks an order up instead of sending it again; `NO_JOURNAL` in a
  backtest, which keeps its own per-hour rows and whose paper broker is new every run;
- the `KillSwitch`: a paper arm's own in each market, or one for the whole live account, shared
  by all its markets (so the switch sees the whole account, once).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import numpy as np

from features.barriers import LabelMoves
from features.domain import AccountState, Decision, Prediction, Side, drawdown
from serve.schema import Sizing
from serve.sizing import SizingConfig, rule_sizing_ratio, rule_sizing_ratios
from trading.broker import Balance, Broker
from trading.config import TradingConfig
from trading.execution import NO_JOURNAL, NOTHING_SENT, Desk, Execution, OrderJournal
from trading.ledger import Ledger
from trading.ledger_rows import OrderRecord
from trading.paper import KRW, PaperBroker, currency_of
from trading.risk import RiskGuard
from trading.step import plan_hour, protect_hour
from trading.stops import EntryHigh, follow_high

__all__ = ["NO_JOURNAL", "NOTHING_SENT", "ArmAccount", "Execution", "KillSwitch", "OrderJournal"]

RatioSource = Callable[[Prediction, AccountState, float, Sizing | None], tuple[float, str]]
"""(prediction, account, recent volatility, Serve's sizing if asked) -> (ratio, sizing source)."""
SERVED_ARMS = frozenset({"llm", "live"})  # the arms that act on Serve's sizing node


# -- where an arm's ratio comes from --------------------------------------------------------------
@dataclass(frozen=True)
class FixedRatio:
    """The A/B control arm: the same share of the account on every BUY."""

    ratio: float

    def __call__(
        self, p: Prediction, a: AccountState, v: float, s: Sizing | None
    ) -> tuple[float, str]:
        return self.ratio, "fixed"

    def many(
        self, probabilities: np.ndarray, volatility: list[float], drawdowns: list[float]
    ) -> tuple[list[float], list[str]]:
        """(ratio, source) of many hours at once (`ManyRatios`)."""
        return [self.ratio] * len(probabilities), ["fixed"] * len(probabilities)


@dataclass(frozen=True)
class RuleRatio:
    """The fractional-Kelly rule the sizing node falls back to, on this hour's inputs."""

    sizing: SizingConfig

    def __call__(
        self, p: Prediction, a: AccountState, v: float, s: Sizing | None
    ) -> tuple[float, str]:
        return rule_sizing_ratio(p.signal, p.probabilities, v, a.drawdown, self.sizing), "rule"

    def many(
        self, probabilities: np.ndarray, volatility: list[float], drawdowns: list[float]
    ) -> tuple[list[float], list[str]]:
        """(ratio, source) of many hours at once (`ManyRatios`)."""
        tops = probabilities.argmax(axis=1)  # `top_signal`: the first maximum wins
        ratios = rule_sizing_ratios(tops, probabilities, volatility, drawdowns, self.sizing)
        return ratios, ["rule"] * len(ratios)


ManyRatios = Callable[[np.ndarray, list[float], list[float]], tuple[list[float], list[str]]]
"""A RatioSource's form for many hours (the backtester's quiet hours): ((n, 3) probabilities,
volatility per hour, the account's drawdown per hour) -> (ratios, sizing sources), hour for hour
what the source answers one hour at a time without Serve's sizing. Only a source that reads no
more of the account than its drawdown has one."""


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
        return FixedRatio(config.ab.fixed_ratio)
    if arm == "rule" and sizing is not None:
        return RuleRatio(sizing)
    if arm in SERVED_ARMS:
        return served_ratio
    raise ValueError(f"no sizing for arm {arm!r} (fixed, rule with a sizing config, llm, live)")


# -- what an account knows ---------------------------------------------------------------------
def book_value(balances: Mapping[str, Balance], prices: Mapping[str, float]) -> tuple[float, float]:
    """(KRW, coins' value) of everything an exchange account holds, once: free and locked, each
    coin at its market's close in `prices`; a coin the loop does not trade is valued at its
    average buy price, the only price the account reply carries."""
    cash, coins = 0.0, 0.0
    for currency, held in balances.items():
        units = held.balance + held.locked
        if currency == KRW:
            cash += units
        elif units > 0:
            coins += units * (prices.get(f"{KRW}-{currency}") or held.avg_buy_price)
    return cash, coins


def account_equity(balances: Mapping[str, Balance], prices: Mapping[str, float]) -> float:
    return sum(book_value(balances, prices))


def account_state(
    broker: Broker,
    market: str,
    price: float,
    peak_equity: float | None,
    prices: Mapping[str, float] | None = None,
) -> AccountState:
    """Free cash, this market's free position and the equity marked at `price` (the other
    markets at `prices`); drawdown from `peak_equity`. A paper arm's account is its own; a live
    account is the whole exchange account, so its equity counts every KRW and coin once. Coins
    locked by an open order are equity but cannot be sold, so they are not the position."""
    if isinstance(broker, PaperBroker):
        return broker.account_state(market, price, peak_equity or None)
    balances = broker.balances()
    cash = balances[KRW].balance if KRW in balances else 0.0
    coin = balances.get(currency_of(market))
    position = coin.balance if coin else 0.0
    equity = account_equity(balances, {**(prices or {}), market: price})
    return AccountState(
        cash=cash,
        position=position,
        entry_price=coin.avg_buy_price if coin and position > 0 else 0.0,
        equity=equity,
        drawdown=drawdown(equity, peak_equity),
    )


# -- the kill switch ---------------------------------------------------------------------------
T = TypeVar("T")


@dataclass
class KillSwitch:
    """The kill switch of one exchange account: a paper arm's account in one market, or the one
    live Upbit account every market trades. Its every change (an hour's observation, a person's
    switch) happens under one lock and is stored (`store`) before the lock is let go, so a
    person's switch-off arriving while an hour runs is never overwritten by that hour."""

    key: str  # the ledger's risk key: "arm/market" (paper) or "live"
    guard: RiskGuard
    store: Callable[[dict[str, Any], str], object] | None = None
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def change(self, step: Callable[[RiskGuard], tuple[T, RiskGuard]]) -> T:
        """Apply `step` to the current guard and keep (and store) what it returns."""
        with self.lock:
            result, guard = step(self.guard)
            if guard is not self.guard:
                self.guard = guard
                if self.store is not None:
                    self.store(guard.to_dict(), self.key)
            return result

    def switch(self, enabled: bool, by: str, reason: str, now: datetime) -> None:
        """A person turns trading off, or back on."""
        self.change(lambda g: (None, g.reset(by, now) if enabled else g.halt(reason, now)))


# -- the account -------------------------------------------------------------------------------
@dataclass
class ArmAccount:
    """One arm's account in one market: its broker, its kill switch (shared by every market of
    one live account) and its sizing; `high` is the position's high since entry and its entry
    hour."""

    arm: str
    market: str
    broker: Broker
    switch: KillSwitch | RiskGuard  # a bare guard becomes this account's own switch
    sizing: RatioSource
    high: EntryHigh = field(default_factory=EntryHigh)
    lookup_s: float = 0.0  # how long an order of unknown outcome is looked up

    def __post_init__(self) -> None:
        if isinstance(self.switch, RiskGuard):
            self.switch = KillSwitch(f"{self.arm}/{self.market}", self.switch)

    @property
    def kill_switch(self) -> KillSwitch:
        assert isinstance(self.switch, KillSwitch)
        return self.switch

    @property
    def guard(self) -> RiskGuard:
        return self.kill_switch.guard

    @property
    def risk_key(self) -> str:
        return self.kill_switch.key

    @property
    def desk(self) -> Desk:
        return Desk(self.arm, self.broker, self.lookup_s)

    def state(self, price: float, prices: Mapping[str, float] | None = None) -> AccountState:
        """The account marked at `price` (other markets at `prices`), drawdown from the kill
        switch's peak."""
        return account_state(self.broker, self.market, price, self.guard.peak_equity, prices)

    def watch(
        self, state: AccountState, price: float, hour: datetime, missed=(), opened=None
    ) -> EntryHigh:
        """Move the high since entry to `hour` (`missed`: closes of hours not seen since;
        `opened`: the entry hour when this account does not know it, `follow_high`)."""
        self.high = follow_high(self.high, state, price, hour, missed, opened)
        return self.high

    def plan(
        self,
        prediction: Prediction,
        state: AccountState,
        price: float,
        closes: np.ndarray,
        volatility: float,
        served: Sizing | None,
        config: TradingConfig,
        stale: str = "",
        moves: LabelMoves | None = None,
        novel: str = "",
        spike: float | None = None,
    ) -> Decision:
        """This hour's Decision through `plan_hour`, sized by the arm; the switch moves on.
        `moves`: the model's label moves, for `policy.margin`; `spike`: the hour's volatility
        ratio when the caller has it (`plan_hour`)."""
        ratio, source = self.sizing(prediction, state, volatility, served)
        return self.kill_switch.change(
            lambda guard: plan_hour(
                prediction,
                ratio,
                source,
                state,
                price,
                prediction.time,
                closes,
                guard,
                config,
                high=self.high.high,
                entered=self.high.entered,
                stale=stale,
                moves=moves,
                novel=novel,
                spike=spike,
            )  # fmt: skip
        )

    def protect(
        self, state: AccountState, price: float, hour: datetime, config: TradingConfig, why: str
    ) -> Decision | None:
        """An hour without a usable prediction: the price-only rules (`protect_hour`)."""
        return self.kill_switch.change(
            lambda guard: protect_hour(
                self.market, state, price, hour, guard, config, high=self.high.high, why=why
            )
        )

    def observe(self, hour: datetime, state: AccountState) -> None:
        """An hour without a decision: the kill switch still sees its equity."""
        self.kill_switch.change(lambda guard: (None, guard.observe(hour, state.equity)))

    def execute(self, decision: Decision, price: float, journal: OrderJournal) -> Execution:
        """Send `decision.order` once: written to the journal first; an identifier the journal
        already holds is looked up instead, and a settled one is left alone. A BUY whose switch
        went off after it was planned is not sent. A buy that filled into a flat account opened
        the position in the decision's hour (`EntryHigh.opened`: the time limit's start)."""
        done = self._execute(decision, price, journal)
        fill = done.fill
        if fill is not None and fill.side is Side.BID and fill.volume > 0:
            self.high = self.high.opened(decision.time)
        return done

    def _execute(self, decision: Decision, price: float, journal: OrderJournal) -> Execution:
        order = decision.order
        if order is None:
            return NOTHING_SENT
        record = journal.order(order.identifier, self.arm)
        if record is not None and record.is_final:
            return NOTHING_SENT
        if record is not None:
            return self.desk.resume(record, price, journal)
        if not self.guard.allows(order.side):
            return Execution(None, f"; not sent: trading was switched off ({self.guard.reason})")
        journal.record_order_intent(order, decision.time, self.arm)
        return self.desk.send(order, price, journal)

    def reconcile(self, record: OrderRecord, hour: datetime, journal: OrderJournal) -> Execution:
        """Settle an order whose outcome the journal does not know (`Desk.reconcile`)."""
        return self.desk.reconcile(record, hour, journal)


def loop_accounts(
    config: TradingConfig,
    markets: list[str],
    ledger: Ledger,
    mode: str,
    upbit_url: str,
    live_account: tuple[Any, KillSwitch] | None = None,
) -> dict[tuple[str, str], ArmAccount]:
    """The loop's accounts by (arm, market). Paper: each A/B arm's paper account per market,
    rebuilt from the ledger's fills, each with its own kill switch. Live: one Upbit account (keys
    from the environment) and one kill switch for every market, sized by Serve. Kill switches
    come back from the ledger's last risk state, highs since entry from the ledger too.
    `live_account`: the running loop's live broker and kill switch, for markets added at runtime
    (the account is one: a second broker would count its equity twice)."""
    arms = list(config.ab.arms) if mode == "paper" else ["live"]
    live, shared = live_account or (None, None)
    if mode == "live" and live is None:
        from trading.upbit_broker import UpbitBroker

        live = UpbitBroker.from_env(base_url=upbit_url)
        shared = _switch(LIVE_ACCOUNT, ledger, config)
    accounts = {}
    for arm in arms:
        for market in markets:
            broker = live or PaperBroker(
                config.paper.initial_krw,
                config.paper.slippage_bps,
                ledger.fills(arm=arm, market=market),
            )
            switch = shared or _switch(f"{arm}/{market}", ledger, config)
            high = EntryHigh.from_dict(ledger.highs.get(arm, market))
            accounts[(arm, market)] = ArmAccount(
                arm, market, broker, switch, arm_source(arm, config), high,
                config.loop.order_lookup_s,
            )  # fmt: skip
    return accounts


LIVE_ACCOUNT = "live"  # the live account's one risk key: every market trades the same account


def _switch(key: str, ledger: Ledger, config: TradingConfig) -> KillSwitch:
    stored = ledger.risk_state(key)
    guard = (
        RiskGuard.from_dict(stored, config.risk) if stored else RiskGuard.from_config(config.risk)
    )
    return KillSwitch(key, guard, ledger.set_risk_state)
