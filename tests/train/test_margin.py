"""Coverage against precision for a range of margins, and fitting the margin on pre-test hours."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.barriers import Barriers, LabelMoves, barrier_trade_returns, expected_edge
from features.config import LabelConfig
from features.exchange import ROUND_TRIP_FEE
from train.margin import PROBA, edge_curve, fit_margin, fit_margin_before

TB = LabelConfig(mode="triple_barrier", take_profit=0.01, stop_loss=0.01, horizon_hours=3)


def closes(values: list[float], start: str = "2024-01-01 00:00") -> pd.Series:
    return pd.Series(values, index=pd.date_range(start, periods=len(values), freq="h"))


def test_barrier_trade_exits_at_the_first_barrier_or_the_time_limit() -> None:
    barriers = Barriers(0.01, 0.01, 3)
    win = barrier_trade_returns(closes([100, 101.5, 90, 90]), barriers)[0]
    assert win == pytest.approx(0.015 - ROUND_TRIP_FEE)  # sold at the take-profit close
    loss = barrier_trade_returns(closes([100, 98.5, 110, 110]), barriers)[0]
    assert loss == pytest.approx(-0.015 - ROUND_TRIP_FEE)
    timed = barrier_trade_returns(closes([100, 100.3, 100.1, 100.2]), barriers)[0]
    assert timed == pytest.approx(0.002 - ROUND_TRIP_FEE)


def test_curve_trades_less_and_better_as_the_margin_rises() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    p_buy = rng.uniform(0.1, 0.7, n)
    proba = np.column_stack([(1 - p_buy) / 2, (1 - p_buy) / 2, p_buy])
    returns = np.where(rng.uniform(size=n) < p_buy, 0.01, -0.01)  # calibrated by construction
    curve = edge_curve(expected_edge(proba, LabelMoves(0.01, 0.01)), returns, (0.0, 0.001, 0.002))
    coverage = [row["coverage"] for row in curve]
    assert coverage == sorted(coverage, reverse=True) and coverage[0] < 1.0
    precision = [row["precision"] for row in curve]
    assert precision == sorted(precision)
    assert curve[0]["trades"] == int(round(coverage[0] * n))


def test_fit_margin_picks_the_best_total_and_refuses_noise() -> None:
    curve = [
        {"margin": 0.0, "trades": 500, "sum_return": 0.5},
        {"margin": 0.001, "trades": 200, "sum_return": 0.9},
        {"margin": 0.002, "trades": 5, "sum_return": 2.0},  # too few trades to believe
    ]
    assert fit_margin(curve) == 0.001
    losing = [{"margin": m, "trades": 100, "sum_return": -1.0} for m in (0.0, 0.003)]
    assert fit_margin(losing) == 0.003  # no edge: trade as little as the grid allows


def test_fit_margin_reads_only_hours_whose_trade_ended_before_the_cut() -> None:
    rng = np.random.default_rng(1)
    close = closes(list(100 * np.cumprod(1 + rng.normal(0, 0.01, 400))))
    p = rng.dirichlet([2, 2, 2], len(close))
    predictions = pd.DataFrame(p, index=close.index, columns=PROBA)
    cut = close.index[200]
    margin, curve = fit_margin_before(predictions, close, TB, cut)
    later = predictions.copy()
    later.loc[later.index + pd.Timedelta(hours=3) >= cut] = [0.0, 0.0, 1.0]  # test hours changed
    margin_again, curve_again = fit_margin_before(later, close, TB, cut)
    assert (margin, curve) == (margin_again, curve_again)
    assert curve[0]["hours"] == 197  # hours 0..196: their 3-hour trades end before hour 200
    with pytest.raises(ValueError, match="before"):
        fit_margin_before(predictions, close, TB, close.index[2])
