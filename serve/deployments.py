"""The graph's worker deployments: one HybridPredictor per market, and the SizingNode.

Both return plain dicts, errors included (`{"error": {"status", "message"}}`), so the ingress maps
them to HTTP codes without unwrapping Ray exceptions. Nothing here places an order.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from features import indicators
from features.domain import AccountState, Signal
from features.upbit_http import UpbitError
from serve.config import ServeConfig
from serve.metrics import prediction_metrics, sizing_metrics
from serve.model_slot import ModelSlot
from serve.predict import RequestError, candles_from_rows, predict_candles, warm_up
from serve.sizing import LLMSizer, SizingRequest, load_sizing_config
from serve.sources import build_source
from train.registry import ModelRegistry

log = logging.getLogger(__name__)
SIGNAL_NAMES = {Signal.SELL: "SELL", Signal.HOLD: "HOLD", Signal.BUY: "BUY"}


def error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"status": status, "message": message}}


def replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside a replica (tests calling the class directly)
        return "local"


@serve.deployment
class HybridPredictor:
    """Serves one market's CURRENT bundle; watches CURRENT so promotions arrive by themselves."""

    def __init__(self, market: str, config: dict[str, Any]) -> None:
        self.config = ServeConfig.model_validate(config)
        self.market = market
        warm_up()
        registry = ModelRegistry(self.config.registry_root())
        self.slot = ModelSlot(market, registry, self.config.poll_s).start()
        self.source = None
        self.replica = replica_id()
        self.predictions, self.version_gauge = prediction_metrics()
        self._published: int | None = None
        self._publish_version()

    def _publish_version(self) -> None:
        """Sets the gauge when the served version changed (once per change, not per request)."""
        loaded = self.slot.loaded
        number = int(loaded.version.lstrip("v")) if loaded else 0
        if number != self._published:
            self.version_gauge.set(number, tags={"market": self.market})
            self._published = number

    def _candles(self, rows: list[dict[str, Any]] | None):
        if rows is not None:
            return candles_from_rows(rows, self.config.max_candles)
        if self.source is None:
            self.source = build_source(self.config.source)
        try:
            return self.source.latest(self.market, indicators.CANDLES_FOR_SERVING)
        except (UpbitError, OSError, LookupError) as exc:
            raise RequestError(503, f"{self.market}: candles unavailable: {exc}") from exc

    async def predict(self, rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        loaded = self.slot.loaded
        if loaded is None:
            return error(503, self.slot.status()["last_error"] or f"no model for {self.market}")
        try:
            raw = predict_candles(loaded.model, self.market, self._candles(rows))
        except RequestError as exc:
            return error(exc.status, exc.message)
        signal = Signal(max(range(3), key=lambda k: raw.probabilities[k]))
        self.predictions.inc(tags={"market": self.market, "signal": SIGNAL_NAMES[signal]})
        self._publish_version()
        return {
            "market": self.market,
            "time": raw.time.isoformat(),
            "signal": int(signal),
            "probabilities": raw.probabilities,
            "model_version": raw.model_version,
            "volatility": raw.volatility,
            "served_by": self.replica,
        }

    def reload(self) -> dict[str, Any]:
        changed = self.slot.refresh()
        self._publish_version()
        return {**self.status(), "changed": changed}

    def status(self) -> dict[str, Any]:
        return {**self.slot.status(), "replica": self.replica}


@serve.deployment
class SizingNode:
    """Signal + account -> investment ratio; LLMs checked against each other, rule as fallback."""

    def __init__(self, sizing_config_path: str) -> None:
        self.config = load_sizing_config(sizing_config_path)
        self.sizer = LLMSizer(self.config)  # keys read here, from this replica's environment
        self.sources = sizing_metrics()

    async def size(self, prediction: dict[str, Any], account: dict[str, Any]) -> dict[str, Any]:
        try:
            request = SizingRequest(
                market=prediction["market"],
                signal=Signal(prediction["signal"]),
                probabilities=tuple(prediction["probabilities"]),
                volatility=float(prediction["volatility"]),
                account=AccountState(**account),
            )
        except (ValueError, TypeError, KeyError) as exc:
            return error(422, f"cannot size this request: {exc}")
        result = await self.sizer.size(request)
        self.sources.inc(tags={"source": result.source})
        return {"ratio": result.ratio, "source": result.source, "reason": result.reason}
