"""`configs/cluster.yaml`: the local single-node mode's ports and paths, the first run's replay
of held-out stored hours, and the retraining plan."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from features.config import CONFIG_DIR, Strict, load_config


class RayConfig(Strict):
    num_cpus: int | None = Field(None, ge=1)
    port: int = Field(6379, ge=1024, le=65535)
    dashboard_port: int = Field(8265, ge=1024, le=65535)


class ServePorts(Strict):
    port: int = Field(8000, ge=1024, le=65535)
    host: str = "127.0.0.1"  # 0.0.0.0 where a port is published (docker-compose.yml)
    deploy_config: str = "configs/serve_deploy.yaml"
    # Ray Serve's experimental throughput-optimized mode (`serve.address`): the graph's ingress
    # replica answers on a port of its own, the proxy on `port` stays as the fallback. A property
    # of the head: set when `up` starts one.
    direct_ingress: bool = False


class Paths(Strict):
    registry: str = "registry"
    ledger: str = "runs/ledger.sqlite"
    cache: str = "cache/candles"
    state: str = "runs/cluster.json"


class TrainPlan(Strict):
    """`up` (and `add-market`) fit markets without a model: at most `max_concurrent` at once."""

    profile: str = "quick"
    max_concurrent: int = Field(4, ge=1, le=256)


class ReplayPlan(Strict):
    """Offline (`up --data-dir`): the newest `holdout_hours` stored hours are kept out of training
    and replayed by the loop on an accelerated clock (`clock_speed` x real time); 0: off."""

    holdout_hours: int = Field(336, ge=0, le=8760)
    clock_speed: float = Field(1200.0, gt=0, le=1e6)  # 1200: an hour every 3 s


class RetrainPlan(Strict):
    """Every `every_hours`, refit each market whose model read candles more than `fresh_hours`
    older than the newest (so a retraining run that was interrupted refits only the rest), at most
    `max_concurrent` markets at once."""

    enabled: bool = True
    every_hours: float = Field(168.0, gt=0)
    profile: str = "quick"
    tune: bool = False
    fresh_hours: float = Field(24.0, ge=0)
    max_concurrent: int = Field(4, ge=1, le=256)


class ClusterConfig(Strict):
    ray: RayConfig = RayConfig()
    serve: ServePorts = ServePorts()
    paths: Paths = Paths()
    train: TrainPlan = TrainPlan()
    replay: ReplayPlan = ReplayPlan()
    retrain: RetrainPlan = RetrainPlan()


def load_cluster_config(
    path: Path | str = CONFIG_DIR / "cluster.yaml", overrides: list[str] | None = None
) -> ClusterConfig:
    return load_config(ClusterConfig, path, overrides)
