"""Finished Tune trials as `train.tune_search.summarize` reads them from a ResultGrid (metrics,
config, path, error), for tests that choose winners without running Ray: what stands in is Ray
Tune's result object; the choosing, the record and the report are the product under test."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


def tune_result(
    name: str,
    values: dict[str, Any],
    balanced_accuracy: float,
    sharpe: float,
    total_return: float,
    scored: tuple[str, str],
) -> SimpleNamespace:
    """One finished trial of the searched `values`, scored on the hours `scored` (first, last)."""
    metrics = {
        "trial_id": name,
        "score_balanced_accuracy": balanced_accuracy,
        "score_log_loss": 1.05,
        "score_sharpe": sharpe,
        "score_return": total_return,
        "scored_hours": 2000,
        "first_scored": scored[0],
        "last_scored": scored[1],
        "folds": "-3,-2,-1",
        "buy_calls": 300,
    }
    return SimpleNamespace(metrics=metrics, config=values, path=name, error=None)
