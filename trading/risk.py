"""Risk rules that override the policy: the emergency stop-loss and the kill switch.

Both are pure. The loop (and the backtester) apply them in this order every hour:
`decide(...)` -> `apply_emergency(...)` -> `RiskGuard.gate(...)`, so an emergency sell happens
whatever the model said, and a switched-off account sends no new buys.

Emergency score (the seed's three warning signs, each mapped to [0, 1], then weighted):
    loss  = clip(loss_from_entry / full_loss, 0, 1)           loss_from_entry = 1 - price / entry
    spike = clip((volatility_ratio - 1) / (spike_ratio - 1), 0, 1)
                                          volatility_ratio = recent vol / baseline vol
    sell  = P(SELL) from the model
    score = (w_loss * loss + w_vol * spike + w_sell * sell) / (w_loss + w_vol + w_sell)
The score is a weighted mean of terms in [0, 1], so it stays in [0, 1], and it never falls when
any one input worsens. At or above `threshold` the whole position is sold.

Kill switch: trading is switched off when equity falls `daily_loss_limit` below the day's
starting equity or `max_drawdown` below its peak. It stays off until a person calls
`reset(by=...)`. While off, buys are dropped but sells still go out: switching off must never
trap a falling position.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from features.domain import AccountState, Decision, Order, Side, Signal, drawdown
from trading.broker import order_identifier
from trading.config import EmergencyConfig, RiskConfig
from trading.upbit_rules import is_dust


def loss_from_entry(entry_price: float, price: float) -> float:
    """Fractional loss of `price` below the average entry (0 when flat or in profit)."""
    if entry_price <= 0:
        return 0.0
    return max(0.0, 1.0 - price / entry_price)


def volatility_ratio(closes: Sequence[float], recent_hours: int, baseline_hours: int) -> float:
    """Std of the last `recent_hours` log returns over the std of the last `baseline_hours`.

    With too few closes for a meaningful recent window, or a flat baseline, it returns 1.0 (no
    evidence of a spike) rather than failing the hour.
    """
    prices = np.asarray(closes, dtype=float)[-(baseline_hours + 1) :]
    if len(prices) < recent_hours + 2 or np.any(prices <= 0):
        return 1.0
    returns = np.diff(np.log(prices))
    baseline = float(np.std(returns))
    if baseline <= 0:
        return 1.0
    return float(np.std(returns[-recent_hours:])) / baseline


ROLLING_ROWS = 4096  # windows per numpy step in the batch form: bounds its memory


def rolling_volatility_ratio(
    closes: np.ndarray, recent_hours: int, baseline_hours: int
) -> np.ndarray:
    """`volatility_ratio` at every position of `closes` at once (the backtester's batch form):
    entry i equals `volatility_ratio(closes[: i + 1], ...)` exactly, the same numpy std over the
    same windows, so a backtest decides as the loop would."""
    prices = np.asarray(closes, dtype=float)
    out = np.ones(len(prices))
    for i in range(min(baseline_hours, len(prices))):  # partial windows at the start
        out[i] = volatility_ratio(prices[: i + 1], recent_hours, baseline_hours)
    if len(prices) <= baseline_hours:
        return out
    with np.errstate(divide="ignore", invalid="ignore"):  # a price <= 0: its windows say 1.0
        returns = np.diff(np.log(prices))
        windows = sliding_window_view(returns, baseline_hours)  # row j: window ending at j + b
        refused = sliding_window_view(prices <= 0, baseline_hours + 1).any(axis=1)
        for first in range(0, len(windows), ROLLING_ROWS):
            rows = windows[first : first + ROLLING_ROWS]
            baseline = np.std(rows, axis=1)
            recent = np.std(rows[:, -recent_hours:], axis=1)
            usable = (baseline > 0) & ~refused[first : first + ROLLING_ROWS]
            ratio = np.where(usable, recent / np.where(usable, baseline, 1.0), 1.0)
            out[baseline_hours + first : baseline_hours + first + len(rows)] = ratio
    return out


def _clip01(value: float) -> float:
    return min(1.0, max(0.0, value))


def emergency_score(
    loss_from_entry: float,
    volatility_ratio: float,
    sell_probability: float,
    config: EmergencyConfig,
) -> float:
    """The weighted emergency score in [0, 1]; see the module docstring for the formula."""
    values = (loss_from_entry, volatility_ratio, sell_probability)
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"emergency_score inputs must be finite, got {values}")
    terms = (
        (config.loss_weight, _clip01(loss_from_entry / config.full_loss)),
        (config.volatility_weight, _clip01((volatility_ratio - 1.0) / (config.spike_ratio - 1.0))),
        (config.sell_weight, _clip01(sell_probability)),
    )
    total = sum(weight for weight, _ in terms)
    return _clip01(sum(weight * term for weight, term in terms) / total)


def emergency_order(
    market: str,
    position: float,
    price: float,
    score: float,
    config: EmergencyConfig,
    hour: datetime,
) -> Order | None:
    """A market sell of the whole position when the score reaches the threshold, else None.

    None also when the emergency rule is disabled or the position is dust (unsellable anyway).
    """
    if not config.enabled or score < config.threshold or is_dust(position * price):
        return None
    reason = f"emergency sell: score {score:.2f} >= threshold {config.threshold:.2f}"
    identifier = order_identifier(market, hour, Side.ASK)
    return Order(market, Side.ASK, volume=position, identifier=identifier, reason=reason)


def apply_emergency(
    decision: Decision,
    account: AccountState,
    price: float,
    score: float,
    config: EmergencyConfig,
) -> Decision:
    """`decision`, or a whole-position SELL in its place when the emergency rule fires."""
    order = emergency_order(decision.market, account.position, price, score, config, decision.time)
    if order is None:
        return decision
    reason = f"{order.reason}, overrides {decision.signal.name} ({decision.reason})"
    return replace(decision, signal=Signal.SELL, order=replace(order, reason=reason), reason=reason)


def kill_reason(
    day_start_equity: float,
    equity: float,
    peak_equity: float,
    daily_loss_limit: float,
    max_drawdown: float,
) -> str | None:
    """Why trading must be switched off at `equity`, or None while both limits hold."""
    if day_start_equity > 0:
        daily_loss = 1.0 - equity / day_start_equity
        if daily_loss >= daily_loss_limit:
            return (
                f"daily loss {daily_loss:.2%} reached the limit {daily_loss_limit:.2%} "
                f"(equity {equity:,.0f} KRW, day start {day_start_equity:,.0f} KRW)"
            )
    fall = drawdown(equity, peak_equity)
    if fall >= max_drawdown:
        return (
            f"drawdown {fall:.2%} reached the limit {max_drawdown:.2%} "
            f"(equity {equity:,.0f} KRW, peak {peak_equity:,.0f} KRW)"
        )
    return None


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _from_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True)
class RiskGuard:
    """The kill switch's state; every method returns a new guard, so the ledger can store each.

    Equity is the whole account's (cash + every position at its last close). A day is the
    calendar date of the times the caller passes: the loop passes KST candle times, so a day is
    a KST day. The day's starting equity is the last equity seen before the day began.
    """

    daily_loss_limit: float
    max_drawdown: float
    day: date | None = None
    day_start_equity: float = 0.0
    peak_equity: float = 0.0
    last_equity: float = 0.0
    halted: bool = False
    reason: str = ""
    halted_at: datetime | None = None
    reset_by: str = ""
    reset_at: datetime | None = None

    @classmethod
    def from_config(cls, config: RiskConfig) -> RiskGuard:
        return cls(daily_loss_limit=config.daily_loss_limit, max_drawdown=config.max_drawdown)

    def observe(self, now: datetime, equity: float) -> RiskGuard:
        """Record the equity at `now`; switch off when a limit is reached. Never switches on.

        The same equity on the same day (a flat account's hours) records nothing new, so the
        guard itself is kept: a backtest observes every hour, and copying it was its largest cost.
        """
        if not math.isfinite(equity) or equity < 0:
            raise ValueError(f"equity must be finite and >= 0, got {equity}")
        day = now.date()
        if day == self.day and equity == self.last_equity:
            state = self  # peak_equity >= last_equity already
        else:
            start = self.day_start_equity
            if day != self.day:
                start = self.last_equity if self.day is not None else equity
            state = replace(
                self, day=day, day_start_equity=start,
                peak_equity=max(self.peak_equity, equity), last_equity=equity,
            )  # fmt: skip
        if state.halted:
            return state
        reason = kill_reason(
            state.day_start_equity,
            equity,
            state.peak_equity,
            self.daily_loss_limit,
            self.max_drawdown,
        )
        return state if reason is None else state.halt(reason, now)

    def halt(self, reason: str, now: datetime) -> RiskGuard:
        """Switch trading off (a limit, or a person); the first reason is kept while off."""
        if self.halted:
            return self
        return replace(self, halted=True, reason=reason, halted_at=now)

    def reset(self, by: str, now: datetime) -> RiskGuard:
        """A person switches trading back on; peak and day start restart from the last equity.

        Restarting them is what keeps the same drawdown from switching trading off again at the
        next hour; `by` names who decided, for the ledger.
        """
        if not by.strip():
            raise ValueError("reset needs the name of the person re-enabling trading")
        if not self.halted:
            return self
        return replace(
            self,
            halted=False,
            reason="",
            halted_at=None,
            reset_by=by,
            reset_at=now,
            peak_equity=self.last_equity,
            day_start_equity=self.last_equity,
        )

    def allows(self, side: Side) -> bool:
        return not self.halted or side is Side.ASK

    def gate(self, decision: Decision) -> Decision:
        """`decision` without its order when trading is off and the order is a buy."""
        if decision.order is None or self.allows(decision.order.side):
            return decision
        reason = f"trading switched off ({self.reason}): BUY not sent; was: {decision.reason}"
        return replace(decision, order=None, reason=reason)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state; the limits are left out because they come from the config."""
        return {
            "day": None if self.day is None else self.day.isoformat(),
            "day_start_equity": self.day_start_equity,
            "peak_equity": self.peak_equity,
            "last_equity": self.last_equity,
            "halted": self.halted,
            "reason": self.reason,
            "halted_at": _iso(self.halted_at),
            "reset_by": self.reset_by,
            "reset_at": _iso(self.reset_at),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], config: RiskConfig) -> RiskGuard:
        """Rebuild a stored guard under the current config's limits."""
        day = data.get("day")
        return cls(
            daily_loss_limit=config.daily_loss_limit,
            max_drawdown=config.max_drawdown,
            day=None if day is None else date.fromisoformat(day),
            day_start_equity=float(data["day_start_equity"]),
            peak_equity=float(data["peak_equity"]),
            last_equity=float(data["last_equity"]),
            halted=bool(data["halted"]),
            reason=str(data.get("reason", "")),
            halted_at=_from_iso(data.get("halted_at")),
            reset_by=str(data.get("reset_by", "")),
            reset_at=_from_iso(data.get("reset_at")),
        )
