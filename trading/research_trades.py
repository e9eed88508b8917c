"""The research report's one door into trading: replay a model's predictions after fees.

`python -m train research` scores predictions on hours; what they would have earned goes through
the backtester's public pieces only (`market_hours`, `replay`, the arms' ratio sources), so a
research figure is exactly what `plan_hour` and the PaperBroker make of the same predictions.
train/ may not import trading/ (layering), so the research CLI, the edge, imports this module and
hands `trade` down. When the backtester's structure changes, this file is the one to re-point.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serve.sizing import SIZING_VOLATILITY_HOURS, load_sizing_config
from trading.account import arm_source
from trading.backtest import replay
from trading.config import TradingConfig, load_trading_config
from trading.predictions import market_hours
from train.research_report import TradeRequest


def trade_one(request: TradeRequest, arm: str, config: TradingConfig) -> dict[str, Any]:
    """A fresh paper account from the request's first prediction to its last: the equity after
    each hour. The timeline is cut to the history the risk inputs read (identical results)."""
    source = arm_source(arm, config, load_sizing_config() if arm == "rule" else None)
    predictions = request.predictions.assign(source="oos", model_version=request.model)
    history = config.risk.emergency.baseline_hours + SIZING_VOLATILITY_HOURS + 1
    first, last = request.times.get_indexer(predictions.index[[0, -1]])
    span = slice(max(0, first - history), last + 1)
    hours = market_hours(
        request.market, request.times[span], request.close[span], predictions, request.moves
    )
    run = replay(hours, arm, source, config)
    return {
        "market": request.market,
        "model": request.model,
        "fold": request.fold,
        "times": run.times,
        "equity": np.asarray(run.equity, dtype=float),
        "position_value": np.asarray(run.position, dtype=float) * run.close,
        "trades": len(run.fills),
        "initial": float(run.initial_krw),
        "halted": bool(run.records["halted"].iloc[-1]),
    }


def acting_policy(overrides: list[str] | None = None) -> tuple[float | None, float, float | None]:
    """(margin, min_confidence, sell_margin) of configs/trading.yaml with `overrides`: what turns
    a model's probabilities into the calls the loop acts on (`features.barriers.acted_signals`),
    so a Tune trial scores the calls its trading values make."""
    policy = load_trading_config(overrides=overrides).policy
    return policy.margin, policy.min_confidence, policy.sell_margin


def trade(
    requests: list[TradeRequest], arm: str = "fixed", overrides: list[str] | None = None
) -> list[dict[str, Any]]:
    """Replay each request; `overrides` change configs/trading.yaml (e.g. policy.margin=0.001)."""
    config = load_trading_config(overrides=overrides)
    return [trade_one(r, arm, config) for r in requests]


def trade_on_ray(
    requests: list[TradeRequest], arm: str, cpus: float, overrides: list[str] | None = None
) -> list[dict[str, Any]]:
    """One Ray task per market and model (its folds in turn): each replay is a Python loop over
    the hours, so tasks parallelise, and the market's timeline travels once per task."""
    import ray

    groups: dict[tuple[str, str], list[TradeRequest]] = {}
    for request in requests:
        groups.setdefault((request.market, request.model), []).append(request)
    remote = ray.remote(trade).options(num_cpus=cpus)
    results = ray.get([remote.remote(group, arm, overrides) for group in groups.values()])
    return [r for group in results for r in group]
