from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.config import ConfigError
from features.domain import AccountState, Prediction, Side, Signal
from features.exchange import FEE_RATE, MIN_ORDER_KRW
from trading.config import PolicyConfig, load_trading_config
from trading.policy import decide

HOUR = datetime(2025, 3, 1, 14)
PRICE = 100_000_000.0  # KRW per BTC
DEFAULT = PolicyConfig()
PROBS = {
    Signal.SELL: (0.7, 0.2, 0.1),
    Signal.HOLD: (0.2, 0.6, 0.2),
    Signal.BUY: (0.1, 0.2, 0.7),
}


def prediction(signal: Signal, probabilities: tuple[float, float, float] | None = None):
    return Prediction("KRW-BTC", HOUR, probabilities or PROBS[signal], "v0003")


def account(cash: float = 1_000_000.0, position: float = 0.0, price: float = PRICE):
    entry = price if position else 0.0
    return AccountState(cash, position, entry, cash + position * price, 0.0)


def run(signal: Signal, acct: AccountState, ratio: float = 0.3, config=DEFAULT, **kwargs):
    return decide(prediction(signal), ratio, "llm:groq", acct, PRICE, HOUR, config, **kwargs)


def test_buy_spends_ratio_of_cash_less_the_fee() -> None:
    decision = run(Signal.BUY, account())
    order = decision.order
    assert order is not None and order.side is Side.BID
    assert order.krw_amount == math.floor(1_000_000 * 0.3 / 1.0005)  # 299_850 KRW
    assert order.krw_amount * (1 + FEE_RATE) <= 300_000
    assert order.identifier == "KRW-BTC|2025-03-01T14:00|bid"
    assert decision.signal is Signal.BUY and decision.ratio == 0.3
    assert decision.sizing_source == "llm:groq" and decision.model_version == "v0003"
    assert decision.probabilities == PROBS[Signal.BUY]
    assert "BUY 299,850 KRW" in decision.reason


def test_buy_with_everything_never_overspends() -> None:
    order = run(Signal.BUY, account(cash=5_003.0), ratio=1.0).order
    assert order is not None and order.krw_amount * (1 + FEE_RATE) <= 5_003.0


def test_buy_while_holding_tops_up_to_ratio_of_equity() -> None:
    acct = account(cash=800_000, position=0.002)  # 200,000 KRW held, equity 1,000,000
    order = run(Signal.BUY, acct, ratio=0.5).order
    assert order is not None
    assert order.krw_amount == math.floor(300_000 / 1.0005)
    at_target = run(Signal.BUY, acct, ratio=0.2)
    assert at_target.order is None and "already at or above the target" in at_target.reason


def test_buy_while_holding_can_be_skipped() -> None:
    config = PolicyConfig(buy_when_holding="skip")
    decision = run(Signal.BUY, account(cash=800_000, position=0.002), config=config)
    assert decision.order is None and "already holding 200,000 KRW" in decision.reason


def test_buy_below_the_minimum_order_is_skipped_with_a_reason() -> None:
    decision = run(Signal.BUY, account(cash=10_000), ratio=0.3)
    assert decision.order is None and decision.signal is Signal.BUY
    assert "below Upbit's minimum order of 5,000 KRW" in decision.reason
    nothing = run(Signal.BUY, account(), ratio=0.0)
    assert nothing.order is None and "ratio 0" in nothing.reason


def test_sell_closes_the_position() -> None:
    decision = run(Signal.SELL, account(position=0.01))
    order = decision.order
    assert order is not None and order.side is Side.ASK and order.volume == 0.01
    assert order.identifier == "KRW-BTC|2025-03-01T14:00|ask"
    assert "SELL all" in decision.reason


def test_sell_fraction_sells_part_unless_the_rest_is_dust() -> None:
    half = PolicyConfig(sell_fraction=0.5)
    order = run(Signal.SELL, account(position=0.01), config=half).order
    assert order is not None and order.volume == pytest.approx(0.005)
    small = run(Signal.SELL, account(position=0.00008), config=half)  # 8,000 KRW: 4,000 left
    assert small.order is not None and small.order.volume == 0.00008
    assert "rest would have been dust" in small.reason
    tiny_share = run(Signal.SELL, account(position=0.001), config=PolicyConfig(sell_fraction=0.04))
    assert tiny_share.order is None and "below Upbit's minimum order" in tiny_share.reason


