"""`python -m cluster up|status|down`: the whole system on one machine, paper trading by default.

Ray reads its token (RAY_AUTH_MODE, RAY_AUTH_TOKEN) when it is first imported, so nothing that
imports Ray loads before `prepare_secrets` has set them: those imports sit inside the commands.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cluster import add_market, running
from cluster import markets as market_list
from cluster.config import ClusterConfig, load_cluster_config
from cluster.local import (
    APPS,
    State,
    UpError,
    _dashboard_up,
    app_args,
    candles_dir,
    deploy_config,
    prepare_secrets,
    refuse_not_direct,
    serve_deploy,
    wait_direct,
    wait_http,
)
from cluster.local_ray import HeadError, start_head
from cluster.one_loop import loop_keys, refuse_held_ledger, refuse_other_loop
from features.config import CONFIG_DIR, ConfigError, load_features_config, resolve_path
from serve.address import DIRECT_INGRESS_ENV
from serve.admin import ADMIN_TOKEN_ENV
from serve.config import ServeConfig

if TYPE_CHECKING:
    from cluster.replay import Replay
    from trading.loop_settings import ClockSettings, LoopSettings

TRAIN_HOURS = 8760 + 2000  # what the quick profile reads, plus warm-up
Head = tuple[str, str, bool, int | None]  # GCS address, dashboard URL, started by up, its pid


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cluster", description=__doc__)
    parser.add_argument("--config", default=str(CONFIG_DIR / "cluster.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start or join Ray, train what is missing, serve, trade")
    mode = up.add_mutually_exclusive_group()
    mode.add_argument("--paper", action="store_true", help="paper trading (the default)")
    mode.add_argument("--live", action="store_true", help="real orders: needs Upbit keys in env")
    up.add_argument("--data-dir", help="Parquet candles (offline); default: Upbit via the cache")
    up.add_argument("--registry", help="model registry (path or URI); default: configs/cluster")
    up.add_argument("--ledger", help="SQLite ledger file; default: configs/cluster")
    up.add_argument("--markets", help="comma-separated; default: configs/features.yaml")
    up.add_argument("--profile", help="training profile for markets without a model")
    up.add_argument("--address", help="join this running Ray head (GCS address)")
    up.add_argument("--dashboard-url", help="its dashboard, e.g. http://127.0.0.1:8265")
    up.add_argument("--serve-port", type=int)
    up.add_argument(
        "--direct-ingress", action="store_true",
        help="start the head in Ray Serve's throughput-optimized mode: the graph's ingress "
        "answers on a port of its own, no proxy hop (experimental; serve.direct_ingress)",
    )  # fmt: skip
    up.add_argument("--no-retrain", action="store_true", help="do not schedule retraining")
    up.add_argument(
        "--holdout-hours", type=int,
        help="offline: the newest N stored hours are not trained on and the loop replays them on "
        "the accelerated clock (default: configs/cluster.yaml replay.holdout_hours; 0: off)",
    )  # fmt: skip
    up.add_argument("--clock-speed", type=float, help="accelerated clock, x real time "
                    "(default: replay.clock_speed)")  # fmt: skip
    up.add_argument(
        "--clock-start", type=datetime.fromisoformat,
        help="accelerated clock: start here instead (KST, e.g. 2025-08-19T12:00:30)",
    )  # fmt: skip
    up.add_argument("--max-hours", type=int, help="the loop stops after this many hours")
    sub.add_parser("status", help="what runs, and how it is doing")
    sub.add_parser("down", help="stop the loop (ledger intact), Serve and the Ray head up started")
    market_list.add_parser(sub)
    add_market.add_parser(sub)
    return parser.parse_args(argv)


def _running_head(args: argparse.Namespace, state_path: Path) -> bool:
    """Whether `up` joins a head that already runs (a loop may be trading there)."""
    if args.address:
        return True
    return state_path.is_file() and _dashboard_up(State.load(state_path).dashboard_url)


def _direct(args: argparse.Namespace, cfg: ClusterConfig) -> bool:
    return bool(args.direct_ingress or cfg.serve.direct_ingress)


def _head(args: argparse.Namespace, cfg: ClusterConfig, state_path: Path) -> Head:
    if args.address:
        if not args.dashboard_url:
            raise UpError("--address needs --dashboard-url (jobs and serve deploy go through it)")
        return args.address, args.dashboard_url, False, None
    if state_path.is_file():
        old = State.load(state_path)
        if _dashboard_up(old.dashboard_url):
            return old.gcs_address, old.dashboard_url, old.started_head, old.head_pid
    try:
        head = start_head(
            cfg.ray.num_cpus, token=os.environ["RAY_AUTH_TOKEN"], log_dir=state_path.parent,
            port=cfg.ray.port, dashboard_port=cfg.ray.dashboard_port, num_gpus=None,
            extra_env=DIRECT_INGRESS_ENV if _direct(args, cfg) else None,
        )  # fmt: skip
    except HeadError as exc:
        raise UpError(f"{exc}\n(another Ray on these ports? --set ray.port=... "
                      "--set ray.dashboard_port=...)") from exc  # fmt: skip
    return head.gcs_address, head.dashboard_url, True, head.pid


def _train_missing(
    state: State, profile: str, replay: Replay | None, max_concurrent: int
) -> list[str]:
    from train.__main__ import FitRequest, fit_markets
    from train.registry import ModelRegistry

    registry = ModelRegistry(state.registry)
    known = set(registry.markets())
    missing = [m for m in state.markets if m not in known or registry.current(m) is None]
    if not missing:
        return []
    until = replay.until.to_pydatetime() if replay else None
    print(f"training {', '.join(missing)} ({profile} profile, through Ray"
          + (f", on candles up to {until}" if until else "") + "): no model yet")  # fmt: skip
    verdicts = fit_markets(
        FitRequest(
            missing,
            state.data_dir,
            state.registry,
            profile,
            until=until,
            ray_address=state.gcs_address,
            max_concurrent=max_concurrent,  # an interrupted `up` refits only markets still missing
        )
    )
    unpromoted = [str(v) for v in verdicts if not v.promoted and not v.skipped]
    if unpromoted:
        raise UpError(f"no model was promoted for: {'; '.join(unpromoted)}")
    return missing


def _clock(
    args: argparse.Namespace, speed: float, replay: Replay | None, delay: float
) -> ClockSettings:
    from trading.loop_settings import ClockSettings

    if args.clock_start:
        return ClockSettings(kind="accelerated", start=args.clock_start, speed=speed)
    return replay.clock(delay) if replay else ClockSettings()


def _settings(
    args: argparse.Namespace, cfg: ClusterConfig, state: State, replay: Replay | None
) -> tuple[dict[str, Any], ServeConfig, LoopSettings]:
    """The deploy config's template and its two apps' settings, filled for this machine."""
    from trading.loop_settings import LoopSettings

    path = Path(resolve_path(cfg.serve.deploy_config))
    template = yaml.safe_load(path.read_text())
    serve = app_args(ServeConfig, template, APPS[0], path)
    loop = app_args(LoopSettings, template, APPS[1], path)
    source = serve.source.model_copy(
        update={"kind": "parquet", "data_dir": state.data_dir} if state.offline
        else {"kind": "upbit", "cache_dir": resolve_path(cfg.paths.cache)}
    )  # fmt: skip
    serve = serve.model_copy(
        update={"registry": state.registry, "markets": state.markets, "source": source}
    )
    speed = args.clock_speed or cfg.replay.clock_speed
    clock = _clock(args, speed, replay, loop.trading().loop.delay_after_close_s)
    loop = loop.model_copy(update={
        "mode": state.mode, "data_dir": state.data_dir if state.offline else None,
        "cache_dir": None if state.offline else resolve_path(cfg.paths.cache),
        "serve_url": state.serve_url, "ledger": state.ledger, "markets": state.markets,
        "clock": clock, "max_hours": args.max_hours,
        "ingress_lookup": state.dashboard_url if _direct(args, cfg) else None,
    })  # fmt: skip
    return template, serve, loop


def _replay(
    args: argparse.Namespace, cfg: ClusterConfig, data_dir: str, markets: list[str]
) -> Replay | None:
    """Offline only: the newest stored hours to hold out of training and replay (None: off)."""
    if not args.data_dir:
        return None
    from cluster.replay import plan_replay

    hours = cfg.replay.holdout_hours if args.holdout_hours is None else args.holdout_hours
    return plan_replay(data_dir, markets, hours, args.clock_speed or cfg.replay.clock_speed)


def _check_live(args: argparse.Namespace) -> str:
    if not args.live:
        return "paper"
    from trading.upbit_broker import UpbitBroker

    UpbitBroker.from_env(base_url="https://api.upbit.com").close()  # refuses without keys
    return "live"


def cmd_up(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    mode = _check_live(args)
    state_path = Path(resolve_path(cfg.paths.state))
    runs = state_path.parent
    prepare_secrets(runs)
    features = load_features_config()
    markets = args.markets.split(",") if args.markets else market_list.system_markets(features)
    data_dir = candles_dir(args.data_dir, cfg.paths.cache, markets, TRAIN_HOURS)
    replay = _replay(args, cfg, data_dir, markets)
    ledger = resolve_path(args.ledger or cfg.paths.ledger)
    joined = _running_head(args, state_path)
    refuse_held_ledger(mode, ledger, joined)
    gcs, dashboard, started, pid = _head(args, cfg, state_path)
    import ray

    ray.init(address=gcs, ignore_reinit_error=True)  # training progress shows here
    if joined:
        refuse_other_loop(mode, ledger)
    if _direct(args, cfg):
        refuse_not_direct(dashboard)
    port = args.serve_port or cfg.serve.port
    state = State(
        gcs, dashboard, f"http://127.0.0.1:{port}", started, markets,
        resolve_path(args.registry or cfg.paths.registry), ledger, data_dir, mode,
        offline=bool(args.data_dir), head_pid=pid, until=str(replay.until) if replay else None,
    )  # fmt: skip
    state.save(state_path)
    trained = _train_missing(
        state, args.profile or cfg.train.profile, replay, cfg.train.max_concurrent
    )
    template, serve, loop = _settings(args, cfg, state, replay)
    # The graph first, the loop once the graph answers: its first hour must find Serve ready.
    config = deploy_config(template, serve, loop, port, cfg.serve.host)
    graph_only = {**config, "applications": config["applications"][:1]}
    serve_deploy(graph_only, runs / "serve_deploy.graph.yaml", dashboard)
    wait_http(f"{state.serve_url}/healthz", lambda body: body["ready"] == sorted(markets))
    if _direct(args, cfg):
        state.direct_url = wait_direct(state)
        state.save(state_path)
    if mode == "live":  # the keys reach the loop's process only, never the keeper or the head
        from trading.loop import start_loop

        start_loop(loop, env=loop_keys(mode))
    serve_deploy(config, runs / "serve_deploy.local.yaml", dashboard)
    wait_http(f"{state.serve_url}/trading/healthz", lambda body: "running" in body)
    retrain = _retrainer(args, cfg, state, replay)
    ray.shutdown()
    clock = f"accelerated from {args.clock_start} (--clock-start)" if args.clock_start else None
    print(_summary(state, trained, retrain, replay, runs, clock))
    return 0


def _retrainer(
    args: argparse.Namespace, cfg: ClusterConfig, state: State, replay: Replay | None
) -> str:
    if args.no_retrain or not cfg.retrain.enabled:
        return "retraining: off"
    from cluster.retrain import RetrainJob, start_retrainer

    until = str(replay.until) if replay else None
    plan = cfg.retrain
    job = RetrainJob(state.markets, state.data_dir, state.registry, plan.profile, plan.tune,
                     until, plan.fresh_hours, plan.max_concurrent)  # fmt: skip
    start_retrainer(state.dashboard_url, job, cfg.retrain.every_hours * 3600)
    return f"retraining: every {cfg.retrain.every_hours:g} h as a Ray job ({cfg.retrain.profile})"


def _summary(
    state: State,
    trained: list[str],
    retrain: str,
    replay: Replay | None,
    runs: Path,
    clock: str | None,
) -> str:
    """What runs where; the status page's URL last, with the admin token in its fragment (the
    browser never sends a fragment to the server, so it reaches no server log)."""
    models = f"Models:         {state.registry}" + (
        f" (trained now: {', '.join(trained)})" if trained else " (every market already had one)"
    )
    lines = [
        f"Ray dashboard:  {state.dashboard_url}  (token: ~/.ray/auth_token or $RAY_AUTH_TOKEN)",
        f"Serve API:      {state.direct_url or state.serve_url}/v1/predict/{{market}}",
        f"Health:         {state.serve_url}/healthz",
        *([f"Direct ingress: the graph's own port, which moves when its replica restarts "
           f"(python -m serve.address {state.dashboard_url}); the proxy at {state.serve_url} "
           "routes it too"] if state.direct_url else []),
        f"Trading loop:   {state.mode} mode on {', '.join(state.markets)}; ledger {state.ledger}",
        models,
        retrain,
        "Ray head:       " + (f"started by up (log: {runs}/ray-head-{state.head_port}.log)"
                              if state.started_head else "joined"),
    ]  # fmt: skip
    if replay:
        from cluster.replay import models_inside

        lines.append(f"Replay:         {replay.describe(clock)}")
        lines += [f"WARNING:        {w}" for w in models_inside(state.registry, state.markets,
                                                                 replay)]  # fmt: skip
    elif state.offline:
        lines.append(
            f"Clock:          {clock or 'wall clock'}: offline, the loop waits at the newest "
            "stored candle and records nothing (--holdout-hours > 0 replays stored hours)"
        )
    lines += [
        "Watch it:       python -m cluster status",
        f"Status page:    {state.serve_url}/status#token={os.environ[ADMIN_TOKEN_ENV]}",
    ]
    return "\n".join(lines)


def cmd_add_market(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    return add_market.cmd_add_market(args, cfg, TRAIN_HOURS)


COMMANDS = {"up": cmd_up, "status": running.cmd_status, "down": running.cmd_down,
            "markets": market_list.cmd_markets, "add-market": cmd_add_market}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_cluster_config(args.config, args.set)
        return COMMANDS[args.command](args, cfg)
    except (UpError, ConfigError, OSError, LookupError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
