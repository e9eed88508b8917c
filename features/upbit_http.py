"""Route pyupbit's HTTP calls through one configurable, bounded, honest adapter.

pyupbit 0.2.34 builds every URL from the fixed `https://api.upbit.com`, sends through module-level
`requests.get/post/delete` with no timeout (a stalled socket hangs the caller forever), and turns
any failure into a None return. `UpbitHttp` swaps `pyupbit.request_api._call_get/_call_post/
_call_delete` for the duration of a call, so pyupbit's own code still builds the requests and parses
the replies while every request goes through one `requests.Session` with a base URL, a timeout, the
`Remaining-Req` budget and bounded 429 back-off, and every failure becomes an `UpbitError` with a
reason, even where pyupbit swallowed it.

Only unsigned (public) requests are retried: a signed request carries a JWT whose nonce Upbit
accepts once, so resending it would turn a rate limit into an authentication failure.

Concurrent calls (the loop fetches many markets' candles at once) are safe: pyupbit's hooks are
installed while any adapter routes and dispatch to the adapter of the calling thread (a context
variable), each thread keeps its own call's failure and reply, and the threads of one adapter share
one `SecondBudget`: the `Remaining-Req` count, less the requests still in flight, is what the
current second still allows; at zero, every thread waits for the next second.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import pyupbit.request_api as request_api
import requests

UPBIT_API = "https://api.upbit.com"
ROUTED_CALLS: tuple[tuple[str, str], ...] = (
    ("_call_get", "GET"),
    ("_call_post", "POST"),
    ("_call_delete", "DELETE"),
)
_HOOKS_LOCK = threading.Lock()  # pyupbit's hooks are process-wide: installed while any routes
_HOOKS = {"routing": 0, "originals": {}}  # how many blocks route now; pyupbit's own functions
_ACTIVE: ContextVar[UpbitHttp | None] = ContextVar("upbit_http_active", default=None)
_SECRET_PATTERNS = (
    re.compile(r"Bearer\s+\S+", re.IGNORECASE),
    re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*"),  # any JWT, signed or not
)
_BODY_SNIPPET = 160

T = TypeVar("T")


class UpbitError(Exception):
    """An Upbit call failed; `reason` says why, without keys or the Authorization header."""

    def __init__(
        self, reason: str, *, status: int | None = None, error_name: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.error_name = error_name


class UpbitRateLimited(UpbitError):
    """Upbit kept answering 429 through the bounded back-off (a signed request: at once, as it is
    never resent); slow down before calling again, or Upbit escalates to a 418 ban."""


class UpbitBanned(UpbitError):
    """Upbit answered 418: a temporary ban for calling on after 429. Stop; retrying extends it."""


class UpbitUnavailable(UpbitError):
    """No usable answer: timeout, connection failure or a 5xx from Upbit."""


class UpbitBadReply(UpbitError):
    """Upbit answered 2xx but the reply cannot be read (malformed JSON, unexpected shape)."""


class UpbitNoData(UpbitBadReply):
    """The reply was an empty list, which pyupbit reports as None (e.g. candles before listing)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential back-off for 429s, 5xx, timeouts and connection errors."""

    retries: int = 3
    backoff_s: float = 0.25
    max_backoff_s: float = 4.0

    def delay(self, attempt: int) -> float:
        return min(self.backoff_s * (2**attempt), self.max_backoff_s)


@dataclass(frozen=True)
class RemainingReq:
    """The `Remaining-Req` header: requests left in this group for the current minute and second."""

    group: str
    minute: int | None
    second: int | None

    @classmethod
    def parse(cls, header: str) -> RemainingReq | None:
        fields = dict(part.strip().split("=", 1) for part in header.split(";") if "=" in part)
        if "group" not in fields or "sec" not in fields:
            return None
        try:
            minute = int(fields["min"]) if "min" in fields else None
            return cls(group=fields["group"], minute=minute, second=int(fields["sec"]))
        except ValueError:
            return None


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """Remove bearer tokens, JWTs and the given secrets from text bound for logs or errors."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("[redacted]", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def _is_signed(kwargs: Mapping[str, Any]) -> bool:
    headers = kwargs.get("headers") or {}
    return any(key.lower() == "authorization" for key in headers)


