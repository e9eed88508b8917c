"""The local single-node mode: `up` brings the whole system up on this machine, `status` says how
it is, `down` stops it with the ledger intact.

`up` starts (or joins) a Ray head with the dashboard and token auth (`cluster.local_ray`, the
way the tests start theirs), trains the markets that have no model yet, deploys the Serve graph and
the trading keeper with `serve deploy` (the same config a cluster uses, its `args` filled with
`ServeConfig` and `LoopSettings` dumps), and starts the retraining schedule. Every step finds what
is already running, so a second `up` starts nothing twice.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests
import yaml
from pydantic import BaseModel, ValidationError

from features.config import ConfigError, resolve_path
from features.exchange import KST
from serve.address import GRAPH_APP, LOOPBACK, AddressError, NotDirect, direct_url
from serve.admin import ADMIN_TOKEN_ENV
from serve.config import ServeConfig
from trading.loop_settings import LoopSettings  # plain data, no Ray: it loads after the secrets

APPS = (GRAPH_APP, "trading")


class UpError(RuntimeError):
    """`up` cannot go on; the message says why and what to do instead."""


@dataclass
class State:
    """What `up` started or joined, kept in runs/cluster.json for `status` and `down` (no secret:
    the tokens stay in the environment and their 0600 files)."""

    gcs_address: str
    dashboard_url: str
    serve_url: str
    started_head: bool
    markets: list[str]
    registry: str
    ledger: str
    data_dir: str  # the Parquet candles training reads (offline: --data-dir; online: the cache)
    mode: str
    offline: bool = True  # online, Serve and the loop read Upbit itself
    head_pid: int | None = None  # the head's process group, when `up` started it
    until: str | None = None  # offline replay: the newest hour training sees (KST), for add-market
    direct_url: str | None = None  # direct ingress: where the graph's replica answered at `up`

    @property
    def head_port(self) -> int:
        return int(self.gcs_address.rsplit(":", 1)[1])

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> State:
        if not path.is_file():
            raise UpError(f"nothing is up: {path} does not exist (run `python -m cluster up`)")
        return cls(**json.loads(path.read_text()))


def _secret_file(path: Path) -> str:
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    path.touch(mode=0o600)
    path.write_text(value)
    return value


def prepare_secrets(runs: Path) -> dict[str, str]:
    """Token auth for Ray and the admin token for HTTP, set in this process before Ray loads.

    Values come from the environment when set; otherwise Ray's token file (~/.ray/auth_token)
    and runs/admin_token (mode 0600) are created. Their values are never printed.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if not os.environ.get("RAY_AUTH_TOKEN"):
        os.environ["RAY_AUTH_TOKEN"] = _secret_file(Path.home() / ".ray" / "auth_token")
    if not os.environ.get(ADMIN_TOKEN_ENV):
        os.environ[ADMIN_TOKEN_ENV] = _secret_file(runs / "admin_token")
    return {"ray_token": "~/.ray/auth_token or $RAY_AUTH_TOKEN",
            "admin_token": f"{runs / 'admin_token'} or ${ADMIN_TOKEN_ENV}"}  # fmt: skip


def candles_dir(data_dir: str | None, cache: str, markets: list[str], hours: int) -> str:
    """The Parquet folder to train and trade from: `--data-dir`, or Upbit through the cache."""
    if data_dir:
        folder = resolve_path(data_dir)
        missing = [m for m in markets if not Path(folder, f"{m}_minute60.parquet").is_file()]
        if "://" not in folder and missing:
            raise UpError(f"--data-dir {folder} has no candles for {', '.join(missing)}")
        return folder
    from features.candle_cache import CachedSource
    from features.sources import UpbitSource

    upbit = UpbitSource(timeout=5.0)
    try:
        upbit.markets()
    except Exception as exc:  # noqa: BLE001 - any failure means: offline
        raise UpError(
            f"Upbit cannot be reached ({exc}). Offline, run from stored candles instead: "
            "python -m cluster up --data-dir ../shared/data/ohlcv"
        ) from exc
    cached = CachedSource(upbit, resolve_path(cache))
    start = time.time() - hours * 3600
    for market in markets:
        cached.history(market, start=_kst(start))
    return resolve_path(cache)


def _kst(epoch: float):
    import pandas as pd

    return pd.Timestamp(epoch, unit="s", tz="UTC").tz_convert(KST).tz_localize(None)


def _dashboard_up(url: str) -> bool:
    headers = {"Authorization": f"Bearer {os.environ.get('RAY_AUTH_TOKEN', '')}"}
    try:
        return requests.get(f"{url}/api/version", headers=headers, timeout=3).status_code == 200
    except requests.RequestException:
        return False


