"""`python -m cluster` refuses what it must refuse before starting anything."""

from __future__ import annotations

import os
import subprocess

from cluster_run import PROJECT_ROOT, cluster


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return cluster(*args, timeout=120, env=env)


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


def test_up_refuses_paper_against_a_live_loop_on_its_ledger(tmp_path, ohlcv_dir) -> None:
    """The ledger's lease says a live loop trades on it: `up --paper` names that mode and the
    holder, and starts nothing (no head, no state file)."""
    from trading.ledger import Ledger

    ledger = tmp_path / "ledger.sqlite"
    with Ledger(ledger) as opened:
        opened.lease.acquire("TradingLoop abc123 on head-a", "live", ttl_s=600)
    args = ["--set", f"paths.state={tmp_path}/c.json", "up", "--paper"]
    done = run(*args, "--data-dir", str(ohlcv_dir), "--ledger", str(ledger), env=dict(os.environ))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "a live trading loop is running" in done.stderr
    assert "TradingLoop abc123 on head-a (live mode" in done.stderr
    assert not (tmp_path / "c.json").exists(), "it started something before refusing"


def test_serve_beyond_loopback_requires_the_token_on_the_prediction_routes() -> None:
    import yaml

    from cluster.local import deploy_config
    from serve.config import ServeConfig
    from trading.loop_settings import LoopSettings

    template = yaml.safe_load((PROJECT_ROOT / "configs" / "serve_deploy.yaml").read_text())
    for host, required in (("127.0.0.1", False), ("0.0.0.0", True)):
        config = deploy_config(template, ServeConfig(), LoopSettings(), 8000, host)
        (hybrid,) = [a for a in config["applications"] if a["name"] == "hybrid"]
        (ingress,) = [d for d in hybrid["deployments"] if d["name"] == "Ingress"]
        assert ingress["user_config"]["require_token"] is required, host
        assert config["http_options"]["request_timeout_s"] > 0


def test_the_head_never_gets_the_exchange_keys() -> None:
    from cluster.local_ray import head_env

    environ = {"UPBIT_ACCESS_KEY": "a", "UPBIT_SECRET_KEY": "s", "HOME": "/root", "PATH": "/bin"}
    env = head_env(environ, token="t")
    assert "UPBIT_ACCESS_KEY" not in env and "UPBIT_SECRET_KEY" not in env
    assert env["HOME"] == "/root" and env["RAY_AUTH_TOKEN"] == "t"
