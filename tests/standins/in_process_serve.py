"""Serve's own prediction path in this process, as a Predictor for the loop's tests: the real
`serve.predict` on a real bundle (its label included), sized by the sizing node's rule. A refusal
becomes ServeUnavailable with the HTTP status the ingress would answer, as ServeClient reports
it."""

from __future__ import annotations

import pandas as pd

from features.domain import AccountState, Signal
from serve.predict import predict_candles
from serve.schema import PredictionReply, ServeError, Sizing, refusal
from serve.sizing import SizingConfig, SizingRequest, rule_sizing
from trading.serve_client import ServeUnavailable
from train.bundle import HybridModel


class InProcessServe:
    def __init__(self, model: HybridModel) -> None:
        self.model = model
        self.sizing = SizingConfig()

    def predict(self, market: str, candles: pd.DataFrame, account: AccountState) -> PredictionReply:
        try:
            view = predict_candles(self.model, market, candles)
        except ServeError as exc:
            status, message = refusal(exc)
            raise ServeUnavailable(f"Serve answered {status} for {market}: {message}") from exc
        probabilities = view.probabilities.as_tuple()
        request = SizingRequest(
            market, Signal[view.signal], probabilities, view.volatility, account
        )
        rule = rule_sizing(request, self.sizing)
        return PredictionReply.of(
            view, Sizing(ratio=rule.ratio, source=rule.source, reason=rule.reason)
        )
