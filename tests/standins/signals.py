"""A stand-in for the model behind Serve, for tests of the order path: it answers every market
with the probabilities it was given (or refuses, like a Serve that is down), in the reply type
the real `ServeClient` returns. What it stands in for is the model; everything after the reply
(policy, risk, brokers, ledger) is the product under test."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from features.barriers import LabelMoves
from features.domain import AccountState
from serve.schema import LabelView, PredictionReply, Probabilities, Sizing
from trading.serve_client import ServeUnavailable

BUY = (0.1, 0.2, 0.7)
HOLD = (0.2, 0.6, 0.2)
SELL = (0.7, 0.2, 0.1)
FIXED_LABEL = LabelMoves.of_threshold(0.005)


class FixedSignal:
    """A Predictor that always answers with the same probabilities (per market when a mapping
    is given) and LLM ratio; `down` makes it refuse as a silent Serve would, `novel` answers as
    the novelty gate does for an hour unlike the model's training rows. `label`: the label of the
    model it stands for (a fixed 0.5 % one unless given, as Serve reads it from the bundle)."""

    def __init__(
        self,
        probabilities: tuple[float, float, float] | Mapping[str, tuple[float, float, float]] = BUY,
        ratio: float = 0.6,
        *,
        stale: bool = False,
        down: bool = False,
        novel: bool = False,
        label: LabelMoves = FIXED_LABEL,
    ) -> None:
        self.probabilities = probabilities
        self.ratio = ratio
        self.stale = stale
        self.down = down
        self.novel = novel
        self.label = LabelView.of(label)
        self.calls = 0

    def predict(self, market: str, candles: pd.DataFrame, account: AccountState) -> PredictionReply:
        self.calls += 1
        if self.down:
            raise ServeUnavailable("Serve at http://127.0.0.1:9 did not answer: connection refused")
        chosen = self.probabilities
        if isinstance(chosen, Mapping):
            chosen = chosen[market]
        return PredictionReply(
            market=market,
            time=candles.index[-1],
            probabilities=Probabilities.of(chosen),
            model_version="v0001",
            volatility=0.01,
            served_by="test",
            model_age_hours=900.0 if self.stale else 10.0,
            stale=self.stale,
            dissimilarity=4.2 if self.novel else 0.9,
            novel=self.novel,
            sizing=Sizing(ratio=self.ratio, source="llm-agree", reason="test"),
            label=self.label,
        )
