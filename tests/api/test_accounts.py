"""Tenants and users over HTTP, on SQLite and PostgreSQL: who may see and change what, tenant
isolation (404 like a missing id), mass assignment, stale tokens, and no password ever echoed.

argon2 is slow on purpose: most refusals happen before any hashing, and few tests log in."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.store.catalog import create_user, default_tenant_id
from telemetra.store.schema import users

from api_fixtures import _HASH, PASSWORD, World, assert_error

NEW_PASSWORD = "another long passphrase"
SECRETS = (PASSWORD, NEW_PASSWORD, "$argon2")
Headers = dict[str, str]


@pytest.fixture
def client(world: World) -> httpx.AsyncClient:
    """The world's client, failing any response that contains a password or a hash of one."""

    async def no_secrets(response: httpx.Response) -> None:
        body = (await response.aread()).decode()
        for secret in SECRETS:
            assert secret not in body, (response.request.url, body)

    world.client.event_hooks = {"request": [], "response": [no_secrets]}
    return world.client


@pytest.fixture
async def admin(world: World, engine: AsyncEngine) -> Headers:
    """A platform admin (in the default tenant), logged in."""
    name = f"admin-{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await create_user(conn, await default_tenant_id(conn), name, _HASH, "admin")
    reply = await world.client.post(
        "/api/v1/auth/token", data={"username": name, "password": PASSWORD}
    )
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


def tag_of(world: World) -> str:
    return world.tenant_a.split("-", 1)[1]


async def user_id(c: httpx.AsyncClient, headers: Headers) -> int:
    return int((await c.get("/api/v1/auth/me", headers=headers)).json()["id"])


