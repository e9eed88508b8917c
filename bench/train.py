"""What does Ray cost the training path, against the same work done without it, in the same run?

    .venv/bin/python -m bench.train [--data-dir DIR] [--profile smoke] [--epochs 4]
                                    [--lstm-epochs 5] [--cpus-per-worker 0.25] [--verbose]

(a) The four markets fitted concurrently by `fit_markets_on_ray` (one one-worker TorchTrainer per
    market, each driven from a thread, as `python -m train fit` does) against the same four
    fitted one after another, twice over: through `fit_with_torch_trainer` (the same trainer, one
    at a time, each given every CPU of the head, so torch and LightGBM use all the cores as they
    do in-process) and through the plain in-process `fit_market` (what `fit --local` does).
    Ratios are sequential / parallel: above 1 the parallel run is faster. Patience is set to the
    epoch count, so every run trains exactly the same number of epochs whatever its shuffling.
    Last, one TorchTrainer whose loop does nothing: Ray Train's fixed cost per run on this machine.
    (`--skip-sequential-ray` leaves the sequential TorchTrainer baseline out, for big profiles.)
(b) LSTM training throughput (sequences/s, training steps only) of the one loop `train_encoder`,
    2x128 encoder as in the quick profile, on one market's fold-0 slices built once in the driver:
    in this process, then inside a one-worker TorchTrainer with torch's thread count made equal to
    this process's, then inside one with Ray's default threads (what `fit` gets); in this process
    at both thread counts before and after the Ray runs (so drift hits both alike), each Ray run
    compared with the in-process runs at the thread count its worker used.
(c) With GPUs (Ray or torch sees one), (a)'s parallel run again with use_gpu and 0.25 GPU a market.

Every figure is measured in this run; nothing is compared with numbers from another machine. On a
machine shared with other work the figures are noisy: the load average is printed before and after.
Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import DATA_DIR, MARKETS, ROOT

if TYPE_CHECKING:
    from cluster.local_ray import LocalHead


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--profile", default="smoke", help="profile of configs/train.yaml for (a)")
    parser.add_argument("--epochs", type=int, default=4, help="(a): epochs (= patience) per run")
    parser.add_argument("--cpus-per-worker", type=float, default=0.25, help="(a): CPU per worker")
    parser.add_argument("--lstm-market", default="KRW-BTC", help="(b): the market whose slices")
    parser.add_argument("--lstm-epochs", type=int, default=5, help="(b): epochs per measurement")
    parser.add_argument("--num-cpus", type=int, default=None, help="head's CPUs (default: cores)")
    parser.add_argument("--skip-a", action="store_true", help="only (b)")
    parser.add_argument("--skip-b", action="store_true", help="only (a) (and (c))")
    parser.add_argument(
        "--skip-sequential-ray",
        action="store_true",
        help="(a): leave out the sequential TorchTrainer baseline (long with big profiles)",
    )
    parser.add_argument("--verbose", action="store_true", help="show Ray's and the workers' logs")
    return parser.parse_args(argv)


def start_bench_head(num_cpus: int, log_dir: Path) -> LocalHead:
    """A head of its own, started as `python -m cluster up` and the tests start one (`ray start`,
    dashboard, token auth), so the state API works in its processes. Train V2's placement-group
    cleaner asks that API whether the controller is alive, and on a `ray.init()` cluster that it
    cannot find (here: a stale /tmp/ray/ray_current_cluster) every run's shutdown waited 12 s.
    Must happen before Ray is imported in this process (its token goes into the environment)."""
    from cluster.local_ray import auth_env, new_token, start_head

    token = new_token()
    os.environ.update(auth_env(token))
    return start_head(num_cpus, token=token, log_dir=log_dir)


def cores() -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{os.cpu_count()} cores ({usable} usable by this process)"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = run()
    return time.perf_counter() - started, value


def ratio_line(name: str, seconds: float, baseline: str, base_seconds: float) -> str:
    return (
        f"  {name:<44} {seconds:7.1f} s   vs {baseline:<34} {base_seconds:7.1f} s   "
        f"ratio {base_seconds / seconds:5.2f}x"
    )


# ---- (a) four markets, parallel against sequential -------------------------------------------


def _profile(args: argparse.Namespace):
    from train.config import load_train_config

    base = f"profiles.{args.profile}.optim"
    sets = [f"{base}.epochs={args.epochs}", f"{base}.patience={args.epochs}"]
    return load_train_config(overrides=sets).profile(args.profile)


def bench_markets(args: argparse.Namespace, storage: str, use_gpu: bool) -> None:
    import torch

    from features.config import load_features_config
    from features.sources import ParquetDirSource
    from train.pipeline import fit_market, load_market
    from train.ray_fit import fit_markets_on_ray, fit_with_torch_trainer

    features, profile = load_features_config(), _profile(args)
    data_dir = str(args.data_dir)
    common = {"features": features, "profile_name": args.profile, "storage_path": storage}
    print(
        f"\n(a) {len(MARKETS)} markets, profile {args.profile} (last {profile.data.last_hours} h, "
        f"{profile.splits.n_folds} folds + leaky={profile.leaky.enabled}, encoder "
        f"{profile.encoder.num_layers}x{profile.encoder.hidden_size}, {args.epochs} epochs a run), "
        f"{args.cpus_per_worker} CPU per TorchTrainer worker"
    )
    worker_threads = os.environ.get("OMP_NUM_THREADS") or max(int(args.cpus_per_worker), 1)
    print(
        f"  torch threads: {worker_threads} in each TorchTrainer worker (Ray's OMP_NUM_THREADS "
        f"default for its CPU share), {torch.get_num_threads()} in this process"
    )
    parallel, runs = timed(
        lambda: fit_markets_on_ray(
            {m: profile for m in MARKETS},
            data_dir,
            cpus_per_worker=args.cpus_per_worker,
            **common,
        )
    )
    spans = ", ".join(f"{r.market} {r.ended - r.started:.1f} s" for r in runs)
    print(f"  parallel, fit_markets_on_ray: {parallel:.1f} s wall (per market: {spans})")

    whole = float(args.num_cpus or os.cpu_count() or 1)  # one trainer at a time: all the head

    def one_by_one_ray() -> None:
        for market in MARKETS:
            fit_with_torch_trainer(
                market, data_dir, profile=profile, cpus_per_worker=whole, **common
            )

    def one_by_one_local() -> None:
        source = ParquetDirSource(data_dir)
        for market in MARKETS:
            data = load_market(source, market, features, profile)
            fit_market(data, features, profile, None, lambda _: None, args.profile)

    seq_ray = None if args.skip_sequential_ray else timed(one_by_one_ray)[0]
    seq_local, _ = timed(one_by_one_local)
    empty = empty_trainer(args.cpus_per_worker, storage)
    print("  sequential / parallel (above 1: parallel is faster; goal >= 0.95x):")
    name = "parallel (fit_markets_on_ray)"
    if seq_ray is not None:
        print(ratio_line(name, parallel, f"sequential TorchTrainer, {whole:g} CPU", seq_ray))
    print(ratio_line(name, parallel, "sequential in-process fit_market", seq_local))
    extra = (
        ""
        if seq_ray is None
        else f"; sequential TorchTrainer - sequential in-process = {seq_ray - seq_local:.1f} s, "
        f"{(seq_ray - seq_local) / len(MARKETS):.1f} s a market"
    )
    print(f"  fixed cost: one TorchTrainer whose loop does nothing takes {empty:.1f} s here{extra}")
    if use_gpu:
        gpu, _ = timed(
            lambda: fit_markets_on_ray(
                {m: profile for m in MARKETS},
                data_dir,
                use_gpu=True,
                gpu_fraction=0.25,
                cpus_per_worker=args.cpus_per_worker,
                **common,
            )
        )
        print(
            ratio_line(
                "parallel on GPU, 0.25 GPU a market", gpu, "sequential CPU, in-process", seq_local
            )
        )
    else:
        print(
            "  (c) no GPU found (neither Ray nor torch sees one): the use_gpu=True run is skipped"
        )


def empty_loop(config: dict[str, Any]) -> None:
    """A TorchTrainer loop that does nothing: what remains is Ray Train's own start and stop."""


