from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.domain import AccountState, Decision, Order, Prediction, Side, Signal
from trading.config import EmergencyConfig, PolicyConfig, RiskConfig
from trading.policy import decide
from trading.risk import (
    RiskGuard,
    apply_emergency,
    emergency_order,
    emergency_score,
    kill_reason,
    loss_from_entry,
    volatility_ratio,
)

EMERGENCY = EmergencyConfig()
HOUR = datetime(2025, 3, 1, 14)
PRICE = 95_000_000.0
RISK = RiskConfig()

finite = st.floats(-10, 10, allow_nan=False)
probability = st.floats(0, 1)


@settings(max_examples=200, deadline=None)
@given(loss=finite, vol=st.floats(0, 100), sell=probability)
def test_score_stays_in_unit_interval(loss: float, vol: float, sell: float) -> None:
    assert 0.0 <= emergency_score(loss, vol, sell, EMERGENCY) <= 1.0


@settings(max_examples=200, deadline=None)
@given(
    loss=st.floats(0, 1),
    vol=st.floats(0, 10),
    sell=probability,
    bump=st.floats(0, 1),
    which=st.sampled_from([0, 1, 2]),
)
def test_score_never_falls_when_an_input_worsens(loss, vol, sell, bump, which) -> None:
    before = [loss, vol, sell]
    after = list(before)
    after[which] = min(1.0, after[which] + bump) if which == 2 else after[which] + bump
    assert emergency_score(*after, EMERGENCY) >= emergency_score(*before, EMERGENCY)


def test_score_formula_extremes() -> None:
    assert emergency_score(0.0, 1.0, 0.0, EMERGENCY) == 0.0
    assert emergency_score(0.05, 3.0, 1.0, EMERGENCY) == pytest.approx(1.0)
    # 5 % loss alone -> loss term 1.0 x weight 0.5; half a spike (2x of 3x) -> 0.5 x 0.2.
    assert emergency_score(0.05, 2.0, 0.0, EMERGENCY) == pytest.approx(0.5 + 0.1)
    with pytest.raises(ValueError, match="finite"):
        emergency_score(float("nan"), 1.0, 0.0, EMERGENCY)


def test_loss_from_entry_and_volatility_ratio() -> None:
    assert loss_from_entry(100.0, 90.0) == pytest.approx(0.1)
    assert loss_from_entry(100.0, 110.0) == 0.0
    assert loss_from_entry(0.0, 90.0) == 0.0
    rng = np.random.default_rng(0)
    calm = 100 * np.exp(np.cumsum(rng.normal(0, 0.005, 200)))
    stormy = np.concatenate([calm, calm[-1] * np.exp(np.cumsum(rng.normal(0, 0.03, 6)))])
    assert volatility_ratio(calm, 6, 168) == pytest.approx(1.0, abs=0.6)
    assert volatility_ratio(stormy, 6, 168) > 3.0
    assert volatility_ratio([100.0, 101.0], 6, 168) == 1.0  # too short: no evidence
    assert volatility_ratio([100.0] * 50, 6, 168) == 1.0  # flat baseline


def holding(position: float = 0.001) -> AccountState:
    return AccountState(500_000, position, 100_000_000, 500_000 + position * PRICE, 0.0)


def buy_decision(acct: AccountState) -> Decision:
    pred = Prediction("KRW-BTC", HOUR, (0.2, 0.1, 0.7), "v0001")
    return decide(pred, 0.3, "fixed", acct, PRICE, HOUR, PolicyConfig())


def test_emergency_sell_overrides_a_buy() -> None:
    acct = holding()
    decision = buy_decision(acct)
    assert decision.order is not None and decision.order.side is Side.BID
    score = emergency_score(loss_from_entry(acct.entry_price, PRICE), 3.5, 0.2, EMERGENCY)
    assert score >= EMERGENCY.threshold
    overridden = apply_emergency(decision, acct, PRICE, score, EMERGENCY)
    assert overridden.signal is Signal.SELL
    assert overridden.order == Order(
        "KRW-BTC",
        Side.ASK,
        volume=0.001,
        identifier="KRW-BTC|2025-03-01T14:00|ask",
        reason=overridden.reason,
    )
    assert "emergency sell" in overridden.reason and "overrides BUY" in overridden.reason
    assert overridden.probabilities == decision.probabilities


def test_no_emergency_below_threshold_when_disabled_or_on_dust() -> None:
    acct = holding()
    decision = buy_decision(acct)
    assert apply_emergency(decision, acct, PRICE, 0.69, EMERGENCY) is decision
    off = EmergencyConfig(enabled=False)
    assert emergency_order("KRW-BTC", 0.01, PRICE, 1.0, off, HOUR) is None
    assert emergency_order("KRW-BTC", 0.00004, PRICE, 1.0, EMERGENCY, HOUR) is None


