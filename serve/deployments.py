"""The graph's worker deployments: one HybridPredictor per market, and the SizingNode.

They answer with the contract's types (`serve.schema.ModelView`, `Sizing`) and refuse with its
exceptions (`Unavailable`, `BadRequest`), which reach the ingress through the DeploymentHandle
as instances of their own classes. Nothing here places an order. A prediction carries its model's
age and staleness (`serve.model_age`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from ray import serve

from features.domain import AccountState, Signal
from serve.candle_feed import CandleFeed
from serve.config import ServeConfig
from serve.llm_sizer import LLMSizer
from serve.metrics import prediction_metrics, sizing_metrics
from serve.model_age import prediction_age, status_age
from serve.model_slot import ModelSlot
from serve.predict import RequestCandles, model_feature_set, predict_candles, warm_up
from serve.schema import BadRequest, ModelView, Sizing, Unavailable
from serve.sizing import SizingRequest, load_sizing_config
from train.registry import ModelRegistry

log = logging.getLogger(__name__)


def replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside a replica (tests calling the class directly)
        return "local"


# Bounded: a flood waits in no unbounded queue (Serve answers 503 past max_queued_requests);
# the deploy config may override both per deployment. The multiplexed pool takes the same.
PREDICTOR_BOUNDS = {"max_ongoing_requests": 8, "max_queued_requests": 32}


@serve.deployment(**PREDICTOR_BOUNDS)
class HybridPredictor:
    """Serves one market's CURRENT bundle; watches CURRENT so promotions arrive by themselves."""

    def __init__(self, market: str, config: dict[str, Any]) -> None:
        self.config = ServeConfig.model_validate(config)
        self.market = market
        warm_up()
        registry = ModelRegistry(self.config.registry_root())
        self.slot = ModelSlot(market, registry, self.config.poll_s).start()
        self.feed = CandleFeed(self.config)
        self.replica = replica_id()
        self.predictions, self.version_gauge = prediction_metrics()
        self._published: int | None = None
        self._publish_version()
        self.last_hour: datetime | None = None  # the newest hour this replica predicted

    def _publish_version(self) -> None:
        """Sets the gauge when the served version changed (once per change, not per request)."""
        loaded = self.slot.loaded
        number = int(loaded.version.lstrip("v")) if loaded else 0
        if number != self._published:
            self.version_gauge.set(number, tags={"market": self.market})
            self._published = number

    async def predict(self, rows: RequestCandles = None) -> ModelView:
        loaded = self.slot.loaded
        if loaded is None:
            raise Unavailable(self.slot.status()["last_error"] or f"no model for {self.market}")
        candles = self.feed.candles(self.market, rows)
        context = self.feed.context(self.market, model_feature_set(loaded.model))
        view = predict_candles(loaded.model, self.market, candles, self.replica, context)
        self.predictions.inc(tags={"market": self.market, "signal": view.signal})
        self._publish_version()
        self.last_hour = view.time
        window = loaded.model.metadata.get("train_window")
        return view.model_copy(
            update=prediction_age(window, view.time, self.config.max_model_age_hours)
        )

    def reload(self) -> dict[str, Any]:
        changed = self.slot.refresh()
        self._publish_version()
        return {**self.status(), "changed": changed}

    def status(self) -> dict[str, Any]:
        """The slot's status plus the model's age at the newest hour this replica predicted."""
        status = {**self.slot.status(), "replica": self.replica}
        limit = self.config.max_model_age_hours
        return {**status, **status_age(status.get("train_window"), self.last_hour, limit)}


@serve.deployment
class SizingNode:
    """Signal + account -> investment ratio; LLMs checked against each other, rule as fallback."""

    def __init__(self, sizing_config_path: str) -> None:
        self.config = load_sizing_config(sizing_config_path)
        self.sizer = LLMSizer(self.config)  # keys read here, from this replica's environment
        self.sources = sizing_metrics()

    async def size(self, view: ModelView, account: AccountState) -> Sizing:
        try:
            request = SizingRequest(
                market=view.market,
                signal=Signal[view.signal],
                probabilities=view.probabilities.as_tuple(),
                volatility=view.volatility,
                account=account,
            )
        except ValueError as exc:
            raise BadRequest(f"cannot size this request: {exc}") from exc
        result = await self.sizer.size(request)
        self.sources.inc(tags={"source": result.source})
        return Sizing(ratio=result.ratio, source=result.source, reason=result.reason)
