"""The pooled gbm (`profile.gbm.pool_weight`): the trees fit the other configured markets' hours up
to the market's own last fit hour beside its own, each weighing `pool_weight` (times its recency
weight); early stopping and calibration stay on the market's hours. The research cache keys the
pooled folds by the weight and by the pooled markets' candles, and leaves every other key alone;
`train fit` and research build the same pool."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from features.config import load_features_config
from features.dataset import configured_dataset
from features.exchange import HOUR_NS
from features.sources import ParquetDirSource
from train.config import GbmConfig, load_train_config
from train.gbm import GbmSlices, PooledRows, fit_gbm, fit_weights, raw_scores, recency_weights
from train.gbm_pool import MarketPool, Shared, pool_markets
from train.pipeline import fit_market, load_market, load_pool
from train.plain_gbm import balanced_weights
from train.research_cache import config_hash
from train.research_jobs import MarketIndex, prepare_market
from train.research_keys import describe, eligible_folds, fold_key

START_NS = pd.Timestamp("2024-01-01").value
MARKETS = ["KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL"]


def _hours(n: int) -> np.ndarray:
    return START_NS + np.arange(n, dtype="int64") * HOUR_NS


def test_pooled_rows_teach_a_rule_the_markets_own_hours_are_too_few_to_show() -> None:
    """The market's 300 own hours are noise; 6,000 pooled hours map x > 0.5 to BUY, else SELL.
    Pooled, the trees call the rule on new rows; alone, they cannot."""
    rng = np.random.default_rng(3)
    own_x = rng.uniform(size=(300, 1))
    own_y = rng.integers(0, 3, 300)
    pool_x = rng.uniform(size=(6000, 1))
    pool_y = np.where(pool_x[:, 0] > 0.5, 2, 0)
    pooled = PooledRows(pool_x, pool_y, _hours(6000))
    probe = (own_x[:100], own_y[:100])
    config = GbmConfig(num_rounds=40, min_data_in_leaf=20, early_stopping_rounds=None)
    test = rng.uniform(size=(400, 1))
    truth = np.where(test[:, 0] > 0.5, 2, 0)

    def accuracy(weight: float, rows: PooledRows | None) -> float:
        slices = GbmSlices((own_x, own_y), probe, probe, _hours(300), _hours(100), rows)
        booster, _ = fit_gbm(config.model_copy(update={"pool_weight": weight}), slices)
        return float((raw_scores(booster, test).argmax(axis=1) == truth).mean())

    assert accuracy(1.0, pooled) > 0.95
    assert accuracy(0.0, pooled) < 0.7  # the weight at 0 turns the pool off
    assert accuracy(1.0, None) < 0.7


def test_pooled_rows_weigh_the_pool_weight_times_their_recency_with_classes_balanced() -> None:
    y = np.array([0, 1, 2, 2, 0, 1, 2, 0])
    times = _hours(8)
    market = np.array([1.0, 1.0, 1.0, 1.0, 0.3, 0.3, 0.3, 0.3])
    config = GbmConfig(balanced=False, halflife_hours=24)
    weights = fit_weights(config, y, times, market)
    assert weights == pytest.approx(recency_weights(times, 24) * market)
    balanced = fit_weights(config.model_copy(update={"balanced": True}), y, times, market)
    assert balanced == pytest.approx(balanced_weights(y, recency_weights(times, 24) * market))
    assert fit_weights(GbmConfig(balanced=False), y, times, market) == pytest.approx(market)
    with pytest.raises(ValidationError, match="pool_weight"):
        GbmConfig(pool_weight=1.5)


def test_pool_balance_market_balances_each_markets_classes_on_their_own() -> None:
    """A calm market (mostly HOLD) pooled with a volatile one (few HOLDs): balanced over all
    rows, the calm market's HOLDs carry more than a third of its weight; balanced per market,
    each market's classes carry a third of that market's weight, and each market keeps its
    total."""
    y = np.array([1, 1, 1, 1, 1, 1, 0, 2, 0, 0, 2, 2, 1, 0, 2, 2])
    member = np.array([0] * 8 + [1] * 8)
    market = np.where(member == 0, 1.0, 0.5)
    times = _hours(len(y))
    config = GbmConfig(pool_weight=0.5, halflife_hours=24)
    base = recency_weights(times, 24) * market
    over_all = fit_weights(config, y, times, market, member)
    assert over_all == pytest.approx(balanced_weights(y, base))
    per_market = fit_weights(config.model_copy(update={"pool_balance": "market"}),
                             y, times, market, member)  # fmt: skip
    calm = member == 0
    for rows in (calm, ~calm):
        total = per_market[rows].sum()
        assert total == pytest.approx(base[rows].sum())
        shares = np.bincount(y[rows], weights=per_market[rows], minlength=3) / total
        assert shares == pytest.approx([1 / 3] * 3)
    calm_hold = over_all[calm & (y == 1)].sum() / over_all[calm].sum()
    assert calm_hold > 0.45  # over all rows, the calm market's HOLDs weigh more than a third
    with pytest.raises(ValidationError, match="pool_balance"):
        GbmConfig(pool_balance="coin")


def test_shared_members_are_built_once_per_market_whatever_thread_asks() -> None:
    calls: list[str] = []

    def build(market: str) -> str:
        calls.append(market)
        time.sleep(0.01)  # long enough for the threads to ask at once
        return market.lower()

    shared = Shared(build)
    asked = ["KRW-BTC", "KRW-ETH", "KRW-BTC", "KRW-XRP", "KRW-ETH", "KRW-BTC"] * 4
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(shared.get, asked))
    assert got == [m.lower() for m in asked]
    assert sorted(calls) == ["KRW-BTC", "KRW-ETH", "KRW-XRP"]


def test_pooled_rows_of_another_width_are_refused_by_name() -> None:
    x, y = np.zeros((50, 2)), np.arange(50) % 3
    slices = GbmSlices((x, y), (x, y), (x, y), _hours(50), _hours(50),
                       PooledRows(np.zeros((10, 3)), np.arange(10) % 3, _hours(10)))  # fmt: skip
    with pytest.raises(ValueError, match="pooled rows have 3 inputs where the market's have 2"):
        fit_gbm(GbmConfig(pool_weight=0.5, num_rounds=2), slices)
    with pytest.raises(ValueError, match="differ in length"):
        PooledRows(np.zeros((10, 3)), np.zeros(9), _hours(10))


def test_the_pool_is_every_other_configured_market_up_to_the_last_fit_hour(real_candles) -> None:
    assert pool_markets("KRW-ETH", MARKETS, GbmConfig(), MARKETS) == ()
    on = GbmConfig(pool_weight=0.5)
    assert pool_markets("KRW-ETH", MARKETS, on, MARKETS) == ("KRW-BTC", "KRW-XRP", "KRW-SOL")
    held = ["KRW-ETH", "KRW-SOL", "KRW-DOGE"]  # a folder with some markets' files pools those
    assert pool_markets("KRW-ETH", MARKETS, on, held) == ("KRW-SOL",)
    features = load_features_config()
    datasets = [
        configured_dataset(real_candles[m].iloc[-3000:], m, features, None)
        for m in ("KRW-XRP", "KRW-SOL")
    ]
    pool = MarketPool.of(datasets)
    assert pool.markets == ("KRW-XRP", "KRW-SOL")
    until = int(datasets[0].sample_times[1000].value)
    rows = pool.source(0.004)(until)
    assert rows is not None and rows.times.max() <= until
    counts = [int((d.sample_times.asi8 <= until).sum()) for d in datasets]
    assert len(rows.y) == sum(counts) and rows.x.shape[0] == len(rows.y)
    xrp = datasets[0]
    expected = xrp.labels(0.004, xrp.samples[: counts[0]])
    np.testing.assert_array_equal(rows.y[: counts[0]], expected)  # the fit's threshold
    assert rows.member is not None  # each pooled row's market, numbered from 1
    np.testing.assert_array_equal(np.bincount(rows.member, minlength=3), [0, *counts])
    assert pool.rows(int(datasets[0].sample_times[0].value) - HOUR_NS, 0.004) is None
    recent = pool.rows(until, 0.004, window_hours=500)  # a rolling window, as the market's own
    assert recent is not None and recent.times.min() > until - 500 * HOUR_NS
    assert 0 < len(recent.y) < len(rows.y)


def test_pooled_folds_are_keyed_by_the_weight_and_the_pooled_markets_inputs(
    smoke_gbm_request, ohlcv_dir: Path
) -> None:
    off, on = (
        smoke_gbm_request("KRW-ETH", pool_weight=0.0),
        smoke_gbm_request("KRW-ETH", pool_weight=0.5),
    )
    assert "pool_weight" not in describe("gbm", off)["gbm"]  # unpooled keys stay as they were
    assert "pool_balance" not in describe("gbm", on)["gbm"]  # so do pooled ones balanced as before
    per_market = smoke_gbm_request("KRW-ETH", pool_weight=0.5, pool_balance="market")
    assert config_hash(describe("gbm", per_market)) != config_hash(describe("gbm", on))
    assert describe("gbm~leaky", per_market) == describe("gbm~leaky", off)
    assert describe("gbm~leaky", on) == describe("gbm~leaky", off)  # the leaky folds pool nothing
    assert config_hash(describe("gbm", on)) != config_hash(describe("gbm", off))
    grid, features = on.grid, on.features
    pooled = ("KRW-BTC", "KRW-SOL")
    material, index = prepare_market(str(ohlcv_dir), "KRW-ETH", features, grid, {"gbm"}, pooled)
    assert material.pool is not None and material.pool.markets == pooled
    alone, alone_index = prepare_market(str(ohlcv_dir), "KRW-ETH", features, grid, {"gbm"})
    assert alone.pool is None and alone_index.pool_fingerprints is None
    assert index.fingerprints == alone_index.fingerprints  # the market's own inputs
    assert index.pool_fingerprints is not None
    assert set(index.pool_fingerprints) == set(index.fingerprints)
    assert not set(index.pool_fingerprints.values()) & set(index.fingerprints.values())
    fold = eligible_folds(index, on)[-1]
    gbm, plain = fold_key("gbm", fold, index, on), fold_key("plain-12m", fold, index, on)
    gbm_alone = fold_key("gbm", fold, alone_index, on)
    assert gbm.fingerprint != gbm_alone.fingerprint
    assert plain.fingerprint == fold_key("plain-12m", fold, alone_index, on).fingerprint
    bare = MarketIndex("KRW-ETH", index.times, index.close, index.samples, index.fingerprints)
    assert (
        fold_key("gbm", fold, bare, on).fingerprint
        == fold_key("gbm", fold, alone_index, on).fingerprint
    )


def test_train_fit_pools_the_other_markets_and_its_calls_move(ohlcv_dir: Path) -> None:
    """`train fit`'s gbm with the pool (load_pool over the same source) against without it, on
    the smoke profile's real hours: the pool is the other configured markets, and the fold's
    out-of-sample probabilities differ."""
    features = load_features_config()
    train_cfg = load_train_config()
    profile = train_cfg.profile("smoke")
    source = ParquetDirSource(str(ohlcv_dir))
    assert load_pool(source, "KRW-ETH", features, profile) is None  # off by default
    pooled_profile = profile.model_copy(
        update={"gbm": profile.gbm.model_copy(update={"pool_weight": 1.0})}
    )
    pool = load_pool(source, "KRW-ETH", features, pooled_profile)
    assert pool is not None
    assert pool.markets == tuple(m for m in features.markets if m != "KRW-ETH")
    data = load_market(source, "KRW-ETH", features, pooled_profile)
    quiet = lambda line: None  # noqa: E731
    alone = fit_market(data, features, pooled_profile, progress=quiet, family="gbm")
    pooled = fit_market(data, features, pooled_profile, progress=quiet, family="gbm", pool=pool)
    proba = ["p_sell", "p_hold", "p_buy"]
    assert alone.oos.index.equals(pooled.oos.index)
    assert not np.allclose(alone.oos[proba].to_numpy(), pooled.oos[proba].to_numpy())
    assert pooled.model.metadata["pooled_markets"] == list(pool.markets)  # the bundle says so
    assert "pooled_markets" not in alone.model.metadata


def test_local_pooled_fit_builds_each_markets_dataset_once(
    ohlcv_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train fit --local` of two markets whose gbm pools the other configured ones: each of the
    four markets' datasets is built once (a fitted market's own dataset is its pool member's),
    where building the fitted markets again for their own fits made six."""
    import train.fit_cli
    import train.pipeline
    from train.__main__ import main

    built: list[str] = []
    real = train.pipeline.load_market

    def counted(source, market, features, profile):  # type: ignore[no-untyped-def]
        built.append(market)
        return real(source, market, features, profile)

    monkeypatch.setattr(train.pipeline, "load_market", counted)
    monkeypatch.setattr(train.fit_cli, "load_market", counted)
    args = ["fit", "--local", "--markets", "KRW-ETH,KRW-SOL", "--data-dir", str(ohlcv_dir),
            "--registry", str(tmp_path / "registry"), "--profile", "smoke", "--family", "gbm",
            "--set", "profiles.smoke.gbm.pool_weight=1.0"]  # fmt: skip
    assert main(args) == 0
    assert sorted(built) == sorted(load_features_config().markets)


