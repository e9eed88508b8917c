"""`python -m train research` on real candles: cached folds, range-independent predictions,
folds running concurrently on Ray, and the report a user reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.config import load_features_config
from train.__main__ import main
from train.config import load_train_config
from train.research_cache import FoldKey, PredictionCache, candle_fingerprints, config_hash
from train.research_run import ResearchRequest, run_research
from train.research_stats import (
    block_starts,
    bootstrap_metrics,
    deflated_sharpe,
    expected_max_sharpe,
    point_metrics,
)

MARKET = "KRW-SOL"
SMALL = ["research.fold_hours=240", "research.leaky_parts=2"]


def _request(
    ohlcv_dir: Path, cache: Path, start: str, end: str, markets=(MARKET,), sets=()
) -> ResearchRequest:
    train_cfg = load_train_config(overrides=[*SMALL, *sets])
    return ResearchRequest(
        markets=list(markets),
        families=["gbm"],
        data_dir=str(ohlcv_dir),
        profile=train_cfg.profile("smoke"),
        profile_name="smoke",
        features=load_features_config(),
        research=train_cfg.research,
        cache=PredictionCache(cache),
        start=pd.Timestamp(start),
        end=pd.Timestamp(end),
        leaky=False,
    )


def test_fingerprint_covers_the_candles_before_a_bound_only(real_candles) -> None:
    sol = real_candles[MARKET]
    bound = [pd.Timestamp("2025-06-01")]
    base = candle_fingerprints(sol, bound)
    later = sol.copy()
    later.loc[later.index >= "2025-07-01", "close"] *= 1.01
    assert candle_fingerprints(later, bound) == base  # a fold never read July
    earlier = sol.copy()
    earlier.loc[earlier.index[100], "close"] *= 1.01
    assert candle_fingerprints(earlier, bound) != base


def test_cache_round_trip_and_keys(tmp_path: Path) -> None:
    cache = PredictionCache(tmp_path)
    frame = pd.DataFrame(
        {"fold": 3, "p_sell": [0.2, 0.3], "p_hold": [0.5, 0.4], "p_buy": [0.3, 0.3]},
        index=pd.DatetimeIndex(["2025-01-01 00:00", "2025-01-01 01:00"], name="time"),
    )
    key = FoldKey(MARKET, "gbm", config_hash({"a": 1}), 3, pd.Timestamp("2025-01-01"),
                  pd.Timestamp("2025-01-31"), "abc")  # fmt: skip
    assert cache.read(key) is None
    cache.write(key, frame, {"seconds": 1.5})
    back, info = cache.read(key)
    pd.testing.assert_frame_equal(back, frame, check_freq=False)
    assert info == {"seconds": 1.5}
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert cache.configs(MARKET) == [("gbm", config_hash({"a": 1}))]
    other = FoldKey(**{**key.__dict__, "fingerprint": "abd"})
    assert not cache.has(other)
    with pytest.raises(ValueError, match="index 'time'"):
        cache.write(key, frame.reset_index(), {})


def test_bootstrap_intervals_and_deflated_sharpe() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2000)
    good = np.full((2000, 3), 0.1)
    good[np.arange(2000), y] = 0.8
    noise = rng.dirichlet([1, 1, 1], 2000)
    starts, block = block_starts(2000, 168, 300, 0)
    for proba, low in ((good, 0.99), (noise, 0.28)):
        point = point_metrics(y, proba)
        boot = bootstrap_metrics(y, proba, starts, block)
        assert point["balanced_accuracy"] >= low
        assert np.percentile(boot["balanced_accuracy"], 2.5) <= point["balanced_accuracy"]
        assert point["balanced_accuracy"] <= np.percentile(boot["balanced_accuracy"], 97.5)
    assert point_metrics(y, good)["brier"] == pytest.approx(0.01 + 0.01 + 0.04)
    skilled = rng.normal(0.001, 0.01, 5000)
    assert expected_max_sharpe(1, 5000) == 0.0 < expected_max_sharpe(10, 5000)
    one, many = deflated_sharpe(skilled, 1)["dsr"], deflated_sharpe(skilled, 100)["dsr"]
    assert one > many  # more configurations tried: less evidence of skill
    assert deflated_sharpe(rng.normal(0, 0.01, 5000), 100)["dsr"] < 0.5


def test_second_run_recomputes_nothing_and_folds_ignore_the_range(
    ohlcv_dir: Path, tmp_path: Path
) -> None:
    quiet = lambda line: None  # noqa: E731
    first = _request(ohlcv_dir, tmp_path / "a", "2025-08-05", "2025-08-25")
    markets, _ = run_research(first, quiet, local=True)
    records = markets[MARKET].records
    assert records and not any(r["cached"] for r in records)
    again, _ = run_research(first, quiet, local=True)
    assert all(r["cached"] for r in again[MARKET].records)
    # The novelty gate: every test hour of the folds scored against its fold's training rows,
    # the same on a second run (nothing about it is cached).
    novelty = markets[MARKET].novelty
    tested = markets[MARKET].predictions["gbm"].index
    assert novelty is not None and novelty.index.equals(tested)
    assert (novelty["dissimilarity"] > 0).all() and novelty["novel"].dtype == bool
    pd.testing.assert_frame_equal(novelty, again[MARKET].novelty)
    assert len(again[MARKET].records) == len(records)
    # Another range, computed from nothing into another cache: the folds both ranges hold
    # have the very same predictions.
    other = _request(ohlcv_dir, tmp_path / "b", "2025-08-20", "2025-09-05")
    wider, _ = run_research(other, quiet, local=True)
    shared = {f.number for f in markets[MARKET].folds} & {f.number for f in wider[MARKET].folds}
    assert shared
    for family in ("gbm", "plain-12m", "plain-all"):
        a, b = markets[MARKET].predictions[family], wider[MARKET].predictions[family]
        a, b = a[a["fold"].isin(shared)], b[b["fold"].isin(shared)]
        assert len(a) > 0
        pd.testing.assert_frame_equal(a, b)


def test_a_pooled_run_builds_each_markets_inputs_once_and_matches_each_market_alone(
    ohlcv_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two markets whose gbm pools the other configured ones: four markets' inputs built, one
    build each (eight before: every market built its pool's again), and each market's
    predictions the same as from a run of that market alone."""
    import train.research_run as research_run

    built: list[str] = []
    real = research_run.market_inputs

    def counted(data_dir: str, market: str, *args):
        built.append(market)
        return real(data_dir, market, *args)

    monkeypatch.setattr(research_run, "market_inputs", counted)
    quiet = lambda line: None  # noqa: E731
    pooled = ["profiles.smoke.gbm.pool_weight=1.0"]
    both = _request(ohlcv_dir, tmp_path / "both", "2025-08-05", "2025-08-25",
                    ("KRW-SOL", "KRW-ETH"), pooled)  # fmt: skip
    together, _ = run_research(both, quiet, local=True)
    assert sorted(built) == ["KRW-BTC", "KRW-ETH", "KRW-SOL", "KRW-XRP"]
    alone = _request(ohlcv_dir, tmp_path / "alone", "2025-08-05", "2025-08-25",
                     ("KRW-SOL",), pooled)  # fmt: skip
    sol, _ = run_research(alone, quiet, local=True)
    pd.testing.assert_frame_equal(
        together["KRW-SOL"].predictions["gbm"], sol["KRW-SOL"].predictions["gbm"]
    )


