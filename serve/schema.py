"""The prediction API's contract: what a client sends, what it gets back, and how it is refused.

One set of models for both ends: the ingress answers with `PredictionReply` (FastAPI's response
model) and `trading.serve_client.ServeClient` parses the same model, so a field added to
`ModelView` (a model's age, a novelty score) is one line here and reaches the loop as it is. The
predictor builds a `ModelView`, the sizing node adds `Sizing`, the ingress joins them.

Refusals are exceptions, never dicts: `ServeError` and its subclasses carry their HTTP status, the
deployments and `serve.predict` raise them, and the ingress turns them into a response in one
place. Raised inside another deployment, one reaches the ingress through a DeploymentHandle as
Ray's `RayTaskError(<class>)`: still an instance of its own class (so `except MarketNotServed`
and FastAPI's handler lookup hold), but its `str()` is the remote traceback; `refusal` reads the
status and message off the original.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, computed_field, model_validator

from features.barriers import Barriers, LabelMoves
from features.domain import AccountState, Prediction, Signal, checked_probabilities
from features.exchange import check_market

SignalName = Literal["SELL", "HOLD", "BUY"]
Market = Annotated[str, AfterValidator(check_market)]
FLAT_ACCOUNT = AccountState.flat(1_000_000.0)
"""What sizing sees when a request carries no account (README: a flat 1,000,000 KRW account)."""


# -- refusals ---------------------------------------------------------------------------------
class ServeError(Exception):
    """A request the graph cannot answer; `status` is the HTTP code the ingress answers with."""

    status: ClassVar[int] = 500


class MarketNotServed(ServeError):
    status = 404


class BadRequest(ServeError):
    """Malformed or too few candles, an account or a prediction that cannot be sized."""

    status = 422


class Unavailable(ServeError):
    """No model for the market yet, or its candle source did not answer."""

    status = 503


class Busy(ServeError):
    """More predictions in flight than the ingress takes from anonymous clients, or a deployment's
    queue is full: try again shortly."""

    status = 503


class TooLarge(ServeError):
    """The request body is over the configured size; refused before it is read or parsed."""

    status = 413


class Unauthorized(ServeError):
    """The prediction routes need the bearer token here (Serve listens beyond loopback)."""

    status = 401


def refusal(exc: ServeError) -> tuple[int, str]:
    """(HTTP status, message) of a refusal, raised here or in another deployment."""
    original = getattr(exc, "cause", exc)  # across a DeploymentHandle: RayTaskError(<class>)
    return original.status, str(original)


# -- requests -----------------------------------------------------------------------------------
class PredictBody(BaseModel):
    """Candles are optional: without them the predictor reads its configured source. Candle rows
    stay plain dicts: `serve.predict.candles_from_rows` parses 800+ of them in one C-level pass."""

    model_config = ConfigDict(extra="forbid")
    candles: list[dict[str, Any]] | None = None
    account: AccountState | None = None


class PredictAllBody(BaseModel):
    """`markets` (default: every served one) without repeats; candles and accounts only for the
    markets asked for. The ingress also refuses a market it does not serve (404)."""

    model_config = ConfigDict(extra="forbid")
    markets: list[str] | None = None
    candles: dict[str, list[dict[str, Any]]] | None = None
    accounts: dict[str, AccountState] | None = None

    @model_validator(mode="after")
    def _one_each(self) -> PredictAllBody:
        markets = self.markets or []
        repeated = sorted({m for m in markets if markets.count(m) > 1})
        if repeated:
            raise ValueError(f"markets lists {', '.join(repeated)} more than once")
        if self.markets is not None:
            extra = sorted({*(self.candles or {}), *(self.accounts or {})} - set(markets))
            if extra:
                raise ValueError(f"candles or accounts for markets not asked for: {extra}")
        return self


# -- replies ------------------------------------------------------------------------------------
class Probabilities(BaseModel):
    model_config = ConfigDict(frozen=True)
    sell: float
    hold: float
    buy: float

    @model_validator(mode="after")
    def _distribution(self) -> Probabilities:
        checked_probabilities(self.as_tuple())
        return self

    @classmethod
    def of(cls, values: tuple[float, float, float]) -> Probabilities:
        """From the model's column order (sell, hold, buy)."""
        sell, hold, buy = values
        return cls(sell=sell, hold=hold, buy=buy)

    def as_tuple(self) -> tuple[float, float, float]:
        return self.sell, self.hold, self.buy


