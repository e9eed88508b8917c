"""The research report: every model of every market scored on the same hours against the
reference label, with intervals, per-fold figures, after-fee trading and a deflated Sharpe.

Rows per market: the requested families, each family's leaky twin (the seed's protocol, predicted
on the same hours by a model whose training part did not hold them), and the baselines: the plain
LightGBM recipe with 12 months and with all history (`train.plain_gbm`), the majority class of the
hours before each fold, and persistence (the label of t - H). Labels are computed here, from the
closes, with the reference label (`research.reference_label`): predictions never carry labels, so
a model trained on another label is still judged on this one.

Hours: those in the requested range whose reference label is known and that every row predicted.
Trading goes through `trader` (the CLI passes `trading.research_trades`: plan_hour and the
PaperBroker), so this module stays below trading in the layering. Each fold is replayed on a fresh
paper account and risk guard, as if a person re-enabled the kill switch every month: over three
years one bad day would otherwise switch an arm off for good (daily loss limit and max drawdown
stay off until re-enabled) and the rest of the span would measure nothing. The folds' curves are
chained into one; `folds_halted` counts the folds that ended with the switch off. Each market's
block also holds `novelty` (`train.research_novelty`: the share of novel hours, every family's
and the plain baseline's balanced accuracy on novel vs familiar hours), and the families' replays
open no position on a novel hour, as the loop would not (`research.novelty_gate`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.barriers import LabelMoves
from features.config import LabelConfig
from features.exchange import FEE_RATE, HOUR
from train.margin import fold_moves, margin_table
from train.reference import reference_labels as reference_label_series
from train.research_novelty import gated, novelty_block
from train.research_run import BASELINE_FAMILIES, MarketResearch, ResearchRequest
from train.research_stats import (
    METRICS,
    block_starts,
    bootstrap_metrics,
    curve_figures,
    deflated_sharpe,
    interval,
    point_metrics,
)

PROBA = ["p_sell", "p_hold", "p_buy"]
TRADED = [*PROBA, "novel"]  # what a replay reads of a model's predictions (novel: optional)
REFERENCE_BASELINE = "plain-12m"
# Every model's balanced accuracy is paired against these: both plain variants (a model must beat
# the better one, and neither window is the obvious choice) and persistence.
VERSUS = (REFERENCE_BASELINE, "plain-all", "persistence")
CHANCE_BASELINES = ("majority", "persistence")
MODEL_FAMILIES = ("hybrid", "gbm", "ensemble")


@dataclass(frozen=True)
class TradeRequest:
    """One model's predictions to replay after fees on a market's timeline."""

    market: str
    model: str
    fold: int
    times: pd.DatetimeIndex  # the market's timeline; the replay reads the history it needs
    close: np.ndarray
    predictions: pd.DataFrame  # index time, PROBA (+ novel): one fold's reported hours
    moves: LabelMoves | None = None  # the trained label's moves (policy.margin prices with them)


Trader = Callable[[list[TradeRequest]], list[dict[str, Any]]]


def one_hot(labels: np.ndarray, smoothing: float = 1e-3) -> np.ndarray:
    out = np.full((len(labels), 3), smoothing / 2)
    out[np.arange(len(labels)), labels] = 1.0 - smoothing
    return out


def reference_labels(research: MarketResearch, req: ResearchRequest) -> pd.Series:
    index = research.index
    close = pd.Series(index.close, index=index.times)
    return reference_label_series(close, req.research.reference_label)


def chance_baselines(
    research: MarketResearch, labels: pd.Series, hours: pd.DatetimeIndex, req: ResearchRequest
) -> dict[str, pd.DataFrame]:
    """Majority class of the labelled hours before each fold (purged), and persistence."""
    sample_labels = labels.reindex(research.index.sample_times).dropna()
    majority = []
    for fold in research.folds:
        before = sample_labels[sample_labels.index < fold.test_start - req.purge_hours * HOUR]
        cls = int(before.value_counts().idxmax()) if len(before) else 1
        inside = hours[(hours >= fold.test_start) & (hours < fold.test_end)]
        majority.append(
            pd.DataFrame(one_hot(np.full(len(inside), cls)), index=inside, columns=PROBA)
        )
    horizon = req.research.reference_label.horizon_hours
    past = labels.reindex(hours - horizon * HOUR).to_numpy()
    persistence = one_hot(np.where(np.isfinite(past), past, 1).astype(np.int64))
    return {
        "majority": pd.concat(majority) if majority else pd.DataFrame(columns=PROBA),
        "persistence": pd.DataFrame(persistence, index=hours, columns=PROBA),
    }


def common_hours(
    research: MarketResearch, labels: pd.Series, req: ResearchRequest, names: list[str]
) -> pd.DatetimeIndex:
    hours = research.index.sample_times
    in_folds = np.zeros(len(hours), dtype=bool)
    for fold in research.folds:
        in_folds |= (hours >= fold.test_start) & (hours < fold.test_end)
    hours = hours[in_folds]
    if req.start is not None:
        hours = hours[hours >= req.start]
    if req.end is not None:
        hours = hours[hours <= req.end]
    hours = hours[np.isfinite(labels.reindex(hours).to_numpy())]
    for name in names:
        if "~" not in name:  # leaky twins cover only research.leaky_from on: scored where they do
            hours = hours.intersection(research.predictions[name].index)
    return hours


def model_names(research: MarketResearch, req: ResearchRequest) -> list[str]:
    families = [f for f in req.families if f in research.predictions]
    leaky = [f"{f}~leaky" for f in families if f"{f}~leaky" in research.predictions]
    return [*families, *leaky, *BASELINE_FAMILIES]


def per_fold(
    research: MarketResearch, hours: pd.DatetimeIndex, y: np.ndarray, proba: np.ndarray
) -> list[dict[str, Any]]:
    rows = []
    for fold in research.folds:
        inside = (hours >= fold.test_start) & (hours < fold.test_end)
        if inside.any():
            m = point_metrics(y[inside], proba[inside])
            rows.append(
                {
                    "fold": fold.number,
                    "start": str(fold.test_start),
                    "n": m["n"],
                    "balanced_accuracy": m["balanced_accuracy"],
                    "log_loss": m["log_loss"],
                }
            )
    return rows


def _score_one(
    research: MarketResearch,
    hours: pd.DatetimeIndex,
    y: np.ndarray,
    proba: np.ndarray,
    req: ResearchRequest,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    boot = req.research.bootstrap
    starts, block = block_starts(len(hours), boot.block_hours, boot.samples, boot.seed)
    samples = bootstrap_metrics(y, proba, starts, block)
    entry = {
        "metrics": point_metrics(y, proba),
        "intervals": {k: interval(samples[k]) for k in METRICS},
        "per_fold": per_fold(research, hours, y, proba),
    }
    return entry, samples


def score_models(
    research: MarketResearch,
    hours: pd.DatetimeIndex,
    labels: pd.Series,
    frames: dict[str, pd.DataFrame],
    req: ResearchRequest,
) -> dict[str, dict[str, Any]]:
    """Point metrics, intervals and per-fold figures of every model, and each model's balanced
    accuracy minus each of `VERSUS`'s with a paired interval (same blocks:
    the bootstrap draws depend only on the number of hours and the seed)."""
    samples, out = {}, {}
    for name, frame in frames.items():
        own = hours.intersection(frame.index)
        y = labels.loc[own].to_numpy(dtype=np.int64)
        entry, samples[name] = _score_one(research, own, y, frame.loc[own, PROBA].to_numpy(), req)
        out[name] = entry | {
            "config": research.configs.get(name, "fixed"),
            "paired": len(own) == len(hours),
        }
    for name in out:
        out[name]["versus"] = {
            other: {
                "balanced_accuracy": out[name]["metrics"]["balanced_accuracy"]
                - out[other]["metrics"]["balanced_accuracy"],
                "interval": interval(
                    samples[name]["balanced_accuracy"] - samples[other]["balanced_accuracy"]
                ),
            }
            for other in VERSUS
            if other != name and out[name]["paired"] and other in out
        }
    return out


def buy_and_hold(close: np.ndarray, initial: float) -> dict[str, Any]:
    """All cash in at the first reported close, valued as if sold at each close (both fees)."""
    equity = initial * (1 - FEE_RATE) * close / close[0] * (1 - FEE_RATE)
    return curve_figures(equity, initial, np.ones(len(close)), trades=2)


def trade_requests(
    research: MarketResearch,
    hours: pd.DatetimeIndex,
    frames: dict[str, pd.DataFrame],
    labels: LabelConfig,
    chance: LabelMoves | None = None,
) -> list[TradeRequest]:
    """One replay per model and fold, on that fold's reported hours, priced with that fold's
    moves (`train.margin.fold_moves`); `chance`: the moves of predictions that carry none under
    a quantile label (the chance baselines, which predict the reference label)."""
    index, requests = research.index, []
    for name, frame in frames.items():
        own = frame.loc[hours.intersection(frame.index)]
        for fold in research.folds:
            part = own[(own.index >= fold.test_start) & (own.index < fold.test_end)]
            if len(part):
                moves = fold_moves(labels, part)
                requests.append(TradeRequest(
                    index.market, name, fold.number, index.times, index.close,
                    part[[c for c in TRADED if c in part]], chance if moves is None else moves,
                ))  # fmt: skip
    return requests


def configs_tried(req: ResearchRequest, market: str, hours: pd.DatetimeIndex) -> int:
    """Model configurations in the cache with predictions on any of these hours (baselines and
    leaky twins are not candidates); at least one, the report's own."""
    first, last = hours[0], hours[-1]
    tried = {
        (family, config)
        for family, config in req.cache.configs(market)
        if family in MODEL_FAMILIES
        and any(s <= last and e > first for s, e in req.cache.spans(market, family, config))
    }
    return max(len(tried), 1)


