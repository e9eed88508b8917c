"""A Tune trial scores the calls the trading policy would act on, so searching the decision
margin changes a trial's score; and it reports the after-fee result of trading those calls.

Pure pieces of `train.tune_trial` on real BTC hours, no Ray: the trial's policy from its search
values (through trading.yaml, as `train tune` resolves it), its reference score and its replay.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.config import load_features_config
from features.folds import AnchoredFold
from train.config import load_train_config
from train.model_config import ModelConfig, apply_search
from train.research_jobs import MarketIndex
from train.tune_cli import trial_trading
from train.tune_trial import reference_score, trading_score, trial_policy

MARKET = "KRW-BTC"
FOLDS = [("2025-03-01", "2025-03-31"), ("2025-03-31", "2025-04-30")]


def _predictions(index: MarketIndex, hours: pd.DatetimeIndex) -> pd.DataFrame:
    """Probabilities that lean the right way half the time (the next 6 h's move), with many
    argmax BUYs whose edge is small: p_buy 0.45-0.6 over p_sell 0.1-0.3."""
    rng = np.random.default_rng(0)
    close = pd.Series(index.close, index=index.times)
    up = (close.shift(-6) > close).reindex(hours).to_numpy() | (rng.random(len(hours)) < 0.3)
    buy = np.where(up, rng.uniform(0.45, 0.6, len(hours)), rng.uniform(0.05, 0.2, len(hours)))
    sell = np.where(up, rng.uniform(0.1, 0.3, len(hours)), rng.uniform(0.45, 0.7, len(hours)))
    sell = np.minimum(sell, 0.95 - buy)
    frame = pd.DataFrame({"p_sell": sell, "p_hold": 1 - buy - sell, "p_buy": buy}, index=hours)
    frame.index.name = "time"
    return frame


def _trial_inputs(
    real_candles: dict[str, pd.DataFrame],
) -> tuple[MarketIndex, list[AnchoredFold], pd.DataFrame, ModelConfig]:
    """BTC's timeline, the two folds, their hours' probabilities and the smoke gbm's config."""
    candles = real_candles[MARKET]
    index = MarketIndex(MARKET, candles.index, candles["close"].to_numpy(),
                        np.arange(len(candles)), {})  # fmt: skip
    folds = [
        AnchoredFold(n, pd.Timestamp(a), pd.Timestamp(b), np.array([]), np.array([]))
        for n, (a, b) in enumerate(FOLDS)
    ]
    hours = candles.index[(candles.index >= FOLDS[0][0]) & (candles.index < FOLDS[-1][1])]
    base = ModelConfig(family="gbm", profile_name="smoke", features=load_features_config(),
                       profile=load_train_config().profile("smoke"))  # fmt: skip
    return index, folds, _predictions(index, hours), base


def test_two_trials_differing_only_in_margin_score_differently(real_candles) -> None:
    index, folds, predictions, base = _trial_inputs(real_candles)
    research = load_train_config().research
    trading = trial_trading(research.arm)
    end = folds[-1].test_end

    def score(values: dict) -> dict:
        config = apply_search(base, values)
        policy = trial_policy(config, trading)
        calls = policy.calls(predictions)
        scores = reference_score(predictions, index, research, end, calls)
        overrides = config.trading_overrides()
        return scores | trading_score(predictions, index, folds, policy, trading, overrides)

    argmax_sells = {"trading.policy.sell_margin": None}  # the shipped sell margin off
    argmax = score({"trading.policy.margin": None} | argmax_sells)
    plain = reference_score(predictions, index, research, end)  # the argmax, as before
    assert argmax["score_balanced_accuracy"] == plain["score_balanced_accuracy"]
    assert argmax["buy_calls"] == plain["buy_calls"] > 100
    strict = score(
        {"trading.policy.margin": 0.001} | argmax_sells
    )  # edge = 0.005 (p_buy - p_sell) - 0.001
    assert 0 < strict["buy_calls"] < argmax["buy_calls"] / 2  # weak BUYs became HOLDs
    assert strict["score_balanced_accuracy"] != argmax["score_balanced_accuracy"]
    assert strict["score_log_loss"] == argmax["score_log_loss"]  # the probabilities are the same
    assert strict["score_trades"] != argmax["score_trades"]
    assert strict["score_return"] != argmax["score_return"]
    for s in (argmax, strict):
        assert np.isfinite(s["score_return"]) and 0 <= s["score_max_drawdown"] < 1


def test_a_trial_with_a_sell_margin_holds_through_weak_sells(real_candles) -> None:
    """`trading.policy.sell_margin` in the search reaches the trial's calls and its replay: weak
    SELLs become HOLDs, so the replay holds its positions longer."""
    index, folds, predictions, base = _trial_inputs(real_candles)
    trading = trial_trading(load_train_config().research.arm)

    def run(sell_margin: float | None) -> tuple[np.ndarray, dict]:
        config = apply_search(base, {"trading.policy.sell_margin": sell_margin})
        policy = trial_policy(config, trading)
        overrides = config.trading_overrides()
        calls = policy.calls(predictions)
        return calls, trading_score(predictions, index, folds, policy, trading, overrides)

    argmax, argmax_score = run(None)
    held, held_score = run(0.002)  # SELL only where 0.005 (p_sell - p_buy) > 0.002
    assert (held == 0).sum() < 0.8 * (argmax == 0).sum()  # weak SELLs became HOLDs
    assert (held == 2).sum() == (argmax == 2).sum()  # the buys are the margin's alone
    assert held_score["score_exposure"] > argmax_score["score_exposure"]


def test_a_quantile_trial_prices_each_fold_with_its_own_threshold(real_candles) -> None:
    """A quantile label's threshold is fitted per fold: its predictions carry it, and a margin
    prices each fold's calls with that fold's threshold; predictions that carry none are refused
    (their moves are truly unknown)."""
    _, _, predictions, base = _trial_inputs(real_candles)
    second = predictions.index >= FOLDS[1][0]
    predictions["fold"] = np.where(second, 1, 0)
    train_cfg = load_train_config()
    values = {"features.labels.mode": "quantile", "trading.policy.margin": 0.001}
    policy = trial_policy(apply_search(base, values), trial_trading(train_cfg.research.arm))
    with pytest.raises(ValueError, match="label moves are unknown.*quantile"):
        policy.calls(predictions)  # no fold threshold: nothing prices the margin

    def buys(first: float, later: float) -> tuple[int, int]:
        thresholds = np.where(second, later, first)
        calls = policy.calls(predictions.assign(label_threshold=thresholds))
        return int((calls[~second] == 2).sum()), int((calls[second] == 2).sum())

    same = buys(0.006, 0.006)
    wider = buys(0.006, 0.02)  # the second fold's model learned a BUY means a 2 % rise
    assert wider[0] == same[0], "the first fold's calls read the second fold's threshold"
    assert wider[1] > same[1], "the second fold's calls ignored its own threshold"
