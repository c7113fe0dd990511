"""The application factory: settings in, a FastAPI app with every router and one error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra import __version__
from telemetra.api import accounts, auth, devices, errors, health, ingest, telemetry
from telemetra.config import Settings
from telemetra.ingest.pipeline import Pipeline

WEAK_KEY = (
    "TELEMETRA_SECRET_KEY is missing or shorter than 32 characters; make one with "
    '`python -c "import secrets; print(secrets.token_urlsafe(48))"` '
    "(or run the demo, which keeps its own)"
)


def check_secret(settings: Settings) -> str:
    """The key that signs user tokens; refuses a missing or weak one outside demo mode."""
    key = settings.secret_key
    if key is None or len(key) < 32:
        if not settings.demo:
            raise ValueError(WEAK_KEY)
        key = key or "demo-only-secret-key-never-for-production-use!"
    return key


def create_app(settings: Settings, engine: AsyncEngine | None = None) -> FastAPI:
    """The API for ``settings``; ``engine`` may be given (tests), else it is opened at start."""
    secret = check_secret(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from telemetra.store.database import open_database

        own = engine is None
        app.state.engine = await open_database(settings.sqlalchemy_url) if own else engine
        app.state.http_ingest = ingest.HttpIngest(Pipeline(app.state.engine, settings), settings)
        app.state.http_ingest.start()
        try:
            yield
        finally:
            await app.state.http_ingest.close()
            if own:
                await app.state.engine.dispose()

    app = FastAPI(
        title="Telemetra",
        version=__version__,
        description="IoT telemetry: devices, ingest, time series. Errors always have the shape "
        '`{"error": {"code", "message", "details"}}`.',
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.secret_key = secret
    errors.install(app)
    api = APIRouter(prefix="/api/v1")
    api.include_router(auth.router)
    api.include_router(accounts.router)
    api.include_router(devices.router)
    api.include_router(telemetry.router)
    api.include_router(ingest.router)  # last: its /{device_token}/telemetry matches broadly
    app.include_router(health.router)
    app.include_router(api)
    return app
