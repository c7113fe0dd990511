"""The alert-rule API on SQLite and PostgreSQL (as the ordinary role, RLS beneath): create, list,
read, edit and delete by role; validation naming the field; write-only channel secrets; preview
over stored readings."""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.alerts import store
from telemetra.store.tenancy import platform_wide

from api_fixtures import World, assert_error

API = "/api/v1"
MINUTE_MS = 60_000
SECRET = "a long shared secret"
SLACK = "https://hooks.slack.com/services/T000/B000/XXXXXXXX"


def rule(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name, "kind": "threshold", "metric": "temperature",
        "condition": {"op": ">", "value": -15}, "for": "2m", "clear": {"op": "<=", "value": -17},
        "scope": {"devices": ["freezer-1"]}, "severity": "critical",
        "channels": [{"kind": "webhook", "url": "https://ops.example.org/hook", "secret": SECRET},
                     {"kind": "slack", "url": SLACK},
                     {"kind": "email", "to": ["ops@example.org"]}],
        **extra,
    }  # fmt: skip


async def stored_channels(engine: AsyncEngine, rule_id: int) -> list[dict[str, Any]]:
    with platform_wide():
        async with engine.connect() as conn:
            found = await store.get_rule(conn, rule_id, None)
    assert found is not None
    return found.channels


async def test_operators_manage_rules_and_viewers_read_them(
    world: World, engine: AsyncEngine
) -> None:
    c = world.client
    name = f"freezer {uuid.uuid4().hex[:6]}"
    assert_error(
        await c.post(f"{API}/rules", json=rule(name), headers=world.auth("a-viewer")),
        403, "forbidden",
    )  # fmt: skip
    made = await c.post(f"{API}/rules", json=rule(name), headers=world.auth("a-operator"))
    assert made.status_code == 201, made.text
    shown = made.json()
    rule_id = shown["id"]
    assert (shown["name"], shown["for"], shown["enabled"], shown["severity"]) == (
        name, "2m", True, "critical")  # fmt: skip
    assert shown["flap"] == {"count": 5, "window": "10m"}  # the default, spelled out
    assert shown["channels"] == [
        {"kind": "webhook", "url": "https://ops.example.org/hook", "secret_set": True},
        {"kind": "slack", "url": "https://hooks.slack.com/…"},
        {"kind": "email", "to": ["ops@example.org"]},
    ]
    assert SECRET not in made.text and "XXXXXXXX" not in made.text

    taken = await c.post(f"{API}/rules", json=rule(name), headers=world.auth("a-owner"))
    assert_error(taken, 409, "conflict")
    assert name in taken.json()["error"]["message"]
    # Another tenant may use the same name.
    theirs = await c.post(f"{API}/rules", json=rule(name), headers=world.auth("b-operator"))
    assert theirs.status_code == 201, theirs.text

    listed = await c.get(f"{API}/rules", headers=world.auth("a-viewer"))
    assert [r["id"] for r in listed.json()["items"]] == [rule_id]
    got = await c.get(f"{API}/rules/{rule_id}", headers=world.auth("a-viewer"))
    assert got.json() == shown
    assert_error(await c.get(f"{API}/rules/{rule_id}", headers=world.auth("b-viewer")),
                 404, "not_found")  # fmt: skip

    # PATCH any subset; the secrets stay when the channels are not touched or sent back as shown.
    off = await c.patch(f"{API}/rules/{rule_id}", json={"enabled": False},
                        headers=world.auth("a-operator"))  # fmt: skip
    assert off.status_code == 200, off.text
    assert off.json()["enabled"] is False and off.json()["updated_at"] >= shown["updated_at"]
    assert (await c.get(f"{API}/rules", params={"enabled": "true"},
                        headers=world.auth("a-viewer"))).json()["items"] == []  # fmt: skip
    back = await c.patch(
        f"{API}/rules/{rule_id}",
        json={"channels": shown["channels"] + [{"kind": "mqtt", "topic": "alerts/cold"}]},
        headers=world.auth("a-operator"),
    )
    assert back.status_code == 200, back.text
    channels = await stored_channels(engine, rule_id)
    assert channels[0]["secret"] == SECRET and channels[1]["url"] == SLACK
    assert channels[3] == {"kind": "mqtt", "topic": "alerts/cold"}
    cleared = await c.patch(
        f"{API}/rules/{rule_id}",
        json={"channels": [{"kind": "webhook", "url": "https://ops.example.org/hook",
                            "secret": None}]},
        headers=world.auth("a-operator"),
    )  # fmt: skip
    assert cleared.json()["channels"] == [
        {"kind": "webhook", "url": "https://ops.example.org/hook", "secret_set": False}
    ]
    renamed = await c.patch(f"{API}/rules/{rule_id}", json={"name": f"{name} 2", "metric": None},
                            headers=world.auth("a-operator"))  # fmt: skip
    assert_error(renamed, 422, "invalid_request")  # a threshold rule needs its metric
    assert_error(
        await c.patch(f"{API}/rules/{rule_id}", json={"enabled": True},
                      headers=world.auth("b-operator")),
        404, "not_found",
    )  # fmt: skip
    assert_error(
        await c.delete(f"{API}/rules/{rule_id}", headers=world.auth("a-viewer")), 403, "forbidden"
    )
    gone = await c.delete(f"{API}/rules/{rule_id}", headers=world.auth("a-operator"))
    assert gone.status_code == 204, gone.text
    assert_error(await c.get(f"{API}/rules/{rule_id}", headers=world.auth("a-viewer")),
                 404, "not_found")  # fmt: skip


