"""The LLM half of the sizing node: the prompt, both LLMs asked under one deadline, and the dual
verification that turns their answers (or their failures) into one ratio, falling back to the
deterministic rule of `serve.sizing`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import replace

from serve.llm_clients import (
    GROQ_BASE_URL_ENV,
    GROQ_KEY_ENV,
    OLLAMA_HOST_ENV,
    Attempt,
    ChatClient,
    ClientSet,
    Redactor,
    build_chat_clients,
    describe_error,
    one_line,
    parse_sizing_reply,
)
from serve.sizing import SizingConfig, SizingRequest, SizingResult, Source, rule_sizing

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 0.25  # how long a cancelled late call may take to unwind its connection
MAX_REASON_CHARS = 400
ENV_KEYS = (GROQ_KEY_ENV, GROQ_BASE_URL_ENV, OLLAMA_HOST_ENV)


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