def empty_trainer(cpus: float, storage: str) -> float:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from train.ray_fit import run_name

    trainer = TorchTrainer(
        empty_loop,
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(name=run_name("bench-empty", "loop"), storage_path=storage),
    )
    return timed(trainer.fit)[0]


# ---- (b) LSTM throughput, in-process against a TorchTrainer worker ---------------------------


def lstm_inputs(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """Fold 0's encoder and early-stop slices of one market, quick profile, built once here."""
    from features.config import load_features_config
    from features.labels import fold_threshold
    from features.sources import ParquetDirSource
    from features.splits import walk_forward_splits
    from features.transform import SequenceTransform
    from train.config import load_train_config
    from train.fit import walk_forward_plan
    from train.pipeline import load_market, split_spec

    features = load_features_config()
    profile = load_train_config().profile("quick")
    data = load_market(ParquetDirSource(args.data_dir), args.lstm_market, features, profile)
    spec = split_spec(features, profile)
    fold = walk_forward_splits(data.sample_times, spec)[0]
    plan = walk_forward_plan(data, fold, profile.slices, spec.purge)
    lab = features.labels
    returns = data.forward_returns[plan.transform_fit]
    threshold = fold_threshold(lab.mode, lab.threshold, lab.hold_share, returns)
    transform = SequenceTransform.fit(data.features, plan.transform_fit)

    def xy(rows):
        return transform.apply(data.features, rows), data.labels(threshold, rows)

    optim = profile.optim.model_copy(
        update={"epochs": args.lstm_epochs, "patience": args.lstm_epochs}
    )
    return (
        xy(plan.slices["encoder"]),
        xy(plan.slices["early_stop"]),
        {
            "encoder": profile.encoder.model_dump(),
            "optim": optim.model_dump(),
        },
    )


def throughput_worker(config: dict[str, Any]) -> None:
    """Runs in the TorchTrainer worker: the same train_encoder, Ray Train's hooks."""
    import ray
    import ray.train
    import torch

    from train.config import EncoderConfig, OptimConfig, TrainProfile
    from train.encoder_loop import train_encoder
    from train.fit import encoder_spec
    from train.ray_fit import ray_train_hooks

    default_threads = torch.get_num_threads()
    if config["threads"]:
        torch.set_num_threads(config["threads"])
    fit_xy, stop_xy = ray.get(config["data"][0]), ray.get(config["data"][1])
    profile = TrainProfile(encoder=EncoderConfig(**config["encoder"]))
    result = train_encoder(
        encoder_spec(profile),
        OptimConfig(**config["optim"]),
        fit_xy,
        stop_xy,
        ray_train_hooks(lambda metrics: ray.train.report(metrics)),
    )
    final = {
        "sequences_per_second": result.sequences_per_second,
        "threads_default": float(default_threads),
        "threads_used": float(torch.get_num_threads()),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "epochs": float(len(result.history)),
    }
    # Train V2 hands back `result.metrics` only with a checkpoint: report the last metrics with one.
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "throughput.json").write_text(json.dumps(final))
        ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def in_process(fit_xy, stop_xy, cfg: dict[str, Any], threads: int) -> float:
    import torch

    from train.config import EncoderConfig, OptimConfig, TrainProfile
    from train.encoder_loop import train_encoder
    from train.fit import encoder_spec

    profile = TrainProfile(encoder=EncoderConfig(**cfg["encoder"]))
    spec, optim = encoder_spec(profile), OptimConfig(**cfg["optim"])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return train_encoder(spec, optim, fit_xy, stop_xy).sequences_per_second
    finally:
        torch.set_num_threads(before)


