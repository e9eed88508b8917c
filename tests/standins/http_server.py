"""The lifecycle every in-process HTTP stand-in shares: a threaded server on 127.0.0.1 at a free
port, served from a daemon thread, started and stopped by the test (or by `with`).

A stand-in subclasses `LocalHttpServer` and gives its request-handler class in `handler_class()`;
the base owns the server, the thread, `url`, and the `_stopping` event that `stop()` sets, so a
handler sleeping through a slow reply (`_stopping.wait(delay)`) wakes instead of holding up the
shutdown. Handlers subclass `QuietHandler` to write a whole reply in one call and log nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

POLL_S = 0.02  # serve_forever's shutdown poll: a quick stop between tests


class LocalHttpServer:
    """One ThreadingHTTPServer on 127.0.0.1, port chosen by the OS, handler threads as daemons."""

    thread_name = "http-standin"

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        """The request handler this stand-in serves with (often a closure over `self`)."""
        raise NotImplementedError(f"{type(self).__name__} must define handler_class()")

    def start(self) -> Self:
        server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler_class())
        server.daemon_threads = True
        serve = partial(server.serve_forever, poll_interval=POLL_S)
        threading.Thread(target=serve, name=self.thread_name, daemon=True).start()
        self._server = server
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping through a slow reply
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing (tests read their stand-in's own request log)."""

    def reply(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Send `status`, the headers and `body`; a client that already hung up (a deadline or
        timeout test) is nothing to report."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
        """Silenced: per-request lines on stderr would bury the test output."""
