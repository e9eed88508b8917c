"""The loop's view of the Serve app: one HTTP call per market and hour, over the v1 API.

The loop sends the candles it fetched itself, so the model sees exactly the hours the loop priced
(and a replay can send the same ones again); Serve computes the features and asks the sizing node.
The reply is parsed with the model the ingress answers with (`serve.schema.PredictionReply`) and
must be about the market and the hour that were asked for.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any, Protocol

import pandas as pd
import requests
from pydantic import ValidationError

from features.domain import AccountState
from serve.admin import ADMIN_TOKEN_ENV
from serve.schema import PredictionReply


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


class ServeClient:
    """`token`: the admin bearer token. Serve asks for it on the prediction routes when it
    listens beyond loopback, and a request that carries it is not counted against the share of
    predictions anonymous clients may hold in flight, so a flood does not starve the loop."""

    def __init__(self, url: str, timeout_s: float = 30.0, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def predict(self, market: str, candles: pd.DataFrame, account: AccountState) -> PredictionReply:
        body = {"candles": candle_rows(candles), "account": asdict(account)}
        try:
            reply = self.session.post(
                f"{self.url}/v1/predict/{market}", json=body, timeout=self.timeout_s
            )
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
