"""The HTTP API (FastAPI inside a Serve ingress): version 1, documented in README.

The ingress owns no model: it routes each market to its predictor (its own HybridPredictor
deployment, or the multiplexed pool: `serve.routing`) and each prediction to the SizingNode, and
answers with `serve.schema.PredictionReply`. Request candles are parsed and validated here, once,
and cross the handle as columns (`serve.predict.CandleColumns`), not as 800+ row dicts. Every
refusal, its own or a deployment's, is a `serve.schema.ServeError`, turned into an HTTP code by
`_refuse`, the one place that does. State-changing routes take the admin bearer token from the
environment (`HYBRID_ADMIN_TOKEN`); without it configured they refuse.

Bounded, so a flood cannot starve the trading loop (`IngressLimits`, the Ingress deployment's
`user_config` in configs/serve_deploy.yaml):
- a prediction body over `max_body_bytes` is refused (413) from its Content-Length, before it is
  read, and a body without one is counted as it streams in;
- anonymous clients hold at most `anonymous_in_flight` predictions at once; the next one gets a
  503 at once. A request carrying the admin token (the loop's) is not counted, so it still gets
  through; Serve's own `max_ongoing_requests`/`max_queued_requests` bound the rest (503) and
  `http_options.request_timeout_s` any request's time (408);
- with `require_token` (set by `cluster up` when Serve listens beyond loopback; KubeRay binds
  0.0.0.0) the prediction routes need the token too (401).
"""

# No `from __future__ import annotations` here: Serve rebuilds the routes' functions with only the
# globals their bodies use, so a string annotation naming `Request` would not resolve and FastAPI
# would take `request` for a query parameter.

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from features.domain import AccountState
from serve.admin import check_admin
from serve.config import MarketSet, ServeConfig
from serve.metrics import request_metrics
from serve.predict import CandleColumns
from serve.routing import market_routes
from serve.schema import (
    FLAT_ACCOUNT,
    BadRequest,
    Busy,
    ErrorDetail,
    MarketNotServed,
    PredictAllBody,
    PredictAllReply,
    PredictBody,
    PredictionReply,
    ServeError,
    TooLarge,
    Unauthorized,
    refusal,
)

api = FastAPI(title="hybrid-trader", version="1.0")
STATUS_PAGE = (Path(__file__).with_name("static") / "status.html").read_text()
Body = TypeVar("Body", bound=BaseModel)


class IngressLimits(BaseModel):
    """The Ingress deployment's `user_config`: how much one request and all anonymous ones may
    take. Serve validates nothing here, so this model does (a wrong key fails the replica)."""

    model_config = ConfigDict(extra="forbid")
    max_body_bytes: int = Field(2_000_000, ge=10_000)  # 5,000 candles of JSON fit in ~0.8 MB
    anonymous_in_flight: int = Field(8, ge=1)  # predictions at once from clients without a token
    require_token: bool = False  # the prediction routes need the bearer token too


def _trusted(authorization: str | None) -> bool:
    try:
        check_admin(authorization)
    except HTTPException:
        return False
    return True


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())


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
        self.limits = IngressLimits()
        self.anonymous = 0  # predictions in flight without the token (one event loop: no lock)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve passes the deployment's `user_config` here at start and on every change. Its
        `markets`, when given, replace the args' list: a change of `user_config` is a lightweight
        update (no replica restarts), so `python -m cluster add-market` adds a market this way in
        multiplexed mode, where only the routes' list changes."""
        config = dict(user_config or {})
        markets = config.pop("markets", None)
        self.limits = IngressLimits.model_validate(config)
        if markets is not None:
            self.routes.set_markets(MarketSet.model_validate({"markets": markets}).markets)

    @contextmanager
    def _admitted(self, request: Request) -> Iterator[None]:
        """Size (by Content-Length), token and the anonymous share, cheapest first: a refusal
        costs no body read and no model call."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limits.max_body_bytes:
            raise TooLarge(self._too_large(int(length)))
        trusted = _trusted(request.headers.get("authorization"))
        if self.limits.require_token and not trusted:
            raise Unauthorized("the prediction routes need Authorization: Bearer <admin token>")
        if trusted:
            yield
            return
        if self.anonymous >= self.limits.anonymous_in_flight:
            raise Busy(
                f"busy: {self.anonymous} predictions in flight from clients without the token "
                f"(at most {self.limits.anonymous_in_flight}); try again shortly"
            )
        self.anonymous += 1
        try:
            yield
        finally:
            self.anonymous -= 1

    def _too_large(self, size: int) -> str:
        return f"request body of {size:,} bytes is over the limit of {self.limits.max_body_bytes:,}"

    async def _body(self, request: Request, model: type[Body]) -> Body:
        """The JSON body as `model`, read only up to the size limit; empty means defaults."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                raise TooLarge(self._too_large(size) + " (and more was coming)")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            return model()
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            raise BadRequest(f"malformed request body: {_problems(exc)}") from exc

    def _check_served(self, market: str) -> None:
        if market not in self.routes.markets:
            raise MarketNotServed(f"unknown market {market!r}; served: {self.routes.markets}")

    async def _predict(
        self, market: str, candles: list[dict[str, Any]] | None, account: AccountState | None
    ) -> PredictionReply:
        self._check_served(market)
        columns = None if candles is None else CandleColumns.parse(candles, self.max_candles)
        try:
            view = await self.routes.predict(market, columns)
            sizing = await self.sizing.size.remote(view, account or FLAT_ACCOUNT)
        except BackPressureError as exc:  # a deployment's queue is full
            raise Busy(f"busy: {market}'s deployments are at their queue limit ({exc})") from exc
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
    async def predict_market(self, market: str, request: Request) -> PredictionReply:
        with self._metered("predict_market"), self._admitted(request):
            body = await self._body(request, PredictBody)
            return await self._predict(market, body.candles, body.account)

    @api.post("/v1/predict")
    async def predict_all(self, request: Request) -> PredictAllReply:
        """Every asked market (default: all, each at most once); one market's refusal is in
        `errors`, not a failure."""
        with self._metered("predict_all"), self._admitted(request):
            body = await self._body(request, PredictAllBody)
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
        """Each market's version, training window, age and staleness, and any load error."""
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
