"""Many markets: `train fit` on Ray runs at most K markets at once, and a run killed after its
first market finished, started again, skips that market (registered and gated) and fits the rest.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from train.fit_progress import FitFailed, run_bounded
from train.registry import ModelRegistry

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_at_most_k_markets_fit_at_once_and_a_failure_ends_no_other() -> None:
    lock, state = threading.Lock(), {"now": 0, "most": 0}

    def fit_one(market: str) -> SimpleNamespace:
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        if market == "KRW-M3":
            raise RuntimeError("no candles today")
        return SimpleNamespace(market=market, promoted=True, skipped=False)

    lines: list[str] = []
    markets = [f"KRW-M{i}" for i in range(10)]
    with pytest.raises(FitFailed) as failed:
        run_bounded(markets, fit_one, 3, say=lines.append)
    assert state["most"] == 3
    assert list(failed.value.failures) == ["KRW-M3"]
    assert len(failed.value.verdicts) == 9
    assert sum("[" in line and "/10]" in line for line in lines) == 10  # one line per market
    assert lines[-1].startswith("fit summary: 10 markets") and "1 failed (KRW-M3)" in lines[-1]


def _fit_command(data: Path, registry: Path, address: str) -> list[str]:
    return [
        sys.executable, "-u", "-m", "train", "fit", "--markets", "KRW-AAA,KRW-BBB",
        "--data-dir", str(data), "--registry", str(registry), "--profile", "smoke",
        "--max-concurrent", "1", "--fresh-hours", "0", "--ray-address", address,
    ]  # fmt: skip


@pytest.mark.slow
def test_a_killed_run_started_again_refits_only_what_it_had_not_finished(
    ray_local, ray_head, ohlcv_dir: Path, tmp_path: Path
) -> None:
    data, registry = tmp_path / "ohlcv", tmp_path / "registry"
    data.mkdir()
    shutil.copy(ohlcv_dir / "KRW-BTC_minute60.parquet", data / "KRW-AAA_minute60.parquet")
    shutil.copy(ohlcv_dir / "KRW-ETH_minute60.parquet", data / "KRW-BBB_minute60.parquet")
    command = _fit_command(data, registry, ray_head.gcs_address)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=PROJECT_ROOT, env=env, start_new_session=True)  # fmt: skip
    finished, seen = None, []
    assert first.stdout is not None
    for line in first.stdout:
        seen.append(line)
        if line.startswith(("KRW-AAA v", "KRW-BBB v")) and "/2]" in line:
            finished = line.split()[0]
            os.killpg(first.pid, signal.SIGKILL)  # mid-run: the other market is being fitted
            break
    first.wait(timeout=60)
    assert finished, "".join(seen[-40:])
    assert first.returncode == -signal.SIGKILL
    store = ModelRegistry(str(registry))
    before = {m: [v.version for v in store.versions(m)] for m in store.markets()}
    assert before[finished] == ["v0001"] and store.current(finished) == "v0001"

    again = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, env=env,
                           timeout=900)  # fmt: skip
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    lines = again.stdout.splitlines()
    (skip,) = [line for line in lines if line.startswith(f"{finished} v0001: skipped")]
    assert "CURRENT v0001 is fresh" in skip
    other = ({"KRW-AAA", "KRW-BBB"} - {finished}).pop()
    assert any(line.startswith(f"{other} v") and "/2]" in line for line in lines)
    assert [v.version for v in store.versions(finished)] == ["v0001"]  # not refitted
    assert store.current(other) is not None
    (summary,) = [line for line in lines if line.startswith("fit summary:")]
    assert "1 fitted" in summary and "1 skipped" in summary, summary