def _describe(method: str, url: str, params: Mapping[str, Any] | None) -> str:
    """Method, path and query: enough to debug, and never a header."""
    parts = urlsplit(url)
    query = "&".join(filter(None, [parts.query, urlencode(params or {}, doseq=True)]))
    return f"{method} {parts.path}" + (f"?{query}" if query else "")


def _upbit_error_fields(response: requests.Response) -> tuple[str | None, str]:
    """Upbit's `{"error": {"name", "message"}}`, or the start of whatever body came instead."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return None, response.text[:_BODY_SNIPPET]
    name = error.get("name")
    return (None if name is None else str(name)), str(error.get("message", ""))


class SecondBudget:
    """Upbit's per-second request budget as the `Remaining-Req` replies report it, shared by every
    thread that sends through one adapter.

    A reply's `sec` counts the requests Upbit has seen this second; those still in flight will
    spend more, so they are subtracted. The budget of a whole second (`capacity`) is learnt from
    the replies (what is left plus the reply's own request: a lower bound, so never too much; the
    first request, sent alone, learns it exactly); a new second opens with that capacity less the
    requests still in flight (they may land in it).
    """

    def __init__(self, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._second: int | None = None
        self._left = 0  # requests this second still allows
        self._heard = False  # a reply of this second has said what is left
        self._in_flight = 0
        self.capacity: int | None = None

    def _open(self, second: int) -> None:
        self._second, self._heard = second, False
        self._left = 1 if self.capacity is None else max(1, self.capacity - self._in_flight)

    def acquire(self) -> None:
        """Wait, if this second is spent, for the next one; then count one request in flight."""
        while True:
            with self._lock:
                now = self._clock()
                second = math.floor(now)
                if self._second != second:
                    self._open(second)
                if self._left > 0:
                    self._left -= 1
                    self._in_flight += 1
                    return
                delay = second + 1 - now
            self._sleep(delay)
            with self._lock:  # the next second has begun (even on a clock that does not move)
                if self._second == second:
                    self._open(second + 1)

    def release(self, remaining: RemainingReq | None) -> None:
        with self._lock:
            self._in_flight -= 1
            second = math.floor(self._clock())
            if self._second != second:
                self._open(second)
            if remaining is None or remaining.second is None:
                self._left += 1  # no budget reply (no answer at all): its slot is free again
                return
            self.capacity = max(self.capacity or 0, remaining.second + 1)  # this one counted
            left = remaining.second - self._in_flight
            self._left = min(self._left, left) if self._heard else left  # replies may cross
            self._heard = True


def _dispatcher(name: str, method: str) -> Callable[..., requests.Response]:
    """pyupbit's hook while adapters route: the calling thread's adapter, else pyupbit's own."""

    def call(url: str, **kwargs: Any) -> requests.Response:
        adapter = _ACTIVE.get()
        if adapter is None:
            return _HOOKS["originals"][name](url, **kwargs)
        return adapter.send(method, url, **kwargs)

    return call


@contextmanager
def _hooks_installed() -> Iterator[None]:
    with _HOOKS_LOCK:
        if _HOOKS["routing"] == 0:
            _HOOKS["originals"] = {name: getattr(request_api, name) for name, _ in ROUTED_CALLS}
            for name, method in ROUTED_CALLS:
                setattr(request_api, name, _dispatcher(name, method))
        _HOOKS["routing"] += 1
    try:
        yield
    finally:
        with _HOOKS_LOCK:
            _HOOKS["routing"] -= 1
            if _HOOKS["routing"] == 0:
                for name, original in _HOOKS["originals"].items():
                    setattr(request_api, name, original)


class _CallState(threading.local):
    """One thread's routed call: its failure, its last reply body and request, its budget reply."""

    failure: UpbitError | None = None
    last_body: Any = None
    last_request: str = ""
    remaining: RemainingReq | None = None


