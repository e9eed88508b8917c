"""The statistics of a research report: metrics with block-bootstrap intervals, equity curve
figures and the deflated Sharpe ratio. Pure numpy/scipy, no I/O.

Intervals: a moving-block bootstrap over hours (blocks of `block_hours` consecutive predicted
hours, drawn with replacement until the sample is as long as the original), 95 % percentile
intervals. Neighbouring hours share most of their label window and regimes last days, so resampling
single hours would understate the uncertainty. Every model of a market is resampled with the same
blocks, so differences between models have paired intervals too.

Deflated Sharpe (Bailey & Lopez de Prado, 2014): the probability that the true hourly Sharpe ratio
exceeds SR0, the best Sharpe one would expect from N configurations with no skill, given the
sample's length, skewness and kurtosis:
    SR0 = sqrt(V) * ((1 - g) * Phi^-1(1 - 1/N) + g * Phi^-1(1 - 1/(N e))),  g = 0.5772...
    DSR = Phi((SR - SR0) * sqrt(T - 1) / sqrt(1 - skew * SR + (kurt - 1) / 4 * SR^2))
with V the variance of the trials' Sharpe estimates, V[{SR_n}] (Bailey & Lopez de Prado 2014,
eq. 2; hourly units). By default V = 1 / (T - 1), the variance of a Sharpe estimate under the null
of no skill: the trials' own Sharpe ratios are not all at hand, their number is (the research
cache's configurations, plus a Tune winner's trials). When a Tune experiment measured its trials'
Sharpe ratios (`TuneRecord.sharpe_variance`), V is the larger of the two: the trials were scored on
fewer, earlier hours than the report's and the research configurations' Sharpe ratios are unknown,
so the measured dispersion may replace the null only where it deflates more, never less.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import kurtosis, norm, skew

EULER_GAMMA = 0.5772156649015329
HOURS_PER_YEAR = 24 * 365
METRICS = ("balanced_accuracy", "log_loss", "brier", "macro_f1")


def _from_counts(codes: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy, macro F1 and recalls from confusion counts (..., 9)."""
    matrix = codes.reshape(*codes.shape[:-1], 3, 3)
    tp = np.diagonal(matrix, axis1=-2, axis2=-1)
    support, predicted = matrix.sum(axis=-1), matrix.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, 0.0)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0
    count = np.maximum(present.sum(axis=-1), 1)
    total = np.maximum(matrix.sum(axis=(-2, -1)), 1)
    return {
        "accuracy": tp.sum(axis=-1) / total,
        "balanced_accuracy": (recall * present).sum(axis=-1) / count,
        "macro_f1": (f1 * present).sum(axis=-1) / count,
        "recall": recall,
    }


