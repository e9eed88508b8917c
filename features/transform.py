"""The model's stationary input transform, fitted on training rows only and stored as JSON.

Raw price levels are not stationary: a model that learnt BTC at 30 M KRW would not read it at 150 M.
So each 24-hour window expresses its price-unit columns relative to the window's last close and its
volume columns relative to the window's mean volume; then every column is standardised with a mean
and std fitted on training windows only, and clipped so one crash hour cannot dominate a batch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from features.indicators import (
    FEATURE_HASH,
    FEATURE_NAMES,
    PRICE_LEVEL_FEATURES,
    SEQUENCE_LENGTH,
    VOLUME_LEVEL_FEATURES,
)

_CHUNK = 4096
_CLOSE = FEATURE_NAMES.index("close")


class TransformError(ValueError):
    """A stored transform is corrupt or was made for other features."""


def windows(features: np.ndarray, end_positions: np.ndarray, length: int) -> np.ndarray:
    """Raw (n, length, n_features) windows ending at each position (a copy, float64)."""
    ends = np.asarray(end_positions, dtype=np.int64)
    if len(ends) and (ends.min() < length - 1 or ends.max() >= len(features)):
        raise IndexError(f"window end positions must lie in [{length - 1}, {len(features) - 1}]")
    offsets = np.arange(-length + 1, 1)
    return features[ends[:, None] + offsets[None, :]]


def _column_index(names: tuple[str, ...]) -> np.ndarray:
    return np.array([FEATURE_NAMES.index(n) for n in names], dtype=np.int64)


_PRICE_IDX = _column_index(PRICE_LEVEL_FEATURES)
_VOLUME_IDX = _column_index(VOLUME_LEVEL_FEATURES)


def relative_windows(raw: np.ndarray) -> np.ndarray:
    """The fit-free stationary step on raw windows (n, L, 46); reads nothing after a window."""
    out = np.array(raw, dtype="float64", copy=True)
    last_close = raw[:, -1, _CLOSE][:, None, None]
    out[:, :, _PRICE_IDX] = raw[:, :, _PRICE_IDX] / last_close
    volumes = raw[:, :, _VOLUME_IDX]
    mean = volumes.mean(axis=1, keepdims=True)
    ratio = np.divide(volumes, mean, out=np.zeros_like(volumes), where=mean > 0)
    out[:, :, _VOLUME_IDX] = ratio
    return out


@dataclass(frozen=True)
class SequenceTransform:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    clip: float = 10.0
    sequence_length: int = SEQUENCE_LENGTH
    feature_names: tuple[str, ...] = FEATURE_NAMES
    feature_hash: str = FEATURE_HASH

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        train_end_positions: np.ndarray,
        *,
        sequence_length: int = SEQUENCE_LENGTH,
        clip: float = 10.0,
    ) -> SequenceTransform:
        """Fit the standardisation on the windows ending at *training* positions only."""
        ends = np.asarray(train_end_positions, dtype=np.int64)
        if len(ends) == 0:
            raise ValueError("cannot fit the transform on zero training windows")
        total = np.zeros(features.shape[1])
        total_sq = np.zeros(features.shape[1])
        for start in range(0, len(ends), _CHUNK):
            rel = relative_windows(windows(features, ends[start : start + _CHUNK], sequence_length))
            flat = rel.reshape(-1, rel.shape[-1])
            if not np.isfinite(flat).all():
                raise ValueError(
                    "training windows contain NaN or inf (warm-up rows are not samples)"
                )
            total += flat.sum(axis=0)
            total_sq += np.square(flat).sum(axis=0)
        n = len(ends) * sequence_length
        mean = total / n
        std = np.sqrt(np.maximum(total_sq / n - np.square(mean), 0.0))
        std = np.where(std > 1e-12, std, 1.0)
        return cls(tuple(map(float, mean)), tuple(map(float, std)), float(clip), sequence_length)

    def apply_windows(self, raw: np.ndarray) -> np.ndarray:
        """Raw windows (n, L, 46) -> model input, float32."""
        if raw.ndim != 3 or raw.shape[1:] != (self.sequence_length, len(self.feature_names)):
            raise ValueError(
                f"expected windows of shape "
                f"(n, {self.sequence_length}, {len(self.feature_names)}), "
                f"got {raw.shape}"
            )
        rel = relative_windows(raw)
        scaled = (rel - np.asarray(self.mean)) / np.asarray(self.std)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def apply(self, features: np.ndarray, end_positions: np.ndarray) -> np.ndarray:
        """Model input for the windows ending at `end_positions` of a (T, 46) feature matrix."""
        ends = np.asarray(end_positions, dtype=np.int64)
        out = np.empty((len(ends), self.sequence_length, len(self.feature_names)), dtype=np.float32)
        for start in range(0, len(ends), _CHUNK):
            chunk = ends[start : start + _CHUNK]
            out[start : start + len(chunk)] = self.apply_windows(
                windows(features, chunk, self.sequence_length)
            )
        return out

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": "stationary-window-standardise",
                "feature_names": list(self.feature_names),
                "feature_hash": self.feature_hash,
                "price_columns": list(PRICE_LEVEL_FEATURES),
                "volume_columns": list(VOLUME_LEVEL_FEATURES),
                "sequence_length": self.sequence_length,
                "clip": self.clip,
                "mean": list(self.mean),
                "std": list(self.std),
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> SequenceTransform:
        """Load and check a stored transform; refuse one made for other features."""
        try:
            data: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TransformError(f"transform is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise TransformError("transform JSON must be an object")
        _check_stored(data)
        return cls(
            mean=tuple(float(x) for x in data["mean"]),
            std=tuple(float(x) for x in data["std"]),
            clip=float(data["clip"]),
            sequence_length=int(data["sequence_length"]),
        )


def _check_stored(data: dict[str, Any]) -> None:
    missing = {"feature_names", "feature_hash", "mean", "std", "clip", "sequence_length"} - set(
        data
    )
    if missing:
        raise TransformError(f"transform JSON lacks {sorted(missing)}")
    if data["feature_hash"] != FEATURE_HASH or tuple(data["feature_names"]) != FEATURE_NAMES:
        raise TransformError(
            f"transform was fitted for feature hash {data['feature_hash']!r}, "
            f"this code computes {FEATURE_HASH!r}: retrain the model"
        )
    n = len(FEATURE_NAMES)
    for key in ("mean", "std"):
        values = data[key]
        if not isinstance(values, list) or len(values) != n:
            raise TransformError(f"transform {key!r} must hold {n} numbers")
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise TransformError(f"transform {key!r} holds a non-finite or non-numeric value")
    if any(v <= 0 for v in data["std"]):
        raise TransformError("transform 'std' must be positive")
