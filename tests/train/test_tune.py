"""Ray Tune per market: ASHA stops a clearly bad learning rate; four markets' searches overlap."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from features.config import load_features_config
from train.config import TuneConfig, load_train_config

pytestmark = pytest.mark.slow


def test_asha_stops_the_bad_learning_rate_early(ray_local, ohlcv_dir: Path, tmp_path) -> None:
    from train.tune_search import SCORE, summarize, tune_market

    overrides = ["profiles.smoke.optim.epochs=4", "profiles.smoke.optim.patience=4"]
    profile = load_train_config(overrides=overrides).profile("smoke")
    tune_cfg = TuneConfig(
        search_space={"optim.lr": [3e-3, 1e-3, 1.0]},  # the bad one last: it meets recorded rungs
        sampler="grid",
        num_samples=1,
        max_concurrent=2,
    )
    grid = tune_market(
        "KRW-BTC", str(ohlcv_dir), load_features_config(), profile, tune_cfg, str(tmp_path / "t")
    )
    results = {r.config["optim.lr"]: r.metrics for r in grid}
    assert all(not r.error for r in grid)
    bad = results[1.0]
    assert SCORE not in bad, "ASHA let the bad trial run to the end"
    assert bad["val_loss"] == max(m["val_loss"] for m in results.values())
    finished = [m for m in results.values() if SCORE in m]
    assert finished and all(m["training_iteration"] > bad["training_iteration"] for m in finished)
    outcome = summarize("KRW-BTC", grid, 0.0)
    assert outcome.best["optim.lr"] != 1.0 and math.isfinite(outcome.best_score)
    assert outcome.stopped_early >= 1 and outcome.trials == 3
    assert list((tmp_path / "t").glob("tune-KRW-BTC-*")), "no experiment in Tune's storage"


def test_four_markets_tune_concurrently(ray_local, ohlcv_dir: Path, tmp_path) -> None:
    from train.tune_search import tune_markets_on_ray, tuned_profiles

    overrides = ["profiles.smoke.optim.epochs=1"]
    profile = load_train_config(overrides=overrides).profile("smoke")
    tune_cfg = TuneConfig(
        search_space={"head.num_leaves": [5]}, sampler="grid", num_samples=1, max_concurrent=1
    )
    features = load_features_config()
    markets = features.markets  # the four configured markets at once
    outcomes = tune_markets_on_ray(
        markets, str(ohlcv_dir), features, profile, tune_cfg, str(tmp_path / "t")
    )
    assert sorted(outcomes) == sorted(markets)
    runs = outcomes.values()
    assert max(o.started for o in runs) < min(o.ended for o in runs), "experiments did not overlap"
    assert all(o.best == {"head.num_leaves": 5} and o.failed == 0 for o in runs)
    tuned = tuned_profiles(profile, outcomes)
    assert all(p.head.num_leaves == 5 for p in tuned.values())
    assert profile.head.num_leaves != 5  # the winner changed the profile that is then fitted