def in_trainer(refs, cfg: dict[str, Any], threads: int | None, cpus: float, storage: str):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from train.ray_fit import run_name

    trainer = TorchTrainer(
        throughput_worker,
        train_loop_config={**cfg, "data": refs, "threads": threads},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(name=run_name("bench-lstm", "throughput"), storage_path=storage),
    )
    wall, result = timed(trainer.fit)
    if result.metrics is None:
        raise RuntimeError("the TorchTrainer run reported no final metrics")
    return wall, result.metrics


def bench_lstm(args: argparse.Namespace, storage: str) -> None:
    """Each TorchTrainer run against in-process runs at the same torch thread count, the in-process
    runs bracketing the Ray ones (order: local T, local 1, Ray T, Ray default, local 1, local T)."""
    import ray
    import torch

    fit_xy, stop_xy, cfg = lstm_inputs(args)
    enc = cfg["encoder"]
    print(
        f"\n(b) LSTM {enc['num_layers']}x{enc['hidden_size']} train_encoder, {args.lstm_market} "
        f"fold 0 (quick profile): {len(fit_xy[1])} training sequences x {args.lstm_epochs} epochs, "
        f"batch {cfg['optim']['batch_size']}; sequences/s over the training steps only"
    )
    here = torch.get_num_threads()
    refs = [ray.put(fit_xy), ray.put(stop_xy)]
    counts = sorted({here, 1}, reverse=True)
    local: dict[int, list[float]] = {n: [] for n in counts}
    for threads in counts:
        local[threads].append(in_process(fit_xy, stop_xy, cfg, threads))
    ray_runs = [
        (
            f"TorchTrainer, 1 CPU, torch threads set to {here}",
            *in_trainer(refs, cfg, here, 1.0, storage),
        ),
        (
            f"TorchTrainer, {args.cpus_per_worker} CPU, Ray's default threads",
            *in_trainer(refs, cfg, None, args.cpus_per_worker, storage),
        ),
    ]
    for threads in reversed(counts):
        local[threads].append(in_process(fit_xy, stop_xy, cfg, threads))
    for threads, (a, b) in local.items():
        print(f"  in-process, torch threads {threads}: {a:,.0f} then {b:,.0f} seq/s "
              f"(mean {(a + b) / 2:,.0f})")  # fmt: skip
    overheads = []
    for name, wall, metrics in ray_runs:
        used = int(metrics["threads_used"])
        base = sum(local[used]) / 2 if used in local else float("nan")
        speed = metrics["sequences_per_second"]
        overheads.append(1 - speed / base)
        print(
            f"  {name:<46} {speed:8,.0f} seq/s   vs in-process at {used} thread(s) "
            f"{base:8,.0f}   ratio {speed / base:5.2f}x   "
            f"Ray overhead {100 * overheads[-1]:+5.1f} %"
        )
        print(
            f"      worker: torch threads {metrics['threads_default']:.0f} at start, {used} used, "
            f"OMP_NUM_THREADS={metrics['omp_num_threads']}; trainer.fit() {wall:.1f} s wall "
            f"(start-up included)"
        )
    print(
        f"  note: Ray sets OMP_NUM_THREADS in a worker to its whole CPUs, at least 1, so a "
        f"TorchTrainer worker with {args.cpus_per_worker} CPU (what `fit` uses) trains on 1 torch "
        f"thread where this process uses {here}: each Ray line is compared with in-process runs at "
        f"the thread count the worker actually used."
    )
    verdict = "met" if max(overheads) <= 0.15 else "NOT met"
    print(f"  goal Ray overhead <= 15 % at equal threads: {verdict}")


