"""Ray Tune over one market's hyper-parameters, scored only on hours before its first test fold.

Each trial is a Tune function that runs a one-worker TorchTrainer (Train V2 style); the worker runs
the one training function (`fit_plan`) on the older part of the pre-test hours, reports the
early-stop loss every epoch (it reaches Tune through `TuneReportCallback`, so ASHA can stop a
hopeless trial after an epoch), then scores the whole hybrid, head included, on the newest part.
One experiment per market: ASHA must never rank a BTC trial against a SOL trial. The four markets'
experiments run at once, each driven from its own Ray task.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import ray
import ray.train
from ray import tune
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from features.config import FeaturesConfig
from features.dataset import MarketDataset
from features.exchange import HOUR_NS
from features.labels import fold_threshold
from features.sources import ParquetDirSource
from features.splits import walk_forward_splits
from train.config import TrainProfile, TuneConfig
from train.evaluate import classification_metrics
from train.fit import FoldPlan, fit_plan, purged_slices
from train.pipeline import load_market, split_spec
from train.ray_fit import ray_train_hooks, run_name

SCORE = "score_log_loss"


def apply_trial(profile: TrainProfile, trial: dict[str, Any]) -> TrainProfile:
    """The profile with one trial's values (keys like 'optim.lr', 'encoder.hidden_size')."""
    data = profile.model_dump()
    for key, value in trial.items():
        section, field = key.split(".")
        data[section][field] = value
    return TrainProfile.model_validate(data)


def tuning_plan(
    data: MarketDataset, features: FeaturesConfig, profile: TrainProfile, score_share: float
) -> tuple[FoldPlan, float]:
    """Fit slices from the older pre-test hours, scored hours from the newest, purged apart."""
    spec = split_spec(features, profile)
    pre_test = data.samples[walk_forward_splits(data.sample_times, spec)[0].train]
    cut = len(pre_test) - max(1, int(len(pre_test) * score_share))
    fit_rows, score_rows = pre_test[:cut], pre_test[cut:]
    times = data.times.asi8
    score_rows = score_rows[times[score_rows] > times[fit_rows[-1]] + spec.purge * HOUR_NS]
    if len(score_rows) == 0:
        raise ValueError(f"{data.market}: no pre-test hours left to score trials on")
    lab = features.labels
    threshold = fold_threshold(
        lab.mode, lab.threshold, lab.hold_share, data.forward_returns[fit_rows]
    )
    slices = purged_slices(times, fit_rows, profile.slices, spec.purge)
    return FoldPlan("tune", slices, score_rows, fit_rows), threshold


def tuning_worker(config: dict[str, Any]) -> None:
    """Per-epoch val_loss to Tune, then the hybrid's score on the newest pre-test hours."""
    features = FeaturesConfig.model_validate(config["features"])
    profile = apply_trial(TrainProfile.model_validate(config["profile"]), config["trial"])
    market, label = config["market"], config["label"]
    data = load_market(ParquetDirSource(config["data_dir"]), market, features, profile)
    plan, threshold = tuning_plan(data, features, profile, config["score_share"])

    def report(metrics: dict[str, float]) -> None:
        print(f"[tune {market} {label}] epoch {metrics['epoch']:.0f} "
              f"val_loss {metrics['val_loss']:.4f}", flush=True)  # fmt: skip
        ray.train.report({**metrics, "market": market})

    outcome = fit_plan(profile, data, plan, threshold, ray_train_hooks(report))
    scores = classification_metrics(outcome.test_labels, outcome.test_proba)
    final = {
        "epoch": float(len(outcome.encoder.history) + 1),
        "val_loss": min(h["val_loss"] for h in outcome.encoder.history),
        SCORE: scores["log_loss"],
        "score_balanced_accuracy": scores["balanced_accuracy"],
        "scored_hours": float(scores["n"]),
    }
    print(f"[tune {market} {label}] scored {SCORE} {final[SCORE]:.4f} "
          f"balanced_acc {final['score_balanced_accuracy']:.3f}", flush=True)  # fmt: skip
    ray.train.report({**final, "market": market})


def make_trial(base: dict[str, Any], cpus: float, gpu: float, storage_path: str | None) -> Any:
    def trial(trial_config: dict[str, Any]) -> None:
        label = tune.get_context().get_trial_name()
        use_gpu = gpu > 0
        trainer = TorchTrainer(
            tuning_worker,
            train_loop_config={**base, "trial": trial_config, "label": label},
            scaling_config=ScalingConfig(
                num_workers=1,  # several DDP workers on one card fail in NCCL
                use_gpu=use_gpu,
                resources_per_worker={"CPU": cpus, **({"GPU": gpu} if use_gpu else {})},
            ),
            run_config=RunConfig(storage_path=storage_path, callbacks=[TuneReportCallback()]),
        )
        trainer.fit()

    return trial


