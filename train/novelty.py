"""The novelty gate's score: how far a prediction's feature row lies from the rows its model
trained on, in units of how far the training rows lie from each other.

Space. The window's newest row in the fit-free stationary form (`features.transform.
relative_windows`: prices over the last close, volumes over the window's mean), standardised by
the reference rows' mean and std. A missing value (NaN) reads as the training mean and every value
is clipped at +/- CLIP, so one broken column cannot make every hour novel. The same space for
every family (hybrid, gbm, ensemble): one module serves them all and their scores compare.

Score. FreqAI's dissimilarity index in its nearest-neighbour form: the mean Euclidean distance to
the k nearest reference rows, over the same statistic of the reference rows among themselves
(`normalizer`), so 1.0 reads "as far from the training rows as a typical training hour is". Not
FreqAI's mean distance to every training row: that is nearly the distance to the training rows'
centre, so an hour between two regimes the model saw (far from both, close to their average)
would look familiar; its nearest neighbours do not.

Purged. Neighbouring hours share most of their rolling indicators, so a training hour's nearest
neighbours include its own adjacent hours, which a live hour never has among the training rows
(on 3,495 KRW-BTC hours to 2025-08-31, leaving them in shrinks the typical distance by 6 %, and
a live hour would read that much more novel). The normalizer and the threshold therefore score
each reference row only against reference rows more than `purge_hours` away from it, as the
walk-forward purge separates training and test hours.

Threshold. The `quantile` (0.99) of those purged training scores: hours like the training ones are
flagged about 1 % of the time, so a live share far above that says the market has moved away from
what the model learnt. `NoveltyConfig.threshold` fixes it instead.

On disk, no pickle: `novelty.json` (all but the rows) and `novelty_rows.npy` (the standardised
reference rows, float32, read with allow_pickle=False). A bundle without them (made before the
gate) loads with no novelty: its predictions say `novel: false`, `dissimilarity: null`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from features.dataset import MarketDataset
from features.exchange import HOUR_NS
from features.indicators import FEATURE_HASH, FEATURE_NAMES
from features.transform import relative_windows
from train.bundle_io import BundleError
from train.config import NoveltyConfig

CLIP = 20.0
NOVELTY_JSON, NOVELTY_ROWS = "novelty.json", "novelty_rows.npy"
_CHUNK = 1024  # query rows per distance block: 1024 x 2000 float64 = 16 MB
_WINDOWS = 4096  # raw windows built at once when scoring a dataset


def feature_rows(raw: np.ndarray) -> np.ndarray:
    """(n, L, F) raw windows -> (n, 46) newest rows in the stationary form, not standardised.
    Only the base 46 columns count: a feature group's columns (`features.groups`) may be NaN by
    design (a missing Binance hour), and the gate must measure every family alike."""
    base = np.asarray(raw, dtype="float64")[:, :, : len(FEATURE_NAMES)]
    return relative_windows(base)[:, -1, :]


def _squared_distances(z: np.ndarray, rows: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """|z_i - r_j|^2 for every pair, through one matrix product (the serving-time cost)."""
    d2 = np.einsum("ij,ij->i", z, z)[:, None] + norms[None, :] - 2.0 * (z @ rows.T)
    return np.maximum(d2, 0.0)


def _mean_nearest(d2: np.ndarray, k: int) -> np.ndarray:
    """Mean distance to the k nearest columns of each row of squared distances."""
    return np.sqrt(np.partition(d2, k - 1, axis=1)[:, :k]).mean(axis=1)


@dataclass(frozen=True)
class Novelty:
    """A bundle's reference rows and scale; `scores` of raw windows, `fields` for a reply."""

    mean: np.ndarray  # (F,) of the reference rows before standardising
    std: np.ndarray
    rows: np.ndarray  # (n, F) standardised reference rows (float32 values, held as float64)
    neighbours: int
    normalizer: float  # mean purged k-NN distance of the reference rows
    threshold: float  # above it an hour is novel
    info: dict[str, Any] = field(default_factory=dict)  # how it was fitted (novelty.json)
    norms: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "norms", np.einsum("ij,ij->i", self.rows, self.rows))

    def standardise(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.std
        return np.clip(np.nan_to_num(z, nan=0.0, posinf=CLIP, neginf=-CLIP), -CLIP, CLIP)

    def score_rows(self, x: np.ndarray) -> np.ndarray:
        """Dissimilarity of (n, F) stationary rows (`feature_rows`)."""
        z = self.standardise(np.asarray(x, dtype="float64"))
        out = np.empty(len(z))
        for start in range(0, len(z), _CHUNK):
            part = z[start : start + _CHUNK]
            d2 = _squared_distances(part, self.rows, self.norms)
            out[start : start + len(part)] = _mean_nearest(d2, self.neighbours)
        return out / self.normalizer

    def scores(self, raw: np.ndarray) -> np.ndarray:
        """Dissimilarity of each (n, L, F) raw window, the form every family predicts from."""
        return self.score_rows(feature_rows(raw))

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": "purged-knn-dissimilarity",
                "feature_names": list(FEATURE_NAMES),
                "feature_hash": FEATURE_HASH,
                "neighbours": self.neighbours,
                "normalizer": self.normalizer,
                "threshold": self.threshold,
                "clip": CLIP,
                "mean": self.mean.tolist(),
                "std": self.std.tolist(),
                "reference_rows": len(self.rows),
                **self.info,
            },
            indent=1,
        )


def novelty_fields(novelty: Novelty | None, raw_window: np.ndarray) -> dict[str, Any]:
    """The reply's `dissimilarity` and `novel` for one (L, F) raw window; a bundle without
    novelty data (made before the gate) answers null and false."""
    if novelty is None:
        return {"dissimilarity": None, "novel": False}
    score = float(novelty.scores(raw_window[None, :, :])[0])
    return {"dissimilarity": score, "novel": score > novelty.threshold}


