"""`TradingLoop`: the named, detached Ray actor that trades every hour.

A restarted actor does not resume the call that was in flight, so the schedule lives in a thread
the constructor starts: on every (re)start it rebuilds the paper accounts from the ledger's fills,
the kill switches from the ledger's risk events, re-runs the newest closed hour (idempotent: the
ledger's decisions are reused and sent orders looked up, never re-sent), then waits for each next
hour. The clock is injectable, so a test runs many "hours" in seconds.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Mapping
from typing import Any, Literal

import pandas as pd
import ray
from pydantic import Field

from features.config import CONFIG_DIR, Strict, load_features_config, resolve_path
from features.sources import ParquetDirSource, UpbitSource
from trading.account import loop_accounts
from trading.broker import BrokerBanned
from trading.clock import AcceleratedClock, Clock, WallClock, closed_hour, next_run
from trading.config import TradingConfig, load_trading_config
from trading.hourly import HourlyTrader, Labels
from trading.ledger import Ledger
from trading.monitor import LoopMetrics, summary
from trading.serve_client import ServeClient

log = logging.getLogger(__name__)
LOOP_NAME = "TradingLoop"
NAMESPACE = "hybrid-trader"


class ClockSettings(Strict):
    kind: Literal["wall", "accelerated"] = "wall"
    start: str | None = None  # accelerated: KST start, e.g. "2025-06-01T00:00:30"
    speed: float = Field(3600.0, gt=0)
    anchor: float | None = None  # epoch seconds at which the clock reads `start`; None: now


class LoopSettings(Strict):
    """Everything the actor needs, as plain data (it crosses the object store)."""

    mode: Literal["paper", "live"] = "paper"
    trading_config: str = str(CONFIG_DIR / "trading.yaml")
    overrides: list[str] = []
    features_config: str = str(CONFIG_DIR / "features.yaml")
    serve_url: str = "http://127.0.0.1:8000"
    data_dir: str | None = None  # Parquet candles; None: Upbit
    upbit_base_url: str = "https://api.upbit.com"
    clock: ClockSettings = ClockSettings()
    max_hours: int | None = None  # stop after this many hours (demos, tests)

    def trading(self) -> TradingConfig:
        return load_trading_config(resolve_path(self.trading_config), self.overrides)


def make_clock(settings: ClockSettings) -> Clock:
    if settings.kind == "wall":
        return WallClock()
    start = pd.Timestamp(settings.start) if settings.start else pd.Timestamp.now().floor("h")
    return AcceleratedClock(start, settings.speed, settings.anchor or time.time())


class LoopCore:
    """The loop without Ray: builds the trader, runs the schedule, answers status."""

    def __init__(self, settings: LoopSettings) -> None:
        self.settings = settings
        self.config = settings.trading()
        features = load_features_config(resolve_path(settings.features_config))
        self.markets = self.config.loop.markets or features.markets
        self.ledger = Ledger(self.config.ledger.resolve_path())
        self.clock = make_clock(settings.clock)
        source = (
            ParquetDirSource(resolve_path(settings.data_dir))
            if settings.data_dir
            else UpbitSource(settings.upbit_base_url)
        )
        accounts = loop_accounts(
            self.config, self.markets, self.ledger, settings.mode, settings.upbit_base_url
        )
        labels = Labels(features.labels.horizon_hours, features.labels.threshold)
        self.trader = HourlyTrader(
            self.config, self.markets, self.ledger, source, ServeClient(settings.serve_url),
            accounts, labels,
        )  # fmt: skip
        self.hours_run = 0
        self.last_hour: pd.Timestamp | None = None
        self.errors: list[str] = []
        self.alarm: str | None = None
        self.stop_event = threading.Event()

    def run_hour(self, hour: pd.Timestamp) -> None:
        try:
            self.trader.run_hour(hour)
        except BrokerBanned as exc:
            self.alarm = f"exchange banned this client (418): {exc}; the loop stopped"
            log.critical(self.alarm)
            self.stop_event.set()
        except Exception:  # noqa: BLE001 - one bad hour must not end the loop
            self.errors = [*self.errors[-9:], f"{hour}: {traceback.format_exc(limit=3)}"]
            log.exception("hour %s failed", hour)
        self.hours_run += 1
        self.last_hour = hour

    def _done(self) -> bool:
        limit = self.settings.max_hours
        return self.stop_event.is_set() or (limit is not None and self.hours_run >= limit)

    def schedule(self) -> None:
        """Re-run the newest closed hour (idempotent), then each next hour after it closes."""
        delay = self.config.loop.delay_after_close_s
        self.run_hour(closed_hour(self.clock.now() - pd.Timedelta(seconds=delay)))
        while not self._done():
            wake = next_run(self.clock.now() - pd.Timedelta(seconds=delay), delay)
            if self.stop_event.wait(self.clock.seconds_until(wake)):
                break  # `stop` wakes the wait at once instead of after up to an hour
            self.run_hour(closed_hour(wake - pd.Timedelta(seconds=delay)))

    def status(self) -> dict[str, Any]:
        arms = sorted({arm for arm, _ in self.trader.accounts})
        report = summary(
            self.ledger, arms, self.markets, self.config.paper.initial_krw,
            self.config.loop.rolling_window_hours,
        )  # fmt: skip
        return {
            **report,
            "mode": self.settings.mode,
            "running": not self._done(),
            "hours_run": self.hours_run,
            "last_hour": str(self.last_hour) if self.last_hour is not None else None,
            "clock": str(self.clock.now()),
            "errors": self.errors,
            "alarm": self.alarm,
            "ledger": str(self.config.ledger.resolve_path()),
        }

    def set_trading(self, enabled: bool, by: str, reason: str) -> dict[str, Any]:
        """A person switches every account's kill switch off or back on."""
        now = self.clock.now().to_pydatetime()
        for account in self.trader.accounts.values():
            guard = account.guard.reset(by, now) if enabled else account.guard.halt(reason, now)
            account.guard = guard
            self.ledger.set_risk_state(guard.to_dict(), account.risk_key)
        return {"trading_enabled": enabled, "by": by}


