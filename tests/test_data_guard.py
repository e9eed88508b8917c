"""The suite's guard on the real candles: where they are missing, a run on a laptop skips the tests
that need them and says why, and a run with CI=true fails, so CI can never pass green by skipping
most of the suite. Checked on real tests of three modules, each reaching the data its own way
(the `ohlcv_dir` fixture, `real_candles`, the parity test's market loader), in a child pytest whose
candle folder is an empty directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
OHLCV_ENV = (
    "HYBRID_TEST_OHLCV"  # the folder tests/conftest.py reads the candles from (the contract)
)
PROBES = [
    "tests/features/test_sources.py::test_parquet_dir_unknown_market_lists_known",
    "tests/features/test_indicators.py::test_compute_features_refuses_a_gap",
    "tests/features/test_serving_parity.py::test_serving_rows_parameter",
]


def run_probes(empty: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env[OHLCV_ENV] = str(empty)
    if ci:
        env["CI"] = "true"
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *PROBES]
    return subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_missing_candles_skip_with_the_reason_outside_ci(tmp_path: Path) -> None:
    out = run_probes(tmp_path, ci=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(PROBES)} skipped" in out.stdout, out.stdout
    assert f"real candle data not found at {tmp_path}" in out.stdout
    assert OHLCV_ENV in out.stdout  # the reason says how to point the tests at the data


def test_missing_candles_fail_the_run_under_ci(tmp_path: Path) -> None:
    out = run_probes(tmp_path, ci=True)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{len(PROBES)} errors" in out.stdout and "skipped" not in out.stdout, out.stdout
    assert f"CI=true and real candle data not found at {tmp_path}" in out.stdout