def app_args(model: type[BaseModel], config: dict[str, Any], app: str, path: Path) -> Any:
    """The `args` of application `app` of a deploy config, validated as Serve will validate them."""
    try:
        (found,) = [a for a in config["applications"] if a["name"] == app]
        return model.model_validate(found.get("args") or {})
    except ValidationError as exc:
        raise ConfigError(f"{path}: application {app!r} args: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path} must hold exactly one application named {app!r}") from exc


def deploy_config(
    template: dict[str, Any], serve: ServeConfig, loop: LoopSettings, port: int, host: str
) -> dict[str, Any]:
    """The deploy config with this machine's HTTP address and these settings as the apps' args
    (dumps: Serve validates them again into the same models). Per-deployment options for a
    deployment the graph does not have (a market not served; every market in multiplexed mode,
    whose predictor is the one pool) are dropped: Serve refuses options for a deployment the app
    does not have. Serve listening beyond loopback makes the prediction routes require the bearer
    token."""
    config = json.loads(json.dumps(template))  # a deep copy
    config["http_options"].update(port=port, host=host)
    apps = {app["name"]: app for app in config["applications"]}
    hybrid = apps["hybrid"]
    hybrid["args"] = serve.model_dump(mode="json")
    served = {"Ingress", "SizingNode", *serve.predictor_deployments()}
    hybrid["deployments"] = [d for d in hybrid.get("deployments", []) if d["name"] in served]
    for deployment in hybrid["deployments"]:
        if deployment["name"] == "Ingress" and host not in LOOPBACK:
            deployment.setdefault("user_config", {})["require_token"] = True
    apps["trading"]["args"] = loop.model_dump(mode="json")
    return config


def serve_deploy(config: dict[str, Any], path: Path, dashboard_url: str) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    serve_cli = str(Path(sys.executable).with_name("serve"))
    done = subprocess.run(
        [serve_cli, "deploy", str(path), "--address", dashboard_url],
        capture_output=True, text=True, env=os.environ.copy(), timeout=180,
    )  # fmt: skip
    if done.returncode != 0:
        raise UpError(f"serve deploy failed:\n{done.stderr[-1500:]}")


def wait_http(url: str, check, timeout_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            reply = requests.get(url, timeout=5)
            last = reply.text[:300]
            if reply.status_code == 200 and check(reply.json()):
                return reply.json()
        except (requests.RequestException, ValueError) as exc:
            last = str(exc)
        time.sleep(1)
    raise UpError(f"{url} did not become ready in {timeout_s:.0f} s (last answer: {last})")


NOT_DIRECT_HINT = (
    "`up` sets direct ingress only on a head it starts: run `python -m cluster down`, then "
    "`up --direct-ingress`, or drop the flag"
)


def wait_direct(state: State, timeout_s: float = 120) -> str:
    """The graph's own address under direct ingress, once its replica has a port; refused when
    the head answers through its proxy only (a head `up` joined keeps the mode it started in)."""
    deadline = time.monotonic() + timeout_s
    last: str = "no port listed"
    while time.monotonic() < deadline:
        try:
            found = direct_url(state.dashboard_url, GRAPH_APP)
        except NotDirect as exc:
            raise UpError(f"{exc}; {NOT_DIRECT_HINT}") from exc
        except AddressError as exc:
            found, last = None, str(exc)
        if found:
            return found
        time.sleep(1)
    raise UpError(
        f"the graph got no port of its own in {timeout_s:.0f} s ({last}); {NOT_DIRECT_HINT}"
    )


def refuse_not_direct(dashboard_url: str) -> None:
    """Before deploying anything: a head already running apps through its proxy only is not in
    direct-ingress mode (a head with no app yet can only tell once the graph is deployed)."""
    try:
        direct_url(dashboard_url, GRAPH_APP)
    except NotDirect as exc:
        raise UpError(f"{exc}; {NOT_DIRECT_HINT}") from exc
    except AddressError:
        pass  # the dashboard's hiccup: `wait_direct` asks again after the deploy


def served_models(serve_url: str) -> dict[str, dict[str, Any]]:
    """Serve's /v1/models (each market's version, training window, age, staleness)."""
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    reply = requests.get(
        f"{serve_url}/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    return reply.json()["models"] if reply.status_code == 200 else {}


def model_line(model: dict[str, Any]) -> str:
    if not model.get("version"):
        return f"no model ({model.get('last_error')})"
    age = model.get("age_hours")
    aged = "age not known until its first prediction" if age is None else (
        f"{age:.0f} h old at {model['age_at']}" + (" STALE" if model["stale"] else "")
    )  # fmt: skip
    return f"{model['version']}, trained through {model['trained_through']}, {aged}"
