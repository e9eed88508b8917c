"""What every family's bundle shares on disk: metadata.json, the feature-hash check, the refusals.

A bundle directory holds metadata.json (with `family`, absent in bundles older than families,
which are hybrids) and the family's own files; no pickle in any of them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from features.barriers import bundle_barriers
from features.binance import BinanceParquetSource
from features.context import batch_context, needs_context
from features.dataset import MarketDataset, build_dataset
from features.groups import DEFAULT_CONTEXT_MARKETS, FeatureSet, MissingContextError
from features.sources import ParquetDirSource


class BundleError(ValueError):
    """A model bundle is missing, corrupt, or was made for other features or shapes."""


def require_files(directory: Path, names: tuple[str, ...]) -> None:
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise BundleError(f"bundle {directory} lacks {', '.join(missing)}")


def read_metadata(directory: Path) -> dict[str, Any]:
    """metadata.json as a dict, refused when missing, not an object, or for other features."""
    require_files(directory, ("metadata.json",))
    try:
        meta = json.loads((directory / "metadata.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{directory / 'metadata.json'} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise BundleError(f"{directory / 'metadata.json'} must hold a JSON object")
    feature_set = bundle_feature_set(meta, directory)
    if meta.get("feature_hash") != feature_set.hash:
        raise BundleError(
            f"bundle {directory} was trained on feature hash {meta.get('feature_hash')!r}, "
            f"this code computes {feature_set.hash!r} for its feature groups "
            f"{list(feature_set.groups)}: retrain it"
        )
    return meta


def bundle_feature_set(meta: Mapping[str, Any], directory: Path | str = "bundle") -> FeatureSet:
    """The feature set a bundle was trained on: the base 46 plus its `feature_groups` (absent in
    bundles older than groups: the base alone). Serving computes exactly these columns."""
    groups = meta.get("feature_groups", [])
    markets = meta.get("context_markets", list(DEFAULT_CONTEXT_MARKETS))
    try:
        return FeatureSet(tuple(groups), tuple(markets))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"bundle {directory}: unusable feature_groups {groups!r}: {exc}") from exc


def feature_metadata(feature_set: FeatureSet) -> dict[str, Any]:
    """What a bundle records about its features, read back by `bundle_feature_set`."""
    return {
        "feature_names": list(feature_set.names),
        "feature_hash": feature_set.hash,
        "feature_groups": list(feature_set.groups),
        "context_markets": list(feature_set.context_markets),
    }


def bundle_family(meta: dict[str, Any]) -> str:
    return str(meta.get("family", "hybrid"))


def trained_until(metadata: Mapping[str, object]) -> pd.Timestamp:
    """The last hour whose price the bundle's training labels saw: train end + horizon."""
    try:
        window = metadata["train_window"]
        horizon = int(metadata["horizon"])  # type: ignore[call-overload]
        end = pd.Timestamp(window[1])  # type: ignore[index]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(
            f"bundle metadata lacks a usable train_window/horizon ({exc!r}): retrain it"
        ) from exc
    return end + pd.Timedelta(hours=horizon)


def dataset_for_model(
    meta: Mapping[str, Any], candles: pd.DataFrame, market: str, source: Any = None
) -> MarketDataset:
    """The dataset a bundle reads, for replaying or scoring it: its own feature groups, horizon
    and gap policy. Context groups read `source` (a CandleSource; a ParquetDirSource also gives
    the Binance files beside it); without one they raise MissingContextError naming what lacks."""
    feature_set = bundle_feature_set(meta)
    context = None
    if needs_context(feature_set):
        if source is None:
            raise MissingContextError(
                f"{market}: the bundle's groups {list(feature_set.groups)} need a candle source"
            )
        folder = isinstance(source, ParquetDirSource)
        binance = BinanceParquetSource(source.directory) if folder else None
        context = batch_context(feature_set, market, source, binance)
    horizon, gap = int(meta["horizon"]), int(meta["max_gap_hours"])
    return build_dataset(candles, market, horizon, gap, feature_set=feature_set, context=context,
                         barriers=bundle_barriers(meta))  # fmt: skip
