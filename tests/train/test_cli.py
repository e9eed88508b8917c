"""`python -m train` end to end on real candles: fit, gate, list, promote, rollback, later hours."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from train.__main__ import main
from train.registry import ModelRegistry

SMOKE = ["--profile", "smoke", "--local", "--family", "hybrid"]


def fit(data_dir: Path, root: Path, markets: str = "KRW-BTC") -> int:
    """`python -m train fit` with the smoke profile, in this process: its exit status."""
    return main(["fit", "--markets", markets, "--data-dir", str(data_dir), "--registry", str(root),
                 *SMOKE])  # fmt: skip


def manage(command: str, root: Path, *extra: str) -> int:
    """`python -m train <command> --market KRW-BTC --registry <root> <extra>`: its exit status."""
    return main([command, "--market", "KRW-BTC", "--registry", str(root), *extra])


@pytest.fixture(scope="module")
def early_data(ohlcv_dir: Path, tmp_path_factory) -> Path:
    """BTC candles up to 2025-06-30 only: the later hours play 'after the model shipped'."""
    folder = tmp_path_factory.mktemp("early")
    btc = pd.read_parquet(ohlcv_dir / "KRW-BTC_minute60.parquet")
    btc.loc[:"2025-06-30 23:00"].to_parquet(folder / "KRW-BTC_minute60.parquet")
    return folder


@pytest.fixture(scope="module")
def registry_root(early_data: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    assert fit(early_data, root) == 0
    return root


def test_first_fit_is_registered_and_promoted(registry_root: Path, capsys) -> None:
    registry = ModelRegistry(str(registry_root))
    assert registry.current("KRW-BTC") == "v0001"
    meta = registry.read_metadata("KRW-BTC")
    assert meta["version"] == "v0001" and meta["profile"] == "smoke"
    assert pd.Timestamp(meta["train_window"][1]) < pd.Timestamp("2025-07-01")
    assert manage("evaluate", registry_root) == 0
    out = capsys.readouterr().out
    assert "hybrid, walk-forward OOS" in out and "seed's leaky split" in out
    assert "majority class" in out and "LightGBM last row only" in out


def test_later_window_scores_hours_the_model_never_saw(
    registry_root: Path, ohlcv_dir: Path, capsys
) -> None:
    window = ["--start", "2025-07-01", "--end", "2025-09-29"]
    assert manage("evaluate", registry_root, "--data-dir", str(ohlcv_dir), *window, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["window"][0] == "2025-07-01 00:00:00"
    assert result["hours"] > 2000
    assert set(result["baselines"]) == {
        "majority class (training window)",
        "persistence (label t-H)",
    }
    assert 0.0 <= result["model"]["balanced_accuracy"] <= 1.0


def test_evaluate_refuses_hours_the_bundle_trained_on(
    registry_root: Path, ohlcv_dir: Path, capsys
) -> None:
    window = ["--start", "2025-06-20", "--end", "2025-07-05"]
    args = ["evaluate", "--market", "KRW-BTC", "--registry", str(registry_root),
            "--data-dir", str(ohlcv_dir), *window]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "inside v0001's training window" in err and "--allow-in-sample" in err
    assert main([*args, "--allow-in-sample", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 < result["in_sample_hours"] < result["hours"]
    assert main([*args, "--allow-in-sample"]) == 0
    assert "IN-SAMPLE" in capsys.readouterr().out


def test_gate_promotes_rollback_restores(registry_root: Path, ohlcv_dir: Path, capsys) -> None:
    assert fit(ohlcv_dir, registry_root) == 0
    out = capsys.readouterr().out
    assert "shared unseen hours" in out  # the gate compared both models on the same hours
    registry = ModelRegistry(str(registry_root))
    assert [v.version for v in registry.versions("KRW-BTC")] == ["v0001", "v0002"]
    current = registry.current("KRW-BTC")
    if current == "v0002":
        assert manage("rollback", registry_root) == 0
        assert registry.current("KRW-BTC") == "v0001"
    assert manage("promote", registry_root, "--version", "v0002") == 0
    assert registry.current("KRW-BTC") == "v0002"
    assert manage("rollback", registry_root) == 0
    assert registry.current("KRW-BTC") == "v0001"
    assert manage("list", registry_root) == 0
    assert "v0002" in capsys.readouterr().out


def test_bad_input_is_a_clear_error(registry_root: Path, early_data: Path, capsys) -> None:
    assert fit(early_data, registry_root, markets="KRW-DOGE") == 2
    assert "KRW-DOGE" in capsys.readouterr().err
    assert manage("promote", registry_root, "--version", "v0099") == 2
    assert "v0099" in capsys.readouterr().err
    assert manage("evaluate", registry_root, "--start", "2025-07-01") == 2
    assert "--data-dir" in capsys.readouterr().err


def test_a_gbm_fit_is_gated_against_the_hybrid_and_reported_beside_it(
    registry_root: Path, ohlcv_dir: Path, capsys
) -> None:
    args = ["fit", "--markets", "KRW-BTC", "--data-dir", str(ohlcv_dir),
            "--registry", str(registry_root), *SMOKE, "--family", "gbm"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "shared unseen hours" in out and "(gbm)" in out and "(hybrid)" in out
    registry = ModelRegistry(str(registry_root))
    assert registry.read_metadata("KRW-BTC", "v0003")["family"] == "gbm"
    assert main(["report", "--registry", str(registry_root)]) == 0
    report = capsys.readouterr().out
    assert "gbm, walk-forward OOS" in report and "hybrid, walk-forward OOS" in report
    assert "(CURRENT)" in report and "(candidate)" in report
