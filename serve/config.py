"""`configs/serve.yaml`: what the Serve graph serves and where its models and candles come from.

Replicas, CPUs and autoscaling per deployment are not here: they live in the Serve deploy config
(`configs/serve_deploy.yaml`), where `serve deploy` and KubeRay's RayService read them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from features.config import CONFIG_DIR, Strict, load_config, resolve_path
from features.exchange import MARKET_PATTERN


class SourceConfig(Strict):
    """Where a predictor reads candles when a request carries none."""

    kind: Literal["parquet", "upbit"] = "parquet"
    data_dir: str = "../shared/data/ohlcv"
    cache_dir: str = "cache/candles"  # upbit: the Parquet cache in front of the exchange
    upbit_base_url: str = "https://api.upbit.com"
    timeout_s: float = Field(5.0, gt=0)


class ServeConfig(Strict):
    markets: list[str] = ["KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL"]
    registry: str = "registry"
    source: SourceConfig = SourceConfig()
    poll_s: float = Field(5.0, gt=0, le=3600)  # how often each replica reads CURRENT
    max_candles: int = Field(5000, ge=1000)  # per request, to bound work per call
    sizing_config: str = str(CONFIG_DIR / "sizing.yaml")

    @field_validator("markets")
    @classmethod
    def _markets(cls, markets: list[str]) -> list[str]:
        bad = [m for m in markets if not MARKET_PATTERN.match(m)]
        if bad or not markets or len(set(markets)) != len(markets):
            raise ValueError(f"markets must be distinct names like KRW-BTC, got {markets}")
        return markets

    def registry_root(self) -> str:
        return resolve_path(self.registry)


def load_serve_config(
    path: Path | str = CONFIG_DIR / "serve.yaml", overrides: list[str] | None = None
) -> ServeConfig:
    return load_config(ServeConfig, path, overrides)