def test_kill_reason_names_the_limit() -> None:
    assert kill_reason(1_000_000, 960_000, 1_000_000, 0.05, 0.2) is None
    daily = kill_reason(1_000_000, 950_000, 1_000_000, 0.05, 0.2)
    assert daily is not None and daily.startswith("daily loss 5.00%")
    drawdown = kill_reason(800_000, 790_000, 1_000_000, 0.05, 0.2)
    assert drawdown is not None and drawdown.startswith("drawdown 21.00%")


def test_kill_switch_trips_on_daily_loss_and_stays_off_until_reset() -> None:
    guard = RiskGuard.from_config(RISK).observe(HOUR, 1_000_000)
    guard = guard.observe(HOUR + timedelta(hours=1), 970_000)
    assert not guard.halted
    guard = guard.observe(HOUR + timedelta(hours=2), 949_000)
    assert guard.halted and guard.reason.startswith("daily loss")
    assert guard.halted_at == HOUR + timedelta(hours=2)
    # Recovering, or a new day, does not switch trading back on.
    guard = guard.observe(HOUR + timedelta(days=1), 1_100_000)
    assert guard.halted and guard.reason.startswith("daily loss")
    buy = buy_decision(holding())
    gated = guard.gate(buy)
    assert gated.order is None and "trading switched off" in gated.reason
    sell = apply_emergency(buy, holding(), PRICE, 1.0, EMERGENCY)
    assert guard.gate(sell) is sell  # sells still go out
    with pytest.raises(ValueError, match="name"):
        guard.reset(by=" ", now=HOUR)
    reset = guard.reset(by="jiwoo", now=HOUR + timedelta(days=1, hours=1))
    assert not reset.halted and reset.reset_by == "jiwoo"
    assert reset.peak_equity == reset.day_start_equity == 1_100_000
    assert reset.gate(buy) is buy


def test_kill_switch_trips_on_drawdown_across_days() -> None:
    guard = RiskGuard.from_config(RISK)
    equity = 1_000_000.0
    for day in range(6):  # -4.5 % a day: under the daily limit, over 20 % from the peak by day 5
        equity *= 0.955
        guard = guard.observe(HOUR + timedelta(days=day), equity)
    assert guard.halted and guard.reason.startswith("drawdown")
    assert guard.peak_equity == pytest.approx(955_000)


def test_an_unchanged_hour_keeps_the_guard_but_still_checks_the_limits() -> None:
    calm = RiskConfig(daily_loss_limit=0.5)  # 20 % drawdown still applies
    guard = RiskGuard.from_config(calm).observe(HOUR, 1_000_000).observe(HOUR, 850_000)
    assert not guard.halted  # 15 % below the peak
    assert guard.observe(HOUR + timedelta(hours=1), 850_000) is guard  # nothing new to record
    tighter = RiskConfig(daily_loss_limit=0.5, max_drawdown=0.10)
    restored = RiskGuard.from_dict(guard.to_dict(), tighter)  # a restart under a tighter limit
    again = restored.observe(HOUR + timedelta(hours=1), 850_000)
    assert again.halted and again.reason.startswith("drawdown 15.00%")


def test_day_start_is_the_last_equity_before_the_day() -> None:
    guard = RiskGuard.from_config(RISK).observe(datetime(2025, 3, 1, 23), 1_000_000)
    guard = guard.observe(datetime(2025, 3, 2, 0), 940_000)  # the drop happened overnight
    assert guard.day_start_equity == 1_000_000 and guard.halted


def test_guard_round_trips_through_json() -> None:
    guard = (
        RiskGuard.from_config(RISK)
        .observe(HOUR, 1_000_000)
        .observe(HOUR + timedelta(hours=1), 900_000)
    )
    assert guard.halted
    stored = json.loads(json.dumps(guard.to_dict()))
    assert RiskGuard.from_dict(stored, RISK) == guard
    reset = guard.reset(by="ops", now=HOUR + timedelta(hours=3))
    assert RiskGuard.from_dict(json.loads(json.dumps(reset.to_dict())), RISK) == reset
    fresh = RiskGuard.from_config(RISK)
    assert RiskGuard.from_dict(fresh.to_dict(), RISK) == fresh
    looser = RiskConfig(daily_loss_limit=0.1)
    assert RiskGuard.from_dict(stored, looser).daily_loss_limit == 0.1  # limits follow config
