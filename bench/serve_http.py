"""The HTTP and Serve plumbing both serving benches share (`bench.serve`, `bench.serve_markets`):
request bodies, the in-process baseline, the deploy config's options applied as `serve deploy`
applies them, interleaved and concurrent HTTP load, and latency summaries.

Importing it sets up a bench-local Ray: no token (Ray 2.60 turns token auth on even for
`ray.init()` and writes a token file under ~/.ray unless told not to), and never a cluster found
through RAY_ADDRESS. Import it before anything imports Ray.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

for name in ("RAY_AUTH_TOKEN", "RAY_ADDRESS"):
    os.environ.pop(name, None)
os.environ["RAY_AUTH_MODE"] = "disabled"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import requests  # noqa: E402
import yaml  # noqa: E402
from ray.serve import Application  # noqa: E402

from bench import ROOT  # noqa: E402
from features.domain import Signal  # noqa: E402
from features.indicators import SERVING_WINDOW  # noqa: E402
from serve.predict import candles_from_rows, predict_candles  # noqa: E402
from serve.schema import FLAT_ACCOUNT  # noqa: E402
from serve.sizing import SizingRequest, rule_sizing  # noqa: E402
from train.bundle import load_bundle  # noqa: E402
from train.registry import ModelRegistry  # noqa: E402

DEPLOY_CONFIG = ROOT / "configs" / "serve_deploy.yaml"
PAYLOAD_ROWS = SERVING_WINDOW + 7  # what a client sends: the serving window and a few hours more


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


def interleaved(
    work: Callable[[], object], calls: dict[str, tuple[str, bytes]], n: int, warmup: int
) -> dict[str, np.ndarray]:
    """n steps (after `warmup` untimed ones) of one call each: `work` in this process ("in") and
    a POST of each (url, body); interleaved, so a change in the machine's load falls on all."""
    out: dict[str, list[float]] = {name: [] for name in ("in", *calls)}
    with requests.Session() as session:
        for step in range(warmup + n):
            spent = {"in": timed(work)}
            for name, (url, body) in calls.items():
                spent[name] = timed(lambda u=url, b=body: post(session, u, b))
            if step >= warmup:
                for name, ms in spent.items():
                    out[name].append(ms)
    return {name: np.array(values) for name, values in out.items()}


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def summary(ms: np.ndarray) -> dict[str, float]:
    return {
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
        "rps": 1000.0 / float(ms.mean()),
    }
