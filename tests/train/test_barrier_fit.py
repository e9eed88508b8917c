"""A gbm trained on triple-barrier labels, end to end on real candles: the bundle carries its
barriers, its report and `train evaluate` score it against the reference label too, and the
backtester prices the decision margin with the bundle's barriers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from features.barriers import Barriers, bundle_barriers
from features.sources import ParquetDirSource
from trading.account import FixedRatio
from trading.backtest import run_backtest
from trading.config import load_trading_config
from train.registry import ModelRegistry
from train.score_window import score_window

MARKET = "KRW-BTC"


def test_bundle_and_report_carry_barriers_and_the_reference_block(barrier_fit) -> None:
    data, fit = barrier_fit
    meta = fit.model.metadata
    assert bundle_barriers(meta) == Barriers(0.01, 0.01, 12)
    assert meta["horizon"] == 12 and meta["label_mode"] == "triple_barrier"
    # the folds purge at least the time limit: no training label reads a test hour's prices
    assert (
        fit.oos["label"].tolist()
        == data.labels(0.0, data.samples)[data.sample_times.get_indexer(fit.oos.index)].tolist()
    )
    ref = fit.report["reference"]
    assert ref["label"] == {"horizon_hours": 6, "threshold": 0.005}
    assert ref["hours"] == len(fit.oos)
    assert set(ref["scores"]) >= {"walk_forward", "plain LightGBM (17 features)"}
    own = fit.report["walk_forward"]["confusion"]
    assert ref["scores"]["walk_forward"]["confusion"] != own  # another label, other answers


def test_evaluate_scores_against_its_barriers_and_the_reference(barrier_fit, real_candles):
    _, fit = barrier_fit
    candles = real_candles[MARKET].loc[:"2025-08-15 23:00"]
    result = score_window(fit.model, candles, pd.Timestamp("2025-07-03"))
    assert result["reference"]["hours"] == result["hours"]
    assert result["reference"]["scores"]["model"]["n"] == result["hours"]
    assert result["model"]["n"] == result["hours"]


def test_backtest_prices_the_margin_with_the_bundles_barriers(
    barrier_fit, ohlcv_dir: Path, tmp_path: Path
) -> None:
    _, fit = barrier_fit
    bundle = fit.model.save(tmp_path / "bundle")
    fit.oos.to_parquet(bundle / "oos.parquet")
    registry = ModelRegistry(tmp_path / "registry")
    registry.promote(MARKET, registry.register(MARKET, bundle))
    buys = {}
    for margin in ("null", "0.0", "0.05"):
        config = load_trading_config(overrides=[f"policy.margin={margin}"])
        arms = {"fixed": FixedRatio(config.ab.fixed_ratio)}
        run = run_backtest([MARKET], ParquetDirSource(ohlcv_dir), registry, config, arms,
                           tmp_path / margin).runs[0]  # fmt: skip
        buys[margin] = int(np.sum(run.records["signal"] == "BUY"))
    assert buys["0.05"] == 0  # no calibrated model expects +5 % after fees on a 1 % barrier
    assert buys["0.0"] != buys["null"]  # the edge, not the argmax, decided
