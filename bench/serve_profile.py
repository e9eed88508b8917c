"""`bench.serve --profile`: where the time of one prediction goes.

The stages of the work in this process, the predictor and sizing node called through handles from
the driver, each replica's own per-call times read from Serve's replica logs, and the CPU each
process of the local Ray (proxy, replicas, raylet, GCS, controller) spends per request: on two busy
cores the processes a request wakes compete for the same CPU, so their CPU per request, not the
work's, is what the path costs. Linux only (it reads /proc).
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import serve

from bench.serve_http import PAYLOAD_ROWS, time_calls
from features.domain import Signal
from features.indicators import CANDLES_FOR_SERVING, SEQUENCE_LENGTH
from features.serving import serving_matrix
from serve.predict import CandleColumns, candles_from_rows, model_feature_set, predict_candles
from serve.schema import FLAT_ACCOUNT, PredictBody
from serve.sizing import SizingRequest, rule_sizing, sizing_volatility

# -- replica-side call times from Serve's logs ---------------------------------------------------
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


# -- CPU per request of each Ray process (/proc) --------------------------------------------------
def _ray_processes() -> dict[int, str]:
    """pid -> name of this machine's Ray processes: a worker's title without its method
    (`ray::ServeReplica:graph:Ingress`, `ray::ProxyActor`), else the executable (`raylet`)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::"):
            found[int(entry.name)] = title.split(".")[0]
        elif Path(title).name in ("raylet", "gcs_server"):
            found[int(entry.name)] = Path(title).name
    return found


def _cpu_seconds(pids: dict[int, str]) -> dict[int, float]:
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return out


def process_cpu(send: Callable[[], object], n: int) -> dict[str, float]:
    """CPU ms per request of each Ray process while `send` is called n times one after another
    (background work, such as the controller's loop, included)."""
    pids = _ray_processes()
    before = _cpu_seconds(pids)
    for _ in range(n):
        send()
    after = _cpu_seconds(pids)
    spent: dict[str, float] = {}
    for pid, seconds in after.items():
        name = pids[pid]
        spent[name] = spent.get(name, 0.0) + (seconds - before.get(pid, seconds)) * 1000 / n
    return spent


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
        cpu = result["cpu"]
        print(
            f"# profile: {label}, CPU per request of each process (/proc, ms; total "
            f"{sum(cpu.values()):.2f})"
        )
        for name, ms in sorted(cpu.items(), key=lambda item: -item[1]):
            if ms >= 0.05:
                print(f"  {name:<52} {ms:8.2f}")
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
    columns_of = {"feature_set": model_feature_set(model), "market": market}  # as the predictor
    features = serving_matrix(window, SEQUENCE_LENGTH, max_gap, **columns_of)[None, :, :]
    parsed = json.loads(body)
    pickled = pickle.dumps(rows, protocol=5)
    columns = CandleColumns.parse(rows, max_rows)
    shipped = pickle.dumps(columns, protocol=5)
    view = predict_candles(model, market, candles)
    request = SizingRequest(
        market, Signal.BUY, view.probabilities.as_tuple(), view.volatility, FLAT_ACCOUNT
    )
    stages = {
        f"json.loads(body, {len(body) // 1024} KiB)": lambda: json.loads(body),
        "PredictBody.model_validate (FastAPI's parse)": lambda: PredictBody.model_validate(parsed),
        f"pickle.dumps(rows) ({len(pickled) // 1024} KiB, the old hand-over)": lambda: pickle.dumps(
            rows, protocol=5
        ),
        "pickle.loads(rows)": lambda: pickle.loads(pickled),
        "CandleColumns.parse (ingress: DataFrame + validate)": lambda: CandleColumns.parse(
            rows, max_rows
        ),
        f"pickle.dumps+loads(columns) ({len(shipped) // 1024} KiB, the hand-over)": lambda: (
            pickle.loads(pickle.dumps(columns, protocol=5))
        ),
        "CandleColumns.frame (predictor)": columns.frame,
        f"serving_matrix ({features.shape[2]} features, window)": lambda: serving_matrix(
            window, SEQUENCE_LENGTH, max_gap, **columns_of
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
