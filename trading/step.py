"""One market-hour, from prediction to the Decision that may be sent: the live loop and the
backtester both call `plan_hour`, so a backtest trades exactly as the loop would.

The order of the rules is fixed here and nowhere else:
    guard.observe(equity)  -> the kill switch sees this hour's equity before anything is sent
    decide(...)            -> the model's signal and the sizing ratio become an order (or none)
    apply_emergency(...)   -> a whole-position sell replaces it when the emergency score fires
    apply_barrier_exits(.) -> so does a triple-barrier model's take-profit, stop or time limit
    apply_stops(...)       -> so does the hard stop-loss or the trailing stop (price only)
    gate_stale(...)        -> a stale model opens no position (its sells still go out)
    gate_novel(...)        -> nor does a novel input (train.novelty; its sells still go out)
    guard.gate(...)        -> a switched-off account sends no buys (sells still go out)
An hour without a usable prediction (Serve silent, no model, a refusal) goes through
`protect_hour` instead: the kill switch still observes, and the price-only stops still sell (the
label's exits need the label, which comes with the model's answer: a time limit passed in such
an hour sells at the next answered one).
Everything is pure: same inputs, same (Decision, RiskGuard), so a replay of recorded live hours
reproduces the live decisions, identifiers included.
The backtester does not call these for the hours of a flat account whose acted signal is not a
BUY (`trading.quiet_hours`): it relies on nothing here acting on an account that holds nothing
without an order (the early return in `plan_hour`, the stops in `protect_hour`). A rule that
would must be taught to `trading.quiet_hours.QuietHours` too (tests/trading/test_quiet_hours.py
compares both paths).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from features.barriers import LabelMoves
from features.domain import AccountState, Decision, Prediction, Side, Signal
from serve.sizing import SIZING_VOLATILITY_HOURS, sizing_volatility
from trading.barrier_exits import apply_barrier_exits
from trading.config import EmergencyConfig, TradingConfig
from trading.policy import decide
from trading.risk import RiskGuard, apply_emergency, emergency_score, loss_from_entry
from trading.risk import volatility_ratio as spike_ratio
from trading.stops import apply_stops, holding, stop_order, stop_reason
from trading.upbit_rules import is_dust

PROTECTIVE = "protective"  # the sizing source of a decision made by the price-only rules alone
NO_MODEL = ""  # its model version: no model answered for that hour


def hour_emergency_score(
    account: AccountState,
    price: float,
    closes: np.ndarray,
    sell_probability: float,
    config: EmergencyConfig,
    spike: float | None = None,
) -> float:
    """The emergency score of this hour; 0 when nothing sellable is held.

    A flat or dust position cannot be sold by the emergency rule anyway, so the volatility ratio
    (the costly part, a std over `baseline_hours` closes) is only computed while holding, and
    not at all when the caller has it (`spike`: `rolling_volatility_ratio`'s entry for the hour).
    """
    if not config.enabled or is_dust(account.position * price):
        return 0.0
    loss = loss_from_entry(account.entry_price, price)
    if spike is None:
        spike = spike_ratio(closes, config.recent_hours, config.baseline_hours)
    return emergency_score(loss, spike, sell_probability, config)


def plan_hour(
    prediction: Prediction,
    ratio: float,
    sizing_source: str,
    account: AccountState,
    price: float,
    hour: datetime,
    closes: np.ndarray,
    guard: RiskGuard,
    config: TradingConfig,
    *,
    high: float = 0.0,
    entered: datetime | None = None,
    stale: str = "",
    moves: LabelMoves | None = None,
    novel: str = "",
    spike: float | None = None,
) -> tuple[Decision, RiskGuard]:
    """The Decision for `hour` (priced at its close `price`) and the guard after seeing it.

    `closes` are the market's recent closes ending with `price` (at least
    `risk.emergency.baseline_hours + 1` of them for a full volatility baseline; fewer only weaken
    the spike term to "no evidence"). `account.equity` must be the account's equity marked at
    `price` (live: the whole exchange account's): it is what the kill switch observes. `high` is
    the highest close since entry (`trading.stops.follow_high`; 0: unknown, the entry counts),
    `entered` the hour the position was opened (the label's time limit counts from it; None:
    unknown, no time limit); `stale` says why the model is stale ("" when it is not), `novel` why
    the input is novel. `moves`: the model's label moves, which `policy.margin` prices the edge
    with (`trading.policy.decide`), and whose barriers close the position
    (`trading.barrier_exits`).
    `spike`: the volatility ratio of `closes` when the caller has it already (the backtester
    computes every hour's at once); None computes it from `closes`.
    """
    guard = guard.observe(hour, account.equity)
    decision = decide(prediction, ratio, sizing_source, account, price, hour, config.policy, moves)
    if decision.order is None and not holding(account, price):
        return decision, guard  # nothing to sell and nothing to buy: no rule below can act
    emergency = config.risk.emergency
    score = hour_emergency_score(
        account, price, closes, prediction.probabilities[Signal.SELL], emergency, spike
    )
    decision = apply_emergency(decision, account, price, score, emergency)
    barriers = moves.barriers if moves is not None else None
    decision = apply_barrier_exits(decision, account, price, barriers, entered)
    decision = apply_stops(decision, account, price, high, config.risk.stops)
    return guard.gate(gate_novel(gate_stale(decision, stale), novel)), guard


def protect_hour(
    market: str,
    account: AccountState,
    price: float,
    hour: datetime,
    guard: RiskGuard,
    config: TradingConfig,
    *,
    high: float = 0.0,
    why: str = "",
) -> tuple[Decision | None, RiskGuard]:
    """An hour without a usable prediction (`why`): the kill switch observes the equity, and a
    stop that fires sells the whole position (a Decision with `PROTECTIVE` sizing and no model
    version); None when nothing is to be sent."""
    guard = guard.observe(hour, account.equity)
    reason = stop_reason(account, price, high, config.risk.stops)
    if reason is None:
        return None, guard
    text = f"{reason}; no model decided this hour ({why})" if why else reason
    order = stop_order(market, account.position, hour, text)
    decision = Decision(market, hour, Signal.SELL, 0.0, PROTECTIVE, NO_MODEL, order, text)
    return guard.gate(decision), guard


def gate_stale(decision: Decision, stale: str) -> Decision:
    """`decision` without its BUY when the model is stale (`stale` says why); sells go out."""
    return _no_new_position(decision, stale, "a stale model")


def gate_novel(decision: Decision, novel: str) -> Decision:
    """`decision` without its BUY when the input is novel (`novel` says why): the model never
    saw hours like it, so its BUY is a guess; sells and the stops still go out."""
    return _no_new_position(decision, novel, "a novel input")


def _no_new_position(decision: Decision, why: str, on: str) -> Decision:
    if not why or decision.order is None or decision.order.side is not Side.BID:
        return decision
    reason = f"{why}: BUY not sent (no new position on {on}); was: {decision.reason}"
    return replace(decision, order=None, reason=reason)


def rolling_sizing_volatility(
    closes: np.ndarray, hours: int = SIZING_VOLATILITY_HOURS
) -> np.ndarray:
    """`sizing_volatility` at every position of `closes` at once (the backtester's batch form):
    entry i equals `sizing_volatility(closes[: i + 1], hours)`, the same numpy std per window."""
    prices = np.asarray(closes, dtype=float)
    out = np.zeros(len(prices))
    head = min(hours, len(prices))
    for i in range(head):  # partial windows at the start: too few to vectorise usefully
        out[i] = sizing_volatility(prices[: i + 1], hours)
    if len(prices) > hours:
        returns = prices[1:] / prices[:-1] - 1.0
        out[hours:] = np.std(sliding_window_view(returns, hours), axis=1)
    return out
