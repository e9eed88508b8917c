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
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from features.domain import AccountState, Decision, Prediction
from features.sources import CandleSource
from serve.sizing import SizingConfig
from trading.account import NO_JOURNAL, NOTHING_SENT, ArmAccount, Execution, RatioSource, arm_source
from trading.broker import Fill, OrderState
from trading.config import TradingConfig
from trading.paper import PaperBroker
from trading.predictions import PROBA_COLUMNS, MarketHours, load_market_hours
from trading.risk import RiskGuard, rolling_volatility_ratio
from train.registry import ModelRegistry

ARMS = ("fixed", "rule")
STEP_COLUMNS = [
    "signal", "ratio", "sizing_source", "side", "order_krw", "order_volume", "identifier",
    "reason", "fill_state", "fill_volume", "fill_price", "fee", "cash", "position", "equity",
]  # fmt: skip
# One row per replayed market-hour and arm: what a replay compares with the live ledger.
RECORD_COLUMNS = [
    "time", "market", "arm", "source", "model_version", *PROBA_COLUMNS, "price", *STEP_COLUMNS,
    "halted",
]  # fmt: skip
NO_PREDICTION = "no prediction for this hour: nothing sent"
NOVEL = "novel input (dissimilarity past the model's threshold)"


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


def _record(decision: Decision | None, done: Execution, account: AccountState) -> tuple:
    """The hour's decision, fill and account after it (see STEP_COLUMNS)."""
    order = decision.order if decision else None
    fill = done.fill
    return (
        decision.signal.name if decision else "",
        decision.ratio if decision else np.nan,
        decision.sizing_source if decision else "",
        order.side.value if order else "",
        order.krw_amount if order else 0.0,
        order.volume if order else 0.0,
        order.identifier if order else "",
        decision.reason + done.note if decision else NO_PREDICTION,
        fill.state.value if fill else "",
        fill.volume if fill else 0.0,
        fill.price if fill else 0.0,
        fill.fee if fill else 0.0,
        account.cash,
        account.position,
        account.equity,
    )


def _records_frame(hours: MarketHours, arm: str, rows: list[tuple], halted: list[bool]):
    """Per-hour rows plus the columns known before the loop, filled in as whole arrays."""
    frame = pd.DataFrame(rows, columns=STEP_COLUMNS)
    span = slice(hours.start, None)
    frame["halted"] = halted
    known = {
        "time": hours.times[span],
        "market": hours.market,
        "arm": arm,
        "source": hours.source[span],
        "model_version": hours.model_version[span],
        "price": hours.close[span],
    } | dict(zip(PROBA_COLUMNS, hours.proba[span].T, strict=True))
    return frame.assign(**known)[RECORD_COLUMNS]


@dataclass(frozen=True)
class HourInputs:
    """What every arm of one market reads per hour, built once for all of them: the hour, its
    close, its Prediction (None: no prediction), the sizing volatility and the emergency rule's
    volatility ratio (`rolling_volatility_ratio`, the loop's numbers computed in one pass)."""

    wall: list[datetime]
    prices: list[float]
    predictions: list[Prediction | None]
    volatility: list[float]
    spikes: list[float]

    @classmethod
    def of(cls, hours: MarketHours, config: TradingConfig) -> HourInputs:
        emergency = config.risk.emergency
        wall, probas = hours.times.to_pydatetime().tolist(), hours.proba.tolist()
        versions, source = hours.model_version, hours.source
        predictions = [
            Prediction(hours.market, wall[i], tuple(probas[i]), versions[i]) if source[i] else None
            for i in range(len(wall))
        ]
        spikes = rolling_volatility_ratio(
            hours.close, emergency.recent_hours, emergency.baseline_hours
        )
        return cls(wall, hours.close.tolist(), predictions, hours.volatility.tolist(),
                   spikes.tolist())  # fmt: skip


def replay(
    hours: MarketHours,
    arm: str,
    sizing: RatioSource,
    config: TradingConfig,
    inputs: HourInputs | None = None,
) -> ArmRun:
    """Walk `hours` from its first prediction to its end with one ArmAccount on a PaperBroker.

    Python lists instead of numpy scalars in the loop: it runs once per market-hour and arm.
    `inputs`: the market's `HourInputs`, when the caller replays several arms over them.
    """
    market, close = hours.market, hours.close
    broker = PaperBroker(config.paper.initial_krw, config.paper.slippage_bps)
    account = ArmAccount(arm, market, broker, RiskGuard.from_config(config.risk), sizing)
    inputs = inputs or HourInputs.of(hours, config)
    wall, prices, predictions = inputs.wall, inputs.prices, inputs.predictions
    volatility, spikes = inputs.volatility, inputs.spikes
    rows, halted = [], []
    state, peak = None, None
    for i in range(hours.start, len(prices)):
        price, hour = prices[i], wall[i]
        # Flat, the account's state does not depend on the price: it is the last one until a
        # fill or a new equity peak (its drawdown) changes it.
        if state is None or state.position != 0 or peak != account.guard.peak_equity:
            state, peak = account.state(price), account.guard.peak_equity
        account.watch(state, price, hour)  # every hour is seen: nothing missed to fold in
        decision, done = None, NOTHING_SENT
        prediction = predictions[i]
        if prediction is not None:
            novel = NOVEL if hours.novel[i] else ""
            decision = account.plan(
                prediction,
                state,
                price,
                close[: i + 1],  # unread: `spikes[i]` is its volatility ratio
                volatility[i],
                None,
                config,
                moves=hours.moves,
                novel=novel,
                spike=spikes[i],
            )
        else:  # the price-only rules still protect a held position, as in the loop
            decision = account.protect(state, price, hour, config, NO_PREDICTION)
        if decision is not None:
            done = account.execute(decision, price, NO_JOURNAL)
        if done.fill is not None:
            state, peak = account.state(price), account.guard.peak_equity
        rows.append(_record(decision, done, state))
        halted.append(account.guard.halted)
    records = _records_frame(hours, arm, rows, halted)
    filled = tuple(f for f in broker.fills if f.state is OrderState.DONE)
    return ArmRun(
        market, arm, hours.replayed, close[hours.start :], records["equity"].to_numpy(),
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
