"""`python -m cluster up|status|down` for real, joined to the session's Ray head, as a first run:
the newest stored hours are held out of training and replayed through the real loop and Serve on
the accelerated clock until the loop says it has caught up; a fifth market added by configuration
only is trained, served and traded; `up` prints the status page's URL with the admin token in its
fragment only; a second `up` starts nothing twice; `down` leaves the ledger and the head alone."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pytest
import ray
import requests

from trading.ledger import Ledger
from train.registry import ModelRegistry

from cluster_run import clean_after_failed_up, cluster

pytestmark = pytest.mark.slow
MARKETS = ["KRW-BTC", "KRW-NEW"]  # KRW-NEW: a shared candle file copied under a new market name
HOLDOUT = 12  # hours; the default is 336 (two weeks)
SPEED = 1800.0  # an hour every 2 s


@pytest.fixture(scope="module")
def local(ray_local, ray_head, ohlcv_dir, serve_port, tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    data = root / "ohlcv"
    data.mkdir()
    shutil.copy(ohlcv_dir / "KRW-BTC_minute60.parquet", data)
    shutil.copy(ohlcv_dir / "KRW-ETH_minute60.parquet", data / "KRW-NEW_minute60.parquet")
    newest = min(pd.read_parquet(data / f"{m}_minute60.parquet").index[-1] for m in MARKETS)
    state = f"paths.state={root / 'runs' / 'cluster.json'}"
    up_args = [
        "--set", state, "up", "--address", ray_head.gcs_address,
        "--dashboard-url", ray_head.dashboard_url, "--data-dir", str(data),
        "--registry", str(root / "registry"), "--ledger", str(root / "ledger.sqlite"),
        "--markets", ",".join(MARKETS), "--profile", "smoke", "--serve-port", str(serve_port),
        "--no-retrain", "--holdout-hours", str(HOLDOUT), "--clock-speed", str(SPEED),
    ]  # fmt: skip
    started = time.monotonic()
    first = cluster(*up_args)
    if first.returncode != 0:
        clean_after_failed_up()
    assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-2000:]
    yield {
        "root": root, "state": state, "up_args": up_args, "first": first,
        "url": f"http://127.0.0.1:{serve_port}", "newest": newest, "started": started,
        "held_out": list(pd.date_range(end=newest, periods=HOLDOUT, freq="h")),
    }  # fmt: skip
    cluster("--set", state, "down")


def loop_status() -> dict:
    from trading.loop import get_loop

    return ray.get(get_loop().status.remote(), timeout=30)


def wait_for_phase(phase: str, timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = loop_status()
        if status["phase"] == phase:
            return status
        time.sleep(1)
    raise AssertionError(f"the loop did not reach {phase!r}; last status: {status['activity']}")


def ledger_rows(root: Path) -> tuple[pd.DataFrame, int]:
    with Ledger(root / "ledger.sqlite") as ledger:
        return ledger.decisions_frame(), len(ledger.equity_curve("llm"))


def test_up_trains_only_on_the_hours_before_the_held_out_ones(local) -> None:
    assert "trained now: KRW-BTC, KRW-NEW" in local["first"].stdout
    registry = ModelRegistry(str(local["root"] / "registry"))
    first_held_out = local["held_out"][0]
    for market in MARKETS:
        meta = registry.read_metadata(market)
        until = pd.Timestamp(meta["hyperparameters"]["data"]["until"])
        assert until == first_held_out - pd.Timedelta(hours=1)
        assert pd.Timestamp(meta["train_window"][1]) < first_held_out
        assert pd.Timestamp(meta["oos_window"][1]) < first_held_out, "a held-out hour was scored"
    models = requests.get(f"{local['url']}/v1/models", timeout=10).json()["models"]
    assert models["KRW-NEW"]["version"] == "v0001"


def test_the_loop_replays_the_held_out_hours_then_says_it_has_caught_up(local) -> None:
    status = wait_for_phase("caught_up")
    took = time.monotonic() - local["started"]
    assert status["running"] and status["errors"] == [] and status["alarm"] is None
    assert pd.Timestamp(status["first_hour"]) == local["held_out"][0]
    assert (
        pd.Timestamp(status["last_hour"]) == local["newest"] == pd.Timestamp(status["stored_until"])
    )
    assert status["hours_run"] == HOLDOUT
    assert "caught up" in status["activity"] and str(local["newest"]) in status["activity"]
    # Accelerated: the loop's clock passed all the held-out hours in the minutes `up` took.
    assert pd.Timestamp(status["clock"]) > local["newest"] + pd.Timedelta(hours=1)
    assert took < HOLDOUT * 3600, "the replay ran on the wall clock"
    decided, snapshots = ledger_rows(local["root"])
    assert (decided["kind"] == "decision").all(), decided[["market", "reason"]].tail()
    for market in MARKETS:
        hours = sorted(pd.to_datetime(decided.loc[decided["market"] == market, "time"]).unique())
        assert hours == local["held_out"], market
    assert snapshots == HOLDOUT
    health = requests.get(f"{local['url']}/trading/healthz", timeout=10).json()
    assert health["phase"] == "caught_up" and health["running"] is True


def test_after_the_stored_hours_the_loop_records_nothing(local) -> None:
    wait_for_phase("caught_up")
    before = ledger_rows(local["root"])
    time.sleep(4 * 3600 / SPEED)  # four more hours on the loop's clock
    after = ledger_rows(local["root"])
    assert len(after[0]) == len(before[0]) and after[1] == before[1]
    assert loop_status()["hours_run"] == HOLDOUT


def test_status_reports_healthy_and_caught_up(local) -> None:
    done = cluster("--set", local["state"], "status", timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert '"hybrid": "RUNNING"' in done.stdout and '"phase": "caught_up"' in done.stdout
    for market in MARKETS:  # each model's age, measured at the newest hour it predicted
        line = re.search(rf"^model {market}: v0001, trained through (\S+ \S+|\S+), (\d+) h old",
                         done.stdout, re.MULTILINE)  # fmt: skip
        assert line and 0 < int(line.group(2)) < 2160, done.stdout[-3000:]  # not stale
    assert done.stdout.rstrip().endswith("healthy")


def test_up_prints_the_status_url_with_the_token_only_in_its_fragment(local) -> None:
    token = os.environ["HYBRID_ADMIN_TOKEN"]
    out, err = local["first"].stdout, local["first"].stderr
    (line,) = [line for line in out.splitlines() if line.startswith("Status page:")]
    url = urlsplit(line.split()[-1])
    assert f"{url.scheme}://{url.netloc}" == local["url"] and url.path == "/status"
    assert url.fragment == f"token={token}" and token not in url.path + url.query
    assert out.count(token) == 1 and token not in err
    page = requests.get(line.split()[-1], timeout=10)  # a client never sends the fragment
    assert page.status_code == 200 and "hybrid-trader" in page.text
    written = [p for p in local["root"].rglob("*") if p.is_file() and p.suffix != ".parquet"]
    assert any(p.name == "cluster.json" for p in written)
    assert not [p for p in written if token in p.read_text(errors="replace")]
    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    leaked = [p for p in logs.rglob("*") if p.is_file() and token in p.read_text(errors="ignore")]
    assert not leaked, f"the admin token reached Ray's logs: {leaked[:3]}"


def test_second_up_starts_nothing_twice(local) -> None:
    from trading.loop import get_loop

    wait_for_phase("caught_up")
    actor = get_loop()._actor_id.hex()
    before, rows = loop_status(), ledger_rows(local["root"])
    again = cluster(*local["up_args"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert "every market already had one" in again.stdout
    assert get_loop()._actor_id.hex() == actor, "a second loop replaced the running one"
    after = loop_status()
    assert (after["hours_run"], after["first_hour"]) == (before["hours_run"], before["first_hour"])
    assert len(ledger_rows(local["root"])[0]) == len(rows[0])


def test_up_direct_ingress_refuses_a_joined_head_that_routes_through_its_proxy(local) -> None:
    from trading.loop import get_loop

    actor, hours = get_loop()._actor_id.hex(), loop_status()["hours_run"]
    refused = cluster(*local["up_args"], "--direct-ingress", timeout=300)
    assert refused.returncode == 2, refused.stdout[-2000:]
    assert "not started in direct-ingress mode" in refused.stderr
    assert "cluster down" in refused.stderr and "training" not in refused.stdout
    assert get_loop()._actor_id.hex() == actor and loop_status()["hours_run"] >= hours
    health = requests.get(f"{local['url']}/trading/healthz", timeout=10).json()
    assert health["running"] is True


def test_status_page_over_http_and_in_a_browser(local, tmp_path) -> None:
    page = requests.get(f"{local['url']}/status", timeout=10)
    assert page.status_code == 200 and "hybrid-trader" in page.text
    data = requests.get(f"{local['url']}/trading/v1/status", timeout=10)
    assert data.status_code == 401, "account data must need the token"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    (line,) = [s for s in local["first"].stdout.splitlines() if s.startswith("Status page:")]
    url = line.split()[-1]  # as `up` printed it, token in the fragment
    shot = Path(os.environ.get("STATUS_SCREENSHOT", tmp_path / "status.png"))
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000",
              "--enable-logging=stderr", "--v=0"]  # fmt: skip
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert ":ERROR:CONSOLE" not in dom.stderr and "Uncaught" not in dom.stderr, dom.stderr[-2000:]
    assert "<td>llm</td>" in dom.stdout and "KRW-NEW" in dom.stdout, dom.stdout[-2000:]
    assert "caught up with the stored candles" in dom.stdout
    assert "<th>trained through</th>" in dom.stdout and "<td>v0001</td>" in dom.stdout
    subprocess.run([*common, "--window-size=900,1100", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    assert shot.stat().st_size > 10_000


def test_down_stops_the_loop_keeps_the_ledger_and_the_joined_head(local, ray_head) -> None:
    rows = len(ledger_rows(local["root"])[0])
    done = cluster("--set", local["state"], "down", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ledger intact" in done.stdout and "was joined, so it keeps running" in done.stdout
    from trading.loop import get_loop

    with pytest.raises(ValueError):
        get_loop()
    with Ledger(local["root"] / "ledger.sqlite") as ledger:
        assert len(ledger.decisions_frame()) == rows and ledger.integrity_check() == "ok"
    reply = requests.get(
        f"{ray_head.dashboard_url}/api/version", headers=ray_head.auth_headers(), timeout=10
    )
    assert reply.status_code == 200, "down stopped a head it had only joined"
