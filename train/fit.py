"""The one training function: fit the hybrid on one fold's training slices, score its test hours.

A fold's training window is cut, oldest first, into four slices separated by purge gaps:
  encoder    fits the LSTM (class-weighted cross-entropy),
  early_stop picks the LSTM's epoch (the LSTM never trains on it),
  head       fits LightGBM on encoder outputs of hours the encoder never saw,
  calibrate  fits the head's temperature on hours neither the encoder nor the head saw.
So the stack never learns the encoder's overfit. `fit_plan` runs unchanged in a plain process and
inside a Ray Train worker (the runtime differences live in `TrainHooks`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from features.dataset import MarketDataset
from features.folds import purged_parts
from features.indicators import FEATURE_NAMES
from features.splits import Fold, seed_leaky_split
from features.transform import SequenceTransform
from train.bundle import HybridModel
from train.config import SliceConfig, TrainProfile
from train.encoder_loop import EncoderResult, TrainHooks, encode, train_encoder
from train.head import fit_head, fit_temperature, head_inputs, raw_scores
from train.model import EncoderSpec

# Oldest first: the encoder's hours, then the head's, then early stopping and calibration on the
# newest hours of the window (so a refit on every labelled hour tunes its epoch and temperature
# on the hours nearest the ones it will serve).
SLICE_NAMES = ("encoder", "head", "early_stop", "calibrate")


@dataclass(frozen=True)
class FoldPlan:
    """Absolute row positions (into the dataset) of each slice and of the test hours."""

    name: str
    slices: dict[str, np.ndarray]
    test: np.ndarray
    transform_fit: np.ndarray  # rows the input scaler may see: training rows, except in "leaky"


@dataclass(frozen=True)
class PlanOutcome:
    plan: FoldPlan
    model: HybridModel
    threshold: float
    test_proba: np.ndarray
    test_labels: np.ndarray
    encoder: EncoderResult
    seconds: float


def _cut(positions: np.ndarray, shares: list[float]) -> list[np.ndarray]:
    bounds = np.round(np.cumsum([0.0, *shares]) * len(positions)).astype(int)
    return [positions[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def purged_slices(
    times: np.ndarray, positions: np.ndarray, shares: SliceConfig, purge_hours: int
) -> dict[str, np.ndarray]:
    """Consecutive slices of a training window, each purged of the hours next to its predecessor."""
    named = {name: getattr(shares, name) for name in SLICE_NAMES}
    return purged_parts(times, positions, named, purge_hours)


def walk_forward_plan(data: MarketDataset, fold: Fold, shares: SliceConfig, purge: int) -> FoldPlan:
    train = data.samples[fold.train]
    slices = purged_slices(data.times.asi8, train, shares, purge)
    return FoldPlan(f"fold {fold.number}", slices, data.samples[fold.test], train)


def leaky_plan(
    data: MarketDataset, shares: SliceConfig, test_fraction: float, seed: int
) -> FoldPlan:
    """The seed's protocol: random slices of overlapping windows and a scaler fitted on all rows."""
    train_idx, test_idx = seed_leaky_split(len(data.samples), test_fraction, seed)
    shuffled = np.random.default_rng(seed).permutation(data.samples[train_idx])
    parts = _cut(shuffled, [getattr(shares, n) for n in SLICE_NAMES])
    slices = {name: np.sort(part) for name, part in zip(SLICE_NAMES, parts, strict=True)}
    return FoldPlan("leaky", slices, data.samples[test_idx], data.samples)


def encoder_spec(profile: TrainProfile, n_features: int = len(FEATURE_NAMES)) -> EncoderSpec:
    """The profile's encoder reading `n_features` inputs (the transform's width)."""
    return EncoderSpec(
        n_features=n_features,
        hidden_size=profile.encoder.hidden_size,
        num_layers=profile.encoder.num_layers,
        dropout=profile.encoder.dropout,
    )


def _recent(positions: np.ndarray, limit: int | None) -> np.ndarray:
    return positions if limit is None or len(positions) <= limit else positions[-limit:]


def fit_plan(
    profile: TrainProfile,
    data: MarketDataset,
    plan: FoldPlan,
    threshold: float,
    hooks: TrainHooks | None = None,
) -> PlanOutcome:
    started = time.perf_counter()
    transform = SequenceTransform.fit(
        data.features, plan.transform_fit, feature_set=data.feature_set
    )

    def xy(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return transform.apply(data.features, positions), data.labels(threshold, positions)

    spec = encoder_spec(profile, transform.width)
    fit_rows = _recent(plan.slices["encoder"], profile.optim.max_train_samples)
    result = train_encoder(spec, profile.optim, xy(fit_rows), xy(plan.slices["early_stop"]), hooks)
    use_last = profile.head.use_last_row

    def inputs(x: np.ndarray) -> np.ndarray:
        return head_inputs(encode(result.model, x), x[:, -1, :] if use_last else None)

    x_head, y_head = xy(plan.slices["head"])
    head = fit_head(profile.head, inputs(x_head), y_head, seed=profile.optim.seed)
    x_cal, y_cal = xy(plan.slices["calibrate"])
    temperature = fit_temperature(raw_scores(head, inputs(x_cal)), y_cal)
    model = HybridModel(result.model, head, transform, temperature, use_last, {})
    x_test, y_test = xy(plan.test)
    proba = model.predict_proba_transformed(x_test)  # a refit has no test hours: (0, 3)
    return PlanOutcome(plan, model, threshold, proba, y_test, result, time.perf_counter() - started)
