"""Triple-barrier labels, and the moves a label stands for (what the decision margin prices).

A triple-barrier label asks the question the trading loop asks: bought at the close of hour t,
which comes first over the next `horizon` closes?
- take-profit: the close gains `take_profit` *after* the round-trip fee
  (close[t+k] / close[t] - 1 - ROUND_TRIP_FEE >= take_profit)  -> BUY: a trade won after fees;
- stop-loss: the close falls `stop_loss` below the entry (close[t+k] / close[t] - 1 <= -stop_loss,
  a price-only stop like `trading.stops`)                        -> SELL;
- neither by hour t + horizon (the time limit)                   -> HOLD.
The take-profit is after fees so that the fee lives once (`features.exchange.ROUND_TRIP_FEE`) and
a small up-move that would not pay its fees is a HOLD, never a BUY.

The barrier values live in `configs/features.yaml` (`labels.take_profit`, `labels.stop_loss`,
`labels.horizon_hours`) and travel in each bundle's metadata (`label_barriers`): `features/` may not
import `trading/`, so the trading side reads the model's barriers from there (or from the same
config block), never from a copy of its own.

Labels read prices up to t + horizon by definition: the splits purge at least `horizon` hours
before each test fold (`features.splits.SplitSpec`), as for the fixed label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.domain import Signal, top_signal
from features.exchange import ROUND_TRIP_FEE

TOUCH = 1e-12
"""Float slack: a close exactly on a barrier touches it (101.1 / 100 - 1 is not quite 0.011)."""


@dataclass(frozen=True)
class Barriers:
    """The three barriers of one label (fractions; `horizon` in hours)."""

    take_profit: float  # after-fee gain that makes the trade a win
    stop_loss: float  # price fall from the entry that stops it
    horizon: int  # the time limit

    def __post_init__(self) -> None:
        if not np.isfinite(self.take_profit) or self.take_profit <= 0:
            raise ValueError(f"take_profit must be > 0 (after fees), got {self.take_profit}")
        if not np.isfinite(self.stop_loss) or not 0 < self.stop_loss < 1:
            raise ValueError(f"stop_loss must be in (0, 1), got {self.stop_loss}")
        if self.horizon < 1:
            raise ValueError(f"the time limit must be >= 1 hour, got {self.horizon}")

    def to_dict(self) -> dict[str, float | int]:
        return {
            "take_profit": self.take_profit,
            "stop_loss": self.stop_loss,
            "horizon": self.horizon,
        }

    @classmethod
    def from_dict(cls, data: dict[str, float | int]) -> Barriers:
        return cls(float(data["take_profit"]), float(data["stop_loss"]), int(data["horizon"]))


def path_returns(close: pd.Series, horizon: int) -> np.ndarray:
    """(T, horizon) matrix: close[t+k] / close[t] - 1 for k = 1..horizon, looked up by *time*
    (NaN where hour t + k is not in the index, so no path spans a gap between segments)."""
    base = close.to_numpy(dtype="float64")
    cols = [
        close.reindex(close.index + pd.Timedelta(hours=k)).to_numpy(dtype="float64") / base - 1.0
        for k in range(1, horizon + 1)
    ]
    return np.column_stack(cols) if cols else np.empty((len(close), 0))


def first_touches(paths: np.ndarray, barriers: Barriers) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `paths`, the step (0-based) at which the take-profit and the stop-loss are first
    touched; `horizon` (past the last step) where never."""
    up = paths - ROUND_TRIP_FEE >= barriers.take_profit - TOUCH
    down = paths <= -barriers.stop_loss + TOUCH
    never = barriers.horizon
    first_up = np.where(up.any(axis=1), up.argmax(axis=1), never)
    first_down = np.where(down.any(axis=1), down.argmax(axis=1), never)
    return first_up, first_down


