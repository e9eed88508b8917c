"""The research cache's fold keys cover every series a fold's features read before its bound:
the market's candles, and the other markets' candles (cross_market) and the coin's Binance
candles (premium) only while the group that reads them is on."""

from __future__ import annotations

from dataclasses import replace as dataclasses_replace
from pathlib import Path

import pandas as pd
import pytest

from features.binance import BinanceParquetSource, binance_file_name
from features.config import FeaturesConfig, load_features_config
from features.groups import KST_OFFSET_NS, MarketContext, binance_symbol
from train.config import load_train_config
from train.research_cache import FoldKey, PredictionCache, candle_fingerprints, input_fingerprints
from train.research_jobs import prepare_market
from train.research_keys import eligible_folds, fold_key
from train.research_run import ResearchRequest

MARKET = "KRW-SOL"
CONTEXT = "KRW-BTC"
BOUND = pd.Timestamp("2025-06-01")  # KST
HOUR = pd.Timedelta(hours=1)
CHANGED = pd.Timestamp("2025-03-01 12:00")  # KST hour whose inputs the folder tests change


def _scaled(frame: pd.DataFrame, when: pd.Timestamp, factor: float = 1.01) -> pd.DataFrame:
    out = frame.copy()
    assert when in out.index, f"no candle at {when}"
    out.loc[when, ["open", "high", "low", "close"]] *= factor
    return out


def test_input_fingerprints_read_context_up_to_the_bound_on_the_kst_clock(
    real_candles, ohlcv_dir: Path
) -> None:
    own = real_candles[MARKET]
    binance = BinanceParquetSource(ohlcv_dir).history(binance_symbol(MARKET))
    upbit = {m: real_candles[m] for m in ("KRW-BTC", "KRW-ETH")}
    bounds = [BOUND]
    # No context (no group reads any): the market's own fingerprints, as before groups existed.
    assert input_fingerprints(own, None, bounds) == candle_fingerprints(own, bounds)
    base = input_fingerprints(own, MarketContext(upbit, binance), bounds)
    assert base != candle_fingerprints(own, bounds)

    def with_context(market: str, when: pd.Timestamp) -> dict[str, str]:
        changed = {**upbit, market: _scaled(upbit[market], when)}
        return input_fingerprints(own, MarketContext(changed, binance), bounds)

    assert with_context(CONTEXT, BOUND - HOUR) != base  # the fold read that hour
    assert with_context(CONTEXT, BOUND) == base  # it never read the bound's own hour or later
    assert with_context("KRW-ETH", BOUND - 24 * HOUR) != base

    # Binance times are UTC: the candle at UTC bound - 9 h is the KST hour of the bound itself.
    utc_bound = BOUND - pd.Timedelta(KST_OFFSET_NS, unit="ns")

    def with_binance(when: pd.Timestamp) -> dict[str, str]:
        return input_fingerprints(own, MarketContext(upbit, _scaled(binance, when)), bounds)

    assert with_binance(utc_bound - HOUR) != base
    assert with_binance(utc_bound) == base
    assert with_binance(BOUND - HOUR) == base  # naive KST reading of a UTC file would hit here


def _folder(ohlcv_dir: Path, target: Path, changed: dict[str, pd.DataFrame]) -> Path:
    """A data folder of the real files with some of them replaced by changed copies."""
    target.mkdir()
    for path in ohlcv_dir.glob("*.parquet"):
        if path.name not in changed:
            (target / path.name).symlink_to(path.resolve())
    for name, frame in changed.items():
        frame.to_parquet(target / name)
    return target


def _keys(data_dir: Path, features: FeaturesConfig, tmp_path: Path) -> dict[int, FoldKey]:
    """The gbm family's cache key of every fold of MARKET, by fold number."""
    train_cfg = load_train_config()
    req = ResearchRequest(
        markets=[MARKET],
        families=["gbm"],
        data_dir=str(data_dir),
        profile=train_cfg.profile("smoke"),
        profile_name="smoke",
        features=features,
        research=train_cfg.research,
        cache=PredictionCache(tmp_path / "cache"),
    )
    _, index = prepare_market(str(data_dir), MARKET, features, req.grid, set())
    folds = eligible_folds(index, req)
    assert len(folds) > 4
    return {f.number: fold_key("gbm", f, index, req) for f in folds}