def param_space(tune_cfg: TuneConfig, search_space: dict[str, list[Any]]) -> dict[str, Any]:
    pick = tune.grid_search if tune_cfg.sampler == "grid" else tune.choice
    return {key: pick(values) for key, values in search_space.items()}


def tune_market(
    market: str,
    data_dir: str,
    features: FeaturesConfig,
    profile: TrainProfile,
    tune_cfg: TuneConfig,
    storage_path: str | None,
    *,
    use_gpu: bool = False,
) -> tune.ResultGrid:
    """One Tune experiment for one market over `tune_cfg.search_space`, ASHA on val_loss."""
    base = {
        "market": market,
        "data_dir": data_dir,
        "features": features.model_dump(),
        "profile": profile.model_dump(),
        "score_share": tune_cfg.score_share,
    }
    gpu = tune_cfg.gpu_fraction if use_gpu else 0.0
    trial = make_trial(base, tune_cfg.cpus_per_trial, gpu, storage_path)
    # The trial function only drives its TorchTrainer; the worker holds the CPU (and GPU) share.
    trainable = tune.with_resources(trial, {"CPU": 0.01})
    scheduler = ASHAScheduler(
        max_t=profile.optim.epochs + 1,  # + the final scored report
        grace_period=tune_cfg.grace_period,
        reduction_factor=2,
    )
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(tune_cfg, tune_cfg.search_space),
        tune_config=tune.TuneConfig(
            metric="val_loss",
            mode="min",
            scheduler=scheduler,
            num_samples=tune_cfg.num_samples,
            max_concurrent_trials=tune_cfg.max_concurrent,
        ),
        run_config=tune.RunConfig(name=run_name("tune", market), storage_path=storage_path),
    )
    return tuner.fit()


@dataclass(frozen=True)
class TuneOutcome:
    """One market's experiment as the driver needs it: the winner and what the search did."""

    market: str
    best: dict[str, Any]  # the winning trial's values, {} when no trial finished
    best_score: float
    trials: int
    stopped_early: int
    failed: int
    started: float
    ended: float


def summarize(market: str, grid: tune.ResultGrid, started: float) -> TuneOutcome:
    """Pick the trial with the lowest scored log loss; trials ASHA stopped have no score."""
    scored = [r for r in grid if not r.error and r.metrics and SCORE in r.metrics]
    scored = [r for r in scored if math.isfinite(r.metrics[SCORE])]
    best = min(scored, key=lambda r: r.metrics[SCORE], default=None)
    return TuneOutcome(
        market=market,
        best=dict(best.config) if best else {},
        best_score=float(best.metrics[SCORE]) if best else float("nan"),
        trials=len(grid),
        stopped_early=sum(1 for r in grid if not r.error and (r.metrics or {}).get(SCORE) is None),
        failed=sum(1 for r in grid if r.error),
        started=started,
        ended=time.time(),
    )


@ray.remote(num_cpus=0)
def _drive_tuning(market: str, kwargs: dict[str, Any]) -> TuneOutcome:
    started = time.time()
    return summarize(market, tune_market(market, **kwargs), started)


def tune_markets_on_ray(
    markets: list[str],
    data_dir: str,
    features: FeaturesConfig,
    profile: TrainProfile,
    tune_cfg: TuneConfig,
    storage_path: str | None,
    *,
    use_gpu: bool = False,
) -> dict[str, TuneOutcome]:
    """Every market's experiment at once, each from its own Ray task; they share cores or a GPU."""
    kwargs = {
        "data_dir": data_dir,
        "features": features,
        "profile": profile,
        "tune_cfg": tune_cfg,
        "storage_path": storage_path,
        "use_gpu": use_gpu,
    }
    refs = [_drive_tuning.remote(market, kwargs) for market in markets]
    return {outcome.market: outcome for outcome in ray.get(refs)}


def tuned_profiles(
    profile: TrainProfile, outcomes: dict[str, TuneOutcome]
) -> dict[str, TrainProfile]:
    """Each market's profile with its winner applied; a market whose search found none keeps it."""
    return {m: apply_trial(profile, o.best) if o.best else profile for m, o in outcomes.items()}


def format_outcomes(outcomes: dict[str, TuneOutcome]) -> str:
    lines = []
    for o in outcomes.values():
        best = ", ".join(f"{k}={v}" for k, v in sorted(o.best.items())) or "none (profile kept)"
        lines.append(
            f"{o.market}: {o.trials} trials ({o.stopped_early} stopped by ASHA, {o.failed} failed) "
            f"in {o.ended - o.started:.0f} s; best {SCORE} {o.best_score:.4f}: {best}"
        )
    return "\n".join(lines)
