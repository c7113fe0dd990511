"""Telemetry over HTTP on SQLite and PostgreSQL: history, aggregates and their sources, latest,
quality, dead letters, CSV export, parameter errors and tenant isolation."""

from __future__ import annotations

import csv
import io
import math
import time
import uuid
from collections import defaultdict
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.api import telemetry
from telemetra.api.auth import hash_password
from telemetra.ingest.timestamps import format_us
from telemetra.store.catalog import create_user, tenant_id_by_name

from api_fixtures import PASSWORD, World, assert_error

MINUTE = 60_000_000
HOUR = 60 * MINUTE
API = "/api/v1"

Reading = tuple[str, int, float]  # metric, ts (µs), value


async def new_device(world: World, who: str = "a-operator") -> tuple[str, str]:
    uid = f"tel-{uuid.uuid4().hex[:10]}"
    made = await world.client.post(f"{API}/devices", json={"uid": uid}, headers=world.auth(who))
    assert made.status_code == 201, made.text
    return uid, made.json()["token"]


async def ingest(world: World, token: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Post entries in requests small enough for the test body limit; the ingest results."""
    results = []
    for i in range(0, len(entries), 30):
        reply = await world.client.post(
            f"{API}/ingest", json=entries[i : i + 30], headers={"X-API-Key": token}
        )
        assert reply.status_code == 200, reply.text
        results.append(reply.json())
    return results


def hour_base(hours_ago: int = 3) -> int:
    """An hour-aligned time a few hours ago (µs)."""
    return (time.time_ns() // 1000 // HOUR - hours_ago) * HOUR


async def fleet_of_readings(world: World, start: int, minutes: int) -> tuple[str, list[Reading]]:
    """A device of tenant a with a temperature and humidity reading every minute from ``start``."""
    uid, token = await new_device(world)
    readings: list[Reading] = []
    entries = []
    for i in range(minutes):
        ts = start + i * MINUTE
        t, h = 20 + (i * 37 % 23) / 4, float(40 + i % 11)
        readings += [("temperature", ts, t), ("humidity", ts, h)]
        entries.append({"ts": ts // 1000, "temperature": t, "humidity": h})
    results = await ingest(world, token, entries)
    assert sum(r["accepted"] for r in results) == 2 * minutes
    return uid, readings


def expected_buckets(
    readings: list[Reading], metric: str, start: int, end: int, bucket: int
) -> list[dict[str, Any]]:
    groups: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for m, ts, v in readings:
        if m == metric and start <= ts < end:
            groups[ts - ts % bucket].append((ts, v))
    out = []
    for b, points in sorted(groups.items()):
        values = [v for _, v in sorted(points)]
        out.append(
            {
                "ts": format_us(b),
                "avg": sum(values) / len(values),
                "min": min(values),
                "max": max(values),
                "count": len(values),
                "sum": sum(values),
                "first": values[0],
                "last": values[-1],
            }
        )
    return out


def assert_points(got: list[dict[str, Any]], want: list[dict[str, Any]], fns: list[str]) -> None:
    assert [p["ts"] for p in got] == [p["ts"] for p in want]
    for g, w in zip(got, want, strict=True):
        assert set(g) == {"ts", *fns}
        for fn in fns:
            assert g[fn] == pytest.approx(w[fn]), (g["ts"], fn)


async def test_history_pages_cover_every_row_once_in_both_orders(world: World) -> None:
    c, h = world.client, world.auth("a-viewer")
    start = hour_base()
    uid, readings = await fleet_of_readings(world, start, 45)
    want = sorted((ts, m) for m, ts, _ in readings)
    for order in ("asc", "desc"):
        seen: list[tuple[int, str]] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"from": "-1d", "limit": 7, "order": order}
            if cursor:
                params["cursor"] = cursor
            page = (await c.get(f"{API}/devices/{uid}/telemetry", params=params, headers=h)).json()
            pages += 1
            for item in page["items"]:
                assert item["ts"].endswith("Z") and item["received_at"].endswith("Z")
                ts = next(t for m, t, _ in readings if format_us(t) == item["ts"])
                seen.append((ts, item["metric"]))
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == math.ceil(len(want) / 7)
        assert len(seen) == len(set(seen)) == len(want)
        ordered = sorted(seen, reverse=order == "desc")
        assert [t for t, _ in seen] == [t for t, _ in ordered]
        assert set(seen) == set(want)

    one = await c.get(
        f"{API}/devices/{uid}/telemetry",
        params={"metric": "humidity", "from": str(start // 1000), "to": format_us(start + HOUR)},
        headers=h,
    )
    items = one.json()["items"]
    assert len(items) == 45 and {i["metric"] for i in items} == {"humidity"}
    assert items[0] == {
        "metric": "humidity",
        "ts": format_us(start),
        "value": 40.0,
        "text": None,
        "flags": items[0]["flags"],
        "received_at": items[0]["received_at"],
    }


async def test_aggregates_equal_the_values_and_come_from_rollups(world: World) -> None:
    c, h = world.client, world.auth("a-viewer")
    start = hour_base(4)
    uid, readings = await fleet_of_readings(world, start, 120)
    url = f"{API}/devices/{uid}/aggregate"
    everything = ["avg", "min", "max", "count", "sum", "first", "last"]

    # Whole hours with 1h buckets: the hourly rollup serves them.
    hourly = await c.get(
        url,
        params={"metric": ["temperature", "humidity"], "from": format_us(start),
                "to": format_us(start + 2 * HOUR), "bucket": "1h", "fn": everything},
        headers=h,
    )  # fmt: skip
    body = hourly.json()
    assert body["bucket_s"] == 3600 and body["source"] == "rollup_1h"
    assert [s["metric"] for s in body["series"]] == ["temperature", "humidity"]
    for series in body["series"]:
        want = expected_buckets(readings, series["metric"], start, start + 2 * HOUR, HOUR)
        assert_points(series["points"], want, everything)

    # An unaligned range: whole 10-minute buckets from the minute rollup, the edges exact.
    s, e = start + 90 * 1_000_000, start + 100 * MINUTE + 30 * 1_000_000
    tenmin = await c.get(
        url,
        params={"metric": "temperature", "from": str(s // 1000), "to": str(e // 1000),
                "bucket": "10m", "fn": everything},
        headers=h,
    )  # fmt: skip
    body = tenmin.json()
    assert body["bucket_s"] == 600 and body["source"] == "rollup_1m"
    want = expected_buckets(readings, "temperature", s, e, 10 * MINUTE)
    assert_points(body["series"][0]["points"], want, everything)

    # Sub-minute buckets come from raw rows; the default functions; unknown metrics are empty.
    raw = await c.get(
        url,
        params={"metric": ["temperature", "nothing-here"], "from": format_us(start),
                "to": format_us(start + 10 * MINUTE), "bucket": "30s"},
        headers=h,
    )  # fmt: skip
    body = raw.json()
    assert body["source"] == "raw" and body["bucket_s"] == 30
    want = expected_buckets(readings, "temperature", start, start + 10 * MINUTE, 30_000_000)
    assert_points(body["series"][0]["points"], want, ["avg", "min", "max", "count"])
    assert body["series"][1] == {"metric": "nothing-here", "points": []}

    # bucket=auto: the smallest nice bucket that keeps each series within max_points.
    for max_points, bucket_s in ((5, 1800), (24, 300), (1000, 10), (1, None)):
        auto = await c.get(
            url,
            params={"metric": "humidity", "from": format_us(start),
                    "to": format_us(start + 2 * HOUR), "max_points": max_points},
            headers=h,
        )  # fmt: skip
        body = auto.json()
        if bucket_s is not None:
            assert body["bucket_s"] == bucket_s, max_points
        assert 0 < len(body["series"][0]["points"]) <= max_points
        nice = telemetry.NICE_BUCKETS_S
        smaller = nice[nice.index(body["bucket_s"]) - 1] * 1_000_000
        assert telemetry.bucket_count(start, start + 2 * HOUR, smaller) > max_points
        counts = sum(p["count"] for p in body["series"][0]["points"])
        assert counts == 120


async def test_latest_is_newest_by_event_time(world: World) -> None:
    c = world.client
    uid, token = await new_device(world)
    other, other_token = await new_device(world)
    b_uid, b_token = await new_device(world, "b-operator")
    t1 = hour_base(1)
    await ingest(world, token, [{"ts": t1 // 1000, "temperature": 21.0, "status": "ok"}])
    late = await ingest(world, token, [{"ts": (t1 - HOUR) // 1000, "temperature": 5.0}])
    assert late[0]["accepted"] == 1
    await ingest(world, other_token, [{"ts": t1 // 1000, "temperature": 30.0}])
    await ingest(world, b_token, [{"ts": t1 // 1000, "temperature": 40.0}])

    mine = (await c.get(f"{API}/devices/{uid}/latest", headers=world.auth("a-viewer"))).json()
    by_metric = {i["metric"]: i for i in mine["items"]}
    assert by_metric["temperature"]["value"] == 21.0
    assert by_metric["temperature"]["ts"] == format_us(t1)
    assert by_metric["status"]["text"] == "ok" and by_metric["status"]["value"] is None
    only = await c.get(
        f"{API}/devices/{uid}/latest", params={"metric": "status"}, headers=world.auth("a-viewer")
    )
    assert [i["metric"] for i in only.json()["items"]] == ["status"]

    many = await c.get(
        f"{API}/telemetry/latest",
        params={"device": [uid, other, b_uid, "no-such-device"], "metric": "temperature"},
        headers=world.auth("a-viewer"),
    )
    got = {(i["device"], i["value"]) for i in many.json()["items"]}
    assert got == {(uid, 21.0), (other, 30.0)}
    theirs = await c.get(
        f"{API}/telemetry/latest", params={"device": [uid, other]}, headers=world.auth("b-viewer")
    )
    assert theirs.json() == {"items": []}
    all_b = await c.get(f"{API}/telemetry/latest", headers=world.auth("b-viewer"))
    assert {i["device"] for i in all_b.json()["items"]} == {b_uid}


async def test_quality_and_dead_letters_stay_in_their_tenant(
    world: World, engine: AsyncEngine
) -> None:
    c = world.client
    uid, token = await new_device(world)
    b_uid, b_token = await new_device(world, "b-operator")
    ts = hour_base(1) // 1000
    result = await ingest(
        world, token, [{"ts": ts, "temperature": 21.5}, {"ts": ts + 1, "temperature": 6000}]
    )
    assert result[0]["rejected"][0]["reason"] == "out_of_range"
    await ingest(world, b_token, [{"ts": ts, "temperature": 7000}])

    quality = (await c.get(f"{API}/devices/{uid}/quality", headers=world.auth("a-viewer"))).json()
    assert quality["device"] == uid
    assert quality["rejected_by_reason"] == {"out_of_range": 1}
    assert quality["counters"]["rejected:out_of_range"] == 1
    assert quality["counters"]["accepted"] == 1
    assert quality["last_seen"].endswith("Z")

    letters = await c.get(
        f"{API}/deadletters", params={"device": uid}, headers=world.auth("a-viewer")
    )
    (item,) = letters.json()["items"]
    assert item["device"] == uid and item["reason"] == "out_of_range"
    assert item["source"] == "http" and item["index"] == 1
    assert "6000" in item["payload"] and item["payload_size"] >= len(item["payload"].encode())
    assert item["received_at"].endswith("Z")

    # Tenant b sees its own dead letters and none of a's, filtered or not.
    b_sees = (await c.get(f"{API}/deadletters", headers=world.auth("b-viewer"))).json()["items"]
    assert b_uid in {d["device"] for d in b_sees} and uid not in {d["device"] for d in b_sees}
    filtered = await c.get(
        f"{API}/deadletters", params={"device": uid}, headers=world.auth("b-owner")
    )
    assert filtered.json() == {"items": [], "next_cursor": None}

    # Pages, newest first, each dead letter once; a platform admin sees every tenant's.
    await ingest(
        world, token, [{"ts": ts + 2, "humidity": 900}, {"ts": "yesterday", "humidity": 50}]
    )
    ids: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"device": uid, "limit": 1}
        if cursor:
            params["cursor"] = cursor
        page = (
            await c.get(f"{API}/deadletters", params=params, headers=world.auth("a-viewer"))
        ).json()
        ids += [d["id"] for d in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert len(ids) == 3 and ids == sorted(ids, reverse=True)
    reason = await c.get(
        f"{API}/deadletters", params={"reason": "out_of_range", "device": uid},
        headers=world.auth("a-viewer"),
    )  # fmt: skip
    assert len(reason.json()["items"]) == 2
    assert {d["reason"] for d in reason.json()["items"]} == {"out_of_range"}

    admin = f"admin-{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await create_user(
            conn,
            await tenant_id_by_name(conn, world.tenant_a),
            admin,
            hash_password(PASSWORD),
            "admin",
        )
    login = await c.post(f"{API}/auth/token", data={"username": admin, "password": PASSWORD})
    h = {"Authorization": f"Bearer {login.json()['access_token']}"}
    everyone = (await c.get(f"{API}/deadletters", params={"limit": 1000}, headers=h)).json()
    assert {uid, b_uid} <= {d["device"] for d in everyone["items"]}
    assert (await c.get(f"{API}/devices/{b_uid}/quality", headers=h)).status_code == 200
    b_latest = await c.get(f"{API}/telemetry/latest", params={"device": b_uid}, headers=h)
    assert b_latest.json()["items"] == []  # b's only value was rejected


async def test_export_streams_csv(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "EXPORT_PAGE", 7)  # several pages for a few rows
    c = world.client
    start = hour_base()
    uid, readings = await fleet_of_readings(world, start, 20)
    reply = await c.get(
        f"{API}/devices/{uid}/export",
        params={"format": "csv", "from": format_us(start), "to": format_us(start + HOUR)},
        headers=world.auth("a-viewer"),
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/csv")
    assert reply.headers["content-disposition"] == f'attachment; filename="{uid}-telemetry.csv"'
    rows = list(csv.reader(io.StringIO(reply.text)))
    assert rows[0] == ["ts", "metric", "value", "text", "flags"]
    body = rows[1:]
    assert len(body) == len(readings) == 40
    got = {(r[0], r[1], float(r[2])) for r in body}
    assert got == {(format_us(ts), m, v) for m, ts, v in readings}
    assert [r[0] for r in body] == sorted(r[0] for r in body)
    assert all(r[3] == "" and r[4].isdigit() for r in body)

    only = await c.get(
        f"{API}/devices/{uid}/export",
        params={"metric": "temperature", "from": format_us(start),
                "to": format_us(start + 5 * MINUTE)},
        headers=world.auth("a-viewer"),
    )  # fmt: skip
    lines = list(csv.reader(io.StringIO(only.text)))[1:]
    want = [(format_us(ts), m, repr(v), "") for m, ts, v in readings if m == "temperature"][:5]
    assert [tuple(r[:4]) for r in lines] == want


async def test_errors_have_one_shape_and_other_tenants_get_404(world: World) -> None:
    c, h = world.client, world.auth("a-viewer")
    uid, _ = await fleet_of_readings(world, hour_base(), 3)

    def url(path: str) -> str:
        return f"{API}/devices/{uid}/{path}"

    bad: list[tuple[str, dict[str, Any], str | None]] = [
        ("telemetry", {"from": "yesterday"}, "query.from"),
        ("telemetry", {"to": "2026-13-01T00:00:00Z"}, "query.to"),
        ("telemetry", {"from": "2026-01-01T00:00:00"}, "query.from"),  # naive: no zone
        ("telemetry", {"from": "now", "to": "-1h"}, "query.from"),  # from >= to
        ("telemetry", {"from": "-1h", "to": "-1h"}, "query.from"),
        ("telemetry", {"from": "99999999999999999999"}, "query.from"),
        ("telemetry", {"cursor": "not-a-cursor"}, "query.cursor"),
        ("telemetry", {"limit": 0}, None),
        ("telemetry", {"limit": 10001}, None),
        ("telemetry", {"order": "sideways"}, None),
        ("aggregate", {}, None),  # metric is required
        ("aggregate", {"metric": "t", "bucket": "fortnight"}, "query.bucket"),
        ("aggregate", {"metric": "t", "bucket": "1M"}, "query.bucket"),
        ("aggregate", {"metric": "t", "bucket": "1s", "from": "-30d"}, "query.bucket"),
        ("aggregate", {"metric": "t", "tz": "Europe/Berlin"}, "query.tz"),
        ("aggregate", {"metric": "t", "fn": "median"}, None),
        ("aggregate", {"metric": "t", "max_points": 0}, None),
        ("export", {"format": "parquet"}, "query.format"),
        ("export", {"format": "xlsx"}, None),
        ("export", {"from": "-10s", "to": "-30m"}, "query.from"),
    ]
    for path, params, field in bad:
        reply = await c.get(url(path), params=params, headers=h)
        assert_error(reply, 422, "invalid_request")
        if field is not None:
            assert reply.json()["error"]["details"][0]["field"] == field, (path, params)
    messages = {
        "bucket=1M": (
            await c.get(url("aggregate"), params={"metric": "t", "bucket": "1M"}, headers=h)
        ),
        "tz": (
            await c.get(url("aggregate"), params={"metric": "t", "tz": "Europe/Berlin"}, headers=h)
        ),
        "parquet": (await c.get(url("export"), params={"format": "parquet"}, headers=h)),
    }
    for name, reply in messages.items():
        assert "not supported yet" in reply.json()["error"]["message"], name
    cursor = await c.get(f"{API}/deadletters", params={"cursor": "bm9wZQ"}, headers=h)
    assert_error(cursor, 422, "invalid_request")
    desc = await c.get(url("telemetry"), params={"limit": 1, "order": "desc"}, headers=h)
    mixed = await c.get(
        url("telemetry"), params={"cursor": desc.json()["next_cursor"], "order": "asc"}, headers=h
    )
    assert_error(mixed, 422, "invalid_request")

    # Accepted time forms: relative, epoch ms, ISO with an offset (also with '+' decoded as ' ').
    for start in (
        "-1d",
        "-300m",
        "-86400s",
        str(hour_base(5) // 1000),
        "2020-01-01T00:00:00+02:00",
    ):
        ok = await c.get(url("telemetry"), params={"from": start, "to": "now"}, headers=h)
        assert len(ok.json()["items"]) == 6, start
    spaced = await c.get(url("telemetry") + "?from=2020-01-01T00:00:00+02:00", headers=h)
    assert len(spaced.json()["items"]) == 6

    # Another tenant's device is answered exactly like a missing one, on every endpoint.
    paths = ["telemetry", "aggregate?metric=temperature", "latest", "quality", "export"]
    for who in ("b-viewer", "b-owner"):
        for path in paths:
            reply = await c.get(url(path), headers=world.auth(who))
            assert_error(reply, 404, "not_found")
            missing = await c.get(f"{API}/devices/no-such-device/{path}", headers=world.auth(who))
            assert_error(missing, 404, "not_found")
            assert reply.json()["error"]["message"].replace(uid, "X") == missing.json()["error"][
                "message"
            ].replace("no-such-device", "X")
    assert_error(await c.get(url("telemetry")), 401, "unauthorized")