def barrier_trade_returns(close: pd.Series, barriers: Barriers) -> np.ndarray:
    """After-fee return of the trade a triple-barrier label describes: bought at the close of t,
    sold at the first barrier touched or at the time limit (NaN where the path is incomplete)."""
    paths = path_returns(close, barriers.horizon)
    first_up, first_down = first_touches(paths, barriers)
    exit_at = np.minimum(np.minimum(first_up, first_down), barriers.horizon - 1)
    gross = paths[np.arange(len(paths)), exit_at]
    gross[~np.isfinite(paths).all(axis=1)] = np.nan
    return gross - ROUND_TRIP_FEE


def triple_barrier_labels(close: pd.Series, barriers: Barriers) -> np.ndarray:
    """0 (SELL) / 1 (HOLD) / 2 (BUY) per hour, as float; NaN where the path is incomplete.

    Within one hour a close cannot be on both sides, so the first barrier touched is unambiguous.
    """
    paths = path_returns(close, barriers.horizon)
    first_up, first_down = first_touches(paths, barriers)
    labels = np.full(len(close), float(Signal.HOLD))
    labels[first_up < first_down] = float(Signal.BUY)
    labels[first_down < first_up] = float(Signal.SELL)
    labels[~np.isfinite(paths).all(axis=1)] = np.nan
    return labels


@dataclass(frozen=True)
class LabelMoves:
    """The gross price moves a model's BUY and SELL labels stand for (fractions, both > 0).

    Fixed or quantile label: a BUY is a rise of at least the threshold, a SELL a fall of at least
    it, so `up = down = threshold` (a conservative, minimal move). Triple barrier: a BUY rises to
    the take-profit (`take_profit + ROUND_TRIP_FEE` gross), a SELL falls to the stop
    (`stop_loss`). HOLD stands for no move.
    """

    up: float
    down: float
    barriers: Barriers | None = None  # a triple-barrier label's own barriers (its exits)

    def __post_init__(self) -> None:
        for name in ("up", "down"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"LabelMoves.{name} must be finite and > 0, got {value}")

    @classmethod
    def of_threshold(cls, threshold: float) -> LabelMoves:
        return cls(threshold, threshold)

    @classmethod
    def of_barriers(cls, barriers: Barriers) -> LabelMoves:
        return cls(barriers.take_profit + ROUND_TRIP_FEE, barriers.stop_loss, barriers)


def expected_edge(probabilities: np.ndarray, moves: LabelMoves) -> np.ndarray:
    """E = p_buy * up - p_sell * down - ROUND_TRIP_FEE: the expected after-fee return of buying
    now, if the model's probabilities are calibrated and the label's moves are what a BUY and a
    SELL bring. Works on one (3,) row or an (N, 3) array of (sell, hold, buy) probabilities."""
    p = np.asarray(probabilities, dtype="float64")
    return p[..., 2] * moves.up - p[..., 0] * moves.down - ROUND_TRIP_FEE


def row_edge(probabilities: tuple[float, float, float], moves: LabelMoves) -> float:
    """`expected_edge` of one (sell, hold, buy) row in plain floats: the same operations in the
    same order, so the same number, without numpy's cost on the loop's per-hour path."""
    sell, _, buy = probabilities
    return buy * moves.up - sell * moves.down - ROUND_TRIP_FEE


def expected_fall(probabilities: np.ndarray, moves: LabelMoves) -> np.ndarray:
    """F = p_sell * down - p_buy * up: the expected gross move a sale now avoids, if the
    probabilities are calibrated (no fee: a held position pays its sale's fee sooner or later,
    selling now or later). What `sell_margin` asks of a SELL. Rows as `expected_edge`."""
    p = np.asarray(probabilities, dtype="float64")
    return p[..., 0] * moves.down - p[..., 2] * moves.up


def row_fall(probabilities: tuple[float, float, float], moves: LabelMoves) -> float:
    """`expected_fall` of one row in plain floats (the same operations in the same order)."""
    sell, _, buy = probabilities
    return sell * moves.down - buy * moves.up


