"""The graph's worker deployments: one HybridPredictor per market, and the SizingNode.

They answer with the contract's types (`serve.schema.ModelView`, `Sizing`) and refuse with its
exceptions (`Unavailable`, `BadRequest`), which reach the ingress through the DeploymentHandle
as instances of their own classes. Nothing here places an order.

A model's age is the hours from the end of its training window (`train_window` in its metadata)
to the hour it predicts; past `max_model_age_hours` it is served with `stale: true` and the loop
opens no position on it. Measured at the predicted hour, not the wall clock, so a replay of stored
hours judges a model as it was then; `/v1/models` reports the age at the newest hour the replica
predicted.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import pandas as pd
from ray import serve

from features import indicators
from features.config import resolve_path
from features.domain import AccountState, Signal
from features.sources import CachedSource, CandleSource, ParquetDirSource, UpbitSource
from features.upbit_http import UpbitError
from serve.config import ServeConfig, SourceConfig
from serve.metrics import prediction_metrics, sizing_metrics
from serve.model_slot import ModelSlot
from serve.predict import candles_from_rows, predict_candles, warm_up
from serve.schema import BadRequest, ModelView, Sizing, Unavailable
from serve.sizing import LLMSizer, SizingRequest, load_sizing_config
from train.registry import ModelRegistry

log = logging.getLogger(__name__)


def replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside a replica (tests calling the class directly)
        return "local"


def build_source(config: SourceConfig) -> CandleSource:
    """Where a predictor reads candles when a request carries none."""
    if config.kind == "parquet":
        return ParquetDirSource(resolve_path(config.data_dir))
    upbit = UpbitSource(config.upbit_base_url, timeout=config.timeout_s)
    return CachedSource(upbit, resolve_path(config.cache_dir))


def model_age_hours(train_window: Any, hour: datetime) -> float | None:
    """Hours from the end of the training window to `hour`; None when the window is unknown."""
    try:
        end = pd.Timestamp(train_window[1])
    except (TypeError, ValueError, IndexError, KeyError):
        return None
    return (pd.Timestamp(hour) - end) / pd.Timedelta(hours=1)


# Bounded: a flood waits in no unbounded queue (Serve answers 503 past max_queued_requests);
# the deploy config may override both per market.
@serve.deployment(max_ongoing_requests=8, max_queued_requests=32)
class HybridPredictor:
    """Serves one market's CURRENT bundle; watches CURRENT so promotions arrive by themselves."""

    def __init__(self, market: str, config: dict[str, Any]) -> None:
        self.config = ServeConfig.model_validate(config)
        self.market = market
        warm_up()
        registry = ModelRegistry(self.config.registry_root())
        self.slot = ModelSlot(market, registry, self.config.poll_s).start()
        self.source: CandleSource | None = None
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

    def _candles(self, rows: list[dict[str, Any]] | None) -> pd.DataFrame:
        if rows is not None:
            return candles_from_rows(rows, self.config.max_candles)
        if self.source is None:
            self.source = build_source(self.config.source)
        try:
            return self.source.latest(self.market, indicators.CANDLES_FOR_SERVING)
        except (UpbitError, OSError, LookupError) as exc:
            raise Unavailable(f"{self.market}: candles unavailable: {exc}") from exc

    async def predict(self, rows: list[dict[str, Any]] | None = None) -> ModelView:
        loaded = self.slot.loaded
        if loaded is None:
            raise Unavailable(self.slot.status()["last_error"] or f"no model for {self.market}")
        view = predict_candles(loaded.model, self.market, self._candles(rows), self.replica)
        self.predictions.inc(tags={"market": self.market, "signal": view.signal})
        self._publish_version()
        self.last_hour = view.time
        return view.model_copy(update=self._age(loaded.model.metadata, view.time))

    def _age(self, metadata: dict[str, Any], hour: datetime) -> dict[str, Any]:
        age = model_age_hours(metadata.get("train_window"), hour)
        stale = age is not None and age > self.config.max_model_age_hours
        return {"model_age_hours": age, "stale": stale}

    def reload(self) -> dict[str, Any]:
        changed = self.slot.refresh()
        self._publish_version()
        return {**self.status(), "changed": changed}

    def status(self) -> dict[str, Any]:
        """The slot's status plus the model's age at the newest hour this replica predicted."""
        status = {**self.slot.status(), "replica": self.replica}
        window, hour = status.get("train_window"), self.last_hour
        age = model_age_hours(window, hour) if window and hour is not None else None
        return {
            **status,
            "trained_through": window[1] if window else None,
            "age_at": str(hour) if hour is not None else None,
            "age_hours": age,
            "stale": age is not None and age > self.config.max_model_age_hours,
            "max_model_age_hours": self.config.max_model_age_hours,
        }


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
