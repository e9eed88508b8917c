"""`python -m cluster add-market KRW-DOGE`: train, serve and trade one more market while the
system runs, with no restart.

1. The market is fitted on the running cluster (`train.fit_cli.fit_markets`, skipped when a fresh
   model is already registered and gated), on the candles `up` trains from (offline, up to the
   same held-out hour as the first run).
2. The deploy config `up` last deployed is deployed again with the market added. In multiplexed
   mode only the `user_config` `markets` of the Ingress (its routes) and of the pool (which loads
   only served markets) change: a lightweight update, every replica keeps running and the pool
   loads the new market's bundle on its first request. In per_market mode the market is a new
   deployment, so the hybrid app's `args` change and Serve replaces that app's replicas (a market
   list in the args is the app's code version); use multiplexed serving for many markets.
3. The trading app's `args` gain the market: its keeper is replaced, finds the running
   TradingLoop actor and hands it the list; the loop trades the market from its next hour.
"""

from __future__ import annotations

import argparse
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from cluster.config import ClusterConfig
from cluster.local import (
    APPS,
    State,
    UpError,
    candles_dir,
    prepare_secrets,
    serve_deploy,
    wait_http,
)
from features.config import resolve_path
from features.exchange import check_market
from serve.config import MULTIPLEXED_DEPLOYMENT

DEPLOYED = "serve_deploy.local.yaml"  # what `up` deployed last, in the state's folder


def add_parser(sub: Any) -> None:
    add = sub.add_parser("add-market", help="train, serve and trade one more market, no restart")
    add.add_argument("market", help="e.g. KRW-DOGE")
    add.add_argument("--profile", help="training profile (default: configs/cluster.yaml train)")


def with_market(config: dict[str, Any], markets: list[str]) -> tuple[dict[str, Any], str]:
    """The deploy config serving and trading `markets`, and how Serve will apply it."""
    apps = {app["name"]: app for app in config["applications"]}
    hybrid, trading = apps[APPS[0]], apps[APPS[1]]
    trading["args"]["markets"] = markets
    mode = (hybrid["args"].get("serving") or {}).get("mode", "per_market")
    if mode == "multiplexed":
        deployments = {d["name"]: d for d in hybrid.setdefault("deployments", [])}
        for name in ("Ingress", MULTIPLEXED_DEPLOYMENT):  # the routes, and the pool's guard
            if name not in deployments:
                deployments[name] = {"name": name}
                hybrid["deployments"].append(deployments[name])
            deployments[name].setdefault("user_config", {})["markets"] = markets
        return config, "multiplexed: the served market lists changed, no replica restarted"
    hybrid["args"]["markets"] = markets
    return config, "per_market: a new deployment, so Serve replaced the hybrid app's replicas"


def _fit(state: State, market: str, profile: str, cfg: ClusterConfig) -> str:
    from train.fit_cli import FitRequest, fit_markets

    until = datetime.fromisoformat(state.until) if state.until else None
    (verdict,) = fit_markets(
        FitRequest(
            [market],
            state.data_dir,
            state.registry,
            profile,
            until=until,
            ray_address=state.gcs_address,
            max_concurrent=1,
            fresh_hours=cfg.retrain.fresh_hours,
        )  # fmt: skip
    )
    if not (verdict.promoted or verdict.skipped):
        raise UpError(f"no model was promoted for {market}: {verdict}")
    return str(verdict)


def cmd_add_market(args: argparse.Namespace, cfg: ClusterConfig, train_hours: int) -> int:
    market = check_market(args.market)
    state_path = Path(resolve_path(cfg.paths.state))
    state = State.load(state_path)
    prepare_secrets(state_path.parent)
    if market in state.markets:
        print(f"{market} is already trained, served and traded ({', '.join(state.markets)})")
        return 0
    candles_dir(state.data_dir if state.offline else None, cfg.paths.cache, [market], train_hours)
    import ray

    ray.init(address=state.gcs_address, ignore_reinit_error=True)
    verdict = _fit(state, market, args.profile or cfg.train.profile, cfg)
    markets = [*state.markets, market]
    deployed = state_path.parent / DEPLOYED
    if not deployed.is_file():
        raise UpError(f"{deployed} is missing: was the system started with `python -m cluster up`?")
    config, how = with_market(yaml.safe_load(deployed.read_text()), markets)
    serve_deploy(config, deployed, state.dashboard_url)
    wait_http(f"{state.serve_url}/healthz", lambda body: market in body["ready"])
    state.markets = markets
    state.save(state_path)
    _tell_retrainer(markets)
    ray.shutdown()
    print(f"{market}: trained ({verdict}); served ({how}); traded from the loop's next hour")
    return 0


def _tell_retrainer(markets: list[str]) -> None:
    from cluster.retrain import get_retrainer

    with suppress(ValueError):  # retraining is off
        get_retrainer().set_markets.remote(markets)