def hourly_terms(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Per hour: one-hot confusion code (9), log loss, Brier score -> (n, 11)."""
    y = np.asarray(y, dtype=np.int64)
    p = np.clip(np.asarray(proba, dtype=float), 0.0, 1.0)
    pred = p.argmax(axis=1)
    terms = np.zeros((len(y), 11))
    terms[np.arange(len(y)), y * 3 + pred] = 1.0
    terms[:, 9] = -np.log(np.clip(p[np.arange(len(y)), y], 1e-15, 1.0))
    onehot = np.eye(3)[y]
    terms[:, 10] = ((p - onehot) ** 2).sum(axis=1)
    return terms


def metrics_from_sums(sums: np.ndarray, n: np.ndarray | float) -> dict[str, np.ndarray]:
    out = _from_counts(sums[..., :9])
    out["log_loss"] = sums[..., 9] / n
    out["brier"] = sums[..., 10] / n
    return out


def point_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    terms = hourly_terms(y, proba)
    m = metrics_from_sums(terms.sum(axis=0), max(len(y), 1))
    recall = m.pop("recall")
    out = {k: float(v) for k, v in m.items()}
    out["n"] = int(len(y))
    out["recall"] = dict(zip(("sell", "hold", "buy"), map(float, recall), strict=True))
    out["confusion"] = terms[:, :9].sum(axis=0).reshape(3, 3).astype(int).tolist()
    return out


def block_starts(n: int, block: int, samples: int, seed: int) -> tuple[np.ndarray, int]:
    """Random block starts (samples, blocks) and the block length actually used."""
    block = max(1, min(block, n))
    blocks = math.ceil(n / block)
    rng = np.random.default_rng(seed)
    return rng.integers(0, n - block + 1, size=(samples, blocks)), block


def bootstrap_metrics(
    y: np.ndarray, proba: np.ndarray, starts: np.ndarray, block: int
) -> dict[str, np.ndarray]:
    """Each metric on every resample (arrays of len samples), blocks given by `starts`."""
    terms = hourly_terms(y, proba)
    cum = np.vstack([np.zeros((1, terms.shape[1])), np.cumsum(terms, axis=0)])
    sums = (cum[starts + block] - cum[starts]).sum(axis=1)
    return metrics_from_sums(sums, starts.shape[1] * block)


def interval(values: np.ndarray) -> list[float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]


def curve_figures(
    equity: np.ndarray, initial: float, position_value: np.ndarray, trades: int
) -> dict[str, Any]:
    """Return, annualised Sharpe, max drawdown, trades and exposure of an hourly equity curve."""
    curve = np.concatenate(([initial], np.asarray(equity, dtype=float)))
    returns = curve[1:] / curve[:-1] - 1.0
    std = float(np.std(returns, ddof=1)) if len(returns) > 1 else 0.0
    peaks = np.maximum.accumulate(curve)
    return {
        "total_return": float(curve[-1] / initial - 1.0),
        "sharpe": float(np.mean(returns) / std * math.sqrt(HOURS_PER_YEAR)) if std > 0 else None,
        "max_drawdown": float(np.max(1.0 - curve / peaks)),
        "trades": int(trades),
        "exposure": float(np.mean(np.asarray(position_value) > 0)) if len(curve) > 1 else 0.0,
        "hourly_returns": returns,
    }


def sharpe_variance(observations: int, trials_variance: float | None = None) -> float:
    """V of the formula above: the null's 1 / (T - 1), or the trials' measured variance where it
    is larger."""
    null = 1.0 / (observations - 1)
    if trials_variance is None or not math.isfinite(trials_variance):
        return null
    return max(null, float(trials_variance))


def expected_max_sharpe(
    trials: int, observations: int, trials_variance: float | None = None
) -> float:
    """SR0: the best hourly Sharpe expected from `trials` skill-less configurations."""
    if trials < 2 or observations < 2:
        return 0.0
    scale = math.sqrt(sharpe_variance(observations, trials_variance))
    return scale * (
        (1 - EULER_GAMMA) * norm.ppf(1 - 1 / trials)
        + EULER_GAMMA * norm.ppf(1 - 1 / (trials * math.e))
    )


def deflated_sharpe(
    returns: np.ndarray, trials: int, trials_variance: float | None = None
) -> dict[str, float | int | str | None]:
    """The deflated Sharpe ratio of hourly `returns` after `trials` configurations (see above);
    `trials_variance`: the trials' measured hourly-Sharpe variance, if any. `variance` says which
    V the figure used: "null" or "trials"."""
    r = np.asarray(returns, dtype=float)
    t = len(r)
    std = float(np.std(r, ddof=1)) if t > 1 else 0.0
    if t < 3 or std == 0:
        return {"dsr": None, "sr0": None, "trials": trials, "hours": t, "variance": None}
    sr = float(np.mean(r) / std)
    g3, g4 = float(skew(r)), float(kurtosis(r, fisher=False))
    sr0 = expected_max_sharpe(trials, t, trials_variance)
    denominator = math.sqrt(max(1 - g3 * sr + (g4 - 1) / 4 * sr * sr, 1e-12))
    dsr = float(norm.cdf((sr - sr0) * math.sqrt(t - 1) / denominator))
    source = "trials" if sharpe_variance(t, trials_variance) > 1.0 / (t - 1) else "null"
    return {"dsr": dsr, "sr0": sr0 * math.sqrt(HOURS_PER_YEAR), "trials": trials, "hours": t,
            "variance": source}  # fmt: skip
