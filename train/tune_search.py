"""Ray Tune per market: family x features x label x hyperparameters x trading knobs, one experiment.

Each market gets its own experiment (a BTC trial is never ranked against a SOL one); the markets'
experiments run at once, each driven from its own Ray task. Trials are function trainables
(`train.tune_trial.run_trial`) that fit in their own process with the resources Tune gives them
(a GPU share for a hybrid trial when GPUs are used), so a trial starts in about a second instead of
a TorchTrainer's seven. ASHA stops hybrid trials on their per-epoch early-stop loss; gbm trials
report once and are only ranked by their score. The winner is the finished trial with the best
pre-test score against the reference label (`tune.metric`), and its whole configuration becomes a
`ModelConfig` with a `TuneRecord`, which `train tune --registry` fits and stores in the bundle.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator

from train.config import TuneConfig
from train.model_config import ModelConfig, TuneRecord, apply_search
from train.ray_fit import run_name
from train.research_stats import HOURS_PER_YEAR
from train.tune_trial import EPOCH, EPOCH_LOSS, InnerRun, TrialTrading, market_trainable

LOWER_IS_BETTER = {
    "balanced_accuracy": False,
    "log_loss": True,
    "sharpe": False,  # of trading the trial's calls after fees on the inner folds
    "return": False,
}
"""Each `tune.metric` and its direction. A trading metric of a trial that never traded is NaN
(no Sharpe without returns): such a trial is listed but cannot win."""


def param_space(tune_cfg: TuneConfig) -> dict[str, Any]:
    pick = tune.grid_search if tune_cfg.sampler == "grid" else tune.choice
    return {key: pick(values) for key, values in tune_cfg.search_space.items()}


def _max_epochs(base: ModelConfig, tune_cfg: TuneConfig, inner_folds: int) -> int:
    """More hybrid epochs than any trial reports (an ensemble trial's hybrid also trains the
    lookback folds its weights are fitted on): ASHA must never stop a trial's last epoch."""
    space = tune_cfg.search_space
    epochs = [base.profile.optim.epochs, *space.get("profile.optim.epochs", [])]
    folds = inner_folds
    if "ensemble" in [base.family, *space.get("family", [])]:
        lookback = [base.profile.ensemble.lookback_folds]
        folds += int(max([*lookback, *space.get("profile.ensemble.lookback_folds", [])]))
    return int(max(epochs)) * folds + 1


def trial_resources(tune_cfg: TuneConfig, base_family: str, use_gpu: bool) -> Any:
    """CPU for every trial; a GPU share for trials that train a hybrid (hybrid, ensemble) when
    GPUs are used."""

    def resources(values: dict[str, Any]) -> dict[str, float]:
        hybrid = values.get("family", base_family) in ("hybrid", "ensemble")
        gpu = {"GPU": tune_cfg.gpu_fraction} if use_gpu and hybrid else {}
        return {"CPU": tune_cfg.cpus_per_trial, **gpu}

    return resources


def tune_market(
    run: InnerRun,
    base: ModelConfig,
    tune_cfg: TuneConfig,
    trading: TrialTrading,
    storage_path: str | None,
    *,
    use_gpu: bool = False,
) -> tune.ResultGrid:
    """One Tune experiment for one market over `tune_cfg.search_space`."""
    trainable = tune.with_resources(
        tune.with_parameters(market_trainable(run.market), run=run, base=base, trading=trading),
        trial_resources(tune_cfg, base.family, use_gpu),
    )
    scheduler = ASHAScheduler(
        time_attr=EPOCH,
        metric=EPOCH_LOSS,
        mode="min",
        max_t=_max_epochs(base, tune_cfg, run.inner_folds),
        grace_period=tune_cfg.grace_period,
        reduction_factor=2,
    )
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(tune_cfg),
        tune_config=tune.TuneConfig(
            scheduler=scheduler,
            # The bound goes to the generator itself: Tune ignores `max_concurrent_trials` (with
            # only a warning) when it is handed a generator instance.
            search_alg=BasicVariantGenerator(
                random_state=tune_cfg.seed, max_concurrent=tune_cfg.max_concurrent
            ),
            num_samples=tune_cfg.num_samples,
        ),
        run_config=tune.RunConfig(
            name=run_name("tune", run.market), storage_path=storage_path, verbose=1
        ),
    )
    return tuner.fit()


@dataclass(frozen=True)
class TrialRow:
    """One trial as the table shows it; `score` is the experiment's metric, NaN unless done."""

    name: str
    values: dict[str, Any]
    status: str  # done | stopped by ASHA | error
    score: float
    scores: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TuneOutcome:
    """One market's experiment: every trial, the winner (None when no trial finished)."""

    market: str
    metric: str
    rows: list[TrialRow]
    winner: TrialRow | None
    experiment: str
    started: float
    ended: float

    def winner_config(self, base: ModelConfig, tune_end: str) -> ModelConfig:
        """The winner's whole configuration, with how it was chosen."""
        if self.winner is None:
            raise ValueError(f"{self.market}: no trial of {self.experiment} finished")
        record = TuneRecord(
            tune_end=tune_end,
            metric=self.metric,
            score=self.winner.score,
            trials=len(self.rows),
            scored_hours=int(self.winner.scores["scored_hours"]),
            experiment=self.experiment,
            sharpe_variance=trials_sharpe_variance(self.rows),
        )
        chosen = apply_search(base, self.winner.values)
        return chosen.model_copy(update={"tuned": record})


