"""The candle source a predictor reads when a request carries no candles."""

from __future__ import annotations

from features.config import resolve_path
from features.sources import CachedSource, CandleSource, ParquetDirSource, UpbitSource
from serve.config import SourceConfig


def build_source(config: SourceConfig) -> CandleSource:
    if config.kind == "parquet":
        return ParquetDirSource(resolve_path(config.data_dir))
    upbit = UpbitSource(config.upbit_base_url, timeout=config.timeout_s)
    return CachedSource(upbit, resolve_path(config.cache_dir))
