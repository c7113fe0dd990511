"""Rate limits: token buckets per device and per user, 429 with Retry-After; failed logins per
username and per client address (X-Forwarded-For from trusted proxies only); the body limit on
every route, 413."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.api.app import create_app
from telemetra.api.limits import RateLimiter
from telemetra.config import Settings
from telemetra.store.catalog import create_device, create_tenant

from api_fixtures import PASSWORD, SECRET, World, assert_error, make_world


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


async def test_failed_logins_are_limited_before_any_hashing(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    # A burst of 10, then next to nothing: on a busy machine ten argon2 checks take long
    # enough for the default 10/min to refill a token.
    worlds = make_world(engine, db_url, tmp_path, login_failures_per_min=0.01)
    try:
        await _limited_per_username(await anext(worlds))
    finally:
        await worlds.aclose()


async def _limited_per_username(world: World) -> None:
    c, tag = world.client, world.tenant_a.split("-", 1)[1]
    viewer = f"a-viewer-{tag}"
    for _ in range(3):  # successful logins are never counted
        assert (await _login(c, viewer, PASSWORD)).status_code == 200
    for _ in range(10):
        assert_error(await _login(c, viewer, "wrong guess"), 401, "unauthorized")
    blocked = await _login(c, viewer, PASSWORD)  # even the right password, for now
    assert_error(blocked, 429, "rate_limited")
    assert int(blocked.headers["Retry-After"]) >= 1
    # The per-address limit is ten times looser: others behind the same address still log in.
    assert (await _login(c, f"a-owner-{tag}", PASSWORD)).status_code == 200


@pytest.mark.parametrize(("trusted", "forwarded_counts"), [("127.0.0.1", True), ("", False)])
async def test_login_failures_per_address_use_forwarded_for_only_from_trusted_proxies(
    engine: AsyncEngine, db_url: str, tmp_path: Path, trusted: str, forwarded_counts: bool
) -> None:
    """Behind a trusted reverse proxy each client has its own per-address limit; from anyone
    else X-Forwarded-For is ignored (it would let a guesser pick a fresh address per try)."""
    worlds = make_world(
        engine, db_url, tmp_path, trusted_proxies=trusted, login_failures_per_min=0,
        login_failures_per_address_per_min=0.01,  # a burst of 10, then next to nothing
    )  # fmt: skip
    world = await anext(worlds)
    try:
        c, tag = world.client, world.tenant_a.split("-", 1)[1]
        guesser = {"X-Forwarded-For": "203.0.113.5"}
        for i in range(10):  # different names: only the address ties them together
            reply = await _login(c, f"nobody-{i}", "wrong guess", guesser)
            assert_error(reply, 401, "unauthorized")
        assert_error(await _login(c, "nobody-x", "wrong", guesser), 429, "rate_limited")
        # Another client behind the proxy logs in; untrusted, everyone shares one address.
        colleague = await _login(c, f"a-viewer-{tag}", PASSWORD, {"X-Forwarded-For": "203.0.113.6"})
        assert colleague.status_code == (200 if forwarded_counts else 429), colleague.text
    finally:
        await worlds.aclose()


# --- the body limit: every route, before authentication and parsing ---------------------------

ROUTES = [
    ("POST", "/api/v1/devices"),
    ("POST", "/api/v1/users"),
    ("POST", "/api/v1/auth/token"),
    ("POST", "/api/v1/ingest"),
    ("POST", "/api/v1/some-device-token/telemetry"),
    ("PATCH", "/api/v1/devices/x"),
    ("POST", "/no/such/route"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_a_declared_large_body_is_refused_unread(
    world: World, method: str, path: str
) -> None:
    """Content-Length over the limit: 413 at once, without a token and without reading one byte
    of the body (the app's ``receive`` is never called)."""

    async def receive() -> dict[str, object]:
        raise AssertionError("the body was read")

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 5000), "server": ("test", 80),
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(100 * 1024 * 1024).encode())],
    }  # fmt: skip
    await world.app(scope, receive, send)
    assert sent[0]["status"] == 413
    body = orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))  # type: ignore[misc]
    assert body["error"]["code"] == "payload_too_large"
    assert "104857600 bytes exceeds the limit of 4096" in body["error"]["message"]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_a_streamed_large_body_is_cut_off_at_the_limit(
    world: World, method: str, path: str
) -> None:
    """A chunked body (no Content-Length) of 100 MB: 413 once the limit is passed; the app
    pulls no more than the limit and one chunk, so memory does not grow with the body."""
    pulled = 0
    chunk = b"[" + b"1," * 32_767 + b"1]"  # 64 KiB of JSON-ish bytes

    async def hundred_megabytes() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(1600):
            pulled += len(chunk)
            yield chunk

    kind = "application/x-www-form-urlencoded" if path.endswith("/token") else "application/json"
    reply = await world.client.request(
        method, path, content=hundred_megabytes(), headers={"Content-Type": kind}
    )
    if "/ingest" in path or path.endswith("/telemetry") or path == "/no/such/route":
        # Device routes authenticate before they read the body; no route, no reading: refused
        # with the body unread.
        assert reply.status_code in (401, 404), reply.text
        assert pulled <= len(chunk)
    else:
        assert_error(reply, 413, "payload_too_large")
        assert pulled <= 4096 + 2 * len(chunk)


async def test_bodies_within_the_limit_pass(world: World) -> None:
    small = await world.client.post(
        "/api/v1/devices", json={"uid": "x" * 100, "metadata": {"note": "y" * 3500}}
    )
    assert_error(small, 401, "unauthorized")  # read, parsed, then refused for want of a token


async def _login(
    c: httpx.AsyncClient, username: str, password: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await c.post(
        "/api/v1/auth/token", data={"username": username, "password": password}, headers=headers
    )
