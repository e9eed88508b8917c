"""Many markets on one machine: the multiplexed pool over N markets against the four-market graph.

    .venv/bin/python -m bench.serve --markets 40 [--requests 400] [--replicas 2]
        [--models-per-replica 24] [--registry DIR] [--seed 7]

Set-up, not timed: smoke bundles for the four configured markets (`train fit --local --profile
smoke`, or the CURRENT bundles of `--registry`), registered in a scratch registry under their own
names and again under N new names, KRW-M00..: each new market is a renamed copy of one of the four
shared candle files with its prices scaled, made for this benchmark only (never a result). Then,
on one local Ray (`ray.init(num_cpus=2)`), two apps side by side, both built by serve.app with the
deploy config's options:

  four   per_market: the four shared markets, one HybridPredictor deployment each
  mux    multiplexed: the N markets through one MultiplexedPredictor pool

One timed loop interleaves, per step, the in-process work for a random one of the four markets,
`POST /v1/predict/{market}` on four for that market, and on mux for a random one of the N, so the
machine's load falls on all three alike. Four is warmed up first; mux is not: the first ask of
each market loads its bundle inside the timed requests, so cold loads are in its p99. Bodies are
each market's newest 830 candles.

Memory, after the loop, from /proc: RSS (what `ps` shows; shared library pages counted in every
process) and PSS (shared pages split between the processes sharing them) of every replica. One
deployment per market costs the same for every market, so per_market's cost per market is
measured on the four and scales linearly; the pool's is its replicas over N. The switch-over
point is the market count from which the pool needs less predictor memory, from these figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

# isort: off
from bench.serve_http import (  # first: it sets up a bench-local Ray before Ray is imported
    PAYLOAD_ROWS,
    candle_rows,
    deploy_options,
    in_process,
    post,
    rule_sizer_config,
    summary,
    timed,
    with_options,
)

# isort: on
import numpy as np
import pandas as pd
import ray
import requests
import torch
from ray import serve
from ray._private import state as ray_state

from bench import MARKETS, ROOT, fit_smoke_registry
from cluster.local_ray import free_port
from serve.app import build_app
from serve.config import MULTIPLEXED_DEPLOYMENT, ServeConfig
from serve.sizing import load_sizing_config
from train.bundle import load_bundle
from train.registry import COMPLETE_MARKER, ModelRegistry

GOAL_MEMORY, GOAL_P50, GOAL_P99, GOAL_WORK = 5.0, 1.3, 2.0, 5.0
MB = 1024 * 1024


# -- set-up: markets, candles, bundles ---------------------------------------------------------
def bench_markets(n: int) -> list[tuple[str, str, float]]:
    """(name, shared market it copies, price scale) of the N markets made for the benchmark."""
    return [(f"KRW-M{i:02d}", MARKETS[i % len(MARKETS)], 1.0 + 0.5 * (i // 4)) for i in range(n)]


def make_candles(markets: list[tuple[str, str, float]], data_dir: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name, origin, scale in markets:
        frame = pd.read_parquet(data_dir / f"{origin}_minute60.parquet")
        for column in ("open", "high", "low", "close", "value"):
            frame[column] = frame[column] * scale
        frame.to_parquet(out / f"{name}_minute60.parquet")
    return out


def make_registry(source: Path, markets: list[tuple[str, str, float]], root: Path) -> ModelRegistry:
    """The four CURRENT bundles of `source`, under their names and each new market's name."""
    fitted, registry = ModelRegistry(str(source)), ModelRegistry(str(root / "registry"))
    bundles = {m: fitted.fetch(m, dest_dir=root / "fetched") for m in MARKETS}
    for bundle in bundles.values():  # a fetched copy keeps the marker only the registry writes
        (bundle / COMPLETE_MARKER).unlink(missing_ok=True)
    names = [(m, m) for m in MARKETS] + [(name, origin) for name, origin, _ in markets]
    for name, origin in names:
        registry.promote(name, registry.register(name, bundles[origin], {"market": name}))
    return registry


