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

Moves: a fixed or barrier label's are in its config; a quantile label's threshold is fitted on
each fold's training returns, so its folds' predictions carry it (`research_cache.THRESHOLD`) and
each fold's calls are priced with their own (`fold_moves`), as a quantile bundle's calls are
priced with its `label_threshold`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.barriers import (
    MARGIN_NEEDS_MOVES,
    LabelMoves,
    acted_signals,
    barrier_trade_returns,
    expected_edge,
)
from features.config import LabelConfig
from features.exchange import ROUND_TRIP_FEE
from features.labels import forward_returns
from train.research_cache import PROBA, THRESHOLD

MARGIN_GRID = (-0.002, -0.001, 0.0, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01)
"""Margins the report tabulates (fractions of the entry price)."""
MIN_TRADES = 30
"""A margin that trades fewer hours than this on the fitting hours is not chosen: its mean
return is noise."""


def fold_moves(labels: LabelConfig, predictions: pd.DataFrame) -> LabelMoves | None:
    """The moves that price `predictions` (one fold's hours): the label's own (fixed threshold,
    barriers), else the fold threshold the predictions carry (quantile); None when neither is
    known. Hours of several thresholds (a leaky twin's walk-forward fold mixes its K-fold parts,
    each fitted on nearly the same rows) are priced with their mean."""
    known = labels.moves()
    if known is not None:
        return known
    if THRESHOLD not in predictions or len(predictions) == 0:
        return None
    values = predictions[THRESHOLD].to_numpy(dtype="float64")
    return LabelMoves.of_threshold(float(values.mean())) if np.isfinite(values).all() else None


def _by_fold(predictions: pd.DataFrame) -> list[np.ndarray]:
    """Row masks of each fold (`fold` column; all rows when there is none)."""
    if "fold" not in predictions:
        return [np.ones(len(predictions), dtype=bool)]
    fold = predictions["fold"].to_numpy()
    return [fold == number for number in np.unique(fold)]


def hour_edges(predictions: pd.DataFrame, labels: LabelConfig) -> np.ndarray | None:
    """`expected_edge` of every hour (PROBA and `fold` columns), priced with its own fold's moves;
    None when some fold's moves are unknown."""
    proba = predictions[PROBA].to_numpy(dtype="float64")
    edge = np.full(len(predictions), np.nan)
    for rows in _by_fold(predictions):
        moves = fold_moves(labels, predictions[rows])
        if moves is None:
            return None
        edge[rows] = expected_edge(proba[rows], moves)
    return edge


def acted_calls(
    predictions: pd.DataFrame,
    margin: float | None,
    labels: LabelConfig,
    min_confidence: float,
    sell_margin: float | None = None,
) -> np.ndarray:
    """`features.barriers.acted_signals` of every hour, margins priced with its fold's moves;
    a margin where a fold's moves are unknown is refused (MARGIN_NEEDS_MOVES)."""
    proba = predictions[PROBA].to_numpy(dtype="float64")
    if margin is None and sell_margin is None:
        return acted_signals(proba, None, None, min_confidence)
    calls = np.empty(len(predictions), dtype=np.int64)
    for rows in _by_fold(predictions):
        moves = fold_moves(labels, predictions[rows])
        if moves is None:
            raise ValueError(f"{MARGIN_NEEDS_MOVES} (label mode {labels.mode})")
        calls[rows] = acted_signals(proba[rows], margin, moves, min_confidence, sell_margin)
    return calls


def label_trade_returns(close: pd.Series, labels: LabelConfig) -> pd.Series:
    """After-fee return of the trade the label describes, for every hour (NaN where unknown)."""
    barriers = labels.barriers()
    if barriers is None:
        gross = forward_returns(close, labels.horizon_hours).to_numpy()
        return pd.Series(gross - ROUND_TRIP_FEE, index=close.index)
    return pd.Series(barrier_trade_returns(close, barriers), index=close.index)


def edge_curve(
    edge: np.ndarray, trade_returns: np.ndarray, margins: tuple[float, ...] = MARGIN_GRID
) -> list[dict[str, Any]]:
    """Per margin, over hours whose edges are priced (`hour_edges`, `expected_edge`): coverage
    (share of hours whose edge clears it), trades, precision (share of those trades won after
    fees) and the mean and summed after-fee return per trade."""
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
    whose trade ended before `before` (hour + horizon < before), and the curve it chose from.
    A quantile label's predictions need their folds' thresholds (`fold`, THRESHOLD columns)."""
    horizon = pd.Timedelta(hours=labels.horizon_hours)
    early = predictions[predictions.index + horizon < before]
    if len(early) == 0:
        raise ValueError(f"no predictions whose trade ends before {before} to fit a margin on")
    edge = hour_edges(early, labels)
    if edge is None:
        raise ValueError(f"{MARGIN_NEEDS_MOVES} (label mode {labels.mode})")
    returns = label_trade_returns(close, labels).reindex(early.index).to_numpy()
    curve = edge_curve(edge, returns, margins)
    return fit_margin(curve), curve


def margin_table(
    close: pd.Series, hours: pd.DatetimeIndex, frames: dict[str, pd.DataFrame], labels: LabelConfig
) -> dict[str, Any]:
    """Per model (predictions with `fold`, PROBA and, for a quantile label, THRESHOLD): the margin
    curve on `hours` and the margin these hours would fit. A model whose moves are unknown (a
    quantile cache entry written before folds stored their threshold) has none."""
    returns = label_trade_returns(close, labels).reindex(hours).to_numpy()
    out = {}
    for name, frame in frames.items():
        edge = hour_edges(frame.reindex(hours), labels)
        if edge is not None:
            curve = edge_curve(edge, returns)
            out[name] = {"curve": curve, "fitted_here": fit_margin(curve)}
    return out
