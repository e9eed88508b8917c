"""The novelty score on real candles: an hour the model trained on is familiar, the same hour with
a crash candle is novel; the threshold flags few training hours; what the bundle keeps loads back
or is refused with a reason, and a bundle made before the gate has none."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.config import load_features_config
from features.dataset import build_dataset
from features.exchange import HOUR_NS
from features.indicators import CANDLES_FOR_SERVING, SEQUENCE_LENGTH, SERVING_WINDOW
from features.serving import serving_matrix
from train.bundle_io import BundleError
from train.config import NoveltyConfig
from train.novelty import (
    NOVELTY_JSON,
    NOVELTY_ROWS,
    dataset_scores,
    feature_rows,
    fit_novelty,
    load_novelty,
    novelty_fields,
    purged_nearest,
    save_novelty,
)

PURGE = 30  # the 6 h label horizon plus the 24 h window, as the folds purge
END = "2025-08-31 23:00"  # the hours train.novelty's docstring measured the purge on


@pytest.fixture(scope="module")
def btc(real_candles):
    """4,000 hours of KRW-BTC; the gate fitted on all but the newest 500 sample hours."""
    features = load_features_config()
    candles = real_candles["KRW-BTC"].loc[:END].iloc[-(4000 + SERVING_WINDOW) :]
    data = build_dataset(candles, "KRW-BTC", features.labels.horizon_hours, 6)
    train = data.samples[:-500]
    return candles, data, train, fit_novelty(data, train, NoveltyConfig(), PURGE)


def _serving_window(candles: pd.DataFrame) -> np.ndarray:
    return serving_matrix(candles.iloc[-CANDLES_FOR_SERVING:], SEQUENCE_LENGTH, 6)


def test_a_training_hour_is_familiar_and_a_crash_candle_is_novel(btc) -> None:
    candles, data, train, novelty = btc
    hour = data.times[train[1500]]
    window = candles.loc[:hour]
    familiar = novelty_fields(novelty, _serving_window(window))
    assert familiar["novel"] is False and familiar["dissimilarity"] < novelty.threshold

    crash = window.copy()
    last = crash.index[-1]
    crash.loc[last, ["low", "close"]] = crash.loc[last, "open"] * 0.8  # -20 % in the hour
    crash.loc[last, ["volume", "value"]] *= 30
    shifted = novelty_fields(novelty, _serving_window(crash))
    assert shifted["novel"] is True and shifted["dissimilarity"] > 2 * novelty.threshold


def test_the_threshold_flags_few_training_hours_and_the_purge_sets_the_scale(btc) -> None:
    _, data, train, novelty = btc
    scores = dataset_scores(novelty, data, train)
    assert (scores > novelty.threshold).mean() <= 0.01
    assert novelty.threshold == pytest.approx(novelty.info["training_scores"]["p99"])
    # Without the purge a training hour's neighbours include its adjacent hours: the scale would
    # shrink (by ~6 % here) and a live hour, which has no such neighbour, would read more novel.
    z = novelty.standardise(feature_rows(data.raw_windows(train)))
    hours = data.times.asi8[train] // HOUR_NS
    assert purged_nearest(z, hours, 5, 0).mean() < 0.97 * purged_nearest(z, hours, 5, PURGE).mean()


def test_the_gate_round_trips_without_pickle(btc, tmp_path: Path) -> None:
    _, data, train, novelty = btc
    save_novelty(novelty, tmp_path)
    np.load(tmp_path / NOVELTY_ROWS, allow_pickle=False)
    json.loads((tmp_path / NOVELTY_JSON).read_text())
    loaded = load_novelty(tmp_path)
    assert loaded is not None and loaded.threshold == novelty.threshold
    rows = data.samples[-100:]
    np.testing.assert_array_equal(
        dataset_scores(loaded, data, rows), dataset_scores(novelty, data, rows)
    )


def test_a_bundle_without_the_gate_has_none_and_a_broken_one_is_refused(btc, tmp_path) -> None:
    assert load_novelty(tmp_path) is None  # made before the gate: served as novel false
    assert novelty_fields(None, np.zeros((SEQUENCE_LENGTH, 46))) == {
        "dissimilarity": None,
        "novel": False,
    }
    save_novelty(btc[3], tmp_path)
    (tmp_path / NOVELTY_ROWS).unlink()
    with pytest.raises(BundleError, match="novelty"):
        load_novelty(tmp_path)
    np.save(tmp_path / NOVELTY_ROWS, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BundleError, match="novelty"):
        load_novelty(tmp_path)  # a pickled array is never loaded
