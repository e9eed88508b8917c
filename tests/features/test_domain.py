from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest

from features.domain import AccountState, Decision, Order, Prediction, Side, Signal


def test_prediction_signal_and_confidence() -> None:
    p = Prediction("KRW-BTC", datetime(2025, 1, 1, 10), (0.2, 0.3, 0.5), "v0001")
    assert p.signal is Signal.BUY and p.confidence == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.market = "KRW-ETH"  # type: ignore[misc]


@pytest.mark.parametrize("probs", [(0.5, 0.5, 0.5), (-0.1, 0.6, 0.5), (float("nan"), 0.5, 0.5)])
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
