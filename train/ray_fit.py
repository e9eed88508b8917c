"""Run the one training function (`train.pipeline.fit_market`) inside Ray Train's TorchTrainer.

Nothing here trains: the worker loop builds `TrainHooks` from Ray Train's own helpers (device,
`prepare_model` for DDP, `prepare_data_loader` for the distributed sampler, `ray.train.report` for
per-epoch metrics) and calls the same function `python -m train fit --local` calls. Rank 0 hands
the bundle back as a Ray Train checkpoint, so it lands in the run's storage (a local folder on one
node, an object-store URI on a cluster) and the driver fetches it from there, whichever node ran it.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch as ray_torch
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from features.config import FeaturesConfig
from features.sources import ParquetDirSource
from train.config import TrainProfile
from train.encoder_loop import TrainHooks
from train.gbm_pool import MarketPool, PoolMember, Shared
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
    rank = context.get_world_rank()
    run = {"number": 0}  # walk-forward folds, then the leaky fit: each restarts at epoch 1

    def report(metrics: dict[str, float]) -> None:
        run["number"] += metrics["epoch"] == 1
        if rank == 0:
            print(f"[fit {market}] run {run['number']} epoch {metrics['epoch']:.0f} "
                  f"val_loss {metrics['val_loss']:.4f}", flush=True)  # fmt: skip
        ray.train.report({**metrics, "market": market, "run": float(run["number"])})

    def progress(line: str) -> None:
        if rank == 0:
            print(f"[fit {market}] {line.removeprefix(market + ' ')}", flush=True)

    hooks = ray_train_hooks(report)
    started = time.perf_counter()
    data = load_market(ParquetDirSource(config["data_dir"]), market, features, profile)
    fit = fit_market(data, features, profile, hooks, progress, config["profile_name"], "hybrid")
    final = {"market": market, "run": -1.0, "fit_seconds": time.perf_counter() - started}
    if rank != 0:
        ray.train.report(final)
        return
    with tempfile.TemporaryDirectory() as tmp:
        bundle = fit.model.save(Path(tmp) / "bundle")
        fit.oos.to_parquet(bundle / "oos.parquet")
        ray.train.report(final, checkpoint=Checkpoint.from_directory(str(bundle)))


def run_name(kind: str, market: str) -> str:
    """Unique per run: Train V2 would restore a run of the same name from its storage."""
    return f"{kind}-{market}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


def fit_with_torch_trainer(
    market: str,
    data_dir: str,
    features: FeaturesConfig,
    profile: TrainProfile,
    profile_name: str,
    *,
    use_gpu: bool = False,
    num_workers: int = 1,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 1.0,
    storage_path: str | None = None,
) -> Checkpoint:
    """Fit one market through TorchTrainer; returns the checkpoint that holds its bundle."""
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "market": market,
            "data_dir": data_dir,
            "features": features.model_dump(),
            "profile": profile.model_dump(),
            "profile_name": profile_name,
        },
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=f"fit-{market}-{uuid.uuid4().hex[:8]}", storage_path=storage_path
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"TorchTrainer finished but handed back no bundle for {market}")
    return result.checkpoint


def fetch_bundle(checkpoint: Checkpoint, dest: Path) -> Path:
    """Copy a fit's bundle from the run storage (path or URI) to a local folder."""
    checkpoint.to_directory(str(dest))
    if not (dest / "metadata.json").is_file():
        raise RuntimeError(f"the checkpoint at {checkpoint.path} holds no bundle")
    return dest


@dataclass(frozen=True)
class MarketRun:
    """One market's TorchTrainer run as its driving thread saw it (times: epoch seconds)."""

    market: str
    checkpoint: Checkpoint
    started: float
    ended: float


def _drive_market(market: str, kwargs: dict[str, Any]) -> MarketRun:
    started = time.time()
    checkpoint = fit_with_torch_trainer(market, **kwargs)
    return MarketRun(market, checkpoint, started, time.time())


def detect_gpu() -> bool:
    """True when the running cluster already shows GPUs (an autoscaling one may show none yet)."""
    return ray.cluster_resources().get("GPU", 0) > 0


