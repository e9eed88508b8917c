"""The backtester on real candles with a real smoke bundle; synthetic shapes real data lacks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.barriers import LabelMoves
from features.dataset import build_dataset
from features.domain import Side
from features.exchange import FEE_RATE
from features.sources import ParquetDirSource
from serve.sizing import load_sizing_config
from trading.__main__ import main
from trading.account import FixedRatio
from trading.backtest import arm_sources, replay, run_backtest
from trading.backtest_report import round_trips, summarize
from trading.config import TradingConfig, load_trading_config
from trading.predictions import (
    bundle_proba,
    market_hours,
    prediction_positions,
    trained_until,
    walk_forward_predictions,
)
from train.bundle import load_bundle
from train.registry import ModelRegistry

MARKET = "KRW-BTC"
PROBA = ["p_sell", "p_hold", "p_buy"]


@pytest.fixture(scope="module")
def registry(smoke_bundle: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    store = ModelRegistry(root)
    store.promote(MARKET, store.register(MARKET, smoke_bundle))
    return root


@pytest.fixture(scope="module")
def result(registry: Path, ohlcv_dir: Path, tmp_path_factory):
    config = load_trading_config()
    return run_backtest(
        [MARKET],
        ParquetDirSource(ohlcv_dir),
        ModelRegistry(registry),
        config,
        arm_sources(config, load_sizing_config()),
        tmp_path_factory.mktemp("fetched"),
    )


def test_only_out_of_sample_predictions_are_traded(result, smoke_bundle: Path) -> None:
    oos = pd.read_parquet(smoke_bundle / "oos.parquet")
    cutoff = trained_until(load_bundle(smoke_bundle).metadata)
    decisions = result.decisions
    predicted = decisions[decisions["source"] != ""]
    from_oos = predicted[predicted["source"] == "oos"]
    from_bundle = predicted[predicted["source"] == "bundle"]
    assert len(from_oos) == 2 * len(oos)  # every oos hour, once per arm
    stored = oos.loc[pd.DatetimeIndex(from_oos["time"]), PROBA].to_numpy()
    np.testing.assert_array_equal(from_oos[PROBA].to_numpy(), stored)
    assert len(from_bundle) > 0
    assert (pd.DatetimeIndex(from_bundle["time"]) > cutoff).all()
    assert (pd.DatetimeIndex(from_bundle["time"]) > oos.index.max()).all()
    assert decisions["time"].min() == oos.index.min()  # nothing before the first oos hour


def test_bundle_alone_never_predicts_inside_its_training_window(
    smoke_bundle: Path, ohlcv_dir: Path
) -> None:
    model = load_bundle(smoke_bundle)
    meta = model.metadata
    candles = ParquetDirSource(ohlcv_dir).history(MARKET)
    data = build_dataset(candles, MARKET, int(meta["horizon"]), int(meta["max_gap_hours"]))
    predictions = walk_forward_predictions(model, data, oos=None)
    cutoff = trained_until(meta)
    assert set(predictions["source"]) == {"bundle"}
    assert predictions.index.min() > cutoff
    usable = data.times[prediction_positions(data)]
    assert predictions.index.equals(usable[usable > cutoff])
    # The bundle is refit on every labelled hour its candles had (issue 15), so it trades only
    # the hours after its oos record; there it is the bundle's own batch prediction.
    oos = pd.read_parquet(smoke_bundle / "oos.parquet")
    assert cutoff >= oos.index.max()
    proba = bundle_proba(model, data, data.times.get_indexer(predictions.index[:48]))
    np.testing.assert_array_equal(proba, predictions[PROBA].to_numpy()[:48])


def test_equity_and_fees_add_up(result) -> None:
    config = result.config
    summary = summarize(result)["markets"][MARKET]
    for run in result.runs:
        last = run.records.iloc[-1]
        assert run.equity[-1] == pytest.approx(last["cash"] + last["position"] * run.close[-1])
        np.testing.assert_allclose(run.equity, run.records["equity"].to_numpy())
        bids = [f for f in run.fills if f.side is Side.BID]
        asks = [f for f in run.fills if f.side is Side.ASK]
        cash = (
            config.paper.initial_krw
            - sum(f.funds + f.fee for f in bids)
            + sum(f.funds - f.fee for f in asks)
        )
        assert last["cash"] == pytest.approx(cash, rel=1e-9)
        assert last["position"] == pytest.approx(sum(f.volume for f in bids) - sum(
            f.volume for f in asks), abs=1e-12)  # fmt: skip
        fees = sum(f.fee for f in run.fills)
        assert run.records["fee"].sum() == pytest.approx(fees)
        metrics = summary["arms"][run.arm]
        assert metrics["fees"] == pytest.approx(fees)
        assert metrics["trades"] == len(run.fills) == (run.records["fill_state"] == "done").sum()
        assert metrics["final_equity"] == pytest.approx(run.equity[-1])
        assert metrics["total_return"] == pytest.approx(run.equity[-1] / 1_000_000 - 1)
        assert 0.0 <= metrics["exposure"] <= 1.0 and 0.0 <= metrics["max_drawdown"] < 1.0


def test_buy_and_hold_is_last_over_first_close_minus_fees(result, real_candles) -> None:
    summary = summarize(result)["markets"][MARKET]
    start, end = (pd.Timestamp(t) for t in summary["period"])
    close = real_candles[MARKET]["close"]
    expected = close[end] / close[start] * (1 - FEE_RATE) / (1 + FEE_RATE) - 1
    assert summary["buy_and_hold"]["total_return"] == pytest.approx(expected, rel=1e-12)


# -- synthetic shapes ---------------------------------------------------------------------------


def _series(
    returns: np.ndarray, start: str = "2024-01-01 09:00"
) -> tuple[pd.DatetimeIndex, np.ndarray]:
    times = pd.date_range(start, periods=len(returns) + 1, freq="h", name="time")
    return times, 100_000_000 * np.cumprod(np.concatenate(([1.0], 1 + returns)))


def _predictions(times: pd.DatetimeIndex, rows: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(rows, index=times, columns=PROBA)
    return frame.assign(source="oos", model_version="synthetic")


def test_a_crash_triggers_the_emergency_stop_loss() -> None:
    rng = np.random.default_rng(3)
    calm = rng.normal(0, 0.002, 300)
    times, close = _series(np.concatenate([calm, np.full(8, -0.02), np.zeros(10)]))
    rows = np.tile([0.10, 0.20, 0.70], (len(times), 1))  # BUY while calm...
    crash_start = 301
    rows[crash_start - 1 :] = [0.35, 0.60, 0.05]  # ...then HOLD, a little worried
    config = TradingConfig()
    hours = market_hours(MARKET, times, close, _predictions(times[200:], rows[200:]))
    run = replay(hours, "fixed", FixedRatio(0.5), config)
    sells = run.records[run.records["side"] == "ask"]
    assert len(sells) == 1
    sell = sells.iloc[0]
    assert "emergency sell" in sell["reason"] and "overrides HOLD" in sell["reason"]
    assert sell["fill_state"] == "done" and sell["position"] == 0.0
    assert times[crash_start] < sell["time"] <= times[crash_start + 8]
    assert run.position[-1] == 0.0
    assert round_trips(run.fills)[0] < 0  # the trip lost money, but less than riding it down


def test_the_kill_switch_stops_buys_after_a_drawdown() -> None:
    times, close = _series(np.full(48, -0.03))
    price_rules_off = ["risk.stops.stop_loss=null", "risk.stops.trailing_stop=null"]
    config = load_trading_config(overrides=["risk.emergency.enabled=false", *price_rules_off])
    rows = np.tile([0.1, 0.2, 0.7], (49, 1))
    hours = market_hours(
        MARKET, times, close, _predictions(times, rows), LabelMoves.of_threshold(0.005)
    )
    run = replay(hours, "fixed", FixedRatio(0.5), config)
    records = run.records
    halted = records.index[records["halted"]]
    assert len(halted) and run.guard.halted and "daily loss" in run.guard.reason
    before, after = records.loc[: halted[0] - 1], records.loc[halted[0] :]
    assert (before["side"] == "bid").sum() >= 2  # it was topping up before the switch
    assert not (after["side"] == "bid").any()
    assert after["reason"].str.contains("trading switched off").sum() >= 10
    assert not (after["fill_state"] == "done").any()


# -- the command line ---------------------------------------------------------------------------


def test_cli_writes_table_json_and_png(
    registry: Path, ohlcv_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    argv = ["backtest", "--markets", MARKET, "--data-dir", str(ohlcv_dir), "--registry"]
    argv += [str(registry), "--arm", "fixed", "--out", str(out), "--set", "ab.fixed_ratio=0.5"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "buy&hold" in printed and "market-hours replayed" in printed
    assert "KRW-BTC" in (out / "backtest.txt").read_text()
    report = json.loads((out / "backtest.json").read_text())
    arms = report["markets"][MARKET]["arms"]
    assert list(arms) == ["fixed"] and report["config"]["ab"]["fixed_ratio"] == 0.5
    assert {"total_return", "cagr", "sharpe", "sortino", "max_drawdown", "trades", "win_rate",
            "fees", "exposure"} <= set(arms["fixed"])  # fmt: skip
    assert (out / "equity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(pd.read_parquet(out / "decisions.parquet")) == arms["fixed"]["hours"]


def test_cli_unknown_market_exits_2_with_a_clear_message(
    registry: Path, ohlcv_dir: Path, tmp_path: Path, capsys
) -> None:
    argv = ["backtest", "--markets", "KRW-BTC,KRW-FOO", "--data-dir", str(ohlcv_dir),
            "--registry", str(registry), "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown market(s) KRW-FOO") and "KRW-ETH" in err


def test_cli_market_without_a_model_exits_2(registry: Path, ohlcv_dir: Path, capsys) -> None:
    argv = ["backtest", "--markets", "KRW-ETH", "--data-dir", str(ohlcv_dir),
            "--registry", str(registry)]  # fmt: skip
    assert main(argv) == 2
    assert "unknown market 'KRW-ETH'" in capsys.readouterr().err


def test_cli_market_without_current_exits_2(
    smoke_bundle: Path, ohlcv_dir: Path, tmp_path: Path, capsys
) -> None:
    ModelRegistry(tmp_path / "reg").register(MARKET, smoke_bundle)  # a candidate, never promoted
    argv = ["backtest", "--markets", MARKET, "--data-dir", str(ohlcv_dir),
            "--registry", str(tmp_path / "reg")]  # fmt: skip
    assert main(argv) == 2
    assert "KRW-BTC has no promoted version yet" in capsys.readouterr().err


def test_cli_routes_sizing_overrides_to_sizing_yaml(
    registry: Path, ohlcv_dir: Path, capsys
) -> None:
    argv = ["backtest", "--markets", MARKET, "--data-dir", str(ohlcv_dir), "--registry",
            str(registry), "--set", "sizing.rule.kelly_fraction=7"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "sizing.yaml" in err and "kelly_fraction" in err