class Sizing(BaseModel):
    """The share of cash (BUY) or of the position (SELL) to act with, and who decided it."""

    model_config = ConfigDict(frozen=True)
    ratio: float = Field(ge=0.0, le=1.0)
    source: str
    reason: str


class BarriersView(BaseModel):
    """A triple-barrier label's barriers (`features.barriers.Barriers`): fractions, hours."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    take_profit: float  # after the round-trip fee
    stop_loss: float
    horizon: int  # the time limit, hours


class LabelView(BaseModel):
    """The label the served model was trained on, as the moves its BUY and SELL stand for
    (`features.barriers.LabelMoves`): what the loop's decision margin prices the edge with, and,
    for a triple-barrier label, the barriers that close its positions. Read from the bundle
    (`features.barriers.bundle_moves`), so a model trained on other barriers than
    configs/features.yaml is traded on its own; values no label can have are refused here."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    up: float
    down: float
    barriers: BarriersView | None = None

    @model_validator(mode="after")
    def _a_label(self) -> LabelView:
        self.moves()  # LabelMoves and Barriers check their values (ValueError -> 422/malformed)
        return self

    @classmethod
    def of(cls, moves: LabelMoves) -> LabelView:
        barriers = moves.barriers
        view = None if barriers is None else BarriersView(**barriers.to_dict())  # type: ignore[arg-type]
        return cls(up=moves.up, down=moves.down, barriers=view)

    def moves(self) -> LabelMoves:
        barriers = None if self.barriers is None else Barriers.from_dict(self.barriers.model_dump())
        return LabelMoves(self.up, self.down, barriers)


class ModelView(BaseModel):
    """What one market's predictor says about its newest closed hour, before sizing."""

    model_config = ConfigDict(frozen=True)
    market: Market
    time: datetime  # open time (KST) of the newest closed candle the model saw
    probabilities: Probabilities
    model_version: str
    volatility: float = Field(ge=0.0)  # std of the last 24 simple hourly returns (sizing's input)
    served_by: str  # the replica that answered
    model_age_hours: float | None = None  # hours from the end of its training window to `time`
    stale: bool = False  # older than the predictor's max_model_age_hours: opens no position
    # How far this hour's feature row lies from the model's training rows (train.novelty; 1.0: as
    # far as a typical training hour); past the bundle's threshold it is `novel` and the loop opens
    # no position. None (and novel false) from a bundle made before the novelty gate.
    dissimilarity: float | None = Field(None, ge=0.0)
    novel: bool = False
    label: LabelView  # the model's own label: the loop prices and closes its trades with it

    @computed_field  # type: ignore[prop-decorator]
    @property
    def signal(self) -> SignalName:
        """The most likely class; derived, so it can never disagree with the probabilities."""
        p = self.probabilities.as_tuple()
        return Signal(max(range(3), key=p.__getitem__)).name  # type: ignore[return-value]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def confidence(self) -> float:
        return max(self.probabilities.as_tuple())

    def prediction(self) -> Prediction:
        """The domain view the policy and the ledger take."""
        return Prediction(self.market, self.time, self.probabilities.as_tuple(), self.model_version)


class PredictionReply(ModelView):
    """`POST /v1/predict/{market}`: the model's view of the hour, sized for the given account."""

    sizing: Sizing

    @classmethod
    def of(cls, view: ModelView, sizing: Sizing) -> PredictionReply:
        return cls(**dict(view), sizing=sizing)


class ErrorDetail(BaseModel):
    status: int
    message: str


class PredictAllReply(BaseModel):
    """`POST /v1/predict`: every market that answered, and why each other one did not."""

    predictions: list[PredictionReply]
    errors: dict[str, ErrorDetail]
