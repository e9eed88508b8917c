"""Each market's replay material: its hours, closes and out-of-sample predictions, aligned.

A model never trades the hours it was trained on. Each market's predictions come from two places:
- the bundle's `oos.parquet`: the walk-forward test hours, each predicted by the fold model that
  had not seen it (used as stored, never recomputed);
- the bundle itself, batched, on the hours after its training window: after
  `train_window[1] + horizon` (the last training label looked `horizon` hours ahead; the same
  cut as `train.gate.comparable_hours`) and after the last oos hour. `walk_forward_predictions`
  refuses to return a bundle prediction inside that window.
The backtester (`trading.backtest`) walks the result hour by hour; a replay of recorded live hours
(`trading.replay`) builds the same `MarketHours` from the predictions Serve would have made.
Predictions may carry `novel` (the bundle's novelty gate, `train.novelty`, as Serve scores it);
the replay then opens no position on those hours, as the loop does. oos rows carry none (their
fold models kept no reference rows): they trade as familiar.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.barriers import LabelMoves, bundle_moves
from features.dataset import MarketDataset, usable_samples
from features.sources import CandleSource
from trading.step import rolling_sizing_volatility
from train.bundle_io import dataset_for_model, trained_until
from train.novelty import dataset_scores
from train.registry import ModelRegistry

if TYPE_CHECKING:  # torch loads only when a bundle does: `python -m trading status` stays light
    from train.bundle import HybridModel

PROBA_COLUMNS = ["p_sell", "p_hold", "p_buy"]
INFERENCE_BATCH = 4096  # windows per predict_proba call: ~36 MB of float64 features


class LookaheadError(AssertionError):
    """A prediction would have come from a model trained on that hour (or on its future)."""


def prediction_positions(data: MarketDataset) -> np.ndarray:
    """Positions whose 24-hour window is complete, contiguous and observed at its end: the hours
    a live loop could have scored. No label is needed, so the newest hours count too."""
    any_label = np.zeros(len(data.times))
    return usable_samples(data.times, data.features, data.filled, any_label, data.sequence_length)


def bundle_proba(model: HybridModel, data: MarketDataset, positions: np.ndarray) -> np.ndarray:
    """The bundle's probabilities at `positions`, in batches so memory stays flat."""
    parts = [
        model.predict_proba(data.raw_windows(positions[start : start + INFERENCE_BATCH]))
        for start in range(0, len(positions), INFERENCE_BATCH)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 3))


def walk_forward_predictions(
    model: HybridModel, data: MarketDataset, oos: pd.DataFrame | None
) -> pd.DataFrame:
    """Out-of-sample predictions by hour: oos rows first, then the bundle after training.

    Columns: p_sell, p_hold, p_buy, source ("oos" | "bundle"), model_version, dissimilarity and
    novel (NaN and False where unknown: oos rows, a bundle made before the gate). oos hours
    missing from `data` (other candles than the fit saw) are dropped: they could not be priced.
    """
    version = model.version
    frames = []
    last_oos = pd.Timestamp.min
    if oos is not None and len(oos):
        kept = oos[oos.index.isin(data.times)]
        frames.append(
            kept[PROBA_COLUMNS].assign(
                source="oos", model_version=[f"{version}/fold{f}" for f in kept["fold"]]
            )
        )
        last_oos = oos.index.max()
    cutoff = trained_until(model.metadata)
    positions = prediction_positions(data)
    positions = positions[data.times[positions] > max(cutoff, last_oos)]
    times = data.times[positions]
    if len(times) and times.min() <= cutoff:
        raise LookaheadError(f"{data.market}: bundle {version} would trade {times.min()}")
    proba = bundle_proba(model, data, positions)
    novelty = model.novelty
    known = novelty is not None
    score = dataset_scores(novelty, data, positions) if known else np.full(len(times), np.nan)
    frames.append(
        pd.DataFrame(proba, index=times, columns=PROBA_COLUMNS).assign(
            source="bundle",
            model_version=version,
            dissimilarity=score,
            novel=score > novelty.threshold if known else False,
        )
    )
    out = pd.concat(frames).sort_index()
    out.index.name = "time"
    return out


@dataclass(frozen=True)
class MarketHours:
    """One market's timeline, closes and aligned predictions; `start` is the first traded hour.

    Positions before `start` are history the risk inputs (volatility windows) may read.
    """

    market: str
    times: pd.DatetimeIndex
    close: np.ndarray
    proba: np.ndarray  # (n, 3); NaN rows where there is no prediction
    source: np.ndarray  # "oos" | "bundle" | ""
    model_version: np.ndarray
    start: int
    volatility: np.ndarray  # the sizing rule's 24 h volatility at each position
    novel: np.ndarray  # True where the prediction's input was novel (opens no position)
    moves: LabelMoves | None = None  # the model's label moves (policy.margin prices with them)

    @property
    def replayed(self) -> pd.DatetimeIndex:
        return self.times[self.start :]


def market_hours(
    market: str,
    times: pd.DatetimeIndex,
    close: np.ndarray,
    predictions: pd.DataFrame,
    moves: LabelMoves | None = None,
) -> MarketHours:
    """Align `predictions` (indexed by hour, see walk_forward_predictions) with a timeline."""
    if len(predictions) == 0:
        raise ValueError(
            f"{market}: no out-of-sample predictions to replay (no oos.parquet rows and no "
            "candles after the bundle's training window)"
        )
    aligned = predictions.reindex(times)
    has = aligned["source"].notna().to_numpy()
    if not has.any():
        raise ValueError(f"{market}: none of the predicted hours are in the candle timeline")
    return MarketHours(
        market=market,
        times=times,
        close=np.asarray(close, dtype=float),
        proba=aligned[PROBA_COLUMNS].to_numpy(dtype=float),
        source=aligned["source"].fillna("").to_numpy(dtype=object),
        model_version=aligned["model_version"].fillna("").to_numpy(dtype=object),
        start=int(np.argmax(has)),
        volatility=rolling_sizing_volatility(close),
        novel=novel_flags(aligned),
        moves=moves,
    )


def novel_flags(aligned: pd.DataFrame) -> np.ndarray:
    """The `novel` column as booleans; all False when the predictions carry no novelty."""
    if "novel" not in aligned:
        return np.zeros(len(aligned), dtype=bool)
    return aligned["novel"].astype("boolean").fillna(False).to_numpy(dtype=bool)


def load_market_hours(
    market: str,
    source: CandleSource,
    registry: ModelRegistry,
    workdir: Path,
    version: str | None = None,
    timings: dict[str, float] | None = None,
) -> MarketHours:
    """Fetch the bundle, build the market's features once, predict every unseen hour in batch.

    `timings` (if given) accumulates features_s (bundle + candles + features) and inference_s.
    """
    from train.bundle import load_bundle

    timings = {} if timings is None else timings
    started = time.perf_counter()
    bundle_dir = registry.fetch(market, version, dest_dir=workdir)
    model = load_bundle(bundle_dir)
    oos_path = bundle_dir / "oos.parquet"
    oos = pd.read_parquet(oos_path) if oos_path.is_file() else None
    meta = model.metadata
    candles = source.history(market)
    data = dataset_for_model(meta, candles, market, source)
    built = time.perf_counter()
    predictions = walk_forward_predictions(model, data, oos)
    hours = market_hours(market, data.times, data.close, predictions, bundle_moves(meta))
    timings["features_s"] = timings.get("features_s", 0.0) + built - started
    timings["inference_s"] = timings.get("inference_s", 0.0) + time.perf_counter() - built
    return hours
