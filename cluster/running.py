"""`python -m cluster status|down`: what a running local system (started by `up`) is doing, and
stopping it. As in `cluster.__main__`, Ray loads only inside the commands, after `prepare_secrets`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cluster.config import ClusterConfig
from cluster.local import APPS, State, model_line, prepare_secrets, served_models
from cluster.local_ray import stop_head_group
from features.config import resolve_path


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
    models = served_models(state.serve_url)
    keys = ("mode", "running", "phase", "hours_run", "first_hour", "last_hour", "stored_until",
            "alarm", "halted_markets", "arms", "accuracy", "serve_at")  # fmt: skip
    report = {"ray": ray.cluster_resources(), "serve": apps, "health": health, "models": models,
              "loop": {k: loop.get(k) for k in keys}, "retrain": retrain}  # fmt: skip
    print(json.dumps(report, indent=1, default=str))
    for market, model in sorted(models.items()):
        print(f"model {market}: {model_line(model)}")
    print(f"loop: {loop['activity']}")
    problems = [f"Serve app {n} is {s}" for n, s in apps.items() if s != "RUNNING"]
    problems += [f"loop alarm: {loop['alarm']}"] if loop["alarm"] else []
    problems += [f"{m} halted: {why}" for m, why in (loop.get("halted_markets") or {}).items()]
    stale = [f"{m}'s model {v['version']} is stale" for m, v in models.items() if v.get("stale")]
    problems += stale
    problems += [] if loop["running"] else ["the trading loop is not running"]
    print("healthy" if not problems else "NOT healthy: " + "; ".join(problems))
    return 0 if not problems else 1


def _stop_head(state: State) -> str:
    """Stop the head `up` started, by its process group: never `ray stop` (every Ray here)."""
    if not state.started_head:
        return f"the Ray head at {state.gcs_address} was joined, so it keeps running"
    if state.head_pid is None:
        return (
            f"the Ray head at {state.gcs_address} was started by an older `up` that kept no "
            "process id: stop it with `ray stop` if no other Ray runs on this machine"
        )
    stopped = stop_head_group(state.head_pid, state.head_port)
    return f"the Ray head (process group {state.head_pid}) " + (
        "stopped" if stopped else "had already stopped"
    )


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
    if not state.started_head:  # a head `up` started goes with everything on it, below
        serve.delete(APPS[0])
    ray.shutdown()
    head = _stop_head(state)
    state_path.unlink()
    hours = final["hours_run"] if final else 0
    print(f"stopped: the loop ({hours} hours this run), Serve, the retrainer; {head}; "
          f"ledger intact at {state.ledger}")  # fmt: skip
    return 0
