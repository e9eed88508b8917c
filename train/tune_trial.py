"""One Ray Tune trial: a configuration's inner walk-forward, scored on pre-test hours only.

A trial is one `ModelConfig` (the search's values applied to the base configs). It runs the
research procedure (`train.research_jobs` for the gbm, `train.research_hybrid` for the hybrid) on
the newest `inner_folds` folds of the research calendar that end before `tune_end`, reading and
writing the research cache, so a configuration already computed costs a cache read and
`train research` with the winner reuses nothing it should not (its reported folds are later).
Predictions are scored against the reference label, whatever label the trial trained on, on the
hours whose reference label is known before the last inner fold ends: no scored hour, and no price
a score reads, lies in a fold a report calls out-of-sample. The calls scored are the ones the
trading policy would act on with the trial's `trading.*` values (`features.barriers.
acted_signals`: a margin turns a weak BUY into HOLD), so searching the margin moves the score;
the trial also reports the after-fee result of trading its folds (`score_return`, `score_sharpe`,
...) through the same replay as `train research`. Both come from a `TrialTrading` the CLI hands
down (train/ may not import trading/). Unlike the research report's replay, the trial's opens
positions on novel hours too: the novelty gate is not applied here.

The hybrid reports every epoch's early-stop loss (`hybrid_epoch`, counted across its folds) for
ASHA; the gbm reports once, at the end, without `hybrid_epoch`, so ASHA leaves it alone.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from features.config import LabelConfig
from features.folds import AnchoredFold
from features.labels import forward_returns, label_returns
from train.config import ResearchConfig
from train.evaluate import classification_metrics
from train.gbm import design_rows
from train.margin import acted_calls
from train.model_config import ModelConfig, apply_search
from train.research_cache import PROBA, PredictionCache
from train.research_jobs import FoldJob, MarketIndex, MarketMaterial, prepare_market
from train.research_keys import eligible_folds, fold_key
from train.research_report import TradeRequest, trade_requests, trading_figures
from train.research_run import (
    COMPONENTS,
    MarketResearch,
    ResearchRequest,
    ensemble_predictions,
    research_pool,
    run_and_store,
)

EPOCH = "hybrid_epoch"  # ASHA's time attribute: only the hybrid's per-epoch reports carry it
EPOCH_LOSS = "val_loss"  # ASHA's metric: the encoder's class-weighted early-stop log loss


@dataclass(frozen=True)
class InnerRun:
    """What every trial of one market's experiment shares."""

    market: str
    data_dir: str
    research: ResearchConfig
    cache_root: str
    tune_end: pd.Timestamp  # the first reported hour: nothing scored reaches it
    inner_folds: int


@dataclass(frozen=True)
class TrialTrading:
    """The trading side of every trial, from the edge (`train.tune_cli.trial_trading`).

    `policy(overrides)`: (margin, min_confidence, sell_margin) of trading.yaml with a trial's
    `trading.*` overrides; `trade(requests, arm, overrides)`: the after-fee replay `train
    research` uses.
    """

    arm: str
    policy: Callable[[list[str]], tuple[float | None, float, float | None]]
    trade: Callable[[list[TradeRequest], str, list[str]], list[dict[str, Any]]]


@dataclass(frozen=True)
class TrialPolicy:
    """How one trial's probabilities become calls: its margins, min_confidence and the label whose
    moves price a margin (a quantile label's: each fold's fitted threshold, which its predictions
    carry; `train.margin.fold_moves`)."""

    margin: float | None
    min_confidence: float
    labels: LabelConfig
    sell_margin: float | None = None

    def calls(self, predictions: pd.DataFrame) -> np.ndarray:
        return acted_calls(
            predictions, self.margin, self.labels, self.min_confidence, self.sell_margin
        )


