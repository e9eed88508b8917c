"""Feature groups: hash, config, premium alignment (UTC Binance vs KST Upbit), missing hours,
calendar, multi-horizon values, cross-market context refusal, and the Binance source against a
stand-in speaking Binance's wire format. Batch/serving parity and causality of the group columns
are in test_serving_parity.py and test_dataset.py, beside the base columns' own."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.binance import (
    BinanceError,
    BinanceHttpSource,
    BinanceParquetSource,
    BinanceUnknownSymbol,
)
from features.candles import CANDLE_COLUMNS
from features.config import ConfigError, load_features_config
from features.context import folder_context, serving_context
from features.dataset import build_dataset
from features.exchange import HOUR
from features.groups import (
    BASE_SET,
    GROUP_COLUMNS,
    GROUP_ORDER,
    FeatureSet,
    MarketContext,
    MissingContextError,
)
from features.indicators import CANDLES_FOR_SERVING, FEATURE_HASH, FEATURE_NAMES
from features.serving import serving_features
from features.sources import ParquetDirSource

from standins.binance_server import BinanceStandIn

KST_MINUS_UTC = pd.Timedelta(hours=9)
RECENT = 3000


def _recent(ohlcv_dir: Path, market: str, hours: int = RECENT) -> pd.DataFrame:
    return ParquetDirSource(str(ohlcv_dir)).history(market).iloc[-hours:]


def test_hash_changes_with_every_choice_of_groups() -> None:
    sets = [
        FeatureSet(tuple(chosen))
        for k in range(len(GROUP_ORDER) + 1)
        for chosen in itertools.combinations(GROUP_ORDER, k)
    ]
    hashes = {s.hash for s in sets}
    assert len(hashes) == len(sets) == 16
    assert BASE_SET.hash == FEATURE_HASH and BASE_SET.names == FEATURE_NAMES
    other = FeatureSet(("cross_market",), ("KRW-BTC", "KRW-ETH"))
    assert other.hash != FeatureSet(("cross_market",)).hash
    assert FeatureSet(("premium", "calendar")).names[46:] == (
        *GROUP_COLUMNS["calendar"],
        *GROUP_COLUMNS["premium"],
    )


def test_config_switches_groups_and_names_a_bad_field() -> None:
    config = load_features_config(overrides=["groups.calendar=true", "groups.premium=false"])
    assert "calendar" in config.feature_set().groups
    assert config.feature_set().hash != FEATURE_HASH
    with pytest.raises(ConfigError, match="groups.calendr"):
        load_features_config(overrides=["groups.calendr=true"])
    with pytest.raises(ConfigError, match="context_markets must hold KRW-BTC"):
        load_features_config(
            overrides=["groups.cross_market=true", "groups.context_markets=[KRW-ETH, KRW-XRP]"]
        )
    with pytest.raises(ValueError, match="unknown feature group"):
        FeatureSet(("moon_phase",))


def test_premium_matches_binance_utc_to_upbit_kst_by_instant(ohlcv_dir: Path) -> None:
    upbit = _recent(ohlcv_dir, "KRW-BTC")
    binance = BinanceParquetSource(str(ohlcv_dir)).history("BTCUSDT")
    premium = FeatureSet(("premium",))
    data = build_dataset(upbit, "KRW-BTC", 6, 6, feature_set=premium,
                         context=MarketContext({}, binance))  # fmt: skip
    frame = data.frame()
    hours = upbit.index[-500:]
    expected = np.log(upbit.loc[hours, "close"].to_numpy()
                      / binance.loc[hours - KST_MINUS_UTC, "close"].to_numpy())  # fmt: skip
    np.testing.assert_allclose(frame.loc[hours, "premium_log"], expected, rtol=1e-12)
    # Read as if Binance were KST (9 hours off), the ratio would carry 9 hours of price moves: its
    # hourly changes would be over twice as large as those of the same instant's two prices.
    wrong = MarketContext({}, binance.set_axis(binance.index + KST_MINUS_UTC))
    off = build_dataset(upbit, "KRW-BTC", 6, 6, feature_set=premium, context=wrong).frame()
    right = frame["premium_log"].loc[hours].diff().abs().median()
    assert off["premium_log"].loc[hours].diff().abs().median() > 2 * right


def test_missing_binance_hour_is_nan_and_never_carried(ohlcv_dir: Path) -> None:
    upbit = _recent(ohlcv_dir, "KRW-ETH")
    binance = BinanceParquetSource(str(ohlcv_dir)).history("ETHUSDT")
    hole = upbit.index[-100]
    holed = binance.drop([hole - KST_MINUS_UTC])
    premium = FeatureSet(("premium",))
    full, cut = (
        build_dataset(upbit, "KRW-ETH", 6, 6, feature_set=premium, context=MarketContext({}, b))
        for b in (binance, holed)
    )
    a, b = full.frame(), cut.frame()
    assert np.isnan(b.loc[hole, "premium_log"]) and np.isnan(b.loc[hole, "premium_dev_168h"])
    assert np.isfinite(a.loc[hole, "premium_log"])
    assert b.loc[hole + HOUR, "premium_log"] == a.loc[hole + HOUR, "premium_log"]
    assert b.loc[hole - HOUR, "premium_log"] == a.loc[hole - HOUR, "premium_log"]
    # The hour is still a sample: a missing Binance hour is data (NaN for LightGBM), not a gap.
    assert hole in cut.sample_times and hole in full.sample_times


def test_calendar_is_the_kst_wall_clock(ohlcv_dir: Path) -> None:
    upbit = _recent(ohlcv_dir, "KRW-BTC")
    frame = build_dataset(upbit, "KRW-BTC", 6, 6, feature_set=FeatureSet(("calendar",))).frame()
    hour = pd.Timestamp("2025-09-29 09:00")  # a Monday, 09:00 KST (00:00 UTC)
    assert frame.loc[hour, "hour_kst"] == 9.0 and frame.loc[hour, "weekday_kst"] == 0.0
    assert frame.loc[hour - 10 * HOUR, "weekday_kst"] == 6.0  # Sunday 23:00 KST


def test_multi_horizon_columns_by_their_definitions(ohlcv_dir: Path) -> None:
    upbit = _recent(ohlcv_dir, "KRW-XRP")
    data = build_dataset(upbit, "KRW-XRP", 6, 6, feature_set=FeatureSet(("multi_horizon",)))
    frame = data.frame().iloc[-500:]
    close = pd.Series(data.close, index=data.times)
    log_c = np.log(close)
    np.testing.assert_allclose(frame["log_return_72h"], (log_c - log_c.shift(72)).loc[frame.index])
    vol = log_c.diff().rolling(168).std().loc[frame.index]
    np.testing.assert_allclose(frame["realized_vol_168h"], vol, rtol=1e-9)
    high = np.log(upbit["high"].reindex(data.times).ffill()).rolling(720).max()  # gaps flat
    np.testing.assert_allclose(frame["dist_high_30d"], (log_c - high).loc[frame.index], atol=1e-12)
    assert (frame["dist_high_7d"] <= 0).all() and (frame["dist_low_30d"] >= 0).all()
    assert abs(frame["volume_z_168h"].mean()) < 1.0


def test_cross_market_refuses_missing_or_stale_context(ohlcv_dir: Path) -> None:
    cross = FeatureSet(("cross_market",))
    eth = _recent(ohlcv_dir, "KRW-ETH", CANDLES_FOR_SERVING)
    context = folder_context(cross, "KRW-ETH", str(ohlcv_dir))
    assert context is not None
    partial = MarketContext({m: f for m, f in context.upbit.items() if m != "KRW-SOL"})
    with pytest.raises(MissingContextError, match="KRW-SOL"):
        serving_features(eth, feature_set=cross, context=partial, market="KRW-ETH")
    stale = dict(context.upbit)
    stale["KRW-BTC"] = stale["KRW-BTC"].loc[: eth.index[-1] - 7 * HOUR]  # beyond max_gap_hours
    with pytest.raises(MissingContextError, match="KRW-BTC"):
        serving_features(eth, feature_set=cross, context=MarketContext(stale), market="KRW-ETH")
    served = serving_features(eth, feature_set=cross, context=context, market="KRW-ETH")
    assert np.isfinite(served.to_numpy()).all()
    with pytest.raises(MissingContextError, match="Binance"):
        serving_context(FeatureSet(("premium",)), "KRW-ETH", ParquetDirSource(str(ohlcv_dir)),
                        None, 10)  # fmt: skip


def test_binance_source_reads_the_standin_like_the_files(ohlcv_dir: Path) -> None:
    files = BinanceParquetSource(str(ohlcv_dir))
    truth = files.history("SOLUSDT").loc[:"2025-06-01 12:00"]
    now = pd.Timestamp("2025-06-01 12:30")  # 12:00 UTC is still forming
    with BinanceStandIn({"SOLUSDT": truth}, now) as standin:
        source = BinanceHttpSource(standin.url, timeout=5)
        got = source.latest("SOLUSDT", 1500, now=now.tz_localize("UTC"))
        assert len(standin.requests) == 2  # paged by endTime: 1000 + the rest
        assert got.index[-1] == pd.Timestamp("2025-06-01 11:00")  # the forming hour is dropped
        expected = truth.loc[: got.index[-1]].tail(1500)
        assert got.index.equals(expected.index) and list(got.columns) == list(CANDLE_COLUMNS)
        np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-8, atol=1e-8)
        with pytest.raises(BinanceUnknownSymbol, match="Invalid symbol"):
            source.latest("DOGEUSDT", 10, now=now.tz_localize("UTC"))
        standin.fail_next = 429
        with pytest.raises(BinanceError, match="429"):
            source.latest("SOLUSDT", 10, now=now.tz_localize("UTC"))
        kst_now = (now + KST_MINUS_UTC).to_pydatetime()  # the serving clock is naive KST
        upbit = ParquetDirSource(str(ohlcv_dir))
        premium = FeatureSet(("premium",))
        context = serving_context(premium, "KRW-SOL", upbit, source, 48, now=kst_now)
        assert context is not None and context.binance is not None
        assert context.binance.index[-1] == pd.Timestamp("2025-06-01 11:00")
