"""The decision margin: coverage against precision and after-fee return, and fitting it.

The policy (`trading.policy`, `policy.margin`) buys only when the expected after-fee move
E = p_buy * up - p_sell * down - ROUND_TRIP_FEE (`features.barriers.expected_edge`) exceeds a
margin. A higher margin trades fewer hours (coverage) and, if the probabilities carry an edge,
wins more often. This module measures that trade-off on out-of-sample predictions and picks the
margin from it. The trade each hour stands for is the one the trained label describes: bought at
the close, sold at the first barrier or the time limit (triple barrier), or after the horizon
(fixed/quantile), minus the round-trip fee (`label_trade_returns`). Trades of neighbouring hours
overlap, so the table's figures are per trade, not a compounded equity curve (the research
replay through `plan_hour` gives that).

Fitting is only honest on hours before those it is reported on: `fit_margin_before` reads only
hours whose trade ended before the cut, and the research report prints the margin fitted on its
own hours so that a run ending before the test period (`--end`) yields the margin to configure.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.barriers import LabelMoves, barrier_trade_returns, expected_edge
from features.config import LabelConfig
from features.exchange import ROUND_TRIP_FEE
from features.labels import forward_returns

MARGIN_GRID = (-0.002, -0.001, 0.0, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01)
"""Margins the report tabulates (fractions of the entry price)."""
MIN_TRADES = 30
"""A margin that trades fewer hours than this on the fitting hours is not chosen: its mean
return is noise."""
PROBA = ["p_sell", "p_hold", "p_buy"]


def label_trade_returns(close: pd.Series, labels: LabelConfig) -> pd.Series:
    """After-fee return of the trade the label describes, for every hour (NaN where unknown)."""
    barriers = labels.barriers()
    if barriers is None:
        gross = forward_returns(close, labels.horizon_hours).to_numpy()
        return pd.Series(gross - ROUND_TRIP_FEE, index=close.index)
    return pd.Series(barrier_trade_returns(close, barriers), index=close.index)


def margin_curve(
    proba: np.ndarray,
    trade_returns: np.ndarray,
    moves: LabelMoves,
    margins: tuple[float, ...] = MARGIN_GRID,
) -> list[dict[str, Any]]:
    """Per margin: coverage (share of hours whose edge clears it), trades, precision (share of
    those trades won after fees) and the mean and summed after-fee return per trade."""
    edge = expected_edge(np.asarray(proba), moves)
    r = np.asarray(trade_returns, dtype="float64")
    known = np.isfinite(r)
    edge, r = edge[known], r[known]
    rows = []
    for margin in margins:
        take = edge > margin
        n = int(take.sum())
        rows.append(
            {
                "margin": float(margin),
                "hours": int(len(r)),
                "coverage": float(take.mean()) if len(r) else 0.0,
                "trades": n,
                "precision": float((r[take] > 0).mean()) if n else None,
                "mean_return": float(r[take].mean()) if n else None,
                "sum_return": float(r[take].sum()),
            }
        )
    return rows


def fit_margin(curve: list[dict[str, Any]], min_trades: int = MIN_TRADES) -> float:
    """The margin whose trades earned the most after fees in total, among those with at least
    `min_trades`; the largest margin when none earned anything (no edge: trade as little as the
    grid allows)."""
    eligible = [row for row in curve if row["trades"] >= min_trades and row["sum_return"] > 0]
    if not eligible:
        return float(max(row["margin"] for row in curve))
    return float(max(eligible, key=lambda row: row["sum_return"])["margin"])


def fit_margin_before(
    predictions: pd.DataFrame,
    close: pd.Series,
    labels: LabelConfig,
    before: pd.Timestamp,
    margins: tuple[float, ...] = MARGIN_GRID,
) -> tuple[float, list[dict[str, Any]]]:
    """The margin fitted on the out-of-sample `predictions` (index time, PROBA columns) of hours
    whose trade ended before `before` (hour + horizon < before), and the curve it chose from."""
    moves = labels.moves()
    if moves is None:
        raise ValueError("a quantile label has no fixed moves to price the edge with")
    horizon = pd.Timedelta(hours=labels.horizon_hours)
    early = predictions[predictions.index + horizon < before]
    if len(early) == 0:
        raise ValueError(f"no predictions whose trade ends before {before} to fit a margin on")
    returns = label_trade_returns(close, labels).reindex(early.index).to_numpy()
    curve = margin_curve(early[PROBA].to_numpy(), returns, moves, margins)
    return fit_margin(curve), curve
