"""The same training function under Ray Train's TorchTrainer, on a real local Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.config import load_features_config
from train.bundle import load_bundle
from train.config import load_train_config

pytestmark = pytest.mark.slow
ONE_EPOCH = ("optim.epochs=1", "leaky.enabled=false")  # the Ray paths are tested, not the fit
SMALLER_FIT = (*ONE_EPOCH, "splits.n_folds=1", "data.last_hours=3000")


def test_smoke_fit_through_torch_trainer(ray_local, ohlcv_dir: Path, tmp_path: Path) -> None:
    from train.ray_fit import fetch_bundle, fit_with_torch_trainer

    checkpoint = fit_with_torch_trainer(
        "KRW-BTC",
        str(ohlcv_dir),
        load_features_config(),
        load_train_config(overrides=[f"profiles.smoke.{s}" for s in ONE_EPOCH]).profile("smoke"),
        "smoke",
        cpus_per_worker=1.0,
        storage_path=str(tmp_path / "ray-results"),
    )
    # The bundle comes back through Ray Train's run storage, not a path on the worker's node.
    assert str(tmp_path / "ray-results") in checkpoint.path
    out = fetch_bundle(checkpoint, tmp_path / "bundle")
    model = load_bundle(out)
    assert model.metadata["market"] == "KRW-BTC" and model.metadata["profile"] == "smoke"
    oos = pd.read_parquet(out / "oos.parquet")
    assert len(oos) == 800 and oos.index.is_unique
    assert np.allclose(oos[["p_sell", "p_hold", "p_buy"]].sum(axis=1), 1.0)
    assert list((tmp_path / "ray-results").glob("fit-KRW-BTC-*")), "no run in Ray Train's storage"


def test_four_markets_run_concurrently_and_register(
    ray_local, ohlcv_dir: Path, tmp_path: Path
) -> None:
    from train.ray_fit import fetch_bundle, fit_markets_on_ray

    features = load_features_config()
    markets = features.markets  # the four configured markets at once
    # What is tested is four trainers at once: one fold too.
    small = [f"profiles.smoke.{s}" for s in SMALLER_FIT]
    profile = load_train_config(overrides=small).profile("smoke")
    runs = fit_markets_on_ray(
        {market: profile for market in markets},
        str(ohlcv_dir),
        features,
        "smoke",
        storage_path=str(tmp_path / "ray-results"),
    )
    assert [r.market for r in runs] == markets
    assert max(r.started for r in runs) < min(r.ended for r in runs), "runs did not overlap"
    for run in runs:
        bundle = fetch_bundle(run.checkpoint, tmp_path / run.market)
        assert load_bundle(bundle).metadata["market"] == run.market


def test_cli_fits_through_ray_by_default(
    ray_local, ohlcv_dir: Path, tmp_path: Path, capsys
) -> None:
    from train.__main__ import main
    from train.registry import ModelRegistry

    registry = tmp_path / "registry"
    args = [
        "fit",
        "--markets",
        "KRW-ETH",
        "--data-dir",
        str(ohlcv_dir),
        "--registry",
        str(registry),
        "--profile",
        "smoke",
        "--storage-path",
        str(tmp_path / "ray"),
        "--family",
        "hybrid,gbm,ensemble",
        *[arg for s in ONE_EPOCH for arg in ("--set", f"profiles.smoke.{s}")],
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "on Ray, use_gpu=False" in out and "shared unseen hours" in out
    store = ModelRegistry(str(registry))
    families = {v.metadata["family"]: v.version for v in store.versions("KRW-ETH")}
    assert set(families) == {"hybrid", "gbm", "ensemble"}  # one TorchTrainer, one task, assembled
    assert store.current("KRW-ETH") in families.values()
    ensemble = load_bundle(store.fetch("KRW-ETH", families["ensemble"], dest_dir=tmp_path / "f"))
    assert 0.0 <= ensemble.weight <= 1.0


def test_cli_pooled_fit_on_ray_builds_each_pooled_market_once(
    ray_local, ray_head, ohlcv_dir: Path, tmp_path: Path, capsys
) -> None:
    """Two markets' gbm pooling the other configured ones, on Ray: one member task per pooled
    market (four: each of the two is pooled by the other), not one per market that pools it
    (six), and each bundle names the markets it pooled."""
    from ray.util.state import list_tasks

    from train.__main__ import main
    from train.registry import ModelRegistry

    def member_tasks() -> int:
        # the session's head by its dashboard: "auto" reads the newest head any test started
        return len(list_tasks(address=ray_head.dashboard_url, limit=10_000,
                              filters=[("func_or_class_name", "=", "pool_member_task")],
                              raise_on_missing_output=False))  # fmt: skip

    before = member_tasks()
    registry = tmp_path / "registry"
    args = ["fit", "--markets", "KRW-ETH,KRW-SOL", "--data-dir", str(ohlcv_dir), "--registry",
            str(registry), "--profile", "smoke", "--family", "gbm",
            "--set", "profiles.smoke.gbm.pool_weight=1.0"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().out
    assert member_tasks() - before == 4
    store = ModelRegistry(str(registry))
    markets = load_features_config().markets
    for market in ("KRW-ETH", "KRW-SOL"):
        (version,) = store.versions(market)
        assert version.metadata["pooled_markets"] == [m for m in markets if m != market]
