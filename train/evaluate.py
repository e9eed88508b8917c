"""Honest numbers: out-of-sample metrics, an after-fee signal return, and baselines beside them.

Accuracy alone flatters a 3-class problem with a dominant class, so every report carries balanced
accuracy, per-class precision/recall, macro F1, log loss, the confusion matrix and what the signals
would have earned after Upbit's 0.05 % fee per side, next to buy-and-hold of the same hours.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.exchange import FEE_RATE

CLASS_NAMES = ("sell", "hold", "buy")
SEED_CLAIM = "81-87 % accuracy (the seed's random split of overlapping windows)"


def confusion(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """3x3 counts, rows = true class, columns = predicted class."""
    matrix = np.zeros((3, 3), dtype=np.int64)
    np.add.at(matrix, (y, pred), 1)
    return matrix


def classification_metrics(
    y: np.ndarray, proba: np.ndarray, calls: np.ndarray | None = None
) -> dict[str, Any]:
    """Scores of the calls against `y`: the argmax of `proba`, or `calls` when given (the calls a
    policy acts on, `features.barriers.acted_signals`); log loss always reads `proba`."""
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(proba).argmax(axis=1) if calls is None else np.asarray(calls, dtype=np.int64)
    matrix = confusion(y, pred)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    tp = np.diag(matrix).astype("float64")
    recall = np.divide(tp, support, out=np.zeros(3), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(3), where=predicted > 0)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros(3), where=(precision + recall) > 0
    )
    present = support > 0
    clipped = np.clip(np.asarray(proba)[np.arange(len(y)), y], 1e-15, 1.0)
    return {
        "n": int(len(y)),
        "accuracy": float(tp.sum() / max(len(y), 1)),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "log_loss": float(-np.log(clipped).mean()) if len(y) else float("nan"),
        "precision": dict(zip(CLASS_NAMES, map(float, precision), strict=True)),
        "recall": dict(zip(CLASS_NAMES, map(float, recall), strict=True)),
        "confusion": matrix.tolist(),
    }


def positions_from_signals(signals: np.ndarray) -> np.ndarray:
    """Long (1) from a BUY until the next SELL, flat (0) otherwise; HOLD keeps the position."""
    state = pd.Series(np.where(signals == 2, 1.0, np.where(signals == 0, 0.0, np.nan)))
    return state.ffill().fillna(0.0).to_numpy()


def signal_return(
    signals: np.ndarray, next_returns: np.ndarray, fee: float = FEE_RATE
) -> dict[str, float]:
    """Compounded after-fee return of trading the signals hour by hour, and buy-and-hold's.

    `next_returns[i]` is close[t_i + 1h] / close[t_i] - 1: the position decided at hour t_i's close
    earns the next hour. Every position change pays `fee`; buy-and-hold pays it twice.
    """
    pos = positions_from_signals(np.asarray(signals))
    r = np.nan_to_num(np.asarray(next_returns, dtype="float64"))
    changes = np.abs(np.diff(np.concatenate([[0.0], pos, [0.0]])))
    growth = np.prod(1.0 + pos * r) * np.prod((1.0 - fee) ** changes)
    hold_growth = np.prod(1.0 + r) * (1.0 - fee) ** 2
    return {
        "signal_return": float(growth - 1.0),
        "buy_and_hold_return": float(hold_growth - 1.0),
        "trades": int(changes.sum()),
        "exposure": float(pos.mean()) if len(pos) else 0.0,
    }


def evaluate_predictions(
    y: np.ndarray, proba: np.ndarray, next_returns: np.ndarray
) -> dict[str, Any]:
    return {
        **classification_metrics(y, proba),
        **signal_return(np.asarray(proba).argmax(axis=1), next_returns),
    }


def one_hot(labels: np.ndarray, smoothing: float = 1e-3) -> np.ndarray:
    """A constant prediction as probabilities (slightly smoothed so log loss stays finite)."""
    out = np.full((len(labels), 3), smoothing / 2)
    out[np.arange(len(labels)), labels] = 1.0 - smoothing
    return out


def format_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """One line per model/baseline: the numbers a reader needs side by side."""
    header = (
        f"{'model':<28} {'n':>6} {'acc':>6} {'bal_acc':>7} {'macroF1':>7} {'logloss':>7} "
        f"{'rec S/H/B':>14} {'signal':>8} {'B&H':>8} {'trades':>6}"
    )
    lines = [header, "-" * len(header)]
    for name, m in rows:
        rec = "/".join(f"{m['recall'][c]:.2f}" for c in CLASS_NAMES)
        signal = f"{m['signal_return']:+.1%}" if "signal_return" in m else "-"
        hold = f"{m['buy_and_hold_return']:+.1%}" if "buy_and_hold_return" in m else "-"
        trades = str(m.get("trades", "-"))
        lines.append(
            f"{name:<28} {m['n']:>6} {m['accuracy']:>6.1%} {m['balanced_accuracy']:>7.1%} "
            f"{m['macro_f1']:>7.3f} {m['log_loss']:>7.3f} {rec:>14} "
            f"{signal:>8} {hold:>8} {trades:>6}"
        )
    return "\n".join(lines)
