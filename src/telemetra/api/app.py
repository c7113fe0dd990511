"""The application factory: settings in, a FastAPI app with every router and one error shape."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from telemetra import __version__
from telemetra.api import (
    accounts,
    alerts,
    auth,
    cleaning,
    clock,
    deadletters,
    devices,
    errors,
    health,
    ingest,
    live,
    overview,
    rules,
    session,
    telemetry,
    web,
)
from telemetra.api.limits import BodyLimit, RateLimiter
from telemetra.broker.mosquitto import read_state
from telemetra.broker.sync import BrokerSync
from telemetra.config import Settings
from telemetra.ingest.pipeline import Pipeline
from telemetra.live import Bus, open_bus
from telemetra.metrics import HTTP_SECONDS
from telemetra.store.tenancy import run_platform_wide

WEAK_KEY = (
    "TELEMETRA_SECRET_KEY is missing or shorter than 32 characters; make one with "
    '`python -c "import secrets; print(secrets.token_urlsafe(48))"` and export it'
)


def check_secret(settings: Settings) -> str:
    """The key that signs user tokens; refuses a missing or weak one outside demo mode."""
    key = settings.secret_key
    if key is None or len(key) < 32:
        if not settings.demo:
            raise ValueError(WEAK_KEY)
        key = key or "demo-only-secret-key-never-for-production-use!"
    return key


def _route_template(request: Request) -> str:
    """The matched route's path template (bounded label values, never raw paths)."""
    context = request.scope.get("fastapi", {}).get("effective_route_context")
    template = getattr(context, "path_format", None)  # the full path of an included route
    if template is None:
        template = getattr(request.scope.get("route"), "path", None)
    return str(template) if template else "unmatched"


def _observe(app: FastAPI) -> None:
    """Prometheus text at /metrics, and a latency histogram per route template."""

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(Timed)


class Timed:
    """Pure ASGI middleware (no task group around the app, unlike ``@app.middleware``): the
    latency of each request by method, route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            template = _route_template(Request(scope))
            HTTP_SECONDS.labels(scope["method"], template, status).observe(
                time.perf_counter() - started
            )


def create_app(
    settings: Settings, engine: AsyncEngine | None = None, bus: Bus | None = None
) -> FastAPI:
    """The API for ``settings``; ``engine`` may be given (tests), else it is opened at start.
    ``bus`` carries the live stream: given (one process running ingest too), else made from
    the settings (Redis when ``TELEMETRA_REDIS_URL`` is set)."""
    secret = check_secret(settings)
    reserved: set[str] = set()  # device ids the managed broker keeps for its services
    if settings.broker_dir is not None:
        # A wrong TELEMETRA_BROKER_DIR stops `serve` at once.
        reserved.add(read_state(settings.broker_dir)["ingest_username"])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from telemetra.store.database import open_database, warn_if_rls_bypassed

        own = engine is None
        # Fail closed: each request says whose data it works on (store.tenancy).
        app.state.engine = await open_database(settings.sqlalchemy_url) if own else engine
        await warn_if_rls_bypassed(app.state.engine, "serve")
        app.state.live = bus or open_bus(settings.redis_url, settings.live_client_queue)
        await app.state.live.start()
        pipeline = Pipeline(app.state.engine, settings)
        pipeline.listeners.append(app.state.live.on_commit)  # after commit, never before
        app.state.http_ingest = ingest.HttpIngest(pipeline, settings)
        # The ingest pipeline writes for every tenant: its task starts platform-wide.
        run_platform_wide(app.state.http_ingest.start)
        app.state.broker_sync = (
            BrokerSync(app.state.engine, settings.broker_dir, settings.ca_folder)
            if settings.broker_dir
            else None
        )
        try:
            yield
        finally:
            await app.state.http_ingest.close()
            if bus is None:
                await app.state.live.close()
            if own:
                await app.state.engine.dispose()

    # /docs and /redoc with their scripts and styles served from the installed package, not a
    # CDN: they work offline (a classroom, a plant network).
    app = FastAPIOffline(
        title="Telemetra",
        version=__version__,
        description="IoT telemetry: devices, ingest, time series. Users log in at "
        "`/api/v1/auth/token` and send `Authorization: Bearer <token>` (the dashboard signs in at "
        "`/api/v1/auth/session`: a session cookie, with `X-CSRF-Token` on changes); devices send "
        "their token "
        "in `X-API-Key`. Errors always have the shape "
        '`{"error": {"code", "message", "details"}}` (`ErrorOut`).',
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.reserved_device_ids = frozenset(reserved)
    app.state.secret_key = secret
    app.state.device_limits = RateLimiter(
        settings.rate_limit_device_per_s, settings.rate_limit_burst
    )
    app.state.user_limits = RateLimiter(settings.rate_limit_user_per_s, settings.rate_limit_burst)
    # Failed logins only: per username a burst of 10, then the configured rate per minute; per
    # client address a burst of one minute's worth (100 by default), so that the users behind
    # one proxy or NAT can still log in while one of them mistypes.
    app.state.login_failures = RateLimiter(settings.login_failures_per_min / 60, 10)
    per_address = settings.login_failures_per_address_per_min
    app.state.address_login_failures = RateLimiter(per_address / 60, max(10.0, per_address))
    errors.install(app)
    _observe(app)
    # The client address from X-Forwarded-For, only when a configured proxy sent it.
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    # Outermost: a body over the limit is refused before authentication or parsing.
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    api = APIRouter(  # every route: some authentication, a body limit, and the database
        prefix="/api/v1",
        responses=errors.responses(401, 413, 503, messages={503: errors.DATABASE_DOWN}),
    )
    api.include_router(auth.router)
    api.include_router(session.router)
    api.include_router(accounts.router)
    api.include_router(devices.router)
    api.include_router(telemetry.router)
    api.include_router(clock.router)
    api.include_router(deadletters.router)
    api.include_router(rules.router)
    api.include_router(alerts.router)
    api.include_router(overview.router)
    api.include_router(cleaning.router)
    api.include_router(live.router)
    api.include_router(ingest.router)  # last: its /{device_token}/telemetry matches broadly
    app.include_router(health.router)
    app.include_router(api)
    web.install(app)  # last: its fallback answers every other dashboard path
    return app
