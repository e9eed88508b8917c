from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.domain import AccountState, Prediction, Side, Signal
from trading.config import TradingConfig
from trading.policy import decide
from trading.risk import (
    RiskGuard,
    apply_emergency,
    emergency_score,
    rolling_volatility_ratio,
    volatility_ratio,
)
from trading.step import (
    hour_emergency_score,
    plan_hour,
    rolling_sizing_volatility,
    sizing_volatility,
)
from trading.stops import apply_stops

CONFIG = TradingConfig()
HOUR = datetime(2025, 3, 1, 14)
MARKET = "KRW-BTC"
HOLD_WORRIED = (0.40, 0.55, 0.05)  # the model says HOLD, with a sizeable sell probability
BUY = (0.10, 0.20, 0.70)


def _prediction(probabilities: tuple[float, float, float]) -> Prediction:
    return Prediction(MARKET, HOUR, probabilities, "v0001")


def _crash_closes(n_calm: int = 200, crash: tuple[float, ...] = (-0.02,) * 4) -> np.ndarray:
    """Calm hourly closes around 100 M KRW, then a few -2 % hours: the shape of a crash."""
    rng = np.random.default_rng(7)
    calm = 100_000_000 * np.cumprod(1 + rng.normal(0, 0.002, n_calm))
    return np.concatenate([calm, calm[-1] * np.cumprod(1 + np.array(crash))])


def _holding(entry: float, price: float, units: float = 0.005) -> AccountState:
    cash = 700_000.0
    return AccountState(cash, units, entry, cash + units * price, 0.0)


def test_crash_triggers_the_emergency_sell_whatever_the_model_says() -> None:
    closes = _crash_closes()
    entry, price = float(closes[-5]), float(closes[-1])
    account = _holding(entry, price)
    guard = RiskGuard.from_config(CONFIG.risk)
    decision, _ = plan_hour(
        _prediction(HOLD_WORRIED), 0.3, "fixed", account, price, HOUR, closes, guard, CONFIG
    )
    assert decision.signal is Signal.SELL
    assert decision.order is not None and decision.order.side is Side.ASK
    assert decision.order.volume == account.position
    assert "emergency sell" in decision.reason and "overrides HOLD" in decision.reason


def test_calm_loss_alone_does_not_fire_with_the_default_weights() -> None:
    closes = _crash_closes(crash=())
    price = float(closes[-1])
    account = _holding(price * 1.03, price)  # 3 % under water, no spike, model calm
    guard = RiskGuard.from_config(CONFIG.risk)
    decision, _ = plan_hour(
        _prediction((0.1, 0.8, 0.1)), 0.3, "fixed", account, price, HOUR, closes, guard, CONFIG
    )
    assert decision.order is None and decision.signal is Signal.HOLD


def test_flat_account_scores_zero_without_reading_closes() -> None:
    flat = AccountState(1_000_000.0, 0.0, 0.0, 1_000_000.0, 0.0)
    # closes that would make volatility_ratio fail loudly if it were computed
    assert hour_emergency_score(flat, 100.0, np.array([]), 1.0, CONFIG.risk.emergency) == 0.0


def test_kill_switch_drops_buys_but_lets_sells_out() -> None:
    guard = RiskGuard.from_config(CONFIG.risk).observe(HOUR - timedelta(days=3), 1_000_000.0)
    price = 90_000_000.0
    account = AccountState(780_000.0, 0.001, 95_000_000.0, 780_000.0 + 90_000.0, 0.13)
    later = HOUR - timedelta(days=1)
    dropped, guard = plan_hour(
        _prediction(BUY), 0.5, "fixed", account, price, later, np.array([price]), guard, CONFIG
    )
    assert guard.halted and "daily loss" in guard.reason
    assert dropped.order is None and "trading switched off" in dropped.reason
    sell, guard = plan_hour(
        _prediction((0.7, 0.2, 0.1)), 0.5, "fixed", account, price, HOUR, np.array([price]),
        guard, CONFIG,
    )  # fmt: skip
    assert sell.order is not None and sell.order.side is Side.ASK


