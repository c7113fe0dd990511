"""Rate limits: token buckets per device and per user, 429 with Retry-After."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.api.app import create_app
from telemetra.api.limits import RateLimiter
from telemetra.config import Settings
from telemetra.store.catalog import create_device, create_tenant

from api_fixtures import PASSWORD, SECRET, World, assert_error


def test_token_bucket_allows_bursts_then_the_average_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=3.0)
    assert [limiter.retry_after("k", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.retry_after("k", now=100.0) == 0.5  # one token every 0.5 s
    assert limiter.retry_after("k", now=100.6) == 0.0
    assert limiter.retry_after("other", now=100.6) == 0.0  # keys are independent
    assert RateLimiter(rate=0, burst=1).retry_after("k") == 0.0  # 0 switches limits off


async def test_http_ingest_answers_429_with_retry_after(engine: AsyncEngine, db_url: str) -> None:
    settings = Settings(
        database_url=db_url, secret_key=SECRET, rate_limit_device_per_s=0.5, rate_limit_burst=2
    )
    app = create_app(settings, engine)
    tag = uuid.uuid4().hex[:8]
    async with engine.begin() as conn:
        tenant_id = await create_tenant(conn, f"limits-{tag}")
        token = await create_device(conn, tenant_id, f"lim-{tag}")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        codes = [
            (await c.post("/api/v1/ingest", json={"x": 1}, headers={"X-API-Key": token}))
            for _ in range(3)
        ]
    assert [r.status_code for r in codes[:2]] == [200, 200]
    assert_error(codes[2], 429, "rate_limited")
    assert int(codes[2].headers["Retry-After"]) >= 1


async def test_failed_logins_are_limited_before_any_hashing(world: World) -> None:
    c, tag = world.client, world.tenant_a.split("-", 1)[1]
    viewer = f"a-viewer-{tag}"
    for _ in range(3):  # successful logins are never counted
        assert (await _login(c, viewer, PASSWORD)).status_code == 200
    for _ in range(10):
        assert_error(await _login(c, viewer, "wrong guess"), 401, "unauthorized")
    blocked = await _login(c, viewer, PASSWORD)  # even the right password, for now
    assert_error(blocked, 429, "rate_limited")
    assert int(blocked.headers["Retry-After"]) >= 1
    # The same client address is blocked for every name: guessing across accounts is slow too.
    assert_error(await _login(c, f"a-owner-{tag}", PASSWORD), 429, "rate_limited")


async def _login(c: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await c.post("/api/v1/auth/token", data={"username": username, "password": password})
