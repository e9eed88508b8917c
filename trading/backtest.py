"""Replay history hour by hour through the loop's account model, on out-of-sample predictions.

Each market's hours and predictions come from `trading.predictions` (walk-forward test hours and
the bundle after its training window, never an hour a model trained on). Hours before the first
prediction only warm up the risk inputs; hours after it without a prediction (a repaired gap, a
window broken by a gap) go through `protect_hour` as the loop's hours without a model do: the
kill switch observes the equity and the price-only stops still sell a held position.

Accounts: each (market, arm) pair is its own `trading.account.ArmAccount` over a PaperBroker of
`paper.initial_krw` with its own kill switch, so markets and arms never share cash and each result
stands alone. Decisions go through `plan_hour` and orders through `ArmAccount.execute`, exactly as
in the live loop; a fill happens at the hour's close (+/- slippage), as the loop acts right after
the close. An hour whose prediction is novel opens no position (`plan_hour`'s novelty gate), as
in the loop. Sizing is the arm's `RatioSource`: `fixed` and `rule` are built in (`ARMS`); a replay
of recorded live hours passes the recorded ratios instead.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features.sources import CandleSource
from serve.sizing import SizingConfig
from trading.account import NO_JOURNAL, NOTHING_SENT, ArmAccount, RatioSource, arm_source
from trading.backtest_hours import (
    NO_PREDICTION,
    RECORD_COLUMNS,
    STEP_COLUMNS,
    HourInputs,
    RecordBook,
    hour_row,
)
from trading.broker import Fill, OrderState
from trading.config import TradingConfig
from trading.paper import PaperBroker
from trading.predictions import MarketHours, load_market_hours
from trading.quiet_hours import flat_stretch
from trading.risk import RiskGuard
from train.registry import ModelRegistry

ARMS = ("fixed", "rule")
NOVEL = "novel input (dissimilarity past the model's threshold)"
__all__ = [
    "ARMS", "NO_PREDICTION", "NOVEL", "RECORD_COLUMNS", "STEP_COLUMNS", "ArmRun", "BacktestResult",
    "HourInputs", "arm_sources", "replay", "replay_markets", "run_backtest",
]  # fmt: skip


def arm_sources(config: TradingConfig, sizing: SizingConfig) -> dict[str, RatioSource]:
    """The backtester's arms: the A/B control's fixed ratio, and the sizing node's rule."""
    return {arm: arm_source(arm, config, sizing) for arm in ARMS}


@dataclass(frozen=True)
class ArmRun:
    """One (market, arm) replay: equity and position after each replayed hour, every fill."""

    market: str
    arm: str
    times: pd.DatetimeIndex
    close: np.ndarray
    equity: np.ndarray
    position: np.ndarray
    fills: tuple[Fill, ...]
    records: pd.DataFrame
    initial_krw: float
    guard: RiskGuard


def replay(
    hours: MarketHours,
    arm: str,
    sizing: RatioSource,
    config: TradingConfig,
    inputs: HourInputs | None = None,
    every_hour: bool = False,
) -> ArmRun:
    """Walk `hours` from its first prediction to its end with one ArmAccount on a PaperBroker.

    Python lists instead of numpy scalars in the loop: it runs once per market-hour and arm.
    `inputs`: the market's `HourInputs`, when the caller replays several arms over them.
    The hours in which a flat account provably does nothing are recorded in stretches
    (`trading.quiet_hours.flat_stretch`); `every_hour` walks each of them through the account
    instead: the same records, fills and guard, kept as the reference the shortcut is tested
    against (and a fallback should it ever be doubted).
    """
    market, close, first = hours.market, hours.close, hours.start
    broker = PaperBroker(config.paper.initial_krw, config.paper.slippage_bps)
    account = ArmAccount(arm, market, broker, RiskGuard.from_config(config.risk), sizing)
    inputs = inputs or HourInputs.of(hours, config)
    wall, prices, novel = inputs.wall, inputs.prices, hours.novel
    volatility, spikes = inputs.volatility, inputs.spikes
    book = RecordBook(hours, inputs)
    next_loud = inputs.quiet.next_loud  # position i is quiet when flat: next_loud[i] > i
    switch = account.kill_switch
    state, peak = None, None
    i = first
    while i < len(prices):
        price, hour = prices[i], wall[i]
        # Flat, the account's state does not depend on the price: it is the last one until a
        # fill or a new equity peak (its drawdown) changes it.
        if state is None or state.position != 0 or peak != switch.guard.peak_equity:
            state, peak = account.state(price), switch.guard.peak_equity
        if not every_hour and next_loud[i] > i and state.position == 0:
            after = flat_stretch(account, state, i, inputs, book)
            if after > i:
                i = after
                continue
        account.watch(state, price, hour)  # every hour is seen: nothing missed to fold in
        decision, done = None, NOTHING_SENT
        prediction = inputs.prediction(i)
        if prediction is not None:
            decision = account.plan(
                prediction,
                state,
                price,
                close[: i + 1],  # unread: `spikes[i]` is its volatility ratio
                volatility[i],
                None,
                config,
                moves=hours.moves,
                novel=NOVEL if novel[i] else "",
                spike=spikes[i],
            )
        else:  # the price-only rules still protect a held position, as in the loop
            decision = account.protect(state, price, hour, config, NO_PREDICTION)
        if decision is not None:
            done = account.execute(decision, price, NO_JOURNAL)
        if done.fill is not None:
            state, peak = account.state(price), switch.guard.peak_equity
        book.add(i, hour_row(decision, done, state), switch.guard.halted)
        i += 1
    records = book.frame(arm)
    filled = tuple(f for f in broker.fills if f.state is OrderState.DONE)
    return ArmRun(
        market, arm, hours.replayed, close[first:], records["equity"].to_numpy(),
        records["position"].to_numpy(), filled, records, config.paper.initial_krw, account.guard,
    )  # fmt: skip


@dataclass
class BacktestResult:
    hours: dict[str, MarketHours]
    runs: list[ArmRun]
    config: TradingConfig
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def decisions(self) -> pd.DataFrame:
        """Every replayed market-hour of every arm, for a replay to compare with a live ledger."""
        return pd.concat([run.records for run in self.runs], ignore_index=True)

    @property
    def hours_replayed(self) -> int:
        return sum(len(run.times) for run in self.runs)


def replay_markets(
    hours: Sequence[MarketHours],
    arms: Mapping[str, RatioSource],
    config: TradingConfig,
) -> BacktestResult:
    started, cpu_started = time.perf_counter(), time.process_time()
    runs = []
    for market_hours in hours:
        inputs = HourInputs.of(market_hours, config)
        runs += [replay(market_hours, arm, src, config, inputs) for arm, src in arms.items()]
    result = BacktestResult({h.market: h for h in hours}, runs, config)
    result.timings["hour_loop_s"] = time.perf_counter() - started
    result.timings["hour_loop_cpu_s"] = time.process_time() - cpu_started  # fair under load
    return result


def run_backtest(
    markets: Sequence[str],
    source: CandleSource,
    registry: ModelRegistry,
    config: TradingConfig,
    arms: Mapping[str, RatioSource],
    workdir: Path,
    version: str | None = None,
) -> BacktestResult:
    """Predictions for every market first (vectorised), then the cheap hour loop."""
    timings: dict[str, float] = {}
    hours = [load_market_hours(m, source, registry, workdir, version, timings) for m in markets]
    result = replay_markets(hours, arms, config)
    result.timings.update(timings)
    return result
