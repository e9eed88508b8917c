"""The sizing node: how much of the cash (BUY) or of the position (SELL) one signal should move.

Two LLMs (Groq's hosted Llama, a local Ollama model) are asked the same question under one
deadline, and each checks the other: when both answer and agree the lower ratio is taken; when they
disagree the lower is still taken and the reason says so; a lone answer is capped, because nothing
vouched for it; when neither gives a usable answer in time, a deterministic fractional-Kelly rule
decides. The rule is also what the caller gets when no LLM is configured, so the node always
answers, and a ratio outside [min_ratio, max_ratio] can never leave it.

`LLMSizer.size` never raises for an LLM's sake: every failure (unreachable, 4xx/5xx, not JSON,
out of bounds, late) is recorded in `SizingResult.attempts` with a redacted one-line reason.

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

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from pydantic import Field, model_validator

from features.config import CONFIG_DIR, Strict, load_config
from features.domain import AccountState, Signal, checked_probabilities
from features.exchange import InvalidMarketError, check_market
from serve.llm_clients import (
    GROQ_BASE_URL_ENV,
    GROQ_KEY_ENV,
    OLLAMA_HOST_ENV,
    Attempt,
    ChatClient,
    ClientSet,
    GroqConfig,
    OllamaConfig,
    Redactor,
    build_chat_clients,
    describe_error,
    one_line,
    parse_sizing_reply,
)

__all__ = [
    "Attempt",
    "GroqConfig",
    "LLMSizer",
    "OllamaConfig",
    "RuleConfig",
    "SizingConfig",
    "SizingRequest",
    "SizingResult",
    "load_sizing_config",
    "rule_sizing",
    "rule_sizing_ratio",
]

log = logging.getLogger(__name__)

Source = Literal["llm-agree", "llm-disagree", "groq", "ollama", "rule", "rule-no-llm"]
SOURCES: frozenset[str] = frozenset(get_args(Source))
CANCEL_GRACE_S = 0.25  # how long a cancelled late call may take to unwind its connection
MAX_REASON_CHARS = 400
ENV_KEYS = (GROQ_KEY_ENV, GROQ_BASE_URL_ENV, OLLAMA_HOST_ENV)


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
    signals: Sequence[Signal], probabilities: Sequence[tuple[float, float, float]],
    volatility: Sequence[float], drawdown: float, config: SizingConfig,
) -> list[float]:  # fmt: skip
    """`rule_sizing_ratio` of many hours at one drawdown (the backtester's quiet hours): the
    same numbers, a HOLD's without a call."""
    return [
        config.min_ratio if s is Signal.HOLD else rule_sizing_ratio(s, p, v, drawdown, config)
        for s, p, v in zip(signals, probabilities, volatility, strict=True)
    ]


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


# -- the prompt ----------------------------------------------------------------------------------
SYSTEM_PROMPT = """\
You size orders for an automated hourly crypto trading system on Upbit's KRW market.
A model predicted the next hours of one market as probabilities of SELL, HOLD and BUY, and the
signal is its most likely class. Decide what fraction of the account to act with:
- BUY: the fraction of the available KRW cash to spend.
- SELL: the fraction of the coin position to sell.
- HOLD: no order is placed; answer the minimum.
Size down when the probabilities are close together (an unsure model), when hourly volatility is
high and when the account is in drawdown; never size a buy up in those cases. Selling reduces risk,
so do not shrink a sell for volatility or drawdown. rule_ratio is what a fractional Kelly rule
gives: a reference, not the answer.
Reply with one JSON object and nothing else: {"ratio": <number>, "reason": "<one sentence>"}.
ratio must be between {min_ratio} and {max_ratio} inclusive; any other value is discarded."""


def sizing_prompt(
    request: SizingRequest, config: SizingConfig, rule_ratio: float
) -> tuple[str, str]:
    """(system, user) messages: the task and bounds, then the facts of this request as JSON."""
    system = SYSTEM_PROMPT.replace("{min_ratio}", f"{config.min_ratio:g}")
    system = system.replace("{max_ratio}", f"{config.max_ratio:g}")
    account = request.account
    facts = {
        "market": request.market,
        "signal": request.signal.name,
        "probabilities": dict(zip(("sell", "hold", "buy"), request.probabilities, strict=True)),
        "hourly_volatility": round(request.volatility, 6),
        "account": {
            "cash_krw": round(account.cash, 2),
            "position_units": account.position,
            "entry_price_krw": account.entry_price,
            "equity_krw": round(account.equity, 2),
            "drawdown": round(account.drawdown, 4),
        },
        "rule_ratio": round(rule_ratio, 4),
    }
    return system, json.dumps(facts)


# -- asking and deciding -------------------------------------------------------------------------
async def _ask(
    client: ChatClient, system: str, user: str, config: SizingConfig, redact: Redactor
) -> Attempt:
    """One client's attempt; every failure becomes an Attempt, nothing is raised."""
    start = time.monotonic()
    try:
        content = await client.complete(system, user)
        ratio, reason = parse_sizing_reply(content, config.min_ratio, config.max_ratio)
    except Exception as exc:  # noqa: BLE001 (an LLM failure must never reach the caller)
        detail = redact(describe_error(exc))
        return Attempt(client.name, "failed", None, detail, time.monotonic() - start)
    return Attempt(client.name, "ok", ratio, redact(reason), time.monotonic() - start)


async def _ask_all(
    clients: ClientSet, system: str, user: str, config: SizingConfig
) -> tuple[Attempt, ...]:
    """Ask every client at once under one deadline; a late call is cancelled and recorded."""
    tasks = {
        asyncio.create_task(_ask(c, system, user, config, clients.redact)): c
        for c in clients.clients
    }
    done, pending = await asyncio.wait(tasks, timeout=config.deadline_s)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=CANCEL_GRACE_S)
    late = f"no answer within the {config.deadline_s:g} s deadline"
    return tuple(
        task.result() if task in done else Attempt(c.name, "late", None, late, config.deadline_s)
        for task, c in tasks.items()
    )


