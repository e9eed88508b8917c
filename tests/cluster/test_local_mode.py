"""`python -m cluster up|status|down` for real, joined to the session's Ray head: a fifth market
added by configuration only is trained, served and traded in an accelerated run; a second `up`
starts nothing twice; `down` leaves the ledger intact; the status page renders in a real browser."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import requests

from trading.ledger import Ledger

pytestmark = pytest.mark.slow
PROJECT_ROOT = Path(__file__).resolve().parents[2]
MARKETS = "KRW-BTC,KRW-NEW"  # KRW-NEW: a shared candle file copied under a new market name


def cluster(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster", *args], capture_output=True, text=True,
        timeout=timeout, cwd=PROJECT_ROOT, env=os.environ.copy(),
    )  # fmt: skip


@pytest.fixture(scope="module")
def local(ray_local, ray_head, ohlcv_dir, serve_port, tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    data = root / "ohlcv"
    data.mkdir()
    shutil.copy(ohlcv_dir / "KRW-BTC_minute60.parquet", data)
    shutil.copy(ohlcv_dir / "KRW-ETH_minute60.parquet", data / "KRW-NEW_minute60.parquet")
    state = f"paths.state={root / 'cluster.json'}"
    up_args = [
        "--set", state, "up", "--address", ray_head.gcs_address,
        "--dashboard-url", ray_head.dashboard_url, "--data-dir", str(data),
        "--registry", str(root / "registry"), "--ledger", str(root / "ledger.sqlite"),
        "--markets", MARKETS, "--profile", "smoke", "--serve-port", str(serve_port),
        "--no-retrain", "--clock-start", "2025-06-01T00:00:30", "--clock-speed", "900",
    ]  # fmt: skip
    first = cluster(*up_args)
    assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-2000:]
    yield {"root": root, "state": state, "up_args": up_args, "first": first.stdout,
           "url": f"http://127.0.0.1:{serve_port}"}  # fmt: skip
    cluster("--set", state, "down")


def wait_for_hours(hours: int, timeout_s: float = 120) -> dict:
    from trading.loop import get_loop

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = ray.get(get_loop().status.remote(), timeout=30)
        if status["hours_run"] >= hours:
            return status
        time.sleep(1)
    raise AssertionError(f"the loop did not run {hours} hours")


def test_up_trains_serves_and_trades_a_fifth_market(local) -> None:
    out = local["first"]
    assert "trained now: KRW-BTC, KRW-NEW" in out and "Ray dashboard:" in out
    models = requests.get(f"{local['url']}/v1/models", timeout=10).json()["models"]
    assert models["KRW-NEW"]["version"] == "v0001"
    status = wait_for_hours(2)
    assert status["errors"] == [] and status["alarm"] is None
    with Ledger(local["root"] / "ledger.sqlite") as ledger:
        decided = ledger.decisions_frame()
        traded = decided[decided["kind"] == "decision"]
        assert set(traded["market"]) == {"KRW-BTC", "KRW-NEW"}, decided[["market", "reason"]]


def test_status_reports_healthy(local) -> None:
    done = cluster("--set", local["state"], "status", timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "healthy" in done.stdout and '"hybrid": "RUNNING"' in done.stdout


def test_second_up_starts_nothing_twice(local) -> None:
    from trading.loop import get_loop

    before = ray.get(get_loop().status.remote(), timeout=30)["hours_run"]
    again = cluster(*local["up_args"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert "every market already had one" in again.stdout
    after = ray.get(get_loop().status.remote(), timeout=30)["hours_run"]
    assert after >= before, "a second loop replaced the running one"


def test_status_page_over_http_and_in_a_browser(local, tmp_path) -> None:
    page = requests.get(f"{local['url']}/status", timeout=10)
    assert page.status_code == 200 and "hybrid-trader" in page.text
    data = requests.get(f"{local['url']}/trading/v1/status", timeout=10)
    assert data.status_code == 401, "account data must need the token"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    token = os.environ["HYBRID_ADMIN_TOKEN"]
    shot = Path(os.environ.get("STATUS_SCREENSHOT", tmp_path / "status.png"))
    url = f"{local['url']}/status#token={token}"
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000",
              "--enable-logging=stderr", "--v=0"]  # fmt: skip
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert "CONSOLE" not in dom.stderr or "Uncaught" not in dom.stderr, dom.stderr[-2000:]
    assert ":ERROR:CONSOLE" not in dom.stderr, dom.stderr[-2000:]
    assert "<td>llm</td>" in dom.stdout and "KRW-NEW" in dom.stdout, dom.stdout[-2000:]
    subprocess.run([*common, "--window-size=900,1100", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    assert shot.stat().st_size > 10_000


def test_down_stops_the_loop_and_keeps_the_ledger(local) -> None:
    with Ledger(local["root"] / "ledger.sqlite") as ledger:
        rows = len(ledger.decisions_frame())
    done = cluster("--set", local["state"], "down", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ledger intact" in done.stdout
    from trading.loop import get_loop

    with pytest.raises(ValueError):
        get_loop()
    with Ledger(local["root"] / "ledger.sqlite") as ledger:
        assert len(ledger.decisions_frame()) >= rows and ledger.integrity_check() == "ok"
