"""Shared fixtures: the real candles beside the project, loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_OHLCV = PROJECT_ROOT.parent / "shared" / "data" / "ohlcv"
MARKETS = ("KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL")


@pytest.fixture(scope="session")
def ohlcv_dir() -> Path:
    if not (SHARED_OHLCV / "KRW-BTC_minute60.parquet").exists():
        pytest.skip(f"real candle data not found at {SHARED_OHLCV} (../shared beside the project)")
    return SHARED_OHLCV


@pytest.fixture(scope="session")
def real_candles(ohlcv_dir: Path) -> dict[str, pd.DataFrame]:
    """The four Upbit markets' hourly candles as stored (KST open times, gaps not filled)."""
    return {m: pd.read_parquet(ohlcv_dir / f"{m}_minute60.parquet") for m in MARKETS}


@pytest.fixture(scope="session")
def smoke_fit(real_candles):
    """One market fitted with the smoke profile on real candles, once per session (~10 s)."""
    from features.config import load_features_config
    from features.dataset import build_dataset
    from features.indicators import SERVING_WINDOW
    from train.config import load_train_config
    from train.pipeline import fit_market

    features = load_features_config()
    profile = load_train_config().profile("smoke")
    candles = real_candles["KRW-BTC"].iloc[-(profile.data.last_hours + SERVING_WINDOW) :]
    data = build_dataset(candles, "KRW-BTC", features.labels.horizon_hours, features.max_gap_hours)
    fit = fit_market(data, features, profile, progress=lambda _: None, profile_name="smoke")
    return data, fit


@pytest.fixture(scope="session")
def smoke_bundle(smoke_fit, tmp_path_factory) -> Path:
    """The smoke fit saved as a bundle directory (with oos.parquet), as the registry stores it."""
    _, fit = smoke_fit
    directory = fit.model.save(tmp_path_factory.mktemp("bundle") / "KRW-BTC")
    fit.oos.to_parquet(directory / "oos.parquet")
    return directory


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray per test session, shared by every integration test."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
