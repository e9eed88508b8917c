"""A stand-in for Serve's prediction routes on 127.0.0.1: `POST /v1/predict` (every market at
once) and `POST /v1/predict/{market}`, parsed with the real request models and answered with the
real reply models, a fixed signal for every market (a market in `refused` gets the 503 a market
without a model gets). It counts requests per path, so a test can see how the loop asks."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler
from typing import Any

from serve.schema import (
    ErrorDetail,
    LabelView,
    PredictAllBody,
    PredictAllReply,
    PredictBody,
    PredictionReply,
    Probabilities,
    Sizing,
)

from standins.http_server import LocalHttpServer, QuietHandler

BUY = (0.1, 0.2, 0.7)
LABEL = LabelView(up=0.005, down=0.005)  # a fixed 0.5 % label: no barriers


def reply_for(market: str, candles: list[dict[str, Any]]) -> PredictionReply:
    return PredictionReply(
        market=market, time=candles[-1]["time"], probabilities=Probabilities.of(BUY),
        model_version="v0001", volatility=0.01, served_by="standin", model_age_hours=10.0,
        sizing=Sizing(ratio=0.6, source="llm-agree", reason="stand-in"), label=LABEL,
    )  # fmt: skip


class ServePredictStandIn(LocalHttpServer):
    thread_name = "serve-predict-standin"

    def __init__(self, refused: set[str] | None = None) -> None:
        super().__init__()
        self.refused = refused or set()
        self.posts: Counter[str] = Counter()
        self.batch_sizes: list[int] = []
        self._lock = threading.Lock()

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _handler(self)

    def answer(self, path: str, raw: bytes) -> tuple[int, str]:
        with self._lock:
            self.posts[path] += 1
        if path == "/v1/predict":
            body = PredictAllBody.model_validate_json(raw)
            markets = body.markets or []
            with self._lock:
                self.batch_sizes.append(len(markets))
            candles = body.candles or {}
            reply = PredictAllReply(
                predictions=[reply_for(m, candles[m]) for m in markets if m not in self.refused],
                errors={m: ErrorDetail(status=503, message=f"{m} has no model")
                        for m in markets if m in self.refused},
            )  # fmt: skip
            return 200, reply.model_dump_json()
        market = path.rsplit("/", 1)[1]
        if market in self.refused:
            return 503, json.dumps({"detail": f"{market} has no model"})
        one = PredictBody.model_validate_json(raw)
        return 200, reply_for(market, one.candles or []).model_dump_json()


def _handler(standin: ServePredictStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, text = standin.answer(self.path, raw)
            self.reply(status, text.encode())

    return Handler