async def login(c: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await c.post("/api/v1/auth/token", data={"username": username, "password": password})


async def test_tenants(world: World, client: httpx.AsyncClient, admin: Headers) -> None:
    c, tag = client, tag_of(world)
    names = lambda reply: [t["name"] for t in reply.json()["items"]]  # noqa: E731
    everything = await c.get(f"/api/v1/tenants?q={tag.upper()}", headers=admin)
    assert names(everything) == [world.tenant_a, world.tenant_b]
    first = await c.get(f"/api/v1/tenants?q={tag}&limit=1", headers=admin)
    assert names(first) == [world.tenant_a] and first.json()["next_offset"] == 1
    second = await c.get(f"/api/v1/tenants?q={tag}&limit=1&offset=1", headers=admin)
    assert names(second) == [world.tenant_b] and second.json()["next_offset"] is None
    for who in ("a-owner", "a-operator", "a-viewer"):  # everyone else sees only their own
        assert names(await c.get("/api/v1/tenants", headers=world.auth(who))) == [world.tenant_a]
    assert names(await c.get(f"/api/v1/tenants?q=a-{tag}", headers=world.auth("b-owner"))) == []

    made = await c.post(
        "/api/v1/tenants", json={"name": f"c-{tag}", "timezone": "Europe/Vienna"}, headers=admin
    )
    assert made.status_code == 201, made.text
    assert made.json()["name"] == f"c-{tag}" and made.json()["timezone"] == "Europe/Vienna"
    assert made.json()["created_at"].endswith("Z")
    again = await c.post("/api/v1/tenants", json={"name": f"c-{tag}"}, headers=admin)
    assert_error(again, 409, "conflict")
    for bad in (
        {"name": f"d-{tag}", "timezone": "Mars/Olympus"},
        {"name": f"d-{tag}", "timezone": "Europe"},
        {"name": f"d-{tag}", "id": 1},
        {"name": f" d-{tag}"},
        {"name": ""},
    ):
        assert_error(
            await c.post("/api/v1/tenants", json=bad, headers=admin), 422, "invalid_request"
        )
    for who in ("a-owner", "a-operator", "a-viewer"):
        reply = await c.post("/api/v1/tenants", json={"name": f"e-{tag}"}, headers=world.auth(who))
        assert_error(reply, 403, "forbidden")
    assert_error(await c.get("/api/v1/tenants"), 401, "unauthorized")


async def test_get_edit_and_delete_tenants(
    world: World, client: httpx.AsyncClient, admin: Headers
) -> None:
    c, tag = client, tag_of(world)
    me = (await c.get("/api/v1/auth/me", headers=world.auth("a-owner"))).json()
    mine = f"/api/v1/tenants/{me['tenant_id']}"
    assert (await c.get(mine, headers=world.auth("a-viewer"))).json()["name"] == world.tenant_a
    assert (await c.get(mine, headers=admin)).json()["name"] == world.tenant_a

    # The owner sets the time zone; renaming is for admins, whose names stay unique.
    zoned = await c.patch(mine, json={"timezone": "Asia/Tokyo"}, headers=world.auth("a-owner"))
    assert zoned.status_code == 200 and zoned.json()["timezone"] == "Asia/Tokyo"
    for body, status, code in (
        ({"name": f"renamed-{tag}"}, 403, "forbidden"),
        ({"timezone": "Mars/Base"}, 422, "invalid_request"),
        ({"id": 1}, 422, "invalid_request"),
    ):
        assert_error(await c.patch(mine, json=body, headers=world.auth("a-owner")), status, code)
    assert_error(
        await c.patch(mine, json={"timezone": None}, headers=world.auth("a-operator")),
        403,
        "forbidden",
    )
    taken = await c.patch(mine, json={"name": world.tenant_b}, headers=admin)
    assert_error(taken, 409, "conflict")
    renamed = await c.patch(mine, json={"name": f"{world.tenant_a}-x"}, headers=admin)
    assert renamed.json()["name"] == f"{world.tenant_a}-x"
    assert_error(await c.patch(mine, json={"name": None}, headers=admin), 422, "invalid_request")
    default = (await c.get("/api/v1/auth/me", headers=admin)).json()["tenant_id"]
    keeps = await c.patch(f"/api/v1/tenants/{default}", json={"name": "x"}, headers=admin)
    assert_error(keeps, 409, "conflict")

    # Deleting: admins only, never their own (the default) tenant; all of it goes.
    assert_error(await c.delete(f"/api/v1/tenants/{default}", headers=admin), 409, "conflict")
    assert_error(await c.delete(mine, headers=world.auth("a-owner")), 403, "forbidden")
    made = await c.post(
        "/api/v1/devices", json={"uid": f"gone-{tag}"}, headers=world.auth("a-operator")
    )
    token = made.json()["token"]
    stored = await c.post("/api/v1/ingest", json={"t": 1}, headers={"X-API-Key": token})
    assert stored.status_code == 200 and stored.json()["accepted"] == 1
    assert (await c.delete(mine, headers=admin)).status_code == 204
    assert_error(await c.get(mine, headers=admin), 404, "not_found")
    assert_error(await c.get("/api/v1/auth/me", headers=world.auth("a-owner")), 401, "unauthorized")
    gone = await c.post("/api/v1/ingest", json={"t": 2}, headers={"X-API-Key": token})
    assert_error(gone, 401, "unauthorized")
    assert (await c.get(f"/api/v1/devices/gone-{tag}", headers=admin)).status_code == 404
    # The id is free again, and nothing of the old device comes back with it.
    again = await c.post("/api/v1/devices", json={"uid": f"gone-{tag}"}, headers=admin)
    assert again.status_code == 201
    latest = await c.get(f"/api/v1/devices/gone-{tag}/latest", headers=admin)
    assert latest.json()["items"] == []


async def test_users_get_themselves_and_owners_their_tenant(
    world: World, client: httpx.AsyncClient
) -> None:
    c = client
    ids = {who: await user_id(c, world.auth(who)) for who in ("a-viewer", "a-owner", "b-owner")}
    own = await c.get(f"/api/v1/users/{ids['a-viewer']}", headers=world.auth("a-viewer"))
    assert own.status_code == 200 and own.json()["role"] == "viewer"
    other = f"/api/v1/users/{ids['a-owner']}"
    assert_error(await c.get(other, headers=world.auth("a-viewer")), 403, "forbidden")
    assert (await c.get(other, headers=world.auth("a-owner"))).json()["role"] == "owner"
    theirs = f"/api/v1/users/{ids['b-owner']}"
    assert_error(await c.get(theirs, headers=world.auth("a-owner")), 404, "not_found")


async def test_owner_manages_the_users_of_their_tenant(
    world: World, client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    c, tag, h = client, tag_of(world), world.auth("a-owner")
    name = f"a-new-{tag}"
    made = await c.post(
        "/api/v1/users",
        json={"username": name, "password": PASSWORD, "role": "operator"},
        headers=h,
    )
    assert made.status_code == 201, made.text
    new = made.json()
    assert set(new) == {"id", "username", "tenant_id", "tenant", "role", "disabled", "created_at"}
    assert (new["tenant"], new["role"], new["disabled"]) == (world.tenant_a, "operator", False)
    async with engine.connect() as conn:
        stored = await conn.scalar(select(users.c.password_hash).where(users.c.id == new["id"]))
    assert stored is not None and stored.startswith("$argon2id$")

    # Refused before anything is hashed or stored.
    for body, status, code in (
        ({"role": "admin"}, 403, "forbidden"),  # owners never create admins
        ({"tenant": world.tenant_b}, 403, "forbidden"),  # nor users elsewhere
        ({"tenant": "no-such-tenant"}, 403, "forbidden"),  # answered alike
        ({"password": "short"}, 422, "invalid_request"),
        ({"tenant_id": 1}, 422, "invalid_request"),
        ({"disabled": True}, 422, "invalid_request"),
        ({"password_hash": "x"}, 422, "invalid_request"),
        ({"username": " padded"}, 422, "invalid_request"),
    ):
        full = {"username": f"a-other-{tag}", "password": PASSWORD, **body}
        assert_error(await c.post("/api/v1/users", json=full, headers=h), status, code)
    # Usernames are global; a name taken in another tenant gives the same, generic answer.
    ours = await c.post("/api/v1/users", json={"username": name, "password": PASSWORD}, headers=h)
    theirs = await c.post(
        "/api/v1/users", json={"username": f"b-viewer-{tag}", "password": PASSWORD}, headers=h
    )
    assert_error(ours, 409, "conflict")
    assert_error(theirs, 409, "conflict")
    assert ours.json() == theirs.json() and world.tenant_b not in theirs.text

    listed = await c.get("/api/v1/users", headers=h)
    expected = sorted([name] + [f"a-{r}-{tag}" for r in ("owner", "operator", "viewer")])
    assert [u["username"] for u in listed.json()["items"]] == expected
    assert {u["tenant"] for u in listed.json()["items"]} == {world.tenant_a}
    found = await c.get("/api/v1/users?q=A-NEW", headers=h)
    assert [u["username"] for u in found.json()["items"]] == [name]
    page = await c.get("/api/v1/users?limit=2&offset=1", headers=h)
    assert [u["username"] for u in page.json()["items"]] == expected[1:3]
    assert page.json()["next_offset"] == 3
    own = await c.get(f"/api/v1/users?tenant={world.tenant_a}", headers=h)
    assert len(own.json()["items"]) == 4
    foreign = await c.get(f"/api/v1/users?tenant={world.tenant_b}", headers=h)
    missing = await c.get("/api/v1/users?tenant=no-such-tenant", headers=h)
    assert_error(foreign, 404, "not_found")
    assert_error(missing, 404, "not_found")
    assert_error(await c.get("/api/v1/users?limit=0", headers=h), 422, "invalid_request")

    path = f"/api/v1/users/{new['id']}"
    assert (await c.patch(path, json={"role": "viewer"}, headers=h)).json()["role"] == "viewer"
    assert (await c.patch(path, json={"disabled": True}, headers=h)).json()["disabled"] is True
    assert_error(await login(c, name, PASSWORD), 401, "unauthorized")
    changed = await c.patch(path, json={"disabled": False, "password": NEW_PASSWORD}, headers=h)
    assert changed.status_code == 200 and changed.json()["disabled"] is False
    assert (await login(c, name, NEW_PASSWORD)).status_code == 200
    assert_error(await c.patch(path, json={"tenant_id": 1}, headers=h), 422, "invalid_request")
    assert_error(await c.patch(path, json={"username": "x"}, headers=h), 422, "invalid_request")

    me = f"/api/v1/users/{await user_id(c, h)}"
    assert_error(await c.patch(me, json={"role": "viewer"}, headers=h), 403, "forbidden")
    assert_error(await c.patch(me, json={"disabled": True}, headers=h), 403, "forbidden")
    assert_error(await c.patch(me, json={"tenant_id": 1}, headers=h), 422, "invalid_request")
    assert_error(await c.delete(me, headers=h), 409, "conflict")

    assert (await c.delete(path, headers=h)).status_code == 204
    assert_error(await c.delete(path, headers=h), 404, "not_found")
    assert_error(await c.patch(path, json={"role": "owner"}, headers=h), 404, "not_found")


async def test_other_tenants_and_lower_roles_are_kept_out(
    world: World, client: httpx.AsyncClient
) -> None:
    c, tag = client, tag_of(world)
    ids = {who: await user_id(c, world.auth(who)) for who in world.tokens}
    nobody = max(ids.values()) + 1_000_000

    # An owner of tenant b sees nothing of tenant a: 404, exactly like a missing id.
    hb = world.auth("b-owner")
    listed = await c.get("/api/v1/users", headers=hb)
    assert {u["tenant"] for u in listed.json()["items"]} == {world.tenant_b}
    assert (await c.get(f"/api/v1/users?q=a-owner-{tag}", headers=hb)).json()["items"] == []
    for target in (ids["a-owner"], ids["a-viewer"], nobody):
        for method, body in (
            ("PATCH", {"disabled": True}),
            ("PATCH", {"role": "viewer"}),
            ("PATCH", {"password": NEW_PASSWORD}),
            ("DELETE", None),
        ):
            reply = await c.request(method, f"/api/v1/users/{target}", json=body, headers=hb)
            assert_error(reply, 404, "not_found")
            assert reply.json()["error"]["message"] == f"no user {target}"

    # Operators and viewers manage no users and no tenants.
    for who in ("a-operator", "a-viewer"):
        h = world.auth(who)
        other = ids["a-viewer" if who == "a-operator" else "a-operator"]
        new_user = {"username": f"a-x-{tag}", "password": PASSWORD}
        for reply in (
            await c.get("/api/v1/users", headers=h),
            await c.post("/api/v1/users", json=new_user, headers=h),
            await c.patch(f"/api/v1/users/{other}", json={"disabled": True}, headers=h),
            await c.patch(f"/api/v1/users/{other}", json={"password": NEW_PASSWORD}, headers=h),
            await c.delete(f"/api/v1/users/{other}", headers=h),
            await c.delete(f"/api/v1/users/{ids['a-owner']}", headers=h),
            await c.post("/api/v1/tenants", json={"name": f"x-{tag}"}, headers=h),
        ):
            assert_error(reply, 403, "forbidden")

    # Mass assignment on oneself is refused; a viewer may change only their own password.
    hv, me = world.auth("a-viewer"), f"/api/v1/users/{ids['a-viewer']}"
    for body, status, code in (
        ({"role": "owner"}, 403, "forbidden"),
        ({"role": "admin"}, 403, "forbidden"),
        ({"disabled": False}, 403, "forbidden"),
        ({"tenant_id": 1}, 422, "invalid_request"),
        ({"tenant": world.tenant_b}, 422, "invalid_request"),
        ({"username": "root"}, 422, "invalid_request"),
        ({"password": NEW_PASSWORD}, 422, "invalid_request"),  # needs current_password
        ({"password": "short", "current_password": PASSWORD}, 422, "invalid_request"),
        ({"password": NEW_PASSWORD, "current_password": "wrong guess"}, 403, "forbidden"),
    ):
        assert_error(await c.patch(me, json=body, headers=hv), status, code)
    changed = await c.patch(
        me, json={"password": NEW_PASSWORD, "current_password": PASSWORD}, headers=hv
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["role"], changed.json()["tenant"]) == ("viewer", world.tenant_a)
    fresh = await login(c, f"a-viewer-{tag}", NEW_PASSWORD)
    assert fresh.status_code == 200
    # A new password ends the tokens issued before it (a stolen token dies with the old one).
    stale = await c.get("/api/v1/auth/me", headers=hv)
    assert_error(stale, 401, "unauthorized")
    assert "password changed" in stale.json()["error"]["message"]
    hv = {"Authorization": f"Bearer {fresh.json()['access_token']}"}
    assert (await c.get("/api/v1/auth/me", headers=hv)).status_code == 200
    # Also when the owner resets it.
    reset = {"password": PASSWORD}
    assert (await c.patch(me, json=reset, headers=world.auth("a-owner"))).status_code == 200
    assert_error(await c.get("/api/v1/auth/me", headers=hv), 401, "unauthorized")


async def test_admin_and_stale_tokens(
    world: World, client: httpx.AsyncClient, admin: Headers
) -> None:
    c, tag = client, tag_of(world)
    ids = {who: await user_id(c, world.auth(who)) for who in world.tokens}
    everyone = await c.get(f"/api/v1/users?q={tag}", headers=admin)
    assert {u["tenant"] for u in everyone.json()["items"]} == {world.tenant_a, world.tenant_b}
    assert len(everyone.json()["items"]) == 6
    of_b = await c.get(f"/api/v1/users?tenant={world.tenant_b}", headers=admin)
    assert {u["id"] for u in of_b.json()["items"]} == {
        ids[f"b-{r}"] for r in ("owner", "operator", "viewer")
    }
    assert_error(await c.get("/api/v1/users?tenant=nope", headers=admin), 404, "not_found")
    nowhere = {"username": f"x-{tag}", "password": PASSWORD, "tenant": "no-such-tenant"}
    assert_error(await c.post("/api/v1/users", json=nowhere, headers=admin), 422, "invalid_request")

    # Admins create any role in any tenant; owners cannot touch or make admins.
    made = await c.post(
        "/api/v1/users",
        json={"username": f"b-admin-{tag}", "password": PASSWORD, "role": "admin",
              "tenant": world.tenant_b},
        headers=admin,
    )  # fmt: skip
    assert made.status_code == 201, made.text
    assert (made.json()["tenant"], made.json()["role"]) == (world.tenant_b, "admin")
    hb, their_admin = world.auth("b-owner"), f"/api/v1/users/{made.json()['id']}"
    assert_error(await c.patch(their_admin, json={"disabled": True}, headers=hb), 403, "forbidden")
    assert_error(await c.delete(their_admin, headers=hb), 403, "forbidden")
    promote = await c.patch(f"/api/v1/users/{ids['b-viewer']}", json={"role": "admin"}, headers=hb)
    assert_error(promote, 403, "forbidden")
    promoted = await c.patch(
        f"/api/v1/users/{ids['b-viewer']}", json={"role": "operator"}, headers=admin
    )
    assert promoted.json()["role"] == "operator"
    assert (await c.delete(their_admin, headers=admin)).status_code == 204

    me = f"/api/v1/users/{await user_id(c, admin)}"
    assert_error(await c.patch(me, json={"role": "viewer"}, headers=admin), 403, "forbidden")
    assert_error(await c.delete(me, headers=admin), 409, "conflict")

    # A token outlives nothing: disabling, demoting and deleting take effect at once.
    ha, operator = world.auth("a-operator"), f"/api/v1/users/{ids['a-operator']}"
    await c.patch(operator, json={"disabled": True}, headers=world.auth("a-owner"))
    assert_error(await c.get("/api/v1/tenants", headers=ha), 401, "unauthorized")
    await c.patch(operator, json={"disabled": False}, headers=world.auth("a-owner"))
    assert (await c.get("/api/v1/tenants", headers=ha)).status_code == 200

    await c.patch(f"/api/v1/users/{ids['a-owner']}", json={"role": "viewer"}, headers=admin)
    assert_error(await c.get("/api/v1/users", headers=world.auth("a-owner")), 403, "forbidden")

    assert (await c.delete(f"/api/v1/users/{ids['b-viewer']}", headers=admin)).status_code == 204
    assert_error(
        await c.get("/api/v1/tenants", headers=world.auth("b-viewer")), 401, "unauthorized"
    )
