"""How the ingress reaches a market's predictor: its own deployment, or the multiplexed pool.

`MarketRoutes` is what the ingress calls; the HTTP API and its refusals are the same in both modes
(`serving.mode` in `ServeConfig`). Per market, a market is its deployment's handle, whose replicas
watch CURRENT themselves (`serve.model_slot`). Multiplexed, the ingress resolves a market to its
CURRENT version, re-read by one thread every `poll_s` (the interval every per-market slot polls
at: one small file per market, never on the request path), and asks the pool for the model id
`<market>@<version>` (`serve.multiplexed`). A promotion or rollback therefore reaches every
replica of the pool within `poll_s`, as it reaches every per-market replica.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ray.serve.handle import DeploymentHandle

from features.exchange import InvalidMarketError
from serve.config import ServeConfig
from serve.model_age import status_age
from serve.multiplexed import BundleUnavailable, model_id
from serve.predict import CandleColumns
from serve.schema import ModelView, Unavailable, refusal
from train.registry import ModelRegistry, RegistryError

log = logging.getLogger(__name__)


class MarketRoutes(Protocol):
    """The ingress's way to each market's model."""

    markets: list[str]  # sorted

    async def predict(self, market: str, candles: CandleColumns | None) -> ModelView: ...

    async def statuses(self) -> list[dict[str, Any]]: ...

    async def reload(self, market: str) -> dict[str, Any]: ...

    def set_markets(self, markets: list[str]) -> None: ...


class PerMarketRoutes:
    """One HybridPredictor deployment per market (the default, for a handful of markets)."""

    def __init__(self, handles: dict[str, DeploymentHandle]) -> None:
        self.handles = handles
        self.markets = sorted(handles)

    async def predict(self, market: str, candles: CandleColumns | None) -> ModelView:
        return await self.handles[market].predict.remote(candles)

    async def statuses(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(h.status.remote() for h in self.handles.values())))

    async def reload(self, market: str) -> dict[str, Any]:
        return await self.handles[market].reload.remote()

    def set_markets(self, markets: list[str]) -> None:
        """Per market, a market is a deployment of the graph: a list naming others is refused
        (adding one means deploying the graph with it, `python -m cluster add-market`)."""
        missing = sorted(set(markets) - set(self.handles))
        if missing:
            raise ValueError(f"per_market serving has no deployment for {missing}: redeploy the "
                             "hybrid app with them in its args' markets")  # fmt: skip
        self.markets = sorted(markets)


@dataclass(frozen=True)
class Current:
    """A market's CURRENT as the ingress last read it."""

    version: str | None  # what requests are routed to; None: nothing to route to
    problem: str | None = None  # why not, or why the version is not CURRENT's newest word
    train_window: Any = None


def _unpromoted(market: str) -> Current:
    return Current(None, f"no model promoted for {market} yet")


