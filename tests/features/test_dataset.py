"""Samples, the stationary transform and causality on the real candles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.dataset import build_dataset
from features.exchange import HOUR_NS
from features.indicators import FEATURE_NAMES, SEQUENCE_LENGTH, WARMUP_HOURS
from features.transform import SequenceTransform, TransformError, relative_windows

HORIZON = 6


@pytest.fixture(scope="module")
def btc(real_candles):
    return real_candles["KRW-BTC"].loc["2023-01-01":"2024-06-30"]


@pytest.fixture(scope="module")
def btc_data(btc):
    return build_dataset(btc, "KRW-BTC", HORIZON, max_gap_hours=6)


def test_samples_have_finite_contiguous_windows_and_labels(btc_data) -> None:
    data = btc_data
    assert data.samples[0] >= WARMUP_HOURS - 1 + SEQUENCE_LENGTH - 1
    windows = data.raw_windows(data.samples)
    assert windows.shape == (len(data.samples), SEQUENCE_LENGTH, len(FEATURE_NAMES))
    assert np.isfinite(windows).all()
    assert np.isfinite(data.forward_returns[data.samples]).all()
    assert not data.filled[data.samples].any()
    spans = data.times.asi8[data.samples] - data.times.asi8[data.samples - SEQUENCE_LENGTH + 1]
    assert (spans == (SEQUENCE_LENGTH - 1) * HOUR_NS).all()
    labels = data.labels(0.005)
    assert set(np.unique(labels)) == {0, 1, 2}


def test_long_outage_restarts_the_warm_up(btc) -> None:
    holed = btc.drop(btc.loc["2023-06-01":"2023-06-03"].index)  # a three-day outage
    data = build_dataset(holed, "KRW-BTC", HORIZON, max_gap_hours=6)
    after = data.times >= pd.Timestamp("2023-06-04")
    first_after = np.flatnonzero(after)[0]
    assert np.isnan(data.features[first_after : first_after + WARMUP_HOURS - 1]).all()
    usable_after = data.samples[data.samples >= first_after]
    assert usable_after[0] >= first_after + WARMUP_HOURS - 1 + SEQUENCE_LENGTH - 1
    before = data.samples[data.samples < first_after]
    assert (data.times[before] + pd.Timedelta(hours=HORIZON) < pd.Timestamp("2023-06-01")).all()


def test_transform_is_stationary_and_fitted_on_training_rows(btc_data) -> None:
    data = btc_data
    train = data.samples[: len(data.samples) // 2]
    transform = SequenceTransform.fit(data.features, train)
    x = transform.apply(data.features, data.samples)
    assert x.dtype == np.float32 and np.isfinite(x).all()
    assert np.abs(x).max() <= transform.clip
    x_train = x[: len(train)].reshape(-1, len(FEATURE_NAMES))
    assert np.allclose(x_train.mean(axis=0), 0.0, atol=0.2)
    # the same window at double the price level reads the same: price columns are relative
    raw = data.raw_windows(data.samples[:50])
    scaled = raw.copy()
    from features.indicators import PRICE_LEVEL_FEATURES

    idx = [FEATURE_NAMES.index(c) for c in PRICE_LEVEL_FEATURES]
    scaled[:, :, idx] *= 2.0
    np.testing.assert_allclose(relative_windows(scaled), relative_windows(raw), rtol=1e-12)


def test_transform_json_round_trip_and_refusals(btc_data) -> None:
    transform = SequenceTransform.fit(btc_data.features, btc_data.samples[:1000])
    again = SequenceTransform.from_json(transform.to_json())
    assert again == transform
    import json

    data = json.loads(transform.to_json())
    with pytest.raises(TransformError, match="feature hash"):
        SequenceTransform.from_json(json.dumps({**data, "feature_hash": "0" * 64}))
    with pytest.raises(TransformError, match="'std'"):
        SequenceTransform.from_json(json.dumps({**data, "std": data["std"][:-1]}))
    with pytest.raises(TransformError, match="not valid JSON"):
        SequenceTransform.from_json(transform.to_json()[:-10])
    with pytest.raises(TransformError, match="lacks"):
        SequenceTransform.from_json(json.dumps({"mean": []}))


def test_causal_features_windows_and_transform(real_candles) -> None:
    """Appending or dropping the future changes nothing at or before hour t."""
    rng = np.random.default_rng(7)
    for market, candles in real_candles.items():
        recent = candles.iloc[-6000:]
        full = build_dataset(recent, market, HORIZON, max_gap_hours=6)
        transform = SequenceTransform.fit(full.features, full.samples[:500])
        for t in rng.choice(full.samples[full.samples < len(full.times) - 200], 3, replace=False):
            cut = recent.loc[: full.times[t]]
            past = build_dataset(cut, market, HORIZON, max_gap_hours=6)
            k = len(past.times) - 1
            assert past.times[k] == full.times[t]
            np.testing.assert_array_equal(past.features[: k + 1], full.features[: t + 1])
            np.testing.assert_array_equal(past.filled, full.filled[: k + 1])
            np.testing.assert_array_equal(
                past.raw_windows(np.array([k])), full.raw_windows(np.array([t]))
            )
            np.testing.assert_array_equal(
                transform.apply(past.features, np.array([k])),
                transform.apply(full.features, np.array([t])),
            )


def test_group_columns_are_causal(real_candles, ohlcv_dir) -> None:
    """With every group on: cutting the future of the market, of every context market and of
    Binance, or rewriting that future (BTC and Binance closes doubled after t), changes no row at
    or before hour t."""
    from features.context import folder_context
    from features.exchange import KST
    from features.groups import GROUP_ORDER, FeatureSet, MarketContext

    groups = FeatureSet(GROUP_ORDER)
    utc_shift = pd.Timedelta(KST.utcoffset(None))
    rng = np.random.default_rng(11)
    for market in ("KRW-ETH", "KRW-XRP"):
        recent = real_candles[market].iloc[-4000:]
        context = folder_context(groups, market, str(ohlcv_dir))
        full = build_dataset(recent, market, HORIZON, 6, feature_set=groups, context=context)
        for t in rng.choice(full.samples[full.samples < len(full.times) - 200], 2, replace=False):
            at = full.times[t]

            def future(frame: pd.DataFrame, after: pd.Timestamp, how: str) -> pd.DataFrame:
                if how == "cut":
                    return frame.loc[:after]
                moved = frame.copy()
                moved.loc[moved.index > after, ["open", "high", "low", "close"]] *= 2.0
                return moved

            for how in ("cut", "rewrite"):
                upbit = {m: future(f, at, how) for m, f in context.upbit.items()}
                changed = MarketContext(upbit, future(context.binance, at - utc_shift, how))
                own = future(recent, at, how)
                past = build_dataset(own, market, HORIZON, 6, feature_set=groups, context=changed)
                k = int(np.searchsorted(past.times, at))
                np.testing.assert_array_equal(past.features[: k + 1], full.features[: t + 1])