def has_gpu() -> bool:
    import torch

    from train.ray_fit import detect_gpu

    return detect_gpu() or torch.cuda.is_available()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.data_dir = args.data_dir.resolve()
    if not (args.data_dir / f"{args.lstm_market}_minute60.parquet").exists():
        raise SystemExit(f"no candles in {args.data_dir}")
    os.chdir(ROOT)  # Ray hands the driver's working directory to its workers' sys.path
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        head = start_bench_head(args.num_cpus or os.cpu_count() or 1, Path(tmp) / "head")
        try:
            import ray
            import torch

            print(
                f"machine: {platform.node()} {platform.machine()}, {cores()}, Python "
                f"{platform.python_version()}, torch {torch.__version__} "
                f"({torch.get_num_threads()} threads here), ray {ray.__version__}; "
                f"load average {load_average()} (shared machine: noisy)"
            )
            ray.init(
                address=head.gcs_address,
                log_to_driver=args.verbose,
                logging_level="INFO" if args.verbose else "WARNING",
            )
            storage = str(Path(tmp) / "storage")
            if not args.skip_a:
                bench_markets(args, storage, has_gpu())
            if not args.skip_b:
                bench_lstm(args, storage)
        finally:
            ray.shutdown()
            head.stop()
    print(f"\ntotal {time.perf_counter() - started:.0f} s wall; load average {load_average()}")


if __name__ == "__main__":
    main()