def trials_counted(req: ResearchRequest, market: str, hours: pd.DatetimeIndex) -> dict[str, int]:
    """Where the deflated Sharpe's trial count comes from: `research`, the configurations this
    cache predicted these hours with, and `tune`, the trials of the Tune experiment that chose a
    `--config-from` source (0 without one). Tune trials predict only hours before the report's
    (its inner folds end by `tune_end`), so the cache never holds them for these hours; the
    report's own configuration is the Tune winner, in both counts, and `total` counts it once."""
    research = configs_tried(req, market, hours)
    tune = req.tuned.trials if req.tuned is not None else 0
    return {"research": research, "tune": tune, "total": research + max(tune - 1, 0)}


def chain_folds(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One model's per-fold replays as one curve: each fold starts where the previous ended."""
    results = sorted(results, key=lambda r: r["fold"])
    initial, level, parts, times = results[0]["initial"], 1.0, [], []
    for r in results:
        parts.append(level * np.asarray(r["equity"]) / r["initial"])
        level = parts[-1][-1]
        times.append(pd.DatetimeIndex(r["times"]))
    return {
        "equity": initial * np.concatenate(parts),
        "times": times[0].append(times[1:]) if len(times) > 1 else times[0],
        "position_value": np.concatenate([r["position_value"] for r in results]),
        "trades": sum(r["trades"] for r in results),
        "initial": initial,
        "folds_halted": sum(bool(r["halted"]) for r in results),
    }


def trading_figures(parts: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One model's per-fold replays (a trader's results) as the report's trading figures
    (return, Sharpe, max drawdown, trades, exposure, folds halted, hourly returns) and the
    chained curve they come from."""
    chained = chain_folds(parts)
    figures = curve_figures(
        chained["equity"], chained["initial"], chained["position_value"], chained["trades"]
    )
    return figures | {"folds_halted": chained["folds_halted"]}, chained


def _attach_trading(
    models: dict[str, dict[str, Any]],
    results: list[dict[str, Any]],
    trials: int,
    trials_variance: float | None = None,
) -> dict[str, Any]:
    by_model: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        by_model.setdefault(result["model"], []).append(result)
    curves = {}
    for name, parts in by_model.items():
        figures, chained = trading_figures(parts)
        returns = figures.pop("hourly_returns")
        models[name]["trading"] = figures
        models[name]["dsr"] = deflated_sharpe(returns, trials, trials_variance)
        curves[name] = (chained["times"], chained["equity"] / chained["initial"])
    return curves


def margin_block(
    research: MarketResearch,
    hours: pd.DatetimeIndex,
    frames: dict[str, pd.DataFrame],
    req: ResearchRequest,
) -> dict[str, Any]:
    """Coverage against precision and after-fee return per margin (`train.margin`) for every
    model family and the plain baseline, on the report's hours, with the margin these hours would
    fit: honest to configure only from a run whose hours precede the ones reported elsewhere."""
    close = pd.Series(research.index.close, index=research.index.times)
    names = [n for n in [*req.families, REFERENCE_BASELINE] if n in frames]
    return margin_table(close, hours, {n: frames[n] for n in names}, req.features.labels)


def _novelty(research: MarketResearch, hours, labels, frames) -> dict[str, Any] | None:
    """The novelty block (train.research_novelty) of the families and the plain baseline."""
    if research.novelty is None:
        return None
    scored = {n: f for n, f in frames.items() if n in (*MODEL_FAMILIES, REFERENCE_BASELINE)}
    return novelty_block(research.novelty, hours, labels, scored)


def market_report(
    research: MarketResearch, req: ResearchRequest, trader: Trader
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON block of one market, and the curves the plot draws."""
    labels = reference_labels(research, req)
    names = model_names(research, req)
    hours = common_hours(research, labels, req, names)
    if len(hours) == 0:
        raise ValueError(f"{research.index.market}: no hour is predicted by every model")
    frames = {n: research.predictions[n] for n in names}
    frames |= chance_baselines(research, labels, hours, req)
    models = score_models(research, hours, labels, frames, req)
    trials = trials_counted(req, research.index.market, hours)
    novelty = _novelty(research, hours, labels, frames)
    if research.novelty is not None and req.research.novelty_gate:  # as the loop would trade
        frames |= {n: gated(f, research.novelty) for n, f in frames.items() if n in MODEL_FAMILIES}
    reference = LabelMoves.of_threshold(req.research.reference_label.threshold)
    results = trader(trade_requests(research, hours, frames, req.features.labels, reference))
    variance = req.tuned.sharpe_variance if req.tuned is not None else None
    curves = _attach_trading(models, results, trials["total"], variance)
    close = research.index.close[research.index.times.get_indexer(hours)]
    initial = results[0]["initial"] if results else 1.0
    hold = buy_and_hold(close, initial)
    hold.pop("hourly_returns")
    block = {
        "hours": int(len(hours)),
        "span": [str(hours[0]), str(hours[-1])],
        "folds": [
            {"fold": f.number, "start": str(f.test_start), "end": str(f.test_end)}
            for f in research.folds
        ],
        "configs_tried": trials["total"],
        "configs_tried_from": trials,
        "models": models,
        "buy_and_hold": hold,
        "margins": margin_block(research, hours, frames, req),
        "novelty": novelty,
    }
    curves["buy&hold"] = (hours, close / close[0] * (1 - FEE_RATE) ** 2)
    return block, {"hours": hours, "curves": curves, "models": models, "margins": block["margins"]}


def build_report(
    req: ResearchRequest,
    markets: dict[str, MarketResearch],
    trader: Trader,
    run: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The whole report (JSON-ready) and the per-market curves for the plot."""
    blocks, plots, records = {}, {}, []
    for market, research in markets.items():
        blocks[market], plots[market] = market_report(research, req, trader)
        records += research.records
    report = {
        "profile": req.profile_name,
        "families": req.families,
        "range": [str(req.start) if req.start else None, str(req.end) if req.end else None],
        "fold_grid": {"origin": req.research.origin, "fold_hours": req.research.fold_hours},
        "reference_label": req.research.reference_label.model_dump(),
        "reference": {
            "label": req.research.reference_label.model_dump(),
            "scored": "every model and baseline of markets.*.models, whatever it trained on",
        },
        "labels": req.features.labels.model_dump(),
        "markets": blocks,
        "run": run,
        "folds_run": records,
    }
    return report, plots
