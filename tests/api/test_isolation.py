"""Tenant isolation as a matrix, on SQLite and PostgreSQL: every /api/v1 endpoint that reaches
tenant-owned data, tried by each role of tenant b against tenant a's device, readings, dead
letters and users; the roles within tenant a; and a guard that fails when an endpoint is added
without a row here.

Tenant b's answer for tenant a's thing must be the answer for a thing that does not exist (the
same status, error code and message but for the id), lists must hold nothing of tenant a, and
after every attempt to change something tenant a's data is compared with a snapshot taken at
setup. The setup is made once per database (module scope): each case costs a few requests.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute, APIWebSocketRoute
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

import telemetra.api
from telemetra.api.app import create_app
from telemetra.api.auth import ROLES
from telemetra.config import Settings
from telemetra.store.database import open_database
from telemetra.store.schema import alert_rules, devices, users
from telemetra.store.tenancy import platform_wide

from api_fixtures import PASSWORD, SECRET, World, assert_error, make_world
from conftest import app_role_url

API = "/api/v1"
ATTACKERS = ("b-owner", "b-operator", "b-viewer")
NEW_PASSWORD = "another long passphrase"
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
IDENTITY_KEYS = frozenset({"uid", "device", "tenant", "username", "name"})
CODES = {403: "forbidden", 404: "not_found", 409: "conflict"}


# --- the scene: tenant a's things, made once per database -----------------------------------


@dataclass
class Scene:
    world: World
    engine: AsyncEngine
    tenant_a_id: int
    uid: str  # tenant a's device, with readings and a dead letter
    user_id: int  # an extra user of tenant a, made by its owner
    username: str
    a_usernames: frozenset[str]
    target: dict[str, str]  # placeholder -> tenant a's value
    missing: dict[str, str]  # placeholder -> a value that names nothing
    before: dict[str, Any] = field(default_factory=dict)  # tenant a, as its owner sees it

    def of_tenant_a(self, body: Any) -> list[Any]:
        """The values in a JSON body that name tenant a or one of its things."""
        tenant_a = self.target["tenant"]
        found: list[Any] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    if key == "tenant_id" and value == self.tenant_a_id:
                        found.append(value)
                    elif key in IDENTITY_KEYS and isinstance(value, str):
                        if value == tenant_a or value.startswith(f"{tenant_a}-"):
                            found.append(value)  # its name, and its devices' uids
                        elif value in self.a_usernames:
                            found.append(value)
                    walk(value)
            elif isinstance(node, list):
                for item in node:
                    walk(item)

        walk(body)
        return found


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_db_url(request: pytest.FixtureRequest) -> str:
    """Like conftest's db_url, once per module: a sync fixture resolves the async session ones."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture(scope="module")
async def scene(
    module_db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Scene]:
    # On PostgreSQL the app connects as an ordinary role, so RLS applies beneath the matrix.
    if module_db_url.startswith("postgresql"):
        module_db_url = await app_role_url(module_db_url)
    engine = await open_database(module_db_url, migrate_schema=False)
    # Hundreds of requests per user within seconds: the rate limits are not what this tests.
    worlds = make_world(
        engine, module_db_url, tmp_path_factory.mktemp("isolation"),
        rate_limit_user_per_s=0, rate_limit_device_per_s=0,
    )  # fmt: skip
    world = await anext(worlds)
    try:
        yield await make_scene(world, engine)
    finally:
        await worlds.aclose()
        await engine.dispose()


