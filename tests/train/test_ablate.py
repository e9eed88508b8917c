"""`python -m train ablate`: the variants it runs, their cache keys, and the paired comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.config import ConfigError, load_features_config
from features.folds import folds_in_range
from features.indicators import FEATURE_HASH
from train.__main__ import main, parse_args
from train.ablate import _groups, compare, variants, verdict, with_groups
from train.config import FAMILIES, load_train_config
from train.research_cache import PredictionCache, config_hash
from train.research_cli import build_request
from train.research_jobs import MarketIndex, prepare_market
from train.research_keys import describe, eligible_folds, fold_key
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
    base, premium = with_groups(req, (), "gbm"), with_groups(req, ("premium",), "gbm")
    assert base.families == ["gbm"] and not base.leaky and not base.baselines
    assert base.features.feature_set().hash == FEATURE_HASH  # the calendar override is undone
    assert premium.features.feature_set().groups == ("premium",)
    calendar = with_groups(req, ("calendar",), "gbm")
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
    row, resamples = compare(always_hold, knows, req, "gbm")
    assert row["hours"] == 2000 and row["base"] == pytest.approx(1 / 3)
    assert row["diff"] == pytest.approx(2 / 3) and row["interval"][0] > 0.5
    assert verdict(*row["interval"]) == "helps"
    back, _ = compare(knows, always_hold, req, "gbm")
    assert verdict(*back["interval"]) == "hurts"
    same, diffs = compare(knows, knows, req, "gbm")
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


ABLATE = ["ablate", "--markets", "KRW-BTC", "--start", "2024-01-01", "--end", "2024-02-29",
          "--groups", "calendar"]  # fmt: skip


def test_the_family_reaches_every_variants_request_and_cache_key(tmp_path: Path) -> None:
    assert parse_args(ABLATE).family == "gbm"
    assert parse_args([*ABLATE, "--family", "hybrid"]).family == "hybrid"
    req = _request(tmp_path)
    for family in FAMILIES:
        base, calendar = with_groups(req, (), family), with_groups(req, ("calendar",), family)
        assert base.families == calendar.families == [family]
        assert not base.leaky and not base.baselines
        assert config_hash(describe(family, base)) != config_hash(describe(family, calendar))
    assert config_hash(describe("hybrid", with_groups(req, (), "hybrid"))) != config_hash(
        describe("gbm", with_groups(req, (), "gbm"))
    )


@pytest.mark.parametrize(
    ("family", "why"),
    [
        ("lstm", "unknown family 'lstm': choose one of hybrid, gbm, ensemble"),
        ("gbm,hybrid", "--family 'gbm,hybrid': ablate measures one family per run"),
        ("hybrid,lstm", "--family 'hybrid,lstm': ablate measures one family per run"),
    ],
)
def test_an_unknown_family_or_two_are_refused_by_name(
    family: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*ABLATE, "--family", family, "--cached-only", "--cache", str(tmp_path)]) == 2
    assert why in capsys.readouterr().err


def _store_hybrid_variants(data_dir: Path, cache: Path) -> None:
    """Stored hybrid folds for `ABLATE`'s two variants, keyed as research keys them: the base
    always says hold, the +calendar variant knows the label (so it must come out `helps`)."""
    args = parse_args([*ABLATE, "--data-dir", str(data_dir), "--cache", str(cache)])
    args.family, args.no_leaky = "hybrid", True
    req = build_request(args)
    for enabled in ((), ("calendar",)):
        variant = with_groups(req, enabled, "hybrid")
        _, index = prepare_market(str(data_dir), "KRW-BTC", variant.features, variant.grid, set())
        labels = training_labels(index, variant.features)
        for fold in folds_in_range(eligible_folds(index, variant), req.start, req.end):
            hours = index.times[(index.times >= fold.test_start) & (index.times < fold.test_end)]
            y = labels.reindex(hours).fillna(1).to_numpy().astype(np.int64)
            p = one_hot(y if enabled else np.ones(len(y), np.int64))
            frame = pd.DataFrame(p, pd.DatetimeIndex(hours, name="time"),
                                 ["p_sell", "p_hold", "p_buy"])  # fmt: skip
            frame.insert(0, "fold", fold.number)
            req.cache.write(fold_key("hybrid", fold, index, variant), frame, {})


def test_cached_only_reads_and_reports_the_named_family(
    ohlcv_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _store_hybrid_variants(ohlcv_dir, tmp_path)
    argv = [*ABLATE, "--data-dir", str(ohlcv_dir), "--cache", str(tmp_path), "--cached-only"]
    assert main([*argv, "--family", "hybrid", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["family"] == "hybrid" and report["helps"] == ["calendar"]
    assert report["variants"]["+calendar"]["markets"]["KRW-BTC"]["hours"] > 1000
    assert main([*argv, "--family", "hybrid"]) == 0
    assert "variant minus base (hybrid)" in capsys.readouterr().out
    assert main(argv) == 2  # the default family's folds were never stored
    assert "no cached gbm folds" in capsys.readouterr().err
