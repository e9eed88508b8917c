"""The backtester's shortcut through the hours in which a held position provably stays as it is.

While a position is held, an hour whose acted signal is a HOLD (or that has no prediction) sends
nothing unless a rule that watches a held position fires; `plan_hour` then returns `decide`'s
HOLD as it is (no order: the gates have nothing to drop), and `protect_hour` returns None. The
rules, each checked here for a whole run of hours at once in numpy, with the account's own
numbers (cash, position and entry do not move without a fill; the equity is cash + position x
close, the same float operations as `PaperBroker.account_state`):
- the position turning dust (`is_dust`: the high since entry would reset);
- the stops (`trading.stops.stop_reason`) against the running high since entry;
- the label's barriers and time limit (`trading.barrier_exits`), counted from the entry hour;
- the emergency score (`trading.risk.emergency_score`) of the hour's loss, spike and P(SELL);
- the kill switch (`RiskGuard.observe`): the equity moves every hour, so the day's start and the
  peak are followed hour by hour in numpy, and a limit reached ends the run.
Numpy may sum in another order than Python, so each test counts an hour as acting `EPS` before
its limit: near a limit, the hour goes through the account. `held_stretch` records the hours
before the first one that may act, as the hour-by-hour path would write them, and leaves the
account (high since entry, kill switch) as that path would; everything else goes hour by hour.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np

from features.barriers import Barriers
from features.domain import AccountState, Signal
from features.exchange import MIN_ORDER_KRW, ROUND_TRIP_FEE
from trading.config import EmergencyConfig, StopConfig, TradingConfig
from trading.policy import decide
from trading.predictions import MarketHours
from trading.quiet_hours import QuietHours, arm_ratios
from trading.risk import RiskGuard
from trading.stops import EntryHigh
from trading.upbit_rules import is_dust

if TYPE_CHECKING:
    from trading.account import ArmAccount
    from trading.backtest_hours import HourInputs, RecordBook

MIN_STRETCH = 4  # a shorter run costs more to set up in numpy than walking it saves
MAX_STRETCH = 256  # bounds the numpy work of one call; a longer run is taken in several
EPS = 1e-9  # how far before a limit an hour counts as acting (numpy's sums vs Python's)
ONE_HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class HeldHours:
    """One market's timeline as a held position sees it, built once for all its arms: the
    closes, P(SELL) and volatility ratios as arrays, a day number per position (the kill
    switch's days), and per position the first one at or after it where the acted signal is a
    BUY or a SELL, or the hour cannot be recorded in bulk at all (`next_loud`)."""

    close: np.ndarray
    calm_score: np.ndarray  # the emergency score's spike and P(SELL) terms, weighted
    days: np.ndarray
    next_loud: list[int]

    @classmethod
    def of(
        cls, hours: MarketHours, quiet: QuietHours, spikes: np.ndarray, config: TradingConfig
    ) -> HeldHours:
        n = len(hours.times)
        acted = quiet.acted
        calm = quiet.priced & (~quiet.predicted | (acted == int(Signal.HOLD)))
        calm |= quiet.priced & (acted == int(Signal.BUY))  # a top-up `decide` may refuse
        loud = np.append(np.flatnonzero(~calm), n)
        next_loud = loud[np.searchsorted(loud, np.arange(n))]
        days = hours.times.normalize().asi8  # one number per calendar day of the wall times
        sell = np.where(quiet.predicted, hours.proba[:, 0], 0.0)  # no prediction: no emergency
        rule = config.risk.emergency
        spike = np.clip((spikes - 1.0) / (rule.spike_ratio - 1.0), 0.0, 1.0)
        calm_score = rule.volatility_weight * spike + rule.sell_weight * np.clip(sell, 0.0, 1.0)
        return cls(hours.close, calm_score, days, next_loud.tolist())


@dataclass(frozen=True)
class HeldPath:
    """A held account over positions start..: its equity at each close, the high since entry,
    and the kill switch's day start and peak after observing each hour (`_guard_path`)."""

    start: int
    equity: np.ndarray
    highs: np.ndarray
    day_start: np.ndarray
    peaks: np.ndarray
    entered: datetime

    @classmethod
    def of(cls, account: ArmAccount, state: AccountState, start: int, end: int,
           inputs: HourInputs) -> HeldPath:  # fmt: skip
        held, guard, high = inputs.held, account.guard, account.high
        price = held.close[start:end]
        equity = state.cash + state.position * price
        top = high.high if high.seen is not None else state.entry_price  # `follow_high`
        day_start, peaks = _guard_path(guard, equity, held.days[start:end], inputs.wall[start])
        entered = high.entered or inputs.wall[start]
        highs = np.maximum.accumulate(np.maximum(price, top))
        return cls(start, equity, highs, day_start, peaks, entered)


def held_stretch(
    account: ArmAccount,
    state: AccountState,
    start: int,
    inputs: HourInputs,
    book: RecordBook,
    config: TradingConfig,
) -> int:
    """Record the quiet hours from position `start` of an `account` holding a position
    (`state`, marked at `start`'s close) at once; the position after the last one recorded
    (`start` when none could be)."""
    guard, end = account.guard, min(inputs.held.next_loud[start], start + MAX_STRETCH)
    if (
        end - start < MIN_STRETCH
        or guard.day is None
        or is_dust(state.position * inputs.prices[start])
    ):
        return start  # (a guard that has seen a day has seen an equity > 0: its peak, its start)
    if _tops_up(account, state, start, inputs, config):
        return start  # the usual end of a run: cheaper to see before the numpy work
    path = HeldPath.of(account, state, start, end, inputs)
    end = _first_act(path, state, end, inputs, guard, config)
    if end == start:
        return start
    marks = path.equity.tolist()
    falls = _drawdowns(path.equity[: end - start], guard.peak_equity, path.peaks).tolist()

    def state_at(k: int) -> AccountState:
        return AccountState(state.cash, state.position, state.entry_price, marks[k - start],
                            falls[k - start])  # fmt: skip

    ratios, sources, end = arm_ratios(account, inputs, start, end, falls, state_at)
    end, refused = _unplaced_buys(inputs, start, end, ratios, sources, state_at, config)
    if end == start:
        return start
    last, wall = end - start - 1, inputs.wall
    account.high = EntryHigh(float(path.highs[last]), wall[end - 1], path.entered)
    moved = replace(
        guard, day=wall[end - 1].date(), day_start_equity=float(path.day_start[last]),
        peak_equity=float(path.peaks[last]), last_equity=marks[last],
    )  # fmt: skip
    account.kill_switch.change(lambda g: (None, moved))
    book.held(start, end, state, path.equity[: end - start], guard.halted, refused)
    book.quiet_sizing(ratios[: end - start], sources[: end - start])
    return end


def _first_act(
    path: HeldPath,
    state: AccountState,
    end: int,
    inputs: HourInputs,
    guard: RiskGuard,
    config: TradingConfig,
) -> int:
    """The first position before `end` at which a rule may act on the held position
    (`end` when none may)."""
    start, entry = path.start, state.entry_price
    price = inputs.held.close[start:end]
    loud = state.position * price < MIN_ORDER_KRW  # dust: `is_dust`
    loud |= _stop_hits(price, path.highs, entry, config.risk.stops)
    loud |= _emergency_hits(price, entry, inputs.held.calm_score[start:end], config.risk.emergency)
    barriers = inputs.moves.barriers if inputs.moves is not None else None
    if barriers is not None:
        loud |= _barrier_hits(price, entry, barriers)
        limit = path.entered + barriers.horizon * ONE_HOUR - ONE_HOUR / 60
        end = min(end, bisect_left(inputs.wall, limit, start, end))
    if not guard.halted:
        limits = (guard.daily_loss_limit, guard.max_drawdown)
        loud |= _kill_hits(path.equity, path.day_start, path.peaks, *limits)
    return min(end, start + int(np.argmax(loud))) if loud.any() else end


def _unplaced_buys(
    inputs: HourInputs,
    start: int,
    end: int,
    ratios: np.ndarray,
    sources: np.ndarray,
    state_at: Callable[[int], AccountState],
    config: TradingConfig,
) -> tuple[int, list[tuple[int, str]]]:
    """`decide`'s reason at each BUY in start..end-1 for which it places no order (a top-up
    below the minimum, or a position at its target), and where the run ends: at the first
    BUY it places an order for."""
    refused = []
    for k in np.flatnonzero(inputs.quiet.acted[start:end] == int(Signal.BUY)).tolist():
        at = start + k
        decision = decide(
            inputs.prediction(at), float(ratios[k]), sources[k], state_at(at),  # type: ignore[arg-type]
            inputs.prices[at], inputs.wall[at], config.policy, inputs.moves,
        )  # fmt: skip
        if decision.order is not None:
            return at, refused
        refused.append((at, decision.reason))
    return end, refused


def _tops_up(
    account: ArmAccount, state: AccountState, at: int, inputs: HourInputs, config: TradingConfig
) -> bool:
    """Whether position `at` is a BUY that `decide` places an order for (or a ratio it
    refuses), on the account as the hour-by-hour path sees it there (`state`)."""
    if inputs.quiet.acted[at] != int(Signal.BUY):
        return False
    prediction = inputs.prediction(at)
    assert prediction is not None  # an acted signal comes from a prediction
    ratio, source = account.sizing(prediction, state, inputs.volatility[at], None)
    if not 0.0 <= ratio <= 1.0:
        return True
    decision = decide(
        prediction, ratio, source, state, inputs.prices[at], inputs.wall[at], config.policy,
        inputs.moves,
    )  # fmt: skip
    return decision.order is not None


def _drawdowns(equity: np.ndarray, peak: float, peaks: np.ndarray) -> np.ndarray:
    """`AccountState.drawdown` of each hour: its equity against the peak before it is
    observed (`peak`, then `peaks`; all > 0 here), as `features.domain.drawdown`."""
    prior = np.concatenate(([peak], peaks[: len(equity) - 1]))
    return np.minimum(1.0, np.maximum(0.0, 1.0 - equity / prior))


def _guard_path(
    guard: RiskGuard, equity: np.ndarray, days: np.ndarray, first: datetime
) -> tuple[np.ndarray, np.ndarray]:
    """The kill switch's day start and peak after observing each of `equity` (its days by
    number, `first` the hour of the first), as `RiskGuard.observe` moves them."""
    new_day = np.empty(len(days), dtype=bool)
    new_day[0] = first.date() != guard.day
    new_day[1:] = days[1:] != days[:-1]
    before = np.concatenate(([guard.last_equity], equity[:-1]))  # the last equity seen
    at = np.maximum.accumulate(np.where(new_day, np.arange(len(days)), -1))
    day_start = np.where(at >= 0, before[at], guard.day_start_equity)
    peaks = np.maximum.accumulate(np.maximum(equity, guard.peak_equity))
    return day_start, peaks


def _stop_hits(price: np.ndarray, highs: np.ndarray, entry: float, stops: StopConfig) -> np.ndarray:
    """Where `trading.stops.stop_reason` may say sell (EPS early)."""
    hit = np.zeros(len(price), dtype=bool)
    if stops.stop_loss is not None and entry > 0:
        hit |= price <= entry * (1.0 - stops.stop_loss) * (1 + EPS)
    if stops.trailing_stop is not None:
        hit |= price <= np.maximum(highs, entry) * (1 - stops.trailing_stop) * (1 + EPS)
    return hit


def _barrier_hits(price: np.ndarray, entry: float, barriers: Barriers) -> np.ndarray:
    """Where the label's take-profit or stop-loss may be touched (EPS early)."""
    gain = price / entry - 1.0
    return (gain - ROUND_TRIP_FEE >= barriers.take_profit - EPS) | (
        gain <= EPS - barriers.stop_loss
    )


def _emergency_hits(
    price: np.ndarray, entry: float, calm_score: np.ndarray, rule: EmergencyConfig
) -> np.ndarray:
    """Where `trading.risk.emergency_score` may reach its threshold (EPS early; not finite: may),
    its loss term added to the hour's other terms (`HeldHours.calm_score`)."""
    if not rule.enabled:
        return np.zeros(len(price), dtype=bool)
    loss = np.minimum(np.maximum(0.0, 1.0 - price / entry) / rule.full_loss, 1.0)
    weights = rule.loss_weight + rule.volatility_weight + rule.sell_weight
    score = rule.loss_weight * loss + calm_score
    return ~(score < (rule.threshold - EPS) * weights)


def _kill_hits(
    equity: np.ndarray, day_start: np.ndarray, peaks: np.ndarray, daily: float, drawdown: float
) -> np.ndarray:
    """Where `trading.risk.kill_reason` may switch trading off (EPS early); every day start
    and peak is an equity seen, > 0 while a position is held."""
    return (1.0 - equity / day_start >= daily - EPS) | (1.0 - equity / peaks >= drawdown - EPS)
