"""The decision margins in `plan_hour`: a weak BUY becomes HOLD, a clear edge buys, SELL stays;
under a sell margin a weak SELL keeps a held position and a clear fall sells it."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from features.barriers import Barriers, LabelMoves, expected_edge, expected_fall
from features.domain import AccountState, Prediction, Side, Signal
from features.exchange import ROUND_TRIP_FEE
from trading.config import PolicyConfig, TradingConfig
from trading.risk import RiskGuard
from trading.step import plan_hour

HOUR = datetime(2025, 3, 1, 14)
MOVES = LabelMoves.of_barriers(Barriers(take_profit=0.01, stop_loss=0.01, horizon=12))
CLOSES = np.full(200, 100_000_000.0)
PRICE = float(CLOSES[-1])


def _config(margin: float | None) -> TradingConfig:
    return TradingConfig(policy=PolicyConfig(margin=margin))


def _plan(probabilities, margin, account=None, moves=MOVES):
    config = _config(margin)
    account = account or AccountState.flat(1_000_000.0)
    prediction = Prediction("KRW-BTC", HOUR, probabilities, "v0001")
    guard = RiskGuard.from_config(config.risk)
    decision, _ = plan_hour(
        prediction, 0.3, "fixed", account, PRICE, HOUR, CLOSES, guard, config, moves=moves
    )
    return decision


WEAK_BUY = (0.30, 0.25, 0.45)  # argmax BUY, but E = 0.45*1.1 % - 0.30*1 % - 0.1 % = +0.095 %


def test_weak_buy_becomes_hold_under_the_margin() -> None:
    edge = float(expected_edge(np.array(WEAK_BUY), MOVES))
    assert edge == pytest.approx(0.45 * (0.01 + ROUND_TRIP_FEE) - 0.30 * 0.01 - ROUND_TRIP_FEE)
    assert _plan(WEAK_BUY, None).order is not None  # the argmax alone buys
    held = _plan(WEAK_BUY, 0.002)
    assert held.signal is Signal.HOLD and held.order is None
    assert "not above margin" in held.reason
    bought = _plan(WEAK_BUY, 0.0005)  # the same prediction clears a smaller margin
    assert bought.signal is Signal.BUY and bought.order is not None
    assert bought.order.side is Side.BID


def test_edge_not_argmax_decides_a_buy() -> None:
    # argmax HOLD, yet the buy probability outweighs the sell one by enough to pay the fee
    decision = _plan((0.05, 0.50, 0.45), 0.0)
    assert decision.signal is Signal.BUY and "edge" in decision.reason
    # a negative edge never buys, even at margin 0
    assert _plan((0.30, 0.42, 0.28), 0.0).order is None


def test_sell_still_goes_out_under_a_margin() -> None:
    account = AccountState(700_000.0, 0.005, PRICE, 700_000.0 + 0.005 * PRICE, 0.0)
    decision = _plan((0.7, 0.2, 0.1), 0.002, account)
    assert decision.signal is Signal.SELL and decision.order is not None
    assert decision.order.side is Side.ASK


def test_margin_without_the_label_moves_is_an_error() -> None:
    with pytest.raises(ValueError, match="label moves are unknown"):
        _plan(WEAK_BUY, 0.001, moves=None)
    with pytest.raises(ValueError):
        PolicyConfig(margin=0.5)  # 50 %: a typo, refused at load


def _held(entry: float) -> AccountState:
    return AccountState(700_000.0, 0.005, entry, 700_000.0 + 0.005 * PRICE, 0.0)


def test_the_labels_barriers_close_a_held_position() -> None:
    # held from 1.5 % below the close: +1.52 % gross, +1.42 % after fees >= the 1 % take-profit
    decision = _plan((0.1, 0.2, 0.7), None, _held(PRICE / 1.0152))
    assert decision.signal is Signal.SELL and "take-profit" in decision.reason
    assert decision.order is not None and decision.order.volume == 0.005
    stopped = _plan((0.1, 0.2, 0.7), None, _held(PRICE / 0.985))  # 1.5 % under the entry
    assert stopped.signal is Signal.SELL and "label stop-loss" in stopped.reason
    # +1.05 % gross is +0.95 % after fees: not yet the take-profit, the BUY stands
    assert _plan((0.1, 0.2, 0.7), None, _held(PRICE / 1.0105)).signal is Signal.BUY
    # a threshold label has no barriers: no such exit
    fixed = _plan((0.1, 0.2, 0.7), None, _held(PRICE / 1.0152), LabelMoves.of_threshold(0.005))
    assert fixed.signal is Signal.BUY


# argmax SELL, but F = 0.45 * 1 % - 0.20 * 1.1 % = +0.23 %: below a 0.3 % sell margin
WEAK_SELL = (0.45, 0.35, 0.20)


def _plan_sell(probabilities, sell_margin, margin=0.0, moves=MOVES):
    config = TradingConfig(policy=PolicyConfig(margin=margin, sell_margin=sell_margin))
    prediction = Prediction("KRW-BTC", HOUR, probabilities, "v0001")
    guard = RiskGuard.from_config(config.risk)
    decision, _ = plan_hour(
        prediction, 0.3, "fixed", _held(PRICE), PRICE, HOUR, CLOSES, guard, config, moves=moves
    )
    return decision


def test_a_sell_margin_keeps_a_position_through_a_weak_sell() -> None:
    fall = float(expected_fall(np.array(WEAK_SELL), MOVES))
    assert fall == pytest.approx(0.45 * 0.01 - 0.20 * (0.01 + ROUND_TRIP_FEE))
    sold = _plan_sell(WEAK_SELL, None)  # the argmax SELL alone sells
    assert sold.signal is Signal.SELL and sold.order is not None
    kept = _plan_sell(WEAK_SELL, 0.003)
    assert kept.signal is Signal.HOLD and kept.order is None
    assert "SELL with fall +0.2300% not above sell margin +0.3000%" in kept.reason
    cleared = _plan_sell(WEAK_SELL, 0.002)
    assert cleared.signal is Signal.SELL and cleared.order is not None
    assert cleared.order.side is Side.ASK and "fall +0.2300% > sell margin" in cleared.reason
    # the argmax says HOLD, yet the fall clears the sell margin: sold
    assert _plan_sell((0.40, 0.45, 0.15), 0.002).signal is Signal.SELL
    # without a (buy) margin the sell margin still decides the sells
    assert _plan_sell(WEAK_SELL, 0.003, margin=None).order is None


def test_a_sell_margin_leaves_the_exits_and_the_buys_alone() -> None:
    # the label's stop closes the position whatever the sell margin says
    config = TradingConfig(policy=PolicyConfig(margin=0.0, sell_margin=0.04))
    prediction = Prediction("KRW-BTC", HOUR, (0.2, 0.6, 0.2), "v0001")
    guard = RiskGuard.from_config(config.risk)
    stopped, _ = plan_hour(
        prediction, 0.3, "fixed", _held(PRICE / 0.985), PRICE, HOUR, CLOSES, guard, config,
        moves=MOVES,
    )  # fmt: skip
    assert stopped.signal is Signal.SELL and "label stop-loss" in stopped.reason
    # a BUY that clears the margin is a BUY whatever the fall
    assert _plan_sell((0.1, 0.2, 0.7), 0.0).signal is Signal.BUY
    with pytest.raises(ValueError, match="label moves are unknown"):
        _plan_sell(WEAK_SELL, 0.003, margin=None, moves=None)


@pytest.mark.parametrize(
    ("margin", "min_confidence", "sell_margin"),
    [(None, 0.0, None), (None, 0.5, None), (0.001, 0.0, None), (0.0, 0.0, 0.001),
     (None, 0.5, 0.0), (0.001, 0.0, -0.001)],
)  # fmt: skip
def test_the_vectorised_rule_is_the_policy(margin, min_confidence, sell_margin) -> None:
    """`features.barriers.acted_signals` (what Tune scores) calls every hour as `decide` does."""
    from features.barriers import acted_signals
    from trading.policy import decide

    ties = [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.4, 0.2, 0.4], [1 / 3, 1 / 3, 1 / 3]]
    rows = np.vstack([np.random.default_rng(1).dirichlet([1.0, 1.0, 1.0], 300), ties])
    config = PolicyConfig(margin=margin, min_confidence=min_confidence, sell_margin=sell_margin)
    account = AccountState.flat(1_000_000.0)
    acted = [
        decide(
            Prediction("KRW-BTC", HOUR, tuple(p), "v1"),
            0.3,
            "fixed",
            account,
            PRICE,
            HOUR,
            config,
            MOVES,
        ).signal  # fmt: skip
        for p in rows
    ]
    vectorised = acted_signals(rows, margin, MOVES, min_confidence, sell_margin)
    assert list(vectorised) == [int(s) for s in acted]
    assert len(set(acted)) == 3
