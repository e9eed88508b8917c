"""The multiplexed predictor: one fixed pool of replicas serving every market, a few bundles each.

One deployment per market gives each market a whole process (torch, LightGBM, pandas, Ray: ~700
MB) for a bundle of a few MB, so with many markets the processes fill the machine, not the
models. Here `serving.replicas` replicas hold up to `serving.models_per_replica` bundles each,
loaded on first use and evicted least recently used by Serve's own `@serve.multiplexed`; Serve's
router sends a request to a replica that already holds its model id when one does.

The model id carries the version, `KRW-BTC@v0007` (`model_id`): the ingress resolves a market to
its CURRENT version (`serve.routing`) and a replica loads exactly that version, which the registry
never changes once registered. A promotion or a rollback changes the id, so a replica loads the
new bundle and never serves the old one under the new name, and a replica that evicted a model
loads whatever id it is asked for next: CURRENT's. A bundle that fails to load is a 503 for its
market only (`BundleUnavailable`), remembered for RETRY_FAILED_S so a broken bundle is not fetched
again on every request.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import serve

from features.exchange import InvalidMarketError, check_market
from serve.candle_feed import CandleFeed
from serve.config import MarketSet, ServeConfig
from serve.deployments import PREDICTOR_BOUNDS, replica_id
from serve.metrics import prediction_metrics
from serve.model_age import prediction_age
from serve.model_slot import RETRY_FAILED_S
from serve.predict import RequestCandles, model_feature_set, predict_candles, warm_up
from serve.schema import ModelView, Unavailable
from serve.scratch import scratch_dir
from train.bundle import BundleError, HybridModel, load_bundle
from train.registry import ModelRegistry, parse_version

log = logging.getLogger(__name__)
SEPARATOR = "@"


class BundleUnavailable(Unavailable):
    """The bundle a model id names could not be loaded (503 for that market only)."""


def model_id(market: str, version: str) -> str:
    """`KRW-BTC@v0007`: what the pool is asked for; the version is part of the name."""
    return f"{market}{SEPARATOR}{version}"


def parse_model_id(value: str) -> tuple[str, str]:
    """(market, version) of a model id; BundleUnavailable naming it when it is not one."""
    market, separator, version = value.partition(SEPARATOR)
    try:
        check_market(market)
    except InvalidMarketError as exc:
        raise BundleUnavailable(f"model id {value!r} names no market: {exc}") from exc
    if not separator or parse_version(version) is None:
        raise BundleUnavailable(f"model id {value!r} is not <market>@<version> (KRW-BTC@v0007)")
    return market, version


@serve.deployment(**PREDICTOR_BOUNDS)
class MultiplexedPredictor:
    """Every market's bundle, by model id, up to `serving.models_per_replica` at a time."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = ServeConfig.model_validate(config)
        warm_up()
        self.registry = ModelRegistry(self.config.registry_root())
        self.markets = frozenset(self.config.served_markets())
        self.feed = CandleFeed(self.config)
        self.replica = replica_id()
        self.predictions, self.version_gauge = prediction_metrics()
        self.failures: dict[str, tuple[str, float]] = {}  # model id -> (message, when)
        self.loads = 0
        self._scratch = scratch_dir("multiplexed")

        async def load(model: str) -> HybridModel:  # a plain function: Serve keeps its LRU on it
            return await asyncio.to_thread(self._load, model)

        # Applied here, not as a method decorator: the limit is configuration, not code.
        self.load_model = serve.multiplexed(
            max_num_models_per_replica=self.config.serving.models_per_replica
        )(load)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """The deployment's `user_config` `markets`, when given, replace the args' list: a market
        added at runtime (`python -m cluster add-market`) without restarting the pool."""
        markets = (user_config or {}).get("markets")
        if markets is not None:
            self.markets = frozenset(MarketSet.model_validate({"markets": markets}).markets)

    def _load(self, model: str) -> HybridModel:
        """Fetch and load one immutable version; off the event loop (file copies, torch.load)."""
        market, version = parse_model_id(model)
        try:
            bundle = self._fetch(market, version)
        except Exception as exc:  # noqa: BLE001 - any failure is this market's 503, not a 500
            message = f"{market} {version} failed to load ({exc}); {market} answers 503"
            self.failures[model] = (message, time.monotonic())
            log.error(message)
            raise BundleUnavailable(message) from exc
        self.failures.pop(model, None)
        self.loads += 1
        self.version_gauge.set(int(version.lstrip("v")), tags={"market": market})
        log.info("%s loaded on %s", model, self.replica)
        return bundle

    def _fetch(self, market: str, version: str) -> HybridModel:
        if market not in self.markets:
            raise LookupError(f"{market} is not served by this pool")
        scratch = Path(tempfile.mkdtemp(dir=self._scratch.name))
        try:
            bundle = load_bundle(self.registry.fetch(market, version, dest_dir=scratch))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # loaded into memory: no file is kept
        found = (bundle.metadata.get("market"), bundle.version)
        if found != (market, version):
            raise BundleError(f"the registry returned {found[0]} {found[1]} for this name")
        return bundle

    async def _model(self, model: str) -> HybridModel:
        failed = self.failures.get(model)
        if failed is not None and time.monotonic() - failed[1] < RETRY_FAILED_S:
            raise BundleUnavailable(failed[0])  # before Serve's LRU, which would evict for it
        return await self.load_model(model)

    async def predict(self, candles: RequestCandles = None) -> ModelView:
        model = serve.get_multiplexed_model_id()
        market, _ = parse_model_id(model)
        bundle = await self._model(model)
        context = self.feed.context(market, model_feature_set(bundle))
        view = predict_candles(
            bundle, market, self.feed.candles(market, candles), self.replica, context
        )
        self.predictions.inc(tags={"market": market, "signal": view.signal})
        window = bundle.metadata.get("train_window")
        return view.model_copy(
            update=prediction_age(window, view.time, self.config.max_model_age_hours)
        )

    def status(self) -> dict[str, Any]:
        """This replica's view: the model ids it holds (least recently used first, read from
        Serve's multiplexer, which keeps it on the loader function), how many loads it made
        (loads minus held: evictions), and the ids that failed to load."""
        wrapper = getattr(self.load_model.__wrapped__, "__serve_multiplex_wrapper", None)
        held = list(wrapper.models) if wrapper is not None else []
        failed = {model: message for model, (message, _) in self.failures.items()}
        return {"replica": self.replica, "models": held, "loads": self.loads, "failed": failed}
