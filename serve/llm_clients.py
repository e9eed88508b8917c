"""The two LLM adapters the sizing node asks (Groq's hosted API, a local Ollama), one interface.

Each adapter turns a system and a user message into the model's raw reply text and nothing more:
judging the reply (is it JSON, is the ratio in bounds) is `parse_sizing_reply`, and deciding
between two replies is `serve.sizing`. Keeping the SDKs behind `ChatClient` lets the sizer treat a
hosted model, a local model and a test's stand-in server alike.

Secrets: the Groq key is read from the environment by `build_chat_clients` only (configs hold no
secrets), is handed to the SDK, and is scrubbed from every error text by `Redactor` before that
text is logged or returned: SDK error messages embed the server's reply body, and an
OpenAI-compatible server may echo the key it was offered.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import groq
import httpx
import ollama
from pydantic import Field

from features.config import Strict

GROQ_KEY_ENV = "GROQ_API_KEY"
GROQ_BASE_URL_ENV = "GROQ_BASE_URL"
GROQ_DEFAULT_BASE_URL = "https://api.groq.com"  # the SDK appends /openai/v1/chat/completions
OLLAMA_HOST_ENV = "OLLAMA_HOST"
OLLAMA_DEFAULT_HOST = "http://127.0.0.1:11434"
MAX_DETAIL_CHARS = 240
REDACTED = "[redacted]"

Outcome = Literal["ok", "failed", "late", "skipped"]


class GroqConfig(Strict):
    enabled: bool = True
    model: str = "llama-3.3-70b-versatile"
    timeout_s: float = Field(6.0, gt=0, le=120)
    base_url: str | None = None  # None: env GROQ_BASE_URL, else https://api.groq.com
    max_tokens: int = Field(200, ge=16, le=4096)


class OllamaConfig(Strict):
    enabled: bool = True
    model: str = "llama3.1:8b"
    host: str | None = None  # None: env OLLAMA_HOST, else http://127.0.0.1:11434
    timeout_s: float = Field(8.0, gt=0, le=120)
    max_tokens: int = Field(200, ge=16, le=4096)


@dataclass(frozen=True)
class Attempt:
    """What one LLM did for one request, kept in the result so a failure is never silent.

    `detail` is the model's own reason when the outcome is "ok", else why the answer was not used
    (already redacted and on one line).
    """

    client: str
    outcome: Outcome
    ratio: float | None
    detail: str
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class InvalidReply(ValueError):
    """The model answered, but not with what was asked (not JSON, no ratio, out of bounds)."""


class Redactor:
    """Scrubs secrets (and anything shaped like a bearer token or a Groq key) from error texts."""

    _PATTERNS = (re.compile(r"(?i)bearer\s+\S+"), re.compile(r"gsk_[A-Za-z0-9]+"))

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        self._secrets = tuple(s for s in secrets if s)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        for pattern in self._PATTERNS:
            text = pattern.sub(REDACTED, text)
        return one_line(text)


def one_line(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """Collapse whitespace and cut to `limit` characters: details end up in one log line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def parse_sizing_reply(content: str, low: float, high: float) -> tuple[float, str]:
    """The (ratio, reason) of a reply `{"ratio": float, "reason": str}`, or InvalidReply.

    A ratio outside [low, high] is rejected, not clipped: a model that ignores the bounds it was
    given has not understood the task, and its number should not be trusted at the edge either.
    """
    text = content.strip()
    if text.startswith("```"):  # a fenced block despite JSON mode; the fence is not the answer
        text = text.strip("`").removeprefix("json").strip()
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise InvalidReply(f"not JSON: {one_line(content, 80)!r}") from exc
    if not isinstance(data, dict) or "ratio" not in data:
        raise InvalidReply(f"no 'ratio' key in {one_line(text, 80)!r}")
    ratio = data["ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, int | float):
        raise InvalidReply(f"ratio is not a number: {ratio!r}")
    ratio = float(ratio)
    if not math.isfinite(ratio):
        raise InvalidReply(f"ratio is not finite: {ratio}")
    if not low <= ratio <= high:
        raise InvalidReply(f"ratio {ratio:g} outside [{low:g}, {high:g}]")
    return ratio, one_line(str(data.get("reason", "")))


def describe_error(exc: BaseException) -> str:
    """A short cause for an attempt's record: the provider's own error code and message when it
    sent one, not the SDK's repr of the whole body (redaction happens after this)."""
    if isinstance(exc, groq.APIStatusError):
        return f"HTTP {exc.status_code}: {_groq_error_text(exc.body) or exc.message}"
    if isinstance(exc, ollama.ResponseError):
        return f"HTTP {exc.status_code}: {exc.error}"
    if isinstance(exc, groq.APITimeoutError | httpx.TimeoutException | TimeoutError):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, groq.APIConnectionError | httpx.TransportError | ConnectionError):
        return f"cannot connect ({type(exc).__name__})"
    if isinstance(exc, InvalidReply):
        return f"invalid reply: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _groq_error_text(body: object) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ""
    code = error.get("code") or error.get("type") or "error"
    return f"{code}: {error.get('message', '')}"


