"""Ray Tune per market over two families, scored only on hours before the first reported fold."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from features.config import load_features_config
from features.folds import FoldGrid
from train.config import TuneConfig, load_train_config
from train.model_config import ModelConfig
from train.tune_cli import trial_trading

pytestmark = pytest.mark.slow


def test_tune_picks_the_best_pre_test_trial_of_two_families(
    ray_local, ohlcv_dir: Path, tmp_path
) -> None:
    from train.research_cache import PredictionCache
    from train.tune_search import format_outcome, tune_markets_on_ray
    from train.tune_trial import InnerRun

    train_cfg = load_train_config(overrides=["profiles.smoke.optim.epochs=1"])
    research = train_cfg.research
    grid = FoldGrid(pd.Timestamp(research.origin), research.fold_hours)
    # A fold boundary: the last inner fold ends right at it, so its newest hours, whose reference
    # label reads prices after it, must be left unscored.
    tune_end = grid.span(grid.number(pd.Timestamp("2025-06-10")))[0]
    run = InnerRun("KRW-BTC", str(ohlcv_dir), research, str(tmp_path / "cache"), tune_end, 1)
    base = ModelConfig(family="gbm", profile_name="smoke", features=load_features_config(),
                       profile=train_cfg.profile("smoke"))  # fmt: skip
    tune_cfg = TuneConfig(search_space={"family": ["gbm", "hybrid"]}, sampler="grid",
                          num_samples=1, max_concurrent=2, cpus_per_trial=0.5)  # fmt: skip
    trading = trial_trading(research.arm)
    outcome = tune_markets_on_ray([run], base, tune_cfg, trading, str(tmp_path / "t"))["KRW-BTC"]
    print(format_outcome(outcome))

    assert sorted(r.values["family"] for r in outcome.rows) == ["gbm", "hybrid"]
    assert all(r.status == "done" for r in outcome.rows), [r.status for r in outcome.rows]
    scores = {r.values["family"]: r.scores["score_balanced_accuracy"] for r in outcome.rows}
    assert scores["gbm"] != scores["hybrid"], "the two families cannot have scored alike"
    assert outcome.winner is not None
    assert outcome.winner.values["family"] == max(scores, key=scores.get)
    horizon = pd.Timedelta(hours=research.reference_label.horizon_hours)
    for row in outcome.rows:
        last = pd.Timestamp(row.scores["last_scored"])
        assert last + horizon < tune_end, "a scored hour's label reads the reported fold"
        assert last >= tune_end - horizon - pd.Timedelta(hours=2), "scoring stopped too early"
        assert row.scores["scored_hours"] > 500
        assert math.isfinite(row.scores["score_return"]) and row.scores["score_trades"] >= 0
    cache = PredictionCache(run.cache_root)
    spans = [s for f, c in cache.configs("KRW-BTC") for s in cache.spans("KRW-BTC", f, c)]
    assert spans and all(end <= tune_end for _, end in spans), "a trial predicted a reported hour"

    chosen = outcome.winner_config(base, str(tune_end))
    assert chosen.family == outcome.winner.values["family"]
    assert chosen.tuned is not None and math.isclose(chosen.tuned.score, max(scores.values()))
    assert chosen.tuned.trials == 2 and chosen.search == {"family": chosen.family}


def test_asha_stops_the_hopeless_hybrid_early(ray_local, ohlcv_dir: Path, tmp_path) -> None:
    from train.tune_search import tune_markets_on_ray
    from train.tune_trial import InnerRun

    overrides = ["profiles.smoke.optim.epochs=4", "profiles.smoke.optim.patience=4"]
    train_cfg = load_train_config(overrides=overrides)
    tune_end = pd.Timestamp("2025-06-01")
    run = InnerRun("KRW-BTC", str(ohlcv_dir), train_cfg.research, str(tmp_path / "c"), tune_end, 1)
    base = ModelConfig(family="hybrid", profile_name="smoke", features=load_features_config(),
                       profile=train_cfg.profile("smoke"))  # fmt: skip
    tune_cfg = TuneConfig(
        # One at a time, the bad one last: ASHA lets the first trial to reach a rung go on, so the
        # hopeless one must meet rungs the others already recorded.
        search_space={"profile.optim.lr": [3e-3, 1e-3, 1.0]},
        sampler="grid",
        num_samples=1,
        max_concurrent=1,
    )
    trading = trial_trading(train_cfg.research.arm)
    outcome = tune_markets_on_ray([run], base, tune_cfg, trading, str(tmp_path / "t"))["KRW-BTC"]
    status = {r.values["profile.optim.lr"]: r.status for r in outcome.rows}
    assert status[1.0] == "stopped by ASHA", status
    assert "done" in status.values(), status  # ASHA may stop the slow 1e-3 too: it is allowed
    assert outcome.winner is not None and outcome.winner.values["profile.optim.lr"] != 1.0


def test_markets_tuned_at_once_each_run_their_own_trials(
    ray_local, ohlcv_dir: Path, tmp_path
) -> None:
    """Tune registers a trainable by name for the whole cluster: under one name, the second
    market's experiment replaced the first's trainable and KRW-ETH's table showed KRW-BTC's
    scores. Each trial now reports its market and each experiment checks it."""
    from train.tune_search import tune_markets_on_ray
    from train.tune_trial import InnerRun

    train_cfg = load_train_config()
    research, tune_end = train_cfg.research, pd.Timestamp("2025-06-01")
    runs = [InnerRun(m, str(ohlcv_dir), research, str(tmp_path / "cache"), tune_end, 1)
            for m in ("KRW-BTC", "KRW-ETH")]  # fmt: skip
    base = ModelConfig(family="gbm", profile_name="smoke", features=load_features_config(),
                       profile=train_cfg.profile("smoke"))  # fmt: skip
    # One trial at a time: the later trials start after both experiments have registered.
    tune_cfg = TuneConfig(search_space={"profile.gbm.num_leaves": [7, 15, 31]}, sampler="grid",
                          num_samples=1, max_concurrent=1, cpus_per_trial=0.25)  # fmt: skip
    trading = trial_trading(research.arm)
    outcomes = tune_markets_on_ray(runs, base, tune_cfg, trading, str(tmp_path / "t"))

    losses = {}
    for market, outcome in outcomes.items():
        assert [r.status for r in outcome.rows] == ["done"] * 3, market
        losses[market] = {r.values["profile.gbm.num_leaves"]: r.scores["score_log_loss"]
                          for r in outcome.rows}  # fmt: skip
    for leaves in (7, 15, 31):
        assert losses["KRW-BTC"][leaves] != losses["KRW-ETH"][leaves], "one market's trial twice"


def test_a_quantile_trial_with_a_margin_is_scored(ray_local, ohlcv_dir: Path, tmp_path) -> None:
    """A quantile label's threshold is fitted per fold; its trial prices a margin with each inner
    fold's own (it was refused before any fit), and the winner's record holds the trials."""
    from train.tune_search import tune_markets_on_ray
    from train.tune_trial import InnerRun

    train_cfg = load_train_config()
    research, tune_end = train_cfg.research, pd.Timestamp("2025-06-01")
    run = InnerRun("KRW-BTC", str(ohlcv_dir), research, str(tmp_path / "cache"), tune_end, 2)
    base = ModelConfig(family="gbm", profile_name="smoke", features=load_features_config(),
                       profile=train_cfg.profile("smoke"))  # fmt: skip
    tune_cfg = TuneConfig(search_space={"features.labels.mode": ["quantile"],
                                        "trading.policy.margin": [None, 0.0]},
                          sampler="grid", num_samples=1, max_concurrent=2,
                          cpus_per_trial=0.25)  # fmt: skip
    trading = trial_trading(research.arm)
    outcome = tune_markets_on_ray([run], base, tune_cfg, trading, str(tmp_path / "t"))["KRW-BTC"]
    assert [r.status for r in outcome.rows] == ["done", "done"], [r.status for r in outcome.rows]
    calls = {r.values["trading.policy.margin"]: r.scores["buy_calls"] for r in outcome.rows}
    assert calls[0.0] != calls[None], "the margin priced nothing"
    record = outcome.winner_config(base, str(tune_end)).tuned
    assert record is not None and record.trials == 2
