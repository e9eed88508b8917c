"""The backtester's shortcut through the hours in which a flat account provably does nothing.

Most of a backtest is spent flat, waiting for a BUY. Flat (no coin at all: a dust position is not
flat here), an hour can act only through a BUY:
- `plan_hour` returns `decide`'s Decision as it is when it has no order and nothing is held (the
  emergency rule, the label's exits and the stops act on a held position only), and `decide`
  places no order on an acted HOLD or SELL (nothing to sell);
- `protect_hour` (an hour without a prediction) sends nothing while nothing is held;
- the high since entry of a flat account is `EntryHigh()` whatever the hour;
- the account's state does not move (a flat account's equity is its cash), so the kill switch
  observes the same equity every hour, and `RiskGuard.observe` of the same equity on the same
  day keeps the guard as it is: it is called for a stretch's first hour and for each new day in
  it (a new day moves the day's start), exactly as the hour-by-hour path calls it.
`QuietHours` finds, once per market (its arms share it), the hours that are quiet for a flat
account: no prediction, or a prediction whose acted signal (`features.barriers.acted_signals`, the
policy's own rule) is not a BUY. `flat_stretch` records a run of them at once: the rows the
hour-by-hour path would write, with the arm's ratios from its `many` form and `decide`'s reasons
from `trading.policy.unplaced_reasons`. Everything else goes hour by hour: a held or dust
position, a BUY (whatever becomes of it), a probability row or a price `decide` would refuse, a
ratio outside [0, 1], an equity peak moved by the stretch's first observation.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from features.barriers import acted_signals
from features.domain import PROBABILITY_SUM_TOLERANCE, AccountState, Signal
from trading.config import TradingConfig
from trading.policy import unplaced_reasons
from trading.predictions import MarketHours

if TYPE_CHECKING:
    from trading.account import ArmAccount
    from trading.backtest_hours import HourInputs, RecordBook

SIGNAL_NAMES = np.array([s.name for s in Signal], dtype=object)  # by Signal value
NO_PREDICTION = "no prediction for this hour: nothing sent"  # the reason of an hour without one


@dataclass(frozen=True)
class QuietHours:
    """One market's timeline as a flat account sees it, built once for all its arms: per
    position whether it has a prediction, the first position at or after it that is not quiet
    (`next_loud`; the timeline's length when none), the signal and reason a flat account records
    there (`trading.policy.unplaced_reasons`; NO_PREDICTION without a prediction), and the
    positions that start a new calendar day (the kill switch's days)."""

    predicted: np.ndarray
    priced: np.ndarray  # a close `decide` takes
    acted: np.ndarray  # the acted Signal's value; -1 where no usable prediction
    next_loud: list[int]
    signals: np.ndarray
    reasons: np.ndarray
    day_starts: list[int]
    unpredicted_before: list[int]  # hours without a prediction before each position

    @classmethod
    def of(cls, hours: MarketHours, config: TradingConfig) -> QuietHours:
        n, policy, p = len(hours.times), config.policy, hours.proba
        predicted = np.fromiter(map(bool, hours.source), dtype=bool, count=n)
        with np.errstate(invalid="ignore"):  # NaN rows: no prediction, or refused hour by hour
            usable = predicted & ((p >= 0.0) & (p <= 1.0)).all(axis=1)  # checked_probabilities
            usable &= np.abs(p[:, 0] + p[:, 1] + p[:, 2] - 1.0) <= PROBABILITY_SUM_TOLERANCE
            priced = np.isfinite(hours.close) & (hours.close > 0)
        if (policy.margin is not None or policy.sell_margin is not None) and hours.moves is None:
            usable[:] = False  # `decide` refuses every hour: let it say why
        acted = np.full(n, -1)
        if usable.any():
            acted[usable] = acted_signals(
                p[usable], policy.margin, hours.moves, policy.min_confidence, policy.sell_margin
            )
        calm = usable & (acted != int(Signal.BUY))
        quiet = priced & (~predicted | calm)
        loud = np.append(np.flatnonzero(~quiet), n)
        next_loud = loud[np.searchsorted(loud, np.arange(n))]
        signals = np.full(n, "", dtype=object)
        reasons = np.full(n, NO_PREDICTION, dtype=object)
        signals[calm] = SIGNAL_NAMES[acted[calm]]
        reasons[calm] = unplaced_reasons(p[calm], acted[calm], policy, hours.moves)
        days = hours.times.normalize()
        day_starts = np.flatnonzero(days[1:] != days[:-1]) + 1
        unpredicted = np.concatenate([[0], np.cumsum(~predicted)])
        return cls(
            predicted, priced, acted, next_loud.tolist(), signals, reasons, day_starts.tolist(),
            unpredicted.tolist(),
        )  # fmt: skip


def flat_stretch(
    account: ArmAccount, state: AccountState, start: int, inputs: HourInputs, book: RecordBook
) -> int:
    """Record the quiet hours from position `start` of a flat `account` (`state`, marked at the
    current equity peak) at once, as the hour-by-hour path would; the position after the last
    one recorded (`start` when none could be)."""
    quiet = inputs.quiet
    end = quiet.next_loud[start]
    if end == start or state.position != 0:
        return start
    flat = [state.drawdown] * (end - start)
    ratios, sources, end = arm_ratios(account, inputs, start, end, flat, lambda k: state)
    if end == start:
        return start
    wall = inputs.wall
    account.watch(state, inputs.prices[start], wall[start])
    peak = account.guard.peak_equity
    account.observe(wall[start], state)
    if account.guard.peak_equity != peak:
        end = start + 1  # the next hours mark the account at the new peak: hour by hour
    halted, at = account.guard.halted, start
    days = quiet.day_starts
    for k in range(bisect_right(days, start), bisect_left(days, end)):
        account.observe(wall[days[k]], state)  # a new day moves the kill switch's day start
        if account.guard.halted != halted:
            book.quiet(at, days[k], state, halted)
            halted, at = account.guard.halted, days[k]
    book.quiet(at, end, state, halted)
    book.quiet_sizing(ratios[: end - start], sources[: end - start])
    return end


def arm_ratios(
    account: ArmAccount,
    inputs: HourInputs,
    start: int,
    end: int,
    drawdowns: list[float],
    state_at: Callable[[int], AccountState],
) -> tuple[np.ndarray, np.ndarray, int]:
    """The arm's (ratio, sizing source) at positions start..end-1 (NaN and "" without a
    prediction) and where the stretch ends: before the first ratio `decide` would refuse, so
    that the hour-by-hour path raises there. The source's `many` form on each hour's drawdown
    (`drawdowns`, by position from `start`), else hour by hour through a Prediction and the
    hour's account (`state_at`) as the hour-by-hour path asks (a replay's recorded ratios)."""
    quiet = inputs.quiet
    whole = quiet.unpredicted_before[start] == quiet.unpredicted_before[end]
    rows = np.arange(start, end) if whole else np.flatnonzero(quiet.predicted[start:end]) + start
    many = getattr(account.sizing, "many", None)
    if many is not None:
        volatility, falls = inputs.volatility[start:end], drawdowns
        if not whole:
            volatility = [inputs.volatility[k] for k in rows.tolist()]
            falls = [drawdowns[k - start] for k in rows.tolist()]
        got, named = many(inputs.proba[rows], volatility, falls)
    else:
        pairs = [account.sizing(inputs.prediction(k), state_at(k), inputs.volatility[k], None)
                 for k in rows.tolist()]  # fmt: skip
        got, named = [r for r, _ in pairs], [s for _, s in pairs]
    got = np.asarray(got, dtype="float64")
    refused = ~((got >= 0.0) & (got <= 1.0))
    if refused.any():
        end = int(rows[np.argmax(refused)])
    if whole:
        return got[: end - start], np.asarray(named, dtype=object)[: end - start], end
    ratios, sources = np.full(end - start, np.nan), np.full(end - start, "", dtype=object)
    keep = rows < end
    ratios[rows[keep] - start] = got[keep]
    sources[rows[keep] - start] = np.asarray(named, dtype=object)[keep]
    return ratios, sources, end
