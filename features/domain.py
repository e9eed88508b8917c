"""Domain types passed between packages: small, frozen, and validated where they are built.

They live in `features` because every other package already depends on it and none of them may
depend on a sibling's internals (serve must not import trading's broker to speak of an order).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property


class Signal(enum.IntEnum):
    """Class labels in the model's output order: column k of predict_proba is Signal(k)."""

    SELL = 0
    HOLD = 1
    BUY = 2


class Side(enum.StrEnum):
    BID = "bid"  # buy
    ASK = "ask"  # sell


PROBABILITY_SUM_TOLERANCE = 1e-4  # model outputs are float32 softmaxes


def checked_probabilities(
    values: object, owner: str = "probabilities"
) -> tuple[float, float, float]:
    """`values` as (sell, hold, buy) floats, or a ValueError that names `owner` and the problem.

    The one check every stage applies (a prediction, a sizing request, an HTTP reply), so a
    distribution that one stage accepts is never refused by the next. On the backtester's hot
    path: chained comparisons also refuse NaN and infinities.
    """
    try:
        sell, hold, buy = map(float, values)  # type: ignore[call-overload]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{owner} must be 3 numbers (sell, hold, buy), got {values!r}") from exc
    if not (0.0 <= sell <= 1.0 and 0.0 <= hold <= 1.0 and 0.0 <= buy <= 1.0):
        raise ValueError(f"{owner} must be finite and in [0, 1], got {(sell, hold, buy)}")
    if abs(sell + hold + buy - 1.0) > PROBABILITY_SUM_TOLERANCE:
        raise ValueError(f"{owner} must sum to 1, got {sell + hold + buy:.6f}")
    return sell, hold, buy


def drawdown(equity: float, peak_equity: float | None) -> float:
    """How far `equity` is below its peak, as a fraction in [0, 1]; 0 without a peak yet.

    The one formula behind `AccountState.drawdown`, the ledger's equity curve and the kill switch.
    """
    if not peak_equity or peak_equity <= 0:
        return 0.0
    return min(1.0, max(0.0, 1.0 - equity / peak_equity))


def top_signal(probabilities: tuple[float, float, float]) -> Signal:
    """The most likely class of (sell, hold, buy); the first maximum wins, as numpy's argmax.
    Plain comparisons: the backtester asks this of every hour it replays one by one."""
    sell, hold, buy = probabilities
    if sell >= hold and sell >= buy:
        return Signal.SELL
    return Signal.HOLD if hold >= buy else Signal.BUY


@dataclass(frozen=True)
class Prediction:
    """One model's view of one market at the close of one hour."""

    market: str
    time: datetime  # open time (KST) of the newest closed candle the model saw
    probabilities: tuple[float, float, float]  # sell, hold, buy
    model_version: str

    def __post_init__(self) -> None:
        checked = checked_probabilities(self.probabilities, "Prediction.probabilities")
        object.__setattr__(self, "probabilities", checked)

    @cached_property  # frozen: worked out once (the backtester asks several times an hour)
    def signal(self) -> Signal:
        return top_signal(self.probabilities)

    @property
    def confidence(self) -> float:
        return max(self.probabilities)


@dataclass(frozen=True)
class AccountState:
    """What the sizing rule and the policy may know of the account for one market.

    Also the `account` of a prediction request over HTTP: pydantic validates this dataclass
    itself (fields as typed, then `__post_init__`), and refuses unknown fields.
    """

    __pydantic_config__ = {"extra": "forbid"}  # a ConfigDict; plain, so features needs no pydantic

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

    @classmethod
    def flat(cls, cash: float) -> AccountState:
        """An account holding only `cash` KRW, at its peak."""
        return cls(cash=cash, position=0.0, entry_price=0.0, equity=cash, drawdown=0.0)


@dataclass(frozen=True)
class Order:
    """A market order as the policy wants it; the broker decides how it is sent."""

    market: str
    side: Side
    krw_amount: float = 0.0  # for bids: KRW to spend, fee excluded
    volume: float = 0.0  # for asks: coin units to sell
    identifier: str = ""  # client order id: market|candle hour|side
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
