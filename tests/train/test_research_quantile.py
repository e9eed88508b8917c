"""A quantile label's threshold is fitted on each fold's training returns: research stores it with
the fold's predictions, and the replay and the margin table price each fold with its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.barriers import LabelMoves
from features.config import load_features_config
from train.config import load_train_config
from train.research_cache import THRESHOLD, PredictionCache
from train.research_report import build_report, trade_requests
from train.research_run import ResearchRequest, run_research

MARKET = "KRW-SOL"
SMALL = ["research.fold_hours=240", "research.leaky_parts=2"]

pytestmark = pytest.mark.slow


def test_quantile_folds_carry_their_threshold_into_the_replay(
    ohlcv_dir: Path, tmp_path: Path
) -> None:
    from trading.research_trades import trade

    train_cfg = load_train_config(overrides=SMALL)
    features = load_features_config(overrides=["labels.mode=quantile", "labels.hold_share=0.5"])
    req = ResearchRequest(
        markets=[MARKET], families=["gbm"], data_dir=str(ohlcv_dir),
        profile=train_cfg.profile("smoke"), profile_name="smoke", features=features,
        research=train_cfg.research, cache=PredictionCache(tmp_path / "cache"),
        start=pd.Timestamp("2025-08-05"), end=pd.Timestamp("2025-08-25"), leaky=False,
    )  # fmt: skip
    quiet = lambda line: None  # noqa: E731
    markets, run = run_research(req, quiet, local=True)
    research = markets[MARKET]
    gbm = research.predictions["gbm"]
    per_fold = gbm.groupby("fold")[THRESHOLD].agg(["min", "max"])
    assert (per_fold["min"] == per_fold["max"]).all(), "one threshold per fold"
    assert per_fold["min"].nunique() >= 2, "the folds' training returns fitted one threshold"
    again, _ = run_research(req, quiet, local=True)  # from the cache: the thresholds came back
    assert all(r["cached"] for r in again[MARKET].records)
    pd.testing.assert_frame_equal(again[MARKET].predictions["gbm"], gbm)

    requests = trade_requests(research, gbm.index, {"gbm": gbm}, features.labels)
    assert len(requests) == len(per_fold) >= 2
    for request in requests:
        fitted = per_fold.loc[request.fold, "min"]
        assert request.moves == LabelMoves.of_threshold(fitted), request.fold
    assert len({r.moves for r in requests}) >= 2, "two folds, two thresholds, one price"

    def trader(requests):
        return trade(requests, "fixed", ["policy.margin=0.0"])

    report, _ = build_report(req, markets, trader, run)
    block = report["markets"][MARKET]
    assert block["models"]["gbm"]["trading"]["trades"] >= 0
    assert set(block["margins"]) == {"gbm", "plain-12m"}  # priced per fold: no longer empty
    curve = block["margins"]["gbm"]["curve"]
    assert curve[0]["hours"] > 100 and np.isfinite(block["margins"]["gbm"]["fitted_here"])
