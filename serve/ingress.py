"""The HTTP API (FastAPI inside a Serve ingress): version 1, documented in README.

The ingress owns no model: it routes each market to its HybridPredictor deployment and each
prediction to the SizingNode, and answers with `serve.schema.PredictionReply`. Every refusal, its
own or a deployment's, is a `serve.schema.ServeError`, turned into an HTTP code by `_refuse`, the
one place that does. State-changing routes take the admin bearer token from the environment
(`HYBRID_ADMIN_TOKEN`); without it configured they refuse.
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
from serve.metrics import request_metrics
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
    def __init__(self, predictors: dict[str, DeploymentHandle], sizing: DeploymentHandle) -> None:
        self.predictors = predictors
        self.sizing = sizing
        self.requests, self.latency = request_metrics()

    def _predictor(self, market: str) -> DeploymentHandle:
        if market not in self.predictors:
            raise MarketNotServed(f"unknown market {market!r}; served: {sorted(self.predictors)}")
        return self.predictors[market]

    async def _predict(
        self, market: str, candles: list[dict[str, Any]] | None, account: AccountState | None
    ) -> PredictionReply:
        view = await self._predictor(market).predict.remote(candles)
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
            markets = body.markets or sorted(self.predictors)
            for market in markets:
                self._predictor(market)
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
        return {"markets": sorted(self.predictors)}

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        statuses = await asyncio.gather(*(h.status.remote() for h in self.predictors.values()))
        return {"models": {s["market"]: s for s in statuses}}

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        statuses = await asyncio.gather(*(h.status.remote() for h in self.predictors.values()))
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
        return await self._predictor(market).reload.remote()
