from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest

from features.domain import (
    AccountState,
    Decision,
    Order,
    Prediction,
    Side,
    Signal,
    checked_probabilities,
    drawdown,
)


def test_prediction_signal_and_confidence() -> None:
    p = Prediction("KRW-BTC", datetime(2025, 1, 1, 10), (0.2, 0.3, 0.5), "v0001")
    assert p.signal is Signal.BUY and p.confidence == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.market = "KRW-ETH"  # type: ignore[misc]


@pytest.mark.parametrize(
    "probs",
    [(0.5, 0.5, 0.5), (-0.1, 0.6, 0.5), (float("nan"), 0.5, 0.5), (float("inf"), 0.0, 0.0)],
)
def test_prediction_rejects_bad_probabilities(probs) -> None:
    with pytest.raises(ValueError, match="probabilities"):
        Prediction("KRW-BTC", datetime(2025, 1, 1), probs, "v0001")


def test_account_and_order_validation() -> None:
    AccountState(cash=1e6, position=0.0, entry_price=0.0, equity=1e6, drawdown=0.0)
    with pytest.raises(ValueError, match="drawdown"):
        AccountState(cash=1e6, position=0.0, entry_price=0.0, equity=1e6, drawdown=1.5)
    with pytest.raises(ValueError, match="cash"):
        AccountState(cash=-1.0, position=0.0, entry_price=0.0, equity=0.0, drawdown=0.0)
    with pytest.raises(ValueError, match="krw_amount"):
        Order("KRW-BTC", Side.BID)
    with pytest.raises(ValueError, match="volume"):
        Order("KRW-BTC", Side.ASK)
    with pytest.raises(ValueError, match="ratio"):
        Decision("KRW-BTC", datetime(2025, 1, 1), Signal.BUY, 1.5, "rule", "v0001")


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ((0.5, 0.5), "must be 3 numbers"),
        ("abc", "must be 3 numbers"),
        ((0.2, 0.3, 1.5), "must be finite and in \\[0, 1\\]"),
        ((0.2, 0.3, 0.4), "must sum to 1, got 0.900000"),
    ],
)
def test_the_probability_check_names_its_owner_and_the_problem(values, problem) -> None:
    with pytest.raises(ValueError, match=f"^SizingRequest.probabilities {problem}"):
        checked_probabilities(values, "SizingRequest.probabilities")
    assert checked_probabilities([0.25, 0.25, 0.5]) == (0.25, 0.25, 0.5)


def test_drawdown_is_the_fall_below_the_peak() -> None:
    assert drawdown(900_000.0, 1_000_000.0) == pytest.approx(0.1)
    assert drawdown(1_100_000.0, 1_000_000.0) == 0.0  # a new peak, not a negative drawdown
    assert drawdown(0.0, 1_000_000.0) == 1.0
    assert drawdown(500.0, None) == drawdown(500.0, 0.0) == 0.0  # no peak seen yet
    flat = AccountState.flat(1_000_000.0)
    assert (flat.cash, flat.equity, flat.position, flat.drawdown) == (1e6, 1e6, 0.0, 0.0)
