"""A local Ollama stand-in on 127.0.0.1 that speaks Ollama's `POST /api/chat`.

The real `ollama.AsyncClient(host=standin.url)` sends `"stream": false` for a single reply (the
SDK's default); this server answers it with one JSON object, and with NDJSON chunks ending in a
`done` message when a request asks to stream. Unknown models get Ollama's 404, error turns get
Ollama's `{"error": "..."}` shape. Replies are scripted with the Groq stand-in's `Turn`s.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from standins.groq_server import (
    DEFAULT_TURN,
    RecordedRequest,
    Reply,
    Responder,
    ScriptedChatServer,
    Turn,
)

CHAT_PATH = "/api/chat"
NDJSON = "application/x-ndjson"
OLLAMA_STATUS_ERRORS = {500: "llama runner process has terminated", 503: "server busy"}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def _error(status: int, message: str) -> Reply:
    return Reply.json({"error": message}, status)


class OllamaStandIn(ScriptedChatServer):
    """Ollama's chat endpoint; `models` (when given) are the only ones "pulled"."""

    thread_name = "ollama-standin"

    def __init__(
        self, default: Turn | Responder = DEFAULT_TURN, *, models: tuple[str, ...] = ()
    ) -> None:
        super().__init__(default)
        self.models = models
        running = Reply(200, b"Ollama is running", "text/plain; charset=utf-8")
        self.add_route("GET", "/", lambda _r, _t: running, scripted=False)
        self.add_route("POST", CHAT_PATH, self._chat, scripted=True)

    def _chat(self, request: RecordedRequest, turn: Turn | None) -> Reply:
        assert turn is not None
        try:
            body = request.json()
            model, _ = body["model"], body["messages"]
        except (ValueError, KeyError, TypeError):
            return _error(400, "model is required")
        if self.models and model not in self.models:
            return _error(404, f"model '{model}' not found, try pulling it first")
        if not self.sleep_through(turn):
            return _error(503, "shutting down")
        if turn.status != 200:
            return _error(
                turn.status, turn.message or OLLAMA_STATUS_ERRORS.get(turn.status, "error")
            )
        if body.get("stream", True):  # Ollama streams unless told not to
            return Reply(200, _stream(model, turn.content), NDJSON)
        return Reply.json({**_message(model, turn.content), **_done(turn.content)})


def _message(model: str, content: str) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": _now(),
        "message": {"role": "assistant", "content": content},
    }


def _done(content: str) -> dict[str, Any]:
    tokens = max(1, len(content) // 4)
    return {
        "done_reason": "stop",
        "done": True,
        "total_duration": 120_000_000,
        "load_duration": 2_000_000,
        "prompt_eval_count": 180,
        "prompt_eval_duration": 40_000_000,
        "eval_count": tokens,
        "eval_duration": 70_000_000,
    }


def _stream(model: str, content: str, chunk: int = 8) -> bytes:
    """NDJSON as Ollama streams it: content pieces with done false, then an empty done message."""
    pieces = [content[i : i + chunk] for i in range(0, len(content), chunk)]
    lines = [{**_message(model, piece), "done": False} for piece in pieces]
    lines.append({**_message(model, ""), **_done(content)})
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)