def _with_groups(**groups: bool) -> FeaturesConfig:
    features = load_features_config()
    switches = {g: False for g in ("multi_horizon", "calendar", "cross_market", "premium")}
    return features.model_copy(
        update={"groups": features.groups.model_copy(update=switches | groups)}
    )


def _split(base: dict[int, FoldKey], other: dict[int, FoldKey], horizon: int) -> tuple[set, set]:
    """Folds whose key changed, and folds whose bound (test end + horizon) is at or before
    CHANGED (their key must not change)."""
    assert base.keys() == other.keys()
    changed = {n for n in base if base[n] != other[n]}
    read_it = {n for n, key in base.items() if key.end + horizon * HOUR > CHANGED}
    return changed, read_it


@pytest.mark.parametrize("groups", [{"cross_market": True}, {}])
def test_a_context_market_change_invalidates_the_folds_that_read_it(
    ohlcv_dir: Path, real_candles, tmp_path: Path, groups: dict[str, bool]
) -> None:
    features = _with_groups(**groups)
    base = _keys(ohlcv_dir, features, tmp_path)
    name = f"{CONTEXT}_minute60.parquet"
    folder = _folder(ohlcv_dir, tmp_path / "data", {name: _scaled(real_candles[CONTEXT], CHANGED)})
    horizon = features.labels.horizon_hours
    changed, read_it = _split(base, _keys(folder, features, tmp_path), horizon)
    if groups:  # cross_market reads KRW-BTC: every fold whose bound is after the change recomputes
        assert read_it and read_it != set(base)
        assert changed == read_it
    else:  # nothing reads KRW-BTC for KRW-SOL: every fold stays a cache hit
        assert changed == set()


@pytest.mark.parametrize("groups", [{"premium": True}, {"cross_market": True}, {}])
def test_a_binance_change_invalidates_only_with_premium_on(
    ohlcv_dir: Path, tmp_path: Path, groups: dict[str, bool]
) -> None:
    features = _with_groups(**groups)
    base = _keys(ohlcv_dir, features, tmp_path)
    name = binance_file_name(binance_symbol(MARKET))
    binance = pd.read_parquet(ohlcv_dir / name)
    utc = CHANGED - pd.Timedelta(KST_OFFSET_NS, unit="ns")
    folder = _folder(ohlcv_dir, tmp_path / "data", {name: _scaled(binance, utc)})
    horizon = features.labels.horizon_hours
    changed, read_it = _split(base, _keys(folder, features, tmp_path), horizon)
    assert changed == (read_it if groups.get("premium") else set())
    assert not groups.get("premium") or changed


def test_ablate_cached_reads_only_folds_of_the_data_now_in_the_folder(
    ohlcv_dir: Path, real_candles, tmp_path: Path
) -> None:
    """`ablate --cached-only` reads stored folds by file name: one computed before a context
    market's candles changed stays stored under its old key and must not be read back."""
    from train.ablate import cached_research

    features = _with_groups(cross_market=True)
    base = _keys(ohlcv_dir, features, tmp_path)
    name = f"{CONTEXT}_minute60.parquet"
    folder = _folder(ohlcv_dir, tmp_path / "data", {name: _scaled(real_candles[CONTEXT], CHANGED)})
    cache = PredictionCache(tmp_path / "cache")
    for number, key in base.items():
        hour = pd.DatetimeIndex([key.start], name="time")
        frame = pd.DataFrame({"fold": number, "p_sell": 0.2, "p_hold": 0.5, "p_buy": 0.3}, hour)
        cache.write(key, frame, {})
    _, read_it = _split(base, _keys(folder, features, tmp_path), features.labels.horizon_hours)
    train_cfg = load_train_config()
    req = ResearchRequest([MARKET], ["gbm"], str(folder), train_cfg.profile("smoke"), "smoke",
                          features, train_cfg.research, cache)  # fmt: skip
    back = cached_research(req, "gbm")[MARKET].predictions["gbm"]
    assert set(back["fold"]) == set(base) - read_it
    assert set(cached_research(dataclasses_replace(req, data_dir=str(ohlcv_dir)), "gbm")[MARKET]
               .predictions["gbm"]["fold"]) == set(base)  # fmt: skip
