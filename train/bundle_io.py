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

from features.indicators import FEATURE_HASH


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
    if meta.get("feature_hash") != FEATURE_HASH:
        raise BundleError(
            f"bundle {directory} was trained on feature hash {meta.get('feature_hash')!r}, "
            f"this code computes {FEATURE_HASH!r}: retrain it"
        )
    return meta


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
