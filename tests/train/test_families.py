"""Model families on real candles: each bundle round-trips and trades through the backtester, the
refit reaches the newest labelled hour, and the gate promotes only what is better."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.dataset import build_dataset
from features.indicators import CANDLES_FOR_SERVING
from features.sources import ParquetDirSource
from serve.predict import predict_candles
from trading.account import FixedRatio
from trading.backtest import run_backtest
from trading.config import load_trading_config
from trading.predictions import bundle_proba, prediction_positions
from train.bundle import load_bundle
from train.bundle_io import trained_until
from train.config import GateConfig, load_train_config
from train.ensemble import EnsembleModel
from train.ensemble_fit import assemble
from train.fit_cli import register_and_gate
from train.gate import Contender, judge
from train.gbm import GbmModel
from train.pipeline import fit_market
from train.registry import ModelRegistry

MARKET = "KRW-BTC"
PROBA = ["p_sell", "p_hold", "p_buy"]


@pytest.fixture(scope="module")
def gbm_fit(smoke_fit):
    """The gbm family on the smoke fit's very dataset (seconds)."""
    from features.config import load_features_config

    data, _ = smoke_fit
    profile = load_train_config().profile("smoke")
    quiet = lambda line: None  # noqa: E731
    return fit_market(data, load_features_config(), profile, None, quiet, "smoke", "gbm")


@pytest.fixture(scope="module")
def bundles(smoke_fit, gbm_fit, smoke_bundle, tmp_path_factory) -> dict[str, Path]:
    _, hybrid = smoke_fit
    root = tmp_path_factory.mktemp("families")
    ensemble = assemble(hybrid, gbm_fit, lookback_folds=1, min_hours=200)
    out = {"hybrid": smoke_bundle}
    for family, fit in (("gbm", gbm_fit), ("ensemble", ensemble)):
        out[family] = fit.model.save(root / family)
        fit.oos.to_parquet(out[family] / "oos.parquet")
    return out


def test_gbm_and_ensemble_round_trip_through_load_bundle(smoke_fit, gbm_fit, bundles) -> None:
    data, hybrid = smoke_fit
    windows = data.raw_windows(data.samples[-64:])
    gbm = load_bundle(bundles["gbm"])
    assert isinstance(gbm, GbmModel) and gbm.metadata["family"] == "gbm"
    np.testing.assert_array_equal(gbm.predict_proba(windows), gbm_fit.model.predict_proba(windows))
    ensemble = load_bundle(bundles["ensemble"])
    assert isinstance(ensemble, EnsembleModel) and ensemble.metadata["family"] == "ensemble"
    w = ensemble.weight
    expected = w * hybrid.model.predict_proba(windows) + (1 - w) * gbm_fit.model.predict_proba(
        windows
    )
    np.testing.assert_allclose(ensemble.predict_proba(windows), expected, atol=1e-12)
    assert np.allclose(ensemble.predict_proba(windows).sum(axis=1), 1.0)
    names = sorted(p.relative_to(bundles["ensemble"]).as_posix()
                   for p in bundles["ensemble"].rglob("*") if p.is_file())  # fmt: skip
    assert names == [
        "gbm/lightgbm.txt", "gbm/metadata.json", "gbm/novelty.json", "gbm/novelty_rows.npy",
        "hybrid/lightgbm.txt", "hybrid/lstm.pt", "hybrid/metadata.json", "hybrid/novelty.json",
        "hybrid/novelty_rows.npy", "hybrid/transform.json", "metadata.json", "oos.parquet",
    ]  # fmt: skip


@pytest.mark.parametrize("family", ["hybrid", "gbm", "ensemble"])
def test_every_family_keeps_its_novelty_gate_through_the_bundle(family, smoke_fit, bundles):
    """Saved as .npy (read with allow_pickle=False) and JSON, loaded back identical: the same
    threshold and the same scores as the fitted model's gate."""
    data, hybrid = smoke_fit
    loaded = load_bundle(bundles[family])
    assert loaded.novelty is not None
    fitted = hybrid.model.novelty  # the components refit on the same hours: one gate for all
    windows = data.raw_windows(data.samples[-64:])
    assert loaded.novelty.threshold == fitted.threshold
    np.testing.assert_array_equal(loaded.novelty.scores(windows), fitted.scores(windows))
    assert (loaded.novelty.scores(windows) > 0).all()


