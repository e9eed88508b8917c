"""The sizing node: how much of the cash (BUY) or of the position (SELL) one signal should move.

Two LLMs (Groq's hosted Llama, a local Ollama model) are asked the same question under one
deadline, and each checks the other: when both answer and agree the lower ratio is taken; when they
disagree the lower is still taken and the reason says so; a lone answer is capped, because nothing
vouched for it; when neither gives a usable answer in time, a deterministic fractional-Kelly rule
decides. The rule is also what the caller gets when no LLM is configured, so the node always
answers, and a ratio outside [min_ratio, max_ratio] can never leave it.

The LLM half lives in `serve.llm_sizer`: its `LLMSizer.size` never raises for an LLM's sake; every
failure (unreachable, 4xx/5xx, not JSON, out of bounds, late) is recorded in
`SizingResult.attempts` with a redacted one-line reason. This module holds the configuration, the
contracts and the rule.

The rule (`rule_sizing`), with p_win/p_loss the probabilities of the signal's side and its
opposite (BUY: p_buy/p_sell; SELL: p_sell/p_buy):

    edge  = max(0, p_win - p_loss)
    BUY:  ratio = kelly_fraction * edge * min(1, vol_reference / volatility)
                  * max(0, 1 - drawdown_penalty * drawdown)
    SELL: ratio = kelly_fraction * edge          (fraction of the position to sell)
    HOLD: ratio = min_ratio                      (nothing to act on)
    then clipped to [min_ratio, max_ratio].

`p_win - p_loss` is the Kelly fraction of an even-odds bet; with the HOLD mass as a third, zero-
return outcome the exact Kelly fraction is (p_win - p_loss) / (p_win + p_loss), so the edge equals
that times (p_win + p_loss): it shrinks the stake when the model mostly expects nothing to happen.
Volatility and drawdown shrink buys only: selling lowers risk, and shrinking a sell in a storm would
keep more exposure, not less.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from pydantic import Field, model_validator

from features.config import CONFIG_DIR, Strict, load_config
from features.domain import AccountState, Signal, checked_probabilities
from features.exchange import InvalidMarketError, check_market
from serve.llm_clients import (
    Attempt,
    GroqConfig,
    OllamaConfig,
)

__all__ = [
    "Attempt",
    "GroqConfig",
    "OllamaConfig",
    "RuleConfig",
    "SizingConfig",
    "SizingRequest",
    "SizingResult",
    "load_sizing_config",
    "rule_sizing",
    "rule_sizing_ratio",
]

Source = Literal["llm-agree", "llm-disagree", "groq", "ollama", "rule", "rule-no-llm"]
SOURCES: frozenset[str] = frozenset(get_args(Source))


class RuleConfig(Strict):
    kelly_fraction: float = Field(0.5, gt=0, le=1)
    vol_reference: float = Field(0.01, gt=0, le=1)  # hourly return std at which buys are unscaled
    drawdown_penalty: float = Field(2.0, ge=0)  # buys shrink to 0 at drawdown 1 / penalty


class SizingConfig(Strict):
    """`configs/sizing.yaml`. Holds no secret: the Groq key is read from GROQ_API_KEY only."""

    min_ratio: float = Field(0.05, gt=0, le=1)
    max_ratio: float = Field(1.0, gt=0, le=1)
    deadline_s: float = Field(8.0, gt=0, le=120)
    agree_tolerance: float = Field(0.10, ge=0, le=1)
    single_source_cap: float = Field(0.5, gt=0, le=1)
    rule: RuleConfig = RuleConfig()
    groq: GroqConfig = GroqConfig()
    ollama: OllamaConfig = OllamaConfig()

    @model_validator(mode="after")
    def _bounds(self) -> SizingConfig:
        if self.min_ratio > self.max_ratio:
            raise ValueError(f"min_ratio {self.min_ratio} exceeds max_ratio {self.max_ratio}")
        if not self.min_ratio <= self.single_source_cap <= self.max_ratio:
            raise ValueError("single_source_cap must lie within [min_ratio, max_ratio]")
        return self

    def clip(self, ratio: float) -> float:
        return min(max(ratio, self.min_ratio), self.max_ratio)


def load_sizing_config(
    path: Path | str = CONFIG_DIR / "sizing.yaml", overrides: list[str] | None = None
) -> SizingConfig:
    return load_config(SizingConfig, path, overrides)


SIZING_VOLATILITY_HOURS = 24  # the rule's "recent volatility": std of 24 hourly returns


def sizing_volatility(closes: Sequence[float], hours: int = SIZING_VOLATILITY_HOURS) -> float:
    """Std of the last `hours` simple hourly returns (0.01 = 1 % an hour), the `volatility` the
    rule reads; 0.0 with fewer than two returns, so a young market is not refused. Serve, the live
    loop and the backtester all size with this one definition."""
    prices = np.asarray(closes, dtype=float)[-(hours + 1) :]
    if len(prices) < 3:
        return 0.0
    return float(np.std(prices[1:] / prices[:-1] - 1.0))


@dataclass(frozen=True)
class SizingRequest:
    """One signal to size. `volatility` is the recent hourly return std (0.01 = 1 % per hour)."""

    market: str
    signal: Signal
    probabilities: tuple[float, float, float]  # sell, hold, buy
    volatility: float
    account: AccountState

    def __post_init__(self) -> None:
        try:
            check_market(self.market)
        except InvalidMarketError as exc:
            raise ValueError(f"SizingRequest.market: {exc}") from exc
        if isinstance(self.signal, bool) or self.signal not in tuple(Signal):
            raise ValueError(f"SizingRequest.signal must be a Signal, got {self.signal!r}")
        object.__setattr__(self, "signal", Signal(self.signal))
        checked = checked_probabilities(self.probabilities, "SizingRequest.probabilities")
        object.__setattr__(self, "probabilities", checked)
        if isinstance(self.volatility, bool) or not isinstance(self.volatility, int | float):
            raise ValueError(f"SizingRequest.volatility must be a number, got {self.volatility!r}")
        if not math.isfinite(self.volatility) or self.volatility < 0:
            raise ValueError(
                f"SizingRequest.volatility must be finite and >= 0, got {self.volatility}"
            )
        if not isinstance(self.account, AccountState):
            raise ValueError(f"SizingRequest.account must be an AccountState, got {self.account!r}")


@dataclass(frozen=True)
class SizingResult:
    """The ratio to act with, who decided it, why (one line, no secrets), and what each LLM did."""

    ratio: float
    source: Source
    reason: str
    attempts: tuple[Attempt, ...] = ()

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ratio) and 0.0 < self.ratio <= 1.0):
            raise ValueError(f"SizingResult.ratio must be in (0, 1], got {self.ratio}")
        if self.source not in SOURCES:
            raise ValueError(f"SizingResult.source must be one of {sorted(SOURCES)}")


# -- the deterministic rule ----------------------------------------------------------------------
def _rule_terms(
    signal: Signal, probabilities: tuple[float, float, float], volatility: float,
    drawdown: float, config: SizingConfig,
) -> tuple[float, float, float, float]:  # fmt: skip
    """(edge, volatility scale, drawdown scale, raw ratio) of the rule for a BUY or a SELL."""
    rule = config.rule
    sell, _, buy = probabilities
    if signal is not Signal.BUY:  # a SELL: no shrinking, selling reduces risk
        edge = max(0.0, sell - buy)
        return edge, 1.0, 1.0, rule.kelly_fraction * edge
    edge = max(0.0, buy - sell)
    vol_scale = 1.0 if volatility <= rule.vol_reference else rule.vol_reference / volatility
    dd_scale = max(0.0, 1.0 - rule.drawdown_penalty * drawdown)
    return edge, vol_scale, dd_scale, rule.kelly_fraction * edge * vol_scale * dd_scale


def rule_sizing_ratio(
    signal: Signal, probabilities: tuple[float, float, float], volatility: float,
    drawdown: float, config: SizingConfig,
) -> float:  # fmt: skip
    """`rule_sizing`'s ratio alone, on inputs a `Prediction` and an `AccountState` checked
    already: the backtester's rule arm sizes every replayed hour, and needs no reason text."""
    if signal is Signal.HOLD:
        return config.min_ratio
    return config.clip(_rule_terms(signal, probabilities, volatility, drawdown, config)[3])


