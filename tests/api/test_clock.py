"""GET /api/v1/devices/{uid}/clock on SQLite and PostgreSQL: a device's clock offset over time,
read back from its stored readings (the least-delay sample per bucket), tenant-scoped."""

from __future__ import annotations

import time

from api_fixtures import World, assert_error

API = "/api/v1"


async def test_a_clock_running_ahead_shows_and_a_backlog_does_not(world: World) -> None:
    c, uid = world.client, f"{world.tenant_a}-clk"
    made = await c.post(f"{API}/devices", json={"uid": uid}, headers=world.auth("a-operator"))
    assert made.status_code == 201, made.text
    key = {"X-API-Key": made.json()["token"]}
    now_ms = int(time.time() * 1000)
    # Three readings stamped 100 s ahead of the receive time (within the future allowance) …
    for i in range(3):
        sent = await c.post(f"{API}/ingest", json={"ts": now_ms + 100_000 - i, "t": i}, headers=key)
        assert sent.status_code < 300, sent.text
    # … and, two hours back, a backlog: stamped then, received now.
    old = await c.post(f"{API}/ingest", json={"ts": now_ms - 7_200_000, "t": 9}, headers=key)
    assert old.status_code < 300, old.text

    h = world.auth("a-viewer")
    later = str(now_ms + 3_600_000)  # `to` in epoch ms: the readings ahead are in the future
    window = {"from": "-3h", "to": later, "bucket": "1h"}
    reply = await c.get(f"{API}/devices/{uid}/clock", params=window, headers=h)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["device"] == uid and body["bucket_s"] == 3600
    *backlog, ahead = body["points"]
    assert 98 < ahead["offset_s"] < 100.5 and ahead["readings"] == 3
    assert ahead["corrected_s"] is None  # stored as sent: no correction applied
    assert [p["offset_s"] < -7000 for p in backlog] == [True]

    refused = await c.get(f"{API}/devices/{uid}/clock", headers=world.auth("b-owner"))
    assert_error(refused, 404, "not_found")
    too_many = await c.get(f"{API}/devices/{uid}/clock", params={"from": "-30d", "bucket": "1m"},
                           headers=h)  # fmt: skip
    assert_error(too_many, 422, "invalid_request")
    unreadable = await c.get(f"{API}/devices/{uid}/clock", params={"bucket": "soon"}, headers=h)
    assert_error(unreadable, 422, "invalid_request")