def test_dust_position_is_reported_not_sold() -> None:
    decision = run(Signal.SELL, account(position=0.00004))  # 4,000 KRW
    assert decision.order is None and "dust" in decision.reason
    flat = run(Signal.SELL, account())
    assert flat.order is None and "no position" in flat.reason


def test_hold_does_nothing() -> None:
    decision = run(Signal.HOLD, account(position=0.01))
    assert decision.order is None and decision.signal is Signal.HOLD
    assert decision.reason == "HOLD: no order"


def test_low_confidence_becomes_hold() -> None:
    config = PolicyConfig(min_confidence=0.5)
    unsure = Prediction("KRW-BTC", HOUR, (0.3, 0.3, 0.4), "v0003")
    decision = decide(unsure, 0.3, "fixed", account(), PRICE, HOUR, config)
    assert decision.order is None and decision.signal is Signal.HOLD
    assert "below min_confidence 0.50" in decision.reason
    assert decision.probabilities == (0.3, 0.3, 0.4)


def test_decide_is_deterministic_and_its_identifier_names_market_hour_and_side() -> None:
    first = run(Signal.BUY, account())
    assert first == run(Signal.BUY, account())  # a restart re-plans the same order, same id
    later = decide(
        prediction(Signal.BUY), 0.3, "fixed", account(), PRICE, HOUR + timedelta(hours=1), DEFAULT
    )
    assert first.order is not None and later.order is not None
    assert later.order.identifier == "KRW-BTC|2025-03-01T15:00|bid" != first.order.identifier


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="price"):
        decide(prediction(Signal.BUY), 0.3, "fixed", account(), 0.0, HOUR, DEFAULT)
    with pytest.raises(ValueError, match="ratio"):
        decide(prediction(Signal.BUY), 1.2, "fixed", account(), PRICE, HOUR, DEFAULT)


@settings(max_examples=300, deadline=None)
@given(
    cash=st.floats(0, 1e10, allow_nan=False),
    position=st.floats(0, 10, allow_nan=False),
    price=st.floats(1e-4, 2e8, allow_nan=False),
    ratio=st.floats(0, 1),
    top_up=st.booleans(),
)
def test_a_buy_never_overspends_nor_goes_below_the_minimum(cash, position, price, ratio, top_up):
    acct = AccountState(cash, position, price if position else 0.0, cash + position * price, 0.0)
    config = PolicyConfig(buy_when_holding="top_up" if top_up else "skip")
    decision = decide(prediction(Signal.BUY), ratio, "fixed", acct, price, HOUR, config)
    if decision.order is not None:
        assert decision.order.krw_amount * (1 + FEE_RATE) <= cash
        assert decision.order.krw_amount * (1 + FEE_RATE) <= ratio * acct.equity * (1 + 1e-12)
        assert decision.order.krw_amount >= MIN_ORDER_KRW
    else:
        assert decision.reason


def test_shipped_trading_config_is_valid_and_bounded() -> None:
    config = load_trading_config()
    assert config.policy.sell_fraction == 1.0 and config.ab.fixed_ratio == 0.3
    assert config.risk.daily_loss_limit == 0.05 and config.risk.max_drawdown == 0.2
    assert config.ledger.resolve_path().name == "ledger.sqlite"
    for bad, field in [
        ("policy.sell_fraction=0", "sell_fraction"),
        ("risk.max_drawdown=1.5", "max_drawdown"),
        ("risk.emergency.threshold=0", "threshold"),
        ("paper.initial_krw=100", "initial_krw"),
        ("ab.fixed_ratio=0.01", "fixed_ratio"),
        ("ab.arms=[llm,llm]", "arms"),
        ("loop.markets=[BTC-ETH]", "KRW markets"),
        ("risk.emergency.recent_hours=200", "recent_hours"),
        ("loop.rolling_window_hours=48", "rolling_window_hours"),
        ("policy.unknown=1", "unknown"),
    ]:
        with pytest.raises(ConfigError, match=field):
            load_trading_config(overrides=[bad])
