"""`python -m train ablate`: the variants it runs, their cache keys, and the paired comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.config import ConfigError, load_features_config
from features.indicators import FEATURE_HASH
from train.ablate import _groups, compare, variants, verdict, with_groups
from train.config import load_train_config
from train.research_cache import PredictionCache, config_hash
from train.research_jobs import MarketIndex
from train.research_keys import describe
from train.research_report import one_hot
from train.research_run import MarketResearch, ResearchRequest, training_labels


def _request(tmp_path: Path) -> ResearchRequest:
    train_cfg = load_train_config()
    return ResearchRequest(
        markets=["KRW-BTC"],
        families=["gbm", "hybrid"],
        data_dir="unused",
        profile=train_cfg.profile("smoke"),
        profile_name="smoke",
        features=load_features_config(overrides=["groups.calendar=true"]),
        research=train_cfg.research,
        cache=PredictionCache(tmp_path),
    )


def test_variants_switch_exactly_their_groups_and_key_the_cache_apart(tmp_path: Path) -> None:
    req = _request(tmp_path)
    assert variants(["calendar", "premium"]) == {
        "base": (),
        "+calendar": ("calendar",),
        "+premium": ("premium",),
    }
    base, premium = with_groups(req, ()), with_groups(req, ("premium",))
    assert base.families == ["gbm"] and not base.leaky and not base.baselines
    assert base.features.feature_set().hash == FEATURE_HASH  # the calendar override is undone
    assert premium.features.feature_set().groups == ("premium",)
    calendar = with_groups(req, ("calendar",))
    keys = {config_hash(describe("gbm", r)) for r in (base, premium, calendar)}
    assert len(keys) == 3
    with pytest.raises(ConfigError, match="unknown group"):
        _groups("calendar,tides")


def test_compare_is_paired_and_says_which_way(real_candles, tmp_path: Path) -> None:
    req = _request(tmp_path)
    candles = real_candles["KRW-BTC"].iloc[-3000:]
    index = MarketIndex("KRW-BTC", candles.index, candles["close"].to_numpy(),
                        np.arange(len(candles)), {})  # fmt: skip
    labels = training_labels(index, req.features)
    hours = labels.dropna().index[-2000:]
    y = labels.loc[hours].to_numpy().astype(np.int64)
    frame = lambda p: pd.DataFrame(p, index=hours, columns=["p_sell", "p_hold", "p_buy"])  # noqa: E731
    always_hold = MarketResearch(index, [], {"gbm": frame(one_hot(np.ones(len(y), np.int64)))})
    knows = MarketResearch(index, [], {"gbm": frame(one_hot(y))})
    row, resamples = compare(always_hold, knows, req)
    assert row["hours"] == 2000 and row["base"] == pytest.approx(1 / 3)
    assert row["diff"] == pytest.approx(2 / 3) and row["interval"][0] > 0.5
    assert verdict(*row["interval"]) == "helps"
    back, _ = compare(knows, always_hold, req)
    assert verdict(*back["interval"]) == "hurts"
    same, diffs = compare(knows, knows, req)
    assert same["diff"] == 0 and np.all(diffs == 0) and verdict(*same["interval"]) == "unclear"


def test_cache_keys_list_what_a_configuration_stored(tmp_path: Path) -> None:
    """`ablate --cached-only` finds every stored fold of a variant from the file names."""
    from train.research_cache import FoldKey

    cache = PredictionCache(tmp_path)
    frame = pd.DataFrame({"fold": 7, "p_sell": [0.2], "p_hold": [0.5], "p_buy": [0.3]},
                         index=pd.DatetimeIndex(["2023-10-02 00:00"], name="time"))  # fmt: skip
    keys = [
        FoldKey(
            "KRW-BTC",
            "gbm",
            "abc",
            fold,
            pd.Timestamp("2023-10-02") + pd.Timedelta(days=30 * i),
            pd.Timestamp("2023-11-01") + pd.Timedelta(days=30 * i),
            "f00d",
        )  # fmt: skip
        for i, fold in enumerate((70, 69))
    ]
    for key in keys:
        cache.write(key, frame, {})
    assert cache.keys("KRW-BTC", "gbm", "abc") == sorted(keys, key=lambda k: k.fold)
    assert cache.keys("KRW-BTC", "gbm", "other") == []