def rule_sizing_ratios(
    tops: np.ndarray, probabilities: np.ndarray, volatility: Sequence[float],
    drawdowns: Sequence[float], config: SizingConfig,
) -> list[float]:  # fmt: skip
    """`rule_sizing_ratio` of many hours at once, each at its own drawdown (the backtester's
    quiet hours): `tops` the top signal's value per row of (sell, hold, buy) `probabilities`.
    The same numbers: `_rule_terms`' float operations, in its order, per row in numpy."""
    rule = config.rule
    p = np.asarray(probabilities, dtype="float64").reshape(-1, 3)
    sell, buy = p[:, 0], p[:, 2]
    vol = np.asarray(volatility, dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):  # the other branch is taken there
        vol_scale = np.where(vol <= rule.vol_reference, 1.0, rule.vol_reference / vol)
    dd_scale = np.maximum(0.0, 1.0 - rule.drawdown_penalty * np.asarray(drawdowns, dtype="float64"))
    bought = rule.kelly_fraction * np.maximum(0.0, buy - sell) * vol_scale * dd_scale
    sold = rule.kelly_fraction * np.maximum(0.0, sell - buy)
    raw = np.where(tops == int(Signal.BUY), bought, sold)
    ratios = np.minimum(np.maximum(raw, config.min_ratio), config.max_ratio)  # `clip`
    return np.where(tops == int(Signal.HOLD), config.min_ratio, ratios).tolist()


def rule_sizing(request: SizingRequest, config: SizingConfig) -> SizingResult:
    """Fractional Kelly on the model's edge, shrunk for volatility and drawdown (see module)."""
    if request.signal is Signal.HOLD:
        return SizingResult(config.min_ratio, "rule", "rule: HOLD places no order; min_ratio")
    signal, probabilities = request.signal, request.probabilities
    edge, vol_scale, dd_scale, raw = _rule_terms(
        signal, probabilities, request.volatility, request.account.drawdown, config
    )
    ratio = config.clip(raw)
    p = dict(zip(("sell", "hold", "buy"), probabilities, strict=True))
    win, loss = ("buy", "sell") if signal is Signal.BUY else ("sell", "buy")
    reason = (
        f"rule: {config.rule.kelly_fraction:g} x Kelly edge {edge:.3f} (p_{win} {p[win]:.2f} - "
        f"p_{loss} {p[loss]:.2f}) x vol {vol_scale:.2f} x drawdown {dd_scale:.2f} = {raw:.3f}"
        f" -> {ratio:.3f}"
    )
    return SizingResult(ratio, "rule", reason)
