"""How fast does the Serve graph answer `POST /v1/predict/{market}`, against what it cannot avoid?

    .venv/bin/python -m bench.serve [--requests 300] [--threads 4] [--registry DIR] [--profile]
    .venv/bin/python -m bench.serve --markets 40     # many markets: bench/serve_markets.py

One run measures, on one local Ray (`ray.init(num_cpus=2)`), over HTTP with a fixed payload (the
newest SERVING_WINDOW + 7 = 830 real candles of the market) and one persistent `requests.Session`:

  graph     serve.app's graph (Ingress -> HybridPredictor[market] -> SizingNode, rule sizer only)
  floor     an app of the same shape and options whose deployments do no work: the same FastAPI
            body parsing (serve.ingress.PredictBody), the candles parsed into the same columns
            (serve.predict.CandleColumns) and shipped through the same two handle hops,
            constants returned
  in-proc   the same prediction in this process (candles_from_rows + predict_candles +
            rule_sizing on the loaded bundle, one torch thread as in a replica): the work floor

Both apps are deployed side by side on the same Serve, each deployment with its options (num_cpus,
replicas, autoscaling) from configs/serve_deploy.yaml. Sequential requests first (latency), one
call of each per step (in-process, graph, floor) so the machine's load falls on all alike, then
`--threads` client threads per app (throughput); warm-up steps are not timed. Goals: graph p50
within 1.3x and p99 within 2x of the floor, and p50 within 5x of the in-process work. Without
`--registry` a smoke model is fitted first (`python -m train fit --local --profile smoke`, ~30 s).
`--direct-ingress` measures the system's opt-in mode (`cluster up --direct-ingress`): the bench
and the local Ray it starts carry serve.address.DIRECT_INGRESS_ENV (Ray Serve 2.60's experimental
throughput-optimized mode; the bench starts itself again with it set, since the handles it builds
into the apps keep the switches of the process that built them), in which each ingress replica
answers HTTP on a port of its own (30000-31000, found here through the controller's target
groups, as the bench starts no dashboard) instead of behind the proxy, handle calls between
replicas go over gRPC and user code runs on each replica's loop. Other RAY_SERVE_* variables
(RAY_SERVE_ENABLE_DIRECT_INGRESS=1 alone, say) reach the local Ray from the bench's environment;
README "Without the proxy, measured" has the figures.
`--profile` adds where the time goes: the stages of the work in process, the handle hops timed
from the driver, the CPU each Ray process (proxy, each replica, raylet, ...) spends per request,
and each replica's own per-call times read from Serve's replica logs. The
machine is shared: run it twice, read both.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# isort: off
from bench.serve_http import (  # first: it sets up a bench-local Ray before Ray is imported
    DEPLOY_CONFIG,
    PAYLOAD_ROWS,
    candle_rows,
    concurrent,
    deploy_options,
    in_process,
    interleaved,
    load_model,
    post,
    rule_sizer_config,
    summary,
    wait_answering,
    with_options,
)

# isort: on
import pandas as pd
import ray
import requests
import torch
from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from bench import DATA_DIR, ROOT, fit_smoke_registry
from bench.serve_profile import (
    handle_hops,
    log_marks,
    process_cpu,
    profile_report,
    replica_times,
    stage_times,
)
from cluster.local_ray import free_port
from serve.address import DIRECT_INGRESS_ENV
from serve.app import build_app
from serve.config import ServeConfig
from serve.predict import CandleColumns
from serve.schema import (
    FLAT_ACCOUNT,
    LabelView,
    ModelView,
    PredictBody,
    PredictionReply,
    Probabilities,
    Sizing,
)
from serve.sizing import load_sizing_config

GOAL_P50, GOAL_P99 = 1.3, 2.0
GOAL_WORK = 5.0  # graph p50 over HTTP within 5x of the same work in process


# -- the floor app: same shape, same parsing, no work ----------------------------------------------
floor_api = FastAPI(title="floor")
CONSTANT_PREDICTION = ModelView(
    market="KRW-BTC",
    time=pd.Timestamp("2025-09-30T08:00:00"),
    probabilities=Probabilities.of((0.1, 0.8, 0.1)),
    model_version="v0000",
    volatility=0.005,
    served_by="floor",
    label=LabelView(up=0.005, down=0.005),
)
CONSTANT_SIZING = Sizing(ratio=0.05, source="rule-no-llm", reason="floor")


@serve.deployment
@serve.ingress(floor_api)
class FloorIngress:
    def __init__(self, predictors: dict[str, DeploymentHandle], sizing: DeploymentHandle) -> None:
        self.predictors = predictors
        self.sizing = sizing

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """The deploy config gives the Ingress a `user_config` (its limits), and Serve refuses a
        replica with one but no `reconfigure`; the floor takes it and enforces nothing."""

    @floor_api.post("/v1/predict/{market}")
    async def predict_market(self, market: str, body: PredictBody | None = None) -> PredictionReply:
        body = body or PredictBody()
        candles = None if body.candles is None else CandleColumns.parse(body.candles, 5000)
        view = await self.predictors[market].predict.remote(candles)
        sizing = await self.sizing.size.remote(view, body.account or FLAT_ACCOUNT)
        return PredictionReply.of(view, sizing)


@serve.deployment
class FloorPredictor:
    def predict(self, candles: CandleColumns | None = None) -> ModelView:
        return CONSTANT_PREDICTION


@serve.deployment
class FloorSizing:
    async def size(self, view: ModelView, account: Any) -> Sizing:
        return CONSTANT_SIZING


def floor_app(markets: list[str]) -> Application:
    predictors = {m: FloorPredictor.options(name=m).bind() for m in markets}
    return FloorIngress.options(name="Ingress").bind(
        predictors, FloorSizing.options(name="SizingNode").bind()
    )


# -- both apps, interleaved -----------------------------------------------------------------------
def ingress_port(label: str, proxy_port: int, timeout_s: float = 60) -> int:
    """The HTTP port of the app's ingress replica under direct ingress (the controller's target
    groups: an alpha API, used by the bench only); the proxy's port until the replica has one."""
    from ray.serve._private.common import RequestProtocol
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        groups = ray.get(controller.get_target_groups.remote(label))
        ports = [t.port for g in groups if g.protocol == RequestProtocol.HTTP for t in g.targets]
        if ports and ports[0] != proxy_port:
            return ports[0]
        time.sleep(0.5)
    raise RuntimeError(f"no direct-ingress port for {label!r} after {timeout_s:.0f} s")