@pytest.mark.slow
def test_folds_run_concurrently_on_ray_and_the_report_says_it_all(
    ray_local, ohlcv_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    args = [
        "research", "--markets", "KRW-ETH,KRW-SOL", "--data-dir", str(ohlcv_dir),
        "--family", "gbm", "--profile", "smoke", "--start", "2025-08-01", "--end", "2025-09-30",
        "--cache", str(tmp_path / "cache"), "--out", str(out), "--json",
        *[a for s in [*SMALL, "research.cpus_per_fold=0.25"] for a in ("--set", s)],
        # The smoke gbm seldom clears the default margin: the argmax trades, so the report's
        # trading block and its deflated Sharpe have trades to measure.
        "--trading-set", "policy.margin=null",
    ]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    runs = [r for r in report["folds_run"] if not r["cached"]]
    assert len(runs) >= 8
    overlapping = [
        (a, b)
        for a in runs
        for b in runs
        if a is not b and a["started"] < b["ended"] and b["started"] < a["ended"]
    ]
    assert overlapping, "no two folds ran at the same time"
    assert len({r["pid"] for r in runs}) >= 2
    for market in ("KRW-ETH", "KRW-SOL"):
        block = report["markets"][market]
        assert set(block["models"]) >= {"gbm", "gbm~leaky", "plain-12m", "plain-all",
                                        "majority", "persistence"}  # fmt: skip
        gbm = block["models"]["gbm"]
        for metric in ("balanced_accuracy", "log_loss", "brier", "macro_f1"):
            low, high = gbm["intervals"][metric]
            assert low <= gbm["metrics"][metric] <= high
        assert {"total_return", "sharpe", "max_drawdown", "trades", "exposure"} <= set(
            gbm["trading"]
        )
        assert 0.0 <= gbm["dsr"]["dsr"] <= 1.0 and block["configs_tried"] >= 1
        assert len(gbm["per_fold"]) == len(block["folds"]) >= 6
        # Paired against both plain variants and persistence, each on the same hours.
        assert set(gbm["versus"]) == {"plain-12m", "plain-all", "persistence"}
        for other, vs in gbm["versus"].items():
            own = gbm["metrics"]["balanced_accuracy"]
            theirs = block["models"][other]["metrics"]["balanced_accuracy"]
            assert vs["balanced_accuracy"] == pytest.approx(own - theirs)
            assert vs["interval"][0] <= vs["interval"][1]
        assert block["models"]["majority"]["metrics"]["balanced_accuracy"] == pytest.approx(1 / 3)
        novelty = block["novelty"]
        assert 0.0 <= novelty["share_novel"] <= 1.0 and novelty["hours"] == block["hours"]
        assert {"gbm", "plain-12m"} == set(novelty["models"])
    assert (out / "research.png").stat().st_size > 10_000
    assert "per-fold balanced accuracy" in (out / "report.txt").read_text()
    assert "dBA vs plain-all" in (out / "report.txt").read_text()
    assert "novel hours:" in (out / "report.txt").read_text()
