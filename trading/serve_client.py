"""The loop's view of the Serve app over the v1 API: every market's hour in one batched call.

The loop sends the candles it fetched itself, so the model sees exactly the hours the loop priced
(and a replay can send the same ones again); Serve computes the features and asks the sizing node.
Each reply is parsed with the model the ingress answers with (`serve.schema.PredictionReply`) and
must be about the market and the hour that were asked for.

`predict_all` is `POST /v1/predict` with every market's candles and account: one call an hour
instead of one per market (at 40 markets the per-call hops dominate). A body larger than
`batch_bytes` (Serve's `max_body_bytes`: ~830 candles are ~130 KB of JSON per market) is split
into a few calls sent at once; a market Serve refuses is that market's answer, never the batch's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import pandas as pd
import requests
from pydantic import ValidationError

from features.domain import AccountState
from serve.admin import ADMIN_TOKEN_ENV
from serve.schema import PredictAllReply, PredictionReply

DEFAULT_BATCH_BYTES = 2_000_000  # the Ingress's default max_body_bytes (configs/serve_deploy.yaml)


def admin_token() -> str | None:
    """The bearer token the loop shows Serve (the secret lookup: the environment only)."""
    return os.environ.get(ADMIN_TOKEN_ENV) or None


class ServeUnavailable(RuntimeError):
    """Serve did not answer usefully; the message says how (the loop records it, places nothing)."""


class ServeMismatch(ServeUnavailable):
    """Serve answered about another market or hour than the one asked for."""


class Predictor(Protocol):
    def predict(self, market: str, candles: pd.DataFrame, account: AccountState) -> PredictionReply:
        """The sized prediction for `market` at the newest candle's hour, or ServeUnavailable."""
        ...


@dataclass(frozen=True)
class Ask:
    """One market's question for the hour: the candles the loop priced, the account sized for."""

    candles: pd.DataFrame
    account: AccountState


Answer = PredictionReply | ServeUnavailable  # per market: the reply, or why there is none


def ask_all(predictor: Predictor, asks: Mapping[str, Ask]) -> dict[str, Answer]:
    """Every market's answer: in one batched call when the predictor takes one (`ServeClient`),
    else one call per market (in-process predictors of tests and backtests)."""
    batched = getattr(predictor, "predict_all", None)
    if batched is not None:
        return batched(asks)
    answers: dict[str, Answer] = {}
    for market, ask in asks.items():
        try:
            answers[market] = predictor.predict(market, ask.candles, ask.account)
        except ServeUnavailable as exc:
            answers[market] = exc
    return answers


