"""Domain types passed between packages: small, frozen, and validated where they are built.

They live in `features` because every other package already depends on it and none of them may
depend on a sibling's internals (serve must not import trading's broker to speak of an order).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import datetime


class Signal(enum.IntEnum):
    """Class labels in the model's output order: column k of predict_proba is Signal(k)."""

    SELL = 0
    HOLD = 1
    BUY = 2


class Side(enum.StrEnum):
    BID = "bid"  # buy
    ASK = "ask"  # sell


def _check_probabilities(probabilities: tuple[float, float, float]) -> None:
    if len(probabilities) != 3:
        raise ValueError(
            f"probabilities must have 3 entries (sell, hold, buy), got {len(probabilities)}"
        )
    if any(not math.isfinite(p) or p < 0 or p > 1 for p in probabilities):
        raise ValueError(f"probabilities must be finite and in [0, 1], got {probabilities}")
    if abs(sum(probabilities) - 1.0) > 1e-4:
        raise ValueError(f"probabilities must sum to 1, got {sum(probabilities):.6f}")


@dataclass(frozen=True)
class Prediction:
    """One model's view of one market at the close of one hour."""

    market: str
    time: datetime  # open time (KST) of the newest closed candle the model saw
    probabilities: tuple[float, float, float]  # sell, hold, buy
    model_version: str

    def __post_init__(self) -> None:
        _check_probabilities(self.probabilities)

    @property
    def signal(self) -> Signal:
        return Signal(max(range(3), key=lambda k: self.probabilities[k]))

    @property
    def confidence(self) -> float:
        return max(self.probabilities)


@dataclass(frozen=True)
class AccountState:
    """What the sizing rule and the policy may know of the account for one market."""

    cash: float  # KRW available
    position: float  # coin units held
    entry_price: float  # average entry price in KRW, 0 when flat
    equity: float  # cash + position marked at the last close
    drawdown: float  # fraction below the equity peak, in [0, 1]

    def __post_init__(self) -> None:
        for name in ("cash", "position", "entry_price", "equity"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"AccountState.{name} must be finite and >= 0, got {value}")
        if not 0.0 <= self.drawdown <= 1.0:
            raise ValueError(f"AccountState.drawdown must be in [0, 1], got {self.drawdown}")


@dataclass(frozen=True)
class Order:
    """A market order as the policy wants it; the broker decides how it is sent."""

    market: str
    side: Side
    krw_amount: float = 0.0  # for bids: KRW to spend, fee excluded
    volume: float = 0.0  # for asks: coin units to sell
    identifier: str = ""  # client order id: market|candle hour|side|attempt
    reason: str = ""

    def __post_init__(self) -> None:
        if self.side is Side.BID and not self.krw_amount > 0:
            raise ValueError(f"a bid needs krw_amount > 0, got {self.krw_amount}")
        if self.side is Side.ASK and not self.volume > 0:
            raise ValueError(f"an ask needs volume > 0, got {self.volume}")


@dataclass(frozen=True)
class Decision:
    """What the policy decided for one market and hour, with or without an order, and why."""

    market: str
    time: datetime
    signal: Signal
    ratio: float
    sizing_source: str
    model_version: str
    order: Order | None = None
    reason: str = ""
    probabilities: tuple[float, float, float] = field(default=(0.0, 1.0, 0.0))

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"Decision.ratio must be in [0, 1], got {self.ratio}")
