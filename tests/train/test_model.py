"""The hybrid model on real candles: fit, bundle round trip, refusals, honest out-of-sample rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from train.bundle import BundleError, load_bundle
from train.config import SliceConfig
from train.evaluate import positions_from_signals, signal_return
from train.fit import purged_slices


def test_smoke_fit_reports_walk_forward_leaky_and_baselines(smoke_fit) -> None:
    _, fit = smoke_fit
    report = fit.report
    assert set(report) >= {"walk_forward", "leaky", "baselines", "folds"}
    assert set(report["baselines"]) == {
        "majority class",
        "persistence (label t-H)",
        "LightGBM last row only",
        "plain LightGBM (17 features)",
    }
    wf = report["walk_forward"]
    for key in (
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "log_loss",
        "signal_return",
        "buy_and_hold_return",
        "confusion",
        "precision",
        "recall",
    ):
        assert key in wf
    assert sum(map(sum, wf["confusion"])) == wf["n"] == len(fit.oos)
    meta = fit.model.metadata
    for key in (
        "market",
        "feature_hash",
        "sequence_length",
        "horizon",
        "label_threshold",
        "train_window",
        "validation_window",
        "data_fingerprint",
        "hyperparameters",
        "metrics",
        "code_version",
        "created_at",
    ):
        assert key in meta, key


def test_oos_has_one_row_per_test_hour_and_the_bundle_is_refit_to_the_newest(smoke_fit) -> None:
    data, fit = smoke_fit
    oos = fit.oos
    assert oos.index.is_unique and oos.index.is_monotonic_increasing
    assert np.allclose(oos[["p_sell", "p_hold", "p_buy"]].sum(axis=1), 1.0)
    folds = fit.report["folds"]
    assert len(folds) == oos["fold"].nunique() == 2
    assert set(oos.index).issubset(set(data.sample_times))
    meta = fit.model.metadata
    # The bundle is the procedure refit on every labelled hour: its training window ends at the
    # newest hour whose label is known, calibration last, after early stopping, purged apart.
    assert pd.Timestamp(meta["train_window"][1]) == data.sample_times.max() == oos.index.max()
    assert pd.Timestamp(meta["slices"]["calibrate"][1]) == data.sample_times.max()
    gap = pd.Timestamp(meta["slices"]["calibrate"][0]) - pd.Timestamp(
        meta["slices"]["early_stop"][1]
    )
    assert gap > pd.Timedelta(hours=data.horizon + data.sequence_length)


def test_bundle_round_trip_gives_identical_probabilities(smoke_fit, smoke_bundle: Path) -> None:
    data, fit = smoke_fit
    windows = data.raw_windows(data.samples[-64:])
    loaded = load_bundle(smoke_bundle)
    np.testing.assert_array_equal(loaded.predict_proba(windows), fit.model.predict_proba(windows))
    proba = loaded.predict_proba(windows)
    assert proba.shape == (64, 3) and np.allclose(proba.sum(axis=1), 1.0)


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "copy"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "lstm.pt").write_bytes(b"not a torch file"), "lstm.pt"),
        (lambda d: (d / "lightgbm.txt").write_text("tree\nnonsense"), "lightgbm.txt"),
        (lambda d: (d / "transform.json").write_text("{"), "transform.json"),
        (lambda d: (d / "metadata.json").write_text("[1, 2"), "metadata.json"),
        (lambda d: (d / "lightgbm.txt").unlink(), "lacks lightgbm.txt"),
    ],
)
def test_corrupt_bundles_are_refused(smoke_bundle: Path, tmp_path: Path, damage, message) -> None:
    copy = _copy(smoke_bundle, tmp_path)
    damage(copy)
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)


def test_mismatched_bundles_are_refused(smoke_bundle: Path, tmp_path: Path) -> None:
    copy = _copy(smoke_bundle, tmp_path)
    meta = json.loads((copy / "metadata.json").read_text())
    (copy / "metadata.json").write_text(json.dumps({**meta, "feature_hash": "f" * 64}))
    with pytest.raises(BundleError, match="feature hash"):
        load_bundle(copy)
    (copy / "metadata.json").write_text(
        json.dumps({**meta, "encoder": {**meta["encoder"], "hidden_size": 32}})
    )
    with pytest.raises(BundleError, match="does not fit"):
        load_bundle(copy)
    state = torch.load(smoke_bundle / "lstm.pt", weights_only=True)
    state["head.weight"] = state["head.weight"][:2]
    (copy / "metadata.json").write_text(json.dumps(meta))
    torch.save(state, copy / "lstm.pt")
    with pytest.raises(BundleError, match="lstm.pt"):
        load_bundle(copy)


def test_bundle_holds_no_pickle(smoke_bundle: Path) -> None:
    torch.load(smoke_bundle / "lstm.pt", weights_only=True)  # raises on arbitrary objects
    np.load(smoke_bundle / "novelty_rows.npy", allow_pickle=False)
    for name in ("transform.json", "metadata.json", "novelty.json"):
        json.loads((smoke_bundle / name).read_text())


def test_a_bundle_made_before_the_novelty_gate_still_serves(
    smoke_fit, smoke_bundle, real_candles, tmp_path
) -> None:
    """No novelty files: it loads, predicts the same, and answers novel false, dissimilarity
    null; with them, the same hour carries a score."""
    from serve.predict import predict_candles
    from train.novelty import NOVELTY_JSON, NOVELTY_ROWS

    data, _ = smoke_fit
    old = _copy(smoke_bundle, tmp_path)
    (old / NOVELTY_JSON).unlink()
    (old / NOVELTY_ROWS).unlink()
    model = load_bundle(old)
    assert model.novelty is None
    candles = real_candles["KRW-BTC"].loc[: data.times[-1]]
    view = predict_candles(model, "KRW-BTC", candles)
    assert view.novel is False and view.dissimilarity is None
    current = predict_candles(load_bundle(smoke_bundle), "KRW-BTC", candles)
    assert current.probabilities == view.probabilities and current.dissimilarity > 0


def test_slices_are_ordered_and_purged() -> None:
    times = pd.date_range("2024-01-01", periods=2000, freq="h").asi8
    positions = np.arange(2000)
    slices = purged_slices(times, positions, SliceConfig(), purge_hours=30)
    names = list(slices)
    assert names == ["encoder", "head", "early_stop", "calibrate"]  # the newest pick and calibrate
    for a, b in zip(names[:-1], names[1:], strict=True):
        gap = (times[slices[b][0]] - times[slices[a][-1]]) / 3_600e9
        assert gap > 30


def test_signal_return_after_fees() -> None:
    assert positions_from_signals(np.array([1, 2, 1, 1, 0, 1, 2])).tolist() == [0, 1, 1, 1, 0, 0, 1]
    result = signal_return(np.array([2, 1, 0]), np.array([0.10, 0.10, 0.10]))
    # long for two hours: 1.1 * 1.1, one buy and one sell at 0.05 % each
    assert result["signal_return"] == pytest.approx(1.21 * 0.9995**2 - 1)
    assert result["buy_and_hold_return"] == pytest.approx(1.1**3 * 0.9995**2 - 1)
    assert result["trades"] == 2
