"""One trading hour, end to end: candles -> Serve -> policy and risk -> broker -> ledger.

`HourlyTrader.run_hour` is what the TradingLoop actor calls once an hour (and what a test calls
with an accelerated clock). It is safe to run again for the same hour after a crash: a decision
already in the ledger is reused, never re-planned, and an order already sent is looked up by its
identifier instead of being sent twice (`trading.account.ArmAccount.execute`, the ledger as its
journal). Each arm (A/B: LLM sizing vs a fixed ratio) trades its own account per market; both
follow the same prediction. Live, one Upbit account serves every market.

Money first, in this order every hour:
- a live loop's first hour reconciles with the exchange (`trading.reconcile`); the open orders of
  every hour are settled before anything is sent;
- every market's candles are fetched first (`loop.fetch_workers` markets at once, within Upbit's
  `Remaining-Req` budget), so a live account is marked at this hour's prices; every market's
  prediction then comes from one batched call to Serve (`trading.serve_client.ask_all`);
- each market is its own try: one market's failure (a bad reply, an exception) is that market's
  `no_decision`, never the end of the other markets' hour;
- a halted market (an order whose outcome is unknown, a difference with the exchange) sends
  nothing until a person acknowledges it; an hour past `loop.max_order_delay_s` (wall clock)
  sends nothing either (`no_decision: late ...`);
- without a usable prediction (Serve silent, no model, a refusal) the price-only rules still
  run on a held position (`protect_hour`): the stops sell, the kill switch observes; a stale
  model opens no position, nor does a novel input (`novel: true`); their sells go out;
- the decision margin and the triple-barrier exits use the label of the model that answered
  (its reply's `label`), so a promoted model trained on other barriers than configs/features.yaml
  exits at its own; the configured label only scores the realised outcomes (`Labels`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features import indicators
from features.exchange import HOUR
from features.labels import label_returns
from features.sources import CandleSource
from serve.schema import PredictionReply
from trading.account import ArmAccount, book_value
from trading.broker import BrokerBanned
from trading.config import TradingConfig
from trading.ledger import Ledger
from trading.ledger_books import Halt
from trading.reconcile import halt, settle_open_orders, start_or_retry
from trading.serve_client import Ask, Predictor, ServeUnavailable, ask_all
from trading.stops import holding

log = logging.getLogger(__name__)
ACK_HINT = "acknowledge with `python -m trading reconcile --ack --by NAME`"


@dataclass(frozen=True)
class Labels:
    """The configured label (configs/features.yaml), for the realised-outcome bookkeeping only:
    the class that came true `horizon` hours after each decision hour is recorded against one
    fixed yardstick, whichever model (or none) answered that hour, so realised accuracy stays
    comparable across promoted versions. What prices and closes a trade is the served model's
    own label, which comes with each reply (`PredictionReply.label`), never this one."""

    horizon: int
    threshold: float


@dataclass(frozen=True)
class Served:
    """Serve's answer for one market-hour, or why there is none."""

    reply: PredictionReply | None
    why: str = ""

    @property
    def stale(self) -> str:
        reply = self.reply
        if reply is None or not reply.stale:
            return ""
        return f"model {reply.model_version} is stale ({reply.model_age_hours:.0f} h past its data)"

    @property
    def novel(self) -> str:
        """Why the hour's input is novel to the model (`train.novelty`); "" when it is not."""
        reply = self.reply
        if reply is None or not reply.novel:
            return ""
        score = f"{reply.dissimilarity:.2f}" if reply.dissimilarity is not None else "?"
        return f"novel input (dissimilarity {score} past model {reply.model_version}'s threshold)"


