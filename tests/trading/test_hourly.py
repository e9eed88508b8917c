"""One trading hour without Ray: no_decision paths, both A/B arms, a crash between sending an
order and recording its fill, resumed without a second order at the (stand-in) exchange, and a
longer feature warm-up that the loop's candle window follows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features import indicators
from features.domain import AccountState
from features.sources import ParquetDirSource
from trading.account import ArmAccount, arm_source
from trading.config import load_trading_config
from trading.hourly import HourlyTrader, Labels
from trading.ledger import Ledger
from trading.paper import PaperBroker
from trading.risk import RiskGuard
from trading.serve_client import ServeClient, ServeUnavailable
from trading.upbit_broker import UpbitBroker
from train.bundle import load_bundle

from standins.in_process_serve import InProcessServe
from standins.signals import FixedSignal
from standins.upbit_private import ACCESS_KEY, SECRET_KEY, UpbitPrivateStandIn

MARKET = "KRW-BTC"


def config(ledger: Path):
    return load_trading_config(overrides=[f"loop.markets=[{MARKET}]", f"ledger.path={ledger}"])


def paper_accounts(cfg) -> dict:
    return {
        (arm, MARKET): ArmAccount(
            arm, MARKET, PaperBroker(cfg.paper.initial_krw, cfg.paper.slippage_bps),
            RiskGuard.from_config(cfg.risk), arm_source(arm, cfg),
        )
        for arm in ("llm", "fixed")
    }  # fmt: skip


def trader(cfg, ledger, source, predictor, accounts) -> HourlyTrader:
    return HourlyTrader(cfg, [MARKET], ledger, source, predictor, accounts, Labels(6, 0.005))


@pytest.fixture
def hour(real_candles) -> pd.Timestamp:
    return real_candles[MARKET].index[-1]


def test_both_arms_follow_one_signal_with_their_own_sizes(ohlcv_dir, tmp_path, hour) -> None:
    cfg = config(tmp_path / "l.sqlite")
    with Ledger(tmp_path / "l.sqlite") as ledger:
        run = trader(cfg, ledger, ParquetDirSource(ohlcv_dir), FixedSignal(), paper_accounts(cfg))
        run.run_hour(hour)
        fills = {f.identifier.split("|")[0]: f for f in ledger.fills()}
        by_arm = {arm: ledger.fills(arm=arm) for arm in ("llm", "fixed")}
        assert len(by_arm["llm"]) == len(by_arm["fixed"]) == 1 and fills
        llm, fixed = by_arm["llm"][0].funds, by_arm["fixed"][0].funds
        assert llm / fixed == pytest.approx(0.6 / 0.3, rel=1e-3)
        ratios = ledger.decisions_frame().set_index("arm")["ratio"]
        assert ratios["llm"] == 0.6 and ratios["fixed"] == 0.3
        run.run_hour(hour)  # the same hour again (a restart): nothing new is sent
        assert len(ledger.fills()) == 2


def test_stale_candles_are_a_no_decision(ohlcv_dir, tmp_path, hour) -> None:
    cfg = config(tmp_path / "l.sqlite")
    later = hour + pd.Timedelta(hours=3)  # the data ends 3 hours before this hour
    with Ledger(tmp_path / "l.sqlite") as ledger:
        predictor = FixedSignal()
        trader(cfg, ledger, ParquetDirSource(ohlcv_dir), predictor, paper_accounts(cfg)).run_hour(
            later
        )
        frame = ledger.decisions_frame()
        assert (frame["kind"] == "no_decision").all() and len(frame) == 2
        assert frame["reason"].str.contains("stale data").all()
        assert predictor.calls == 0 and ledger.orders() == []


def test_serve_down_is_a_no_decision(ohlcv_dir, tmp_path, hour) -> None:
    from cluster.local_ray import free_port

    cfg = config(tmp_path / "l.sqlite")
    down = ServeClient(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    with Ledger(tmp_path / "l.sqlite") as ledger:
        trader(cfg, ledger, ParquetDirSource(ohlcv_dir), down, paper_accounts(cfg)).run_hour(hour)
        frame = ledger.decisions_frame()
        assert (frame["kind"] == "no_decision").all()
        assert frame["reason"].str.contains("did not answer").all()
        assert ledger.orders() == []


class Crash(BaseException):
    """The process dies: nothing in the loop catches a BaseException."""


def test_crash_after_sending_resumes_without_a_second_order(
    ohlcv_dir, real_candles, tmp_path, hour
) -> None:
    cfg = config(tmp_path / "l.sqlite")
    candles = {MARKET: real_candles[MARKET].iloc[-48:]}
    source = ParquetDirSource(ohlcv_dir)
    with UpbitPrivateStandIn(candles, balances={"KRW": 1_000_000.0}) as exchange:

        def live_accounts() -> dict:
            broker = UpbitBroker(ACCESS_KEY, SECRET_KEY, base_url=exchange.url, timeout=5)
            guard = RiskGuard.from_config(cfg.risk)
            return {
                ("live", MARKET): ArmAccount("live", MARKET, broker, guard, arm_source("live", cfg))
            }

        first = Ledger(tmp_path / "l.sqlite")
        run = trader(cfg, first, source, FixedSignal(), live_accounts())

        def crash(*args, **kwargs):
            raise Crash

        first.record_fill = crash  # the order has reached Upbit; the fill never reaches the ledger
        with pytest.raises(Crash):
            run.run_hour(hour)
        first.close()
        assert exchange.order_count() == 1
        with Ledger(tmp_path / "l.sqlite") as ledger:
            assert [o.status.value for o in ledger.pending_orders()] == ["pending"]
            trader(cfg, ledger, source, FixedSignal(), live_accounts()).run_hour(hour)
            assert exchange.order_count() == 1, "the restart sent the order a second time"
            (fill,) = ledger.fills(arm="live")
            assert fill.volume > 0 and not ledger.pending_orders()


def test_a_longer_warm_up_still_trades(
    smoke_bundle, ohlcv_dir, real_candles, tmp_path, warmup_hours
) -> None:
    """When the features' warm-up grows, serving needs more candles; the loop fetches as many as
    serving needs (derived from the features, never a literal), so every hour is still decided
    and none becomes a 422 and a no_decision."""
    warmup_hours(indicators.WARMUP_HOURS + 200)
    longer = indicators.SERVING_WINDOW
    serve = InProcessServe(load_bundle(smoke_bundle))
    hours = real_candles[MARKET].index[-3:]
    old_window = real_candles[MARKET].loc[: hours[0]].iloc[-(823 + 48) :]  # the old literal
    flat = AccountState.flat(1_000_000.0)
    with pytest.raises(ServeUnavailable, match=f"422 .*need at least {longer} hourly candles"):
        serve.predict(MARKET, old_window, flat)
    cfg = config(tmp_path / "l.sqlite")
    with Ledger(tmp_path / "l.sqlite") as ledger:
        run = trader(cfg, ledger, ParquetDirSource(ohlcv_dir), serve, paper_accounts(cfg))
        for hour in hours:
            run.run_hour(hour)
        frame = ledger.decisions_frame()
    assert (frame["kind"] == "decision").all(), frame["reason"].tolist()
    assert len(frame) == 2 * len(hours) and set(frame["time"]) == set(hours)
    assert set(frame["model_version"]) == {load_bundle(smoke_bundle).version}


def test_a_stale_model_opens_no_position_and_the_ledger_says_why(ohlcv_dir, tmp_path, hour):
    cfg = config(tmp_path / "l.sqlite")
    with Ledger(tmp_path / "l.sqlite") as ledger:
        stale = FixedSignal(stale=True)  # BUY, from a model 900 h past its training window
        trader(cfg, ledger, ParquetDirSource(ohlcv_dir), stale, paper_accounts(cfg)).run_hour(hour)
        frame = ledger.decisions_frame()
        assert (frame["kind"] == "decision").all() and frame["order_side"].isna().all()
        assert frame["reason"].str.contains("model v0001 is stale").all()
        assert frame["reason"].str.contains("BUY not sent").all()
        assert ledger.orders() == []


def test_a_novel_input_opens_no_position_and_the_ledger_says_why(ohlcv_dir, tmp_path, hour):
    cfg = config(tmp_path / "l.sqlite")
    with Ledger(tmp_path / "l.sqlite") as ledger:
        novel = FixedSignal(novel=True)  # BUY, on an hour unlike the model's training rows
        trader(cfg, ledger, ParquetDirSource(ohlcv_dir), novel, paper_accounts(cfg)).run_hour(hour)
        frame = ledger.decisions_frame()
        assert (frame["kind"] == "decision").all() and frame["order_side"].isna().all()
        assert frame["reason"].str.contains("novel input (dissimilarity 4.20", regex=False).all()
        assert frame["reason"].str.contains("BUY not sent").all()
        assert ledger.orders() == []
