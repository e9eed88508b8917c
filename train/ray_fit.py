"""Run the one training function (`train.pipeline.fit_market`) inside Ray Train's TorchTrainer.

Nothing here trains: the worker loop builds `TrainHooks` from Ray Train's own helpers (device,
`prepare_model` for DDP, `prepare_data_loader` for the distributed sampler, `ray.train.report` for
per-epoch metrics) and calls the same function `python -m train fit --local` calls. Rank 0 writes
the bundle and its out-of-sample rows to `output_dir`, from where the driver registers them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch as ray_torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from features.config import FeaturesConfig
from features.sources import ParquetDirSource
from train.config import TrainProfile
from train.encoder_loop import TrainHooks
from train.pipeline import fit_market, load_market


def ray_train_hooks(report: Callable[[dict[str, float]], None]) -> TrainHooks:
    """The encoder loop's seam filled from Ray Train: its device, DDP wrapping and sampler."""
    return TrainHooks(
        device=ray_torch.get_device(),
        prepare_model=ray_torch.prepare_model,
        prepare_loader=ray_torch.prepare_data_loader,
        report=report,
    )


def worker_loop(config: dict[str, Any]) -> None:
    """Runs on every Train worker; identical maths to the in-process path."""
    features = FeaturesConfig.model_validate(config["features"])
    profile = TrainProfile.model_validate(config["profile"])
    market = config["market"]
    context = ray.train.get_context()
    fold = {"name": "start"}

    def report(metrics: dict[str, float]) -> None:
        ray.train.report({**metrics, "market": market, "fold": fold["name"]})

    def progress(line: str) -> None:
        fold["name"] = line.split(":")[0].removeprefix(f"{market} ")
        print(f"[rank {context.get_world_rank()}] {line}", flush=True)

    hooks = ray_train_hooks(report)
    data = load_market(ParquetDirSource(config["data_dir"]), market, features, profile)
    fit = fit_market(data, features, profile, hooks, progress, config["profile_name"])
    if context.get_world_rank() == 0:
        bundle = fit.model.save(Path(config["output_dir"]))
        fit.oos.to_parquet(bundle / "oos.parquet")


def fit_with_torch_trainer(
    market: str,
    data_dir: str,
    features: FeaturesConfig,
    profile: TrainProfile,
    profile_name: str,
    output_dir: Path,
    *,
    use_gpu: bool = False,
    num_workers: int = 1,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 1.0,
    storage_path: str | None = None,
) -> Path:
    """Fit one market through TorchTrainer; returns the local bundle directory rank 0 wrote."""
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "market": market,
            "data_dir": data_dir,
            "features": features.model_dump(),
            "profile": profile.model_dump(),
            "profile_name": profile_name,
            "output_dir": str(output_dir),
        },
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(name=f"fit-{market}", storage_path=storage_path),
    )
    trainer.fit()
    if not (output_dir / "metadata.json").is_file():
        raise RuntimeError(
            f"TorchTrainer finished but wrote no bundle for {market} to {output_dir}"
        )
    return output_dir


@dataclass(frozen=True)
class MarketRun:
    """One market's TorchTrainer run as its driving task saw it (times: epoch seconds)."""

    market: str
    bundle_dir: str
    started: float
    ended: float


@ray.remote(num_cpus=0)
def _drive_market(market: str, kwargs: dict[str, Any]) -> MarketRun:
    started = time.time()
    bundle = fit_with_torch_trainer(market, **kwargs)
    return MarketRun(market, str(bundle), started, time.time())


def detect_gpu() -> bool:
    """True when the running cluster already shows GPUs (an autoscaling one may show none yet)."""
    return ray.cluster_resources().get("GPU", 0) > 0


def fit_markets_on_ray(
    markets: list[str],
    data_dir: str,
    features: FeaturesConfig,
    profile: TrainProfile,
    profile_name: str,
    output_root: Path,
    *,
    use_gpu: bool = False,
    gpu_fraction: float = 0.25,
    cpus_per_worker: float = 0.25,
    num_workers: int = 1,
    storage_path: str | None = None,
) -> list[MarketRun]:
    """Fit every market concurrently, each driven by its own Ray task and TorchTrainer.

    On GPUs each market gets one worker at `gpu_fraction` of a card: several DDP workers on one
    card fail in NCCL ("Duplicate GPU detected"), so num_workers is forced to 1 there.
    """
    refs = []
    for market in markets:
        kwargs = {
            "data_dir": data_dir,
            "features": features,
            "profile": profile,
            "profile_name": profile_name,
            "output_dir": output_root / market,
            "use_gpu": use_gpu,
            "num_workers": 1 if use_gpu else num_workers,
            "cpus_per_worker": cpus_per_worker,
            "gpus_per_worker": gpu_fraction,
            "storage_path": storage_path,
        }
        refs.append(_drive_market.remote(market, kwargs))
    return ray.get(refs)