def candle_rows(candles: pd.DataFrame) -> list[dict[str, Any]]:
    frame = candles.reset_index()
    frame["time"] = frame["time"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    return frame.to_dict(orient="records")


def checked_reply(reply: PredictionReply, market: str, hour: pd.Timestamp) -> PredictionReply:
    """`reply` when it is about `market` at `hour`, else ServeMismatch naming both."""
    if reply.market != market or pd.Timestamp(reply.time) != hour:
        raise ServeMismatch(
            f"Serve answered for {reply.market} at {reply.time}, not for {market} at {hour}"
        )
    return reply


Locate = Callable[[], str | None]  # the graph's own address now, or None: use the given URL


class ServeClient:
    """`token`: the admin bearer token. Serve asks for it on the prediction routes when it
    listens beyond loopback, and a request that carries it is not counted against the share of
    predictions anonymous clients may hold in flight, so a flood does not starve the loop.

    `locate` (direct ingress, `serve.address.direct_url`): where the graph's ingress replica
    answers itself, asked before the first call and again after any call that failed, since
    the replica's port moves when it restarts; while it says nothing (or fails) the client uses
    `url`, Serve's proxy, which still routes the graph. A call whose connection failed is sent
    once more when the graph is then found elsewhere: a prediction changes nothing, so asking
    twice is safe.
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = 30.0,
        token: str | None = None,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        locate: Locate | None = None,
    ) -> None:
        self.fallback = self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.batch_bytes = batch_bytes
        self.locate = locate
        self._ask_again()  # before the first call
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _where(self) -> str:
        if self.locate is not None and self._stale:
            try:
                found = self.locate()
            except Exception:  # noqa: BLE001 - no answer on where: the proxy still routes
                found = None
            self.url = found.rstrip("/") if found else self.fallback
            self._stale = not found
        return self.url

    def _post(self, path: str, **kwargs: Any) -> requests.Response:
        """The graph's reply where it answers now. Any failure (no reply, or not a 200) makes the
        next call ask where again: a replica going away answers 5xx first, then refuses."""
        try:
            reply = self._reply(path, kwargs)
        except requests.RequestException:
            self._ask_again()
            raise
        if reply.status_code != 200:
            self._ask_again()
        return reply

    def _reply(self, path: str, kwargs: dict[str, Any]) -> requests.Response:
        """One post where the graph answers now; where it refuses the connection, one more to
        where `locate` says it answers, if that is elsewhere."""
        url = self._where()
        try:
            return self.session.post(f"{url}{path}", timeout=self.timeout_s, **kwargs)
        except requests.ConnectionError:
            self._ask_again()
            if self._where() == url:  # without `locate`, always
                raise
            return self.session.post(f"{self.url}{path}", timeout=self.timeout_s, **kwargs)

    def _ask_again(self) -> None:
        """The next `_where` asks `locate` where the graph answers (without one, nothing to ask)."""
        self._stale = self.locate is not None

    def predict(self, market: str, candles: pd.DataFrame, account: AccountState) -> PredictionReply:
        body = {"candles": candle_rows(candles), "account": asdict(account)}
        try:
            reply = self._post(f"/v1/predict/{market}", json=body)
        except requests.RequestException as exc:
            raise ServeUnavailable(f"Serve at {self.url} did not answer: {exc}") from exc
        if reply.status_code != 200:
            detail = reply.text[:300]
            raise ServeUnavailable(f"Serve answered {reply.status_code} for {market}: {detail}")
        try:
            parsed = PredictionReply.model_validate_json(reply.content)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            raise ServeUnavailable(f"Serve's reply for {market} is malformed: {problems}") from exc
        return checked_reply(parsed, market, candles.index[-1])

    def predict_all(self, asks: Mapping[str, Ask]) -> dict[str, Answer]:
        """Every market of `asks` through `POST /v1/predict`: one call, or a few sent at once
        when the candles are more than `batch_bytes`."""
        parts = {
            m: (json.dumps(candle_rows(a.candles)), asdict(a.account)) for m, a in asks.items()
        }
        batches = _batches(parts, self.batch_bytes)
        if len(batches) == 1:
            return self._predict_batch(batches[0], asks)
        with ThreadPoolExecutor(len(batches), thread_name_prefix="predict-batch") as pool:
            answers = pool.map(lambda batch: self._predict_batch(batch, asks), batches)
            return {market: a for answer in answers for market, a in answer.items()}

    def _predict_batch(
        self, parts: dict[str, tuple[str, dict[str, Any]]], asks: Mapping[str, Ask]
    ) -> dict[str, Answer]:
        markets = list(parts)
        body = _batch_body(parts)
        try:
            reply = self._post(
                "/v1/predict", data=body, headers={"Content-Type": "application/json"}
            )
        except requests.RequestException as exc:
            failed = ServeUnavailable(f"Serve at {self.url} did not answer: {exc}")
            return dict.fromkeys(markets, failed)
        if reply.status_code == 404:  # a market Serve does not serve (yet): ask one by one
            return {m: self._one(m, asks[m]) for m in markets}
        if reply.status_code != 200:
            failed = ServeUnavailable(f"Serve answered {reply.status_code}: {reply.text[:300]}")
            return dict.fromkeys(markets, failed)
        try:
            parsed = PredictAllReply.model_validate_json(reply.content)
        except ValidationError as exc:
            failed = ServeUnavailable(f"Serve's batched reply is malformed: {exc.errors()[:3]}")
            return dict.fromkeys(markets, failed)
        return _answers(parsed, asks, markets)

    def _one(self, market: str, ask: Ask) -> Answer:
        try:
            return self.predict(market, ask.candles, ask.account)
        except ServeUnavailable as exc:
            return exc


def _batch_body(parts: dict[str, tuple[str, dict[str, Any]]]) -> str:
    """The `PredictAllBody` JSON, its candle rows pasted in as already encoded (encoded once, when
    the batches were sized)."""
    candles = ", ".join(f"{json.dumps(market)}: {rows}" for market, (rows, _) in parts.items())
    accounts = json.dumps({market: account for market, (_, account) in parts.items()})
    markets = json.dumps(list(parts))
    return f'{{"markets": {markets}, "candles": {{{candles}}}, "accounts": {accounts}}}'


def _batches(
    parts: dict[str, tuple[str, dict[str, Any]]], limit: int
) -> list[dict[str, tuple[str, dict[str, Any]]]]:
    """Consecutive groups of markets whose bodies stay under `limit` bytes (a market alone may
    pass it: Serve then refuses that market's call with 413, which becomes its answer)."""
    batches: list[dict[str, tuple[str, dict[str, Any]]]] = [{}]
    size = 0
    for market, part in parts.items():
        grows = len(part[0]) + 400  # the rows, the market's name twice, its account
        if batches[-1] and size + grows > limit:
            batches.append({})
            size = 0
        batches[-1][market] = part
        size += grows
    return batches


def _answers(
    parsed: PredictAllReply, asks: Mapping[str, Ask], markets: list[str]
) -> dict[str, Answer]:
    replies = {reply.market: reply for reply in parsed.predictions}
    answers: dict[str, Answer] = {}
    for market in markets:
        if market in replies:
            try:
                answers[market] = checked_reply(
                    replies[market], market, asks[market].candles.index[-1]
                )
            except ServeMismatch as exc:
                answers[market] = exc
        elif market in parsed.errors:
            error = parsed.errors[market]
            answers[market] = ServeUnavailable(
                f"Serve answered {error.status} for {market}: {error.message[:300]}"
            )
        else:
            answers[market] = ServeUnavailable(f"Serve's batched reply left {market} out")
    return answers