@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0)
class TradingLoop:
    def __init__(self, settings: dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO)
        self.core = LoopCore(LoopSettings.model_validate(settings))
        self.metrics = LoopMetrics()
        self.core.trader.on_hour = lambda trader, hour: self._publish()
        self.thread = threading.Thread(target=self.core.schedule, name="hourly", daemon=True)
        self.thread.start()

    def _publish(self) -> None:
        try:
            self.metrics.publish(self.core.status())
        except Exception:  # noqa: BLE001 - metrics must never stop trading
            log.exception("publishing metrics failed")

    def status(self) -> dict[str, Any]:
        return self.core.status()

    def set_trading(self, enabled: bool, by: str, reason: str = "switched off by a person"):
        return self.core.set_trading(enabled, by, reason)

    def stop(self) -> dict[str, Any]:
        """Finish the hour in progress, then stop; the ledger stays as it is."""
        self.core.stop_event.set()
        self.thread.join(timeout=120)
        return self.core.status()


def start_loop(
    settings: LoopSettings, *, pin_to_head: bool = True, env: Mapping[str, str] | None = None
) -> Any:
    """The named detached loop, created once: a second call returns the running one.

    `env`: variables only the loop's own process gets (its runtime environment, kept across
    restarts), such as a live loop's Upbit keys; never part of `settings`, which is plain data.
    """
    if settings.clock.kind == "accelerated" and settings.clock.anchor is None:
        clock = settings.clock.model_copy(update={"anchor": time.time()})
        settings = settings.model_copy(update={"clock": clock})
    resources = {"node:__internal_head__": 0.001} if pin_to_head else {}
    runtime_env = {"env_vars": dict(env)} if env else None
    return TradingLoop.options(
        name=LOOP_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        resources=resources,
        runtime_env=runtime_env,
    ).remote(settings.model_dump())


def get_loop() -> Any:
    return ray.get_actor(LOOP_NAME, namespace=NAMESPACE)
