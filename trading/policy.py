"""The one rule that turns a prediction and a sizing ratio into an order (or a reason for none).

The live loop and the backtester both call `decide`, so a backtest trades exactly as the loop
would. It is pure: same inputs, same Decision, identifier included, which is what makes an order
idempotent across restarts. Risk overrides (emergency sell, kill switch) are applied afterwards by
`trading.risk`, so this file stays about the model's signal alone.

Rules the caller may rely on:
- BUY spends `ratio` of the account as total outlay (order + fee): flat, that is
  `bid_spend(cash, ratio)`, i.e. cash x ratio / 1.0005, floored to whole KRW. While already
  holding, `buy_when_holding="top_up"` buys only the shortfall up to ratio x equity (equity =
  cash + position x price), capped by the cash there is; "skip" buys nothing. One formula covers
  both cases, since a flat account's equity is its cash.
- SELL sells `sell_fraction` of the position; when what would remain is dust (< 5,000 KRW) it
  sells everything instead, so no unsellable remainder is left behind.
- A position worth less than MIN_ORDER_KRW is dust: it is reported, never sold.
- Any order below MIN_ORDER_KRW is skipped with the reason in `Decision.reason`.
- `Decision.signal` is the signal acted on (a low-confidence BUY becomes HOLD); the model's own
  view stays in `Decision.probabilities`.
- With `policy.margin` set, the probabilities decide, not the argmax: BUY only when the expected
  after-fee move `features.barriers.expected_edge` (from the label's `moves`) exceeds the margin,
  SELL when the argmax is SELL, HOLD otherwise. Without `moves` a set margin is an error: the
  edge of an unknown label cannot be priced, and guessing would trade on a wrong scale.
- With `policy.sell_margin` set, a call that is not a BUY is a SELL only when the expected fall
  `features.barriers.expected_fall` exceeds it, HOLD otherwise: a held position is kept through
  a weak SELL (the exits of `trading.step` still close it). It needs `moves` too.
"""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np

from features.barriers import LabelMoves, acted_signal, row_edge, row_fall
from features.domain import AccountState, Decision, Order, Prediction, Side, Signal
from features.exchange import FEE_RATE, MIN_ORDER_KRW
from trading.broker import order_identifier
from trading.config import PolicyConfig
from trading.upbit_rules import bid_spend, is_dust

OrderChoice = tuple[Order | None, str]
HOLD_REASON = "HOLD: no order"
NOTHING_TO_SELL = "SELL: no position to sell"


