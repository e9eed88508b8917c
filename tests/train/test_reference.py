"""The `reference` block: a model's calls scored against the reference label (6 h, 0.5 %),
whatever label it trained on, on a hand-made case whose answers are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from train.config import ReferenceLabel
from train.evaluate import one_hot
from train.reference import reference_block, reference_labels
from train.report import market_report, window_report

# 10 hours; the reference label of hour t reads close[t + 6h]: known for hours 0..3 only
CLOSE = pd.Series(
    [100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 101.0, 99.0, 100.2, 100.0],
    index=pd.date_range("2024-01-01", periods=10, freq="h"),
)
REF = ReferenceLabel()  # 6 h, 0.5 %: +1 % BUY, -1 % SELL, +0.2 % HOLD, 0 % HOLD


def test_reference_labels_are_the_six_hour_half_percent_label() -> None:
    labels = reference_labels(CLOSE, REF)
    assert labels.iloc[:4].tolist() == [2.0, 0.0, 1.0, 1.0]
    assert labels.iloc[4:].isna().all()


def test_block_scores_calls_against_the_reference_not_the_own_label() -> None:
    times = CLOSE.index[:6]  # hours 4 and 5 have no reference label yet: left out
    right = one_hot(np.array([2, 0, 1, 1, 1, 1]))  # every known hour right
    wrong = one_hot(np.array([0, 2, 2, 2, 1, 1]))  # every known hour wrong
    block = reference_block(CLOSE, times, np.zeros(6), {"model": right, "other": wrong}, REF)
    assert block["label"] == {"horizon_hours": 6, "threshold": 0.005}
    assert block["hours"] == 4
    model, other = block["scores"]["model"], block["scores"]["other"]
    assert model["n"] == 4 and model["accuracy"] == 1.0 and model["balanced_accuracy"] == 1.0
    assert other["accuracy"] == 0.0
    assert model["confusion"] == [[1, 0, 0], [0, 2, 0], [0, 0, 1]]


def test_reports_print_the_reference_table() -> None:
    proba = one_hot(np.array([2, 0, 1, 1]))
    block = reference_block(CLOSE, CLOSE.index[:4], np.zeros(4), {"walk_forward": proba}, REF)
    meta = {
        "market": "KRW-BTC",
        "horizon": 12,
        "label_threshold": 0.005,
        "label_barriers": {"take_profit": 0.01, "stop_loss": 0.01, "horizon": 12},
        "metrics": {"walk_forward": block["scores"]["walk_forward"], "reference": block},
    }
    text = market_report(meta)
    assert "triple barrier: take-profit 1.00% after fees" in text
    assert "against the reference label (6 h, 0.50%), 4 hours:" in text
    result = {
        "market": "KRW-BTC", "version": "v0001", "window": ["a", "b"], "hours": 4,
        "model": block["scores"]["walk_forward"], "baselines": {}, "reference": block,
    }  # fmt: skip
    assert "against the reference label" in window_report(result)


def test_reference_label_config_is_checked() -> None:
    with pytest.raises(ValueError):
        ReferenceLabel(horizon_hours=0)
