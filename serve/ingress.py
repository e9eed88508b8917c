"""The HTTP API (FastAPI inside a Serve ingress): version 1, documented in README.

The ingress owns no model: it routes each market to its predictor (its own HybridPredictor
deployment, or the multiplexed pool: `serve.routing`) and each prediction to the SizingNode, and
answers with `serve.schema.PredictionReply`. Request candles are parsed and validated here, once,
and cross the handle as columns (`serve.predict.CandleColumns`), not as 800+ row dicts. Every
refusal, its own or a deployment's, is a `serve.schema.ServeError`, turned into an HTTP code by
`_refuse`, the one place that does. State-changing routes take the admin bearer token from the
environment (`HYBRID_ADMIN_TOKEN`); without it configured they refuse.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from features.domain import AccountState
from serve.admin import check_admin
from serve.config import ServeConfig
from serve.metrics import request_metrics
from serve.predict import CandleColumns
from serve.routing import market_routes
from serve.schema import (
    FLAT_ACCOUNT,
    ErrorDetail,
    MarketNotServed,
    PredictAllBody,
    PredictAllReply,
    PredictBody,
    PredictionReply,
    ServeError,
    refusal,
)

api = FastAPI(title="hybrid-trader", version="1.0")
STATUS_PAGE = (Path(__file__).with_name("static") / "status.html").read_text()


@api.exception_handler(ServeError)
async def _refuse(request: Request, exc: ServeError) -> JSONResponse:
    status, message = refusal(exc)
    return JSONResponse({"detail": message}, status_code=status)


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(
        self,
        predictors: dict[str, DeploymentHandle] | DeploymentHandle,
        sizing: DeploymentHandle,
        config: dict[str, Any],
    ) -> None:
        settings = ServeConfig.model_validate(config)
        self.routes = market_routes(predictors, settings)
        self.max_candles = settings.max_candles
        self.sizing = sizing
        self.requests, self.latency = request_metrics()

    def _check_served(self, market: str) -> None:
        if market not in self.routes.markets:
            raise MarketNotServed(f"unknown market {market!r}; served: {self.routes.markets}")

    async def _predict(
        self, market: str, candles: list[dict[str, Any]] | None, account: AccountState | None
    ) -> PredictionReply:
        self._check_served(market)
        columns = None if candles is None else CandleColumns.parse(candles, self.max_candles)
        view = await self.routes.predict(market, columns)
        sizing = await self.sizing.size.remote(view, account or FLAT_ACCOUNT)
        return PredictionReply.of(view, sizing)

    async def _predict_or_refusal(
        self, market: str, candles: list[dict[str, Any]] | None, account: AccountState | None
    ) -> PredictionReply | ErrorDetail:
        try:
            return await self._predict(market, candles, account)
        except ServeError as exc:
            status, message = refusal(exc)
            return ErrorDetail(status=status, message=message)

    @contextmanager
    def _metered(self, route: str) -> Iterator[None]:
        """Count the request by its final status and time it; a refusal passes on to `_refuse`."""
        started, status = time.perf_counter(), 500
        try:
            yield
            status = 200
        except ServeError as exc:
            status = refusal(exc)[0]
            raise
        finally:
            self.requests.inc(tags={"route": route, "status": str(status)})
            self.latency.observe((time.perf_counter() - started) * 1000, tags={"route": route})

    @api.post("/v1/predict/{market}")
    async def predict_market(self, market: str, body: PredictBody | None = None) -> PredictionReply:
        body = body or PredictBody()
        with self._metered("predict_market"):
            return await self._predict(market, body.candles, body.account)

    @api.post("/v1/predict")
    async def predict_all(self, body: PredictAllBody | None = None) -> PredictAllReply:
        """Every asked market (default: all); one market's refusal is in `errors`, not a failure."""
        body = body or PredictAllBody()
        with self._metered("predict_all"):
            markets = body.markets or self.routes.markets
            for market in markets:
                self._check_served(market)
            candles, accounts = body.candles or {}, body.accounts or {}
            answers = await asyncio.gather(
                *(self._predict_or_refusal(m, candles.get(m), accounts.get(m)) for m in markets)
            )
            pairs = list(zip(markets, answers, strict=True))
            return PredictAllReply(
                predictions=[a for _, a in pairs if isinstance(a, PredictionReply)],
                errors={m: a for m, a in pairs if isinstance(a, ErrorDetail)},
            )

    @api.get("/v1/markets")
    async def markets(self) -> dict[str, Any]:
        return {"markets": self.routes.markets}

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        statuses = await self.routes.statuses()
        return {"models": {s["market"]: s for s in statuses}}

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        statuses = await self.routes.statuses()
        ready = sorted(s["market"] for s in statuses if s["version"])
        missing = sorted(s["market"] for s in statuses if not s["version"])
        return {"status": "ok", "ready": ready, "without_model": missing}

    @api.get("/status", response_class=HTMLResponse)
    async def status_page(self) -> HTMLResponse:
        """The status page: static HTML; its account data comes from the token-protected
        /trading/v1/status of the trading app, fetched by the page itself."""
        return HTMLResponse(STATUS_PAGE)

    @api.post("/v1/admin/reload/{market}")
    async def reload(self, market: str, authorization: str | None = Header(None)) -> dict[str, Any]:
        check_admin(authorization)
        self._check_served(market)
        return await self.routes.reload(market)
