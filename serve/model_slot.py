"""One market's model inside one replica: loaded from the registry, swapped when CURRENT moves.

Every replica watches CURRENT itself (a small read every `poll_s`), so a promotion or a rollback
reaches all replicas without a redeploy; a reload call reaches one replica only. A bundle that fails
to load leaves the previous model serving and is reported in `status()`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from features.exchange import InvalidMarketError
from serve.scratch import scratch_dir
from train.bundle import HybridModel, load_bundle
from train.registry import ModelRegistry, RegistryError

log = logging.getLogger(__name__)
RETRY_FAILED_S = 60.0  # a version that failed to load is tried again after this long


@dataclass(frozen=True)
class Loaded:
    model: HybridModel
    version: str
    loaded_at: float


class ModelSlot:
    def __init__(self, market: str, registry: ModelRegistry, poll_s: float) -> None:
        self.market = market
        self.registry = registry
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._loaded: Loaded | None = None
        self._last_error: str | None = None
        self._failed: tuple[str, float] | None = None  # (version token, when)
        self._cache = scratch_dir(market)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def loaded(self) -> Loaded | None:
        return self._loaded

    def start(self) -> ModelSlot:
        """Load CURRENT now (a missing model is not fatal: the market answers 503), then watch."""
        self.refresh()
        self._watcher = threading.Thread(
            target=self._watch, name=f"watch-{self.market}", daemon=True
        )
        self._watcher.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._cache.cleanup()

    def refresh(self, force: bool = False) -> bool:
        """Load CURRENT if it differs from what is served; True when a new model now serves."""
        with self._lock:
            try:
                token = self.registry.current_version_token(self.market)
            except (RegistryError, InvalidMarketError, OSError) as exc:
                self._last_error = f"cannot read CURRENT: {exc}"
                return False
            if token is None:
                self._last_error = f"no model promoted for {self.market} yet"
                return False
            if self._loaded is not None and token == self._loaded.version and not force:
                return False
            if self._recently_failed(token) and not force:
                return False
            return self._load(token)

    def _recently_failed(self, token: str) -> bool:
        return (
            self._failed is not None
            and self._failed[0] == token
            and time.monotonic() - self._failed[1] < RETRY_FAILED_S
        )

    def _load(self, token: str) -> bool:
        try:
            version = self.registry.current(self.market) or token
            directory = self.registry.fetch(self.market, version, dest_dir=Path(self._cache.name))
            model = load_bundle(directory)
        except Exception as exc:  # noqa: BLE001 - any failure must leave the old model serving
            self._failed = (token, time.monotonic())
            serving = self._loaded.version if self._loaded else "nothing"
            self._last_error = (
                f"{self.market} {token} failed to load ({exc}); still serving {serving}"
            )
            log.error(self._last_error)
            return False
        self._loaded = Loaded(model, version, time.time())
        self._last_error = None
        self._failed = None
        log.info("%s now serves %s", self.market, version)
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.refresh()

    def status(self) -> dict[str, Any]:
        loaded = self._loaded
        return {
            "market": self.market,
            "version": loaded.version if loaded else None,
            "loaded_at": loaded.loaded_at if loaded else None,
            "train_window": loaded.model.metadata.get("train_window") if loaded else None,
            "last_error": self._last_error,
        }