def decide(
    prediction: Prediction,
    ratio: float,
    sizing_source: str,
    account: AccountState,
    price: float,
    hour: datetime,
    config: PolicyConfig,
    moves: LabelMoves | None = None,
) -> Decision:
    """What to do in `prediction.market` for the candle hour `hour`, priced at close `price`;
    `moves`: the model's label moves, which `config.margin` needs."""
    if not math.isfinite(price) or price <= 0:
        raise ValueError(f"price must be finite and > 0, got {price}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    # The margin, when set, replaces the argmax rule and min_confidence; the sell margin, when
    # set, the argmax SELL.
    signal, note = _acted_signal(
        prediction, config.margin, config.min_confidence, moves, config.sell_margin
    )
    if signal is Signal.BUY:
        order, reason = _buy(prediction.market, ratio, account, price, hour, config)
    elif signal is Signal.SELL:
        order, reason = _sell(prediction.market, account, price, hour, config)
    else:
        order, reason = None, HOLD_REASON
    return Decision(
        market=prediction.market,
        time=hour,
        signal=signal,
        ratio=ratio,
        sizing_source=sizing_source,
        model_version=prediction.model_version,
        order=order,
        reason=note + reason,
        probabilities=prediction.probabilities,
    )


def _acted_signal(
    prediction: Prediction,
    margin: float | None,
    min_confidence: float,
    moves: LabelMoves | None,
    sell_margin: float | None = None,
) -> tuple[Signal, str]:
    probabilities = prediction.probabilities
    signal = acted_signal(probabilities, margin, moves, min_confidence, sell_margin)
    return signal, signal_note(
        probabilities, signal, prediction.signal, margin, min_confidence, moves, sell_margin
    )


def signal_note(
    probabilities: tuple[float, float, float],
    signal: Signal,
    top: Signal,
    margin: float | None,
    min_confidence: float,
    moves: LabelMoves | None,
    sell_margin: float | None = None,
) -> str:
    """What `decide`'s reason starts with: why the acted `signal` is not the model's `top` class
    (a low confidence, a BUY whose edge is not above the margin, a SELL whose fall is not above
    the sell margin) or what cleared a margin; "" when there is nothing to say. Non-empty,
    without a margin, only when the top probability is below `min_confidence`; with one, only
    for an acted BUY or a `top` BUY; with a sell margin, also for an acted SELL or a `top` SELL
    (`unplaced_reasons` relies on it)."""
    note = _buy_note(probabilities, signal, top, margin, min_confidence, moves)
    if sell_margin is None or signal is Signal.BUY:
        return note
    fall = row_fall(probabilities, moves)  # type: ignore[arg-type]  # checked by acted_signal
    if signal is Signal.SELL:
        return f"{note}fall {fall:+.4%} > sell margin {sell_margin:+.4%}; "
    if top is Signal.SELL:
        return f"{note}SELL with fall {fall:+.4%} not above sell margin {sell_margin:+.4%}; "
    return note


def _buy_note(
    probabilities: tuple[float, float, float],
    signal: Signal,
    top: Signal,
    margin: float | None,
    min_confidence: float,
    moves: LabelMoves | None,
) -> str:
    if margin is None:
        confidence = max(probabilities)
        if confidence >= min_confidence:
            return ""
        return (
            f"{top.name} at confidence {confidence:.2f} is below "
            f"min_confidence {min_confidence:.2f}; "
        )
    edge = row_edge(probabilities, moves)  # type: ignore[arg-type]  # checked by acted_signal
    if signal is Signal.BUY:
        return f"edge {edge:+.4%} > margin {margin:+.4%}; "
    if top is Signal.BUY:
        return f"BUY with edge {edge:+.4%} not above margin {margin:+.4%}; "
    return ""


def unplaced_reasons(
    probabilities: np.ndarray,
    acted: np.ndarray,
    config: PolicyConfig,
    moves: LabelMoves | None,
) -> np.ndarray:
    """`decide`'s `Decision.reason` for many hours of a flat account at once, each hour's acted
    signal (`acted`, `features.barriers.acted_signals`) a HOLD or a SELL: no order, nothing to
    sell. The backtester records its quiet hours with it; `signal_note` writes every note, called
    only on the hours where it can say something."""
    rows = np.asarray(probabilities, dtype="float64").reshape(-1, 3)  # (sell, hold, buy) rows
    top = rows.argmax(axis=1)  # Prediction.signal: the first maximum wins, as numpy's argmax
    if config.margin is None:
        noted = rows.max(axis=1) < config.min_confidence
    else:
        noted = top == int(Signal.BUY)
    if config.sell_margin is not None:
        noted |= (top == int(Signal.SELL)) | (acted == int(Signal.SELL))
    reasons = np.where(acted == int(Signal.SELL), NOTHING_TO_SELL, HOLD_REASON).astype(object)
    for k in np.flatnonzero(noted):
        note = signal_note(
            tuple(rows[k].tolist()), Signal(int(acted[k])), Signal(int(top[k])), config.margin,
            config.min_confidence, moves, config.sell_margin,
        )  # fmt: skip
        reasons[k] = note + reasons[k]
    return reasons


def _whole_krw_bid(outlay: float) -> float:
    """Whole KRW whose amount plus fee never exceeds `outlay`, even after float rounding."""
    krw = float(math.floor(bid_spend(outlay, 1.0)))
    if krw * (1.0 + FEE_RATE) > outlay:
        krw -= 1.0
    return max(krw, 0.0)


def _buy(
    market: str,
    ratio: float,
    account: AccountState,
    price: float,
    hour: datetime,
    config: PolicyConfig,
) -> OrderChoice:
    if ratio == 0:
        return None, "BUY with ratio 0: the sizing chose to spend nothing"
    position_value = account.position * price
    if not is_dust(position_value) and config.buy_when_holding == "skip":
        held = f"{position_value:,.0f} KRW"
        return None, f"BUY skipped: already holding {held} (buy_when_holding=skip)"
    target = ratio * (account.cash + position_value)
    outlay = min(target - position_value, account.cash)
    if outlay <= 0:
        return None, (
            f"BUY: position {position_value:,.0f} KRW already at or above the target "
            f"{target:,.0f} KRW (ratio {ratio:.2f} of equity)"
        )
    krw = _whole_krw_bid(outlay)
    if krw < MIN_ORDER_KRW:
        return None, (
            f"BUY skipped: {krw:,.0f} KRW is below Upbit's minimum order of "
            f"{MIN_ORDER_KRW:,.0f} KRW (ratio {ratio:.2f}, cash {account.cash:,.0f} KRW)"
        )
    reason = f"BUY {krw:,.0f} KRW (ratio {ratio:.2f}, cash {account.cash:,.0f} KRW)"
    identifier = order_identifier(market, hour, Side.BID)
    return Order(market, Side.BID, krw_amount=krw, identifier=identifier, reason=reason), reason


def _sell(
    market: str,
    account: AccountState,
    price: float,
    hour: datetime,
    config: PolicyConfig,
) -> OrderChoice:
    position_value = account.position * price
    if account.position <= 0:
        return None, NOTHING_TO_SELL
    if is_dust(position_value):
        return None, (
            f"SELL: position worth {position_value:,.0f} KRW is dust (below Upbit's minimum "
            f"order of {MIN_ORDER_KRW:,.0f} KRW), kept"
        )
    volume = account.position * config.sell_fraction
    whole = is_dust((account.position - volume) * price)
    if whole:
        volume = account.position
    if is_dust(volume * price):
        return None, (
            f"SELL skipped: {config.sell_fraction:.0%} of the position is worth "
            f"{volume * price:,.0f} KRW, below Upbit's minimum order of {MIN_ORDER_KRW:,.0f} KRW"
        )
    share = "all" if volume == account.position else f"{volume / account.position:.0%}"
    reason = f"SELL {share} of the position: {volume:.8g} units (~{volume * price:,.0f} KRW)"
    if whole and config.sell_fraction < 1.0:
        reason += "; the rest would have been dust"
    identifier = order_identifier(market, hour, Side.ASK)
    return Order(market, Side.ASK, volume=volume, identifier=identifier, reason=reason), reason
