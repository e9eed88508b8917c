"""A market added while the system runs: `python -m cluster add-market KRW-DOGE` on a running
`cluster up` (multiplexed serving, the loop replaying held-out hours) trains it on the cluster,
serves it without restarting any replica of the prediction graph (only the Ingress's market list
changes), and the same TradingLoop actor trades it from its next hour."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import requests
import yaml

from trading.ledger import Ledger

from cluster_run import PROJECT_ROOT, clean_after_failed_up, cluster

pytestmark = pytest.mark.slow
ADDED = "KRW-DOGE"  # a shared candle file copied under a new market name


def multiplexed_deploy_config(path: Path) -> Path:
    config = yaml.safe_load((PROJECT_ROOT / "configs" / "serve_deploy.yaml").read_text())
    (hybrid,) = [a for a in config["applications"] if a["name"] == "hybrid"]
    hybrid["args"]["serving"] = {"mode": "multiplexed", "replicas": 1, "models_per_replica": 4}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def hybrid_replicas() -> set[str]:
    from ray.util.state import list_actors

    actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    return {a.actor_id for a in actors if a.class_name.startswith("ServeReplica:hybrid:")}


def loop_actor() -> tuple[str, dict]:
    from trading.loop import get_loop

    loop = get_loop()
    return loop._actor_id.hex(), ray.get(loop.status.remote(), timeout=30)


@pytest.fixture(scope="module")
def running(ray_local, ray_head, ohlcv_dir, serve_port, tmp_path_factory):
    root = tmp_path_factory.mktemp("add-market")
    data = root / "ohlcv"
    data.mkdir()
    shutil.copy(ohlcv_dir / "KRW-BTC_minute60.parquet", data)
    shutil.copy(ohlcv_dir / "KRW-ETH_minute60.parquet", data / f"{ADDED}_minute60.parquet")
    deploy = multiplexed_deploy_config(root / "serve_deploy.yaml")
    sets = ["--set", f"paths.state={root / 'runs' / 'cluster.json'}",
            "--set", f"serve.deploy_config={deploy}"]  # fmt: skip
    up = cluster(
        *sets, "up", "--address", ray_head.gcs_address, "--dashboard-url", ray_head.dashboard_url,
        "--data-dir", str(data), "--registry", str(root / "registry"),
        "--ledger", str(root / "ledger.sqlite"), "--markets", "KRW-BTC", "--profile", "smoke",
        "--serve-port", str(serve_port), "--no-retrain", "--holdout-hours", "120",
        "--clock-speed", "600",  # an hour every 6 s: still replaying when the market is added
    )  # fmt: skip
    if up.returncode != 0:
        clean_after_failed_up()
    assert up.returncode == 0, up.stderr[-3000:] + up.stdout[-2000:]
    yield {"root": root, "sets": sets, "url": f"http://127.0.0.1:{serve_port}"}
    down = cluster(*sets, "down")
    assert down.returncode == 0, down.stderr[-3000:] + down.stdout[-2000:]


def test_a_market_added_at_runtime_is_trained_served_and_traded(running) -> None:
    replicas_before = hybrid_replicas()
    loop_id, status = loop_actor()
    assert status["markets"] == ["KRW-BTC"] and status["phase"] == "replaying", status["activity"]

    added = cluster(*running["sets"], "add-market", ADDED)
    assert added.returncode == 0, added.stderr[-3000:] + added.stdout[-3000:]
    assert f"{ADDED}: trained" in added.stdout and "no replica restarted" in added.stdout

    assert hybrid_replicas() == replicas_before  # the graph's replicas all kept running
    health = requests.get(f"{running['url']}/healthz", timeout=10).json()
    assert health["ready"] == ["KRW-BTC", ADDED]
    body = {"candles": None}
    reply = requests.post(f"{running['url']}/v1/predict/{ADDED}", json=body, timeout=60)
    assert reply.status_code == 200 and reply.json()["market"] == ADDED, reply.text[:500]

    added_at = time.monotonic()
    traded = pd.DataFrame()
    while time.monotonic() - added_at < 180 and traded.empty:
        time.sleep(3)
        with Ledger(running["root"] / "ledger.sqlite") as ledger:
            frame = ledger.decisions_frame()
        traded = frame[(frame["market"] == ADDED) & (frame["kind"] == "decision")]
    assert not traded.empty, "the loop never traded the added market"
    same_id, status = loop_actor()
    assert same_id == loop_id  # the same actor, not a restart
    assert status["markets"] == ["KRW-BTC", ADDED] and status["running"]
    with Ledger(running["root"] / "ledger.sqlite") as ledger:
        btc = ledger.decisions_frame()
    assert (btc["market"] == "KRW-BTC").any()  # the first market trades on
