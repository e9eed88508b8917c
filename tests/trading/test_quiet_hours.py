"""The backtester's shortcut through quiet flat hours (`trading.quiet_hours`) changes nothing: the
replay that records them in stretches and the one that walks every hour through the account
(`replay(..., every_hour=True)`) give the same records frame (every column, every row), fills,
equity and kill switch. On real candles (with the smoke bundle's predictions, and with seeded
probabilities under configs that make every exit fire) and on hand-made hours: a crash, a pump,
slow slides, gaps without a prediction, novel inputs, a kill switch that goes off. The same for
the shortcut through held hours (`trading.held_hours`): each test also counts the hours it took."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.barriers import Barriers, LabelMoves, acted_signals
from features.domain import AccountState, Prediction, Signal
from features.sources import ParquetDirSource
from serve.sizing import load_sizing_config
from trading import backtest
from trading.account import FixedRatio, RatioSource, RuleRatio
from trading.backtest import NO_PREDICTION, NOVEL, ArmRun, replay
from trading.config import load_trading_config
from trading.held_hours import held_stretch
from trading.policy import decide, unplaced_reasons
from trading.predictions import MarketHours, load_market_hours, market_hours
from train.registry import ModelRegistry

MARKET = "KRW-BTC"
PROBA = ["p_sell", "p_hold", "p_buy"]
BARRIERS = Barriers(take_profit=0.01, stop_loss=0.015, horizon=8)
EXITS = {  # what each rule writes in a record's reason
    "stop-loss": "stop-loss: close",
    "trailing stop": "trailing stop: close",
    "emergency": "emergency sell",
    "take-profit": "take-profit: close",
    "label stop-loss": "label stop-loss",
    "time limit": "time limit: held",
    "kill switch": "trading switched off",
    "novel": NOVEL,
    "no prediction": NO_PREDICTION,
    "margin note": "not above margin",
    "sell margin note": "not above sell margin",
}
TIGHT = [  # stops near enough to fire on hourly candles
    "risk.stops.stop_loss=0.03",
    "risk.stops.trailing_stop=0.04",
    "risk.emergency.full_loss=0.02",
]
ARGMAX_SELLS = "policy.sell_margin=null"  # the rows below were made for sales on the argmax
CONFIGS = {  # the label's barriers close positions first except under "tight" (threshold label)
    "barrier exits": [ARGMAX_SELLS],
    "tight": [*TIGHT, ARGMAX_SELLS],
    "argmax": [*TIGHT, "policy.margin=null", "policy.min_confidence=0.45", ARGMAX_SELLS],
    "partial sells": [
        *TIGHT,
        "policy.sell_fraction=0.5",
        "policy.buy_when_holding=skip",
        ARGMAX_SELLS,
    ],  # fmt: skip
    "kill switch": ["risk.daily_loss_limit=0.01", "risk.max_drawdown=0.03", ARGMAX_SELLS],
    "shipped": [],  # configs/trading.yaml as it is (its sell margin)
    "sell margin": [*TIGHT, "policy.sell_margin=0.002"],
    "argmax, sell margin": ["policy.margin=null", "policy.sell_margin=0.0"],
}


def _moves(name: str) -> LabelMoves:
    return LabelMoves.of_threshold(0.005) if name == "tight" else LabelMoves.of_barriers(BARRIERS)


def recorded_ratio(p: Prediction, a: AccountState, v: float, s: object) -> tuple[float, str]:
    """A source without a `many` form (as a replay's recorded ratios): asked hour by hour."""
    return round(0.1 + 0.5 * p.probabilities[2], 3), "recorded"


def _arms() -> dict[str, RatioSource]:
    sizing = load_sizing_config()
    return {"fixed": FixedRatio(0.5), "rule": RuleRatio(sizing), "recorded": recorded_ratio}


@pytest.fixture(autouse=True)
def held_hours(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The hours each replay recorded through `held_stretch` (the real one, counted), so a test
    can show the held shortcut was taken, not only that nothing changed."""
    counted: list[int] = []

    def counting(account, state, start, inputs, book, config) -> int:  # type: ignore[no-untyped-def]
        after = held_stretch(account, state, start, inputs, book, config)
        counted.append(after - start)
        return after

    monkeypatch.setattr(backtest, "held_stretch", counting)
    return counted


def assert_same_replay(hours: MarketHours, config, arms: dict[str, RatioSource]) -> list[ArmRun]:
    runs = []
    for arm, source in arms.items():
        fast = replay(hours, arm, source, config)
        slow = replay(hours, arm, source, config, every_hour=True)
        pd.testing.assert_frame_equal(fast.records, slow.records)
        assert fast.fills == slow.fills
        assert fast.guard == slow.guard
        np.testing.assert_array_equal(fast.equity, slow.equity)
        np.testing.assert_array_equal(fast.position, slow.position)
        runs.append(fast)
    return runs


def seeded_predictions(times: pd.DatetimeIndex, seed: int) -> pd.DataFrame:
    """Probabilities that drift between calm, bullish and bearish spells (so the account buys,
    holds, tops up and sells), a few hours without a prediction and a few novel ones."""
    rng = np.random.default_rng(seed)
    spell = np.repeat(rng.integers(0, 3, len(times) // 12 + 1), 12)[: len(times)]
    alpha = np.array([[2.0, 6.0, 2.0], [1.0, 3.0, 6.0], [6.0, 3.0, 1.0]])[spell]
    rows = np.array([rng.dirichlet(a) for a in alpha])
    frame = pd.DataFrame(rows, index=times, columns=PROBA)
    frame = frame.assign(source="oos", model_version="seeded", novel=rng.random(len(times)) < 0.02)
    kept = rng.random(len(times)) > 0.01
    kept[:200] = True  # the first hours are predicted: the replay starts there
    return frame[kept]


def _reasons(runs: list[ArmRun]) -> set[str]:
    text = pd.concat([r.records["reason"] for r in runs])
    return {name for name, mark in EXITS.items() if text.str.contains(mark, regex=False).any()}


@pytest.fixture(scope="module")
def real_close(real_candles) -> pd.Series:
    close = real_candles[MARKET]["close"]
    return close.iloc[-6000:]  # 2025: gaps, rallies and slides of real hours


@pytest.mark.parametrize("name", list(CONFIGS))
def test_real_candles_every_config_same_records(
    name: str, real_close: pd.Series, held_hours: list[int]
) -> None:
    config = load_trading_config(overrides=CONFIGS[name])
    times = pd.DatetimeIndex(real_close.index)
    predictions = seeded_predictions(times[168:], seed=len(name))
    hours = market_hours(MARKET, times, real_close.to_numpy(), predictions, _moves(name))
    runs = assert_same_replay(hours, config, _arms())
    fills = sum(len(r.fills) for r in runs)
    assert fills > 20  # the account trades, so flat stretches end and start again
    held = sum(r.position[:-1].astype(bool).sum() for r in runs)  # hours that start held
    assert sum(held_hours) > held // 4  # the held shortcut recorded a good part of them


def test_real_candles_exercise_every_exit(real_close: pd.Series) -> None:
    """Across the configs, every rule that can act on a held position acts at least once, and
    the hours without a prediction and the novel ones are there: the equality above covers them."""
    seen: set[str] = set()
    times = pd.DatetimeIndex(real_close.index)
    for name, overrides in CONFIGS.items():
        config = load_trading_config(overrides=overrides)
        predictions = seeded_predictions(times[168:], seed=len(name))
        hours = market_hours(MARKET, times, real_close.to_numpy(), predictions, _moves(name))
        seen |= _reasons([replay(hours, "fixed", FixedRatio(0.5), config)])
    assert seen == set(EXITS)


def test_smoke_bundle_on_the_full_history_same_records(
    smoke_bundle: Path, ohlcv_dir: Path, tmp_path: Path, held_hours: list[int]
) -> None:
    """Real candles, a real model's out-of-sample predictions, the shipped configs: the
    backtest `python -m trading backtest` runs."""
    registry = ModelRegistry(tmp_path / "registry")
    registry.promote(MARKET, registry.register(MARKET, smoke_bundle))
    hours = load_market_hours(MARKET, ParquetDirSource(ohlcv_dir), registry, tmp_path / "fetched")
    config = load_trading_config()
    sizing = load_sizing_config()
    runs = assert_same_replay(hours, config, {"fixed": FixedRatio(0.3), "rule": RuleRatio(sizing)})
    assert all(len(r.fills) > 0 for r in runs)
    assert sum(held_hours) > 100


# -- hand-made hours ------------------------------------------------------------------------------
def _hand_made() -> tuple[pd.DatetimeIndex, np.ndarray, pd.DataFrame]:
    """Calm, a pump, a slow slide, a crash, calm again; a BUY spell before each, gaps and novel
    hours in the BUY spells."""
    rng = np.random.default_rng(11)
    legs = [
        rng.normal(0, 0.002, 300),  # calm (the volatility baseline)
        np.full(12, 0.004),  # a pump: take-profit
        rng.normal(0, 0.002, 60),
        np.full(40, -0.0015),  # a slow slide: stops
        rng.normal(0, 0.002, 60),
        np.full(8, -0.02),  # a crash: emergency, kill switch
        rng.normal(0, 0.001, 200),
    ]
    returns = np.concatenate(legs)
    times = pd.date_range("2024-03-01 09:00", periods=len(returns) + 1, freq="h", name="time")
    close = 50_000_000 * np.cumprod(np.concatenate(([1.0], 1 + returns)))
    rows = np.tile([0.30, 0.55, 0.15], (len(times), 1))  # HOLD, a SELL-leaning one
    buy_spells = [(200, 215), (300, 302), (380, 384), (450, 470), (540, 548), (640, 660)]
    for a, b in buy_spells:
        rows[a:b] = [0.05, 0.15, 0.80]
    rows[600:606] = [0.70, 0.20, 0.10]  # SELL while flat: nothing to sell
    rows[560:580] = [0.30, 0.30, 0.40]  # a BUY whose edge is below the margin
    rows[476:482] = [0.42, 0.38, 0.20]  # a weak SELL while holding: under a sell margin, a HOLD
    predictions = pd.DataFrame(rows, index=times, columns=PROBA).assign(
        source="oos", model_version="hand", novel=False
    )
    predictions.loc[times[[200, 201, 380, 452, 455]], "novel"] = True
    gaps = [153, 154, 160, 207, 320, 321, 395, 500, 501, 502, 545, 670]
    return times, close, predictions.drop(times[gaps])


def test_hand_made_hours_same_records_and_every_exit(held_hours: list[int]) -> None:
    """Every config, a barrier label and a threshold label: the same records; and among the
    hours compared, every exit acted, and held positions were recorded in stretches too."""
    times, close, predictions = _hand_made()
    seen: set[str] = set()
    for overrides in CONFIGS.values():
        config = load_trading_config(overrides=overrides)
        for moves in (LabelMoves.of_barriers(BARRIERS), LabelMoves.of_threshold(0.005)):
            hours = market_hours(MARKET, times, close, predictions.iloc[150:], moves)
            seen |= _reasons(assert_same_replay(hours, config, _arms()))
    assert seen == set(EXITS)
    assert sum(held_hours) > 200


# -- the pieces the shortcut records with ---------------------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["policy.margin=null", "policy.min_confidence=0.5"],
        ["policy.margin=0.002"],
        ["policy.sell_margin=0.003"],
        ["policy.margin=null", "policy.min_confidence=0.5", "policy.sell_margin=0.0"],
    ],
)
def test_unplaced_reasons_are_decides(overrides: list[str]) -> None:
    config = load_trading_config(overrides=overrides).policy
    moves = LabelMoves.of_threshold(0.01)
    rows = np.random.default_rng(5).dirichlet([1.0, 1.0, 1.0], 3000)
    acted = acted_signals(rows, config.margin, moves, config.min_confidence, config.sell_margin)
    calm = acted != int(Signal.BUY)
    flat = AccountState.flat(1_000_000.0)
    hour = pd.Timestamp("2025-01-01 09:00").to_pydatetime()
    expected = [
        decide(Prediction(MARKET, hour, tuple(p), "v"), 0.3, "fixed", flat, 1e8, hour, config,
               moves).reason
        for p in rows[calm].tolist()
    ]  # fmt: skip
    assert list(unplaced_reasons(rows[calm], acted[calm], config, moves)) == expected
    assert any("margin" in r or "min_confidence" in r for r in expected) or not overrides


def test_rule_ratio_many_is_the_rule_hour_by_hour() -> None:
    """Each hour at its own drawdown (a held position's equity moves every hour)."""
    source = RuleRatio(load_sizing_config())
    rng = np.random.default_rng(8)
    rows = rng.dirichlet([1.0, 1.0, 1.0], 2000)
    rows[:50] = [0.4, 0.2, 0.4]  # ties: the first maximum wins, as in Prediction.signal
    volatility = rng.uniform(0, 0.05, len(rows)).tolist()
    falls = rng.uniform(0, 0.3, len(rows)).tolist()
    hour = pd.Timestamp("2025-01-01 09:00").to_pydatetime()
    one_by_one = [
        source(
            Prediction(MARKET, hour, tuple(p), "v"), AccountState(9e5, 0.0, 0.0, 9e5, d), v, None
        )
        for p, v, d in zip(rows.tolist(), volatility, falls, strict=True)
    ]
    ratios, sources = source.many(rows, volatility, falls)
    assert list(zip(ratios, sources, strict=True)) == one_by_one
    level, _ = source.many(rows, volatility, [0.0] * len(rows))
    assert sum(a != b for a, b in zip(ratios, level, strict=True)) > 100  # the drawdowns count