MARGIN_NEEDS_MOVES = (
    "policy.margin or policy.sell_margin is set but the model's label moves are unknown (a "
    "quantile label whose bundle or fold predictions carry no fitted threshold?): set them to "
    "null or give the moves"
)


def acted_signals(
    probabilities: np.ndarray,
    margin: float | None,
    moves: LabelMoves | None,
    min_confidence: float = 0.0,
    sell_margin: float | None = None,
) -> np.ndarray:
    """The calls the trading policy acts on (`trading.policy.decide`), for (N, 3) probabilities.

    Without a margin: the argmax, HOLD where the top probability is below `min_confidence`.
    With one: BUY where `expected_edge` exceeds it, SELL where the argmax is SELL, HOLD otherwise
    (the margin replaces min_confidence). With a `sell_margin`, whatever is not a BUY is a SELL
    only where `expected_fall` exceeds it (the argmax no longer says SELL): a held position is
    kept through a weak SELL. One rule for the loop, the backtester and whatever scores a
    configuration's calls (Tune), so a margin is scored as it trades. Needs `moves` whenever a
    margin is set: the edge of an unknown label cannot be priced.
    """
    p = np.asarray(probabilities, dtype="float64")
    top = p.argmax(axis=-1)
    if (margin is not None or sell_margin is not None) and moves is None:
        raise ValueError(MARGIN_NEEDS_MOVES)
    if margin is None:
        calls = np.where(p.max(axis=-1) < min_confidence, int(Signal.HOLD), top)
    else:
        held = np.where(top == int(Signal.SELL), int(Signal.SELL), int(Signal.HOLD))
        calls = np.where(expected_edge(p, moves) > margin, int(Signal.BUY), held)  # type: ignore[arg-type]
    if sell_margin is None:
        return calls
    sells = expected_fall(p, moves) > sell_margin  # type: ignore[arg-type]
    not_buy = np.where(sells, int(Signal.SELL), int(Signal.HOLD))
    return np.where(calls == int(Signal.BUY), calls, not_buy)


def acted_signal(
    probabilities: tuple[float, float, float],
    margin: float | None,
    moves: LabelMoves | None,
    min_confidence: float = 0.0,
    sell_margin: float | None = None,
) -> Signal:
    """`acted_signals` for one row (the live loop's and the backtester's hour), in plain floats;
    the vectorised form is checked against it row for row."""
    top = top_signal(probabilities)  # numpy's argmax: the first maximum wins
    if (margin is not None or sell_margin is not None) and moves is None:
        raise ValueError(MARGIN_NEEDS_MOVES)
    if margin is None:
        call = Signal.HOLD if max(probabilities) < min_confidence else top
    elif row_edge(probabilities, moves) > margin:  # type: ignore[arg-type]
        call = Signal.BUY
    else:
        call = Signal.SELL if top is Signal.SELL else Signal.HOLD
    if sell_margin is None or call is Signal.BUY:
        return call
    return Signal.SELL if row_fall(probabilities, moves) > sell_margin else Signal.HOLD  # type: ignore[arg-type]


def bundle_barriers(metadata: dict[str, object]) -> Barriers | None:
    """The barriers a bundle's model trained on (its `label_barriers`), None for a threshold
    label: the one way every reader of a bundle (scoring, replay, the loop) rebuilds its labels."""
    data = metadata.get("label_barriers")
    return Barriers.from_dict(data) if isinstance(data, dict) else None


def bundle_moves(metadata: dict[str, object]) -> LabelMoves:
    """The moves of a bundle's label: its barriers, else its (fold-fitted) `label_threshold`."""
    barriers = bundle_barriers(metadata)
    if barriers is not None:
        return LabelMoves.of_barriers(barriers)
    return LabelMoves.of_threshold(float(metadata["label_threshold"]))  # type: ignore[arg-type]