def deploy(
    label: str, app: Application, port: int, market: str, body: bytes, direct: bool = False
) -> dict[str, Any]:
    started = time.perf_counter()
    serve.run(app, name=label, route_prefix=f"/{label}")
    if direct:
        port = ingress_port(label, port)
    url = f"http://127.0.0.1:{port}/{label}/v1/predict/{market}"
    sample = wait_answering(url, body)
    return {"url": url, "ready_s": time.perf_counter() - started, "sample": sample}


def measure(apps: dict[str, dict], work, args: argparse.Namespace, body: bytes, rows) -> dict:
    """The in-process work and both apps, one call each per step, so the machine's load (shared,
    changing by the minute) falls on all three alike; then the extras, app by app."""
    marks = {label: log_marks(label) for label in apps}
    calls = {label: (app["url"], body) for label, app in apps.items()}
    if args.profile:  # the same hops with no candles: what the payload itself costs
        calls["empty"] = (apps["floor"]["url"], b"{}")
    ms = interleaved(work, calls, args.requests, args.warmup)
    for label, app in apps.items():
        app["seq"] = summary(ms[label])
        if args.profile:
            app["replicas"] = replica_times(label, marks[label])
            app["hops"] = handle_hops(label, args.market, rows, args.requests // 3)
            with requests.Session() as session:
                send = lambda s=session, u=app["url"]: post(s, u, body)  # noqa: E731
                app["cpu"] = process_cpu(send, args.requests // 3)
        if args.threads > 1:
            lat, rps = concurrent(app["url"], body, args.requests, args.threads)
            app["conc"] = {**summary(lat), "rps": rps}
    if args.profile:
        apps["floor"]["empty"] = summary(ms["empty"])
    return summary(ms["in"])


# -- report ----------------------------------------------------------------------------------------
def header(args: argparse.Namespace) -> None:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"# bench/serve.py  {time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(f"# machine: {os.cpu_count()} cores ({affinity} usable), load avg {load} (shared: noisy)")
    print(
        f"# ray {ray.__version__}, python {sys.version.split()[0]}, torch {torch.__version__}, "
        f"pandas {pd.__version__}"
    )
    asked = f"{args.market}" if args.markets == 1 else "{market}, a random mix"
    print(
        f"# POST /v1/predict/{asked}, {PAYLOAD_ROWS} candles, {args.requests} timed "
        f"requests after {args.warmup} warm-up; options from {DEPLOY_CONFIG.name}"
    )
    if args.direct_ingress:
        switches = " ".join(f"{k}={v}" for k, v in DIRECT_INGRESS_ENV.items())
        print(f"# {switches} (direct ingress): ingress replicas on their own ports, no proxy")
    if args.markets > 1:
        print(
            f"# {args.markets} markets multiplexed: {args.replicas} replicas x "
            f"{args.models_per_replica} bundles, against the four-market graph"
        )


def row(name: str, s: dict[str, float]) -> str:
    return f"{name:<34} {s['p50']:8.2f} {s['p99']:8.2f} {s['mean']:8.2f} {s['rps']:8.1f}"


def report(
    inproc: dict[str, float], graph: dict[str, Any], floor: dict[str, Any], args: argparse.Namespace
) -> None:
    print(f"\n{'':<34} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'req/s':>8}")
    print(row("in-process (work floor)", inproc))
    print(row("floor app, HTTP, sequential", floor["seq"]))
    print(row("graph, HTTP, sequential", graph["seq"]))
    if args.threads > 1:
        print(row(f"floor app, HTTP, {args.threads} threads", floor["conc"]))
        print(row(f"graph, HTTP, {args.threads} threads", graph["conc"]))
    g, f = graph["seq"], floor["seq"]
    r50, r99 = g["p50"] / f["p50"], g["p99"] / f["p99"]
    ok = "MET" if r50 <= GOAL_P50 and r99 <= GOAL_P99 else "MISSED"
    print(
        f"\ngraph/floor  p50 {r50:.2f}x (goal <= {GOAL_P50}x)  p99 {r99:.2f}x "
        f"(goal <= {GOAL_P99}x): {ok}"
    )
    work = g["p50"] / inproc["p50"]
    print(
        f"graph - floor p50 {g['p50'] - f['p50']:+.2f} ms; in-process work p50 "
        f"{inproc['p50']:.2f} ms; graph/in-process p50 {work:.1f}x (goal <= {GOAL_WORK}x: "
        f"{'MET' if work <= GOAL_WORK else 'MISSED'}), p99 {g['p99'] / inproc['p99']:.1f}x"
    )
    if args.threads > 1:
        print(
            f"throughput with {args.threads} threads: graph {graph['conc']['rps']:.1f} req/s, "
            f"floor {floor['conc']['rps']:.1f} req/s, in-process (1 thread) "
            f"{inproc['rps']:.1f} req/s"
        )
    print(
        f"ready after serve.run: graph {graph['ready_s']:.1f} s, floor {floor['ready_s']:.1f} s;"
        f" graph answered signal {graph['sample']['signal']}, sizing "
        f"{graph['sample']['sizing']['source']}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="timed requests per figure")
    parser.add_argument("--warmup", type=int, default=30, help="untimed requests first")
    parser.add_argument("--threads", type=int, default=4, help="client threads (<=1: skip)")
    parser.add_argument("--market", default="KRW-BTC")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--registry", type=Path, help="a registry with the market promoted")
    parser.add_argument("--deploy-config", type=Path, default=DEPLOY_CONFIG)
    parser.add_argument("--profile", action="store_true", help="also show where the time goes")
    parser.add_argument(
        "--direct-ingress",
        action="store_true",
        help="the opt-in mode `cluster up --direct-ingress` (no proxy hop); not the default",
    )
    many = parser.add_argument_group("many markets (bench/serve_markets.py)")
    many.add_argument("--markets", type=int, default=1, help="N > 1: the multiplexed pool over N")
    many.add_argument("--replicas", type=int, default=2, help="the pool's replicas")
    many.add_argument("--models-per-replica", type=int, default=24)
    many.add_argument("--seed", type=int, default=7, help="the random mix of markets")
    args = parser.parse_args(argv)
    if args.direct_ingress and args.markets > 1:
        parser.error("--direct-ingress measures the four-market graph only (without --markets)")
    if args.direct_ingress and args.profile:
        parser.error("--profile calls handles from synchronous code, which --direct-ingress's "
                     "mode refuses")  # fmt: skip
    if args.direct_ingress and any(os.environ.get(k) != v for k, v in DIRECT_INGRESS_ENV.items()):
        # Serve reads its switches when it is imported, and the handles this process builds into
        # the apps keep them (gRPC between replicas or not): start again with them set, as the
        # head's processes have them under `cluster up --direct-ingress`.
        command = [sys.executable, "-m", "bench.serve", *(sys.argv[1:] if argv is None else argv)]
        os.execve(sys.executable, command, {**os.environ, **DIRECT_INGRESS_ENV})
    os.chdir(ROOT)  # Ray gives replicas the driver's working directory on their path
    header(args)
    wall = time.perf_counter()
    if args.markets > 1:
        from bench.serve_markets import run_markets

        with tempfile.TemporaryDirectory(prefix="bench-serve-markets-") as tmp:
            run_markets(args, Path(tmp))
        print(f"\n# wall time {time.perf_counter() - wall:.0f} s")
        return
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        tmp_dir = Path(tmp)
        registry = args.registry or fit_smoke_registry(
            [args.market], args.data_dir, tmp_dir / "registry"
        )
        sizing_path = rule_sizer_config(tmp_dir / "sizing.yaml")
        config = ServeConfig(
            registry=str(registry.resolve()),
            poll_s=5,
            markets=[args.market],
            sizing_config=str(sizing_path),
        )
        rows = candle_rows(args.data_dir, args.market, PAYLOAD_ROWS)
        body = json.dumps({"candles": rows}).encode()

        torch.set_num_threads(1)  # a replica with num_cpus 0.1 gets OMP_NUM_THREADS=1 from Ray
        model = load_model(registry, args.market, tmp_dir / "bundle")
        profile = model.metadata.get("profile", "?")
        print(f"# model: {registry} {args.market} {model.version} (profile {profile})")
        sizing = load_sizing_config(sizing_path)
        work = lambda: in_process(model, args.market, rows, sizing, config.max_candles)  # noqa: E731
        stages = (
            stage_times(model, args.market, rows, body, sizing, config.max_candles, 200)
            if args.profile
            else {}
        )

        options = deploy_options(args.deploy_config)
        port = free_port()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            built = {"graph": build_app(config), "floor": floor_app([args.market])}
            apps = {
                label: deploy(
                    label, with_options(app, options), port, args.market, body, args.direct_ingress
                )
                for label, app in built.items()
            }
            inproc = measure(apps, work, args, body, rows)
            graph, floor = apps["graph"], apps["floor"]
        finally:
            ray.shutdown()  # Serve's controller, proxy and replicas go with this local Ray
    report(inproc, graph, floor, args)
    if args.profile:
        profile_report(stages, graph, floor)
    print(f"\n# wall time {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
