"""One trading hour, end to end: candles -> Serve -> policy and risk -> broker -> ledger.

`HourlyTrader.run_hour` is what the TradingLoop actor calls once an hour (and what a test calls
with an accelerated clock). It is safe to run again for the same hour after a crash: a decision
already in the ledger is reused, never re-planned, and an order already sent is looked up by its
identifier instead of being sent twice. Each arm (A/B: LLM sizing vs a fixed ratio) trades its own
account per market; both follow the same prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features import indicators
from features.domain import AccountState, Decision, Order
from features.exchange import HOUR
from features.labels import label_returns
from features.sources import CandleSource
from trading.accounts import account_state, holdings_value
from trading.broker import Broker, BrokerBanned, BrokerError, Fill, OrderRejected, OrderState
from trading.config import TradingConfig
from trading.ledger import Ledger
from trading.ledger_rows import FINAL_STATUSES
from trading.risk import RiskGuard
from trading.serve_client import Predictor, ServedSignal, ServeUnavailable
from trading.step import plan_hour

log = logging.getLogger(__name__)


@dataclass
class Account:
    """One arm's account in one market: its broker and its kill switch."""

    arm: str
    market: str
    broker: Broker
    guard: RiskGuard

    @property
    def risk_key(self) -> str:
        return f"{self.arm}/{self.market}"


@dataclass(frozen=True)
class Labels:
    horizon: int
    threshold: float