class HourlyTrader:
    def __init__(
        self,
        config: TradingConfig,
        markets: list[str],
        ledger: Ledger,
        source: CandleSource,
        predictor: Predictor,
        accounts: dict[tuple[str, str], ArmAccount],
        labels: Labels,
        on_hour: Callable[[HourlyTrader, pd.Timestamp], None] | None = None,
        now: Callable[[], pd.Timestamp] | None = None,
    ) -> None:
        """`now`: the wall clock, for the order-delay limit; None (an accelerated replay of stored
        hours) does not check it."""
        self.config = config
        self.markets = markets
        self.arms = sorted({arm for arm, _ in accounts})
        self.ledger = ledger
        self.source = source
        self.predictor = predictor
        self.accounts = accounts
        self.labels = labels
        self.on_hour = on_hour
        self.now = now
        self.reconciled = False
        for account in accounts.values():  # every kill switch change reaches the ledger
            if account.kill_switch.store is None:
                account.kill_switch.store = ledger.set_risk_state

    def add_markets(self, markets: list[str], accounts: dict[tuple[str, str], ArmAccount]) -> None:
        """Trade these markets too from the next hour on (a market added while the loop runs)."""
        for account in accounts.values():
            if account.kill_switch.store is None:
                account.kill_switch.store = self.ledger.set_risk_state
        self.accounts = {**self.accounts, **accounts}
        self.markets = [*self.markets, *(m for m in markets if m not in self.markets)]

    @property
    def window(self) -> int:
        """Candles fetched per market and hour: what serving needs (derived from the features'
        warm-up, read at each call) or the rolling window, whichever is longer."""
        return max(indicators.CANDLES_FOR_SERVING, self.config.loop.rolling_window_hours + 1)

    def run_hour(self, hour: pd.Timestamp) -> None:
        """Decide and trade the hour whose candle opened at `hour` (it has just closed)."""
        not_ready = "" if self.reconciled else start_or_retry(self.ledger, self.accounts, hour)
        self.reconciled = not not_ready
        self.reconcile(hour)
        halted = self.ledger.halts.open()
        candles = self._fetch_all(hour)
        prices = {m: float(c["close"].iloc[-1]) for m, c in candles.items()}
        asking = []
        for market, frame in candles.items():
            if not_ready:
                self._no_decision(market, hour, not_ready)
            elif self._isolated(market, hour, self._before_asking, frame, halted):
                asking.append(market)
        served = self._ask_all(asking, candles, prices)
        for market in asking:
            self._isolated(market, hour, self._arms_hour, candles[market], prices, served[market])
        self._snapshot(hour, prices)
        if self.on_hour:
            self.on_hour(self, hour)

    def reconcile(self, hour: pd.Timestamp) -> None:
        """Settle the ledger's orders whose outcome it does not know, before the hour trades."""
        settle_open_orders(self.ledger, self.accounts, hour.to_pydatetime())

    # -- one market ----------------------------------------------------------------------------

    def _no_decision(self, market: str, hour: pd.Timestamp, reason: str) -> None:
        log.warning("%s %s: no decision: %s", market, hour, reason)
        for arm in self.arms:
            self.ledger.record_no_decision(market, hour.to_pydatetime(), arm, reason)

    def _fetch_all(self, hour: pd.Timestamp) -> dict[str, pd.DataFrame]:
        """Every market's candles, `loop.fetch_workers` at once; a market that failed is its
        `no_decision` (recorded here, in the loop's thread, where the ledger is written)."""
        workers = min(self.config.loop.fetch_workers, max(len(self.markets), 1))
        with ThreadPoolExecutor(workers, thread_name_prefix="candles") as pool:
            fetched = dict(zip(self.markets, pool.map(lambda m: self._candles(m, hour),
                                                      self.markets), strict=True))  # fmt: skip
        candles = {}
        for market, got in fetched.items():
            if isinstance(got, str):
                self._no_decision(market, hour, got)
            else:
                candles[market] = got
        return candles

    def _candles(self, market: str, hour: pd.Timestamp) -> pd.DataFrame | str:
        """The market's candles up to `hour`, or why there are none (any thread)."""
        try:
            candles = self.source.latest(market, self.window, now=(hour + HOUR).to_pydatetime())
        except Exception as exc:  # noqa: BLE001 - any fetch failure is this hour's no_decision
            return f"candle fetch failed: {exc}"
        newest = candles.index[-1] if len(candles) else None
        if newest != hour:
            return f"stale data: newest closed candle is {newest}, expected {hour}"
        return candles

    def _isolated(
        self, market: str, hour: pd.Timestamp, step: Callable[..., bool | None], *args
    ) -> bool:
        """Run one market's step; its failure is that market's `no_decision` (False), never the
        end of the other markets' hour. A ban (418) stops the hour for all."""
        try:
            return step(market, hour, *args) is not False
        except BrokerBanned:
            raise
        except Exception as exc:  # noqa: BLE001 - one market's failure ends no other's hour
            log.exception("%s %s failed", market, hour)
            self._no_decision(market, hour, f"this market's hour failed: {exc!r}"[:500])
            return False

    def _before_asking(
        self, market: str, hour: pd.Timestamp, candles: pd.DataFrame, halted: dict[str, list[Halt]]
    ) -> bool:
        """Record the outcome of the decision `horizon` hours ago; False when the market must not
        trade this hour (halted, or too late after the close)."""
        self._record_outcome(market, hour, candles["close"])
        if market in halted:
            reasons = "; ".join(h.reason for h in halted[market])
            self._no_decision(market, hour, f"market halted: {reasons}; {ACK_HINT}")
            return False
        late = self._late(hour)
        if late:
            self._no_decision(market, hour, late)
            return False
        return True

    def _arms_hour(
        self,
        market: str,
        hour: pd.Timestamp,
        candles: pd.DataFrame,
        prices: dict[str, float],
        served: Served,
    ) -> None:
        for arm in self.arms:
            self._arm_hour(self.accounts[(arm, market)], hour, candles, prices, served)

    def _late(self, hour: pd.Timestamp) -> str:
        if self.now is None:
            return ""
        delay = (self.now() - (hour + HOUR)).total_seconds()
        limit = self.config.loop.max_order_delay_s
        if delay <= limit:
            return ""
        return (
            f"late: {delay:.0f} s after the candle closed, past loop.max_order_delay_s "
            f"({limit:g} s); nothing sent for this hour"
        )

    def _ask_all(
        self, markets: list[str], candles: dict[str, pd.DataFrame], prices: dict[str, float]
    ) -> dict[str, Served]:
        """Every market's prediction from one batched call. The sizing node sizes for the arm
        that follows it (llm, or live), so each market's ask carries that arm's account."""
        sized = [a for a in self.arms if a != "fixed"] or self.arms
        asks, served = {}, {}
        for market in markets:
            try:
                account = self.accounts[(sized[0], market)].state(prices[market], prices)
                asks[market] = Ask(candles[market], account)
            except Exception as exc:  # noqa: BLE001 - that market asks nothing this hour
                served[market] = Served(None, f"account state failed: {exc!r}"[:300])
        answers = ask_all(self.predictor, asks) if asks else {}
        for market, answer in answers.items():
            failed = isinstance(answer, ServeUnavailable)
            served[market] = Served(None, str(answer)) if failed else Served(answer)
        return served

    def _arm_hour(
        self,
        account: ArmAccount,
        hour: pd.Timestamp,
        candles: pd.DataFrame,
        prices: dict[str, float],
        served: Served,
    ) -> None:
        price = prices[account.market]
        decision = self.ledger.decision(account.market, hour.to_pydatetime(), account.arm)
        if decision is None:
            decision = self._decide(account, hour, candles, prices, served)
            if decision is None:
                return
            self.ledger.record_decision(decision, account.arm)
        done = account.execute(decision, price, self.ledger)
        if done.unknown:
            halt(self.ledger, account.market, done.unknown)

    def _decide(self, account: ArmAccount, hour, candles, prices, served: Served):
        market, when = account.market, hour.to_pydatetime()
        price, closes = prices[market], candles["close"]
        state = account.state(price, prices)
        seen = account.high.seen
        missed = closes.loc[closes.index > seen].iloc[:-1] if seen is not None else closes.iloc[:0]
        opened = None  # the entry hour this account does not know (a restart): from the fills
        if account.high.entered is None and holding(state, price):
            opened = self.ledger.highs.opened(account.arm, market)
        high = account.watch(state, price, when, missed.tolist(), opened)
        self.ledger.highs.set(account.arm, market, high.to_dict())
        if served.reply is None:
            self.ledger.record_no_decision(market, when, account.arm, served.why)
            return account.protect(state, price, when, self.config, served.why)
        reply = served.reply
        return account.plan(
            reply.prediction(), state, price, closes.to_numpy(), reply.volatility, reply.sizing,
            self.config, stale=served.stale, moves=reply.label.moves(), novel=served.novel,
        )  # fmt: skip

    # -- bookkeeping ---------------------------------------------------------------------------

    def _record_outcome(self, market: str, hour: pd.Timestamp, closes: pd.Series) -> None:
        """The label that came true for the decision made `horizon` hours ago."""
        decided = hour - pd.Timedelta(hours=self.labels.horizon)
        if decided not in closes.index:
            return
        realised = float(closes.loc[hour] / closes.loc[decided] - 1.0)
        label = int(label_returns(np.array([realised]), self.labels.threshold)[0])
        self.ledger.record_outcome(
            market, decided.to_pydatetime(), self.labels.horizon, label, realised
        )

    def _snapshot(self, hour: pd.Timestamp, prices: dict[str, float]) -> None:
        """Each arm's equity, every exchange account counted once: a paper arm's account per
        market, or the one live account (whose balances are also kept for the next restart's
        reconcile)."""
        marks = {m: prices.get(m) or self._last_price(m) or 0.0 for m in self.markets}
        for arm in self.arms:
            mine = [a.broker for (owner, _), a in self.accounts.items() if owner == arm]
            books = {id(broker): broker for broker in mine}
            cash, value = 0.0, 0.0
            for broker in books.values():
                balances = broker.balances()
                krw, coins = book_value(balances, marks)
                cash, value = cash + krw, value + coins
                if broker.durable and self.reconciled:  # never a baseline not checked first
                    held = {c: b.balance + b.locked for c, b in balances.items()}
                    self.ledger.snapshots.record(hour.to_pydatetime(), held, note="hour end")
            self.ledger.record_equity(hour.to_pydatetime(), cash, value, arm)

    def _last_price(self, market: str) -> float | None:
        fills = self.ledger.fills(market=market)
        return fills[-1].price if fills else None
