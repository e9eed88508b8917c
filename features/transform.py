"""The model's stationary input transform, fitted on training rows only and stored as JSON.

Raw price levels are not stationary: a model that learnt BTC at 30 M KRW would not read it at 150 M.
So each 24-hour window expresses its price-unit columns relative to the window's last close and its
volume columns relative to the window's mean volume; then every column is standardised with a mean
and std fitted on training windows only, and clipped so one crash hour cannot dominate a batch.

Feature groups (features.groups) follow the base 46. A group column's NaN (a missing Binance hour,
a stale context market) is filled with that column's median over the training windows' rows, and
every column of a group that can be missing by construction (`FeatureSet.missable`: cross_market,
premium) also gets a 0/1 missing-flag input, appended after the standardised columns, whether or
not training happened to see it missing: the model's input width is then a function of the
configured groups alone, and a serving hour is filled from the training median, never from its
own neighbours. A transform stored before groups reached the hybrid (no `feature_groups` in its
JSON) is the base 46 alone, and still loads.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from features.groups import BASE_SET, FeatureSet
from features.indicators import (
    FEATURE_NAMES,
    PRICE_LEVEL_FEATURES,
    SEQUENCE_LENGTH,
    VOLUME_LEVEL_FEATURES,
)

_CHUNK = 4096
_CLOSE = FEATURE_NAMES.index("close")
_BASE = len(FEATURE_NAMES)


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


def training_rows(n_rows: int, ends: np.ndarray, length: int) -> np.ndarray:
    """Mask of the rows inside at least one window ending at `ends`: the rows a fit may read."""
    marks = np.zeros(n_rows + 1, dtype=np.int64)
    np.add.at(marks, ends - length + 1, 1)
    np.add.at(marks, ends + 1, -1)
    return np.cumsum(marks[:-1]) > 0


def _medians(columns: np.ndarray) -> tuple[float, ...]:
    """Median of each column's finite values; 0.0 for a column training never saw present."""
    out = []
    for column in columns.T:
        present = column[np.isfinite(column)]
        out.append(float(np.median(present)) if len(present) else 0.0)
    return tuple(out)


