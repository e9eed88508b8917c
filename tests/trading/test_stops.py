"""The price-only exits: a slow slide the emergency score never sells, sold by the stop-loss; a
trailing stop from the high since entry; the same rules without a model (`protect_hour`), in the
backtester, and a stale model that opens nothing. Synthetic shapes: real data lacks a clean
50 % slide under a calm model."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from features.barriers import LabelMoves
from features.domain import AccountState, Prediction, Side, Signal
from trading.account import FixedRatio
from trading.backtest import replay
from trading.config import TradingConfig, load_trading_config
from trading.predictions import market_hours
from trading.risk import RiskGuard
from trading.step import NO_MODEL, PROTECTIVE, hour_emergency_score, plan_hour, protect_hour
from trading.stops import EntryHigh, follow_high, stop_reason

MARKET = "KRW-BTC"
HOUR = datetime(2025, 3, 1, 14)
CALM_HOLD = (0.20, 0.60, 0.20)  # the model says HOLD, not worried
BUY = (0.10, 0.20, 0.70)
LABEL_MOVES = LabelMoves.of_threshold(0.005)  # as a bundle of the 6 h / 0.5 % label carries them
PROBA = ["p_sell", "p_hold", "p_buy"]
STOPS_OFF = ["risk.stops.stop_loss=null", "risk.stops.trailing_stop=null"]


def _series(returns: np.ndarray) -> tuple[pd.DatetimeIndex, np.ndarray]:
    times = pd.date_range("2024-01-01 09:00", periods=len(returns) + 1, freq="h", name="time")
    return times, 100_000_000 * np.cumprod(np.concatenate(([1.0], 1 + returns)))


def _run(returns: np.ndarray, config: TradingConfig, calm_hours: int = 200):
    """Replay: BUY at the first predicted hour, then a calm HOLD every hour after."""
    times, close = _series(returns)
    rows = np.tile(CALM_HOLD, (len(times), 1))
    rows[calm_hours] = BUY
    frame = pd.DataFrame(rows[calm_hours:], index=times[calm_hours:], columns=PROBA)
    predictions = frame.assign(source="oos", model_version="synthetic")
    hours = market_hours(MARKET, times, close, predictions, LABEL_MOVES)
    return replay(hours, "fixed", FixedRatio(0.5), config), close


def _slide() -> np.ndarray:
    """Calm, then -0.5 % an hour for 140 hours: a slow 50 % slide, no volatility spike."""
    rng = np.random.default_rng(11)
    return np.concatenate([rng.normal(0, 0.002, 200), np.full(140, -0.005)])


def test_a_slow_50_percent_slide_under_a_hold_is_sold_by_the_stop_loss() -> None:
    kept, close = _run(_slide(), load_trading_config(overrides=STOPS_OFF))
    assert (kept.records["side"] == "ask").sum() == 0, "the emergency score alone sold it"
    assert kept.position[-1] > 0 and close[-1] / close[200] < 0.51  # ridden down 49 %+

    sold, _ = _run(_slide(), TradingConfig())
    (sale,) = sold.records[sold.records["side"] == "ask"].itertuples()
    assert "stop-loss" in sale.reason and "overrides HOLD" in sale.reason
    assert sale.fill_state == "done" and sale.position == 0.0
    entry = sold.fills[0].price
    assert entry * 0.89 <= sale.price <= entry * 0.90  # the first close 10 % under the entry
    assert sold.equity[-1] > 0.94 * 1_000_000  # about half the account lost 10 %, not 50 %


def test_the_emergency_score_of_that_slide_stays_under_its_threshold() -> None:
    """Why the stop-loss is needed: the loss term weighs at most 0.5 against a 0.7 threshold."""
    config = TradingConfig().risk.emergency
    _, close = _series(_slide())
    account = AccountState(500_000.0, 0.005, close[200], 500_000.0 + 0.005 * close[-1], 0.0)
    score = hour_emergency_score(account, close[-1], close, CALM_HOLD[0], config)
    assert score < config.threshold


def test_the_trailing_stop_sells_a_fall_from_the_high_while_still_above_the_entry() -> None:
    rng = np.random.default_rng(5)
    returns = np.concatenate(
        [rng.normal(0, 0.002, 200), np.full(40, 0.005), np.full(40, -0.005)]
    )  # +22 % from the entry, then down 18 % from that high: still above the entry
    held, close = _run(returns, load_trading_config(overrides=STOPS_OFF))
    assert (held.records["side"] == "ask").sum() == 0
    sold, _ = _run(returns, TradingConfig())
    (sale,) = sold.records[sold.records["side"] == "ask"].itertuples()
    assert "trailing stop" in sale.reason
    top = close[200:241].max()
    assert sale.price <= top * 0.85 and sale.price > sold.fills[0].price  # a profit kept


def _holding(entry: float, price: float, units: float = 0.01) -> AccountState:
    return AccountState(500_000.0, units, entry, 500_000.0 + units * price, 0.0)


def test_without_a_model_the_hour_still_sells_on_the_stop() -> None:
    config, guard = TradingConfig(), RiskGuard.from_config(TradingConfig().risk)
    down = _holding(100_000_000.0, 88_000_000.0)
    decision, guard = protect_hour(
        MARKET, down, 88_000_000.0, HOUR, guard, config, why="Serve did not answer"
    )
    assert decision is not None and decision.signal is Signal.SELL
    assert decision.order is not None and decision.order.side is Side.ASK
    assert decision.order.volume == down.position
    assert decision.order.identifier == f"{MARKET}|2025-03-01T14:00|ask"
    assert (decision.sizing_source, decision.model_version) == (PROTECTIVE, NO_MODEL)
    assert "stop-loss" in decision.reason and "Serve did not answer" in decision.reason
    assert guard.last_equity == down.equity  # the kill switch saw the hour
    calm = _holding(100_000_000.0, 97_000_000.0)
    assert protect_hour(MARKET, calm, 97e6, HOUR, guard, config)[0] is None
    flat = AccountState.flat(1_000_000.0)
    assert protect_hour(MARKET, flat, 50e6, HOUR, guard, config)[0] is None


def test_the_kill_switch_still_switches_off_in_an_hour_without_a_model() -> None:
    config = TradingConfig()
    guard = RiskGuard.from_config(config.risk).observe(HOUR - timedelta(hours=1), 1_000_000.0)
    fallen = _holding(100_000_000.0, 95_000_000.0, units=0.005)
    fallen = AccountState(400_000.0, 0.005, 100e6, 400_000.0 + 0.005 * 95e6, 0.0)
    _, guard = protect_hour(MARKET, fallen, 95e6, HOUR, guard, config)
    assert guard.halted and "daily loss" in guard.reason


def test_the_high_since_entry_follows_the_closes_and_resets_when_flat() -> None:
    held = _holding(100.0, 105.0, units=1000.0)
    high = follow_high(EntryHigh(), held, 105.0, HOUR)
    assert high == EntryHigh(105.0, HOUR, HOUR)  # an opening nobody saw: counts from now
    later = HOUR + timedelta(hours=4)  # three hours missed (a restart): their closes count
    high = follow_high(high, held, 101.0, later, [104.0, 112.0, 103.0])
    assert high.high == 112.0 and high.seen == later and high.entered == HOUR
    assert EntryHigh.from_dict(high.to_dict()) == high
    assert follow_high(high, AccountState.flat(1e6), 101.0, later) == EntryHigh()
    assert stop_reason(held, 95.0, high.high, TradingConfig().risk.stops) is not None  # 15 % off


def test_a_stale_model_opens_no_position_but_its_sells_go_out() -> None:
    config, guard = TradingConfig(), RiskGuard.from_config(TradingConfig().risk)
    closes = np.full(200, 100_000_000.0)
    stale = "model v0001 is stale: 900 h past its training window"
    flat = AccountState.flat(1_000_000.0)
    buy = Prediction(MARKET, HOUR, BUY, "v0001")
    decision, _ = plan_hour(buy, 0.5, "fixed", flat, 1e8, HOUR, closes, guard, config, stale=stale)
    assert decision.order is None and stale in decision.reason and "BUY not sent" in decision.reason
    sell = Prediction(MARKET, HOUR, (0.7, 0.2, 0.1), "v0001")
    held = _holding(1e8, 1e8)
    decision, _ = plan_hour(sell, 0.5, "fixed", held, 1e8, HOUR, closes, guard, config, stale=stale)
    assert decision.order is not None and decision.order.side is Side.ASK


@pytest.mark.parametrize("price, fires", [(90_000_001.0, False), (90_000_000.0, True)])
def test_the_stop_loss_fires_at_its_limit_exactly(price: float, fires: bool) -> None:
    held = _holding(100_000_000.0, price)
    reason = stop_reason(held, price, 0.0, TradingConfig().risk.stops)
    assert (reason is not None) is fires


def test_a_replay_compares_a_protective_hour_by_its_order_not_by_probabilities() -> None:
    """A protective sell has no prediction to recompute (its stored probabilities are
    placeholders): the replay compares its order with what the backtester's same rules did."""
    from types import SimpleNamespace

    from trading.replay import compare_hour

    live = SimpleNamespace(
        time=HOUR, market=MARKET, arm="fixed", model_version=NO_MODEL, p_sell=0.0, p_hold=1.0,
        p_buy=0.0, signal=int(Signal.SELL), order_side="ask", order_volume=0.01,
        order_identifier=f"{MARKET}|2025-03-01T14:00|ask",
    )  # fmt: skip
    again = SimpleNamespace(p_sell=np.nan, p_hold=np.nan, p_buy=np.nan, signal="SELL", side="ask",
                            order_volume=0.01, fill_volume=0.01)  # fmt: skip
    assert compare_hour(live, again, {}) == []
    held = SimpleNamespace(**{**vars(again), "side": ""})  # the replay kept the position
    (difference,) = compare_hour(live, held, {})
    assert difference.field == "order side"
