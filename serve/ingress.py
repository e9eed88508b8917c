"""The HTTP API (FastAPI inside a Serve ingress): version 1, documented in README.

The ingress owns no model: it routes each market to its HybridPredictor deployment and each signal
to the SizingNode, and turns their error dicts into HTTP codes. State-changing routes take the
admin bearer token from the environment (`HYBRID_ADMIN_TOKEN`); without it configured they refuse.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve.admin import check_admin
from serve.metrics import request_metrics

api = FastAPI(title="hybrid-trader", version="1.0")
STATUS_PAGE = (Path(__file__).with_name("static") / "status.html").read_text()
SIGNALS = ("SELL", "HOLD", "BUY")
FLAT_ACCOUNT = {"cash": 1_000_000.0, "position": 0.0, "entry_price": 0.0,
                "equity": 1_000_000.0, "drawdown": 0.0}  # fmt: skip


class Account(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cash: float = Field(ge=0)
    position: float = Field(ge=0)
    entry_price: float = Field(ge=0)
    equity: float = Field(ge=0)
    drawdown: float = Field(ge=0, le=1)


class PredictBody(BaseModel):
    """Candles are optional: without them the predictor reads its configured source."""

    model_config = ConfigDict(extra="forbid")
    candles: list[dict[str, Any]] | None = None
    account: Account | None = None


class PredictAllBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    markets: list[str] | None = None
    candles: dict[str, list[dict[str, Any]]] | None = None
    accounts: dict[str, Account] | None = None


def shape(prediction: dict[str, Any], sizing: dict[str, Any]) -> dict[str, Any]:
    p_sell, p_hold, p_buy = prediction["probabilities"]
    return {
        "market": prediction["market"],
        "time": prediction["time"],
        "signal": SIGNALS[prediction["signal"]],
        "probabilities": {"sell": p_sell, "hold": p_hold, "buy": p_buy},
        "confidence": max(p_sell, p_hold, p_buy),
        "model_version": prediction["model_version"],
        "volatility": prediction["volatility"],
        "sizing": sizing,
        "served_by": prediction["served_by"],
    }


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, predictors: dict[str, DeploymentHandle], sizing: DeploymentHandle) -> None:
        self.predictors = predictors
        self.sizing = sizing
        self.requests, self.latency = request_metrics()

    def _predictor(self, market: str) -> DeploymentHandle:
        if market not in self.predictors:
            served = sorted(self.predictors)
            raise HTTPException(404, f"unknown market {market!r}; served: {served}")
        return self.predictors[market]

    async def _predict(self, market: str, candles: Any, account: Account | None) -> dict:
        prediction = await self._predictor(market).predict.remote(candles)
        if "error" in prediction:
            return prediction
        funds = account.model_dump() if account else FLAT_ACCOUNT
        sizing = await self.sizing.size.remote(prediction, funds)
        if "error" in sizing:
            return sizing
        return shape(prediction, sizing)

    def _answer(self, route: str, started: float, payload: dict[str, Any]) -> JSONResponse:
        status = payload["error"]["status"] if "error" in payload else 200
        self.requests.inc(tags={"route": route, "status": str(status)})
        self.latency.observe((time.perf_counter() - started) * 1000, tags={"route": route})
        if "error" in payload:
            return JSONResponse({"detail": payload["error"]["message"]}, status_code=status)
        return JSONResponse(payload)

    @api.post("/v1/predict/{market}")
    async def predict_market(self, market: str, body: PredictBody | None = None) -> JSONResponse:
        started = time.perf_counter()
        body = body or PredictBody()
        self._predictor(market)
        payload = await self._predict(market, body.candles, body.account)
        return self._answer("predict_market", started, payload)

    @api.post("/v1/predict")
    async def predict_all(self, body: PredictAllBody | None = None) -> JSONResponse:
        started = time.perf_counter()
        body = body or PredictAllBody()
        markets = body.markets or sorted(self.predictors)
        for market in markets:
            self._predictor(market)
        candles, accounts = body.candles or {}, body.accounts or {}
        answers = await asyncio.gather(
            *(self._predict(m, candles.get(m), accounts.get(m)) for m in markets)
        )
        ok = [a for a in answers if "error" not in a]
        errors = {m: a["error"] for m, a in zip(markets, answers, strict=True) if "error" in a}
        return self._answer("predict_all", started, {"predictions": ok, "errors": errors})

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
