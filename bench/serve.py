"""How fast does the Serve graph answer `POST /v1/predict/{market}`, against what it cannot avoid?

    .venv/bin/python -m bench.serve [--requests 300] [--threads 4] [--registry DIR] [--profile]

One run measures, on one local Ray (`ray.init(num_cpus=2)`), over HTTP with a fixed payload (the
newest SERVING_WINDOW + 7 = 830 real candles of the market) and one persistent `requests.Session`:

  graph     serve.app's graph (Ingress -> HybridPredictor[market] -> SizingNode, rule sizer only)
  floor     an app of the same shape and options whose deployments do no work: the same FastAPI
            body parsing (serve.ingress.PredictBody), the candles shipped through the same two
            handle hops, constants returned
  in-proc   the same prediction in this process (candles_from_rows + predict_candles +
            rule_sizing on the loaded bundle, one torch thread as in a replica): the work floor

Sequential requests first (latency), then `--threads` client threads (throughput); warm-up requests
are not timed. Both apps take each deployment's options (num_cpus, replicas, autoscaling) from
configs/serve_deploy.yaml and are deployed one after the other on the same Serve. Goal: graph p50
within 1.3x and p99 within 2x of the floor. Without `--registry` a smoke model is fitted first
(`python -m train fit --local --profile smoke`, ~30 s). `--profile` adds where the time goes: the
stages of the work in process, the handle hops timed from the driver, and each replica's own
per-call times read from Serve's replica logs. The machine is shared: run it twice, read both.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# A bench-local Ray: no token (Ray 2.60 turns token auth on even for `ray.init()` and writes a token
# file under ~/.ray unless told not to), and never a cluster found through RAY_ADDRESS.
for name in ("RAY_AUTH_TOKEN", "RAY_ADDRESS"):
    os.environ.pop(name, None)
os.environ["RAY_AUTH_MODE"] = "disabled"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import ray  # noqa: E402
import requests  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from ray import serve  # noqa: E402
from ray.serve import Application  # noqa: E402
from ray.serve.handle import DeploymentHandle  # noqa: E402

from bench import DATA_DIR, ROOT, fit_smoke_registry  # noqa: E402
from cluster.local_ray import free_port  # noqa: E402
from features.domain import Signal  # noqa: E402
from features.indicators import CANDLES_FOR_SERVING, SEQUENCE_LENGTH, SERVING_WINDOW  # noqa: E402
from features.serving import serving_matrix  # noqa: E402
from serve.app import build_app  # noqa: E402
from serve.config import ServeConfig  # noqa: E402
from serve.predict import candles_from_rows, predict_candles  # noqa: E402
from serve.schema import (  # noqa: E402
    FLAT_ACCOUNT,
    ModelView,
    PredictBody,
    PredictionReply,
    Probabilities,
    Sizing,
)
from serve.sizing import (  # noqa: E402
    SizingRequest,
    load_sizing_config,
    rule_sizing,
    sizing_volatility,
)
from train.bundle import load_bundle  # noqa: E402
from train.registry import ModelRegistry  # noqa: E402

DEPLOY_CONFIG = ROOT / "configs" / "serve_deploy.yaml"
PAYLOAD_ROWS = SERVING_WINDOW + 7  # what a client sends: the serving window and a few hours more
GOAL_P50, GOAL_P99 = 1.3, 2.0


# -- the payload and the in-process baseline -------------------------------------------------------
def candle_rows(data_dir: Path, market: str, n: int) -> list[dict[str, Any]]:
    """The newest n stored candles as request rows (as tests/serve/test_app.py builds them)."""
    frame = pd.read_parquet(data_dir / f"{market}_minute60.parquet").iloc[-n:].reset_index()
    frame["time"] = frame["time"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    return frame.to_dict(orient="records")


def load_model(registry: Path, market: str, dest: Path):
    return load_bundle(ModelRegistry(str(registry)).fetch(market, dest_dir=dest))


def rule_sizer_config(path: Path) -> Path:
    sizing = yaml.safe_load((ROOT / "configs" / "sizing.yaml").read_text())
    sizing["groq"]["enabled"] = False
    sizing["ollama"]["enabled"] = False
    path.write_text(yaml.safe_dump(sizing))
    return path


def in_process(model, market: str, rows: list[dict[str, Any]], sizing, max_rows: int) -> dict:
    view = predict_candles(model, market, candles_from_rows(rows, max_rows))
    probabilities = view.probabilities.as_tuple()
    request = SizingRequest(
        market, Signal[view.signal], probabilities, view.volatility, FLAT_ACCOUNT
    )
    return {"signal": view.signal, "ratio": rule_sizing(request, sizing).ratio}


def time_calls(fn: Callable[[], object], n: int, warmup: int = 5) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(n)
    for i in range(n):
        started = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - started
    return out * 1000


# -- the floor app: same shape, same parsing, no work ----------------------------------------------
floor_api = FastAPI(title="floor")
CONSTANT_PREDICTION = ModelView(
    market="KRW-BTC",
    time=pd.Timestamp("2025-09-30T08:00:00"),
    probabilities=Probabilities.of((0.1, 0.8, 0.1)),
    model_version="v0000",
    volatility=0.005,
    served_by="floor",
)
CONSTANT_SIZING = Sizing(ratio=0.05, source="rule-no-llm", reason="floor")


@serve.deployment
@serve.ingress(floor_api)
class FloorIngress:
    def __init__(self, predictors: dict[str, DeploymentHandle], sizing: DeploymentHandle) -> None:
        self.predictors = predictors
        self.sizing = sizing

    @floor_api.post("/v1/predict/{market}")
    async def predict_market(self, market: str, body: PredictBody | None = None) -> PredictionReply:
        body = body or PredictBody()
        view = await self.predictors[market].predict.remote(body.candles)
        sizing = await self.sizing.size.remote(view, body.account or FLAT_ACCOUNT)
        return PredictionReply.of(view, sizing)


@serve.deployment
class FloorPredictor:
    def predict(self, rows: list[dict[str, Any]] | None = None) -> ModelView:
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


def deploy_options(path: Path) -> dict[str, dict[str, Any]]:
    """Per-deployment options (num_cpus, replicas, autoscaling) of the deploy config's app."""
    app = yaml.safe_load(path.read_text())["applications"][0]
    return {d.pop("name"): d for d in app["deployments"]}


