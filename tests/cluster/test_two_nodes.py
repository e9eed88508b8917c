"""Beyond one machine: two Ray nodes that share nothing but an S3 endpoint.

The cluster lives in a child process (`two_node_run.py`): this pytest process is already a driver
of the session's head, and a process drives one cluster at a time. The child fits through
`python -m train fit` (Ray Train) on one node, deploys the real Serve graph with the predictor on
the other, predicts over HTTP, promotes with `python -m train promote` and watches the replica on
the other node follow. This test owns the S3 endpoint, so it checks the bucket itself afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from cluster.local_ray import free_port

pytestmark = pytest.mark.slow
PROJECT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("two_node_run.py")
MARKET = "KRW-BTC"
PARTS = ("ohlcv", "registry", "ray-results", "cache")


def run_in_own_group(
    command: list[str], cwd: Path, env: dict[str, str], log: Path, timeout_s: float
) -> int:
    """Run the child in a process group of its own; past the timeout the whole group is killed,
    Ray's node processes included, and the test fails saying so."""
    with log.open("wb") as out:
        child = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # fmt: skip
        try:
            return child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            tail = log.read_text(errors="replace")[-4000:]
            pytest.fail(f"two_node_run.py ran past {timeout_s:.0f} s and was killed:\n{tail}")


@pytest.fixture(scope="module")
def two_node_run(s3_standin, ohlcv_dir: Path, tmp_path_factory) -> dict:
    """Run the child once; its report plus what this test needs to check the bucket."""
    s3 = s3_standin
    prefix = f"two-node-{uuid.uuid4().hex[:8]}"
    pafs.copy_files(
        str(ohlcv_dir / f"{MARKET}_minute60.parquet"),
        f"{s3.bucket}/{prefix}/ohlcv/{MARKET}_minute60.parquet",
        destination_filesystem=s3.filesystem(),
    )
    uris = {part: s3.uri(f"{prefix}/{part}") for part in PARTS}
    root = tmp_path_factory.mktemp("two-node")
    work, log, report = root / "cwd", root / "child.log", root / "report.json"
    work.mkdir()
    env = {**os.environ, **s3.env(), "PYTHONPATH": str(PROJECT),
           "OLLAMA_HOST": f"http://127.0.0.1:{free_port()}"}  # fmt: skip
    env.pop("GROQ_API_KEY", None)  # sizing falls back to its rule: LLMs are not under test here
    command = [sys.executable, str(SCRIPT), "--data", uris["ohlcv"], "--registry",
               uris["registry"], "--storage-path", uris["ray-results"], "--cache", uris["cache"],
               "--report", str(report)]  # fmt: skip
    started = time.perf_counter()
    code = run_in_own_group(command, work, env, log, timeout_s=540)
    wall = time.perf_counter() - started
    output = log.read_text(errors="replace")
    assert code == 0, f"two_node_run.py exited {code}:\n{output[-4000:]}"
    result = json.loads(report.read_text())
    load = os.getloadavg()
    print(f"two-node run: {wall:.1f} s wall, steps {result['seconds']}, load average {load}")
    return {**result, "output": output, "prefix": prefix, "cwd": work, "wall_s": wall}


def test_training_and_the_predictor_ran_on_different_nodes(two_node_run) -> None:
    nodes, placed = two_node_run["nodes"], two_node_run["placements"]
    assert nodes["head"] != nodes["serving"]
    assert placed["train_worker"] == [nodes["head"]]
    assert placed["predictor"] == [nodes["serving"]]


def test_predictions_over_http_follow_a_promotion_across_nodes(two_node_run) -> None:
    with_candles, promoted = two_node_run["with_candles"], two_node_run["after_promote"]
    assert two_node_run["healthz"]["ready"] == [MARKET]
    assert with_candles["status"] == 200 and with_candles["model_version"] == "v0001"
    assert with_candles["time"] == "2025-09-30T08:00:00"  # the newest stored candle
    assert sum(with_candles["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    # v0002 is the same bundle registered again: the new version serves the same numbers.
    assert promoted["status"] == 200 and promoted["model_version"] == "v0002"
    assert promoted["probabilities"] == pytest.approx(with_candles["probabilities"])
    model = two_node_run["models"]["models"][MARKET]
    assert model["version"] == "v0002" and model["last_error"] is None
    assert promoted["served_by"] == with_candles["served_by"] == model["replica"]


def test_the_replica_fetched_its_own_candles_through_the_s3_cache(two_node_run, s3_standin) -> None:
    from_source = two_node_run["from_source"]
    assert from_source["status"] == 200 and from_source["model_version"] == "v0001"
    assert two_node_run["upbit_candle_requests"] > 0
    cached = f"{s3_standin.bucket}/{two_node_run['prefix']}/cache/{MARKET}_minute60.parquet"
    assert pq.read_table(cached, filesystem=s3_standin.filesystem()).num_rows >= 823


def test_everything_shared_lives_in_the_bucket_and_nothing_local(two_node_run, s3_standin) -> None:
    bucket, base = s3_standin.filesystem(), f"{s3_standin.bucket}/{two_node_run['prefix']}"
    registry = f"{base}/registry/{MARKET}"
    with bucket.open_input_stream(f"{registry}/CURRENT") as current:
        assert current.readall() == b"v0002\n"
    for version in ("v0001", "v0002"):
        assert bucket.get_file_info(f"{registry}/{version}/_COMPLETE").is_file
    runs = bucket.get_file_info(pafs.FileSelector(f"{base}/ray-results", recursive=True))
    checkpoints = [i.path for i in runs if i.path.endswith("/metadata.json")]
    assert len(checkpoints) == 1 and f"/ray-results/fit-{MARKET}-" in checkpoints[0]
    assert list(two_node_run["cwd"].iterdir()) == []  # no relative path was written to


def test_the_s3_secret_reached_no_log_or_file(two_node_run, s3_standin) -> None:
    assert s3_standin.secret_key not in two_node_run["output"]
    assert two_node_run["files_holding_the_s3_secret"] == []
