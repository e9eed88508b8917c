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
