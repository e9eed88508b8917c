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


def test_smoke_fit_through_torch_trainer(ray_local, ohlcv_dir: Path, tmp_path: Path) -> None:
    from train.ray_fit import fit_with_torch_trainer

    out = fit_with_torch_trainer(
        "KRW-BTC",
        str(ohlcv_dir),
        load_features_config(),
        load_train_config().profile("smoke"),
        "smoke",
        tmp_path / "bundle",
        cpus_per_worker=1.0,
        storage_path=str(tmp_path / "ray-results"),
    )
    model = load_bundle(out)
    assert model.metadata["market"] == "KRW-BTC" and model.metadata["profile"] == "smoke"
    oos = pd.read_parquet(out / "oos.parquet")
    assert len(oos) == 800 and oos.index.is_unique
    assert np.allclose(oos[["p_sell", "p_hold", "p_buy"]].sum(axis=1), 1.0)
    assert (tmp_path / "ray-results" / "fit-KRW-BTC").is_dir()  # Ray Train's run storage


def test_four_markets_run_concurrently_and_register(
    ray_local, ohlcv_dir: Path, tmp_path: Path
) -> None:
    from train.ray_fit import fit_markets_on_ray

    markets = ["KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL"]
    runs = fit_markets_on_ray(
        markets,
        str(ohlcv_dir),
        load_features_config(),
        load_train_config().profile("smoke"),
        "smoke",
        tmp_path / "out",
        storage_path=str(tmp_path / "ray-results"),
    )
    assert [r.market for r in runs] == markets
    assert max(r.started for r in runs) < min(r.ended for r in runs), "runs did not overlap"
    for run in runs:
        assert load_bundle(run.bundle_dir).metadata["market"] == run.market


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
    ]
    assert main(args) == 0
    assert "on Ray, use_gpu=False" in capsys.readouterr().out
    assert ModelRegistry(str(registry)).current("KRW-ETH") == "v0001"
