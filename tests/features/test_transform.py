"""The hybrid's transform on feature-group columns: median fill from training rows, missing flags,
no look-ahead, and the stored form (new and pre-groups layouts) on hand-made rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from features.groups import BASE_SET, FeatureSet
from features.indicators import FEATURE_NAMES, SEQUENCE_LENGTH
from features.transform import SequenceTransform, TransformError

L = SEQUENCE_LENGTH
BASE = len(FEATURE_NAMES)
WITH_PREMIUM = FeatureSet(("calendar", "premium"))  # hour_kst, weekday_kst, premium_log, dev
PREMIUM, DEV = BASE + 2, BASE + 3
HOURS, TRAIN_END = 400, 200  # training windows end at rows L-1 .. TRAIN_END-1


def hand_made(feature_set: FeatureSet, seed: int = 0) -> np.ndarray:
    """Positive base columns (prices, volumes: the stationary step divides by them), hour and
    weekday, and premium columns near 0.01."""
    rng = np.random.default_rng(seed)
    features = rng.uniform(1.0, 2.0, (HOURS, len(feature_set.names)))
    hours = np.arange(HOURS)
    names = feature_set.names
    if "hour_kst" in names:
        features[:, names.index("hour_kst")] = hours % 24
        features[:, names.index("weekday_kst")] = (hours // 24) % 7
    if "premium_log" in names:
        features[:, PREMIUM] = 0.01 + 0.001 * rng.standard_normal(HOURS)
        features[:, DEV] = 0.002 * rng.standard_normal(HOURS)
    return features


def train_ends() -> np.ndarray:
    return np.arange(L - 1, TRAIN_END)


def test_group_nan_is_filled_with_the_training_median_and_flagged() -> None:
    features = hand_made(WITH_PREMIUM)
    features[[50, 51, 120], PREMIUM] = np.nan  # missing Binance hours inside training
    features[TRAIN_END:, PREMIUM] = 5.0  # the future: a look-ahead median would move to 5
    transform = SequenceTransform.fit(features, train_ends(), feature_set=WITH_PREMIUM)

    expected = np.nanmedian(features[:TRAIN_END, BASE:], axis=0)
    np.testing.assert_allclose(transform.medians, expected, rtol=0, atol=0)
    assert transform.flags == ("premium_log", "premium_dev_168h")  # calendar is never missing
    assert transform.width == BASE + 4 + 2
    assert transform.input_names[-2:] == ("premium_log_missing", "premium_dev_168h_missing")

    x = transform.apply(features, np.array([60]))[0]  # window rows 37..60 hold rows 50 and 51
    assert x.shape == (L, transform.width) and np.isfinite(x).all()
    flag = x[:, -2]
    np.testing.assert_array_equal(np.flatnonzero(flag), [50 - 37, 51 - 37])
    assert (x[:, -1] == 0).all()  # premium_dev was present everywhere
    filled = (expected[2] - transform.mean[PREMIUM]) / transform.std[PREMIUM]
    np.testing.assert_allclose(x[[13, 14], PREMIUM], filled, rtol=1e-6)


def test_a_serving_row_is_filled_from_the_training_median_never_its_neighbours() -> None:
    features = hand_made(WITH_PREMIUM)
    transform = SequenceTransform.fit(features, train_ends(), feature_set=WITH_PREMIUM)
    window = features[None, 300 - L + 1 : 301].copy()
    window[0, :, PREMIUM] = 3.0  # neighbours far from anything training saw
    window[0, -1, PREMIUM] = np.nan  # the newest hour's Binance candle is missing
    x = transform.apply_windows(window)[0]
    median_row = window.copy()
    median_row[0, -1, PREMIUM] = transform.medians[2]
    y = transform.apply_windows(median_row)[0]
    np.testing.assert_array_equal(x[:, : transform.width - 2], y[:, : transform.width - 2])
    assert x[-1, -2] == 1.0 and y[-1, -2] == 0.0 and (x[:-1, -2] == 0).all()
    assert transform.medians[2] == pytest.approx(0.01, abs=0.002)  # not 3.0


def test_rows_after_training_change_nothing_in_the_fit() -> None:
    features = hand_made(WITH_PREMIUM)
    features[[70, 90], PREMIUM] = np.nan
    first = SequenceTransform.fit(features, train_ends(), feature_set=WITH_PREMIUM)
    future = features.copy()
    future[TRAIN_END:] = hand_made(WITH_PREMIUM, seed=9)[TRAIN_END:] * 7.0
    future[TRAIN_END + 5 :: 3, PREMIUM] = np.nan
    assert SequenceTransform.fit(future, train_ends(), feature_set=WITH_PREMIUM) == first


def test_calendar_alone_has_no_flags_and_refuses_nan_in_training() -> None:
    calendar = FeatureSet(("calendar",))
    features = hand_made(calendar)
    transform = SequenceTransform.fit(features, train_ends(), feature_set=calendar)
    assert transform.flags == () and transform.width == BASE + 2
    assert transform.apply(features, np.array([300])).shape == (1, L, BASE + 2)
    features[100, BASE] = np.nan  # the hour of day is never missing after warm-up
    with pytest.raises(ValueError, match="outside the missable group columns"):
        SequenceTransform.fit(features, train_ends(), feature_set=calendar)
    with pytest.raises(ValueError, match="the feature set with groups"):
        SequenceTransform.fit(features[:, :BASE], train_ends(), feature_set=calendar)


def test_a_column_never_present_in_training_fills_with_zero_and_is_flagged() -> None:
    features = hand_made(WITH_PREMIUM)
    features[:TRAIN_END, DEV] = np.nan  # under 84 hours of premium: its 7-day mean is unknown
    transform = SequenceTransform.fit(features, train_ends(), feature_set=WITH_PREMIUM)
    assert transform.medians[3] == 0.0
    x = transform.apply(features, np.array([100]))[0]
    assert np.isfinite(x).all() and (x[:, -1] == 1).all()


def test_json_round_trip_and_refusals_with_groups() -> None:
    features = hand_made(WITH_PREMIUM)
    features[60, PREMIUM] = np.nan
    transform = SequenceTransform.fit(features, train_ends(), feature_set=WITH_PREMIUM)
    stored = json.loads(transform.to_json())
    assert stored["medians"].keys() == set(WITH_PREMIUM.extra_names)
    assert stored["missing_flags"] == ["premium_log", "premium_dev_168h"]
    assert SequenceTransform.from_json(transform.to_json()) == transform

    def refused(**change: object) -> str:
        with pytest.raises(TransformError) as info:
            SequenceTransform.from_json(json.dumps({**stored, **change}))
        return str(info.value)

    assert "medians" in refused(medians={"hour_kst": 1.0})
    assert "missing_flags" in refused(missing_flags=["premium_dev_168h", "premium_log"])
    assert "missing_flags" in refused(missing_flags=["close"])
    assert "feature hash" in refused(feature_groups=["calendar"])
    assert "medians" in refused(medians=None)
    without = {k: v for k, v in stored.items() if k != "medians"}
    with pytest.raises(TransformError, match=r"lacks \['medians'\]"):
        SequenceTransform.from_json(json.dumps(without))


def test_a_transform_stored_before_groups_reached_the_hybrid_loads_as_the_base_46() -> None:
    """The JSON the hybrid's transform had before (no feature_groups, medians or flags)."""
    features = hand_made(BASE_SET)
    transform = SequenceTransform.fit(features, train_ends())
    old = {
        k: v
        for k, v in json.loads(transform.to_json()).items()
        if k not in ("feature_groups", "context_markets", "medians", "missing_flags")
    }
    loaded = SequenceTransform.from_json(json.dumps(old))
    assert loaded == transform and loaded.feature_set == BASE_SET and loaded.width == BASE
    wider = {**old, "feature_names": list(WITH_PREMIUM.names)}
    with pytest.raises(TransformError, match="feature hash"):
        SequenceTransform.from_json(json.dumps(wider))