def fit_markets_on_ray(
    profiles: dict[str, TrainProfile],
    data_dir: str,
    features: FeaturesConfig,
    profile_name: str,
    *,
    use_gpu: bool = False,
    gpu_fraction: float = 0.25,
    cpus_per_worker: float = 0.25,
    num_workers: int = 1,
    storage_path: str | None = None,
) -> list[MarketRun]:
    """Fit every market (with its own profile) concurrently, each with its own TorchTrainer.

    Each trainer is driven from a thread of this process (Train runs `fit()` off the main thread
    under Tune too): a Ray task per market would start and import one more process per market,
    6-10 s more start-up for four markets on two cores (measured), for a driver that only waits.
    On GPUs each market gets one worker at `gpu_fraction` of a card: several DDP workers on one
    card fail in NCCL ("Duplicate GPU detected"), so num_workers is forced to 1 there.
    """
    common = {
        "data_dir": data_dir,
        "features": features,
        "profile_name": profile_name,
        "use_gpu": use_gpu,
        "num_workers": 1 if use_gpu else num_workers,
        "cpus_per_worker": cpus_per_worker,
        "gpus_per_worker": gpu_fraction,
        "storage_path": storage_path,
    }
    with ThreadPoolExecutor(max_workers=max(len(profiles), 1), thread_name_prefix="fit") as pool:
        futures = [
            pool.submit(_drive_market, market, {**common, "profile": profile})
            for market, profile in profiles.items()
        ]
        return [future.result() for future in futures]


def gbm_bundle_files(
    data_dir: str,
    market: str,
    features: FeaturesConfig,
    profile: TrainProfile,
    profile_name: str,
    own: PoolMember | None,
    *members: PoolMember,
) -> dict[str, bytes]:
    """A Ray task's body: fit one market's gbm family and hand back its bundle's files (a few
    MB of LightGBM text and JSON), so the driver receives them on any node without shared disk.
    `members`: the markets it pools (`profile.gbm.pool_weight`), each built once per run by
    `pool_member_task` and passed as an object ref that Ray resolves; `own`: this market's
    member when the run pools (its dataset, built once), else None and the task builds it."""
    data = own.data if own is not None else load_market(ParquetDirSource(data_dir), market,
                                                        features, profile)  # fmt: skip
    pool = MarketPool(members) if members else None

    def say(line: str) -> None:
        print(f"[fit {market}] {line.removeprefix(market + ' ')}", flush=True)

    fit = fit_market(data, features, profile, None, say, profile_name, family="gbm", pool=pool)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = fit.model.save(Path(tmp) / "bundle")
        fit.oos.to_parquet(bundle / "oos.parquet")
        files = [p for p in bundle.rglob("*") if p.is_file()]
        return {p.relative_to(bundle).as_posix(): p.read_bytes() for p in files}


def fit_gbm_on_ray(
    market: str,
    data_dir: str,
    features: FeaturesConfig,
    profile: TrainProfile,
    profile_name: str,
    own: ray.ObjectRef | None = None,
    members: list[ray.ObjectRef] | None = None,
    cpus: float = 0.25,
) -> ray.ObjectRef:
    """One plain Ray task (no TorchTrainer needed), returning at once. A quarter CPU, as the
    trainers: on a head whose Serve replicas hold part of the CPUs a whole-CPU task could wait
    for ever; Ray gives a fractional task one OpenMP thread. `own` and `members`: refs to this
    market's and the pooled markets' members (`shared_members`)."""
    task = ray.remote(gbm_bundle_files).options(num_cpus=cpus)
    return task.remote(data_dir, market, features, profile, profile_name, own, *(members or []))


def pool_member_task(
    data_dir: str, market: str, features: FeaturesConfig, profile: TrainProfile
) -> PoolMember:
    return PoolMember.of(load_market(ParquetDirSource(data_dir), market, features, profile))


def shared_members(
    data_dir: str, features: FeaturesConfig, profile: TrainProfile, cpus: float = 0.25
) -> Shared[ray.ObjectRef]:
    """The run's pool members as Ray objects: each market's dataset and tree inputs built by
    one task when a market first pools it, then read by every gbm task that pools it."""
    task = ray.remote(pool_member_task).options(num_cpus=cpus)
    return Shared(lambda market: task.remote(data_dir, market, features, profile))
