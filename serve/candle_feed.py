"""Where a predictor's candles come from: the request, or the configured source.

Both predictor kinds (one deployment per market, and the multiplexed pool) take the same request
candles (`serve.predict.RequestCandles`) and fall back on the same source, so the rule lives here
once. Reading the source is I/O (a Parquet file, or Upbit through the Parquet cache); a failure
is a 503 naming the market, never a 500.
"""

from __future__ import annotations

import pandas as pd

from features import indicators
from features.binance import (
    BinanceError,
    BinanceHttpSource,
    BinanceParquetSource,
    BinanceUnknownSymbol,
    UsdtCandleSource,
)
from features.candle_cache import CachedSource
from features.config import resolve_path
from features.context import needs_context, serving_context
from features.exchange import UnknownMarketError
from features.groups import FeatureSet, MarketContext, MissingContextError
from features.sources import CandleSource, ParquetDirSource, UpbitSource
from features.upbit_http import UpbitError
from serve.config import ServeConfig, SourceConfig
from serve.predict import RequestCandles, request_candles
from serve.schema import BadRequest, Unavailable


def build_source(config: SourceConfig) -> CandleSource:
    """Where a predictor reads candles when a request carries none."""
    if config.kind == "parquet":
        return ParquetDirSource(resolve_path(config.data_dir))
    upbit = UpbitSource(config.upbit_base_url, timeout=config.timeout_s)
    return CachedSource(upbit, resolve_path(config.cache_dir))


def build_binance(config: SourceConfig) -> UsdtCandleSource:
    """Where the premium group's Binance candles come from: the files beside the Upbit ones
    (parquet), or Binance's public klines endpoint beside the Upbit source (upbit)."""
    if config.kind == "parquet":
        return BinanceParquetSource(resolve_path(config.data_dir))
    return BinanceHttpSource(config.binance_base_url, timeout=config.timeout_s)


class CandleFeed:
    """A request's candles as a frame, or the newest CANDLES_FOR_SERVING from the source (built
    on first use: a replica whose requests always carry candles never opens it)."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.source: CandleSource | None = None
        self.binance: UsdtCandleSource | None = None

    def candles(self, market: str, given: RequestCandles) -> pd.DataFrame:
        frame = request_candles(given, self.config.max_candles)
        if frame is not None:
            return frame
        if self.source is None:
            self.source = build_source(self.config.source)
        try:
            return self.source.latest(market, indicators.CANDLES_FOR_SERVING)
        except (UpbitError, OSError, LookupError) as exc:
            raise Unavailable(f"{market}: candles unavailable: {exc}") from exc

    def context(self, market: str, feature_set: FeatureSet) -> MarketContext | None:
        """The other series a model's feature groups read, always from the configured sources
        (a request carries its own market's candles only). A source that fails is a 503 naming
        it; context that arrives but does not reach the hour is refused later, as a 422."""
        if not needs_context(feature_set):
            return None
        if self.source is None:
            self.source = build_source(self.config.source)
        if self.binance is None and feature_set.needs_binance:
            self.binance = build_binance(self.config.source)
        try:
            return serving_context(
                feature_set, market, self.source, self.binance, indicators.CANDLES_FOR_SERVING
            )
        except UnknownMarketError as exc:  # the source answers but holds no such market
            raise BadRequest(f"{market}: the model's context needs {exc.market}: {exc}") from exc
        except (MissingContextError, BinanceUnknownSymbol) as exc:
            raise BadRequest(f"{market}: the model's context: {exc}") from exc
        except (UpbitError, BinanceError, OSError, LookupError) as exc:
            raise Unavailable(f"{market}: context candles unavailable: {exc}") from exc
