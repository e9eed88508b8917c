"""A local Groq stand-in on 127.0.0.1 that speaks Groq's OpenAI-compatible chat completions.

The real `groq.AsyncGroq` client, given `base_url=standin.url`, posts to
`/openai/v1/chat/completions` with `Authorization: Bearer <key>`; this server checks the key (401 in
Groq's error shape otherwise), enforces JSON mode the way Groq does (a reply that is not a JSON
object becomes Groq's 400 `json_validate_failed`), and answers with a `chat.completion` object.

What "the model" says is scripted per request with `Turn`s (a ratio, free text, an HTTP error, a
delay); every request is recorded. The scripting and request log live in
`ScriptedChatServer`, which the Ollama stand-in shares.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from standins.http_server import LocalHttpServer, QuietHandler

CHAT_PATH = "/openai/v1/chat/completions"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received, so tests can assert what the real client sent."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), "")


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        return cls(status, json.dumps(payload).encode(), headers=headers or {})


@dataclass(frozen=True)
class Turn:
    """What the stand-in's model does for one request: wait `delay_s`, then answer or fail."""

    content: str = ""
    delay_s: float = 0.0
    status: int = 200  # anything else: the provider's error reply with `message`
    message: str = ""

    @classmethod
    def ratio(cls, ratio: float, reason: str = "stand-in sizing", delay_s: float = 0.0) -> Turn:
        return cls(json.dumps({"ratio": ratio, "reason": reason}), delay_s)

    @classmethod
    def text(cls, content: str, delay_s: float = 0.0) -> Turn:
        return cls(content, delay_s)

    @classmethod
    def error(cls, status: int, message: str = "") -> Turn:
        return cls(status=status, message=message)

    @classmethod
    def slow(cls, seconds: float, ratio: float = 0.3) -> Turn:
        return cls.ratio(ratio, "slow stand-in", delay_s=seconds)


Responder = Callable[[RecordedRequest], Turn]
DEFAULT_TURN = Turn.ratio(0.3)
Route = Callable[[RecordedRequest, Turn | None], Reply]


class ScriptedChatServer(LocalHttpServer):
    """A local HTTP server whose model replies come from a script, then from `default`.

    Subclasses register routes with `add_route(method, path, handler, scripted=...)`; a scripted
    route takes the next `Turn` (and sleeps its delay) before its handler builds the reply.
    """

    thread_name = "chat-standin"

    def __init__(self, default: Turn | Responder = DEFAULT_TURN) -> None:
        super().__init__()
        self.default = default
        self._script: list[Turn] = []
        self._log: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._routes: dict[tuple[str, str], tuple[Route, bool]] = {}

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _make_handler(self)

    # -- test controls ---------------------------------------------------------------------------
    def add_route(self, method: str, path: str, handler: Route, *, scripted: bool) -> None:
        self._routes[(method, path)] = (handler, scripted)

    def script(self, *turns: Turn) -> None:
        """The next requests get these turns in order; after them, `default` answers."""
        with self._lock:
            self._script.extend(turns)

    def requests(self, path: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self._log if path is None or r.path == path]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    # -- dispatch (handler threads) --------------------------------------------------------------
    def dispatch(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self._log.append(request)
        route = self._routes.get((request.method, request.path))
        if route is None:
            return self.not_found(request)
        handler, scripted = route
        return handler(request, self._next_turn(request) if scripted else None)

    def sleep_through(self, turn: Turn) -> bool:
        """Sleep through the turn's delay; False when `stop()` is called meanwhile."""
        return not self._stopping.wait(turn.delay_s) if turn.delay_s > 0 else True

    def _next_turn(self, request: RecordedRequest) -> Turn:
        with self._lock:
            scripted = self._script.pop(0) if self._script else None
        if scripted is not None:
            return scripted
        return self.default if isinstance(self.default, Turn) else self.default(request)

    def not_found(self, request: RecordedRequest) -> Reply:
        return Reply.json({"error": f"no route {request.method} {request.path}"}, 404)


def _make_handler(standin: ScriptedChatServer) -> type[BaseHTTPRequestHandler]:
    class _ChatHandler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = RecordedRequest(
                method=method,
                path=self.path.split("?", 1)[0],
                headers=dict(self.headers.items()),
                body=self.rfile.read(length) if length else b"",
                at=time.time(),
            )
            reply = standin.dispatch(request)
            self.reply(reply.status, reply.body, reply.content_type, reply.headers)

    return _ChatHandler


# -- Groq ----------------------------------------------------------------------------------------
def groq_error(
    status: int, message: str, kind: str, code: str | None = None, **extra: Any
) -> Reply:
    """An error in Groq's shape: {"error": {"message", "type", "code"?, ...}}."""
    error: dict[str, Any] = {"message": message, "type": kind}
    if code is not None:
        error["code"] = code
    headers = {"retry-after": "2"} if status == 429 else {}
    return Reply.json({"error": {**error, **extra}}, status, headers)


GROQ_STATUS_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request"),
    429: ("tokens", "rate_limit_exceeded", "Rate limit reached for model. Please try again in 2s."),
    500: ("internal_server_error", None, "Internal Server Error"),
    503: ("internal_server_error", "service_unavailable", "Service Unavailable"),
}


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