def test_a_pooling_fit_without_the_runs_pool_members_is_refused(tmp_path: Path) -> None:
    """Both `train fit` paths set the run's members; one that did not would fit every market
    unpooled without a word, so `own_member` refuses it by name."""
    from dataclasses import replace

    from train.fit_cli import FitContext, own_member
    from train.registry import ModelRegistry

    train_cfg = load_train_config(overrides=["profiles.smoke.gbm.pool_weight=1.0"])
    pooled = train_cfg.profile("smoke")
    ctx = FitContext(
        markets=["KRW-BTC"], families=["gbm"], features=load_features_config(), profile=pooled,
        profile_name="smoke", gate=train_cfg.gate, tune=train_cfg.tune,
        source=ParquetDirSource(str(tmp_path)), registry=ModelRegistry(str(tmp_path / "reg")),
    )  # fmt: skip
    with pytest.raises(RuntimeError, match=r"KRW-BTC's gbm pools .* no pool members"):
        own_member(ctx, "KRW-BTC", pooled)
    members = replace(ctx, members=Shared(lambda market: f"{market}'s member"))
    assert own_member(members, "KRW-BTC", pooled) == "KRW-BTC's member"
    unpooled = load_train_config().profile("smoke")
    assert own_member(ctx, "KRW-BTC", unpooled) is None  # no pool, nothing to refuse
    assert own_member(replace(ctx, families=["hybrid"]), "KRW-BTC", pooled) is None
