"""The Serve graph as the tests deploy it: `serve deploy` of configs/serve_deploy.yaml, pointed at a
test registry, the real candles and the Groq/Ollama stand-ins, on the session's Ray head."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
GROQ_KEY = "gsk_test_serve_graph_key_5Tq9"
APP_NAME = "hybrid"


@dataclass(frozen=True)
class ServedApp:
    url: str
    registry: Path


def deploy_config(
    registry: Path, data_dir: Path, sizing: Path, port: int, markets: list[str]
) -> dict[str, Any]:
    """configs/serve_deploy.yaml as shipped, pointed at the test's registry; two BTC replicas."""
    config = yaml.safe_load((PROJECT_ROOT / "configs" / "serve_deploy.yaml").read_text())
    config["http_options"]["port"] = port
    app = config["applications"][0]
    config["applications"] = [app]  # the prediction graph only: no trading loop here
    args = app["args"]  # serve.config.ServeConfig fields
    args.update(registry=str(registry), poll_s=0.5, markets=markets, sizing_config=str(sizing))
    args["source"]["data_dir"] = str(data_dir)
    app["runtime_env"] = {"env_vars": {"GROQ_API_KEY": GROQ_KEY}}  # the replicas' environment
    keep = {"Ingress", "SizingNode", *markets}
    app["deployments"] = [d for d in app["deployments"] if d["name"] in keep]
    for deployment in app["deployments"]:
        if deployment["name"] == "KRW-BTC":
            deployment.pop("autoscaling_config", None)
            deployment["num_replicas"] = 2
    return config


def sizing_yaml(path: Path, groq_url: str, ollama_url: str) -> Path:
    sizing = yaml.safe_load((PROJECT_ROOT / "configs" / "sizing.yaml").read_text())
    sizing["deadline_s"] = 2.0
    sizing["groq"]["base_url"] = groq_url
    sizing["ollama"]["host"] = ollama_url
    path.write_text(yaml.safe_dump(sizing))
    return path


def serve_deploy(config_path: Path, dashboard_url: str) -> None:
    serve_cli = shutil.which("serve", path=str(Path(sys.executable).parent))
    deployed = subprocess.run(
        [serve_cli, "deploy", str(config_path), "--address", dashboard_url],
        capture_output=True, text=True, timeout=120, env=os.environ.copy(),
    )  # fmt: skip
    if deployed.returncode != 0:
        raise RuntimeError(f"serve deploy failed:\n{deployed.stderr[-2000:]}")


def wait_ready(url: str, ready: list[str], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            reply = requests.get(f"{url}/healthz", timeout=5)
            if reply.status_code == 200 and reply.json()["ready"] == ready:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise RuntimeError(f"the Serve app did not become ready at {url}")


def deploy_beside(config: dict[str, Any], path: Path, dashboard_url: str, token: str) -> None:
    """`serve deploy` of `config`'s one application beside whatever the head already serves from a
    deploy config.

    A deploy config is the whole declarative state: applications it leaves out are deleted. So the
    applications deployed now are read back from the dashboard's Serve API and deployed again as
    they are (unchanged code and args: Serve restarts none of their replicas), with `config`'s.
    """
    (app,) = config["applications"]
    reply = requests.get(
        f"{dashboard_url}/api/serve/applications/",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    reply.raise_for_status()
    details = reply.json()
    deployed = [
        a["deployed_app_config"]
        for name, a in (details.get("applications") or {}).items()
        if a.get("deployed_app_config") and name != app["name"]
    ]
    path.write_text(yaml.safe_dump({**config, "applications": [*deployed, app]}, sort_keys=False))
    serve_deploy(path, dashboard_url)