class ChatClient(Protocol):
    """One LLM behind one call: the raw text of its reply to a system and a user message."""

    name: str

    async def complete(self, system: str, user: str) -> str: ...

    async def aclose(self) -> None: ...


class GroqChat:
    """Groq's OpenAI-compatible chat completions in JSON mode, through the official SDK.

    `max_retries=0`: the SDK retries 429/5xx twice by default with backoff, which would spend the
    sizing deadline on one provider; the sizer's fallback is the retry.
    """

    name = "groq"

    def __init__(self, config: GroqConfig, api_key: str, base_url: str) -> None:
        self._config = config
        self._client = groq.AsyncGroq(
            api_key=api_key, base_url=base_url, timeout=config.timeout_s, max_retries=0
        )

    async def complete(self, system: str, user: str) -> str:
        completion = await self._client.chat.completions.create(
            model=self._config.model,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            response_format={"type": "json_object"},
            temperature=0.0,
            max_completion_tokens=self._config.max_tokens,
        )
        if not completion.choices:
            raise InvalidReply("reply has no choices")
        return completion.choices[0].message.content or ""

    async def aclose(self) -> None:
        await self._client.close()


class OllamaChat:
    """A local Ollama model through the official SDK, `format="json"`, one non-streamed reply."""

    name = "ollama"

    def __init__(self, config: OllamaConfig, host: str) -> None:
        self._config = config
        self._client = ollama.AsyncClient(host=host, timeout=config.timeout_s)

    async def complete(self, system: str, user: str) -> str:
        response = await self._client.chat(
            model=self._config.model,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            format="json",
            stream=False,
            options={"temperature": 0.0, "num_predict": self._config.max_tokens},
        )
        return response.message.content or ""

    async def aclose(self) -> None:
        await self._client.close()


@dataclass(frozen=True)
class ClientSet:
    """The clients to ask, the ones left out and why, and a redactor that knows the secrets."""

    clients: tuple[ChatClient, ...]
    skipped: tuple[Attempt, ...]
    redact: Redactor


def build_chat_clients(
    groq_config: GroqConfig, ollama_config: OllamaConfig, env: Mapping[str, str]
) -> ClientSet:
    """Build the enabled clients; the only place the sizing node reads the environment."""
    clients: list[ChatClient] = []
    skipped: list[Attempt] = []
    api_key = env.get(GROQ_KEY_ENV, "").strip()
    if not groq_config.enabled:
        skipped.append(Attempt("groq", "skipped", None, "disabled in config", 0.0))
    elif not api_key:
        skipped.append(Attempt("groq", "skipped", None, f"{GROQ_KEY_ENV} is not set", 0.0))
    else:
        base_url = groq_config.base_url or env.get(GROQ_BASE_URL_ENV) or GROQ_DEFAULT_BASE_URL
        clients.append(GroqChat(groq_config, api_key, base_url))
    if ollama_config.enabled:
        host = ollama_config.host or env.get(OLLAMA_HOST_ENV) or OLLAMA_DEFAULT_HOST
        clients.append(OllamaChat(ollama_config, host))
    else:
        skipped.append(Attempt("ollama", "skipped", None, "disabled in config", 0.0))
    return ClientSet(tuple(clients), tuple(skipped), Redactor((api_key,) if api_key else ()))
