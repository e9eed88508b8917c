"""The triple-barrier label's exits as the model was trained on them: the time limit sells a held
position `horizon` hours after it was opened (in `plan_hour`, in the backtester and in the paper
live loop, across a restart of the loop), and the live loop closes a position at the barriers of
the model that answered, not at configs/features.yaml's. Hand-made flat candles where neither
the take-profit nor the stop-loss is touched (a shape real data does not offer on demand); the
served-label test runs a bundle trained on triple-barrier labels over real candles."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from features.barriers import Barriers, LabelMoves
from features.config import FEATURES_YAML
from features.domain import AccountState, Order, Prediction, Side, Signal
from serve.schema import Sizing
from trading.backtest import replay
from trading.broker import Fill, OrderState, order_identifier
from trading.config import TradingConfig
from trading.ledger import Ledger
from trading.loop import LoopCore
from trading.loop_settings import ClockSettings, LoopSettings
from trading.predictions import market_hours
from trading.risk import RiskGuard
from trading.step import plan_hour

from standins.in_process_serve import InProcessServe
from standins.signals import BUY, HOLD, FixedSignal

MARKET = "KRW-BTC"
PRICE = 100_000_000.0
LIMIT = 5  # the label's time limit, hours
BARRIERS = Barriers(take_profit=0.02, stop_loss=0.02, horizon=LIMIT)  # a flat close touches neither
MOVES = LabelMoves.of_barriers(BARRIERS)
PROBA = ["p_sell", "p_hold", "p_buy"]
ARMS = ("fixed", "llm")


def _entry(hour: datetime) -> str:
    return f"entry hour {hour:%Y-%m-%d %H:00}"


# -- plan_hour ------------------------------------------------------------------------------------
def test_plan_hour_sells_at_the_time_limit_and_not_an_hour_before() -> None:
    hour = datetime(2025, 3, 1, 14)
    config = TradingConfig()
    held = AccountState(700_000.0, 0.003, PRICE, 700_000.0 + 0.003 * PRICE, 0.0)

    def plan(entered: datetime | None, moves: LabelMoves = MOVES):
        prediction = Prediction(MARKET, hour, HOLD, "v0001")
        guard = RiskGuard.from_config(config.risk)
        closes = np.full(200, PRICE)
        return plan_hour(prediction, 0.3, "fixed", held, PRICE, hour, closes, guard, config,
                         entered=entered, moves=moves)[0]  # fmt: skip

    opened = hour - timedelta(hours=LIMIT)
    sold = plan(opened)
    assert sold.signal is Signal.SELL and sold.order is not None
    assert sold.order.side is Side.ASK and sold.order.volume == held.position
    assert sold.reason.startswith("time limit: held 5 h") and _entry(opened) in sold.reason
    assert plan(opened + timedelta(hours=1)).order is None  # 4 h: the HOLD stands
    assert plan(None).order is None  # an unknown entry hour: no time limit
    assert plan(opened, LabelMoves.of_threshold(0.005)).order is None  # no barriers, no limit


# -- the backtester -------------------------------------------------------------------------------
def test_the_backtester_sells_at_the_time_limit_and_adding_does_not_restart_it() -> None:
    times = pd.date_range("2024-01-01 09:00", periods=215, freq="h", name="time")
    close = np.full(len(times), PRICE)
    frame = pd.DataFrame(np.tile(BUY, (15, 1)), index=times[200:], columns=PROBA)
    predictions = frame.assign(source="bundle", model_version="v0001")

    def more_when_holding(p: Prediction, a: AccountState, v: float, s: Sizing | None):
        return (0.3 if a.position == 0 else 0.6), "test"  # the second BUY adds to the position

    hours = market_hours(MARKET, times, close, predictions, MOVES)
    records = replay(hours, "fixed", more_when_holding, TradingConfig()).records
    sides = records["side"].tolist()
    # bought at 200, added at 201, sold whole at 200 + LIMIT; then the same again
    assert sides[:12] == ["bid", "bid", "", "", "", "ask", "bid", "bid", "", "", "", "ask"]
    sale = records.iloc[LIMIT]
    assert "time limit" in sale["reason"] and _entry(times[200]) in sale["reason"]
    assert sale["position"] == 0.0


# -- the paper live loop --------------------------------------------------------------------------
def _flat_candles(folder: Path, first: pd.Timestamp, hours: int) -> None:
    times = pd.date_range(first, periods=hours, freq="h", name="time")
    frame = pd.DataFrame(
        {"open": PRICE, "high": PRICE, "low": PRICE, "close": PRICE, "volume": 1.0,
         "value": PRICE}, index=times,
    )  # fmt: skip
    folder.mkdir(exist_ok=True)
    frame.to_parquet(folder / f"{MARKET}_minute60.parquet")


def _loop(data: Path, ledger: Path, first: pd.Timestamp, predictor, *extra: str, **fields):
    """A paper LoopCore (no Ray) whose hours the test runs one by one."""
    start = first + pd.Timedelta(hours=1, seconds=30)  # an accelerated clock: never late
    settings = LoopSettings(
        data_dir=str(data), overrides=[f"loop.markets=[{MARKET}]", f"ledger.path={ledger}", *extra],
        clock=ClockSettings(kind="accelerated", start=start.to_pydatetime(), speed=1.0), **fields,
    )  # fmt: skip
    return LoopCore(settings, holder="test-loop", predictor=predictor)


def _stop(core: LoopCore) -> None:
    assert core.errors == [], core.errors
    core.stop_event.set()
    core.release()
    core.ledger.close()


def test_the_paper_loop_sells_at_the_time_limit_across_a_restart(tmp_path: Path) -> None:
    """Bought at h0, the loop restarts after h0 + 2 and still counts from h0: the sale is at
    h0 + LIMIT, named by the time limit of the label the reply carried (configs/features.yaml's
    label is a fixed threshold without any)."""
    first = pd.Timestamp("2025-01-01 00:00")
    _flat_candles(tmp_path / "ohlcv", first, 300)
    h0 = first + pd.Timedelta(hours=250)
    hours = [h0 + pd.Timedelta(hours=k) for k in range(LIMIT + 1)]
    ledger = tmp_path / "ledger.sqlite"
    signal = FixedSignal(BUY, label=MOVES)
    core = _loop(tmp_path / "ohlcv", ledger, h0, signal)
    for hour in hours[:3]:
        core.run_hour(hour)
    _stop(core)
    again = _loop(tmp_path / "ohlcv", ledger, hours[3], signal)  # a restart: a new process
    for arm in ARMS:
        assert again.trader.accounts[(arm, MARKET)].high.entered == h0  # from the ledger
    for hour in hours[3:]:
        again.run_hour(hour)
    _stop(again)
    with Ledger(ledger) as opened:
        orders = opened.orders()
        frame = opened.decisions_frame()
    asks = [o for o in orders if o.side is Side.ASK]
    assert sorted(o.arm for o in asks) == sorted(ARMS)
    assert {o.hour for o in asks} == {hours[LIMIT].to_pydatetime()}, frame.to_string()
    assert {o.hour for o in orders if o.side is Side.BID} == {h0.to_pydatetime()}
    sold = frame[frame["time"] == hours[LIMIT]]
    assert sold["reason"].str.startswith("time limit: held 5 h").all(), sold["reason"].tolist()
    assert sold["reason"].str.contains(_entry(h0)).all()


# -- the served model's label, not the config's ---------------------------------------------------
def test_the_loop_exits_at_the_served_bundles_barrier_not_the_configs(
    barrier_fit, ohlcv_dir: Path, real_candles, tmp_path: Path
) -> None:
    """The bundle trained on a 1 % take-profit (conftest's BARRIER_LABEL); configs/features.yaml
    (here a copy) labels with 5 % barriers and 48 h. A position 1.5 % up (1.4 % after fees) is
    the bundle's take-profit: the loop sells it, naming the bundle's barrier."""
    _, fit = barrier_fit
    served = fit.model
    assert served.metadata["label_barriers"]["take_profit"] == 0.01
    features = yaml.safe_load(Path(FEATURES_YAML).read_text())
    features["labels"].update(mode="triple_barrier", take_profit=0.05, stop_loss=0.05,
                              horizon_hours=48)  # fmt: skip
    (tmp_path / "features.yaml").write_text(yaml.safe_dump(features))
    hour = pd.Timestamp("2025-07-15 10:00")  # after the bundle's training window
    close = float(real_candles[MARKET].loc[hour, "close"])
    entry_hour = (hour - pd.Timedelta(hours=1)).to_pydatetime()
    ledger = tmp_path / "ledger.sqlite"
    with Ledger(ledger) as opened:  # both arms bought an hour earlier, 1.5 % under this close
        for arm in ARMS:
            identifier = order_identifier(MARKET, entry_hour, Side.BID)
            opened.record_order_intent(Order(MARKET, Side.BID, 300_000.0, identifier=identifier),
                                       entry_hour, arm)  # fmt: skip
            price = close / 1.015
            opened.record_fill(Fill(identifier, MARKET, Side.BID, OrderState.DONE,
                                    300_000 / price, price, 150.0), arm)  # fmt: skip
    core = _loop(
        ohlcv_dir,
        ledger,
        hour,
        InProcessServe(served),
        "policy.min_confidence=0.99",
        features_config=str(tmp_path / "features.yaml"),
    )  # the model's own signal only HOLDs: what sells is its label's barrier
    core.run_hour(hour)
    _stop(core)
    with Ledger(ledger) as opened:
        frame = opened.decisions_frame()
        asks = [o for o in opened.orders() if o.side is Side.ASK]
    assert sorted(o.arm for o in asks) == sorted(ARMS), frame["reason"].tolist()
    assert (frame["model_version"] == served.version).all()
    assert frame["reason"].str.startswith("take-profit").all()
    assert frame["reason"].str.contains("(1.00% after fees reached)", regex=False).all()