# -- load: one interleaved loop ----------------------------------------------------------------
def wait_ready(url: str, markets: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if len(requests.get(f"{url}/healthz", timeout=10).json()["ready"]) == markets:
                return
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not get ready in {timeout_s:.0f} s")


def interleaved(args, work, four: dict[str, bytes], mux: dict[str, bytes], urls) -> dict:
    """Per step: in-process work, four over HTTP (same market), mux over HTTP (any of N)."""
    rng = np.random.default_rng(args.seed)
    out: dict[str, list[float]] = {"in": [], "four": [], "mux": [], "cold": [], "warm": []}
    asked: set[str] = set()
    with requests.Session() as session:
        for step in range(args.warmup + args.requests):
            market = MARKETS[int(rng.integers(len(MARKETS)))]
            spent_in = timed(lambda m=market: work(m))
            spent_four = timed(lambda m=market: post(session, f"{urls['four']}/{m}", four[m]))
            if step < args.warmup:
                continue  # mux stays cold until the timed steps
            name = list(mux)[int(rng.integers(len(mux)))]
            spent_mux = timed(lambda n=name: post(session, f"{urls['mux']}/{n}", mux[n]))
            out["cold" if name not in asked else "warm"].append(spent_mux)
            asked.add(name)
            out["in"].append(spent_in)
            out["four"].append(spent_four)
            out["mux"].append(spent_mux)
    return {k: np.array(v) for k, v in out.items()}


# -- memory ------------------------------------------------------------------------------------
def proc_memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB of a live process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    pss = next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
    return rss / 1024, pss / 1024


def replica_memory(app: str) -> dict[str, list[tuple[float, float]]]:
    """Per deployment of `app`: (RSS, PSS) of each live replica process (Ray's actor table)."""
    prefix = f"ServeReplica:{app}:"
    found: dict[str, list[tuple[float, float]]] = {}
    for actor in ray_state.actors().values():
        name = actor["ActorClassName"]
        if actor["State"] == "ALIVE" and name.startswith(prefix):
            found.setdefault(name.removeprefix(prefix), []).append(proc_memory(actor["Pid"]))
    return found


def pool_statuses() -> dict[str, dict[str, Any]]:
    pool = serve.get_deployment_handle(MULTIPLEXED_DEPLOYMENT, app_name="mux")
    seen = {}
    for _ in range(30):
        status = pool.status.remote().result(timeout_s=60)
        seen[status["replica"]] = status
    return seen


# -- report ------------------------------------------------------------------------------------
def total(memory: dict[str, list[tuple[float, float]]], names) -> np.ndarray:
    return np.sum([m for name in names for m in memory.get(name, [])], axis=0)


def memory_report(args, four: dict, mux: dict, empty_pool: np.ndarray, statuses: dict) -> None:
    n = args.markets
    per_market = total(four, MARKETS) / len(MARKETS)
    pool = total(mux, [MULTIPLEXED_DEPLOYMENT])
    pooled = pool / n
    loads = sum(s["loads"] for s in statuses.values())
    held = [len(s["models"]) for s in statuses.values()]
    bundle = (pool - empty_pool) / max(sum(held), 1)  # what a held bundle adds to its replica
    print("\n# memory after the timed requests, MB (RSS / PSS)")
    for app, memory in (("four", four), ("mux", mux)):
        for name, procs in sorted(memory.items()):
            shown = ", ".join(f"{r:.0f}/{p:.0f}" for r, p in procs)
            print(f"  {app:<5} {name:<22} {shown}")
    print(
        f"  mux pool: {loads} bundle loads, replicas hold {held} bundles; pool right after "
        f"deploy {empty_pool[0]:.0f}/{empty_pool[1]:.0f}, growth per held bundle "
        f"{bundle[0]:.1f}/{bundle[1]:.1f}"
    )
    ratio = per_market / pooled
    verdict = "MET" if ratio[0] >= GOAL_MEMORY else "MISSED"
    print(
        f"predictor memory per market: per_market {per_market[0]:.0f} RSS / {per_market[1]:.0f} "
        f"PSS (measured on 4, linear in markets), multiplexed {pooled[0]:.1f} / "
        f"{pooled[1]:.1f} ({n} markets): {ratio[0]:.1f}x less RSS, {ratio[1]:.1f}x less PSS "
        f"(goal >= {GOAL_MEMORY}x: {verdict})"
    )
    fixed = total(four, ["Ingress", "SizingNode"])
    print(
        f"ingress + sizing node per app: {fixed[0]:.0f} RSS / {fixed[1]:.0f} PSS (both modes); "
        f"whole app per market: per_market {(per_market + fixed / 4)[0]:.0f} RSS at 4 markets, "
        f"multiplexed {(pooled + fixed / n)[0]:.1f} RSS at {n}"
    )
    capacity = args.replicas * args.models_per_replica
    pool_at = lambda m: empty_pool[0] + min(m, capacity) * bundle[0]  # noqa: E731
    switch = next((m for m in range(1, 1001) if m * per_market[0] > pool_at(m)), None)
    print(
        f"switch-over: from {switch} markets on, the pool ({args.replicas} replicas, "
        f"{args.models_per_replica} bundles each) needs less predictor RSS than one deployment "
        f"per market (pool: {empty_pool[0]:.0f} + {bundle[0]:.1f} per held bundle; per market: "
        f"{per_market[0]:.0f})"
    )


def latency_report(ms: dict[str, np.ndarray]) -> None:
    rows = {
        "in-process work (4 markets)": ms["in"],
        "four-market graph, HTTP": ms["four"],
        "multiplexed, HTTP (cold loads included)": ms["mux"],
        "  of which a market's first ask (cold)": ms["cold"],
        "  of which later asks": ms["warm"],
    }
    print(f"\n{'':<42} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'n':>5}")
    for name, values in rows.items():
        s = summary(values)
        print(f"{name:<42} {s['p50']:8.2f} {s['p99']:8.2f} {s['mean']:8.2f} {len(values):5d}")
    four, mux, work = summary(ms["four"]), summary(ms["mux"]), summary(ms["in"])
    r50, r99 = mux["p50"] / four["p50"], mux["p99"] / four["p99"]
    ok = "MET" if r50 <= GOAL_P50 and r99 <= GOAL_P99 else "MISSED"
    print(
        f"multiplexed/four-market p50 {r50:.2f}x (goal <= {GOAL_P50}x), p99 {r99:.2f}x "
        f"(goal <= {GOAL_P99}x): {ok}"
    )
    w = four["p50"] / work["p50"]
    print(
        f"four-market graph/in-process work p50 {w:.1f}x (goal <= {GOAL_WORK}x: "
        f"{'MET' if w <= GOAL_WORK else 'MISSED'})"
    )


# -- the run -----------------------------------------------------------------------------------
def configs(args, registry: str, sizing: Path, data: Path) -> tuple[ServeConfig, ServeConfig]:
    common = {"registry": registry, "poll_s": 5, "sizing_config": str(sizing)}
    four = ServeConfig(markets=list(MARKETS), source={"data_dir": str(args.data_dir)}, **common)
    serving = {
        "mode": "multiplexed",
        "replicas": args.replicas,
        "models_per_replica": args.models_per_replica,
    }
    names = [name for name, _, _ in bench_markets(args.markets)]
    mux = ServeConfig(markets=names, source={"data_dir": str(data)}, serving=serving, **common)
    return four, mux


def run_markets(args: argparse.Namespace, tmp: Path) -> None:
    """`bench.serve --markets N`: set up, deploy both apps, one interleaved loop, report."""
    os.chdir(ROOT)  # Ray gives replicas the driver's working directory on their path
    markets = bench_markets(args.markets)
    data = make_candles(markets, args.data_dir, tmp / "ohlcv")
    source = args.registry or fit_smoke_registry(MARKETS, args.data_dir, tmp / "fitted")
    registry = make_registry(source, markets, tmp)
    sizing = rule_sizer_config(tmp / "sizing.yaml")
    four_cfg, mux_cfg = configs(args, str(tmp / "registry"), sizing, data)
    four = {m: json.dumps({"candles": candle_rows(args.data_dir, m, PAYLOAD_ROWS)}).encode()
            for m in MARKETS}  # fmt: skip
    mux = {n: json.dumps({"candles": candle_rows(data, n, PAYLOAD_ROWS)}).encode()
           for n, _, _ in markets}  # fmt: skip
    torch.set_num_threads(1)  # as in a replica (num_cpus 0.1: OMP_NUM_THREADS=1)
    models = {m: load_bundle(registry.fetch(m, dest_dir=tmp / "inproc")) for m in MARKETS}
    rows = {m: json.loads(body)["candles"] for m, body in four.items()}
    rule = load_sizing_config(sizing)
    work = lambda m: in_process(models[m], m, rows[m], rule, four_cfg.max_candles)  # noqa: E731
    options = deploy_options(args.deploy_config)
    port = free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(with_options(build_app(four_cfg), options), name="four", route_prefix="/four")
        serve.run(with_options(build_app(mux_cfg), options), name="mux", route_prefix="/mux")
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/four", len(MARKETS))
        wait_ready(f"{base}/mux", args.markets)
        empty_pool = total(replica_memory("mux"), [MULTIPLEXED_DEPLOYMENT])
        urls = {app: f"{base}/{app}/v1/predict" for app in ("four", "mux")}
        print(f"# timed loop: {args.requests} steps after {args.warmup} warm-up steps (four)")
        ms = interleaved(args, work, four, mux, urls)
        statuses = pool_statuses()
        memory = {app: replica_memory(app) for app in ("four", "mux")}
    finally:
        ray.shutdown()
    print(f"# load avg after the loop: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    latency_report(ms)
    memory_report(args, memory["four"], memory["mux"], empty_pool, statuses)
