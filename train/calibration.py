"""Temperature calibration of 3-class scores, shared by every family and free of torch.

The sizing rule and the ensemble read probabilities as probabilities, so each family calibrates its
raw scores on a slice it never fitted: one temperature T, softmax(score / T), chosen by log loss.
Kept apart from `train.head` so a LightGBM-only worker never imports torch (1-2 s per process).
"""

from __future__ import annotations

import os

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax


def fit_temperature(scores: np.ndarray, y: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimises log loss of softmax(scores / T)."""

    def nll(log_t: float) -> float:
        logp = log_softmax(scores / np.exp(log_t), axis=1)
        return float(-logp[np.arange(len(y)), y].mean())

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def calibrated_proba(scores: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(scores / temperature, axis=1)


def process_threads() -> int:
    """This process's thread budget without importing torch: OMP_NUM_THREADS where Ray (or the
    user) set it, else the cores this process may run on. torch reads the same variable, so a
    LightGBM-only worker and a hybrid worker get the same budget under the same Ray resources."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0))