def trials_sharpe_variance(rows: list[TrialRow]) -> float | None:
    """The variance (ddof 1) of the finished trials' after-fee Sharpe ratios in hourly units
    (`score_sharpe` is annualised), which the deflated Sharpe's V reads; None with fewer than two
    (a trial that never traded has none)."""
    sharpes = [
        float(r.scores["score_sharpe"]) / math.sqrt(HOURS_PER_YEAR)
        for r in rows
        if r.status == "done" and math.isfinite(float(r.scores.get("score_sharpe", math.nan)))
    ]
    return statistics.variance(sharpes) if len(sharpes) >= 2 else None


def _row(result: Any, metric: str, market: str) -> TrialRow:
    metrics = result.metrics or {}
    name = str(metrics.get("trial_id") or (result.path or "?").rstrip("/").rsplit("/", 1)[-1])
    key = f"score_{metric}"
    if metrics.get("market", market) != market:
        raise RuntimeError(f"trial {name} of the {market} experiment scored {metrics['market']}")
    if result.error:
        return TrialRow(name, dict(result.config), f"error: {result.error}", math.nan)
    if key not in metrics:
        return TrialRow(name, dict(result.config), "stopped by ASHA", math.nan)
    scores = {k: metrics[k] for k in metrics if k.startswith("score_") or k in _SCORE_FACTS}
    return TrialRow(name, dict(result.config), "done", float(metrics[key]), scores)


_SCORE_FACTS = ("scored_hours", "first_scored", "last_scored", "folds", "buy_calls")


def summarize(market: str, grid: tune.ResultGrid, metric: str, started: float) -> TuneOutcome:
    """Every trial, and the finished one with the best pre-test score (ties: the first)."""
    rows = [_row(r, metric, market) for r in grid]
    sign = 1.0 if LOWER_IS_BETTER[metric] else -1.0
    done = [r for r in rows if r.status == "done" and math.isfinite(r.score)]
    winner = min(done, key=lambda r: sign * r.score, default=None)
    experiment = grid.experiment_path if hasattr(grid, "experiment_path") else ""
    return TuneOutcome(market, metric, rows, winner, experiment, started, time.time())


@ray.remote(num_cpus=0)
def _drive(run: InnerRun, base: ModelConfig, kwargs: dict[str, Any]) -> TuneOutcome:
    started = time.time()
    grid = tune_market(run, base, **kwargs)
    return summarize(run.market, grid, kwargs["tune_cfg"].metric, started)


def tune_markets_on_ray(
    runs: list[InnerRun],
    base: ModelConfig,
    tune_cfg: TuneConfig,
    trading: TrialTrading,
    storage_path: str | None,
    *,
    use_gpu: bool = False,
) -> dict[str, TuneOutcome]:
    """Every market's experiment at once, each from its own Ray task; they share the cluster.
    `trading` (`train.tune_cli.trial_trading`) makes the calls scored and replayed after fees."""
    kwargs = {
        "tune_cfg": tune_cfg,
        "trading": trading,
        "storage_path": storage_path,
        "use_gpu": use_gpu,
    }
    refs = [_drive.remote(run, base, kwargs) for run in runs]
    return {outcome.market: outcome for outcome in ray.get(refs)}


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _figure(value: Any, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def format_outcome(outcome: TuneOutcome) -> str:
    """The trials of one market, best first, and the winner."""
    keys = sorted({k for r in outcome.rows for k in r.values})
    sign = 1.0 if LOWER_IS_BETTER[outcome.metric] else -1.0
    order = sorted(outcome.rows, key=lambda r: (not math.isfinite(r.score), sign * r.score))
    head = ["trial", *keys, "bal_acc", "log_loss", "hours", "buys", "return", "sharpe", "status"]
    body = []
    for r in order:
        s = r.scores
        body.append([
            r.name[:24],
            *(_value(r.values.get(k, "")) for k in keys),
            f"{s['score_balanced_accuracy']:.4f}" if s else "-",
            f"{s['score_log_loss']:.4f}" if s else "-",
            str(s.get("scored_hours", "-")),
            str(s.get("buy_calls", "-")),
            _figure(s.get("score_return"), "+.2%"),
            _figure(s.get("score_sharpe"), ".2f"),
            r.status[:60],
        ])  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True))
             for row in [head, *body]]  # fmt: skip
    took = outcome.ended - outcome.started
    lines.insert(0, f"{outcome.market}: {len(outcome.rows)} trials in {took:.0f} s, "
                    f"calls scored on the reference label, metric {outcome.metric}; "
                    "return and sharpe: after fees, per fold replayed")  # fmt: skip
    w = outcome.winner
    if w is None:
        lines.append(f"{outcome.market} winner: none (no finished trial has a {outcome.metric})")
    else:
        chosen = ", ".join(f"{k}={_value(v)}" for k, v in sorted(w.values.items()))
        lines.append(f"{outcome.market} winner: {chosen}: {outcome.metric} {w.score:.4f} on "
                     f"{w.scores['scored_hours']} hours {w.scores['first_scored']} .. "
                     f"{w.scores['last_scored']} (folds {w.scores['folds']})")  # fmt: skip
    return "\n".join(lines)