def test_gbm_refit_ends_at_the_newest_labelled_hour(smoke_fit, gbm_fit) -> None:
    data, _ = smoke_fit
    meta = gbm_fit.model.metadata
    newest = data.sample_times.max()
    assert pd.Timestamp(meta["train_window"][1]) == newest
    assert pd.Timestamp(meta["slices"]["calibrate"][1]) == newest
    assert list(meta["slices"]) == ["fit", "early_stop", "calibrate"]
    assert newest == data.times.max() - pd.Timedelta(hours=data.horizon)
    assert len(gbm_fit.report["folds"]) == 2 and "leaky" in gbm_fit.report


@pytest.mark.parametrize("family", ["hybrid", "gbm", "ensemble"])
def test_every_family_trades_through_the_backtesters_bundle_path(
    family: str, bundles, ohlcv_dir: Path, tmp_path: Path
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    registry.promote(MARKET, registry.register(MARKET, bundles[family]))
    config = load_trading_config()
    result = run_backtest([MARKET], ParquetDirSource(ohlcv_dir), registry, config,
                          {"fixed": FixedRatio(0.3)}, tmp_path / "work")  # fmt: skip
    decisions = result.decisions
    cutoff = trained_until(registry.read_metadata(MARKET))
    from_bundle = decisions[decisions["source"] == "bundle"]
    assert len(from_bundle) > 500  # September 2025: after the bundle's training labels
    assert (pd.DatetimeIndex(from_bundle["time"]) > cutoff).all()
    assert (decisions["source"] == "oos").sum() == len(
        pd.read_parquet(bundles[family] / "oos.parquet")
    )


def _doctored(oos: pd.DataFrame, right: bool) -> pd.DataFrame:
    """The record with probability 0.9 on the true label (right) or on a wrong one."""
    y = oos["label"].to_numpy()
    target = y if right else (y + 1) % 3
    proba = np.full((len(oos), 3), 0.05)
    proba[np.arange(len(oos)), target] = 0.9
    out = oos.copy()
    out[PROBA] = proba
    return out


def test_judge_prefers_the_lower_log_loss_on_shared_unseen_hours(smoke_fit, gbm_fit) -> None:
    data, _ = smoke_fit
    meta = gbm_fit.model.metadata
    current = Contender("v0001", "gbm", gbm_fit.oos, meta, gbm_fit.model)
    gate = GateConfig()
    threshold = meta["label_threshold"]
    worse = Contender("v0002", "gbm", _doctored(gbm_fit.oos, right=False), meta)
    better = Contender("v0003", "gbm", _doctored(gbm_fit.oos, right=True), meta)
    refused = judge(gate, data, [worse], current, threshold)
    assert refused.promote is None and "kept CURRENT" in refused.reason
    assert refused.scores["v0002"]["log_loss"] > refused.scores["v0001"]["log_loss"]
    chosen = judge(gate, data, [worse, better], current, threshold)
    assert chosen.promote == "v0003"
    assert "800 shared unseen hours" in chosen.reason


def test_gate_refuses_a_worse_candidate_and_promotes_a_better_one(
    smoke_fit, gbm_fit, bundles, tmp_path: Path
) -> None:
    data, _ = smoke_fit
    registry = ModelRegistry(tmp_path / "registry")
    gate = load_train_config().gate
    register_and_gate(registry, gate, {"gbm": bundles["gbm"]}, data)
    assert registry.current(MARKET) == "v0001"
    for right, expected in ((False, "v0001"), (True, "v0003")):
        candidate = Path(shutil.copytree(bundles["gbm"], tmp_path / f"candidate-{right}"))
        _doctored(gbm_fit.oos, right).to_parquet(candidate / "oos.parquet")
        line = register_and_gate(registry, gate, {"gbm": candidate}, data)
        assert registry.current(MARKET) == expected, line
    statuses = {v.version: v.status.value for v in registry.versions(MARKET)}
    assert statuses == {"v0001": "previous", "v0002": "candidate", "v0003": "current"}


@pytest.mark.parametrize("family", ["hybrid", "gbm", "ensemble"])
def test_every_family_serves_what_its_batch_path_predicts(
    family: str, bundles, ohlcv_dir: Path
) -> None:
    """Serve's path (the newest CANDLES_FOR_SERVING candles of a request) and the backtester's
    (windows of the whole history's dataset) give one bundle the same probabilities at an hour
    after its training window, for every family."""
    model = load_bundle(bundles[family])
    meta = model.metadata
    history = ParquetDirSource(ohlcv_dir).history(MARKET)
    data = build_dataset(history, MARKET, int(meta["horizon"]), int(meta["max_gap_hours"]))
    after = data.times[prediction_positions(data)]
    after = after[after > trained_until(meta)][:200:50]
    assert len(after) == 4
    batch = bundle_proba(model, data, data.times.get_indexer(after))
    for hour, expected in zip(after, batch, strict=True):
        window = history.loc[:hour].iloc[-CANDLES_FOR_SERVING:]
        view = predict_candles(model, MARKET, window)
        assert view.time == hour and view.model_version == model.version
        np.testing.assert_allclose(view.probabilities.as_tuple(), expected, rtol=1e-6, atol=1e-9)


def test_every_familys_report_scores_against_the_reference_label(smoke_fit, gbm_fit) -> None:
    _, hybrid = smoke_fit
    ensemble = assemble(hybrid, gbm_fit, lookback_folds=1, min_hours=200)
    for fit in (hybrid, gbm_fit, ensemble):
        block = fit.report["reference"]
        assert block["label"] == {"horizon_hours": 6, "threshold": 0.005}
        assert 0 < block["hours"] <= len(fit.oos)
        assert block["scores"]["walk_forward"]["n"] == block["hours"]
    # the default label is the reference label: the same calls score the same on both
    own, ref = gbm_fit.report["walk_forward"], gbm_fit.report["reference"]["scores"]
    assert ref["walk_forward"]["confusion"] == own["confusion"]


def test_a_quantile_bundle_serves_the_threshold_its_refit_fitted(
    smoke_fit, real_candles, tmp_path
) -> None:
    """A quantile label's moves are fitted on the refit's own training rows: the bundle keeps that
    threshold and every reply carries it as the label the loop prices and exits with, not the
    configured fixed threshold."""
    from features.config import load_features_config
    from features.labels import fit_quantile_threshold

    data, _ = smoke_fit
    features = load_features_config()
    labels = features.labels.model_copy(update={"mode": "quantile"})
    quantile = features.model_copy(update={"labels": labels})
    profile = load_train_config().profile("smoke")
    quiet = lambda line: None  # noqa: E731
    fit = fit_market(data, quantile, profile, None, quiet, "smoke", "gbm")
    meta = fit.model.metadata
    threshold = float(meta["label_threshold"])
    assert meta["label_mode"] == "quantile"
    assert threshold != labels.threshold
    start, end = (pd.Timestamp(t) for t in meta["train_window"])
    trained = data.samples[(data.sample_times >= start) & (data.sample_times <= end)]
    expected = fit_quantile_threshold(data.forward_returns[trained], labels.hold_share)
    assert threshold == pytest.approx(expected, rel=0.05)  # the fit rows are a purged part of these
    model = load_bundle(fit.model.save(tmp_path / "quantile"))
    window = real_candles[MARKET].loc[: data.times.max()].iloc[-CANDLES_FOR_SERVING:]
    view = predict_candles(model, MARKET, window)
    assert (view.label.up, view.label.down) == (threshold, threshold)
    assert view.label.barriers is None
