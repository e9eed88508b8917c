"""Ray Tune over one market's hyper-parameters, scored only on hours before its first test fold.

Each trial is a Tune function that runs a one-worker TorchTrainer (Train V2 style); the worker fits
the encoder on the tuning slices and reports the early-stop loss every epoch, which reaches Tune
through `TuneReportCallback`, so ASHA can stop a hopeless trial after an epoch. One experiment per
market: ASHA must never rank a BTC trial against a SOL trial.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import ray.train
from ray import tune
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from features.config import FeaturesConfig
from features.labels import fold_threshold
from features.sources import ParquetDirSource
from features.splits import walk_forward_splits
from features.transform import SequenceTransform
from train.config import TrainProfile
from train.encoder_loop import train_encoder
from train.fit import encoder_spec, purged_slices
from train.pipeline import load_market, split_spec
from train.ray_fit import ray_train_hooks


def apply_trial(profile: TrainProfile, trial: dict[str, Any]) -> TrainProfile:
    """The profile with one trial's values (keys like 'optim.lr', 'encoder.hidden_size')."""
    data = profile.model_dump()
    for key, value in trial.items():
        section, field = key.split(".")
        data[section][field] = value
    return TrainProfile.model_validate(data)


def tuning_worker(config: dict[str, Any]) -> None:
    """Fit the encoder on data before the first test fold; report val_loss per epoch."""
    features = FeaturesConfig.model_validate(config["features"])
    profile = apply_trial(TrainProfile.model_validate(config["profile"]), config["trial"])
    data = load_market(ParquetDirSource(config["data_dir"]), config["market"], features, profile)
    spec = split_spec(features, profile)
    first = walk_forward_splits(data.sample_times, spec)[0]
    pre_test = data.samples[first.train]  # every hour here lies before the first reported fold
    slices = purged_slices(data.times.asi8, pre_test, profile.slices, spec.purge)
    lab = features.labels
    threshold = fold_threshold(
        lab.mode, lab.threshold, lab.hold_share, data.forward_returns[pre_test]
    )
    transform = SequenceTransform.fit(data.features, pre_test)

    def xy(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return transform.apply(data.features, rows), data.labels(threshold, rows)

    hooks = ray_train_hooks(lambda m: ray.train.report({**m, "market": config["market"]}))
    train_encoder(
        encoder_spec(profile), profile.optim, xy(slices["encoder"]), xy(slices["early_stop"]), hooks
    )


def make_trial(base: dict[str, Any], cpus: float, storage_path: str) -> Any:
    def trial(trial_config: dict[str, Any]) -> None:
        trainer = TorchTrainer(
            tuning_worker,
            train_loop_config={**base, "trial": trial_config},
            scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": cpus}),
            run_config=RunConfig(storage_path=storage_path, callbacks=[TuneReportCallback()]),
        )
        trainer.fit()

    return trial


def tune_market(
    market: str,
    data_dir: str,
    features: FeaturesConfig,
    profile: TrainProfile,
    search_space: dict[str, list[Any]],
    storage_path: str,
    *,
    cpus: float = 0.25,
    grace_period: int = 1,
    max_concurrent: int = 4,
) -> tune.ResultGrid:
    """One Tune experiment for one market, grid over `search_space`, ASHA on val_loss."""
    base = {
        "market": market,
        "data_dir": data_dir,
        "features": features.model_dump(),
        "profile": profile.model_dump(),
    }
    trainable = tune.with_resources(make_trial(base, cpus, storage_path), {"CPU": cpus})
    scheduler = ASHAScheduler(
        max_t=profile.optim.epochs, grace_period=grace_period, reduction_factor=2
    )
    tuner = tune.Tuner(
        trainable,
        param_space={key: tune.grid_search(values) for key, values in search_space.items()},
        tune_config=tune.TuneConfig(
            metric="val_loss", mode="min", scheduler=scheduler, max_concurrent_trials=max_concurrent
        ),
        run_config=tune.RunConfig(name=f"tune-{market}", storage_path=str(Path(storage_path))),
    )
    return tuner.fit()