@dataclass(frozen=True)
class SequenceTransform:
    """`mean`/`std` per feature column (after the fill); `medians` per group column (the fill);
    `flags`: the group columns that get a missing-flag input (`FeatureSet.missable`)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    clip: float = 10.0
    sequence_length: int = SEQUENCE_LENGTH
    feature_set: FeatureSet = BASE_SET
    medians: tuple[float, ...] = ()
    flags: tuple[str, ...] = ()

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The raw columns it reads, in order (the base 46 first)."""
        return self.feature_set.names

    @property
    def feature_hash(self) -> str:
        return self.feature_set.hash

    @property
    def input_names(self) -> tuple[str, ...]:
        """The model's input columns: the standardised features, then one flag per `flags`."""
        return (*self.feature_names, *(f"{n}_missing" for n in self.flags))

    @property
    def width(self) -> int:
        """The model's input width (the LSTM's n_features)."""
        return len(self.feature_names) + len(self.flags)

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        train_end_positions: np.ndarray,
        *,
        feature_set: FeatureSet = BASE_SET,
        sequence_length: int = SEQUENCE_LENGTH,
        clip: float = 10.0,
    ) -> SequenceTransform:
        """Fit the fill and the standardisation on the windows ending at *training* positions
        only; `features` holds `feature_set`'s columns."""
        ends = np.asarray(train_end_positions, dtype=np.int64)
        if len(ends) == 0:
            raise ValueError("cannot fit the transform on zero training windows")
        if features.shape[1] != len(feature_set.names):
            raise ValueError(
                f"features have {features.shape[1]} columns, the feature set with groups "
                f"{list(feature_set.groups)} has {len(feature_set.names)}"
            )
        if ends.min() < sequence_length - 1 or ends.max() >= len(features):
            raise IndexError(f"window end positions must lie in [{sequence_length - 1}, "
                             f"{len(features) - 1}]")  # fmt: skip
        rows = training_rows(len(features), ends, sequence_length)
        shell = cls((), (), float(clip), sequence_length, feature_set,
                    _medians(features[rows, _BASE:]), feature_set.missable)  # fmt: skip
        strict = np.array([n not in shell.flags for n in feature_set.names])
        total = np.zeros(features.shape[1])
        total_sq = np.zeros(features.shape[1])
        for start in range(0, len(ends), _CHUNK):
            raw = windows(features, ends[start : start + _CHUNK], sequence_length)
            if not np.isfinite(raw[:, :, strict]).all():
                raise ValueError(
                    "training windows contain NaN or inf outside the missable group columns "
                    "(warm-up rows are not samples)"
                )
            flat = relative_windows(shell.filled(raw)[0]).reshape(-1, raw.shape[-1])
            if not np.isfinite(flat).all():
                raise ValueError("training windows give NaN or inf in the stationary form")
            total += flat.sum(axis=0)
            total_sq += np.square(flat).sum(axis=0)
        n = len(ends) * sequence_length
        mean = total / n
        std = np.sqrt(np.maximum(total_sq / n - np.square(mean), 0.0))
        std = np.where(std > 1e-12, std, 1.0)
        return dataclasses.replace(shell, mean=tuple(map(float, mean)), std=tuple(map(float, std)))

    def filled(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw windows with every group column's NaN/inf set to its training median, and the
        (n, L, len(flags)) 0/1 missing flags; reads nothing but the window and the medians."""
        if not self.medians:
            return raw, np.zeros((*raw.shape[:2], 0))
        extra = raw[:, :, _BASE:]
        missing = ~np.isfinite(extra)
        if not missing.any():
            return raw, np.zeros((*raw.shape[:2], len(self.flags)))
        out = np.array(raw, dtype="float64", copy=True)
        out[:, :, _BASE:] = np.where(missing, np.asarray(self.medians), extra)
        extra_names = self.feature_set.extra_names
        flagged = [extra_names.index(n) for n in self.flags]
        return out, missing[:, :, flagged].astype("float64")

    def apply_windows(self, raw: np.ndarray) -> np.ndarray:
        """Raw windows (n, L, len(feature_names)) -> model input (n, L, width), float32."""
        if raw.ndim != 3 or raw.shape[1:] != (self.sequence_length, len(self.feature_names)):
            raise ValueError(
                f"expected windows of shape "
                f"(n, {self.sequence_length}, {len(self.feature_names)}), "
                f"got {raw.shape}"
            )
        full, flags = self.filled(raw)
        scaled = (relative_windows(full) - np.asarray(self.mean)) / np.asarray(self.std)
        scaled = np.clip(scaled, -self.clip, self.clip)
        if self.flags:
            scaled = np.concatenate([scaled, flags], axis=-1)
        return scaled.astype(np.float32)

    def apply(self, features: np.ndarray, end_positions: np.ndarray) -> np.ndarray:
        """Model input for the windows ending at `end_positions` of a (T, F) feature matrix."""
        ends = np.asarray(end_positions, dtype=np.int64)
        out = np.empty((len(ends), self.sequence_length, self.width), dtype=np.float32)
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
                "feature_groups": list(self.feature_set.groups),
                "context_markets": list(self.feature_set.context_markets),
                "price_columns": list(PRICE_LEVEL_FEATURES),
                "volume_columns": list(VOLUME_LEVEL_FEATURES),
                "sequence_length": self.sequence_length,
                "clip": self.clip,
                "mean": list(self.mean),
                "std": list(self.std),
                "medians": dict(zip(self.feature_set.extra_names, self.medians, strict=True)),
                "missing_flags": list(self.flags),
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> SequenceTransform:
        """Load and check a stored transform; refuse one made for other features. One without
        `feature_groups` (stored before groups reached the hybrid) is the base 46 alone."""
        try:
            data: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TransformError(f"transform is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise TransformError("transform JSON must be an object")
        feature_set = _check_stored(data)
        medians = data.get("medians", {})
        return cls(
            mean=tuple(float(x) for x in data["mean"]),
            std=tuple(float(x) for x in data["std"]),
            clip=float(data["clip"]),
            sequence_length=int(data["sequence_length"]),
            feature_set=feature_set,
            medians=tuple(float(medians[n]) for n in feature_set.extra_names),
            flags=tuple(data.get("missing_flags", [])),
        )


def _stored_feature_set(data: dict[str, Any]) -> FeatureSet:
    if "feature_groups" not in data:
        return BASE_SET  # the layout before groups reached the hybrid
    missing = {"context_markets", "medians", "missing_flags"} - set(data)
    if missing:
        raise TransformError(f"transform JSON lacks {sorted(missing)}")
    try:
        return FeatureSet(tuple(data["feature_groups"]), tuple(data["context_markets"]))
    except (TypeError, ValueError) as exc:
        raise TransformError(f"transform JSON: unusable feature_groups: {exc}") from exc


def _check_stored(data: dict[str, Any]) -> FeatureSet:
    missing = {"feature_names", "feature_hash", "mean", "std", "clip", "sequence_length"} - set(
        data
    )
    if missing:
        raise TransformError(f"transform JSON lacks {sorted(missing)}")
    feature_set = _stored_feature_set(data)
    if data["feature_hash"] != feature_set.hash or tuple(data["feature_names"]) != (
        feature_set.names
    ):
        raise TransformError(
            f"transform was fitted for feature hash {data['feature_hash']!r}, "
            f"this code computes {feature_set.hash!r} for groups {list(feature_set.groups)}: "
            f"retrain the model"
        )
    n = len(feature_set.names)
    for key in ("mean", "std"):
        values = data[key]
        if not isinstance(values, list) or len(values) != n:
            raise TransformError(f"transform {key!r} must hold {n} numbers")
        if not all(_finite_number(v) for v in values):
            raise TransformError(f"transform {key!r} holds a non-finite or non-numeric value")
    if any(v <= 0 for v in data["std"]):
        raise TransformError("transform 'std' must be positive")
    _check_fill(data, feature_set)
    return feature_set


def _finite_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check_fill(data: dict[str, Any], feature_set: FeatureSet) -> None:
    """The medians name every group column with a finite number; the flags are group columns,
    each once, in column order."""
    medians = data.get("medians", {})
    extra = feature_set.extra_names
    if not isinstance(medians, dict) or set(medians) != set(extra):
        raise TransformError(
            f"transform 'medians' must name exactly the group columns {list(extra)}"
        )
    if not all(_finite_number(v) for v in medians.values()):
        raise TransformError("transform 'medians' holds a non-finite or non-numeric value")
    flags = data.get("missing_flags", [])
    in_order = [n for n in extra if n in flags]
    if not isinstance(flags, list) or flags != in_order:
        raise TransformError(
            f"transform 'missing_flags' must be group columns of {list(extra)}, each once, "
            f"in column order; got {flags!r}"
        )
