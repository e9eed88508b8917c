"""Replay history hour by hour through `plan_hour` and a PaperBroker, on out-of-sample predictions.

A model never trades the hours it was trained on. Each market's predictions come from two places:
- the bundle's `oos.parquet`: the walk-forward test hours, each predicted by the fold model that
  had not seen it (used as stored, never recomputed);
- the bundle itself, batched, on the hours after its training window: after
  `train_window[1] + horizon` (the last training label looked `horizon` hours ahead; the same
  cut as `train.gate.comparable_hours`) and after the last oos hour. `walk_forward_predictions`
  refuses to return a bundle prediction inside that window.
Hours before the first prediction only warm up the risk inputs; hours after it without a
prediction (a repaired gap, a window broken by a gap) send nothing, but equity is still marked
and the kill switch still observes it.

Accounts: each (market, arm) pair is its own paper account of `paper.initial_krw` with its own
kill switch, so markets and arms never share cash and each result stands alone. A fill happens
at the hour's close (+/- slippage), as the live loop acts right after the close.

Sizing is pluggable (`RatioSource`): the `fixed` arm (ab.fixed_ratio) and the `rule` arm
(`serve.sizing.rule_sizing`, the LLM arm's deterministic fallback) are built in; a replay of
recorded live hours passes the recorded ratios instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.dataset import MarketDataset, build_dataset, usable_samples
from features.domain import AccountState, Decision, Prediction
from features.sources import CandleSource
from serve.sizing import SizingConfig, SizingRequest, rule_sizing
from trading.broker import Fill, OrderRejected, OrderState
from trading.config import TradingConfig
from trading.paper import PaperBroker
from trading.risk import RiskGuard
from trading.step import plan_hour, rolling_sizing_volatility
from train.registry import ModelRegistry

if TYPE_CHECKING:  # torch loads only when a bundle does: `python -m trading status` stays light
    from train.bundle import HybridModel

RatioSource = Callable[[str, datetime, Prediction, AccountState, float], tuple[float, str]]
PROBA_COLUMNS = ["p_sell", "p_hold", "p_buy"]
ARMS = ("fixed", "rule")
INFERENCE_BATCH = 4096  # windows per predict_proba call: ~36 MB of float64 features
STEP_COLUMNS = [
    "signal", "ratio", "sizing_source", "side", "order_krw", "order_volume", "identifier",
    "reason", "fill_state", "fill_volume", "fill_price", "fee", "cash", "position", "equity",
]  # fmt: skip
# One row per replayed market-hour and arm: what a replay compares with the live ledger.
RECORD_COLUMNS = [
    "time", "market", "arm", "source", "model_version", *PROBA_COLUMNS, "price", *STEP_COLUMNS,
    "halted",
]  # fmt: skip


class LookaheadError(AssertionError):
    """A prediction would have come from a model trained on that hour (or on its future)."""


# -- predictions -----------------------------------------------------------------------------


def trained_until(metadata: Mapping[str, object]) -> pd.Timestamp:
    """The last hour whose price the bundle's training labels saw: train end + horizon."""
    try:
        window = metadata["train_window"]
        horizon = int(metadata["horizon"])  # type: ignore[call-overload]
        end = pd.Timestamp(window[1])  # type: ignore[index]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(
            f"bundle metadata lacks a usable train_window/horizon ({exc!r}): retrain it"
        ) from exc
    return end + pd.Timedelta(hours=horizon)


def prediction_positions(data: MarketDataset) -> np.ndarray:
    """Positions whose 24-hour window is complete, contiguous and observed at its end: the hours
    a live loop could have scored. No label is needed, so the newest hours count too."""
    any_label = np.zeros(len(data.times))
    return usable_samples(data.times, data.features, data.filled, any_label, data.sequence_length)


def bundle_proba(model: HybridModel, data: MarketDataset, positions: np.ndarray) -> np.ndarray:
    """The bundle's probabilities at `positions`, in batches so memory stays flat."""
    parts = [
        model.predict_proba(data.raw_windows(positions[start : start + INFERENCE_BATCH]))
        for start in range(0, len(positions), INFERENCE_BATCH)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 3))


