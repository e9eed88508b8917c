"""`TradingLoop`: the named, detached Ray actor that trades every hour.

A restarted actor does not resume the call that was in flight, so the schedule lives in a thread
the constructor starts: on every (re)start it takes the ledger's lease (one loop per ledger, across
clusters: a second loop refuses, naming the holder; a restarted actor keeps its id, so its name,
and takes its own lease back), rebuilds the paper accounts from the ledger's fills, the kill
switches from the ledger's risk events, reconciles a live account with the exchange
(`trading.reconcile`), re-runs the newest closed hour (idempotent: the ledger's decisions are
reused and sent orders looked up, never re-sent), then waits for each next hour. A heartbeat
thread renews the lease; a loop that loses it stops with an alarm.

The clock is injectable: on the accelerated clock (the first run's replay of held-out stored
hours, and the tests) an hour passes in seconds and no hour is skipped, and offline, once the
stored candles end, the loop says it has caught up and waits instead of recording hours it cannot
trade. Only the wall clock holds orders to `loop.max_order_delay_s` after the candle closed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Mapping
from functools import partial
from typing import Any

import pandas as pd
import ray

from features.config import load_features_config, resolve_path
from features.exchange import HOUR
from serve.address import GRAPH_APP, direct_url
from trading.account import loop_accounts
from trading.broker import BrokerBanned
from trading.clock import AcceleratedClock, closed_hour
from trading.hourly import HourlyTrader, Labels
from trading.ledger import Ledger
from trading.ledger_books import LeaseHeld, LeaseLost
from trading.loop_settings import LoopSettings, candle_source, make_clock
from trading.monitor import LoopMetrics, summary
from trading.serve_client import Predictor, ServeClient, admin_token

log = logging.getLogger(__name__)
LOOP_NAME = "TradingLoop"
NAMESPACE = "hybrid-trader"
CAUGHT_UP_RECHECK_S = 60.0  # real seconds between looks for newer stored candles once caught up


class LoopRefused(RuntimeError):
    """This loop may not start: another loop holds its ledger (the message names it)."""


def default_holder() -> str:
    return f"{socket.gethostname()}:pid{os.getpid()}"


class LoopCore:
    """The loop without Ray: takes the ledger's lease, builds the trader, runs the schedule,
    answers status. `holder` names this loop in the lease (the actor passes its Ray actor id,
    which a restart keeps); `predictor` replaces the HTTP client to Serve (tests)."""

    def __init__(
        self, settings: LoopSettings, holder: str | None = None, predictor: Predictor | None = None
    ) -> None:
        self.settings = settings
        self.config = settings.trading()
        features = load_features_config(resolve_path(settings.features_config))
        self.markets = self.config.loop.markets or features.markets
        self.ledger = Ledger(self.config.ledger.resolve_path())
        self.holder = holder or default_holder()
        try:
            self.ledger.lease.acquire(self.holder, settings.mode, self.config.loop.lease_ttl_s)
        except LeaseHeld as exc:
            self.ledger.close()
            raise LoopRefused(str(exc)) from exc
        try:
            self.trader = self._trader(features, predictor)
        except BaseException:
            self.ledger.lease.release(self.holder)
            raise
        self.clock = make_clock(settings.clock)
        if not isinstance(self.clock, AcceleratedClock):  # a replay of stored hours is never late
            self.trader.now = self.clock.now
        self.hours_run = 0
        self.first_hour: pd.Timestamp | None = None
        self.last_hour: pd.Timestamp | None = None
        self.stored_until: pd.Timestamp | None = None  # offline: the newest stored candle
        self.caught_up = False
        self.errors: list[str] = []
        self.alarm: str | None = None
        self.added: list[str] = []  # markets added at runtime, waiting for the next hour
        self._added_lock = threading.Lock()
        self.stop_event = threading.Event()
        threading.Thread(target=self._heartbeat, name="lease", daemon=True).start()

    def _trader(self, features, predictor: Predictor | None) -> HourlyTrader:
        settings = self.settings
        source = candle_source(settings)
        accounts = loop_accounts(
            self.config, self.markets, self.ledger, settings.mode, settings.upbit_base_url
        )
        # the configured label scores realised outcomes; the served model's prices its trades
        labels = Labels(features.labels.horizon_hours, features.labels.threshold)
        lookup = settings.ingress_lookup
        predictor = predictor or ServeClient(
            settings.serve_url,
            token=admin_token(),
            batch_bytes=self.config.loop.predict_batch_bytes,
            locate=partial(direct_url, lookup, GRAPH_APP) if lookup else None,
        )
        return HourlyTrader(
            self.config, self.markets, self.ledger, source, predictor, accounts, labels
        )

    def _heartbeat(self) -> None:
        """Renew the ledger's lease every quarter of its life; a lost lease stops the loop."""
        ttl = self.config.loop.lease_ttl_s
        while not self.stop_event.wait(ttl / 4):
            try:
                self.ledger.lease.renew(self.holder, ttl)
            except LeaseLost as exc:
                self.alarm = f"lost the ledger's lease ({exc}); the loop stopped"
                log.critical(self.alarm)
                self.stop_event.set()
            except Exception:  # noqa: BLE001 - a busy ledger: try again at the next beat
                log.exception("renewing the ledger's lease failed")

    def set_markets(self, markets: list[str]) -> list[str]:
        """Trade `markets` from the next hour on, without a restart: the ones not traded yet are
        added (their accounts built as at start); none is removed at runtime, since a removed
        market's open position would no longer be watched by the stops. Returns the added ones."""
        with self._added_lock:
            known = {*self.markets, *self.added}
            new = [m for m in markets if m not in known]
            self.added += new
        if new:
            log.info("markets added, traded from the next hour: %s", ", ".join(new))
        return new

    def _take_added(self) -> None:
        """In the schedule's thread, between hours: the added markets join the trader."""
        with self._added_lock:
            added, self.added = self.added, []
        if not added:
            return
        live = None
        if self.settings.mode == "live":
            first = next(iter(self.trader.accounts.values()))
            live = (first.broker, first.kill_switch)
        try:
            accounts = loop_accounts(self.config, added, self.ledger, self.settings.mode,
                                     self.settings.upbit_base_url, live)  # fmt: skip
        except Exception:  # noqa: BLE001 - the markets traded so far go on; the keeper asks again
            self.errors = [*self.errors[-9:], f"adding {added}: {traceback.format_exc(limit=3)}"]
            log.exception("adding markets %s failed", added)
            return
        self.trader.add_markets(added, accounts)
        self.markets = list(self.trader.markets)

    def release(self) -> None:
        """Give the lease up (a clean stop), so another loop may start at once."""
        try:
            self.ledger.lease.release(self.holder)
        except Exception:  # noqa: BLE001 - it expires by itself anyway
            log.exception("releasing the ledger's lease failed")

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
        self.first_hour = self.first_hour or hour
        self.last_hour = hour

    def _done(self) -> bool:
        limit = self.settings.max_hours
        return self.stop_event.is_set() or (limit is not None and self.hours_run >= limit)

    @property
    def _delay(self) -> pd.Timedelta:
        return pd.Timedelta(seconds=self.config.loop.delay_after_close_s)

    @property
    def _accelerated(self) -> bool:
        return isinstance(self.clock, AcceleratedClock)

    def schedule(self) -> None:
        """Run the first hour (`_first_hour`), then each next hour a little after it closes.

        On the wall clock the next hour is the one forming now, so an hour missed while the loop
        was busy is gone (its price is). On the accelerated clock it is always the hour after the
        last one, run at once when the clock has passed it, so a replay covers every stored hour.
        Offline, an hour after the newest stored candle is not run: the loop has caught up.
        """
        hour = self._first_hour()
        while not self._done():
            self._take_added()
            stored = self._stored(hour)
            if stored:
                self.run_hour(hour)
            if stored or not self._accelerated:
                hour = self._following(hour)
            wait_s = self.clock.seconds_until(hour + HOUR + self._delay)
            if not stored:  # caught up: look for newer candles now and then, not in a spin
                wait_s = max(wait_s, CAUGHT_UP_RECHECK_S)
            if self.stop_event.wait(wait_s):
                break  # `stop` wakes the wait at once instead of after up to an hour

    def _first_hour(self) -> pd.Timestamp:
        """The newest closed hour, re-run (idempotent). An accelerated clock that restarts within
        its run goes on from the newest hour its ledger has any row for (`Ledger.newest_hour`:
        an hour killed after its trades and before its equity mark is finished, not skipped, and
        no hour is marked again from an account that holds a later hour's fills); a fresh one
        starts at the hour its `start` closes."""
        newest = closed_hour(self.clock.now() - self._delay)
        if not self._accelerated:
            return newest
        first = closed_hour(self.clock.start - self._delay)
        recorded = self.ledger.newest_hour()
        if recorded is not None and pd.Timestamp(recorded) >= first:
            return min(pd.Timestamp(recorded), newest)
        return first

    def _following(self, hour: pd.Timestamp) -> pd.Timestamp:
        if self._accelerated:
            return hour + HOUR
        return max(hour + HOUR, (self.clock.now() - self._delay).floor("h"))

    def _stored(self, hour: pd.Timestamp) -> bool:
        """False offline once `hour` is after every market's newest stored candle (caught up)."""
        if self.settings.data_dir is None:
            return True
        if self.stored_until is None or hour > self.stored_until:
            self.stored_until = self._newest_stored()
        caught_up = self.stored_until is not None and hour > self.stored_until
        if caught_up and not self.caught_up:
            log.info("%s", self._activity())
        self.caught_up = caught_up
        return not caught_up

    def _newest_stored(self) -> pd.Timestamp | None:
        newest = []
        for market in self.markets:
            try:
                candles = self.trader.source.latest(market, 1)
            except Exception:  # noqa: BLE001 - an unreadable market is that hour's no_decision
                continue
            newest += [candles.index[-1]] if len(candles) else []
        return max(newest) if newest else None

    def phase(self) -> str:
        if self._done():
            return "stopped"
        if self.caught_up:
            return "caught_up"
        return "replaying" if self._accelerated and self.settings.data_dir else "trading"

    def _activity(self) -> str:
        """What the loop is doing now, in one sentence for people (status page, cluster status)."""
        done = f"{self.hours_run} hours traded this run"
        span = f", {self.first_hour} .. {self.last_hour}" if self.first_hour is not None else ""
        phase = self.phase()
        if phase == "stopped":
            return f"stopped: {self.alarm or 'stopped'}; {done}{span}"
        if phase == "caught_up":
            return (
                f"caught up with the stored candles: the newest, {self.stored_until}, is traded "
                f"({done}{span}). Offline no newer candle arrives, so the loop waits and records "
                "nothing until the folder gains candles"
            )
        if phase == "replaying":
            left = (self.stored_until - self.last_hour) // HOUR if self._replay_known() else "?"
            return (
                f"replaying stored hours on the accelerated clock ({self.clock.speed:g}x real "
                f"time): {done}{span}, {left} more to the newest stored candle"
                f" ({self.stored_until})"
            )
        delay = self.config.loop.delay_after_close_s
        return f"trading each hour {delay:g} s after it closes (KST); {done}{span}"

    def _replay_known(self) -> bool:
        return self.stored_until is not None and self.last_hour is not None

    def halted_markets(self) -> dict[str, str]:
        return {
            market: "; ".join(h.reason for h in halts)
            for market, halts in self.ledger.halts.open().items()
        }

    def status(self) -> dict[str, Any]:
        arms = sorted({arm for arm, _ in self.trader.accounts})
        report = summary(
            self.ledger, arms, self.markets, self.config.paper.initial_krw,
            self.config.loop.rolling_window_hours,
        )  # fmt: skip
        text = lambda t: str(t) if t is not None else None  # noqa: E731
        return {
            **report,
            "mode": self.settings.mode,
            "running": not self._done(),
            "phase": self.phase(),
            "activity": self._activity(),
            "hours_run": self.hours_run,
            "first_hour": text(self.first_hour),
            "last_hour": text(self.last_hour),
            "stored_until": text(self.stored_until),
            "clock": str(self.clock.now().floor("s")),
            "errors": self.errors,
            "alarm": self.alarm,
            "halted_markets": self.halted_markets(),
            "holder": self.holder,
            "ledger": str(self.config.ledger.resolve_path()),
            "markets": list(self.markets),
            "markets_pending": list(self.added),
            "serve_at": getattr(self.trader.predictor, "url", None),  # where it reaches the graph
        }

    def set_trading(self, enabled: bool, by: str, reason: str) -> dict[str, Any]:
        """A person switches every account's kill switch off or back on: each switch changes
        under its lock, so an hour running meanwhile never overwrites it."""
        if enabled and not by.strip():
            raise ValueError("switching trading on needs the name of the person (by)")
        now = self.clock.now().floor("s").to_pydatetime()
        switches = {id(a.kill_switch): a.kill_switch for a in self.trader.accounts.values()}
        for switch in switches.values():
            switch.switch(enabled, by, reason, now)
        return {"trading_enabled": enabled, "by": by}


# Threaded (max_concurrency > 1): calls need no order among themselves (LoopCore takes its own
# locks, and the schedule runs in its own thread anyway), and an in-order actor lets one call its
# caller cancelled before it ran hold every later call from that caller while they keep coming:
# the keeper's first health check, timed out while the loop was still being created, left
# `cluster up` waiting for a keeper that never answered again (ray-project/ray#65785).
LOOP_CALLS_AT_ONCE = 4


@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=LOOP_CALLS_AT_ONCE)
class TradingLoop:
    def __init__(self, settings: dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO)
        actor = ray.get_runtime_context().get_actor_id()  # kept across restarts: the same holder
        holder = f"TradingLoop {actor} on {socket.gethostname()}"
        self.core = LoopCore(LoopSettings.model_validate(settings), holder)
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

    def set_markets(self, markets: list[str]) -> list[str]:
        """Markets to trade from the next hour on (`LoopCore.set_markets`); no restart."""
        return self.core.set_markets(markets)

    def stop(self) -> dict[str, Any]:
        """Finish the hour in progress, then stop and give the ledger's lease up; the ledger
        stays as it is."""
        self.core.stop_event.set()
        self.thread.join(timeout=120)
        self.core.release()
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
