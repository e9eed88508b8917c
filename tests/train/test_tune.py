"""Ray Tune with ASHA over one market: a clearly bad learning rate is stopped early."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.config import load_features_config
from train.config import load_train_config

pytestmark = pytest.mark.slow


def test_asha_stops_the_bad_learning_rate_early(ray_local, ohlcv_dir: Path, tmp_path) -> None:
    from train.tune_search import tune_market

    overrides = ["profiles.smoke.optim.epochs=4", "profiles.smoke.optim.patience=4"]
    profile = load_train_config(overrides=overrides).profile("smoke")
    grid = tune_market(
        "KRW-BTC",
        str(ohlcv_dir),
        load_features_config(),
        profile,
        {"optim.lr": [3e-3, 1e-3, 1.0]},  # the bad one last: it meets recorded rungs
        str(tmp_path / "tune"),
        max_concurrent=2,
    )
    results = {r.config["optim.lr"]: r.metrics for r in grid}
    assert all(not r.error for r in grid)
    bad = results[1.0]
    assert bad["training_iteration"] < profile.optim.epochs, "ASHA let the bad trial run on"
    assert bad["val_loss"] == max(m["val_loss"] for m in results.values())
    assert max(m["training_iteration"] for m in results.values()) > bad["training_iteration"]
    assert (tmp_path / "tune" / "tune-KRW-BTC").is_dir()
