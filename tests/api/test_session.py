"""Dashboard sign-in on SQLite and PostgreSQL (RLS beneath): the session cookie's flags, CSRF on
changes, sign-out revoking it, expiry, the account checked on every request, and the live
stream with the cookie."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from http.cookiejar import CookieJar, DefaultCookiePolicy
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from telemetra.store.database import open_database
from telemetra.store.schema import sessions
from telemetra.store.tenancy import platform_wide

from api_fixtures import PASSWORD, World, assert_error, make_world
from conftest import app_role_url
from live_fixtures import serving

API = "/api/v1"
COOKIE = "telemetra_session"
EXPIRED = "session expired: sign in again"


def username(world: World, who: str) -> str:
    tag = world.tenant_a.split("-", 1)[1]
    return f"{who}-{tag}"


def browser(world: World, base_url: str = "http://test", **transport: Any) -> httpx.AsyncClient:
    """A client of the world's app that keeps no cookies itself: each test says which it sends."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=world.app, **transport),
        base_url=base_url,
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )


def set_cookie(reply: httpx.Response) -> SimpleCookie:
    [header] = reply.headers.get_list("set-cookie")
    cookie = SimpleCookie()
    cookie.load(header)
    return cookie


async def sign_in(
    c: httpx.AsyncClient, world: World, who: str, **headers: str
) -> tuple[str, dict[str, Any], httpx.Response]:
    """(cookie value, body, reply) of a successful sign-in."""
    reply = await c.post(
        f"{API}/auth/session",
        json={"username": username(world, who), "password": PASSWORD},
        headers=headers,
    )
    assert reply.status_code == 200, reply.text
    return set_cookie(reply)[COOKIE].value, reply.json(), reply


def jar(cookie: str, csrf: str | None = None) -> dict[str, str]:
    headers = {"Cookie": f"{COOKIE}={cookie}"}
    return headers | ({"X-CSRF-Token": csrf} if csrf is not None else {})


