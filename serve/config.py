"""`ServeConfig`: what the Serve graph serves, where its models and candles come from, and how much
of the cluster each market's predictor takes.

It is the `args` of the `hybrid` application in `configs/serve_deploy.yaml` (and in KubeRay's
RayService, which embeds that file): Serve validates them into this model before the graph is
built (`serve.app.build_app`), and `python -m cluster up` passes a `model_dump()` of one. The
markets are not repeated here: left out, they are `configs/features.yaml`'s.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from features.config import MarketList, Strict, load_features_config, resolve_path


class SourceConfig(Strict):
    """Where a predictor reads candles when a request carries none."""

    kind: Literal["parquet", "upbit"] = "parquet"
    data_dir: str = "../shared/data/ohlcv"
    cache_dir: str = "cache/candles"  # upbit: the Parquet cache in front of the exchange
    upbit_base_url: str = "https://api.upbit.com"
    binance_base_url: str = "https://api.binance.com"  # upbit: the premium group's USDT side
    timeout_s: float = Field(5.0, gt=0)


class PredictorDeployment(Strict):
    """Serve options of every market's HybridPredictor, whichever markets are configured. An entry
    named after a market in the deploy config's `deployments` list overrides them for that market
    (Serve applies it over these)."""

    num_replicas: int = Field(1, ge=1, le=100)
    num_cpus: float = Field(0.1, gt=0, le=64)  # fractional: on 2 cores a whole CPU each never fits


MULTIPLEXED_DEPLOYMENT = "MultiplexedPredictor"  # the pool's deployment name (multiplexed mode)


class ServingConfig(Strict):
    """How markets map to predictor processes (README "Choosing the serving mode").

    `per_market`: one HybridPredictor deployment per market, each replica a whole process (torch,
    LightGBM, pandas: ~700 MB) holding one bundle of a few MB; right for a handful of markets.
    `multiplexed`: one MultiplexedPredictor pool of `replicas` replicas, each holding up to
    `models_per_replica` bundles, the least recently used evicted (`@serve.multiplexed`); requests
    carry the model id `<market>@<version>`. Its replicas take `predictor.num_cpus` each.
    """

    mode: Literal["per_market", "multiplexed"] = "per_market"
    replicas: int = Field(2, ge=1, le=100)  # multiplexed: the fixed pool
    models_per_replica: int = Field(24, ge=1, le=1000)  # multiplexed: bundles a replica holds


class MarketSet(Strict):
    """The served markets as the Ingress's and the MultiplexedPredictor's `user_config` give them:
    a change there is a lightweight update, so a market is added without restarting a replica."""

    markets: MarketList


class ServeConfig(Strict):
    markets: MarketList | None = None  # None: the markets of `features_config`
    features_config: str = "configs/features.yaml"
    registry: str = "registry"  # a path (relative to the project root) or URI every replica reads
    source: SourceConfig = SourceConfig()
    poll_s: float = Field(5.0, gt=0, le=3600)  # how often each replica reads CURRENT
    max_candles: int = Field(5000, ge=1000)  # per request, to bound work per call
    # A model whose training window (metadata `train_window`) ended longer ago than this, at the
    # hour it predicts, is served with `stale: true`: the loop opens no position on it. A bundle
    # is the last walk-forward fold's model, so it starts out one test fold old (quick profile:
    # ~1,030 h); 2,160 h (90 days) is then about six weeks of failed weekly retraining. The full
    # profile's folds are longer (~4,400 h on the shared data): raise it for full-profile models.
    max_model_age_hours: float = Field(2160.0, gt=0)
    sizing_config: str = "configs/sizing.yaml"
    predictor: PredictorDeployment = PredictorDeployment()
    serving: ServingConfig = ServingConfig()

    def served_markets(self) -> list[str]:
        """The markets that get a predictor: `markets`, else configs/features.yaml's."""
        if self.markets is not None:
            return self.markets
        return load_features_config(resolve_path(self.features_config)).markets

    def predictor_deployments(self) -> list[str]:
        """The names of the graph's predictor deployments: one per market, or the one pool. A deploy
        config may give options only to deployments the graph has (Serve refuses the others)."""
        if self.serving.mode == "multiplexed":
            return [MULTIPLEXED_DEPLOYMENT]
        return self.served_markets()

    def registry_root(self) -> str:
        return resolve_path(self.registry)