def walk_forward_predictions(
    model: HybridModel, data: MarketDataset, oos: pd.DataFrame | None
) -> pd.DataFrame:
    """Out-of-sample predictions by hour: oos rows first, then the bundle after training.

    Columns: p_sell, p_hold, p_buy, source ("oos" | "bundle"), model_version. oos hours missing
    from `data` (other candles than the fit saw) are dropped: they could not be priced.
    """
    version = model.version
    frames = []
    last_oos = pd.Timestamp.min
    if oos is not None and len(oos):
        kept = oos[oos.index.isin(data.times)]
        frames.append(
            kept[PROBA_COLUMNS].assign(
                source="oos", model_version=[f"{version}/fold{f}" for f in kept["fold"]]
            )
        )
        last_oos = oos.index.max()
    cutoff = trained_until(model.metadata)
    positions = prediction_positions(data)
    positions = positions[data.times[positions] > max(cutoff, last_oos)]
    times = data.times[positions]
    if len(times) and times.min() <= cutoff:
        raise LookaheadError(f"{data.market}: bundle {version} would trade {times.min()}")
    proba = bundle_proba(model, data, positions)
    frames.append(
        pd.DataFrame(proba, index=times, columns=PROBA_COLUMNS).assign(
            source="bundle", model_version=version
        )
    )
    out = pd.concat(frames).sort_index()
    out.index.name = "time"
    return out


# -- the replay material -----------------------------------------------------------------------


@dataclass(frozen=True)
class MarketHours:
    """One market's timeline, closes and aligned predictions; `start` is the first traded hour.

    Positions before `start` are history the risk inputs (volatility windows) may read.
    """

    market: str
    times: pd.DatetimeIndex
    close: np.ndarray
    proba: np.ndarray  # (n, 3); NaN rows where there is no prediction
    source: np.ndarray  # "oos" | "bundle" | ""
    model_version: np.ndarray
    start: int
    volatility: np.ndarray  # the sizing rule's 24 h volatility at each position

    @property
    def replayed(self) -> pd.DatetimeIndex:
        return self.times[self.start :]


def market_hours(
    market: str, times: pd.DatetimeIndex, close: np.ndarray, predictions: pd.DataFrame
) -> MarketHours:
    """Align `predictions` (indexed by hour, see walk_forward_predictions) with a timeline."""
    if len(predictions) == 0:
        raise ValueError(
            f"{market}: no out-of-sample predictions to replay (no oos.parquet rows and no "
            "candles after the bundle's training window)"
        )
    aligned = predictions.reindex(times)
    has = aligned["source"].notna().to_numpy()
    if not has.any():
        raise ValueError(f"{market}: none of the predicted hours are in the candle timeline")
    return MarketHours(
        market=market,
        times=times,
        close=np.asarray(close, dtype=float),
        proba=aligned[PROBA_COLUMNS].to_numpy(dtype=float),
        source=aligned["source"].fillna("").to_numpy(dtype=object),
        model_version=aligned["model_version"].fillna("").to_numpy(dtype=object),
        start=int(np.argmax(has)),
        volatility=rolling_sizing_volatility(close),
    )


# -- sizing arms ---------------------------------------------------------------------------------


def fixed_ratio_source(ratio: float) -> RatioSource:
    """The A/B control arm: the same share of the account on every BUY."""

    def source(
        market: str, hour: datetime, p: Prediction, a: AccountState, v: float
    ) -> tuple[float, str]:
        return ratio, "fixed"

    return source


def rule_ratio_source(sizing: SizingConfig) -> RatioSource:
    """The fractional-Kelly rule the LLM arm falls back to, on this hour's inputs."""

    def source(
        market: str, hour: datetime, p: Prediction, a: AccountState, v: float
    ) -> tuple[float, str]:
        result = rule_sizing(SizingRequest(market, p.signal, p.probabilities, v, a), sizing)
        return result.ratio, result.source

    return source


def arm_sources(config: TradingConfig, sizing: SizingConfig) -> dict[str, RatioSource]:
    return {"fixed": fixed_ratio_source(config.ab.fixed_ratio), "rule": rule_ratio_source(sizing)}


# -- the hour loop -------------------------------------------------------------------------------


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


def _execute(
    broker: PaperBroker, decision: Decision | None, price: float
) -> tuple[Fill | None, str]:
    """Send the decision's order; a refusal is a REJECTED fill and its reason (the loop would
    log it and go on to the next hour)."""
    if decision is None or decision.order is None:
        return None, ""
    try:
        return broker.place(decision.order, price), ""
    except OrderRejected as exc:
        return broker.lookup(decision.order.identifier), f"; rejected: {exc}"