def test_kill_switch_sees_this_hours_equity_before_the_order() -> None:
    """The hour whose close breaches the limit sends no buy: observe comes before gate."""
    guard = RiskGuard.from_config(CONFIG.risk).observe(HOUR, 1_000_000.0)
    account = AccountState(940_000.0, 0.0, 0.0, 940_000.0, 0.06)  # 6 % down on the day
    decision, guard = plan_hour(
        _prediction(BUY), 0.5, "fixed", account, 100.0, HOUR + timedelta(hours=1),
        np.array([100.0]), guard, CONFIG,
    )  # fmt: skip
    assert guard.halted and "daily loss" in guard.reason and decision.order is None


probabilities = st.tuples(*(st.floats(0.01, 1.0) for _ in range(3))).map(
    lambda p: tuple(x / sum(p) for x in p)
)


@settings(max_examples=60, deadline=None)
@given(
    probs=probabilities,
    ratio=st.floats(0.0, 1.0),
    units=st.sampled_from([0.0, 0.0001, 0.004]),
    entry_factor=st.floats(0.9, 1.2),
    crash=st.sampled_from([(), (-0.02,) * 3, (0.03, -0.05)]),
)
def test_plan_hour_is_decide_then_emergency_then_stops_then_gate(
    probs, ratio: float, units: float, entry_factor: float, crash: tuple[float, ...]
) -> None:
    """The composition the risk module documents, spelled out by hand, gives the same Decision."""
    closes = _crash_closes(crash=crash)
    price = float(closes[-1])
    entry = price * entry_factor if units else 0.0
    account = AccountState(500_000.0, units, entry, 500_000.0 + units * price, 0.0)
    prediction = _prediction(probs)
    guard = RiskGuard.from_config(CONFIG.risk)
    got, after = plan_hour(prediction, ratio, "rule", account, price, HOUR, closes, guard, CONFIG)
    expected = decide(prediction, ratio, "rule", account, price, HOUR, CONFIG.policy)
    em = CONFIG.risk.emergency
    loss = max(0.0, 1 - price / entry) if entry else 0.0
    spike = volatility_ratio(closes, em.recent_hours, em.baseline_hours)
    score = emergency_score(loss, spike, probs[0], em)
    expected = apply_emergency(expected, account, price, score, em)
    expected = apply_stops(expected, account, price, 0.0, CONFIG.risk.stops)
    expected = guard.observe(HOUR, account.equity).gate(expected)
    assert got == expected
    assert after == guard.observe(HOUR, account.equity)


def test_emergency_can_be_switched_off() -> None:
    off = TradingConfig.model_validate(
        {"risk": {"emergency": {**CONFIG.risk.emergency.model_dump(), "enabled": False}}}
    )
    closes = _crash_closes()
    price = float(closes[-1])
    account = _holding(float(closes[-5]), price)
    decision, _ = plan_hour(
        _prediction(HOLD_WORRIED), 0.3, "fixed", account, price, HOUR, closes,
        RiskGuard.from_config(off.risk), off,
    )  # fmt: skip
    assert decision.order is None


def test_rolling_sizing_volatility_matches_the_single_hour_form() -> None:
    closes = _crash_closes()
    batch = rolling_sizing_volatility(closes)
    single = [sizing_volatility(closes[: i + 1]) for i in range(len(closes))]
    np.testing.assert_array_equal(batch, single)
    assert batch[0] == batch[1] == 0.0
    assert batch[-1] == pytest.approx(np.std(np.diff(closes[-25:]) / closes[-25:-1]))


def test_rolling_volatility_ratio_matches_the_single_hour_form() -> None:
    """Exactly, hour by hour: the backtester hands plan_hour these numbers in place of the
    window the loop computes them from, so a backtest must decide as the loop would."""
    closes = np.concatenate([np.full(200, 100.0), _crash_closes(), np.full(30, 50.0)])
    closes[250] = 0.0  # a refused price: every window holding it says "no evidence"
    em = TradingConfig().risk.emergency
    batch = rolling_volatility_ratio(closes, em.recent_hours, em.baseline_hours)
    with np.errstate(divide="ignore", invalid="ignore"):
        single = [volatility_ratio(closes[: i + 1], em.recent_hours, em.baseline_hours)
                  for i in range(len(closes))]  # fmt: skip
    np.testing.assert_array_equal(batch, single)
    assert batch[150] == 1.0 and batch[250 + em.baseline_hours] == 1.0  # flat; holds the 0
    assert batch.max() > em.spike_ratio  # the crash is a spike
