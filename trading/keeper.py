"""`trading.keeper:app`: a tiny Serve application that keeps the one TradingLoop alive and answers
for it over HTTP (under /trading), so a RayService (or `cluster up`) starts the loop the same way.

The keeper never trades: it creates the named detached loop once (a second keeper, or a second
`up`, finds the running one) and hands it the keeper's markets (a keeper redeployed with a market
added makes the running loop trade it from its next hour), pins it to the head node where the
SQLite ledger lives, and serves
the loop's status and the kill switch behind the admin bearer token. Its `args` are
`trading.loop_settings.LoopSettings`, validated by Serve before the keeper is built.
"""

# No `from __future__ import annotations` here: Serve checks that the builder's annotation is a
# pydantic class, and a postponed (string) annotation would hand the builder a plain dict.

import threading
from typing import Any

import ray
from fastapi import FastAPI, Header
from pydantic import BaseModel, Field
from ray import serve

from serve.admin import check_admin
from trading.loop import get_loop, start_loop
from trading.loop_settings import LoopSettings

api = FastAPI(title="hybrid-trader trading", version="1.0")


class Switch(BaseModel):
    enabled: bool
    by: str = Field(min_length=1)
    reason: str = "switched off by a person"


@serve.deployment
@serve.ingress(api)
class LoopKeeper:
    def __init__(self, settings: dict[str, Any], check_s: float = 30.0) -> None:
        self.settings = LoopSettings.model_validate(settings)
        self.loop = start_loop(self.settings)
        self._markets_to_loop()
        self.stop = threading.Event()
        self.check_s = check_s
        threading.Thread(target=self._watch, daemon=True, name="loop-keeper").start()

    def _watch(self) -> None:
        """A loop that died for good (not a restart) is started again, once per check."""
        while not self.stop.wait(self.check_s):
            try:
                get_loop()
            except ValueError:
                self.loop = start_loop(self.settings)
            self._markets_to_loop()

    def _markets_to_loop(self) -> None:
        """The loop already running (a keeper redeployed with more markets, `cluster add-market`)
        or restarted from its first settings trades this keeper's markets from its next hour;
        no actor restart. Markets are only ever added (`LoopCore.set_markets`)."""
        if self.settings.markets:
            self.loop.set_markets.remote(list(self.settings.markets))

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        status = await self.loop.status.remote()
        keys = ("running", "phase", "activity", "alarm")  # no account data: no token needed
        return {"status": "ok", **{key: status[key] for key in keys}}

    @api.get("/v1/status")
    async def status(self, authorization: str | None = Header(None)) -> dict[str, Any]:
        check_admin(authorization)
        return await self.loop.status.remote()

    @api.post("/v1/trading")
    async def switch(self, body: Switch, authorization: str | None = Header(None)) -> dict:
        check_admin(authorization)
        return await self.loop.set_trading.remote(body.enabled, body.by, body.reason)


def app(settings: LoopSettings) -> serve.Application:
    """Serve's application builder: Serve validates the app's `args` into LoopSettings first."""
    return LoopKeeper.bind(settings.model_dump(mode="json"))


def stop_loop(timeout_s: float = 180.0) -> dict[str, Any] | None:
    """Stop the loop cleanly (the hour in progress finishes; the ledger stays), then remove it."""
    try:
        loop = get_loop()
    except ValueError:
        return None
    status = ray.get(loop.stop.remote(), timeout=timeout_s)
    ray.kill(loop, no_restart=True)
    return status
