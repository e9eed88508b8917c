"""Fit, promote, serve and predict on a Ray cluster of two nodes on this machine, sharing only S3.

`tests/cluster/test_two_nodes.py` runs this in a process of its own (the pytest process is already
the driver of the session's head, and one process drives one cluster) and asserts on the JSON
report it writes. By hand, against any S3 endpoint holding `<data>/KRW-BTC_minute60.parquet`:

    AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... python tests/cluster/two_node_run.py \\
        --data 's3://B/ohlcv?endpoint_override=127.0.0.1:9000&scheme=http' \\
        --registry 's3://B/registry?...' --storage-path 's3://B/ray-results?...' \\
        --cache 's3://B/cache?...' --report /tmp/two-node.json

The nodes (`ray.cluster_utils.Cluster`, each with its own temp dir and resources):
- the head: 2 CPUs; the dashboard, the Serve controller and HTTP proxy, the ingress and sizing
  replicas, the training driver and Ray Train's worker;
- the serving node: no CPU and one `predictor` resource. A training worker asks for CPU, so it can
  only run on the head; the KRW-BTC predictor asks for `predictor` and no CPU, so it can only run
  here. Where each really ran is read back from Ray's state API and reported, not assumed.

Every path handed to the system is an S3 URI (the endpoint in the URI's query, the credentials in
the environment every node inherits): the candles Ray Train's worker reads, Ray Train's run
storage, the model registry the predictor's replica loads from, and the candle cache behind which
the replica fetches from an Upbit stand-in. The working directory is an empty folder, so anything
written to a relative local path would show up there (the test checks it stays empty).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from shutil import ignore_patterns
from typing import Any

import requests
import yaml

TESTS = Path(__file__).resolve().parents[1]
PROJECT = TESTS.parent
sys.path[:0] = [str(PROJECT), str(TESTS)]  # run as a script: the project and the stand-ins

from cluster.local_ray import free_port  # noqa: E402
from features.indicators import SERVING_WINDOW  # noqa: E402
from features.sources import ParquetDirSource  # noqa: E402
from trading.serve_client import candle_rows  # noqa: E402
from train.__main__ import main as train_cli  # noqa: E402
from train.registry import ModelRegistry  # noqa: E402

from standins.upbit_server import UpbitStandIn  # noqa: E402

MARKET = "KRW-BTC"
SERVING_RESOURCE = "predictor"
APP = "hybrid"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    for name in ("data", "registry", "storage-path", "cache"):
        parser.add_argument(f"--{name}", required=True, help="an S3 (or any pyarrow.fs) URI")
    parser.add_argument("--report", required=True, type=Path, help="where the JSON report goes")
    parser.add_argument("--timeout-s", type=float, default=240.0, help="per waiting step")
    return parser.parse_args(argv)


class Steps:
    """Wall seconds per step, for the report."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        print(f"[two-node] {name} ...", flush=True)
        yield
        self.seconds[name] = round(time.perf_counter() - started, 1)
        print(f"[two-node] {name}: {self.seconds[name]} s", flush=True)


def start_cluster(root: Path):
    """Two nodes, each with its own temp dir; no default port is taken (other heads run here)."""
    from ray.cluster_utils import Cluster

    dashboard_port = free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "temp_dir": str(root / "head"),
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard_port,
            "dashboard_agent_listen_port": free_port(),
            "metrics_export_port": free_port(),
        },
    )
    serving = cluster.add_node(
        num_cpus=0,
        resources={SERVING_RESOURCE: 1},
        temp_dir=str(root / "serving"),
        dashboard_agent_listen_port=free_port(),
        metrics_export_port=free_port(),
    )
    cluster.wait_for_nodes()
    return cluster, serving, f"http://127.0.0.1:{dashboard_port}"


def fit_and_register(args: argparse.Namespace, address: str) -> None:
    """`python -m train fit` of the hybrid family on Ray Train (its one TorchTrainer keeps its run
    in `--storage-path`, the bucket; the gate promotes the first model: v0001), then a second
    version registered from it, a candidate for the promotion step."""
    code = train_cli([
        "fit", "--markets", MARKET, "--family", "hybrid", "--profile", "smoke",
        "--data-dir", args.data, "--registry", args.registry,
        "--storage-path", args.storage_path, "--ray-address", address,
        # where it runs is tested, not the fit: one epoch, no leaky fit
        "--set", "profiles.smoke.optim.epochs=1", "--set", "profiles.smoke.leaky.enabled=false",
    ])  # fmt: skip
    if code != 0:
        raise RuntimeError(f"python -m train fit exited {code}")
    registry = ModelRegistry(args.registry)
    with tempfile.TemporaryDirectory() as tmp:
        fetched = registry.fetch(MARKET, "v0001", dest_dir=Path(tmp))
        bundle = shutil.copytree(fetched, Path(tmp) / "bundle", ignore=ignore_patterns("_*"))
        registry.register(MARKET, bundle)