async def test_invalid_rules_name_the_field(world: World) -> None:
    c, h = world.client, world.auth("a-operator")
    cases = [
        ({"condition": {"op": "~", "value": 1}}, "body.condition.op"),
        ({"for": "2 minutes"}, "body.for"),
        ({"clear": {"op": ">=", "value": -16}}, "body.clear"),  # overlaps the condition
        ({"kind": "weather"}, "body.kind"),
        ({"channels": [{"kind": "webhook", "url": "ftp://x.example.org"}]}, "body.channels.0.url"),
        ({"scope": {"devices": ["a"], "type": "freezer"}}, "body.scope"),
    ]
    for change, field in cases:
        reply = await c.post(f"{API}/rules", json=rule("bad", **change), headers=h)
        assert_error(reply, 422, "invalid_request")
        details = reply.json()["error"]["details"]
        assert details[0]["field"] == field, (change, details)
        message = reply.json()["error"]["message"]
        assert message.startswith("invalid rule: ") and "\n" not in message, message
    unknown = await c.post(f"{API}/rules", json=rule("bad", colour="red"), headers=h)
    assert_error(unknown, 422, "invalid_request")
    no_data = await c.post(
        f"{API}/rules",
        json={"name": f"silent {uuid.uuid4().hex[:6]}", "kind": "no_data",
              "condition": {"for": "5m"}},
        headers=h,
    )  # fmt: skip
    assert no_data.status_code == 201, no_data.text
    assert (no_data.json()["metric"], no_data.json()["scope"], no_data.json()["severity"]) == (
        None, {}, "warning")  # fmt: skip


async def test_admins_create_rules_in_any_tenant(world: World, engine: AsyncEngine) -> None:
    from telemetra.store.catalog import create_user, tenant_id_by_name

    from api_fixtures import _HASH, PASSWORD

    c = world.client
    admin = f"admin-{uuid.uuid4().hex[:8]}"
    with platform_wide():
        async with engine.begin() as conn:
            b = await tenant_id_by_name(conn, world.tenant_b)
            a = await tenant_id_by_name(conn, world.tenant_a)
            await create_user(conn, b, admin, _HASH, "admin")
    token = await c.post(f"{API}/auth/token", data={"username": admin, "password": PASSWORD})
    h = {"Authorization": f"Bearer {token.json()['access_token']}"}
    made = await c.post(f"{API}/rules", json=rule("by admin", tenant=world.tenant_a), headers=h)
    assert made.status_code == 201, made.text
    assert made.json()["tenant_id"] == a
    seen = await c.get(f"{API}/rules/{made.json()['id']}", headers=world.auth("a-viewer"))
    assert seen.status_code == 200
    assert_error(
        await c.post(f"{API}/rules", json=rule("x", tenant=world.tenant_a),
                     headers=world.auth("b-operator")),
        403, "forbidden",
    )  # fmt: skip
    assert_error(
        await c.post(f"{API}/rules", json=rule("x", tenant="no-such-tenant"), headers=h),
        422, "invalid_request",
    )  # fmt: skip
    everyone = await c.get(f"{API}/rules", headers=h)
    assert made.json()["id"] in [r["id"] for r in everyone.json()["items"]]