class UpbitHttp:
    """One Upbit endpoint (real or a stand-in) with its session, timeout and retry policy.

    Use `call(pyupbit.fn, ...)` or `with http.routed(): ...`; pyupbit's hooks are restored on exit,
    so adapters with different base URLs can take turns in one process. `sleep` and `clock` are
    injectable so tests can check the waiting without waiting.
    """

    def __init__(
        self,
        base_url: str = UPBIT_API,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        secrets: Sequence[str] = (),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self.session = session if session is not None else requests.Session()
        self.remaining: RemainingReq | None = None  # the newest reply's, for people and tests
        self._sleep = sleep
        self._clock = clock
        self._secrets = tuple(secrets)
        self.budget = SecondBudget(clock, sleep)
        self._call = _CallState()

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> UpbitHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, fn: Callable[..., T | None], *args: Any, **kwargs: Any) -> T:
        """Run a pyupbit function through this adapter; a None result becomes an error."""
        with self.routed():
            result = fn(*args, **kwargs)
        if result is not None:
            return result
        name = getattr(fn, "__qualname__", repr(fn))
        if self._call.last_body == []:
            raise UpbitNoData(f"pyupbit.{name}: the reply held no rows")
        snippet = repr(self._call.last_body)[:_BODY_SNIPPET]
        reason = f"pyupbit.{name} could not read the reply to {self._call.last_request}: {snippet}"
        raise UpbitBadReply(self._clean(reason))

    @contextmanager
    def routed(self) -> Iterator[UpbitHttp]:
        """Send pyupbit's requests through this adapter inside the block.

        pyupbit catches and hides most exceptions, so the last request failure inside the block is
        raised when the block ends, even if code inside the block caught it.
        """
        call = self._call
        call.failure, call.last_body = None, None
        with _hooks_installed():
            token = _ACTIVE.set(self)
            try:
                yield self
            finally:
                _ACTIVE.reset(token)
        if call.failure is not None:
            raise call.failure

    def send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One logical request: rewritten URL, timeout, rate budget, bounded retries."""
        url = self._rewrite(url)
        retryable = not _is_signed(kwargs)
        attempt = 0
        while True:
            self.budget.acquire()
            self._call.remaining = None
            try:
                outcome = self._attempt(method, url, kwargs)
            finally:
                self.budget.release(self._call.remaining)
            if isinstance(outcome, requests.Response):
                return outcome
            if not (retryable and _transient(outcome)) or attempt >= self.retry.retries:
                self._call.failure = outcome
                raise outcome
            self._sleep(self.retry.delay(attempt))
            attempt += 1

    def _attempt(
        self, method: str, url: str, kwargs: Mapping[str, Any]
    ) -> requests.Response | UpbitError:
        """One HTTP exchange: the response when it is usable, else the error it amounts to."""
        what = self._call.last_request = _describe(method, url, kwargs.get("params"))
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.Timeout:
            return UpbitUnavailable(self._clean(f"{what}: no reply within {self.timeout} s"))
        except requests.RequestException as exc:
            reason = f"{what}: {type(exc).__name__} talking to {self.base_url}"
            return UpbitUnavailable(self._clean(reason))
        self._note_budget(response)
        return self._classify(what, response) or response

    def _classify(self, what: str, response: requests.Response) -> UpbitError | None:
        status = response.status_code
        if 200 <= status < 300:
            return self._check_body(what, response)
        name, message = _upbit_error_fields(response)
        label = f"HTTP {status} {name}" if name else f"HTTP {status}"
        reason = self._clean(f"{what}: {label}: {message}")
        if status == 418:
            return UpbitBanned(reason, status=status, error_name=name)
        if status == 429:
            return UpbitRateLimited(reason, status=status, error_name=name)
        if status >= 500:
            return UpbitUnavailable(reason, status=status, error_name=name)
        return UpbitError(reason, status=status, error_name=name)

    def _check_body(self, what: str, response: requests.Response) -> UpbitError | None:
        try:
            self._call.last_body = response.json()
        except ValueError:
            snippet = response.text[:_BODY_SNIPPET]
            return UpbitBadReply(self._clean(f"{what}: malformed JSON body: {snippet!r}"))
        if RemainingReq.parse(response.headers.get("Remaining-Req", "")) is None:
            return UpbitBadReply(self._clean(f"{what}: reply lacks a Remaining-Req header"))
        return None

    def _note_budget(self, response: requests.Response) -> None:
        """This call's `Remaining-Req`, for the shared budget (`send` hands it over)."""
        self._call.remaining = RemainingReq.parse(response.headers.get("Remaining-Req", ""))
        self.remaining = self._call.remaining or self.remaining

    def _rewrite(self, url: str) -> str:
        if url.startswith(UPBIT_API):
            return self.base_url + url[len(UPBIT_API) :]
        return url

    def _clean(self, text: str) -> str:
        return redact(text, self._secrets)


def _transient(failure: UpbitError) -> bool:
    return isinstance(failure, UpbitRateLimited | UpbitUnavailable)
