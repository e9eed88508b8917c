"""`python -m cluster up|status|down`: the whole system on one machine, paper trading by default."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cluster import markets as market_list
from cluster.config import ClusterConfig, load_cluster_config
from cluster.local import (
    APPS,
    State,
    UpError,
    _dashboard_up,
    candles_dir,
    deploy_config,
    prepare_secrets,
    serve_deploy,
    start_head,
    wait_http,
)
from features.config import CONFIG_DIR, ConfigError, load_features_config, resolve_path

TRAIN_HOURS = 8760 + 2000  # what the quick profile reads, plus warm-up


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
    up.add_argument("--no-retrain", action="store_true", help="do not schedule retraining")
    up.add_argument("--clock-start", help="accelerated clock: start (KST), for demos and tests")
    up.add_argument("--clock-speed", type=float, default=3600.0)
    up.add_argument("--max-hours", type=int, help="the loop stops after this many hours")
    sub.add_parser("status", help="what runs, and how it is doing")
    sub.add_parser("down", help="stop the loop (ledger intact), Serve and the Ray head up started")
    market_list.add_parser(sub)
    return parser.parse_args(argv)


def _head(args: argparse.Namespace, cfg: ClusterConfig, state_path: Path) -> tuple[str, str, bool]:
    if args.address:
        if not args.dashboard_url:
            raise UpError("--address needs --dashboard-url (jobs and serve deploy go through it)")
        return args.address, args.dashboard_url, False
    if state_path.is_file():
        old = State.load(state_path)
        if _dashboard_up(old.dashboard_url):
            return old.gcs_address, old.dashboard_url, old.started_head
    gcs, dashboard = start_head(cfg.ray.num_cpus, cfg.ray.port, cfg.ray.dashboard_port)
    return gcs, dashboard, True


def _train_missing(state: State, profile: str) -> list[str]:
    from train.__main__ import main as train_main
    from train.registry import ModelRegistry

    registry = ModelRegistry(state.registry)
    known = set(registry.markets())
    missing = [m for m in state.markets if m not in known or registry.current(m) is None]
    if missing:
        print(f"training {', '.join(missing)} ({profile} profile, through Ray): no model yet")
        code = train_main(
            ["fit", "--markets", ",".join(missing), "--profile", profile, "--data-dir",
             state.data_dir, "--registry", state.registry, "--ray-address", state.gcs_address]
        )  # fmt: skip
        if code != 0:
            raise UpError(f"training {', '.join(missing)} failed (exit {code})")
    return missing


def _loop_args(args: argparse.Namespace, state: State) -> dict[str, Any]:
    loop: dict[str, Any] = {
        "mode": state.mode,
        "data_dir": state.data_dir,
        "serve_url": state.serve_url,
        "overrides": [f"ledger.path={state.ledger}", f"loop.markets=[{', '.join(state.markets)}]"],
        "max_hours": args.max_hours,
    }
    if args.clock_start:
        loop["clock"] = {"kind": "accelerated", "start": args.clock_start,
                         "speed": args.clock_speed}  # fmt: skip
    return loop


def _check_live(args: argparse.Namespace) -> str:
    if not args.live:
        return "paper"
    from trading.upbit_broker import UpbitBroker

    UpbitBroker.from_env(base_url="https://api.upbit.com").close()  # refuses without keys
    return "live"


def cmd_up(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    mode = _check_live(args)
    runs = Path(resolve_path(cfg.paths.state)).parent
    prepare_secrets(runs)
    features = load_features_config()
    markets = args.markets.split(",") if args.markets else market_list.system_markets(features)
    data_dir = candles_dir(args.data_dir, cfg.paths.cache, markets, TRAIN_HOURS)
    state_path = Path(resolve_path(cfg.paths.state))
    gcs, dashboard, started = _head(args, cfg, state_path)
    port = args.serve_port or cfg.serve.port
    state = State(
        gcs, dashboard, f"http://127.0.0.1:{port}", started, markets,
        resolve_path(args.registry or cfg.paths.registry),
        resolve_path(args.ledger or cfg.paths.ledger), data_dir, mode,
    )  # fmt: skip
    state.save(state_path)
    import ray

    ray.init(address=gcs, ignore_reinit_error=True)  # training progress shows here
    trained = _train_missing(state, args.profile or cfg.train.profile)
    config = deploy_config(
        Path(resolve_path(cfg.serve.deploy_config)), state, port, _loop_args(args, state)
    )
    config["http_options"]["host"] = cfg.serve.host
    # The graph first, the loop once the graph answers: its first hour must find Serve ready.
    graph_only = {**config, "applications": config["applications"][:1]}
    serve_deploy(graph_only, runs / "serve_deploy.graph.yaml", dashboard)
    wait_http(f"{state.serve_url}/healthz", lambda body: body["ready"] == sorted(markets))
    serve_deploy(config, runs / "serve_deploy.local.yaml", dashboard)
    wait_http(f"{state.serve_url}/trading/healthz", lambda body: "running" in body)
    retrain = _retrainer(args, cfg, state)
    print(_summary(state, trained, retrain))
    return 0


def _retrainer(args: argparse.Namespace, cfg: ClusterConfig, state: State) -> str:
    if args.no_retrain or not cfg.retrain.enabled:
        return "retraining: off"
    from cluster.retrain import RetrainJob, start_retrainer

    job = RetrainJob(state.markets, state.data_dir, state.registry, cfg.retrain.profile,
                     cfg.retrain.tune)  # fmt: skip
    start_retrainer(state.dashboard_url, job, cfg.retrain.every_hours * 3600)
    return f"retraining: every {cfg.retrain.every_hours:g} h as a Ray job ({cfg.retrain.profile})"


def _summary(state: State, trained: list[str], retrain: str) -> str:
    return "\n".join([
        f"Ray dashboard:  {state.dashboard_url}  (token: ~/.ray/auth_token or $RAY_AUTH_TOKEN)",
        f"Serve API:      {state.serve_url}/v1/predict/{{market}}",
        f"Health:         {state.serve_url}/healthz",
        f"Status page:    {state.serve_url}/status  (admin token: runs/admin_token or "
        "$HYBRID_ADMIN_TOKEN)",
        f"Trading loop:   {state.mode} mode on {', '.join(state.markets)}; ledger {state.ledger}",
        f"Models:         {state.registry}" + (f" (trained now: {', '.join(trained)})" if trained
                                               else " (every market already had one)"),
        retrain,
        "Ray head:       " + ("started by up" if state.started_head else "joined"),
    ])  # fmt: skip


def cmd_status(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    state = State.load(Path(resolve_path(cfg.paths.state)))
    prepare_secrets(Path(resolve_path(cfg.paths.state)).parent)
    import ray
    import requests

    ray.init(address=state.gcs_address, ignore_reinit_error=True, log_to_driver=False)
    from ray import serve

    from cluster.retrain import get_retrainer
    from trading.loop import get_loop

    apps = {
        name: getattr(app.status, "value", str(app.status))
        for name, app in serve.status().applications.items()
    }
    health = requests.get(f"{state.serve_url}/healthz", timeout=10).json()
    loop = ray.get(get_loop().status.remote(), timeout=60)
    try:
        retrain = ray.get(get_retrainer().status.remote(), timeout=30)
    except ValueError:
        retrain = None
    report = {"ray": ray.cluster_resources(), "serve": apps, "health": health,
              "loop": {k: loop[k] for k in ("mode", "running", "hours_run", "last_hour",
                                            "alarm", "arms", "accuracy")},
              "retrain": retrain}  # fmt: skip
    print(json.dumps(report, indent=1, default=str))
    problems = [f"Serve app {n} is {s}" for n, s in apps.items() if s != "RUNNING"]
    problems += [f"loop alarm: {loop['alarm']}"] if loop["alarm"] else []
    problems += [] if loop["running"] else ["the trading loop is not running"]
    print("healthy" if not problems else "NOT healthy: " + "; ".join(problems))
    healthy = not problems
    return 0 if healthy else 1


def cmd_down(args: argparse.Namespace, cfg: ClusterConfig) -> int:
    state_path = Path(resolve_path(cfg.paths.state))
    state = State.load(state_path)
    prepare_secrets(state_path.parent)
    import ray

    ray.init(address=state.gcs_address, ignore_reinit_error=True, log_to_driver=False)
    from ray import serve

    from cluster.retrain import get_retrainer
    from trading.keeper import stop_loop

    serve.delete(APPS[1])  # the keeper first, so it cannot start the loop again
    final = stop_loop()
    try:
        retrainer = get_retrainer()
        ray.get(retrainer.stop.remote())
        ray.kill(retrainer, no_restart=True)
    except ValueError:
        pass
    serve.delete(APPS[0])
    ray.shutdown()
    if state.started_head:
        import subprocess

        subprocess.run([str(Path(sys.executable).with_name("ray")), "stop"], check=False)
    state_path.unlink()
    hours = final["hours_run"] if final else 0
    print(f"stopped: the loop ({hours} hours this run), Serve, the retrainer; "
          f"ledger intact at {state.ledger}")  # fmt: skip
    return 0


COMMANDS = {"up": cmd_up, "status": cmd_status, "down": cmd_down,
            "markets": market_list.cmd_markets}  # fmt: skip


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
