"""ServeClient over real HTTP against a one-route server that answers what each test sets: the
reply is parsed with Serve's own model and must be about the market and hour that were asked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pandas as pd
import pytest

from features.barriers import Barriers, LabelMoves
from features.domain import AccountState, Signal
from serve.schema import PredictionReply
from trading.serve_client import ServeClient, ServeMismatch, ServeUnavailable

from standins.http_server import LocalHttpServer, QuietHandler

MARKET = "KRW-BTC"
HOUR = pd.Timestamp("2025-09-30 08:00")
FLAT = AccountState.flat(1_000_000.0)
BARRIERS = {"take_profit": 0.004, "stop_loss": 0.006, "horizon": 3}
LABEL = {"up": 0.005, "down": 0.006, "barriers": BARRIERS}  # the served model's own label


def reply_body(**changes: Any) -> dict[str, Any]:
    body = {
        "market": MARKET,
        "time": HOUR.isoformat(),
        "signal": "BUY",
        "probabilities": {"sell": 0.1, "hold": 0.2, "buy": 0.7},
        "confidence": 0.7,
        "model_version": "v0003",
        "volatility": 0.004,
        "sizing": {"ratio": 0.25, "source": "llm-agree", "reason": "both agree"},
        "served_by": "replica-1",
        "label": LABEL,
    }
    return {k: v for k, v in {**body, **changes}.items() if v is not None}


class FakeServe(LocalHttpServer):
    """POST /v1/predict/<market> answers `status` and `body`; each request's JSON is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.status, self.body, self.received = 200, reply_body(), []

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                outer.received.append((self.path, json.loads(self.rfile.read(length))))
                self.reply(outer.status, json.dumps(outer.body).encode())

        return Handler


@pytest.fixture
def serve() -> Iterator[FakeServe]:
    with FakeServe() as server:
        yield server


@pytest.fixture(scope="module")
def candles(real_candles) -> pd.DataFrame:
    return real_candles[MARKET].loc[:HOUR].iloc[-30:]


def test_a_reply_is_parsed_with_serves_own_model(serve: FakeServe, candles) -> None:
    reply = ServeClient(serve.url).predict(MARKET, candles, FLAT)
    assert isinstance(reply, PredictionReply) and reply.sizing.ratio == 0.25
    prediction = reply.prediction()
    assert (prediction.market, prediction.time, prediction.signal) == (MARKET, HOUR, Signal.BUY)
    assert reply.label.moves() == LabelMoves(0.005, 0.006, Barriers(0.004, 0.006, 3))
    path, sent = serve.received[0]
    assert path == f"/v1/predict/{MARKET}" and len(sent["candles"]) == 30
    assert sent["candles"][-1]["time"] == "2025-09-30T08:00:00" and sent["account"]["cash"] == 1e6


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"market": "KRW-ETH"}, "for KRW-ETH at 2025-09-30 08:00:00, not for KRW-BTC"),
        ({"time": "2025-09-30T07:00:00"}, "at 2025-09-30 07:00:00, not for KRW-BTC at"),
    ],
)
def test_a_reply_about_another_market_or_hour_is_refused(
    serve: FakeServe, candles, changes, named
) -> None:
    serve.body = reply_body(**changes)
    with pytest.raises(ServeMismatch, match=named) as caught:
        ServeClient(serve.url).predict(MARKET, candles, FLAT)
    assert isinstance(caught.value, ServeUnavailable)  # the loop records a no_decision