class GroqStandIn(ScriptedChatServer):
    """Groq's `POST /openai/v1/chat/completions` for one API key.

    `echo_key_in_errors` makes the 401 message quote the key offered, as some OpenAI-compatible
    servers do, so a test can prove the client side redacts it.
    """

    thread_name = "groq-standin"

    def __init__(
        self,
        api_key: str = "gsk_standin_key_0123456789",
        default: Turn | Responder = DEFAULT_TURN,
        *,
        echo_key_in_errors: bool = False,
    ) -> None:
        super().__init__(default)
        self.api_key = api_key
        self.echo_key_in_errors = echo_key_in_errors
        self.add_route("POST", CHAT_PATH, self._chat, scripted=True)

    def _unauthorized(self, request: RecordedRequest) -> Reply | None:
        offered = request.header("Authorization").removeprefix("Bearer ").strip()
        if offered == self.api_key:
            return None
        message = f"Invalid API Key: {offered}" if self.echo_key_in_errors else "Invalid API Key"
        return groq_error(401, message, "invalid_request_error", "invalid_api_key")

    def _chat(self, request: RecordedRequest, turn: Turn | None) -> Reply:
        assert turn is not None
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        try:
            body = request.json()
            model, messages = body["model"], body["messages"]
        except (ValueError, KeyError, TypeError):
            return groq_error(400, "'model' and 'messages' are required", "invalid_request_error")
        if not self.sleep_through(turn):
            return groq_error(503, "shutting down", "internal_server_error")
        if turn.status != 200:
            kind, code, message = GROQ_STATUS_ERRORS.get(turn.status, ("api_error", None, "error"))
            return groq_error(turn.status, turn.message or message, kind, code)
        json_mode = (body.get("response_format") or {}).get("type") == "json_object"
        if json_mode and not _is_json_object(turn.content):
            return groq_error(
                400,
                "Failed to generate JSON. Please adjust your prompt. "
                "See 'failed_generation' for more details.",
                "invalid_request_error",
                "json_validate_failed",
                failed_generation=turn.content,
            )
        return Reply.json(completion(model, turn.content, prompt_chars=len(json.dumps(messages))))


def completion(model: str, content: str, prompt_chars: int) -> dict[str, Any]:
    """A `chat.completion` object as Groq returns it (token counts approximated by chars / 4)."""
    prompt_tokens, completion_tokens = max(1, prompt_chars // 4), max(1, len(content) // 4)
    return {
        "id": f"chatcmpl-{uuid.uuid4()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "queue_time": 0.01,
            "prompt_tokens": prompt_tokens,
            "prompt_time": 0.005,
            "completion_tokens": completion_tokens,
            "completion_time": 0.02,
            "total_tokens": prompt_tokens + completion_tokens,
            "total_time": 0.025,
        },
        "system_fingerprint": "fp_standin",
        "x_groq": {"id": f"req_{uuid.uuid4().hex}"},
    }