def trial_policy(config: ModelConfig, trading: TrialTrading) -> TrialPolicy:
    """The trial's policy (trading.yaml with the trial's `trading.*` values)."""
    margin, min_confidence, sell_margin = trading.policy(config.trading_overrides())
    return TrialPolicy(margin, min_confidence, config.features.labels, sell_margin)


def trial_request(run: InnerRun, config: ModelConfig) -> ResearchRequest:
    return ResearchRequest(
        markets=[run.market],
        families=[config.family],
        data_dir=run.data_dir,
        profile=config.profile,
        profile_name=config.profile_name,
        features=config.features,
        research=run.research,
        cache=PredictionCache(run.cache_root),
        leaky=False,
    )


def inner_folds(index: MarketIndex, req: ResearchRequest, run: InnerRun) -> list[AnchoredFold]:
    """The newest `inner_folds` research folds whose test span ends by `tune_end`."""
    folds = [f for f in eligible_folds(index, req) if f.test_end <= run.tune_end]
    if not folds:
        raise ValueError(
            f"{run.market}: no research fold ends by {run.tune_end} with "
            f"{req.research.min_train_hours} training hours before it: move --tune-end later"
        )
    return folds[-run.inner_folds :]


def _hybrid_hooks(report: Any) -> Any:
    import torch

    from train.encoder_loop import TrainHooks

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return TrainHooks(device=device, report=report)


def fold_predictions(
    req: ResearchRequest,
    material: MarketMaterial,
    index: MarketIndex,
    folds: list[AnchoredFold],
    report: Any = None,
) -> pd.DataFrame:
    """Every inner fold's out-of-sample probabilities, from the cache or computed (and cached).

    The ensemble blends its components' folds as `train research` does
    (`research_run.ensemble_predictions`): they are computed for the inner folds and the
    `ensemble.lookback_folds` folds before them, whose hours fit each inner fold's weight.
    """
    family = req.families[0]
    if family != "ensemble":
        return _family_folds(family, req, material, index, folds, report)
    first = folds[0].number - req.profile.ensemble.lookback_folds
    span = [f for f in eligible_folds(index, req) if first <= f.number <= folds[-1].number]
    parts = {
        c: _family_folds(c, req, material, index, span, report) for c in COMPONENTS["ensemble"]
    }
    blended = ensemble_predictions(req, MarketResearch(index, folds, parts))
    return blended[blended["fold"].isin([f.number for f in folds])].sort_index()


def _family_folds(
    family: str,
    req: ResearchRequest,
    material: MarketMaterial,
    index: MarketIndex,
    folds: list[AnchoredFold],
    report: Any,
) -> pd.DataFrame:
    """One family's folds. The gbm's tree inputs are built at the first fold the cache lacks:
    a cached trial skips them."""
    frames = []
    for fold in folds:
        key = fold_key(family, fold, index, req)
        hit = req.cache.read(key)
        if hit is not None:
            frames.append(hit[0])
            continue
        job = FoldJob(key, family, req.profile.data.last_hours)
        if family == "gbm":
            if material.gbm_rows is None:
                rows = design_rows(material.data, material.data.samples)
                material = replace(material, gbm_rows=rows)
            frames.append(run_and_store(material, job, req.settings, req.cache.root).frame)
        else:
            from train.research_hybrid import hybrid_job

            frame, info = hybrid_job(material.data, job, req.settings, _hybrid_hooks(report))
            req.cache.write(key, frame, info)
            frames.append(frame)
    return pd.concat(frames).sort_index()


