"""Benchmark `python -m train research`: gbm family, four markets, every fold, from a cold cache.

(a) On a private local Ray (2 CPUs): every fold a Ray task (`train.research_run.execute_on_ray`),
    then the report (after-fee replays as Ray tasks). Goal here: under 2 minutes.
(b) Baseline, measured in the same run: the very same fold jobs one after another in this process
    (`--local`: LightGBM gets every core through its own threads), into a second cold cache.
(c) With --one-thread-too: (b) again with LightGBM on one thread (OMP_NUM_THREADS=1), the setting
    every Ray worker runs with; on a loaded machine OpenMP threads that spin while they wait can
    make (b) slower than it would be quiet.
Prints wall times, the ratios (b)/(a) and (c)/(a) of the fold stage (goal >= 0.95 on 2 cores)
and the largest difference between the runs' probabilities. Not a test. The load average is
printed beside every figure: this machine is shared.

    .venv/bin/python -m bench.research --data-dir ../shared/data/ohlcv [--markets ...] [--no-leaky]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from features.config import load_features_config
from train.config import load_train_config
from train.research_cache import PredictionCache
from train.research_report import build_report
from train.research_run import ResearchRequest, run_research


def load() -> str:
    return open("/proc/loadavg").read().split(" ", 3)[:3].__str__()


def request(args: argparse.Namespace, cache: Path) -> ResearchRequest:
    features = load_features_config()
    cfg = load_train_config()
    return ResearchRequest(
        markets=args.markets.split(","),
        families=["gbm"],
        data_dir=args.data_dir,
        profile=cfg.profile(args.profile),
        profile_name=args.profile,
        features=features,
        research=cfg.research,
        cache=PredictionCache(cache),
        start=pd.Timestamp(cfg.research.start) if cfg.research.start else None,
        leaky=not args.no_leaky,
    )


def timed(label: str, fn):
    print(f"{label} ... (load {load()})", flush=True)
    started = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - started
    print(f"  {seconds:.1f} s (load {load()})", flush=True)
    return value, seconds


def largest_difference(a: dict, b: dict) -> float:
    """Largest probability difference between the two runs (LightGBM sums histograms in another
    order on 1 thread than on 2, so the last digits may differ)."""
    worst = 0.0
    for market in a:
        for name, frame in a[market].predictions.items():
            other = b[market].predictions[name].reindex(frame.index)
            cols = ["p_sell", "p_hold", "p_buy"]
            worst = max(worst, float((frame[cols] - other[cols]).abs().to_numpy().max()))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--markets", default="KRW-BTC,KRW-ETH,KRW-XRP,KRW-SOL")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--no-leaky", action="store_true")
    parser.add_argument("--skip-local", action="store_true", help="only (a)")
    parser.add_argument("--one-thread-too", action="store_true", help="also (c)")
    args = parser.parse_args()
    args.data_dir = os.path.abspath(args.data_dir)

    import ray

    from trading.research_trades import trade, trade_on_ray

    quiet = lambda line: None  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        req = request(args, Path(tmp) / "ray")
        (ray_markets, _), ray_folds = timed(
            "(a) folds on Ray", lambda: run_research(req, quiet, local=False)
        )
        folds = sum(len(m.records) for m in ray_markets.values())
        _, ray_report = timed(
            "(a) report, replays as Ray tasks",
            lambda: build_report(req, ray_markets, lambda r: trade_on_ray(r, "fixed", 1.0), {}),
        )
        ray.shutdown()
        print(f"(a) research on Ray, {folds} fold jobs, cold: {ray_folds + ray_report:.1f} s")
        if args.skip_local:
            return 0
        local_req = replace(req, cache=PredictionCache(Path(tmp) / "local"))
        (local_markets, _), local_folds = timed(
            "(b) the same folds one after another in this process",
            lambda: run_research(local_req, quiet, local=True),
        )
        _, local_report = timed(
            "(b) report, replays in turn",
            lambda: build_report(local_req, local_markets, lambda r: trade(r, "fixed"), {}),
        )
        if args.one_thread_too:
            os.environ["OMP_NUM_THREADS"] = "1"  # read by train.calibration.process_threads
            one_req = replace(req, cache=PredictionCache(Path(tmp) / "one"))
            _, one_folds = timed(
                "(c) the same folds in turn, LightGBM on one thread",
                lambda: run_research(one_req, quiet, local=True),
            )
            print(f"fold stage, one thread: {one_folds:.1f} s, ratio {one_folds / ray_folds:.2f}x")
    print(f"fold stage: Ray {ray_folds:.1f} s, sequential {local_folds:.1f} s, "
          f"ratio {local_folds / ray_folds:.2f}x (goal >= 0.95)")  # fmt: skip
    print(f"report stage: Ray {ray_report:.1f} s, sequential {local_report:.1f} s, "
          f"ratio {local_report / ray_report:.2f}x")  # fmt: skip
    print(f"largest probability difference: {largest_difference(ray_markets, local_markets):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