def deploy_config(args: argparse.Namespace, upbit_url: str, port: int) -> dict[str, Any]:
    """configs/serve_deploy.yaml as shipped, pointed at S3, the predictor on the serving node."""
    config = yaml.safe_load((PROJECT / "configs" / "serve_deploy.yaml").read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    config["applications"] = [app]  # the prediction graph; the trading loop is not under test
    source = {**app["args"]["source"], "kind": "upbit", "cache_dir": args.cache,
              "upbit_base_url": upbit_url}  # fmt: skip
    app["args"].update(registry=args.registry, markets=[MARKET], poll_s=0.5, source=source)
    app["deployments"] = [d for d in app["deployments"] if d["name"] in {"Ingress", "SizingNode"}]
    app["deployments"].append({
        "name": MARKET, "num_replicas": 1,
        "ray_actor_options": {"num_cpus": 0, "resources": {SERVING_RESOURCE: 0.01}},
    })  # fmt: skip
    return config


def serve_deploy(config: dict[str, Any], dashboard_url: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as out:
        yaml.safe_dump(config, out, sort_keys=False)
    serve_cli = str(Path(sys.executable).with_name("serve"))
    done = subprocess.run(
        [serve_cli, "deploy", out.name, "--address", dashboard_url],
        capture_output=True, text=True, timeout=180, env=os.environ.copy(),
    )  # fmt: skip
    os.unlink(out.name)
    if done.returncode != 0:
        raise RuntimeError(f"serve deploy failed:\n{done.stderr[-2000:]}")


def wait_for(what: str, probe: Callable[[], Any], timeout_s: float) -> Any:
    """Poll `probe` until it returns something truthy; its last error or value names the wait."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{what} within {timeout_s:.0f} s (last: {last!r})")


def predict(url: str, body: dict[str, Any] | None) -> dict[str, Any]:
    reply = requests.post(f"{url}/v1/predict/{MARKET}", json=body, timeout=60)
    return {"status": reply.status_code, **reply.json()}


def placements(address: str) -> dict[str, list[str]]:
    """The node each training worker and each predictor replica ran on, from Ray's state API."""
    from ray.util.state import list_actors

    wanted = {"train_worker": "RayTrainWorker", "predictor": f"ServeReplica:{APP}:{MARKET}"}
    found = {role: list_actors(address, filters=[("class_name", "=", name)])
             for role, name in wanted.items()}  # fmt: skip
    return {role: sorted({actor.node_id for actor in actors}) for role, actors in found.items()}


def serve_and_predict(args: argparse.Namespace, dashboard: str, steps: Steps) -> dict[str, Any]:
    data = ParquetDirSource(args.data)
    candles = data.history(MARKET)
    body = {"candles": candle_rows(candles.iloc[-(SERVING_WINDOW + 48) :])}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {}
    with UpbitStandIn({MARKET: candles.iloc[-2000:]}) as upbit:
        with steps.timed("serve deploy"):
            serve_deploy(deploy_config(args, upbit.url, port), dashboard)
            healthy = wait_for("the graph ready", lambda: _ready(url), args.timeout_s)
        out["healthz"] = healthy
        out["with_candles"] = predict(url, body)
        out["from_source"] = predict(url, None)  # the replica's own fetch: Upbit via the S3 cache
        out["upbit_candle_requests"] = len(upbit.candle_requests())
        with steps.timed("promote v0002"):
            if train_cli(["promote", "--registry", args.registry, "--market", MARKET,
                          "--version", "v0002"]) != 0:  # fmt: skip
                raise RuntimeError("python -m train promote failed")
            out["after_promote"] = wait_for(
                "the replica to serve v0002",
                lambda: _serving(url, body, "v0002"),
                args.timeout_s,
            )
        out["models"] = requests.get(f"{url}/v1/models", timeout=30).json()
    return out


def _ready(url: str) -> dict[str, Any] | None:
    reply = requests.get(f"{url}/healthz", timeout=5)
    body = reply.json() if reply.status_code == 200 else {}
    return body if body.get("ready") == [MARKET] else None


def _serving(url: str, body: dict[str, Any], version: str) -> dict[str, Any] | None:
    answer = predict(url, body)
    return answer if answer.get("model_version") == version else None


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    import ray
    from ray import serve

    steps = Steps()
    with steps.timed("start two nodes"):
        cluster, serving, dashboard = start_cluster(root)
    os.environ["RAY_ADDRESS"] = cluster.address  # every client here (CLIs, state API) uses it
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        with steps.timed("fit on Ray Train, register"):
            fit_and_register(args, cluster.address)
        served = serve_and_predict(args, dashboard, steps)
        nodes = {"head": cluster.head_node.node_id, "serving": serving.node_id}
        report = {"nodes": nodes, "placements": placements(cluster.address), **served}
        serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()
    return {**report, "seconds": steps.seconds}


def files_holding(root: Path, secret: str) -> list[str]:
    """Every file under the nodes' temp dirs (logs, session state) whose bytes hold `secret`."""
    needle = secret.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Short: a node's socket paths live under its temp dir and must stay under 108 bytes. RAY_TMPDIR
    # also keeps `ray_current_cluster` here, so no other driver on this machine finds this cluster.
    root = Path(tempfile.mkdtemp(prefix="ht2n-", dir="/tmp"))
    os.environ["RAY_TMPDIR"] = str(root)
    (root / "ray").mkdir()
    print(f"[two-node] the nodes' temp dirs and logs: {root}", flush=True)
    report = run(args, root)
    report["files_holding_the_s3_secret"] = files_holding(root, os.environ["AWS_SECRET_ACCESS_KEY"])
    args.report.write_text(json.dumps(report, indent=1, default=str))
    print(f"[two-node] report written to {args.report}", flush=True)
    shutil.rmtree(root, ignore_errors=True)  # kept after a failure: the nodes' logs are there
    return 0


if __name__ == "__main__":
    sys.exit(main())