async def test_preview_shows_when_a_rule_would_have_fired_and_cleared(world: World) -> None:
    c = world.client
    uid = f"freezer-{uuid.uuid4().hex[:8]}"
    made = await c.post(f"{API}/devices", json={"uid": uid, "type": "freezer"},
                        headers=world.auth("a-operator"))  # fmt: skip
    token = made.json()["token"]
    base = (int(time.time() * 1000) // MINUTE_MS - 60) * MINUTE_MS
    temperatures = [-20, -19, -14, -13, -12, -12, -16, -18, -18, -20]  # warm from minute 2 to 6
    entries = [{"ts": base + i * MINUTE_MS, "temperature": t} for i, t in enumerate(temperatures)]
    entries.append({"ts": base + 3 * MINUTE_MS + 1, "humidity": 50.0})
    stored = await c.post(f"{API}/ingest", json=entries, headers={"X-API-Key": token})
    assert stored.json()["accepted"] == 11, stored.text
    candidate = rule("draft", scope={"type": "freezer"}, channels=[])
    del candidate["name"]  # optional in a preview

    async def preview(who: str = "a-operator", **body: Any) -> Any:
        return await c.post(f"{API}/rules/preview", json={"rule": candidate, **body},
                            headers=world.auth(who))  # fmt: skip

    reply = await preview(**{"from": "-2h"})
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert (answer["devices"], answer["readings"], answer["truncated"]) == (1, 10, False)
    transitions = [(t["event"], t["device"], t["metric"], t["at"]) for t in answer["transitions"]]
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((base + 4 * MINUTE_MS) / 1000))
    cleared = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((base + 7 * MINUTE_MS) / 1000))
    assert transitions == [("fired", uid, "temperature", iso),
                           ("resolved", uid, "temperature", cleared)]  # fmt: skip
    assert answer["transitions"][0]["value"] == -12.0
    assert "for 2m" in answer["transitions"][0]["message"]

    # The default range is the last 24 hours; a narrow range shows only what happened in it.
    assert len((await preview()).json()["transitions"]) == 2
    later = (await preview(**{"from": str(base + 7 * MINUTE_MS + 1)})).json()
    assert later["transitions"] == [] and later["readings"] == 4  # 2 of them warm up (`for`)
    cut = (await preview(**{"from": "-2h", "max_points": 5})).json()
    assert cut["truncated"] is True and cut["readings"] == 5
    assert [t["event"] for t in cut["transitions"]] == ["fired"]  # judged at the last reading
    # Tenant b's operator previews over tenant b's devices: none of tenant a's.
    theirs = (await preview("b-operator", **{"from": "-2h"})).json()
    assert (theirs["devices"], theirs["readings"], theirs["transitions"]) == (0, 0, [])

    assert_error(await preview("a-viewer"), 403, "forbidden")
    bad_from = await preview(**{"from": "yesterday"})
    assert_error(bad_from, 422, "invalid_request")
    assert bad_from.json()["error"]["details"][0]["field"] == "body.from"
    candidate["condition"] = {"op": "~", "value": 1}
    bad_rule = await preview()
    assert bad_rule.json()["error"]["details"][0]["field"] == "body.rule.condition.op"
    candidate.update(kind="quality", condition={"clock_offset": "30s"}, clear=None, metric=None)
    candidate["for"] = "0s"
    quality = await preview()
    assert_error(quality, 422, "invalid_request")
    assert "quality" in quality.json()["error"]["message"]


async def test_a_stored_rule_missing_fields_does_not_break_the_listing(
    world: World, engine: AsyncEngine
) -> None:
    """Rows written by hand or by an older version: shown with a rule's defaults."""
    from telemetra.store.catalog import tenant_id_by_name

    with platform_wide():
        async with engine.begin() as conn:
            tenant = await tenant_id_by_name(conn, world.tenant_a)
            odd = await store.create_rule(conn, tenant, {"name": "odd", "kind": "no_data"})
    listed = await world.client.get(f"{API}/rules", headers=world.auth("a-viewer"))
    assert listed.status_code == 200, listed.text
    [shown] = [r for r in listed.json()["items"] if r["id"] == odd.id]
    assert (shown["condition"], shown["scope"], shown["channels"]) == ({}, {}, [])