def _summary(attempts: tuple[Attempt, ...]) -> str:
    return "; ".join(f"{a.client} {a.outcome}: {a.detail}" for a in attempts if not a.ok)


def decide(attempts: tuple[Attempt, ...], rule: SizingResult, config: SizingConfig) -> SizingResult:
    """Dual verification over the attempts; the rule when no LLM gave a usable answer."""
    valid = sorted((a for a in attempts if a.ok), key=lambda a: a.ratio or 0.0)
    if len(valid) >= 2:
        low, high = valid[0], valid[-1]
        gap = (high.ratio or 0.0) - (low.ratio or 0.0)
        pair = f"{low.client} {low.ratio:.3f} and {high.client} {high.ratio:.3f}"
        if gap <= config.agree_tolerance + 1e-9:
            source: Source = "llm-agree"
            head = f"{pair} agree within {config.agree_tolerance:g}; took the lower"
        else:
            source = "llm-disagree"
            head = f"{pair} disagree (gap {gap:.3f} > {config.agree_tolerance:g}); took the lower"
        return SizingResult(config.clip(low.ratio or 0.0), source, f"{head}: {low.detail}")
    if len(valid) == 1:
        only = valid[0]
        ratio = config.clip(min(only.ratio or 0.0, config.single_source_cap))
        capped = f", capped at {config.single_source_cap:g}" if ratio < (only.ratio or 0.0) else ""
        head = f"only {only.client} answered {only.ratio:.3f}{capped}"
        others = _summary(attempts)
        text = f"{head} ({others}): {only.detail}" if others else f"{head}: {only.detail}"
        return SizingResult(ratio, only.client, text)  # type: ignore[arg-type]
    return replace(rule, reason=f"{rule.reason}; no usable LLM answer ({_summary(attempts)})")


class LLMSizer:
    """Two LLMs checking each other, falling back to `rule_sizing`; never raises for an LLM.

    `env` is where the Groq key and the optional GROQ_BASE_URL / OLLAMA_HOST come from (default:
    the process environment, read once here). Clients are built lazily per event loop: an httpx
    connection pool cannot outlive the loop it was opened on, and `size_sync` runs a fresh loop.
    """

    def __init__(self, config: SizingConfig, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        source = os.environ if env is None else env
        self._env = {k: source[k] for k in ENV_KEYS if k in source}
        self._clients: ClientSet | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _clients_for_running_loop(self) -> ClientSet:
        loop = asyncio.get_running_loop()
        if self._clients is None or self._loop is not loop:
            self._clients = build_chat_clients(self.config.groq, self.config.ollama, self._env)
            self._loop = loop
        return self._clients

    async def size(self, request: SizingRequest) -> SizingResult:
        clients = self._clients_for_running_loop()
        rule = rule_sizing(request, self.config)
        if not clients.clients:
            reason = f"{rule.reason}; no LLM configured ({_summary(clients.skipped)})"
            return replace(rule, source="rule-no-llm", reason=reason, attempts=clients.skipped)
        system, user = sizing_prompt(request, self.config, rule.ratio)
        attempts = clients.skipped + await _ask_all(clients, system, user, self.config)
        for attempt in attempts:
            if attempt.outcome in ("failed", "late"):
                log.warning(
                    "sizing %s: %s %s: %s",
                    request.market,
                    attempt.client,
                    attempt.outcome,
                    attempt.detail,
                )
        result = decide(attempts, rule, self.config)
        reason = one_line(clients.redact(result.reason), MAX_REASON_CHARS)
        return replace(result, reason=reason, attempts=attempts)

    def size_sync(self, request: SizingRequest) -> SizingResult:
        """`size` for callers without an event loop (CLI, backtests); not from inside a loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._size_and_close(request))
        raise RuntimeError("size_sync was called inside a running event loop; await size()")

    async def _size_and_close(self, request: SizingRequest) -> SizingResult:
        try:
            return await self.size(request)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP pools of the current loop's clients (the next call builds new ones)."""
        clients, self._clients, self._loop = self._clients, None, None
        for client in clients.clients if clients else ():
            try:
                await client.aclose()
            except Exception as exc:  # noqa: BLE001 (closing must not mask the answer)
                log.debug("closing %s failed: %s", client.name, type(exc).__name__)