def _record(
    decision: Decision | None, fill: Fill | None, note: str, account: AccountState
) -> tuple:
    """The hour's decision, fill and account after it (see STEP_COLUMNS)."""
    order = decision.order if decision else None
    return (
        decision.signal.name if decision else "",
        decision.ratio if decision else np.nan,
        decision.sizing_source if decision else "",
        order.side.value if order else "",
        order.krw_amount if order else 0.0,
        order.volume if order else 0.0,
        order.identifier if order else "",
        decision.reason + note if decision else "no prediction for this hour: nothing sent",
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


def replay(
    hours: MarketHours, arm: str, ratio_source: RatioSource, config: TradingConfig
) -> ArmRun:
    """Walk `hours` from its first prediction to its end through plan_hour and a PaperBroker.

    Python lists instead of numpy scalars in the loop: it runs once per market-hour and arm.
    """
    market, close = hours.market, hours.close
    broker = PaperBroker(config.paper.initial_krw, config.paper.slippage_bps)
    guard = RiskGuard.from_config(config.risk)
    baseline = config.risk.emergency.baseline_hours
    wall, prices = hours.times.to_pydatetime(), close.tolist()
    probas, volatility = hours.proba.tolist(), hours.volatility.tolist()
    rows, halted = [], []
    for i in range(hours.start, len(prices)):
        price, hour = prices[i], wall[i]
        account = broker.account_state(market, price, guard.peak_equity or None)
        decision = None
        if hours.source[i]:
            prediction = Prediction(market, hour, tuple(probas[i]), hours.model_version[i])
            ratio, src = ratio_source(market, hour, prediction, account, volatility[i])
            window = close[max(0, i - baseline) : i + 1]
            decision, guard = plan_hour(
                prediction, ratio, src, account, price, hour, window, guard, config
            )
        else:
            guard = guard.observe(hour, account.equity)
        fill, note = _execute(broker, decision, price)
        if fill is not None:
            account = broker.account_state(market, price)
        rows.append(_record(decision, fill, note, account))
        halted.append(guard.halted)
    records = _records_frame(hours, arm, rows, halted)
    done = tuple(f for f in broker.fills if f.state is OrderState.DONE)
    return ArmRun(
        market, arm, hours.replayed, close[hours.start :], records["equity"].to_numpy(),
        records["position"].to_numpy(), done, records, config.paper.initial_krw, guard,
    )  # fmt: skip


# -- the whole backtest ----------------------------------------------------------------------------


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


def load_market_hours(
    market: str,
    source: CandleSource,
    registry: ModelRegistry,
    workdir: Path,
    version: str | None = None,
    timings: dict[str, float] | None = None,
) -> MarketHours:
    """Fetch the bundle, build the market's features once, predict every unseen hour in batch.

    `timings` (if given) accumulates features_s (bundle + candles + features) and inference_s.
    """
    from train.bundle import load_bundle

    timings = {} if timings is None else timings
    started = time.perf_counter()
    bundle_dir = registry.fetch(market, version, dest_dir=workdir)
    model = load_bundle(bundle_dir)
    oos_path = bundle_dir / "oos.parquet"
    oos = pd.read_parquet(oos_path) if oos_path.is_file() else None
    meta = model.metadata
    candles = source.history(market)
    data = build_dataset(candles, market, int(meta["horizon"]), int(meta["max_gap_hours"]))
    built = time.perf_counter()
    predictions = walk_forward_predictions(model, data, oos)
    hours = market_hours(market, data.times, data.close, predictions)
    timings["features_s"] = timings.get("features_s", 0.0) + built - started
    timings["inference_s"] = timings.get("inference_s", 0.0) + time.perf_counter() - built
    return hours


def replay_markets(
    hours: Sequence[MarketHours],
    arms: Mapping[str, RatioSource],
    config: TradingConfig,
) -> BacktestResult:
    started = time.perf_counter()
    runs = [replay(h, arm, src, config) for h in hours for arm, src in arms.items()]
    result = BacktestResult({h.market: h for h in hours}, runs, config)
    result.timings["hour_loop_s"] = time.perf_counter() - started
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
