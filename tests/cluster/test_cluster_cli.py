"""`python -m cluster` refuses what it must refuse before starting anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster", *args], capture_output=True, text=True, timeout=120,
        cwd=PROJECT_ROOT, env=env,
    )  # fmt: skip


def test_live_refuses_without_upbit_keys(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPBIT_")}
    env["UPBIT_ACCESS_KEY"] = "an-access-key-that-must-not-be-printed"
    done = run("--set", f"paths.state={tmp_path}/c.json", "up", "--live", env=env)
    assert done.returncode == 2
    assert "UPBIT_SECRET_KEY" in done.stderr
    assert "an-access-key-that-must-not-be-printed" not in done.stderr + done.stdout
    assert not (tmp_path / "c.json").exists(), "it started something before refusing"


def test_status_and_down_say_nothing_is_up(tmp_path) -> None:
    for command in ("status", "down"):
        done = run("--set", f"paths.state={tmp_path}/c.json", command, env=dict(os.environ))
        assert done.returncode == 2 and "nothing is up" in done.stderr


def test_offline_up_names_data_dir(tmp_path) -> None:
    missing = tmp_path / "no-such-folder"
    done = run("--set", f"paths.state={tmp_path}/c.json", "up", "--data-dir", str(missing),
               env=dict(os.environ))  # fmt: skip
    assert done.returncode == 2 and "has no candles" in done.stderr
