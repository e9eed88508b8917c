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

from serve.sizing import load_sizing_config
from trading.backtest import fixed_ratio_source, market_hours, replay, rule_ratio_source
from trading.config import TradingConfig, load_trading_config
from train.research_report import PROBA, TradeRequest


def trade_one(request: TradeRequest, arm: str, config: TradingConfig) -> dict[str, Any]:
    """The equity after each hour from the first prediction to the timeline's end."""
    if arm == "rule":
        source = rule_ratio_source(load_sizing_config())
    else:
        source = fixed_ratio_source(config.ab.fixed_ratio)
    predictions = request.predictions[PROBA].assign(source="oos", model_version=request.model)
    hours = market_hours(request.market, request.times, request.close, predictions)
    run = replay(hours, arm, source, config)
    return {
        "market": request.market,
        "model": request.model,
        "times": run.times,
        "equity": np.asarray(run.equity, dtype=float),
        "position_value": np.asarray(run.position, dtype=float) * run.close,
        "trades": len(run.fills),
        "initial": float(run.initial_krw),
    }


def trade(requests: list[TradeRequest], arm: str = "fixed") -> list[dict[str, Any]]:
    config = load_trading_config()
    return [trade_one(r, arm, config) for r in requests]


def trade_on_ray(requests: list[TradeRequest], arm: str, cpus: float) -> list[dict[str, Any]]:
    """One Ray task per replay: each is a Python loop over the hours, so they parallelise."""
    import ray

    config = load_trading_config()
    remote = ray.remote(trade_one).options(num_cpus=cpus)
    return ray.get([remote.remote(r, arm, config) for r in requests])