def dataset_scores(novelty: Novelty, data: MarketDataset, positions: np.ndarray) -> np.ndarray:
    """Dissimilarity of the windows ending at `positions`, built in chunks (memory stays flat)."""
    parts = [
        novelty.scores(data.raw_windows(positions[start : start + _WINDOWS]))
        for start in range(0, len(positions), _WINDOWS)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def purged_nearest(z: np.ndarray, hours: np.ndarray, k: int, purge_hours: int) -> np.ndarray:
    """Each row's mean distance to its k nearest other rows more than `purge_hours` away."""
    norms = np.einsum("ij,ij->i", z, z)
    out = np.empty(len(z))
    for start in range(0, len(z), _CHUNK):
        part = slice(start, start + _CHUNK)
        d2 = _squared_distances(z[part], z, norms)
        d2[np.abs(hours[part, None] - hours[None, :]) <= purge_hours] = np.inf
        out[part] = _mean_nearest(d2, k)
    if not np.isfinite(out).all():
        raise ValueError(
            f"novelty: some reference rows have fewer than {k} others beyond {purge_hours} h: "
            "train on more hours or lower novelty.neighbours"
        )
    return out


def fit_reference(
    x: np.ndarray, hours: np.ndarray, config: NoveltyConfig, purge_hours: int
) -> Novelty:
    """The gate from (n, F) stationary training rows and their hours (int, in hours)."""
    if len(x) <= config.neighbours:
        raise ValueError(f"novelty needs more than {config.neighbours} training rows, got {len(x)}")
    mean = np.nanmean(x, axis=0)
    std = np.nanstd(x, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
    base = Novelty(mean, std, np.zeros((0, x.shape[1])), config.neighbours, 1.0, np.inf)
    rows = base.standardise(x).astype(np.float32).astype(np.float64)  # as stored on disk
    own = purged_nearest(rows, np.asarray(hours, dtype=np.int64), config.neighbours, purge_hours)
    normalizer = float(own.mean())
    if normalizer <= 0:
        raise ValueError("novelty: the training rows are all identical; nothing to scale by")
    scores = own / normalizer
    threshold = config.threshold or float(np.quantile(scores, config.quantile))
    info = {
        "quantile": None if config.threshold else config.quantile,
        "purge_hours": purge_hours,
        "training_scores": {
            q: float(np.quantile(scores, v)) for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        },
    }
    return Novelty(mean, std, rows, config.neighbours, normalizer, threshold, info)


def fit_novelty(
    data: MarketDataset, train_rows: np.ndarray, config: NoveltyConfig, purge_hours: int
) -> Novelty:
    """The gate of a model trained on the dataset rows `train_rows`: a fixed random sample of
    them (seeded, at most `config.sample_rows`) is the reference the bundle keeps."""
    rows = np.asarray(train_rows, dtype=np.int64)
    size = min(config.sample_rows, len(rows))
    pick = np.sort(np.random.default_rng(config.seed).choice(rows, size, replace=False))
    x = np.concatenate(
        [feature_rows(data.raw_windows(pick[s : s + _WINDOWS])) for s in range(0, size, _WINDOWS)]
    )
    novelty = fit_reference(x, data.times.asi8[pick] // HOUR_NS, config, purge_hours)
    span = [str(data.times[rows.min()]), str(data.times[rows.max()])]
    return Novelty(
        novelty.mean, novelty.std, novelty.rows, novelty.neighbours, novelty.normalizer,
        novelty.threshold, novelty.info | {"fitted_on": span, "training_rows": len(rows)},
    )  # fmt: skip


def save_novelty(novelty: Novelty | None, directory: Path) -> None:
    """Write the gate beside a family's files; nothing for a model without one."""
    if novelty is None:
        return
    np.save(directory / NOVELTY_ROWS, novelty.rows.astype(np.float32), allow_pickle=False)
    (directory / NOVELTY_JSON).write_text(novelty.to_json())


def load_novelty(directory: Path) -> Novelty | None:
    """The gate of a bundle directory; None when it has neither file (a bundle made before the
    gate), a BundleError naming the problem when one is missing, corrupt or does not fit."""
    meta_path, rows_path = directory / NOVELTY_JSON, directory / NOVELTY_ROWS
    if not meta_path.exists() and not rows_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        rows = np.load(rows_path, allow_pickle=False).astype(np.float64)
        mean, std = np.asarray(meta["mean"], float), np.asarray(meta["std"], float)
        known = {"feature_names", "feature_hash", "mean", "std", "neighbours", "normalizer",
                 "threshold", "clip", "kind", "reference_rows"}  # fmt: skip
        novelty = Novelty(
            mean, std, rows, int(meta["neighbours"]), float(meta["normalizer"]),
            float(meta["threshold"]), {k: v for k, v in meta.items() if k not in known},
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{directory}: novelty data is missing or corrupt: {exc}") from exc
    width = len(FEATURE_NAMES)
    if meta.get("feature_hash") != FEATURE_HASH or rows.ndim != 2 or rows.shape[1] != width:
        raise BundleError(f"{rows_path}: novelty rows were made for other features: retrain")
    if mean.shape != (width,) or std.shape != (width,) or not (std > 0).all():
        raise BundleError(f"{meta_path}: novelty mean/std must hold {width} numbers, std > 0")
    if not 0 < novelty.neighbours <= len(rows) or not novelty.normalizer > 0:
        raise BundleError(f"{meta_path}: neighbours or normalizer out of range")
    return novelty