class CurrentVersions:
    """Every market's CURRENT version, read once at start and then every `poll_s` by one thread.

    A poll reads CURRENT only (`current_version_token`); a new token is checked once (a complete
    bundle, its metadata). A CURRENT that cannot be read or points at an unusable bundle keeps the
    previous version routed and says why in `problem`, as a per-market slot keeps serving.
    """

    def __init__(self, registry: ModelRegistry, markets: list[str], poll_s: float) -> None:
        self.registry = registry
        self.poll_s = poll_s
        self._current = {market: _unpromoted(market) for market in markets}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def start(self) -> CurrentVersions:
        for market in self._current:
            self.refresh(market)
        threading.Thread(target=self._watch, name="watch-current", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def get(self, market: str) -> Current:
        return self._current[market]

    def watch(self, markets: list[str]) -> None:
        """Watch these markets from now on (a market added at runtime is read at once)."""
        for market in markets:
            if market not in self._current:
                self._current[market] = _unpromoted(market)
                self.refresh(market)

    def refresh(self, market: str) -> bool:
        """Read `market`'s CURRENT now; True when requests now go to another version."""
        with self._lock:
            before = self._current[market]
            after = self._read(market, before)
            self._current[market] = after
        return after.version != before.version

    def _read(self, market: str, before: Current) -> Current:
        try:
            token = self.registry.current_version_token(market)
            if token is None:
                return _unpromoted(market)
            if token == before.version:
                return Current(token, None, before.train_window)
            version = self.registry.current(market)  # validated: a complete bundle
            window = self.registry.read_metadata(market, version).get("train_window")
        except (RegistryError, InvalidMarketError, OSError) as exc:
            problem = f"cannot use {market}'s CURRENT: {exc}"
            return Current(before.version, problem, before.train_window)
        if version is None:
            return _unpromoted(market)
        log.info("%s routes to %s", market, version)
        return Current(version, None, window)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            for market in list(self._current):
                self.refresh(market)


class MultiplexedRoutes:
    """Every market through one MultiplexedPredictor pool, by the model id of its CURRENT."""

    def __init__(self, pool: DeploymentHandle, config: ServeConfig) -> None:
        self.pool = pool
        self.markets = sorted(config.served_markets())
        registry = ModelRegistry(config.registry_root())
        self.versions = CurrentVersions(registry, self.markets, config.poll_s).start()
        self._handles: dict[str, tuple[str, DeploymentHandle]] = {}  # market -> (id, handle)
        self._failed: dict[str, str] = {}  # model id -> the pool's refusal
        self.max_age_hours = config.max_model_age_hours
        self._last_hour: dict[str, datetime] = {}  # market -> the newest hour predicted

    def _route(self, market: str) -> tuple[str, DeploymentHandle]:
        current = self.versions.get(market)
        if current.version is None:
            raise Unavailable(current.problem or _unpromoted(market).problem)
        wanted = model_id(market, current.version)
        known = self._handles.get(market)
        if known is None or known[0] != wanted:
            known = (wanted, self.pool.options(multiplexed_model_id=wanted))
            self._handles[market] = known
        return known

    async def predict(self, market: str, candles: CandleColumns | None) -> ModelView:
        wanted, handle = self._route(market)
        try:
            view = await handle.predict.remote(candles)
        except BundleUnavailable as exc:
            self._failed[wanted] = refusal(exc)[1]
            raise
        self._failed.pop(wanted, None)
        self._last_hour[market] = view.time
        return view

    def status(self, market: str) -> dict[str, Any]:
        """What `/v1/models` says of a market: the version requests go to (None when nothing can
        answer: no CURRENT, or its bundle failed to load), and why not in `last_error`; the age at
        the newest hour this ingress had predicted."""
        current = self.versions.get(market)
        wanted = model_id(market, current.version) if current.version else None
        failed = self._failed.get(wanted) if wanted else None
        return {
            "market": market,
            "version": None if failed else current.version,
            "model_id": wanted,
            "loaded_at": None,  # loaded on demand, per replica of the pool
            "train_window": current.train_window,
            "last_error": failed or current.problem,
            "replica": "multiplexed",
            **status_age(current.train_window, self._last_hour.get(market), self.max_age_hours),
        }

    async def statuses(self) -> list[dict[str, Any]]:
        return [self.status(market) for market in self.markets]

    def set_markets(self, markets: list[str]) -> None:
        """Serve these markets from now on: the pool loads any market's bundle by its model id,
        so a market added at runtime needs only its CURRENT watched (no replica restarts)."""
        self.versions.watch(markets)
        self.markets = sorted(markets)

    async def reload(self, market: str) -> dict[str, Any]:
        """Re-read CURRENT now instead of within `poll_s`, and forget a load failure this ingress
        saw (the pool's replicas try a failed version again after RETRY_FAILED_S)."""
        changed = await asyncio.to_thread(self.versions.refresh, market)
        current = self.versions.get(market)
        if current.version:
            self._failed.pop(model_id(market, current.version), None)
        return {**self.status(market), "changed": changed}


def market_routes(
    predictors: dict[str, DeploymentHandle] | DeploymentHandle, config: ServeConfig | None
) -> MarketRoutes:
    """Per-market handles (a dict), or the multiplexed pool's one handle with the config."""
    if isinstance(predictors, dict):
        return PerMarketRoutes(predictors)
    if config is None:
        raise ValueError("the multiplexed pool needs the ServeConfig (registry, markets, poll_s)")
    return MultiplexedRoutes(predictors, config)
