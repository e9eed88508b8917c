"""One trading hour, end to end: candles -> Serve -> policy and risk -> broker -> ledger.

`HourlyTrader.run_hour` is what the TradingLoop actor calls once an hour (and what a test calls
with an accelerated clock). It is safe to run again for the same hour after a crash: a decision
already in the ledger is reused, never re-planned, and an order already sent is looked up by its
identifier instead of being sent twice (`trading.account.ArmAccount.execute`, the ledger as its
journal). Each arm (A/B: LLM sizing vs a fixed ratio) trades its own account per market; both
follow the same prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features import indicators
from features.exchange import HOUR
from features.labels import label_returns
from features.sources import CandleSource
from serve.schema import PredictionReply
from trading.account import ArmAccount
from trading.config import TradingConfig
from trading.ledger import Ledger
from trading.serve_client import Predictor, ServeUnavailable

log = logging.getLogger(__name__)


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
        accounts: dict[tuple[str, str], ArmAccount],
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

    @property
    def window(self) -> int:
        """Candles fetched per market and hour: what serving needs (derived from the features'
        warm-up, read at each call) or the rolling window, whichever is longer."""
        return max(indicators.CANDLES_FOR_SERVING, self.config.loop.rolling_window_hours + 1)

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
        asking = self.accounts[(sized[0], market)]
        try:
            served = self.predictor.predict(market, candles, asking.state(price))
        except ServeUnavailable as exc:
            self._no_decision(market, hour, str(exc))
            return price
        closes = candles["close"].to_numpy()
        for arm in self.arms:
            self._arm_hour(self.accounts[(arm, market)], served, price, closes)
        return price

    def _arm_hour(
        self, account: ArmAccount, served: PredictionReply, price: float, closes: np.ndarray
    ) -> None:
        prediction = served.prediction()
        decision = self.ledger.decision(account.market, prediction.time, account.arm)
        if decision is None:
            state = account.state(price)
            decision = account.plan(
                prediction, state, price, closes, served.volatility, served.sizing, self.config
            )
            self.ledger.set_risk_state(account.guard.to_dict(), account.risk_key)
            self.ledger.record_decision(decision, account.arm)
        account.execute(decision, price, self.ledger)

    def reconcile(self, hour: pd.Timestamp) -> None:
        """Settle the ledger's orders whose outcome it does not know, before the hour trades."""
        for record in self.ledger.pending_orders():
            account = self.accounts.get((record.arm, record.market))
            if account is not None:
                account.reconcile(record, hour.to_pydatetime(), self.ledger)

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
                price = prices.get(market) or self._last_price(market) or 0.0
                state = self.accounts[(arm, market)].state(price)
                cash += state.cash
                value += state.position * price
            self.ledger.record_equity(hour.to_pydatetime(), cash, value, arm)

    def _last_price(self, market: str) -> float | None:
        fills = self.ledger.fills(market=market)
        return fills[-1].price if fills else None
