"""The LightGBM head over encoder outputs, and its temperature calibration.

The sizing rule reads these probabilities as probabilities, so they are calibrated on a slice the
head never fitted: one temperature T, softmax(raw_score / T), chosen by log loss.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import torch

from train.calibration import calibrated_proba, fit_temperature
from train.config import HeadConfig

__all__ = ["calibrated_proba", "compute_threads", "fit_head", "fit_temperature", "head_inputs"]


def head_inputs(encoded: np.ndarray, last_rows: np.ndarray | None) -> np.ndarray:
    """Encoder outputs, optionally beside the window's last transformed row of 46 features."""
    parts = [encoded.astype(np.float64)]
    if last_rows is not None:
        parts.append(last_rows.astype(np.float64))
    return np.concatenate(parts, axis=1)


def compute_threads() -> int:
    """One thread budget per process for torch and LightGBM: torch's, which Ray sets from a
    worker's CPU share (OMP_NUM_THREADS). LightGBM's OpenMP threads spin while they wait, so four
    workers on two cores with two LightGBM threads each ran 6x slower than with one each
    (measured: 205 s against 33 s for the same fits)."""
    return torch.get_num_threads()


def fit_head(config: HeadConfig, x: np.ndarray, y: np.ndarray, seed: int = 0) -> lgb.Booster:
    params = {
        "objective": "multiclass",
        "num_class": 3,
        "num_leaves": config.num_leaves,
        "learning_rate": config.learning_rate,
        "min_data_in_leaf": config.min_data_in_leaf,
        "feature_fraction": config.feature_fraction,
        "seed": seed,
        "deterministic": True,
        "num_threads": compute_threads(),
        "verbose": -1,
    }
    return lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=config.num_rounds)


def raw_scores(booster: lgb.Booster, x: np.ndarray) -> np.ndarray:
    # A loaded booster would otherwise predict with the thread count it was trained with.
    scores = booster.predict(x, raw_score=True, num_threads=compute_threads())
    return np.asarray(scores).reshape(len(x), 3)
