"""Choosing a Tune winner by a classification or a trading metric (no Ray: the trials are given)."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from train.config import TuneConfig
from train.tune_search import format_outcome, summarize

from standins.tune_results import tune_result

SCORED = ("2022-10-01 00:00:00", "2022-12-31 17:00:00")


def _trial(name: str, balanced_accuracy: float, sharpe: float, total_return: float):
    values = {"trading.policy.margin": name}
    return tune_result(name, values, balanced_accuracy, sharpe, total_return, SCORED)


TRIALS = [
    _trial("accurate", 0.41, -0.8, -0.12),
    _trial("profitable", 0.37, 0.9, 0.05),
    _trial("idle", 0.35, math.nan, 0.0),  # never traded: no Sharpe
]


@pytest.mark.parametrize(
    ("metric", "winner"),
    [("balanced_accuracy", "accurate"), ("sharpe", "profitable"), ("return", "profitable")],
)
def test_the_winner_follows_the_metric(metric: str, winner: str) -> None:
    outcome = summarize("KRW-BTC", TRIALS, metric, 0.0)
    assert outcome.winner is not None and outcome.winner.name == winner
    table = format_outcome(outcome)
    assert f"metric {metric}" in table and table.index(winner) < table.index("idle")


def test_a_trial_that_never_traded_cannot_win_on_sharpe() -> None:
    outcome = summarize("KRW-BTC", [TRIALS[2]], "sharpe", 0.0)
    assert outcome.winner is None and outcome.rows[0].status == "done"
    assert "winner: none (no finished trial has a sharpe)" in format_outcome(outcome)


def test_an_unknown_metric_is_refused_naming_it() -> None:
    assert TuneConfig(metric="sharpe").metric == "sharpe"
    with pytest.raises(ValidationError, match="metric"):
        TuneConfig(metric="profit")
