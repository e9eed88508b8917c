"""Where the cross-market and premium groups get their other series, in training and serving.

Training and research read the shared folder: the context markets' Upbit files and the coin's
`binance_<SYMBOL>_1h.parquet` beside them. Serving reads the predictor's sources: the Upbit
`CandleSource` it already has and a Binance `UsdtCandleSource` (features.binance). Both return a
`features.groups.MarketContext`; what a feature set does not need is not read. A context a group
needs and cannot get raises `MissingContextError` naming it, so the predictor answers with a clear
refusal rather than a silent zero.
"""

from __future__ import annotations

from datetime import datetime

from features.binance import BinanceError, BinanceParquetSource, UsdtCandleSource
from features.exchange import KST, UnknownMarketError
from features.groups import FeatureSet, MarketContext, MissingContextError, binance_symbol
from features.sources import CandleSource, ParquetDirSource


def needs_context(feature_set: FeatureSet) -> bool:
    return bool(feature_set.needs_upbit_context) or feature_set.needs_binance


def folder_context(feature_set: FeatureSet, market: str, data_dir: str) -> MarketContext | None:
    """`batch_context` from one data folder (Upbit and Binance files side by side)."""
    return batch_context(
        feature_set, market, ParquetDirSource(data_dir), BinanceParquetSource(data_dir)
    )


def batch_context(
    feature_set: FeatureSet,
    market: str,
    upbit: CandleSource,
    binance: BinanceParquetSource | None,
    end: datetime | None = None,
) -> MarketContext | None:
    """Every hour (up to `end`, KST) of every series the feature set reads for `market`."""
    if not needs_context(feature_set):
        return None
    try:
        markets = {m: upbit.history(m, end=end) for m in feature_set.needs_upbit_context}
    except UnknownMarketError as exc:
        raise MissingContextError(f"{market}: cross_market context: {exc}") from exc
    frame = None
    if feature_set.needs_binance:
        if binance is None:
            raise MissingContextError(f"{market}: premium features need Binance candle files")
        try:
            frame = binance.history(binance_symbol(market))
        except BinanceError as exc:
            raise MissingContextError(f"{market}: premium context: {exc}") from exc
    return MarketContext(markets, frame)


def serving_context(
    feature_set: FeatureSet,
    market: str,
    upbit: CandleSource,
    binance: UsdtCandleSource | None,
    count: int,
    *,
    now: datetime | None = None,
) -> MarketContext | None:
    """The newest `count` hours of every series the feature set reads, from the live sources.

    Source failures propagate as the sources raise them (UpbitError, BinanceError: a 503 at the
    predictor); a source that is not configured at all is a MissingContextError (a 422).
    """
    if not needs_context(feature_set):
        return None
    markets = {m: upbit.latest(m, count, now=now) for m in feature_set.needs_upbit_context}
    frame = None
    if feature_set.needs_binance:
        if binance is None:
            raise MissingContextError(
                f"{market}: premium features need a Binance source (serve source.binance)"
            )
        aware = now if now is None or now.tzinfo else now.replace(tzinfo=KST)  # naive is KST
        frame = binance.latest(binance_symbol(market), count, now=aware)
    return MarketContext(markets, frame)
