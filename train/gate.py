"""The promotion gate: per market, the best of the new candidates replaces CURRENT only if it is
no worse on hours none of them trained on.

Every contender predicts hours it never trained on in two ways: its walk-forward record
(`oos.parquet`, each hour predicted by a fold model trained before it) and, for a bundle that has
served a while, the bundle itself on hours after its training labels (`train_window` end +
horizon). The gate scores every contender on the hours all of them predicted that way, with the
same labels, and promotes the best candidate unless CURRENT scores better. Too few such hours keeps
CURRENT, because "no evidence" is not "better"; with no CURRENT the best candidate is promoted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.dataset import MarketDataset
from train.bundle_io import trained_until
from train.config import GateConfig
from train.evaluate import classification_metrics

PROBA = ["p_sell", "p_hold", "p_buy"]


@dataclass(frozen=True)
class Contender:
    """A registered version: its walk-forward record and, for CURRENT, the model itself."""

    version: str
    family: str
    oos: pd.DataFrame  # index time, PROBA columns
    metadata: dict[str, Any]
    model: Any = None  # predicts hours after its training window when given

    @property
    def name(self) -> str:
        return f"{self.version} ({self.family})"


@dataclass(frozen=True)
class GateVerdict:
    promote: str | None  # the version to make CURRENT, None to keep it
    reason: str
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)


def unseen_predictions(contender: Contender, data: MarketDataset) -> pd.DataFrame:
    """The contender's probabilities on every hour it never trained on (see module docstring)."""
    frames = [contender.oos[PROBA]]
    if contender.model is not None:
        after = max(trained_until(contender.metadata), contender.oos.index.max())
        positions = data.samples[data.sample_times > after]
        if len(positions):
            proba = contender.model.predict_proba(data.raw_windows(positions))
            frames.append(pd.DataFrame(proba, index=data.times[positions], columns=PROBA))
    out = pd.concat(frames)
    return out[~out.index.duplicated(keep="first")]


def _score(gate: GateConfig, y: np.ndarray, proba: np.ndarray) -> tuple[float, dict[str, Any]]:
    m = classification_metrics(y, proba)
    value = m[gate.metric]
    return (value if gate.metric == "log_loss" else -value), m


def judge(
    gate: GateConfig,
    data: MarketDataset,
    candidates: list[Contender],
    current: Contender | None,
    threshold: float,
) -> GateVerdict:
    """Which candidate (if any) becomes CURRENT; every score is on the same unseen hours."""
    contenders = [*candidates, *([current] if current else [])]
    predictions = {c.version: unseen_predictions(c, data) for c in contenders}
    hours = data.sample_times
    for frame in predictions.values():
        hours = hours.intersection(frame.index)
    if current is not None and len(hours) < gate.min_hours:
        return GateVerdict(
            None,
            f"only {len(hours)} hours unseen by every contender "
            f"(gate needs {gate.min_hours}): CURRENT kept",
        )
    if len(hours) == 0:
        return GateVerdict(
            candidates[0].version, "no shared hours: the first candidate is promoted"
        )
    y = data.labels(threshold, data.times.get_indexer(hours))
    scored = {
        c.version: _score(gate, y, predictions[c.version].loc[hours].to_numpy()) for c in contenders
    }
    best = min(candidates, key=lambda c: scored[c.version][0])
    table = ", ".join(f"{c.name} {scored[c.version][1][gate.metric]:.4f}" for c in contenders)
    scores = {c.version: scored[c.version][1] for c in contenders}
    head = f"{gate.metric} on {len(hours)} shared unseen hours: {table}"
    if current is None:
        return GateVerdict(best.version, f"{head} -> {best.name} promoted (no CURRENT)", scores)
    if scored[best.version][0] <= scored[current.version][0] + gate.tolerance:
        return GateVerdict(best.version, f"{head} -> {best.name} promoted", scores)
    return GateVerdict(None, f"{head} -> kept CURRENT {current.name}", scores)
