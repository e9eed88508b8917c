"""The gbm family's later options: the recency half-life (a fit row's weight halves with every
half-life of its age, class balance kept under those weights, the weights reaching LightGBM), the
refit on the early-stop hours and row bagging; the research cache keys each option apart while
folds without them keep the keys they had before the options existed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from features.exchange import HOUR_NS
from train.config import GbmConfig
from train.gbm import GbmSlices, booster_params, fit_gbm, fit_weights, raw_scores, recency_weights
from train.plain_gbm import balanced_weights
from train.research_cache import config_hash
from train.research_keys import describe

START_NS = pd.Timestamp("2024-01-01").value


def _hours(n: int) -> np.ndarray:
    return START_NS + np.arange(n, dtype="int64") * HOUR_NS


def test_a_row_weighs_half_per_half_life_of_age_whatever_the_order() -> None:
    times = _hours(201)[::-1]  # newest first: the weights follow the hours, not the positions
    w = recency_weights(times, 100)
    assert w[0] == pytest.approx(1.0)
    assert w[100] == pytest.approx(0.5)
    assert w[200] == pytest.approx(0.25)
    assert recency_weights(np.zeros(0, dtype="int64"), 100).shape == (0,)


def test_class_balance_holds_under_base_weights() -> None:
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    plain = balanced_weights(y)
    assert plain == pytest.approx(len(y) / (3 * np.bincount(y)[y]))
    base = np.linspace(0.1, 1.0, len(y))
    w = balanced_weights(y, base)
    per_class = np.bincount(y, weights=w, minlength=3)
    assert per_class == pytest.approx(np.full(3, base.sum() / 3))
    factor = w / base
    for cls in range(3):  # one factor per class: within a class the recency order is untouched
        assert factor[y == cls] == pytest.approx(np.full((y == cls).sum(), factor[y == cls][0]))
    with pytest.raises(ValueError, match="do not match"):
        balanced_weights(y, base[:-1])


def test_fit_weights_combine_recency_and_balance_and_need_the_hours() -> None:
    y = np.array([0, 1, 2, 2])
    x = np.arange(4.0)[:, None]
    times = _hours(4)
    assert fit_weights(GbmConfig(balanced=False), y, times) is None
    assert fit_weights(GbmConfig(), y, times) == pytest.approx(balanced_weights(y))
    recency = fit_weights(GbmConfig(balanced=False, halflife_hours=24), y, times)
    assert recency == pytest.approx(recency_weights(times, 24))
    both = fit_weights(GbmConfig(halflife_hours=24), y, times)
    assert both == pytest.approx(balanced_weights(y, recency_weights(times, 24)))
    with pytest.raises(ValueError, match="the hour of every row"):
        fit_weights(GbmConfig(halflife_hours=24), y, None)
    with pytest.raises(ValueError, match="the hour of every row"):  # a refit needs both slices'
        fit_gbm(
            GbmConfig(halflife_hours=24, refit_early_stop=True, num_rounds=2),
            GbmSlices((x, y), (x, y), (x, y), times),
        )
    with pytest.raises(ValidationError, match="halflife_hours"):
        GbmConfig(halflife_hours=0)


def test_a_short_half_life_follows_the_newest_hours_where_equal_weights_follow_the_majority() -> (
    None
):
    """The old 80 % of the hours map x > 0.5 to BUY, the newest 20 % to SELL: equal weights learn
    the old rule, a 100-hour half-life the new one."""
    rng = np.random.default_rng(0)
    n = 5000
    x = rng.uniform(size=(n, 1))
    high = x[:, 0] > 0.5
    y = np.where(high, 2, 0)
    newest = np.arange(n) >= int(0.8 * n)
    y[newest] = np.where(high[newest], 0, 2)
    probe = (x[-500:], y[-500:])
    slices = GbmSlices((x, y), probe, probe, _hours(n))
    config = GbmConfig(num_rounds=50, min_data_in_leaf=20, early_stopping_rounds=None)
    test = np.array([[0.9], [0.1]])

    def calls(cfg: GbmConfig) -> np.ndarray:
        booster, _ = fit_gbm(cfg, slices)
        return raw_scores(booster, test).argmax(axis=1)

    assert calls(config).tolist() == [2, 0]  # the majority's rule
    assert calls(config.model_copy(update={"halflife_hours": 100})).tolist() == [0, 2]


def test_a_refit_grows_the_trees_on_the_early_stop_hours_too() -> None:
    """The fit hours map x > 0.5 to BUY, the (four times as many) early-stop hours to SELL: the
    trees grown on the fit hours alone keep the first rule, the refit on both takes the second."""
    rng = np.random.default_rng(1)
    fit_x, stop_x = rng.uniform(size=(1000, 1)), rng.uniform(size=(4000, 1))
    fit_y = np.where(fit_x[:, 0] > 0.5, 2, 0)
    stop_y = np.where(stop_x[:, 0] > 0.5, 0, 2)
    times = _hours(5000)
    slices = GbmSlices(
        (fit_x, fit_y), (stop_x, stop_y), (stop_x, stop_y), times[:1000], times[1000:]
    )
    config = GbmConfig(num_rounds=50, min_data_in_leaf=20, early_stopping_rounds=None)
    test = np.array([[0.9], [0.1]])

    def calls(cfg: GbmConfig) -> list[int]:
        booster, _ = fit_gbm(cfg, slices)
        return raw_scores(booster, test).argmax(axis=1).tolist()

    assert calls(config) == [2, 0]
    assert calls(config.model_copy(update={"refit_early_stop": True})) == [0, 2]


def test_bagging_draws_a_share_of_the_fit_hours_per_tree_and_is_off_at_one() -> None:
    assert "bagging_fraction" not in booster_params(GbmConfig(), 0)
    params = booster_params(GbmConfig(bagging_fraction=0.5), 0)
    assert params["bagging_fraction"] == 0.5 and params["bagging_freq"] == 1
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3000, 3))
    y = np.digitize(x[:, 0] + rng.normal(scale=1.0, size=3000), [-0.5, 0.5])
    slices = GbmSlices((x, y), (x[:500], y[:500]), (x[:500], y[:500]))
    config = GbmConfig(num_rounds=30, min_data_in_leaf=20, early_stopping_rounds=None)

    def scores(cfg: GbmConfig) -> np.ndarray:
        return raw_scores(fit_gbm(cfg, slices)[0], x[:50])

    np.testing.assert_array_equal(scores(config), scores(config))  # deterministic either way
    bagged = config.model_copy(update={"bagging_fraction": 0.5})
    np.testing.assert_array_equal(scores(bagged), scores(bagged))
    assert not np.allclose(scores(config), scores(bagged))
    with pytest.raises(ValidationError, match="bagging_fraction"):
        GbmConfig(bagging_fraction=0.0)


# The smoke profile's gbm fold key at 038e7ee, before the half-life existed: the cache's
# unweighted gbm folds must not be recomputed for an option they do not use.
SMOKE_GBM_KEY_BEFORE = "db22710fded4"


def test_the_half_life_keys_research_folds_and_unweighted_keys_stay_put(smoke_gbm_request) -> None:
    def request(halflife: int | None, refit: bool = False, bagging: float = 1.0) -> object:
        return smoke_gbm_request(
            halflife_hours=halflife, refit_early_stop=refit, bagging_fraction=bagging
        )

    unweighted = describe("gbm", request(None))
    assert not {"halflife_hours", "refit_early_stop", "bagging_fraction"} & set(unweighted["gbm"])
    assert config_hash(unweighted) == SMOKE_GBM_KEY_BEFORE
    keys = {
        config_hash(describe("gbm", request(h, refit, bagging)))
        for h in (None, 100, 8760)
        for refit in (False, True)
        for bagging in (1.0, 0.5)
    }
    assert len(keys) == 12
    assert describe("gbm", request(100))["gbm"]["halflife_hours"] == 100