async def test_sign_in_sets_a_strict_http_only_cookie(world: World, engine: AsyncEngine) -> None:
    async with browser(world) as c:
        cookie, body, reply = await sign_in(c, world, "a-operator")
    me = await world.client.get(f"{API}/auth/me", headers=world.auth("a-operator"))
    assert set(body) == {"username", "role", "tenant_id", "tenant", "csrf_token", "expires_at"}
    assert (body["username"], body["role"]) == (username(world, "a-operator"), "operator")
    assert (body["tenant_id"], body["tenant"]) == (me.json()["tenant_id"], world.tenant_a)
    assert len(body["csrf_token"]) >= 32 and body["csrf_token"] != cookie
    expires = time.mktime(time.strptime(body["expires_at"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs(expires - time.timezone - (time.time() + 12 * 3600)) < 60  # the default 12 h

    morsel = set_cookie(reply)[COOKIE]
    assert morsel["httponly"] and morsel["samesite"] == "strict" and morsel["path"] == "/"
    assert not morsel["secure"]  # plain HTTP: a Secure cookie would never come back
    assert int(morsel["max-age"]) == 12 * 3600
    assert "csrf" not in reply.headers["set-cookie"].lower()  # the CSRF token is no cookie

    # Only a hash of the cookie's value is stored.
    with platform_wide():
        async with engine.connect() as conn:
            stored = (
                await conn.execute(
                    select(sessions).where(
                        sessions.c.token_hash == hashlib.sha256(cookie.encode()).hexdigest()
                    )
                )
            ).one()
    assert stored.revoked_at is None and stored.tenant_id == body["tenant_id"]
    assert cookie not in {stored.token_hash, stored.csrf_token}


async def test_the_cookie_is_secure_over_https_and_behind_a_trusted_proxy(world: World) -> None:
    async with browser(world, base_url="https://test") as c:
        _, _, reply = await sign_in(c, world, "a-viewer")
        assert set_cookie(reply)[COOKIE]["secure"]
    # TLS ends at a proxy on this host (trusted by default): its X-Forwarded-Proto counts.
    async with browser(world) as c:
        _, _, reply = await sign_in(c, world, "a-viewer", **{"X-Forwarded-Proto": "https"})
        assert set_cookie(reply)[COOKIE]["secure"]
    # From anyone else the header is ignored.
    async with browser(world, client=("203.0.113.9", 40000)) as c:
        _, _, reply = await sign_in(c, world, "a-viewer", **{"X-Forwarded-Proto": "https"})
        assert not set_cookie(reply)[COOKIE]["secure"]


async def test_sign_in_refuses_as_the_token_login_does(world: World) -> None:
    name = username(world, "b-viewer")
    async with browser(world) as c:
        wrong = await c.post(f"{API}/auth/session", json={"username": name, "password": "nope"})
        assert_error(wrong, 401, "unauthorized")
        assert wrong.json()["error"]["message"] == "wrong username or password"
        assert "set-cookie" not in wrong.headers
        unknown = await c.post(
            f"{API}/auth/session", json={"username": "nobody-here", "password": "nope"}
        )
        assert unknown.json() == wrong.json()
        form = await c.post(f"{API}/auth/session", data={"username": name, "password": PASSWORD})
        assert_error(form, 422, "invalid_request")  # JSON only
        # Failures count against the same limit as /auth/token's: 10, then 429.
        for _ in range(9):
            reply = await c.post(f"{API}/auth/session", json={"username": name, "password": "x"})
            assert reply.status_code == 401
        limited = await c.post(f"{API}/auth/token", data={"username": name, "password": "x"})
        assert_error(limited, 429, "rate_limited")
        assert int(limited.headers["retry-after"]) >= 1
        again = await c.post(f"{API}/auth/session", json={"username": name, "password": PASSWORD})
        assert_error(again, 429, "rate_limited")


async def test_the_cookie_authenticates_and_changes_need_the_csrf_token(world: World) -> None:
    async with browser(world) as c:
        cookie, body, _ = await sign_in(c, world, "a-operator")
        csrf = body["csrf_token"]
        me = await c.get(f"{API}/auth/me", headers=jar(cookie))
        assert me.status_code == 200, me.text
        assert me.json()["username"] == username(world, "a-operator")
        assert me.json()["csrf_token"] == csrf  # a reloaded page reads it here
        bearer = await c.get(f"{API}/auth/me", headers=world.auth("a-operator"))
        assert "csrf_token" not in bearer.json()
        assert (await c.get(f"{API}/devices", headers=jar(cookie))).status_code == 200
        assert (await c.head(f"{API}/auth/me", headers=jar(cookie))).status_code in (200, 405)

        uid = f"{world.tenant_a}-cookie"
        for headers in (jar(cookie), jar(cookie, "wrong"), jar(cookie, "")):
            refused = await c.post(f"{API}/devices", json={"uid": uid}, headers=headers)
            assert_error(refused, 403, "forbidden")
            assert refused.json()["error"]["message"] == "missing or wrong X-CSRF-Token"
        # The CSRF token of another session is no good either.
        _, other, _ = await sign_in(c, world, "a-operator")
        refused = await c.post(
            f"{API}/devices", json={"uid": uid}, headers=jar(cookie, other["csrf_token"])
        )
        assert_error(refused, 403, "forbidden")
        made = await c.post(f"{API}/devices", json={"uid": uid}, headers=jar(cookie, csrf))
        assert made.status_code == 201, made.text
        gone = await c.delete(f"{API}/devices/{uid}", headers=jar(cookie, csrf))
        assert gone.status_code == 204, gone.text
        # Roles apply as with a token.
        viewer, viewer_body, _ = await sign_in(c, world, "a-viewer")
        refused = await c.post(
            f"{API}/devices", json={"uid": uid}, headers=jar(viewer, viewer_body["csrf_token"])
        )
        assert_error(refused, 403, "forbidden")
        assert "operator role" in refused.json()["error"]["message"]
        # A bearer token needs no CSRF token, cookie or not: a page elsewhere cannot set it.
        made = await c.post(
            f"{API}/devices", json={"uid": uid}, headers=jar(viewer) | world.auth("a-operator")
        )
        assert made.status_code == 201, made.text
        # Nonsense in the cookie is a 401 like an ended session.
        for value in ("nope", "x" * 500):
            assert_error(await c.get(f"{API}/auth/me", headers=jar(value)), 401, "unauthorized")
        no_auth = await c.get(f"{API}/auth/me")
        assert_error(no_auth, 401, "unauthorized")


async def test_sign_out_revokes_the_session(world: World, engine: AsyncEngine) -> None:
    async with browser(world) as c:
        cookie, body, _ = await sign_in(c, world, "a-viewer")
        kept, _, _ = await sign_in(c, world, "a-viewer")  # another browser of the same user
        refused = await c.delete(f"{API}/auth/session", headers=jar(cookie))
        assert_error(refused, 403, "forbidden")
        assert (await c.get(f"{API}/auth/me", headers=jar(cookie))).status_code == 200

        out = await c.delete(f"{API}/auth/session", headers=jar(cookie, body["csrf_token"]))
        assert out.status_code == 204, out.text
        cleared = set_cookie(out)[COOKIE]
        assert cleared.value == "" and int(cleared["max-age"]) == 0 and cleared["path"] == "/"
        after = await c.get(f"{API}/auth/me", headers=jar(cookie))
        assert_error(after, 401, "unauthorized")
        assert after.json()["error"]["message"] == EXPIRED
        assert (await c.get(f"{API}/auth/me", headers=jar(kept))).status_code == 200
        # Signing out again, or without a session, only clears the cookie.
        for headers in (jar(cookie), {}):
            again = await c.delete(f"{API}/auth/session", headers=headers)
            assert again.status_code == 204 and set_cookie(again)[COOKIE].value == ""
    with platform_wide():
        async with engine.connect() as conn:
            revoked = await conn.scalar(
                select(sessions.c.revoked_at).where(
                    sessions.c.token_hash == hashlib.sha256(cookie.encode()).hexdigest()
                )
            )
    assert revoked is not None


async def test_an_expired_session_and_a_changed_account_end_it(
    world: World, engine: AsyncEngine
) -> None:
    async with browser(world) as c:
        cookie, _, _ = await sign_in(c, world, "b-viewer")
        with platform_wide():
            async with engine.begin() as conn:
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.token_hash == hashlib.sha256(cookie.encode()).hexdigest())
                    .values(expires_at=time.time_ns() // 1000 - 1)
                )
        expired = await c.get(f"{API}/devices", headers=jar(cookie))
        assert_error(expired, 401, "unauthorized")
        assert expired.json()["error"]["message"] == EXPIRED

        # A changed password ends the sessions begun before it.
        cookie, body, _ = await sign_in(c, world, "b-operator")
        me = (await c.get(f"{API}/auth/me", headers=jar(cookie))).json()
        changed = await c.patch(
            f"{API}/users/{me['id']}",
            json={"password": "another long passphrase", "current_password": PASSWORD},
            headers=jar(cookie, body["csrf_token"]),
        )
        assert changed.status_code == 200, changed.text
        after = await c.get(f"{API}/auth/me", headers=jar(cookie))
        assert_error(after, 401, "unauthorized")
        assert "password changed" in after.json()["error"]["message"]

        # A disabled user's session stops at once; a deleted user's is gone with the user.
        cookie, _, _ = await sign_in(c, world, "b-viewer")
        me = (await c.get(f"{API}/auth/me", headers=jar(cookie))).json()
        owner = world.auth("b-owner")
        assert (
            await c.patch(f"{API}/users/{me['id']}", json={"disabled": True}, headers=owner)
        ).status_code == 200
        disabled = await c.get(f"{API}/auth/me", headers=jar(cookie))
        assert_error(disabled, 401, "unauthorized")
        assert "disabled" in disabled.json()["error"]["message"]
        assert (await c.delete(f"{API}/users/{me['id']}", headers=owner)).status_code == 204
        deleted = await c.get(f"{API}/auth/me", headers=jar(cookie))
        assert_error(deleted, 401, "unauthorized")


@pytest.fixture
async def served(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> AsyncIterator[tuple[World, str]]:
    """The world's app under uvicorn on a free port, with sessions of 1 hour."""
    url = await app_role_url(db_url) if db_url.startswith("postgresql") else db_url
    app_engine = await open_database(url, migrate_schema=False) if url != db_url else engine
    try:
        async for world in make_world(app_engine, url, tmp_path / "data", session_hours=1):
            async with serving(world.app) as address:
                yield world, address
    finally:
        if app_engine is not engine:
            await app_engine.dispose()


async def test_the_live_stream_accepts_the_cookie(served: tuple[World, str]) -> None:
    world, address = served
    keep_none = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=30, cookies=keep_none) as c:
        cookie, body, reply = await sign_in(c, world, "a-viewer")
        assert int(set_cookie(reply)[COOKIE]["max-age"]) == 3600  # TELEMETRA_SESSION_HOURS
        made = await c.post(
            f"{API}/devices",
            json={"uid": f"{world.tenant_a}-live"},
            headers=world.auth("a-operator"),
        )
        token = made.json()["token"]
        origin = {"Origin": f"http://{address}"}
        async with (
            connect(
                f"ws://{address}{API}/live",
                additional_headers=jar(cookie) | origin,
                open_timeout=10,
            ) as ws,
            c.stream("GET", f"{API}/live", headers=jar(cookie)) as sse,
        ):
            assert sse.status_code == 200
            lines = sse.aiter_lines()
            assert await anext(lines) == ": connected"
            await asyncio.sleep(0.2)
            ingested = await c.post(
                f"{API}/ingest", json={"temperature": 21.5}, headers={"X-API-Key": token}
            )
            assert ingested.status_code == 200, ingested.text
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert frame["type"] == "readings" and frame["device"] == f"{world.tenant_a}-live"
            while not (line := await asyncio.wait_for(anext(lines), 10)).startswith("data:"):
                pass
            assert json.loads(line[6:])["device"] == f"{world.tenant_a}-live"

        # A page of another site may not open a stream with the user's cookie.
        async with connect(
            f"ws://{address}{API}/live",
            additional_headers=jar(cookie) | {"Origin": "https://evil.example"},
        ) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403

        # A revoked session opens no stream.
        out = await c.delete(f"{API}/auth/session", headers=jar(cookie, body["csrf_token"]))
        assert out.status_code == 204
        assert_error(await c.get(f"{API}/live", headers=jar(cookie)), 401, "unauthorized")
        async with connect(
            f"ws://{address}{API}/live", additional_headers=jar(cookie) | origin
        ) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert closed.value.rcvd.reason == EXPIRED