def with_options(app: Application, options: dict[str, dict[str, Any]]) -> Application:
    """The same graph with each deployment's options from the deploy config, as `serve deploy`
    applies them (`serve.run` of a bound graph would give every replica a whole CPU)."""
    deployment = app._bound_deployment  # Serve's own build_app reads the graph the same way

    def rebind(value: Any) -> Any:
        if isinstance(value, Application):
            return with_options(value, options)
        if isinstance(value, dict):
            return {k: rebind(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(rebind(v) for v in value)
        return value

    args = [rebind(a) for a in deployment.init_args]
    kwargs = {k: rebind(v) for k, v in deployment.init_kwargs.items()}
    return deployment.options(**options.get(deployment.name, {})).bind(*args, **kwargs)


# -- HTTP load -------------------------------------------------------------------------------------
def post(session: requests.Session, url: str, body: bytes) -> dict[str, Any]:
    reply = session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=60)
    if reply.status_code != 200:
        raise RuntimeError(f"{url}: {reply.status_code} {reply.text[:300]}")
    return reply.json()


def wait_answering(url: str, body: bytes, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    with requests.Session() as session:
        while True:
            try:
                return post(session, url, body)
            except (requests.RequestException, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def sequential(url: str, body: bytes, n: int, warmup: int) -> np.ndarray:
    with requests.Session() as session:
        for _ in range(warmup):
            post(session, url, body)
        out = np.empty(n)
        for i in range(n):
            started = time.perf_counter()
            post(session, url, body)
            out[i] = time.perf_counter() - started
    return out * 1000


def concurrent(url: str, body: bytes, n: int, threads: int) -> tuple[np.ndarray, float]:
    """n requests over `threads` client threads (one Session each); latencies and requests/s."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(n))
    barrier = threading.Barrier(threads + 1)

    def client() -> None:
        with requests.Session() as session:
            post(session, url, body)  # its own connection, opened before the clock starts
            barrier.wait()
            mine = []
            while True:
                with lock:
                    if next(counter, None) is None:
                        break
                started = time.perf_counter()
                post(session, url, body)
                mine.append(time.perf_counter() - started)
            with lock:
                latencies.extend(mine)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    started = time.perf_counter()
    for w in workers:
        w.join()
    wall = time.perf_counter() - started
    return np.array(latencies) * 1000, n / wall


def summary(ms: np.ndarray) -> dict[str, float]:
    return {
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
        "rps": 1000.0 / float(ms.mean()),
    }


# -- profiling: replica-side call times from Serve's logs ------------------------------------------
LOG_LINE = re.compile(r"(?P<what>CALL \S+|POST \S+|GET \S+) (?:OK|\d{3}) (?P<ms>[\d.]+)ms")


def replica_times(app: str, since: dict[Path, int]) -> dict[str, list[float]]:
    """Per deployment and method, the call times Serve logged in each replica after `since`."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    found: dict[str, list[float]] = {}
    for path in sorted(logs.glob(f"replica_{app}_*.log")):
        deployment = path.name.removeprefix(f"replica_{app}_").rsplit("_", 1)[0]
        lines = path.read_text(errors="replace").splitlines()[since.get(path, 0) :]
        for line in lines:
            match = LOG_LINE.search(line)
            if match:
                key = f"{deployment} {match['what']}"
                found.setdefault(key, []).append(float(match["ms"]))
    return found


def log_marks(app: str) -> dict[Path, int]:
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    marks = {}
    for p in logs.glob(f"replica_{app}_*.log"):
        marks[p] = len(p.read_text(errors="replace").splitlines())
    return marks


# -- one app ---------------------------------------------------------------------------------------
def bench_app(
    label: str,
    app: Application,
    args: argparse.Namespace,
    port: int,
    body: bytes,
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    started = time.perf_counter()
    serve.run(app, name=label, route_prefix=f"/{label}")
    url = f"http://127.0.0.1:{port}/{label}/v1/predict/{args.market}"
    sample = wait_answering(url, body)
    ready_s = time.perf_counter() - started
    marks = log_marks(label)
    seq = sequential(url, body, args.requests, args.warmup)
    result: dict[str, Any] = {"ready_s": ready_s, "seq": summary(seq), "sample": sample}
    if args.profile:
        result["replicas"] = replica_times(label, marks)
        result["hops"] = handle_hops(label, args.market, rows, args.requests // 3)
        if label == "floor":  # the same hops with no candles: what the payload itself costs
            result["empty"] = summary(sequential(url, b"{}", args.requests // 3, 10))
    if args.threads > 1:
        lat, rps = concurrent(url, body, args.requests, args.threads)
        result["conc"] = {**summary(lat), "rps": rps}
    serve.delete(label)
    return result


def handle_hops(label: str, market: str, rows: list[dict[str, Any]], n: int) -> dict[str, float]:
    """The predictor and sizing deployments called from the driver through handles (median ms)."""
    predictor = serve.get_deployment_handle(market, app_name=label)
    sizing = serve.get_deployment_handle("SizingNode", app_name=label)
    prediction = predictor.predict.remote(rows).result()
    hops = {
        f"predictor.predict({PAYLOAD_ROWS} rows)": time_calls(
            lambda: predictor.predict.remote(rows).result(), n
        ),
        "sizing.size": time_calls(lambda: sizing.size.remote(prediction, FLAT_ACCOUNT).result(), n),
    }
    return {k: float(np.median(v)) for k, v in hops.items()}


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
    print(
        f"# POST /v1/predict/{args.market}, {PAYLOAD_ROWS} candles, {args.requests} timed "
        f"requests after {args.warmup} warm-up; options from {DEPLOY_CONFIG.name}"
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
    print(
        f"graph - floor p50 {g['p50'] - f['p50']:+.2f} ms; in-process work p50 "
        f"{inproc['p50']:.2f} ms; graph/in-process p50 {g['p50'] / inproc['p50']:.1f}x, "
        f"p99 {g['p99'] / inproc['p99']:.1f}x"
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


def profile_report(
    stages: dict[str, tuple[float, float]], graph: dict[str, Any], floor: dict[str, Any]
) -> None:
    print("\n# profile: in-process stages (ms, one torch thread; min ~ the machine unloaded)")
    for name, (median, least) in stages.items():
        print(f"  {name:<52} median {median:7.3f}  min {least:7.3f}")
    empty = floor["empty"]
    print(
        f"# profile: floor app over HTTP with an empty body (no candles): p50 {empty['p50']:.2f}"
        f" ms, p99 {empty['p99']:.2f} ms (with the {PAYLOAD_ROWS} candles:"
        f" p50 {floor['seq']['p50']:.2f})"
    )
    for label, result in (("graph", graph), ("floor", floor)):
        print(f"# profile: {label}, handle calls from the driver (median ms)")
        for name, ms in result["hops"].items():
            print(f"  {name:<52} {ms:8.3f}")
        print(f"# profile: {label}, time inside each replica per call (Serve replica logs, ms)")
        for key, values in sorted(result["replicas"].items()):
            v = np.array(values)
            print(
                f"  {key:<52} p50 {np.percentile(v, 50):7.2f}  p99 "
                f"{np.percentile(v, 99):7.2f}  n={len(v)}"
            )


def stage_times(
    model, market: str, rows: list[dict[str, Any]], body: bytes, sizing, max_rows: int, n: int
) -> dict[str, float]:
    """Where the in-process work goes, plus the costs the HTTP path adds around it."""
    candles = candles_from_rows(rows, max_rows)
    window = candles.iloc[-CANDLES_FOR_SERVING:]
    max_gap = int(model.metadata.get("max_gap_hours", 6))
    features = serving_matrix(window, SEQUENCE_LENGTH, max_gap)[None, :, :]
    parsed = json.loads(body)
    pickled = pickle.dumps(rows, protocol=5)
    view = predict_candles(model, market, candles)
    request = SizingRequest(
        market, Signal.BUY, view.probabilities.as_tuple(), view.volatility, FLAT_ACCOUNT
    )
    stages = {
        f"json.loads(body, {len(body) // 1024} KiB)": lambda: json.loads(body),
        "PredictBody.model_validate (FastAPI's parse)": lambda: PredictBody.model_validate(parsed),
        f"pickle.dumps(rows) ({len(pickled) // 1024} KiB, a handle hop)": lambda: pickle.dumps(
            rows, protocol=5
        ),
        "pickle.loads(rows)": lambda: pickle.loads(pickled),
        "candles_from_rows (DataFrame + validate)": lambda: candles_from_rows(rows, max_rows),
        "serving_matrix (46 features, window)": lambda: serving_matrix(
            window, SEQUENCE_LENGTH, max_gap
        ),
        "model.predict_proba (LSTM + head)": lambda: model.predict_proba(features),
        "volatility": lambda: sizing_volatility(candles["close"].to_numpy()),
        "predict_candles (features + model + volatility)": lambda: predict_candles(
            model, market, candles
        ),
        "rule_sizing": lambda: rule_sizing(request, sizing),
    }
    times = {name: time_calls(fn, n) for name, fn in stages.items()}
    return {name: (float(np.median(ms)), float(ms.min())) for name, ms in times.items()}


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
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # Ray gives replicas the driver's working directory on their path
    header(args)
    wall = time.perf_counter()
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
        inproc = summary(time_calls(work, args.requests, args.warmup))
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
            graph = bench_app(
                "graph", with_options(build_app(config), options), args, port, body, rows
            )
            floor = bench_app(
                "floor", with_options(floor_app([args.market]), options), args, port, body, rows
            )
        finally:
            ray.shutdown()  # Serve's controller, proxy and replicas go with this local Ray
    report(inproc, graph, floor, args)
    if args.profile:
        profile_report(stages, graph, floor)
    print(f"\n# wall time {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
