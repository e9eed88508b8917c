"""What the trading loop actor is started with, as plain validated data, and what it builds from
it (its candle source and clock). Kept apart from the actor so that the CLI, the keeper's Serve
args and the tests can build and check settings without importing Ray.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Literal

import pandas as pd
from pydantic import Field

from features.candle_cache import CachedSource
from features.config import MarketList, Strict, resolve_path
from features.sources import CandleSource, ParquetDirSource, UpbitSource
from trading.clock import AcceleratedClock, Clock, WallClock
from trading.config import LedgerConfig, TradingConfig, load_trading_config


class ClockSettings(Strict):
    """The wall clock (KST), or an accelerated one that reads `start` at `anchor` and then runs
    `speed` times real time (3600: an hour a second)."""

    kind: Literal["wall", "accelerated"] = "wall"
    start: datetime | None = None  # accelerated: KST, e.g. 2025-09-16T10:00:05; None: this hour
    speed: float = Field(3600.0, gt=0)
    anchor: float | None = None  # epoch seconds at which the clock reads `start`; None: now


class LoopSettings(Strict):
    """Everything the actor needs, as plain data: the keeper's Serve `args` (Serve validates them
    into this model) and the actor's constructor argument (a `model_dump()`)."""

    mode: Literal["paper", "live"] = "paper"
    trading_config: str = "configs/trading.yaml"
    overrides: list[str] = []  # `section.key=value` on trading_config, for hand-written configs
    ledger: str | None = None  # None: the trading config's ledger.path
    markets: MarketList | None = None  # None: the trading config's loop.markets, else features'
    features_config: str = "configs/features.yaml"
    serve_url: str = "http://127.0.0.1:8000"
    # Direct ingress (`serve.address`): the Ray dashboard that says on which port the graph's
    # ingress replica answers itself; None: always `serve_url`.
    ingress_lookup: str | None = None
    data_dir: str | None = None  # a folder of stored Parquet candles (offline); None: Upbit
    upbit_base_url: str = "https://api.upbit.com"
    # Online: a Parquet cache (folder or URI) in front of Upbit, so each hour fetches only the new
    # candle, one request a market instead of five pages of the serving window; None: no cache.
    cache_dir: str | None = None
    clock: ClockSettings = ClockSettings()
    max_hours: int | None = Field(None, ge=1)  # stop after this many hours (demos, tests)

    def trading(self) -> TradingConfig:
        config = load_trading_config(resolve_path(self.trading_config), self.overrides)
        if self.ledger:
            config = config.model_copy(update={"ledger": LedgerConfig(path=self.ledger)})
        if self.markets:
            loop = config.loop.model_copy(update={"markets": self.markets})
            config = config.model_copy(update={"loop": loop})
        return config


def candle_source(settings: LoopSettings) -> CandleSource:
    """Stored candles offline; online Upbit, through the cache when there is one."""
    if settings.data_dir:
        return ParquetDirSource(resolve_path(settings.data_dir))
    upbit = UpbitSource(settings.upbit_base_url)
    return CachedSource(upbit, resolve_path(settings.cache_dir)) if settings.cache_dir else upbit


def make_clock(settings: ClockSettings) -> Clock:
    if settings.kind == "wall":
        return WallClock()
    start = pd.Timestamp(settings.start) if settings.start else pd.Timestamp.now().floor("h")
    return AcceleratedClock(start, settings.speed, settings.anchor or time.time())
