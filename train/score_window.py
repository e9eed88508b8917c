"""Score a stored bundle on any later window of candles: how a model is judged after it shipped.

Candles before `start` only warm the indicators up; a gap longer than the bundle's max_gap_hours
restarts the warm-up instead of failing. The bundle's own horizon and threshold label the hours, and
the majority-class baseline uses the class shares of the bundle's *training* window.

Hours inside the bundle's training window (its first training hour to its last plus the label
horizon, the hours whose prices its labels read) are refused unless `allow_in_sample`: a model
scores well on hours it learnt and that says nothing about hours to come. Allowed, the result
counts them (`in_sample_hours`) and the table says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from train.bundle import ServableModel
from train.bundle_io import dataset_for_model
from train.config import ReferenceLabel
from train.evaluate import evaluate_predictions, one_hot
from train.pipeline import next_returns, persistence_labels
from train.reference import reference_block


class InSampleError(ValueError):
    """The requested window holds hours the bundle trained on."""


def training_span(meta: dict[str, Any]) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First training hour and the last hour its training labels read (train end + horizon)."""
    first, last = (pd.Timestamp(t) for t in meta["train_window"])
    return first, last + pd.Timedelta(hours=int(meta["horizon"]))


def check_out_of_sample(meta: dict[str, Any], times: pd.DatetimeIndex, allow: bool) -> int:
    """How many of `times` are in-sample; InSampleError (naming the window) unless `allow`."""
    first, last = training_span(meta)
    inside = (times >= first) & (times <= last)
    count = int(inside.sum())
    if count and not allow:
        raise InSampleError(
            f"{count} of the {len(times)} hours asked for ({times[inside][0]} .. "
            f"{times[inside][-1]}) lie inside {meta.get('version', 'the bundle')}'s training "
            f"window {first} .. {last} (its last training hour plus the {meta['horizon']}-hour "
            f"label): scores there say nothing about later hours. Start after {last}, or pass "
            "--allow-in-sample to see them marked in-sample"
        )
    return count


def score_window(
    model: ServableModel,
    candles: pd.DataFrame,
    start: pd.Timestamp,
    end: pd.Timestamp | None = None,
    allow_in_sample: bool = False,
    reference: ReferenceLabel | None = None,
) -> dict[str, Any]:
    """The bundle's calls on the window, scored against its own label (`model`, `baselines`) and
    against the reference label (`reference`, default: the `ReferenceLabel` defaults)."""
    meta = model.metadata
    market = str(meta.get("market", "unknown"))
    data = dataset_for_model(meta, candles, market)
    times = data.sample_times
    keep = (times >= start) & (times <= (end if end is not None else times.max()))
    positions = data.samples[keep]
    if len(positions) == 0:
        raise ValueError(
            f"no scorable hours for {market} in [{start}, {end or 'end'}]: the candles there "
            f"span {data.times.min()} .. {data.times.max()} (each hour needs warm-up before it "
            f"and {data.horizon} hours after it for its label)"
        )
    in_sample = check_out_of_sample(meta, data.times[positions], allow_in_sample)
    threshold = float(meta["label_threshold"])
    y = data.labels(threshold, positions)
    nxt = next_returns(data, positions)
    proba = model.predict_proba(data.raw_windows(positions))
    majority = int(np.argmax(meta.get("train_class_shares", [0.0, 1.0, 0.0])))
    baselines = {
        "majority class (training window)": one_hot(np.full(len(y), majority)),
        "persistence (label t-H)": one_hot(persistence_labels(data, positions, threshold)),
    }
    times = pd.DatetimeIndex(data.times[positions])
    close = pd.Series(data.close, index=data.times)
    calls = {"model": proba} | baselines
    return {
        "market": market,
        "version": model.version,
        "window": [str(data.times[positions[0]]), str(data.times[positions[-1]])],
        "hours": int(len(positions)),
        "in_sample_hours": in_sample,
        "model": evaluate_predictions(y, proba, nxt),
        "baselines": {n: evaluate_predictions(y, p, nxt) for n, p in baselines.items()},
        "reference": reference_block(close, times, nxt, calls, reference or ReferenceLabel()),
    }
