"""An ensemble Tune trial: its inner fold is the blend `train research --family ensemble` makes of
the same components' folds, the weight fitted on the lookback fold before it (no Ray)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from features.config import load_features_config
from features.folds import FoldGrid
from train.config import load_train_config
from train.ensemble import PROBA, blend
from train.model_config import ModelConfig, apply_search
from train.research_jobs import prepare_market
from train.research_run import run_research
from train.tune_trial import InnerRun, fold_predictions, inner_folds, trial_request

MARKET = "KRW-SOL"


def test_an_ensemble_trial_blends_its_components_as_research_does(
    ohlcv_dir: Path, tmp_path: Path
) -> None:
    smaller = ["profiles.smoke.optim.epochs=1", "profiles.smoke.data.last_hours=1500"]
    train_cfg = load_train_config(overrides=smaller)
    research = train_cfg.research
    grid = FoldGrid(pd.Timestamp(research.origin), research.fold_hours)
    tune_end = grid.span(grid.number(pd.Timestamp("2025-06-10")))[0]
    run = InnerRun(MARKET, str(ohlcv_dir), research, str(tmp_path / "cache"), tune_end, 1)
    base = ModelConfig(family="gbm", profile_name="smoke", features=load_features_config(),
                       profile=train_cfg.profile("smoke"))  # fmt: skip
    config = apply_search(base, {"family": "ensemble", "profile.ensemble.lookback_folds": 1,
                                 "profile.ensemble.min_hours": 100})  # fmt: skip
    req = trial_request(run, config)
    material, index = prepare_market(run.data_dir, MARKET, config.features, req.grid, set())
    folds = inner_folds(index, req, run)
    trial = fold_predictions(req, material, index, folds)

    (fold,) = folds
    assert set(trial["fold"]) == {fold.number} and trial.index.max() < tune_end
    stored = {(f, c) for f, c in req.cache.configs(MARKET)}
    assert {f for f, _ in stored} == {"ensemble", "gbm", "hybrid"}
    spans = {f: req.cache.spans(MARKET, f, c) for f, c in stored}
    spans_of = dict(stored)
    assert len(spans["hybrid"]) == len(spans["gbm"]) == 2 and len(spans["ensemble"]) == 1
    # The research report of that fold, from the same cache: nothing recomputed, same blend.
    last = fold.test_end - pd.Timedelta(hours=1)
    again = replace(req, start=fold.test_start, end=last, baselines=False)
    markets, _ = run_research(again, lambda line: None, local=True)
    assert all(r["cached"] for r in markets[MARKET].records)
    reported = markets[MARKET].predictions["ensemble"]
    reported = reported[reported["fold"] == fold.number]
    pd.testing.assert_frame_equal(trial[reported.columns], reported, check_freq=False)
    weight = req.cache.read(req.cache.keys(MARKET, "ensemble", spans_of["ensemble"])[0])[1]
    h, g = (markets[MARKET].predictions[c].loc[trial.index, PROBA] for c in ("hybrid", "gbm"))
    blended = blend(h.to_numpy(), g.to_numpy(), weight["weight"])
    assert 0 <= weight["weight"] <= 1 and trial[PROBA].to_numpy() == pytest.approx(blended)