class HourlyTrader:
    def __init__(
        self,
        config: TradingConfig,
        markets: list[str],
        ledger: Ledger,
        source: CandleSource,
        predictor: Predictor,
        accounts: dict[tuple[str, str], Account],
        labels: Labels,
        on_hour: Callable[[HourlyTrader, pd.Timestamp], None] | None = None,
    ) -> None:
        self.config = config
        self.markets = markets
        self.arms = sorted({arm for arm, _ in accounts})
        self.ledger = ledger
        self.source = source
        self.predictor = predictor
        self.accounts = accounts
        self.labels = labels
        self.on_hour = on_hour
        self.window = max(indicators.CANDLES_FOR_SERVING, config.loop.rolling_window_hours + 1)

    def run_hour(self, hour: pd.Timestamp) -> None:
        """Decide and trade the hour whose candle opened at `hour` (it has just closed)."""
        self.reconcile(hour)
        prices: dict[str, float] = {}
        for market in self.markets:
            price = self._market_hour(market, hour)
            if price is not None:
                prices[market] = price
        self._snapshot(hour, prices)
        if self.on_hour:
            self.on_hour(self, hour)

    # -- one market ----------------------------------------------------------------------------

    def _no_decision(self, market: str, hour: pd.Timestamp, reason: str) -> None:
        log.warning("%s %s: no decision: %s", market, hour, reason)
        for arm in self.arms:
            self.ledger.record_no_decision(market, hour.to_pydatetime(), arm, reason)

    def _candles(self, market: str, hour: pd.Timestamp) -> pd.DataFrame | None:
        try:
            candles = self.source.latest(market, self.window, now=(hour + HOUR).to_pydatetime())
        except Exception as exc:  # noqa: BLE001 - any fetch failure is this hour's no_decision
            self._no_decision(market, hour, f"candle fetch failed: {exc}")
            return None
        newest = candles.index[-1] if len(candles) else None
        if newest != hour:
            self._no_decision(
                market, hour, f"stale data: newest closed candle is {newest}, expected {hour}"
            )
            return None
        return candles

    def _market_hour(self, market: str, hour: pd.Timestamp) -> float | None:
        candles = self._candles(market, hour)
        if candles is None:
            return None
        price = float(candles["close"].iloc[-1])
        self._record_outcome(market, hour, candles["close"])
        # The sizing node sizes for the arm that follows it (llm, or live), so it sees that account.
        sized = [a for a in self.arms if a != "fixed"] or self.arms
        account = self.accounts[(sized[0], market)]
        try:
            served = self.predictor.predict(market, candles, self._state(account, price))
        except ServeUnavailable as exc:
            self._no_decision(market, hour, str(exc))
            return price
        if pd.Timestamp(served.prediction.time) != hour:
            self._no_decision(market, hour, f"Serve priced {served.prediction.time}, not {hour}")
            return price
        closes = candles["close"].to_numpy()
        for arm in self.arms:
            self._arm_hour(self.accounts[(arm, market)], hour, served, price, closes)
        return price

    def _state(self, account: Account, price: float) -> AccountState:
        return account_state(account.broker, account.market, price, account.guard.peak_equity)

    def _sizing(self, arm: str, served: ServedSignal) -> tuple[float, str]:
        if arm == "fixed":
            return self.config.ab.fixed_ratio, "fixed"
        return served.ratio, served.sizing_source

    def _arm_hour(
        self,
        account: Account,
        hour: pd.Timestamp,
        served: ServedSignal,
        price: float,
        closes: np.ndarray,
    ) -> None:
        when = hour.to_pydatetime()
        decision = self.ledger.decision(account.market, when, account.arm)
        if decision is None:
            ratio, source = self._sizing(account.arm, served)
            state = self._state(account, price)
            decision, account.guard = plan_hour(
                served.prediction, ratio, source, state, price, when, closes, account.guard,
                self.config,
            )  # fmt: skip
            self.ledger.set_risk_state(account.guard.to_dict(), account.risk_key)
            self.ledger.record_decision(decision, account.arm)
        if decision.order is not None:
            self.execute(account, decision, price)

    # -- orders --------------------------------------------------------------------------------

    def execute(self, account: Account, decision: Decision, price: float) -> Fill | None:
        """Send `decision.order` once; an identifier already in the ledger is looked up instead."""
        order = decision.order
        assert order is not None
        record = self.ledger.order(order.identifier, account.arm)
        if record is not None and record.status in FINAL_STATUSES:
            return None
        if record is None:
            attempt = int(order.identifier.rsplit("|", 1)[1])
            self.ledger.record_order_intent(order, decision.time, attempt, account.arm)
        else:
            known = account.broker.lookup(order.identifier)
            if known is not None:
                return self._settle(account, order, known)
        return self._send(account, order, price)

    def _send(self, account: Account, order: Order, price: float) -> Fill | None:
        try:
            fill = account.broker.place(order, price)
        except OrderRejected as exc:
            self.ledger.mark_order(order.identifier, account.arm, "rejected", str(exc))
            return None
        except BrokerBanned:
            raise
        except BrokerError as exc:
            self.ledger.mark_order(order.identifier, account.arm, "unknown", str(exc))
            return None
        return self._settle(account, order, fill)

    def _settle(self, account: Account, order: Order, fill: Fill) -> Fill | None:
        if fill.state is OrderState.REJECTED:
            self.ledger.mark_order(order.identifier, account.arm, "rejected", "refused by broker")
            return None
        if fill.state is OrderState.WAIT:
            self.ledger.mark_order(order.identifier, account.arm, "sent")
            return None
        self.ledger.record_fill(fill, account.arm)
        return fill

    def reconcile(self, hour: pd.Timestamp) -> None:
        """Settle orders whose outcome the ledger does not know (a crash, a lost reply, a wait).

        An intent the broker never saw is sent by this hour's run if it belongs to this hour;
        an older one is abandoned, since its price is gone.
        """
        for record in self.ledger.pending_orders():
            account = self.accounts.get((record.arm, record.market))
            if account is None:
                continue
            fill = account.broker.lookup(record.identifier)
            if fill is None:
                if pd.Timestamp(record.hour) != hour:
                    reason = "never reached the broker; its hour passed"
                    self.ledger.mark_order(record.identifier, record.arm, "rejected", reason)
                continue
            if fill.state is OrderState.REJECTED:
                self.ledger.mark_order(record.identifier, record.arm, "rejected", "refused")
            elif fill.state is not OrderState.WAIT:
                self.ledger.record_fill(fill, record.arm)

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
        for arm in self.arms:
            cash, value = 0.0, 0.0
            for market in self.markets:
                account = self.accounts[(arm, market)]
                price = prices.get(market) or self._last_price(market)
                state = account_state(account.broker, market, price or 0.0, None)
                cash += state.cash
                value += holdings_value(state, price or 0.0)
            self.ledger.record_equity(hour.to_pydatetime(), cash, value, arm)

    def _last_price(self, market: str) -> float | None:
        fills = self.ledger.fills(market=market)
        return fills[-1].price if fills else None
