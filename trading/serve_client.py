"""The loop's view of the Serve app: one HTTP call per market and hour, over the v1 API.

The loop sends the candles it fetched itself, so the model sees exactly the hours the loop priced
(and a replay can send the same ones again); Serve computes the features and asks the sizing node.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import pandas as pd
import requests

from features.domain import AccountState, Prediction


class ServeUnavailable(RuntimeError):
    """Serve did not answer usefully; the message says how (the loop records it, places nothing)."""


@dataclass(frozen=True)
class ServedSignal:
    prediction: Prediction
    ratio: float
    sizing_source: str
    sizing_reason: str


class Predictor(Protocol):
    def predict(
        self, market: str, candles: pd.DataFrame, account: AccountState
    ) -> ServedSignal: ...


def candle_rows(candles: pd.DataFrame) -> list[dict[str, Any]]:
    frame = candles.reset_index()
    frame["time"] = frame["time"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    return frame.to_dict(orient="records")


def parse_reply(body: dict[str, Any]) -> ServedSignal:
    probabilities = body["probabilities"]
    prediction = Prediction(
        market=body["market"],
        time=pd.Timestamp(body["time"]).to_pydatetime(),
        probabilities=(probabilities["sell"], probabilities["hold"], probabilities["buy"]),
        model_version=body["model_version"],
    )
    sizing = body["sizing"]
    return ServedSignal(prediction, float(sizing["ratio"]), sizing["source"], sizing["reason"])


class ServeClient:
    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()

    def predict(self, market: str, candles: pd.DataFrame, account: AccountState) -> ServedSignal:
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
            return parse_reply(reply.json())
        except (ValueError, KeyError, TypeError) as exc:
            raise ServeUnavailable(f"Serve's reply for {market} is malformed: {exc}") from exc