def reference_score(
    predictions: pd.DataFrame,
    index: MarketIndex,
    research: ResearchConfig,
    tune_end: pd.Timestamp,
    calls: np.ndarray | None = None,
) -> dict[str, Any]:
    """Balanced accuracy of `calls` (aligned with `predictions`; default the argmax) and log loss
    of the probabilities against the reference label, on the hours whose label is known before
    `tune_end` (t + horizon < tune_end): the end of the last inner fold."""
    ref = research.reference_label
    close = pd.Series(index.close, index=index.times)
    labels = pd.Series(
        label_returns(forward_returns(close, ref.horizon_hours).to_numpy(), ref.threshold),
        index=index.times,
    )
    hours = predictions.index
    y = labels.reindex(hours).to_numpy()
    keep = np.isfinite(y) & (hours + pd.Timedelta(hours=ref.horizon_hours) < tune_end)
    if not keep.any():
        raise ValueError(f"{index.market}: no labelled pre-test hour to score the trial on")
    proba = predictions[PROBA].to_numpy()[keep]
    scores = classification_metrics(
        y[keep].astype(np.int64), proba, None if calls is None else np.asarray(calls)[keep]
    )
    scored = hours[keep]
    return {
        "score_balanced_accuracy": scores["balanced_accuracy"],
        "score_log_loss": scores["log_loss"],
        "scored_hours": int(scores["n"]),
        "first_scored": str(scored.min()),
        "last_scored": str(scored.max()),
        "buy_calls": int(np.sum(scores["confusion"], axis=0)[2]),
    }


def trading_score(
    predictions: pd.DataFrame,
    index: MarketIndex,
    folds: list[AnchoredFold],
    policy: TrialPolicy,
    trading: TrialTrading,
    overrides: list[str],
) -> dict[str, Any]:
    """The after-fee result of trading the inner folds' predictions (each fold a fresh paper
    account, chained, as the research report does); every price it reads is before the last
    inner fold's end."""
    research = MarketResearch(index, folds)
    requests = trade_requests(research, predictions.index, {"trial": predictions}, policy.labels)
    figures, _ = trading_figures(trading.trade(requests, trading.arm, overrides))
    sharpe = figures["sharpe"]
    return {
        "score_return": figures["total_return"],
        "score_sharpe": float("nan") if sharpe is None else sharpe,
        "score_max_drawdown": figures["max_drawdown"],
        "score_trades": figures["trades"],
        "score_exposure": figures["exposure"],
    }


def run_trial(
    values: dict[str, Any], run: InnerRun, base: ModelConfig, trading: TrialTrading
) -> None:
    """The Tune function trainable (`tune.with_parameters` binds `run`, `base` and `trading`)."""
    from ray import tune

    config = apply_search(base, values)
    policy = trial_policy(config, trading)
    req = trial_request(run, config)
    pool = research_pool(req, run.market)
    material, index = prepare_market(
        run.data_dir, run.market, config.features, req.grid, set(), pool
    )
    folds = inner_folds(index, req, run)
    epochs = itertools.count(1)

    def report_epoch(metrics: dict[str, float]) -> None:
        tune.report({EPOCH: next(epochs), EPOCH_LOSS: float(metrics["val_loss"])})

    predictions = fold_predictions(req, material, index, folds, report_epoch)
    # The last inner fold's end, not tune_end: a label must not read the next (reported) fold.
    end = folds[-1].test_end
    scores = reference_score(predictions, index, run.research, end, policy.calls(predictions))
    overrides = config.trading_overrides()
    scores |= trading_score(predictions, index, folds, policy, trading, overrides)
    folds_text = ",".join(str(f.number) for f in folds)
    tune.report({EPOCH_LOSS: float("nan"), "market": run.market, "family": config.family,
                 "folds": folds_text, **scores})  # fmt: skip


def market_trainable(market: str) -> Callable[..., None]:
    """`run_trial` under a name of its own experiment: Tune registers a trainable by name for the
    whole cluster, so two markets tuned at once under one name ran each other's trials (the
    second registration replaced the first: KRW-ETH's table showed KRW-BTC's scores)."""

    def trial(values: dict[str, Any], run: InnerRun, base: ModelConfig,
              trading: TrialTrading) -> None:  # fmt: skip
        run_trial(values, run, base, trading)

    name = f"run_trial_{market.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    trial.__name__ = trial.__qualname__ = name
    return trial
