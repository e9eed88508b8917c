"""The promotion gate: a candidate replaces CURRENT only if it is no worse on shared unseen hours.

Both models are scored on the candidate's last test fold, restricted to hours after the current
model's training window (plus the label horizon): hours neither of them was trained on. Too few
such hours keeps CURRENT, because "no evidence" is not "better".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from features.dataset import MarketDataset
from train.bundle import HybridModel
from train.config import GateConfig
from train.evaluate import classification_metrics


@dataclass(frozen=True)
class GateVerdict:
    promote: bool
    reason: str
    candidate: dict[str, Any] | None = None
    current: dict[str, Any] | None = None


def comparable_hours(oos: pd.DataFrame, current_meta: dict[str, Any], horizon: int) -> pd.DataFrame:
    """Rows of the candidate's last fold that lie after the current model's training labels."""
    last = oos[oos["fold"] == oos["fold"].max()]
    trained_until = pd.Timestamp(current_meta["train_window"][1]) + pd.Timedelta(hours=horizon)
    return last[last.index > trained_until]


def judge(
    gate: GateConfig,
    data: MarketDataset,
    oos: pd.DataFrame,
    current: HybridModel | None,
) -> GateVerdict:
    if current is None:
        return GateVerdict(True, "no current version: the first model is promoted")
    rows = comparable_hours(oos, current.metadata, data.horizon)
    if len(rows) < gate.min_hours:
        return GateVerdict(
            False,
            f"only {len(rows)} hours unseen by both models "
            f"(gate needs {gate.min_hours}): CURRENT kept",
        )
    positions = data.times.get_indexer(rows.index)
    current_proba = current.predict_proba(data.raw_windows(positions))
    y = rows["label"].to_numpy()
    cand = classification_metrics(y, rows[["p_sell", "p_hold", "p_buy"]].to_numpy())
    curr = classification_metrics(y, current_proba)
    if gate.metric == "log_loss":
        ok = cand["log_loss"] <= curr["log_loss"] + gate.tolerance
    else:
        ok = cand["balanced_accuracy"] >= curr["balanced_accuracy"] - gate.tolerance
    verdict = "promoted" if ok else "kept CURRENT"
    reason = (
        f"{gate.metric} on {len(rows)} shared unseen hours: candidate "
        f"{cand[gate.metric]:.4f} vs current {curr[gate.metric]:.4f} -> {verdict}"
    )
    return GateVerdict(bool(ok), reason, cand, curr)