async def make_scene(world: World, engine: AsyncEngine) -> Scene:
    c, tag, tenant_a = world.client, world.tenant_a.split("-", 1)[1], world.tenant_a
    uid = f"{tenant_a}-greenhouse"
    made = await c.post(
        f"{API}/devices",
        json={"uid": uid, "name": f"{tenant_a}-Greenhouse", "type": "climate",
              "metadata": {"site": "north", "location": {"lat": 52.5, "lon": 13.4}}},
        headers=world.auth("a-operator"),
    )  # fmt: skip
    assert made.status_code == 201, made.text
    token = made.json()["token"]
    base = (int(time.time() * 1000) // HOUR_MS - 2) * HOUR_MS
    entries: list[dict[str, Any]] = [
        {"ts": base + i * MINUTE_MS, "temperature": 20.0 + i, "humidity": 40.0 + i}
        for i in range(5)
    ]
    entries.append({"ts": base + 5 * MINUTE_MS, "temperature": 6000})  # a dead letter
    ingested = await c.post(f"{API}/ingest", json=entries, headers={"X-API-Key": token})
    assert ingested.status_code == 200, ingested.text
    assert ingested.json()["accepted"] == 10
    assert [r["reason"] for r in ingested.json()["rejected"]] == ["out_of_range"]

    username = f"{tenant_a}-extra"
    user = await c.post(
        f"{API}/users",
        json={"username": username, "password": PASSWORD, "role": "viewer"},
        headers=world.auth("a-owner"),
    )
    assert user.status_code == 201, user.text
    me = await c.get(f"{API}/auth/me", headers=world.auth("a-owner"))
    scene = Scene(
        world=world,
        engine=engine,
        tenant_a_id=int(me.json()["tenant_id"]),
        uid=uid,
        user_id=int(user.json()["id"]),
        username=username,
        a_usernames=frozenset(
            {username, *(f"a-{role}-{tag}" for role in ("owner", "operator", "viewer"))}
        ),
        target={"uid": uid, "user_id": str(user.json()["id"]), "tenant": tenant_a,
                "username": username, "tag": tag, "tenant_id": str(me.json()["tenant_id"])},
        missing={"uid": f"no-device-{tag}", "user_id": str(int(user.json()["id"]) + 1_000_000),
                 "tenant": f"no-tenant-{tag}", "username": f"no-user-{tag}", "tag": tag,
                 "tenant_id": str(int(me.json()["tenant_id"]) + 1_000_000)},
    )  # fmt: skip
    await add_rule_and_alert(scene)
    await add_cleaning_rule(scene)
    scene.before = await snapshot(scene)
    assert len(scene.before["alerts"]["items"]) == 1
    assert len(scene.before["history"]["items"]) == 10
    assert len(scene.before["deadletters"]["items"]) == 1
    return scene


def alert_rule(scene_tenant: str, uid: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": f"{scene_tenant}-too warm", "kind": "threshold", "metric": "temperature",
        "condition": {"op": ">", "value": 22}, "scope": {"devices": [uid]},
        "channels": [{"kind": "webhook", "url": "https://ops.example.org/hook",
                      "secret": "tenant a's webhook secret"}],
        **extra,
    }  # fmt: skip


async def add_rule_and_alert(scene: Scene) -> None:
    """Tenant a's alert rule (made by its operator) and an alert of it (the engine's part)."""
    from telemetra.alerts import store

    c, tenant_a = scene.world.client, scene.target["tenant"]
    made = await c.post(f"{API}/rules", json=alert_rule(tenant_a, scene.uid),
                        headers=scene.world.auth("a-operator"))  # fmt: skip
    assert made.status_code == 201, made.text
    rule_id = made.json()["id"]
    with platform_wide():
        async with scene.engine.begin() as conn:
            rule = await store.get_rule(conn, rule_id, scene.tenant_a_id)
            assert rule is not None
            alert, _ = await store.open_alert(
                conn, rule, scene.uid, "temperature", value=23.0, message="temperature 23 > 22",
                started_at=int(time.time() * 1_000_000) - 3_600_000_000,
            )  # fmt: skip
    scene.target |= {"rule_id": str(rule_id), "alert_id": str(alert.id)}
    scene.missing |= {"rule_id": str(rule_id + 1_000_000), "alert_id": str(alert.id + 1_000_000)}


async def add_cleaning_rule(scene: Scene) -> None:
    """Tenant a's cleaning rule for its device type (made by its operator)."""
    made = await scene.world.client.put(
        f"{API}/cleaning-rules",
        json={"metric": "temperature", "device_type": "climate", "min": -30, "max": 60},
        headers=scene.world.auth("a-operator"),
    )
    assert made.status_code == 200, made.text
    rule_id = made.json()["id"]
    scene.target |= {"cleaning_rule_id": str(rule_id)}
    scene.missing |= {"cleaning_rule_id": str(rule_id + 1_000_000)}


async def snapshot(scene: Scene) -> dict[str, Any]:
    """Tenant a as its owner sees it over HTTP, with the secrets the API never shows."""
    c, h, uid = scene.world.client, scene.world.auth("a-owner"), scene.uid
    seen: dict[str, Any] = {}
    for name, path, params in (
        ("device", f"devices/{uid}", None),
        ("history", f"devices/{uid}/telemetry", {"from": "-7d"}),
        ("latest", f"devices/{uid}/latest", None),
        ("quality", f"devices/{uid}/quality", None),
        ("clock", f"devices/{uid}/clock", {"from": "-7d"}),
        ("deadletters", "deadletters", {"device": uid}),
        ("users", "users", None),
        ("tenants", "tenants", None),
        ("rules", "rules", None),
        ("rule", f"rules/{scene.target['rule_id']}", None),
        ("alerts", "alerts", {"from": "-7d"}),
        ("alert", f"alerts/{scene.target['alert_id']}", None),
        ("cleaning_rules", "cleaning-rules", None),
    ):
        reply = await c.get(f"{API}/{path}", params=params, headers=h)
        assert reply.status_code == 200, (name, reply.text)
        seen[name] = reply.json()
    with platform_wide():  # the app's engine fails closed outside a request
        async with scene.engine.connect() as conn:
            seen["token_hash"] = await conn.scalar(
                select(devices.c.token_hash).where(devices.c.uid == uid)
            )
            rows = await conn.execute(
                select(users.c.id, users.c.password_hash).where(
                    users.c.tenant_id == scene.tenant_a_id
                )
            )
            seen["password_hashes"] = sorted((int(i), str(p)) for i, p in rows)
            seen["rule_definition"] = await conn.scalar(
                select(alert_rules.c.definition).where(
                    alert_rules.c.id == int(scene.target["rule_id"])
                )
            )
    return seen


# --- the matrix -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request. ``{uid}``, ``{user_id}``, ``{tenant}``, ``{tenant_id}``, ``{username}`` and
    ``{tag}`` in the route, parameters and body are filled in with tenant a's values (or missing
    ones)."""

    method: str
    route: str  # the OpenAPI path below /api/v1
    least: str  # the least role admitted: lower roles get 403 whatever the target
    status: int  # the answer to an admitted role of another tenant
    params: dict[str, Any] | None = None
    body: dict[str, Any] | None = None
    note: str = ""  # tells the variants of one route apart in test ids
    writes: bool = False  # afterwards, tenant a must be as it was
    like_missing: bool = True  # answered exactly as for a missing target

    @property
    def operation(self) -> tuple[str, str]:
        return self.method, API + self.route

    @property
    def name(self) -> str:
        return f"{self.method} {self.route}{f' {self.note}' if self.note else ''}"


SINCE = {"from": "-7d"}
CALLS = (
    # Reads by id: 404, like a missing id.
    Call("GET", "/devices/{uid}", "viewer", 404),
    Call("GET", "/devices/{uid}/telemetry", "viewer", 404, SINCE),
    Call("GET", "/devices/{uid}/aggregate", "viewer", 404,
         {"metric": "temperature", "from": "-1d", "bucket": "1h"}),
    Call("GET", "/devices/{uid}/latest", "viewer", 404),
    Call("GET", "/devices/{uid}/quality", "viewer", 404),
    Call("GET", "/devices/{uid}/clock", "viewer", 404, SINCE),
    Call("GET", "/devices/{uid}/export", "viewer", 404, {**SINCE, "format": "csv"}, note="csv"),
    Call("GET", "/devices/{uid}/export", "viewer", 404, {**SINCE, "format": "parquet"},
         note="parquet"),
    Call("GET", "/users", "owner", 404, {"tenant": "{tenant}"}, note="?tenant=a"),
    Call("GET", "/devices", "viewer", 404, {"tenant": "{tenant}"}, note="?tenant=a"),
    Call("GET", "/users/{user_id}", "owner", 404),
    Call("GET", "/tenants/{tenant_id}", "viewer", 404),
    # Lists: nothing of tenant a, filtered by its names or not.
    Call("GET", "/devices", "viewer", 200),
    Call("GET", "/devices", "viewer", 200, {"q": "{uid}"}, note="?q=uid"),
    Call("GET", "/telemetry/latest", "viewer", 200),
    Call("GET", "/telemetry/latest", "viewer", 200, {"device": "{uid}"}, note="?device=uid"),
    Call("GET", "/telemetry/sparklines", "viewer", 200, {"devices": "{uid}"},
         note="?devices=uid"),
    Call("GET", "/telemetry/sparklines", "viewer", 200, {"devices": "{uid},{uid}-2", "hours": 168},
         note="?devices=uid,…&hours=168"),
    Call("GET", "/devices", "viewer", 200, {"online": "unknown", "sort": "-last_seen"},
         note="?online=unknown&sort=-last_seen"),
    Call("GET", "/deadletters", "viewer", 200),
    Call("GET", "/deadletters", "viewer", 200, {"device": "{uid}"}, note="?device=uid"),
    Call("GET", "/deadletters", "viewer", 200, {"device": "{uid}", "replayed": "false",
         "from": "-7d"}, note="?device=uid&replayed=false"),
    Call("GET", "/tenants", "viewer", 200),
    Call("GET", "/tenants", "viewer", 200, {"q": "{tenant}"}, note="?q=a"),
    Call("GET", "/users", "owner", 200),
    Call("GET", "/users", "owner", 200, {"q": "{username}"}, note="?q=username"),
    # Changes and deletes: 404 like a missing id (403 first where the role is too low).
    Call("PATCH", "/devices/{uid}", "operator", 404, body={"name": "taken over"}, note="name",
         writes=True),
    Call("PATCH", "/devices/{uid}", "operator", 404, body={"status": "disabled"},
         note="status", writes=True),
    Call("DELETE", "/devices/{uid}", "operator", 404, writes=True),
    # Replays: none of tenant a's dead letters is replayed, stored or marked.
    Call("POST", "/deadletters/replay", "operator", 200, body={"device": "{uid}"},
         note="device=uid", writes=True),
    Call("POST", "/deadletters/replay", "operator", 200, body={"dry_run": True},
         note="all, dry run", writes=True),
    Call("POST", "/devices/{uid}/token", "operator", 404, writes=True),
    Call("POST", "/devices/{uid}/certificate", "operator", 404, writes=True),
    Call("POST", "/devices/{uid}/certificate", "operator", 404, {"format": "zip"}, note="zip",
         writes=True),
    Call("PATCH", "/users/{user_id}", "owner", 404, body={"role": "owner"}, note="role",
         writes=True),
    Call("PATCH", "/users/{user_id}", "owner", 404, body={"disabled": True}, note="disabled",
         writes=True),
    Call("PATCH", "/users/{user_id}", "owner", 404, body={"password": NEW_PASSWORD},
         note="password", writes=True),
    Call("DELETE", "/users/{user_id}", "owner", 404, writes=True),
    Call("PATCH", "/tenants/{tenant_id}", "owner", 404, body={"timezone": "Asia/Tokyo"},
         note="timezone", writes=True),
    Call("PATCH", "/tenants/{tenant_id}", "owner", 404, body={"name": "taken over"},
         note="name", writes=True),
    Call("DELETE", "/tenants/{tenant_id}", "admin", 404, writes=True),
    Call("POST", "/users", "owner", 403,
         body={"username": "intruder-{tag}", "password": PASSWORD, "tenant": "{tenant}"},
         note="into tenant a", writes=True),
    Call("POST", "/devices", "operator", 403, body={"uid": "intruder-{tag}", "tenant": "{tenant}"},
         note="into tenant a", writes=True),
    Call("POST", "/tenants", "admin", 409, body={"name": "{tenant}"}, writes=True),
    # Alert rules and alerts: reads by id 404, lists hold nothing of tenant a, changes 404.
    Call("GET", "/rules/{rule_id}", "viewer", 404),
    Call("GET", "/alerts/{alert_id}", "viewer", 404),
    Call("GET", "/rules", "viewer", 200),
    Call("GET", "/alerts", "viewer", 200, SINCE),
    Call("GET", "/alerts", "viewer", 200, {"rule": "{rule_id}", **SINCE}, note="?rule=id"),
    Call("GET", "/alerts", "viewer", 200, {"rule": "{tenant}-too warm", "device": "{uid}"},
         note="?rule=name&device=uid"),
    Call("PATCH", "/rules/{rule_id}", "operator", 404, body={"enabled": False}, note="enabled",
         writes=True),
    Call("PATCH", "/rules/{rule_id}", "operator", 404,
         body={"channels": [{"kind": "webhook", "url": "https://evil.example.org/x"}]},
         note="channels", writes=True),
    Call("DELETE", "/rules/{rule_id}", "operator", 404, writes=True),
    Call("POST", "/alerts/{alert_id}/ack", "operator", 404, body={"note": "mine now"},
         writes=True),
    Call("POST", "/alerts/{alert_id}/resolve", "operator", 404, writes=True),
    Call("POST", "/rules", "operator", 403,
         body={"name": "intruder", "kind": "no_data", "condition": {"for": "5m"},
               "tenant": "{tenant}"}, note="into tenant a", writes=True),
    # A preview reads the caller's own devices: tenant a's device is not among them.
    Call("POST", "/rules/preview", "operator", 200,
         body={"rule": {"kind": "threshold", "metric": "temperature",
                        "condition": {"op": ">", "value": 0}, "scope": {"devices": ["{uid}"]}},
               "from": "2026-01-01T00:00:00Z", "to": "2031-01-01T00:00:00Z"},
         note="devices=uid", writes=True),
    Call("POST", "/rules/preview", "operator", 403,
         body={"rule": {"kind": "no_data", "condition": {"for": "5m"}}, "tenant": "{tenant}"},
         note="tenant a", writes=True),
    # The overview: counts of the caller's tenant only; tenant a's located device is not there.
    Call("GET", "/overview", "viewer", 200),
    Call("GET", "/overview", "viewer", 404, {"tenant": "{tenant}"}, note="?tenant=a"),
    # Cleaning rules: tenant a's neither listed, replaced, nor deleted.
    Call("GET", "/cleaning-rules", "viewer", 200),
    Call("GET", "/cleaning-rules", "viewer", 404, {"tenant": "{tenant}"}, note="?tenant=a"),
    Call("PUT", "/cleaning-rules", "operator", 403,
         body={"metric": "temperature", "device_type": "climate", "max": 1000,
               "tenant": "{tenant}"}, note="into tenant a", writes=True),
    Call("DELETE", "/cleaning-rules/{cleaning_rule_id}", "operator", 404, writes=True),
    # Names are global (MQTT topics, logins): taken is taken, but nothing else is told.
    Call("POST", "/devices", "operator", 409, body={"uid": "{uid}"}, note="uid of a",
         writes=True, like_missing=False),
    Call("POST", "/users", "owner", 409, body={"username": "{username}", "password": PASSWORD},
         note="username of a", writes=True, like_missing=False),
)  # fmt: skip

# Reached by /api/v1 but not tenant data a user names: checked separately, or not at all.
EXEMPT = {
    # Log in: username and password in, a token out (test_api, test_accounts).
    ("POST", f"{API}/auth/token"),
    # The caller's own account, from their token alone.
    ("GET", f"{API}/auth/me"),
    # Signing in and out of the dashboard: the caller's own session (test_session).
    ("POST", f"{API}/auth/session"),
    ("DELETE", f"{API}/auth/session"),
    # Device-token ingest: the token names the device; see test_device_tokens_write_only_*.
    ("POST", f"{API}/ingest"),
    ("POST", f"{API}/ingest/batch"),
    ("POST", f"{API}/{{device_token}}/telemetry"),
    # The live stream never ends, so a request-and-answer matrix cannot hold it: two tenants'
    # clients, each publishing, neither ever receiving the other's data, is
    # tests/api/test_live.py::test_tenants_never_see_each_others_stream.
    ("GET", f"{API}/live"),
    ("WEBSOCKET", f"{API}/live"),
}


def role_of(who: str) -> str:
    return who.split("-", 1)[1]


def below(who: str, least: str) -> bool:
    return ROLES.index(role_of(who)) < ROLES.index(least)


def fill(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, replacement in values.items():
            value = value.replace(f"{{{key}}}", replacement)
        return value
    if isinstance(value, dict):
        return {k: fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, values) for v in value]
    return value


async def send(scene: Scene, who: str, call: Call, values: dict[str, str]) -> httpx.Response:
    return await scene.world.client.request(
        call.method,
        API + fill(call.route, values),
        params=fill(call.params, values),
        json=fill(call.body, values),
        headers=scene.world.auth(who),
    )


def answer(reply: httpx.Response, values: dict[str, str]) -> tuple[int, str | None, Any]:
    """Status, content type and body, with the ids the request named replaced by placeholders."""
    body = reply.json()
    if isinstance(body, dict) and "error" in body:
        message = body["error"]["message"]
        for key, value in values.items():  # whole words only: the uid holds the tenant's name
            message = re.sub(rf"(?<![\w-]){re.escape(value)}(?![\w-])", f"<{key}>", message)
        body["error"]["message"] = message
    return reply.status_code, reply.headers.get("content-type"), body


def case_id(value: Any) -> str:
    return value.name if isinstance(value, Call) else str(value)


@pytest.mark.parametrize(
    ("who", "call"), [(who, call) for who in ATTACKERS for call in CALLS], ids=case_id
)
async def test_another_tenant_reaches_nothing(scene: Scene, who: str, call: Call) -> None:
    reply = await send(scene, who, call, scene.target)
    if below(who, call.least):
        assert_error(reply, 403, "forbidden")
    elif call.status >= 400:
        assert_error(reply, call.status, CODES[call.status])
    else:
        assert reply.status_code == call.status, reply.text
        assert scene.of_tenant_a(reply.json()) == [], reply.text

    if call.like_missing:  # nothing tells tenant a's thing from one that does not exist
        missing = await send(scene, who, call, scene.missing)
        assert answer(reply, scene.target) == answer(missing, scene.missing)
    else:  # "taken", naming at most the value sent: not whose, nor anything else of tenant a
        error = reply.json()["error"]
        said = error["message"]
        for value in fill(call.body, scene.target).values():
            said = said.replace(str(value), "<sent>")
        assert scene.target["tenant"] not in said and error["details"] is None, error

    if call.writes:
        assert await snapshot(scene) == scene.before


# --- roles within tenant a --------------------------------------------------------------------


def _denied_in_tenant_a() -> list[tuple[str, Call]]:
    """Every request the roles of tenant a are refused by role alone."""
    tenant_a = ("a-viewer", "a-operator", "a-owner")
    return [(who, call) for who in tenant_a for call in CALLS if below(who, call.least)]


@pytest.mark.parametrize(("who", "call"), _denied_in_tenant_a(), ids=case_id)
async def test_roles_within_the_tenant(scene: Scene, who: str, call: Call) -> None:
    """A viewer changes nothing; an operator manages no users; an owner makes no tenants."""
    assert_error(await send(scene, who, call, scene.target), 403, "forbidden")
    if call.writes:
        assert await snapshot(scene) == scene.before


def test_the_role_cases_cover_every_change() -> None:
    """The viewer is tried on every change in the matrix; the operator on exactly the user and
    tenant management; the owner on making tenants."""
    changes = {c.operation for c in CALLS if c.method != "GET"}
    refused = {c.operation for who, c in _denied_in_tenant_a() if who == "a-viewer"}
    assert changes <= refused
    operator = {c.operation for who, c in _denied_in_tenant_a() if who == "a-operator"}
    assert operator == {
        (m, f"{API}{p}")
        for m, p in (
            ("GET", "/users"), ("GET", "/users/{user_id}"), ("POST", "/users"),
            ("PATCH", "/users/{user_id}"), ("DELETE", "/users/{user_id}"), ("POST", "/tenants"),
            ("PATCH", "/tenants/{tenant_id}"), ("DELETE", "/tenants/{tenant_id}"),
        )
    }  # fmt: skip
    owner = {c.operation for who, c in _denied_in_tenant_a() if who == "a-owner"}
    assert owner == {("POST", f"{API}/tenants"), ("DELETE", f"{API}/tenants/{{tenant_id}}")}


@pytest.mark.parametrize("call", [c for c in CALLS if c.method == "GET"], ids=lambda c: c.name)
async def test_tenant_a_sees_what_tenant_b_does_not(scene: Scene, call: Call) -> None:
    """The matrix's targets are real: tenant a's own least admitted role reads each of them."""
    reply = await send(scene, f"a-{call.least}", call, scene.target)
    assert reply.status_code == 200, reply.text
    kind = reply.headers["content-type"]
    if kind.startswith("text/csv"):
        assert reply.text.count("temperature") == 5
    elif "parquet" in kind:
        assert reply.content[:4] == b"PAR1"
    else:
        body = reply.json()
        readings = body.get("items") or [p for s in body.get("series", ()) for p in s["points"]]
        assert scene.of_tenant_a(body) or readings, reply.text


@pytest.mark.parametrize("who", ["a-operator", "a-owner"])
async def test_operators_and_owners_manage_devices(scene: Scene, who: str) -> None:
    c, h = scene.world.client, scene.world.auth(who)
    uid = f"{scene.target['tenant']}-made-by-{role_of(who)}"
    made = await c.post(f"{API}/devices", json={"uid": uid}, headers=h)
    assert made.status_code == 201, made.text
    path = f"{API}/devices/{uid}"
    edited = await c.patch(path, json={"name": "Shed", "status": "disabled"}, headers=h)
    assert (edited.json()["name"], edited.json()["status"]) == ("Shed", "disabled")
    rotated = await c.post(f"{path}/token", headers=h)
    assert rotated.status_code == 200 and rotated.json()["token"] != made.json()["token"]
    assert (await c.post(f"{path}/certificate", headers=h)).status_code == 200
    listed = await c.get(f"{API}/devices", params={"q": uid}, headers=h)
    assert [d["uid"] for d in listed.json()["items"]] == [uid]
    assert (await c.delete(path, headers=h)).status_code == 204
    assert_error(await c.get(path, headers=h), 404, "not_found")
    assert await snapshot(scene) == scene.before


async def test_a_platform_admin_sees_and_chooses_the_tenant_of_devices(scene: Scene) -> None:
    """Every device names its tenant (id and name); an admin lists one tenant's devices with
    ?tenant= and registers a device in any tenant with "tenant"; nobody else can."""
    from telemetra.store.catalog import create_user, tenant_id_by_name

    from api_fixtures import _HASH

    c, w, tag = scene.world.client, scene.world, scene.target["tag"]
    admin = f"admin-{tag}"
    with platform_wide():
        async with scene.engine.begin() as conn:
            await create_user(
                conn, await tenant_id_by_name(conn, w.tenant_b), admin, _HASH, "admin"
            )
    login = await c.post(f"{API}/auth/token", data={"username": admin, "password": PASSWORD})
    h = {"Authorization": f"Bearer {login.json()['access_token']}"}

    everything = await c.get(f"{API}/devices", params={"limit": 1000}, headers=h)
    mine = [d for d in everything.json()["items"] if d["uid"] == scene.uid]
    assert [(d["tenant_id"], d["tenant"]) for d in mine] == [(scene.tenant_a_id, w.tenant_a)]
    only_a = await c.get(f"{API}/devices", params={"tenant": w.tenant_a}, headers=h)
    assert {d["tenant"] for d in only_a.json()["items"]} == {w.tenant_a}
    assert_error(
        await c.get(f"{API}/devices", params={"tenant": f"no-{tag}"}, headers=h), 404, "not_found"
    )

    uid = f"{w.tenant_a}-by-admin"
    made = await c.post(f"{API}/devices", json={"uid": uid, "tenant": w.tenant_a}, headers=h)
    assert made.status_code == 201, made.text
    assert (made.json()["tenant_id"], made.json()["tenant"]) == (scene.tenant_a_id, w.tenant_a)
    seen = await c.get(f"{API}/devices/{uid}", headers=w.auth("a-viewer"))
    assert seen.json()["tenant"] == w.tenant_a
    unknown = await c.post(f"{API}/devices", json={"uid": f"x-{tag}", "tenant": f"no-{tag}"},
                           headers=h)  # fmt: skip
    assert_error(unknown, 422, "invalid_request")
    # Within their own tenant, naming it is fine; tenant_id is not a field.
    own = await c.post(
        f"{API}/devices", json={"uid": f"{w.tenant_b}-own", "tenant": w.tenant_b},
        headers=w.auth("b-operator"),
    )  # fmt: skip
    assert own.status_code == 201 and own.json()["tenant"] == w.tenant_b
    assert_error(
        await c.post(f"{API}/devices", json={"uid": f"y-{tag}", "tenant_id": 1}, headers=h),
        422,
        "invalid_request",
    )
    for gone in (uid, f"{w.tenant_b}-own"):
        assert (await c.delete(f"{API}/devices/{gone}", headers=h)).status_code == 204
    assert await snapshot(scene) == scene.before


# --- device tokens (the exempt ingest endpoints) ----------------------------------------------


async def ingest_everywhere(c: httpx.AsyncClient, token: str, entry: dict[str, Any]) -> list[Any]:
    """The same entry through all three device-token endpoints; their results."""
    results = [
        await c.post(f"{API}/ingest", json=entry, headers={"X-API-Key": token}),
        await c.post(f"{API}/ingest/batch", json=[entry], headers={"X-API-Key": token}),
        await c.post(f"{API}/{token}/telemetry", json=entry),
    ]
    for reply in results:
        assert reply.status_code == 200, reply.text
    one = [r.json() for r in results]
    return [one[0], one[1]["results"][0], one[2]]


async def test_device_tokens_write_only_their_own_device(scene: Scene) -> None:
    c, w = scene.world.client, scene.world
    tag = scene.target["tag"]
    b_uid = f"b-{tag}-sensor"
    b_made = await c.post(f"{API}/devices", json={"uid": b_uid}, headers=w.auth("b-operator"))
    assert b_made.status_code == 201, b_made.text
    b_token = b_made.json()["token"]
    a_uid = f"{scene.target['tenant']}-sensor"
    a_made = await c.post(f"{API}/devices", json={"uid": a_uid}, headers=w.auth("a-operator"))
    assert a_made.status_code == 201, a_made.text
    a_token = a_made.json()["token"]
    now_ms = int(time.time() * 1000) - MINUTE_MS

    # A payload naming another device is refused, whichever tenant that device is in.
    for token, other in ((b_token, scene.uid), (a_token, b_uid), (a_token, scene.uid)):
        for result in await ingest_everywhere(
            c, token, {"device_id": other, "ts": now_ms, "temperature": 99.0}
        ):
            assert result["accepted"] == 0
            assert [r["reason"] for r in result["rejected"]] == ["device_mismatch"]
    # A device's uid is no token (ThingsBoard puts the token in the path).
    for uid in (scene.uid, a_uid):
        reply = await c.post(f"{API}/{uid}/telemetry", json={"temperature": 1.0})
        assert_error(reply, 401, "unauthorized")

    # Plain readings land on the token's own device, and only there.
    for result in await ingest_everywhere(c, a_token, {"ts": now_ms + 1, "temperature": 21.0}):
        assert result["accepted"] == 1  # stored once, then redeliveries of the same reading
    history = await c.get(
        f"{API}/devices/{a_uid}/telemetry", params=SINCE, headers=w.auth("a-viewer")
    )
    assert [i["value"] for i in history.json()["items"]] == [21.0]
    nothing = await c.get(
        f"{API}/devices/{b_uid}/telemetry", params=SINCE, headers=w.auth("b-viewer")
    )
    assert nothing.json()["items"] == []
    latest_b = await c.get(f"{API}/telemetry/latest", headers=w.auth("b-viewer"))
    assert latest_b.json()["items"] == []
    assert await snapshot(scene) == scene.before


async def test_a_reused_uid_brings_nothing_along(scene: Scene) -> None:
    """A deleted device's uid taken by another tenant shows none of the old device's data."""
    c, w = scene.world.client, scene.world
    uid = f"reused-{scene.target['tag']}"
    made = await c.post(f"{API}/devices", json={"uid": uid}, headers=w.auth("a-operator"))
    assert made.status_code == 201, made.text
    now_ms = int(time.time() * 1000) - MINUTE_MS
    ingested = await c.post(
        f"{API}/ingest",
        json=[{"ts": now_ms, "temperature": 21.0}, {"ts": now_ms + 1, "temperature": 7000}],
        headers={"X-API-Key": made.json()["token"]},
    )
    assert ingested.json()["accepted"] == 1 and len(ingested.json()["rejected"]) == 1
    assert (await c.delete(f"{API}/devices/{uid}", headers=w.auth("a-operator"))).status_code == 204
    again = await c.post(f"{API}/devices", json={"uid": uid}, headers=w.auth("b-operator"))
    assert again.status_code == 201, again.text
    hb = w.auth("b-viewer")
    for path, params in (
        (f"devices/{uid}/telemetry", SINCE),
        (f"devices/{uid}/latest", None),
        ("telemetry/latest", {"device": uid}),
        ("deadletters", {"device": uid}),
    ):
        reply = await c.get(f"{API}/{path}", params=params, headers=hb)
        assert reply.json()["items"] == [], (path, reply.text)
    quality = (await c.get(f"{API}/devices/{uid}/quality", headers=hb)).json()
    assert quality["counters"] == {} and quality["last_seen"] is None
    export = await c.get(f"{API}/devices/{uid}/export", params=SINCE, headers=hb)
    assert "temperature" not in export.text


# --- completeness -----------------------------------------------------------------------------


def beyond_openapi() -> set[tuple[str, str]]:
    """The WebSocket and hidden routes of the API's routers, which OpenAPI does not list (taken
    to be under /api/v1; the routers themselves are flat lists whatever the FastAPI version)."""
    found: set[tuple[str, str]] = set()
    for module in pkgutil.iter_modules(telemetra.api.__path__):
        for router in vars(importlib.import_module(f"telemetra.api.{module.name}")).values():
            if not isinstance(router, APIRouter):
                continue
            for route in router.routes:
                if isinstance(route, APIWebSocketRoute):
                    found.add(("WEBSOCKET", API + route.path))
                elif isinstance(route, APIRoute) and not route.include_in_schema:
                    found |= {(method, API + route.path) for method in route.methods}
    return found


async def test_every_endpoint_is_in_the_matrix(tmp_path: Path) -> None:
    """Each (method, path) under /api/v1 has a row in CALLS or is in EXEMPT: an endpoint added
    without an isolation row fails here. WebSocket routes (absent from OpenAPI) count too."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", secret_key=SECRET)
    app = create_app(settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        spec = (await client.get("/openapi.json")).json()
    operations = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete", "head", "options", "trace"}
    }
    api = {(m, p) for m, p in operations | beyond_openapi() if p.startswith(f"{API}/")}
    covered = {call.operation for call in CALLS}

    assert covered <= api, f"rows for endpoints that do not exist: {covered - api}"
    assert api >= EXEMPT, f"exemptions for endpoints that do not exist: {EXEMPT - api}"
    assert not covered & EXEMPT
    untested = sorted(api - covered - EXEMPT)
    assert untested == [], f"add these to CALLS (or, with a reason, to EXEMPT): {untested}"