@pytest.mark.parametrize(
    ("status", "body", "named"),
    [
        (200, reply_body(sizing=None), "malformed: sizing: Field required"),
        (200, reply_body(label=None), "malformed: label: Field required"),
        (200, reply_body(label={**LABEL, "up": 0.0}), "malformed: label: .*up must be"),
        (
            200,
            reply_body(label={**LABEL, "barriers": {**BARRIERS, "stop_loss": 1.5}}),
            "malformed: label: .*stop_loss must be in",
        ),  # fmt: skip
        (200, reply_body(probabilities={"sell": 0.5, "hold": 0.5, "buy": 0.5}), "sum to 1"),
        (503, {"detail": "no model promoted for KRW-BTC yet"}, "503 for KRW-BTC: .*no model"),
    ],
)
def test_a_refusal_or_a_malformed_reply_is_serve_unavailable(
    serve: FakeServe, candles, status, body, named
) -> None:
    serve.status, serve.body = status, body
    with pytest.raises(ServeUnavailable, match=named):
        ServeClient(serve.url).predict(MARKET, candles, FLAT)


class Where:
    """A `locate` that answers what the test sets, counting the questions."""

    def __init__(self, answer: str | None) -> None:
        self.answer: str | None = answer
        self.asked = 0

    def __call__(self) -> str | None:
        self.asked += 1
        if self.answer == "fail":
            raise RuntimeError("the dashboard is down")
        return self.answer


def test_direct_ingress_the_client_asks_where_once_then_stays_while_answers_come(
    serve: FakeServe, candles
) -> None:
    with FakeServe() as proxy:
        where = Where(serve.url)
        client = ServeClient(proxy.url, locate=where)
        for _ in range(3):
            client.predict(MARKET, candles, FLAT)
        assert (where.asked, len(serve.received), proxy.received) == (1, 3, [])
        assert client.url == serve.url


def test_a_replica_gone_is_found_on_its_new_port_and_asked_once_more_there(
    serve: FakeServe, candles
) -> None:
    with FakeServe() as proxy, FakeServe() as moved:
        where = Where(serve.url)
        client = ServeClient(proxy.url, locate=where)
        client.predict(MARKET, candles, FLAT)
        serve.stop()  # the replica restarts: its old port refuses connections
        where.answer = moved.url
        reply = client.predict(MARKET, candles, FLAT)
        assert reply.market == MARKET and len(moved.received) == 1 and proxy.received == []
        assert (where.asked, client.url) == (2, moved.url)


def test_without_an_address_of_its_own_the_graph_is_reached_through_the_proxy(
    serve: FakeServe, candles
) -> None:
    with FakeServe() as proxy:
        where = Where(None)  # the replica has no port yet (or the head is not in this mode)
        client = ServeClient(proxy.url, locate=where)
        client.predict(MARKET, candles, FLAT)
        where.answer = "fail"  # the dashboard does not answer: still the proxy
        client.predict(MARKET, candles, FLAT)
        assert (len(proxy.received), where.asked) == (2, 2)
        where.answer = serve.url  # asked again before every call until it has an answer
        client.predict(MARKET, candles, FLAT)
        assert (len(proxy.received), len(serve.received), where.asked) == (2, 1, 3)


def test_a_failed_answer_makes_the_next_call_ask_where_again(serve: FakeServe, candles) -> None:
    with FakeServe() as dead:
        where = Where(dead.url)
        client = ServeClient(serve.url, locate=where)
        dead.status, dead.body = 503, {"detail": "draining"}
        with pytest.raises(ServeUnavailable, match="503"):
            client.predict(MARKET, candles, FLAT)
        url = dead.url
        dead.stop()
        with pytest.raises(ServeUnavailable, match="did not answer"):  # still there, still dead
            client.predict(MARKET, candles, FLAT)
        assert where.asked == 3  # after the 503, after the refusal; sent once more never
        where.answer = serve.url
        assert client.predict(MARKET, candles, FLAT).market == MARKET
        assert where.asked == 4 and url != serve.url


def test_without_locate_a_refused_connection_is_not_sent_again(serve: FakeServe, candles) -> None:
    url = serve.url
    serve.stop()
    client = ServeClient(url)
    with pytest.raises(ServeUnavailable, match=f"Serve at {url} did not answer"):
        client.predict(MARKET, candles, FLAT)
    assert client.url == url
