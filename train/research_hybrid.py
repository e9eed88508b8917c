"""The hybrid's research folds: one TorchTrainer per market runs that market's folds in turn.

A TorchTrainer costs about 7 s to start here, so a trainer per fold would spend more time starting
than fitting; one per market, each fold written to the cache the moment it is done (a run that dies
keeps what it finished). Each fold is `train.fit.fit_plan`, the function `train fit` runs: the
research measures the very procedure that ships.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from features.config import FeaturesConfig
from features.context import folder_context
from features.dataset import MarketDataset, configured_dataset
from features.labels import fold_threshold
from features.sources import ParquetDirSource
from train.config import TrainProfile
from train.encoder_loop import TrainHooks
from train.fit import SLICE_NAMES, FoldPlan, fit_plan, purged_slices
from train.research_cache import PROBA, THRESHOLD, FoldKey, PredictionCache
from train.research_jobs import FoldJob, JobSettings, leaky_rows, walk_forward_rows


def hybrid_plan(data: MarketDataset, job: FoldJob, settings: JobSettings) -> FoldPlan:
    if job.kind == "hybrid~leaky":
        train, test = leaky_rows(data, job, settings)
        shares = [getattr(settings.profile.slices, n) for n in SLICE_NAMES]
        bounds = np.round(np.cumsum([0.0, *shares]) * len(train)).astype(int)
        parts = np.split(train, bounds[1:-1])
        slices = {n: np.sort(p) for n, p in zip(SLICE_NAMES, parts, strict=True)}
        return FoldPlan(f"leaky part {job.key.fold}", slices, test, data.samples)
    train, test = walk_forward_rows(data, job, settings.purge_hours)
    slices = purged_slices(data.times.asi8, train, settings.profile.slices, settings.purge_hours)
    return FoldPlan(f"fold {job.key.fold}", slices, test, train)


def hybrid_job(
    data: MarketDataset, job: FoldJob, settings: JobSettings, hooks: TrainHooks | None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    started = time.time()
    plan = hybrid_plan(data, job, settings)
    lab = settings.features.labels
    threshold = fold_threshold(
        lab.mode, lab.threshold, lab.hold_share, data.forward_returns[plan.transform_fit]
    )
    outcome = fit_plan(settings.profile, data, plan, threshold, hooks)
    frame = pd.DataFrame(outcome.test_proba, index=data.times[plan.test], columns=PROBA)
    frame.index.name = "time"
    frame.insert(0, "fold", job.key.fold)
    frame[THRESHOLD] = threshold
    ended = time.time()
    info = {
        "started": started,
        "ended": ended,
        "seconds": ended - started,
        "kind": job.kind,
        "best_epoch": outcome.encoder.best_epoch,
    }
    return frame, info


def job_to_dict(job: FoldJob) -> dict[str, Any]:
    key = {**asdict(job.key), "start": str(job.key.start), "end": str(job.key.end)}
    return {"key": key, "kind": job.kind, "train_hours": job.train_hours}


def job_from_dict(raw: dict[str, Any]) -> FoldJob:
    key = dict(raw["key"])
    key.update(start=pd.Timestamp(key["start"]), end=pd.Timestamp(key["end"]))
    return FoldJob(FoldKey(**key), raw["kind"], raw["train_hours"])


def run_hybrid_jobs(
    config: dict[str, Any], hooks: TrainHooks | None = None, say=print
) -> list[dict[str, Any]]:
    """Every hybrid job of one market, in turn, each written to the cache when done."""
    settings = JobSettings(
        TrainProfile.model_validate(config["profile"]),
        FeaturesConfig.model_validate(config["features"]),
        config["purge_hours"],
        config["leaky_parts"],
    )
    market, cache = config["market"], PredictionCache(config["cache_root"])
    candles = ParquetDirSource(config["data_dir"]).history(market)
    feature_set = settings.features.feature_set()
    context = folder_context(feature_set, market, config["data_dir"])
    data = configured_dataset(candles, market, settings.features, context)
    done = []
    for raw in config["jobs"]:
        job = job_from_dict(raw)
        frame, info = hybrid_job(data, job, settings, hooks)
        cache.write(job.key, frame, info)
        say(
            f"[research {market} {job.kind}] fold {job.key.fold} {job.key.start:%Y-%m-%d}.."
            f"{job.key.end:%Y-%m-%d}: {len(frame)} hours, best epoch {info['best_epoch']}, "
            f"{info['seconds']:.1f} s"
        )
        done.append(info)
    return done


def research_worker(config: dict[str, Any]) -> None:
    """The TorchTrainer loop: Ray Train's device and DDP wrapping, the same fold function."""
    import ray.train

    from train.ray_fit import ray_train_hooks

    rank = ray.train.get_context().get_world_rank()
    hooks = ray_train_hooks(lambda metrics: None)
    say = print if rank == 0 else (lambda line: None)
    done = run_hybrid_jobs(config, hooks, lambda line: say(line, flush=True))
    ray.train.report({"folds": float(len(done))})


def run_hybrid_on_ray(
    config: dict[str, Any], cpus_per_worker: float, use_gpu: bool, storage_path: str | None
) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": cpus_per_worker, **({"GPU": 0.25} if use_gpu else {})}
    TorchTrainer(
        research_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=1, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=f"research-{config['market']}-{uuid.uuid4().hex[:8]}", storage_path=storage_path
        ),
    ).fit()
