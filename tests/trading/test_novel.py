"""The novelty gate in the order path: a novel input opens no position in `plan_hour` and in the
backtester's replay, while a stop exit still goes out. Synthetic shapes: a flat price and a
clean stop-loss drop, which real data does not offer on demand."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from features.domain import AccountState, Prediction, Side
from trading.account import FixedRatio
from trading.backtest import NOVEL, replay
from trading.config import TradingConfig
from trading.predictions import market_hours
from trading.risk import RiskGuard
from trading.step import plan_hour

MARKET = "KRW-BTC"
HOUR = datetime(2025, 3, 1, 14)
BUY = (0.10, 0.20, 0.70)
PROBA = ["p_sell", "p_hold", "p_buy"]
NOVEL_WHY = "novel input (dissimilarity 4.20 past model v0001's threshold)"


def _plan(account: AccountState, price: float, novel: str):
    config = TradingConfig()
    closes = np.full(200, price)
    buy = Prediction(MARKET, HOUR, BUY, "v0001")
    guard = RiskGuard.from_config(config.risk)
    return plan_hour(buy, 0.5, "fixed", account, price, HOUR, closes, guard, config, novel=novel)[0]


def test_a_novel_buy_opens_no_position_and_says_why() -> None:
    flat = AccountState.flat(1_000_000.0)
    assert _plan(flat, 1e8, "").order.side is Side.BID  # the same BUY, familiar: it goes out
    decision = _plan(flat, 1e8, NOVEL_WHY)
    assert decision.order is None
    assert NOVEL_WHY in decision.reason and "BUY not sent" in decision.reason


def test_a_stop_exit_still_goes_out_on_a_novel_hour() -> None:
    entry, price = 100_000_000.0, 84_000_000.0  # 16 % under the entry: the stop-loss fires
    held = AccountState(500_000.0, 0.005, entry, 500_000.0 + 0.005 * price, 0.0)
    decision = _plan(held, price, NOVEL_WHY)
    assert decision.order is not None and decision.order.side is Side.ASK
    assert decision.order.volume == held.position and "stop-loss" in decision.reason


def test_the_backtester_opens_nothing_on_novel_hours() -> None:
    times = pd.date_range("2024-01-01 09:00", periods=300, freq="h", name="time")
    close = np.full(len(times), 100_000_000.0)
    frame = pd.DataFrame(np.tile(BUY, (100, 1)), index=times[200:], columns=PROBA)
    predictions = frame.assign(source="bundle", model_version="v0001")

    def bids(novel: np.ndarray | None) -> pd.DataFrame:
        marked = predictions if novel is None else predictions.assign(novel=novel)
        run = replay(market_hours(MARKET, times, close, marked), "fixed", FixedRatio(0.5),
                     TradingConfig())  # fmt: skip
        return run.records

    familiar = bids(None)
    assert (familiar["side"] == "bid").sum() >= 1
    novel = np.zeros(100, dtype=bool)
    novel[:50] = True  # the first 50 BUY hours are novel: the first buy waits for hour 250
    records = bids(novel)
    assert (records["side"].iloc[:50] == "").all()
    assert records["reason"].iloc[:50].str.contains(NOVEL, regex=False).all()
    assert records["side"].iloc[50] == "bid"
