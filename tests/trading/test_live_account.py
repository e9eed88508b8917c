"""Live trading's money rules, hour by hour without Ray, against the Upbit private stand-in (a
real HTTP server speaking Upbit's JWT-signed API) with the real `UpbitBroker` and a real SQLite
ledger: one account for every market (one kill switch, KRW counted once), only free coins sold,
an order whose lookup keeps failing halts its market while the others trade until a person
acknowledges it, an order open at the exchange that the ledger does not know halts its market,
and a person's switch-off while an hour runs is neither overwritten nor outrun by a buy."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from features.domain import Order, Side
from features.sources import ParquetDirSource
from trading.__main__ import main
from trading.account import loop_accounts
from trading.broker import order_identifier
from trading.config import load_trading_config
from trading.hourly import HourlyTrader, Labels
from trading.ledger import Ledger
from trading.loop import LoopCore
from trading.loop_settings import ClockSettings, LoopSettings
from trading.upbit_broker import ACCESS_KEY_ENV, SECRET_KEY_ENV

from standins.signals import BUY, HOLD, SELL, FixedSignal
from standins.upbit_private import ACCESS_KEY, SECRET_KEY, Holding, UpbitPrivateStandIn

BTC, ETH = "KRW-BTC", "KRW-ETH"
MARKETS = [ETH, BTC]  # ETH first: before the fix its guard saw the KRW that BTC then spent


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ACCESS_KEY_ENV, ACCESS_KEY)
    monkeypatch.setenv(SECRET_KEY_ENV, SECRET_KEY)


@pytest.fixture
def hours(real_candles) -> list[pd.Timestamp]:
    return list(real_candles[BTC].index[-3:])


@pytest.fixture
def exchange(real_candles, hours):
    candles = {m: real_candles[m].loc[: hours[-1]].iloc[-72:] for m in MARKETS}
    with UpbitPrivateStandIn(candles, balances={"KRW": 1_000_000.0}) as standin:
        yield standin


def live_trader(tmp_path: Path, exchange, ohlcv_dir: Path, predictor, *overrides: str):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    config = load_trading_config(
        overrides=[f"loop.markets=[{','.join(MARKETS)}]", "loop.order_lookup_s=1", *overrides]
    )
    accounts = loop_accounts(config, MARKETS, ledger, "live", exchange.url)
    source = ParquetDirSource(ohlcv_dir)
    return HourlyTrader(config, MARKETS, ledger, source, predictor, accounts, Labels(6, 0.005))


def test_two_markets_on_one_account_one_switch_and_krw_counted_once(
    keys, exchange, ohlcv_dir, real_candles, tmp_path, hours
) -> None:
    signals = FixedSignal({BTC: BUY, ETH: HOLD}, ratio=0.6)
    trader = live_trader(tmp_path, exchange, ohlcv_dir, signals)
    switches = {id(a.kill_switch) for a in trader.accounts.values()}
    assert len(switches) == 1, "every market of one live account shares one kill switch"
    for hour in hours[:2]:
        trader.run_hour(hour)
    ledger = trader.ledger
    (bought,) = ledger.fills(arm="live")
    assert bought.market == BTC and bought.funds == pytest.approx(600_000, rel=0.01)
    guard = ledger.risk_state("live")
    assert guard is not None and not guard["halted"], guard
    assert guard["peak_equity"] == pytest.approx(1_000_000, rel=0.002)
    assert ledger.risk_state(f"live/{ETH}") is None and ledger.risk_state(f"live/{BTC}") is None
    curve = ledger.equity_curve("live")
    assert len(curve) == 2
    last = curve.iloc[-1]
    assert last["cash"] == pytest.approx(400_000, rel=0.01)  # KRW once, not once per market
    assert last["equity"] == pytest.approx(1_000_000, rel=0.01)
    price = real_candles[BTC].loc[hours[1], "close"]  # marked at the hour's close
    assert last["positions_value"] == pytest.approx(bought.volume * price, rel=1e-6)
    decisions = ledger.decisions_frame()
    assert (decisions["kind"] == "decision").all(), decisions["reason"].tolist()


def test_a_sell_counts_only_the_free_coins(keys, exchange, ohlcv_dir, tmp_path, hours) -> None:
    exchange.holdings["BTC"] = Holding(0.01, locked=0.004, avg_buy_price=exchange.prices[BTC])
    trader = live_trader(tmp_path, exchange, ohlcv_dir, FixedSignal({BTC: SELL, ETH: HOLD}))
    trader.ledger.snapshots.record(hours[0], {"KRW": 1_000_000.0, "BTC": 0.014})  # seen before
    trader.run_hour(hours[1])
    (sold,) = trader.ledger.fills(arm="live")
    assert sold.side is Side.ASK and sold.volume == pytest.approx(0.01)  # not the locked 0.004
    assert not trader.ledger.halts.open()


def _pending(ledger: Ledger, market: str, hour: pd.Timestamp) -> str:
    """An order intent a crashed loop left behind (its outcome unknown)."""
    when = hour.to_pydatetime()
    identifier = order_identifier(market, when, Side.BID)
    ledger.record_order_intent(
        Order(market, Side.BID, 50_000.0, identifier=identifier), when, "live"
    )
    return identifier


def test_a_lookup_that_keeps_failing_halts_one_market_while_the_others_trade(
    keys, exchange, ohlcv_dir, tmp_path, hours, capsys
) -> None:
    trader = live_trader(tmp_path, exchange, ohlcv_dir, FixedSignal(BUY, ratio=0.3))
    lost = _pending(trader.ledger, BTC, hours[0])
    exchange.fail_lookups(lost)
    trader.run_hour(hours[1])
    ledger = trader.ledger
    assert exchange.posted_orders() == [f"{ETH}|{hours[1]:%Y-%m-%dT%H:00}|bid"]
    assert list(ledger.halts.open()) == [BTC]
    order = ledger.order(lost, "live")
    assert order.status == "unknown" and "lookup kept failing" in order.error
    frame = ledger.decisions_frame()
    btc = frame[frame["market"] == BTC]
    assert (btc["kind"] == "no_decision").all() and btc["reason"].str.contains("halted").all()
    assert "reconcile --ack" in btc["reason"].iloc[0]
    ledger_path = str(tmp_path / "ledger.sqlite")
    assert main(["reconcile", "--ledger", ledger_path]) == 1
    assert f"HALTED {BTC}" in capsys.readouterr().out
    assert main(["reconcile", "--ledger", ledger_path, "--ack"]) == 2  # who checked? required
    assert main(["reconcile", "--ledger", ledger_path, "--ack", "--by", "alice"]) == 0
    (acked,) = [h for h in ledger.halts.all() if h.market == BTC]
    assert acked.acked_by == "alice"
    trader.run_hour(hours[2])  # acknowledged: BTC trades again, the lost order is never resent
    posted = exchange.posted_orders()
    assert f"{BTC}|{hours[2]:%Y-%m-%dT%H:00}|bid" in posted and lost not in posted


def test_an_order_open_at_the_exchange_that_the_ledger_does_not_know_halts_its_market(
    keys, exchange, ohlcv_dir, tmp_path, hours
) -> None:
    by_hand = exchange.place_by_hand(BTC, "ask", 0.0)  # a person's open order, never filled
    trader = live_trader(tmp_path, exchange, ohlcv_dir, FixedSignal(HOLD))
    trader.run_hour(hours[1])
    (halt,) = trader.ledger.halts.open()[BTC]
    assert by_hand in halt.reason and "does not know" in halt.reason
    assert ETH not in trader.ledger.halts.open()


def test_a_restart_late_in_the_hour_sends_nothing(
    keys, exchange, ohlcv_dir, tmp_path, hours
) -> None:
    trader = live_trader(tmp_path, exchange, ohlcv_dir, FixedSignal(BUY))
    closed = pd.Timedelta(hours=1)  # a candle closes an hour after it opened
    trader.now = lambda: hours[1] + closed + pd.Timedelta(minutes=50)  # a restart, 50 min late
    trader.run_hour(hours[1])
    frame = trader.ledger.decisions_frame()
    assert (frame["kind"] == "no_decision").all() and frame["reason"].str.startswith("late").all()
    assert exchange.posted_orders() == []
    trader.now = lambda: hours[2] + closed + pd.Timedelta(seconds=65)
    trader.run_hour(hours[2])
    assert len(exchange.posted_orders()) == 2  # on time: both markets buy


def test_a_switch_off_while_the_hour_runs_is_kept_and_outruns_the_buy(
    ohlcv_dir, tmp_path, hours
) -> None:
    """The hour plans a BUY, then a person switches trading off before the order leaves: the BUY
    is not sent, and the stored switch state is the person's, not the hour's."""
    start = hours[1] + pd.Timedelta(hours=1, seconds=30)  # a replay's clock: never late
    settings = LoopSettings(
        data_dir=str(ohlcv_dir),
        overrides=[f"loop.markets=[{BTC}]", f"ledger.path={tmp_path / 'ledger.sqlite'}"],
        clock=ClockSettings(kind="accelerated", start=start.to_pydatetime(), speed=1.0),
    )
    core = LoopCore(settings, holder="test-loop", predictor=FixedSignal(BUY))
    ledger = core.ledger
    planned, switched = threading.Event(), threading.Event()
    record_decision = ledger.record_decision

    def record_then_wait(decision, arm):  # the moment between planning and sending
        stored = record_decision(decision, arm)
        planned.set()
        assert switched.wait(30), "the person's switch-off never arrived"
        return stored

    ledger.record_decision = record_then_wait
    hour = threading.Thread(target=core.run_hour, args=(hours[1],))
    hour.start()
    assert planned.wait(60)
    core.set_trading(False, "alice", "exchange incident")
    switched.set()
    hour.join(60)
    assert core.errors == []
    decisions = ledger.decisions_frame()
    assert (decisions["order_side"] == "bid").any()  # a BUY was planned before the switch
    assert ledger.orders() == [], "a BUY left after the person switched trading off"
    for arm in ("fixed", "llm"):
        stored = ledger.risk_state(f"{arm}/{BTC}")
        assert stored["halted"] and stored["reason"] == "exchange incident", stored
    core.stop_event.set()
    core.release()
    assert ledger.lease.current() is None


def test_a_second_loop_on_the_same_ledger_is_refused_naming_the_holder(ohlcv_dir, tmp_path):
    from trading.loop import LoopRefused

    settings = LoopSettings(
        data_dir=str(ohlcv_dir),
        overrides=[f"loop.markets=[{BTC}]", f"ledger.path={tmp_path / 'ledger.sqlite'}"],
    )
    first = LoopCore(settings, holder="head-a TradingLoop 1", predictor=FixedSignal(HOLD))
    with pytest.raises(LoopRefused, match=r"head-a TradingLoop 1 \(paper mode"):
        LoopCore(settings, holder="head-b TradingLoop 2", predictor=FixedSignal(HOLD))
    again = LoopCore(settings, holder="head-a TradingLoop 1", predictor=FixedSignal(HOLD))
    assert again.ledger.lease.current().holder == "head-a TradingLoop 1"  # its own restart
    first.stop_event.set()
    again.stop_event.set()
    again.release()


def test_serve_silent_while_holding_a_fallen_position_still_sells_on_the_stop(
    ohlcv_dir, real_candles, tmp_path, hours
) -> None:
    from trading.account import ArmAccount, arm_source
    from trading.broker import Fill, OrderState
    from trading.paper import PaperBroker
    from trading.risk import RiskGuard

    config = load_trading_config(overrides=[f"loop.markets=[{BTC}]"])
    close = float(real_candles[BTC].loc[hours[1], "close"])
    entry = close * 1.15  # bought 15 % higher, hours ago: 13 % under water now
    when = datetime(2025, 1, 1, 9)
    bought = Fill(order_identifier(BTC, when, Side.BID), BTC, Side.BID, OrderState.DONE,
                  0.004, entry, 0.0)  # fmt: skip
    broker = PaperBroker(1_000_000.0 + 0.004 * entry, 0.0, [bought])
    guard = RiskGuard.from_config(config.risk)
    account = ArmAccount("fixed", BTC, broker, guard, arm_source("fixed", config))
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        trader = HourlyTrader(
            config, [BTC], ledger, ParquetDirSource(ohlcv_dir), FixedSignal(down=True),
            {("fixed", BTC): account}, Labels(6, 0.005),
        )  # fmt: skip
        trader.run_hour(hours[1])
        (sold,) = ledger.fills(arm="fixed")
        assert sold.side is Side.ASK and sold.volume == pytest.approx(0.004)
        frame = ledger.decisions_frame()
        decided = frame[frame["kind"] == "decision"].iloc[0]
        assert decided["sizing_source"] == "protective" and "stop-loss" in decided["reason"]
        silent = frame[frame["kind"] == "no_decision"]["reason"].iloc[0]
        assert "did not answer" in silent
        assert ledger.realised_accuracy(BTC, 10, "fixed").n == 0  # no model, no prediction
