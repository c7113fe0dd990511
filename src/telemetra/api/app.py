"""The application factory: settings in, a FastAPI app with every router and one error shape."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra import __version__
from telemetra.api import accounts, auth, deadletters, devices, errors, health, ingest, telemetry
from telemetra.api.limits import RateLimiter
from telemetra.broker.mosquitto import read_state
from telemetra.broker.sync import BrokerSync
from telemetra.config import Settings
from telemetra.ingest.pipeline import Pipeline
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

    @app.middleware("http")
    async def timed(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        template = _route_template(request)
        HTTP_SECONDS.labels(request.method, template, response.status_code).observe(
            time.perf_counter() - started
        )
        return response


def create_app(settings: Settings, engine: AsyncEngine | None = None) -> FastAPI:
    """The API for ``settings``; ``engine`` may be given (tests), else it is opened at start."""
    secret = check_secret(settings)
    if settings.broker_dir is not None:
        read_state(settings.broker_dir)  # a wrong TELEMETRA_BROKER_DIR stops `serve` at once

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from telemetra.store.database import open_database, warn_if_rls_bypassed

        own = engine is None
        # Fail closed: each request says whose data it works on (store.tenancy).
        app.state.engine = await open_database(settings.sqlalchemy_url) if own else engine
        await warn_if_rls_bypassed(app.state.engine, "serve")
        app.state.http_ingest = ingest.HttpIngest(Pipeline(app.state.engine, settings), settings)
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
            if own:
                await app.state.engine.dispose()

    app = FastAPI(
        title="Telemetra",
        version=__version__,
        description="IoT telemetry: devices, ingest, time series. Users log in at "
        "`/api/v1/auth/token` and send `Authorization: Bearer <token>`; devices send their token "
        "in `X-API-Key`. Errors always have the shape "
        '`{"error": {"code", "message", "details"}}` (`ErrorOut`).',
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.secret_key = secret
    app.state.device_limits = RateLimiter(
        settings.rate_limit_device_per_s, settings.rate_limit_burst
    )
    app.state.user_limits = RateLimiter(settings.rate_limit_user_per_s, settings.rate_limit_burst)
    # Failed logins only: a burst of 10, then the configured rate per minute.
    app.state.login_failures = RateLimiter(settings.login_failures_per_min / 60, 10)
    errors.install(app)
    _observe(app)
    api = APIRouter(prefix="/api/v1", responses=errors.responses(401))  # every route: some auth
    api.include_router(auth.router)
    api.include_router(accounts.router)
    api.include_router(devices.router)
    api.include_router(telemetry.router)
    api.include_router(deadletters.router)
    api.include_router(ingest.router)  # last: its /{device_token}/telemetry matches broadly
    app.include_router(health.router)
    app.include_router(api)
    return app
