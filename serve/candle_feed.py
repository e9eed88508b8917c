"""Where a predictor's candles come from: the request, or the configured source.

Both predictor kinds (one deployment per market, and the multiplexed pool) take the same request
candles (`serve.predict.RequestCandles`) and fall back on the same source, so the rule lives here
once. Reading the source is I/O (a Parquet file, or Upbit through the Parquet cache); a failure
is a 503 naming the market, never a 500.
"""

from __future__ import annotations

import pandas as pd

from features import indicators
from features.config import resolve_path
from features.sources import CachedSource, CandleSource, ParquetDirSource, UpbitSource
from features.upbit_http import UpbitError
from serve.config import ServeConfig, SourceConfig
from serve.predict import RequestCandles, request_candles
from serve.schema import Unavailable


def build_source(config: SourceConfig) -> CandleSource:
    """Where a predictor reads candles when a request carries none."""
    if config.kind == "parquet":
        return ParquetDirSource(resolve_path(config.data_dir))
    upbit = UpbitSource(config.upbit_base_url, timeout=config.timeout_s)
    return CachedSource(upbit, resolve_path(config.cache_dir))


class CandleFeed:
    """A request's candles as a frame, or the newest CANDLES_FOR_SERVING from the source (built
    on first use: a replica whose requests always carry candles never opens it)."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.source: CandleSource | None = None

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
