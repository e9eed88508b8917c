"""One loop, one mode, on the session's Ray head: a live TradingLoop actor (its exchange the Upbit
private stand-in, its keys in its own runtime environment only) holds its ledger's lease; then
`python -m cluster up --paper` is refused naming the running mode, on that ledger and on another,
and starts nothing; a second loop on that ledger, in another process, is refused naming the
holder; no other Ray worker sees the Upbit keys."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import ray

from cluster.local_ray import free_port
from trading.loop import start_loop
from trading.loop_settings import ClockSettings, LoopSettings
from trading.upbit_broker import ACCESS_KEY_ENV, SECRET_KEY_ENV

from cluster_run import PROJECT_ROOT, cluster
from standins.upbit_private import ACCESS_KEY, SECRET_KEY, UpbitPrivateStandIn

pytestmark = pytest.mark.slow
MARKET = "KRW-BTC"


@pytest.fixture(scope="module")
def live_loop(ray_local, ohlcv_dir, real_candles, tmp_path_factory):
    root = tmp_path_factory.mktemp("one-loop")
    ledger = root / "ledger.sqlite"
    hour = real_candles[MARKET].index[-1]
    with UpbitPrivateStandIn({MARKET: real_candles[MARKET].iloc[-48:]}) as exchange:
        settings = LoopSettings(
            mode="live",
            data_dir=str(ohlcv_dir),
            upbit_base_url=exchange.url,
            serve_url=f"http://127.0.0.1:{free_port()}",  # no Serve: protection only
            overrides=[f"loop.markets=[{MARKET}]", f"ledger.path={ledger}"],
            clock=ClockSettings(
                kind="accelerated", start=hour + pd.Timedelta(hours=1, seconds=30), speed=60
            ),
        )
        loop = start_loop(settings, env={ACCESS_KEY_ENV: ACCESS_KEY, SECRET_KEY_ENV: SECRET_KEY})
        deadline = time.monotonic() + 180
        status = ray.get(loop.status.remote(), timeout=60)
        while status["hours_run"] < 1 and time.monotonic() < deadline:
            time.sleep(1)
            status = ray.get(loop.status.remote(), timeout=60)
        assert status["hours_run"] >= 1 and status["errors"] == [], status
        yield {"root": root, "ledger": ledger, "status": status, "exchange": exchange}
        ray.get(loop.stop.remote(), timeout=180)
        ray.kill(loop, no_restart=True)


def up_paper(ray_head, ohlcv_dir: Path, root: Path, ledger: Path):
    state = root / "c.json"
    args = [
        "--set", f"paths.state={state}", "up", "--paper", "--address", ray_head.gcs_address,
        "--dashboard-url", ray_head.dashboard_url, "--data-dir", str(ohlcv_dir),
        "--ledger", str(ledger), "--markets", MARKET, "--no-retrain", "--holdout-hours", "0",
    ]  # fmt: skip
    done = cluster(*args, timeout=300)
    assert not state.exists(), "up started something before refusing"
    return done


def test_up_paper_is_refused_against_the_running_live_loop(live_loop, ray_head, ohlcv_dir):
    same = up_paper(ray_head, ohlcv_dir, live_loop["root"], live_loop["ledger"])
    assert same.returncode == 2, same.stdout[-2000:] + same.stderr[-2000:]
    assert "a live trading loop is running" in same.stderr and "TradingLoop" in same.stderr
    other = live_loop["root"] / "other.sqlite"
    elsewhere = up_paper(ray_head, ohlcv_dir, live_loop["root"], other)
    assert elsewhere.returncode == 2, elsewhere.stdout[-2000:] + elsewhere.stderr[-2000:]
    assert "a live trading loop is running in this cluster" in elsewhere.stderr
    assert not other.exists()


def test_a_second_loop_on_the_same_ledger_is_refused_naming_the_holder(live_loop, ohlcv_dir):
    code = (
        "from trading.loop import LoopCore, LoopRefused\n"
        "from trading.loop_settings import LoopSettings\n"
        f"settings = LoopSettings(data_dir={str(ohlcv_dir)!r}, overrides="
        f"['loop.markets=[{MARKET}]', 'ledger.path={live_loop['ledger']}'])\n"
        "try:\n    LoopCore(settings)\n"
        "except LoopRefused as exc:\n    print(exc)\n    raise SystemExit(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        cwd=PROJECT_ROOT, env=dict(os.environ),
    )  # fmt: skip
    assert done.returncode == 3, done.stderr[-2000:]
    assert live_loop["status"]["holder"] in done.stdout and "(live mode" in done.stdout


def test_only_the_loop_sees_the_upbit_keys(live_loop) -> None:
    @ray.remote(num_cpus=0)
    def worker_env() -> list[str]:
        return [name for name in (ACCESS_KEY_ENV, SECRET_KEY_ENV) if name in os.environ]

    assert ray.get(worker_env.remote(), timeout=120) == []
    accounts = live_loop["exchange"].requests("/v1/accounts")  # signed by the loop: it had them
    assert accounts and live_loop["status"]["halted_markets"] == {}
