"""Telemetry over HTTP on SQLite and PostgreSQL: history, aggregates and their sources, calendar
buckets across daylight-saving changes, latest, quality, dead letters, CSV and Parquet export,
parameter errors and tenant isolation."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.api.auth import hash_password
from telemetra.config import Settings
from telemetra.ingest.importer import import_file, import_pipeline
from telemetra.ingest.timestamps import format_us
from telemetra.model import FLAG_NAMES, Flag, FlagName, flag_names
from telemetra.store import export, timerange
from telemetra.store.catalog import (
    create_device,
    create_tenant,
    create_user,
    get_device,
    tenant_id_by_name,
)
from telemetra.store.database import open_database
from telemetra.store.query import HistoryRow

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
        "flags": ["late"],  # three hours after its event time
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
        nice = timerange.NICE_BUCKETS_S
        smaller = nice[nice.index(body["bucket_s"]) - 1] * 1_000_000
        assert timerange.bucket_count(start, start + 2 * HOUR, smaller) > max_points
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
    monkeypatch.setattr(export, "PAGE", 7)  # several pages for a few rows
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
    rows = list(csv.DictReader(io.StringIO(reply.text)))
    assert list(rows[0]) == list(export.COLUMNS)
    assert len(rows) == len(readings) == 40
    got = {(r["ts"], r["metric"], float(r["value"])) for r in rows}
    assert got == {(format_us(ts), m, v) for m, ts, v in readings}
    assert [r["ts"] for r in rows] == sorted(r["ts"] for r in rows)
    assert {r["device"] for r in rows} == {uid}
    assert {(r["metric"], r["unit"]) for r in rows} == {("temperature", "°C"), ("humidity", "%")}
    assert all(r["text"] == "" and r["flags"] == "late" and r["ts_device"] == "" for r in rows)
    assert all(r["received_at"].endswith("Z") for r in rows)

    only = await c.get(
        f"{API}/devices/{uid}/export",
        params={"metric": "temperature", "from": format_us(start),
                "to": format_us(start + 5 * MINUTE)},
        headers=world.auth("a-viewer"),
    )  # fmt: skip
    lines = list(csv.reader(io.StringIO(only.text)))[1:]
    want = [(uid, format_us(ts), m, repr(v), "") for m, ts, v in readings if m == "temperature"]
    assert [tuple(r[:5]) for r in lines] == want[:5]

    jsonl = await c.get(
        f"{API}/devices/{uid}/export",
        params={"format": "jsonl", "metric": "humidity", "from": format_us(start),
                "to": format_us(start + 2 * MINUTE)},
        headers=world.auth("a-viewer"),
    )  # fmt: skip
    assert jsonl.headers["content-type"] == "application/x-ndjson"
    first = json.loads(jsonl.text.splitlines()[0])
    assert first == {
        "device": uid, "ts": format_us(start), "event_type": "humidity", "value": 40.0,
        "unit": "%", "meta": {"flags": ["late"], "ts_device": None,
                              "received_at": first["meta"]["received_at"]},
    }  # fmt: skip
    assert len(jsonl.text.splitlines()) == 2


async def test_flags_have_names_in_history_latest_and_export(world: World) -> None:
    c, h = world.client, world.auth("a-viewer")
    uid, token = await new_device(world)
    t1 = hour_base(1)
    entries: list[dict[str, Any]] = [
        {"ts": t1 // 1000, "event_type": "temperature", "value": 70, "unit": "F"},
        {"ts": (t1 - MINUTE) // 1000, "temperature": 21.0},  # older than the one before
        {"level": 3},  # no timestamp: the server's time
    ]
    await ingest(world, token, entries)
    items = (await c.get(f"{API}/devices/{uid}/telemetry", headers=h)).json()["items"]
    assert [(i["metric"], i["flags"]) for i in items] == [
        ("temperature", ["late", "out_of_order"]),
        ("temperature", ["late", "unit_converted"]),
        ("level", ["server_time"]),
    ]
    latest = (await c.get(f"{API}/devices/{uid}/latest", headers=h)).json()["items"]
    assert {i["metric"]: i["flags"] for i in latest} == {
        "level": ["server_time"], "temperature": ["late", "unit_converted"]
    }  # fmt: skip
    many = await c.get(f"{API}/telemetry/latest", params={"device": uid}, headers=h)
    assert sorted(i["flags"] for i in many.json()["items"]) == [
        ["late", "unit_converted"], ["server_time"]
    ]  # fmt: skip
    exported = await c.get(f"{API}/devices/{uid}/export", headers=h)
    flags = [r["flags"] for r in csv.DictReader(io.StringIO(exported.text))]
    assert flags == ["late|out_of_order", "late|unit_converted", "server_time"]


async def test_errors_have_one_shape_and_other_tenants_get_404(world: World) -> None:
    c, h = world.client, world.auth("a-viewer")
    uid, _ = await fleet_of_readings(world, hour_base(), 3)

    def url(path: str) -> str:
        return f"{API}/devices/{uid}/{path}"

    centuries_of_days = {"metric": "t", "bucket": "1d", "to": "2400-01-01T00:00:00Z", "tz": "UTC"}
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
        ("aggregate", {"metric": "t", "bucket": "1y"}, "query.bucket"),
        ("aggregate", {"metric": "t", "bucket": "1s", "from": "-30d"}, "query.bucket"),
        ("aggregate", centuries_of_days, "query.bucket"),
        ("aggregate", {"metric": "t", "bucket": "999999M", "tz": "Asia/Tokyo"}, "query.bucket"),
        ("aggregate", {"metric": "t", "tz": "Mars/Olympus_Mons"}, "query.tz"),
        ("aggregate", {"metric": "t", "tz": "europe/berlin"}, "query.tz"),
        ("aggregate", {"metric": "t", "tz": "../../etc/passwd"}, "query.tz"),
        ("aggregate", {"metric": "t", "tz": "Europe"}, "query.tz"),
        ("aggregate", {"metric": "t", "tz": ""}, "query.tz"),
        ("aggregate", {"metric": "t", "fn": "median"}, None),
        ("aggregate", {"metric": "t", "max_points": 0}, None),
        ("export", {"format": "xlsx"}, None),
        ("export", {"from": "-10s", "to": "-30m"}, "query.from"),
    ]
    for path, params, field in bad:
        reply = await c.get(url(path), params=params, headers=h)
        assert_error(reply, 422, "invalid_request")
        if field is not None:
            assert reply.json()["error"]["details"][0]["field"] == field, (path, params)
    spelled = await c.get(
        url("aggregate"), params={"metric": "t", "tz": "europe/berlin"}, headers=h
    )
    assert "did you mean 'Europe/Berlin'" in spelled.json()["error"]["message"]
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


# --- calendar buckets in a time zone ----------------------------------------------------------

_ONE_US = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY_US = 24 * HOUR
Series = list[tuple[int, float]]  # ts (µs), value


def at(text: str) -> int:
    """An ISO-8601 time with Z or an offset as µs since the epoch."""
    return (datetime.fromisoformat(text) - _EPOCH) // _ONE_US


def every(first: str, last: str, step: int) -> list[int]:
    """Times from ``first`` to ``last`` (inclusive), ``step`` µs apart."""
    return list(range(at(first), at(last) + 1, step))


async def device_with(world: World, times: Iterable[int]) -> tuple[str, Series]:
    """A device of tenant a with one temperature reading at each time (all accepted)."""
    uid, token = await new_device(world)
    series = [(ts, round(10 + (i * 7919 % 83) / 4, 2)) for i, ts in enumerate(sorted(times))]
    results = await ingest(world, token, [{"ts": ts // 1000, "temperature": v} for ts, v in series])
    assert sum(r["accepted"] for r in results) == len(series), results
    return uid, series


def want_points(
    series: Series, bounds: Sequence[str], start: str, end: str
) -> list[dict[str, Any]]:
    """Buckets [bounds[i], bounds[i+1]) of ``series`` within [start, end), computed here."""
    edges = [at(b) for b in bounds]
    lo, hi = at(start), at(end)
    out = []
    for b, e in itertools.pairwise(edges):
        values = [v for ts, v in sorted(series) if b <= ts < e and lo <= ts < hi]
        if values:
            out.append({"ts": format_us(b), "count": len(values), "sum": math.fsum(values),
                        "min": min(values), "max": max(values), "first": values[0],
                        "last": values[-1], "avg": math.fsum(values) / len(values)})  # fmt: skip
    return out


EVERYTHING = ["avg", "min", "max", "count", "sum", "first", "last"]


async def aggregate(world: World, uid: str, **params: Any) -> dict[str, Any]:
    params = {"metric": "temperature", "fn": EVERYTHING, **params}
    if "from_" in params:
        params["from"] = params.pop("from_")
    reply = await world.client.get(
        f"{API}/devices/{uid}/aggregate", params=params, headers=world.auth("a-viewer")
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def check_points(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [p["ts"] for p in got] == [p["ts"] for p in want]
    for g, w in zip(got, want, strict=True):
        assert g["count"] == w["count"], g["ts"]
        for fn in ("first", "last", "min", "max"):
            assert g[fn] == w[fn], (g["ts"], fn)
        for fn in ("sum", "avg"):
            assert g[fn] == pytest.approx(w[fn]), (g["ts"], fn)


@pytest.mark.parametrize(
    ("day", "hours"),
    [
        # Clocks go forward at 02:00 CET: 2026-03-29 has 23 hours.
        (("2026-03-28T00:00:00+01:00", "2026-03-29T00:00:00+01:00",
          "2026-03-30T00:00:00+02:00", "2026-03-31T00:00:00+02:00"), (24, 23, 24)),
        # Clocks go back at 03:00 CEST: 2026-10-25 has 25 hours.
        (("2026-10-24T00:00:00+02:00", "2026-10-25T00:00:00+02:00",
          "2026-10-26T00:00:00+01:00", "2026-10-27T00:00:00+01:00"), (24, 25, 24)),
    ],
)  # fmt: skip
async def test_berlin_days_follow_daylight_saving(
    world: World, day: tuple[str, ...], hours: tuple[int, ...]
) -> None:
    # One reading per hour from a day before to a day after, ingested over HTTP (late: flagged).
    uid, series = await device_with(
        world, range(at(day[0]) - DAY_US, at(day[-1]) + DAY_US + 1, HOUR)
    )
    body = await aggregate(world, uid, from_=day[0], to=day[-1], bucket="1d", tz="Europe/Berlin")
    assert (body["bucket"], body["bucket_s"], body["tz"]) == ("1d", 86_400, "Europe/Berlin")
    assert body["source"] == "rollup_1h"  # Berlin's midnights are whole hours in UTC
    points = body["series"][0]["points"]
    assert [p["local"] for p in points] == list(day[:3])
    assert [p["ts"] for p in points] == [format_us(at(d)) for d in day[:3]]
    assert [p["count"] for p in points] == list(hours)
    assert [(at(b) - at(a)) // HOUR for a, b in itertools.pairwise(day)] == list(hours)
    check_points(points, want_points(series, day, day[0], day[-1]))

    # The same days without tz are UTC days of 24 hours, exactly as before (no `local`).
    utc_from = day[0][:10] + "T00:00:00Z"
    utc_to = format_us(at(utc_from) + 3 * DAY_US)
    plain = await aggregate(world, uid, from_=utc_from, to=utc_to, bucket="1d")
    assert (plain["bucket"], plain["bucket_s"], plain["source"]) == ("1d", 86_400, "rollup_1h")
    assert "tz" not in plain
    utc_days = [format_us(at(utc_from) + i * DAY_US) for i in range(4)]
    assert [p["count"] for p in plain["series"][0]["points"]] == [24, 24, 24]
    assert all("local" not in p for p in plain["series"][0]["points"])
    check_points(plain["series"][0]["points"], want_points(series, utc_days, utc_from, utc_to))
    # tz=UTC: the same buckets, with their local (UTC) start.
    utc = await aggregate(world, uid, from_=utc_from, to=utc_to, bucket="1d", tz="UTC")
    assert utc["tz"] == "UTC"
    assert [p.pop("local") for p in utc["series"][0]["points"]] == [
        d.replace("Z", "+00:00") for d in utc_days[:3]
    ]
    assert utc["series"] == plain["series"]

    # A range cutting into the DST day and the next one: partial buckets from finer data.
    cut_from = format_us(at(day[1]) + 11 * HOUR + 17 * MINUTE)
    cut_to = format_us(at(day[2]) + 6 * HOUR + 30_000_000)
    cut = await aggregate(world, uid, from_=cut_from, to=cut_to, bucket="1d", tz="Europe/Berlin")
    assert [p["local"] for p in cut["series"][0]["points"]] == [day[1], day[2]]
    check_points(cut["series"][0]["points"], want_points(series, day, cut_from, cut_to))


async def test_new_york_months_across_the_dst_change(world: World) -> None:
    # Every 6 hours from February to April, hourly over 2026-03-08 (clocks forward at 02:00 EST),
    # and readings half an hour either side of each local month start.
    times = set(every("2026-01-31T00:00:00Z", "2026-05-02T00:00:00Z", 6 * HOUR))
    times |= set(every("2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00", HOUR))
    for month_start in ("2026-03-01T00:00:00-05:00", "2026-04-01T00:00:00-04:00",
                        "2026-05-01T00:00:00-04:00", "2026-02-01T00:00:00-05:00"):  # fmt: skip
        times |= {at(month_start) - 30 * MINUTE, at(month_start), at(month_start) + 30 * MINUTE}
    uid, series = await device_with(world, times)

    months = ("2026-02-01T00:00:00-05:00", "2026-03-01T00:00:00-05:00",
              "2026-04-01T00:00:00-04:00", "2026-05-01T00:00:00-04:00")  # fmt: skip
    body = await aggregate(
        world, uid, from_=months[0], to=months[-1], bucket="1M", tz="America/New_York"
    )
    assert (body["bucket"], body["tz"], body["source"]) == ("1M", "America/New_York", "rollup_1h")
    points = body["series"][0]["points"]
    assert [p["ts"] for p in points] == [
        "2026-02-01T05:00:00Z", "2026-03-01T05:00:00Z", "2026-04-01T04:00:00Z"
    ]  # fmt: skip
    assert [p["local"] for p in points] == list(months[:3])
    check_points(points, want_points(series, months, months[0], months[-1]))
    # The 23:30 reading before each local month start belongs to the month before.
    assert points[1]["first"] == dict(series)[at(months[1])]
    assert points[1]["last"] == dict(series)[at(months[2]) - 30 * MINUTE]

    # Without tz, months are UTC months.
    utc_months = ("2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z",
                  "2026-05-01T00:00:00Z")  # fmt: skip
    utc = await aggregate(world, uid, from_=utc_months[0], to=utc_months[-1], bucket="1M")
    assert (utc["bucket"], utc["tz"], utc["bucket_s"]) == ("1M", "UTC", 2_629_746)
    assert all("local" not in p for p in utc["series"][0]["points"])
    check_points(utc["series"][0]["points"], want_points(series, utc_months, *utc_months[::3]))

    # bucket=auto with tz: calendar buckets once a fixed one would be a day or longer.
    for max_points, bucket in ((3, "1M"), (20, "1w"), (100, "1d"), (2, "3M"), (1, "12M")):
        auto = await aggregate(
            world, uid, from_=months[0], to=months[-1], tz="America/New_York",
            max_points=max_points,
        )  # fmt: skip
        assert auto["bucket"] == bucket, max_points
        points = auto["series"][0]["points"]
        assert 0 < len(points) <= max_points
        assert sum(p["count"] for p in points) == len(
            [ts for ts, _ in series if at(months[0]) <= ts < at(months[-1])]
        )
        if bucket == "1w":  # weeks start on Monday at local midnight
            starts = [datetime.fromisoformat(p["local"]) for p in points[1:]]
            assert {(d.weekday(), d.hour, d.minute) for d in starts} == {(0, 0, 0)}
    fine = await aggregate(
        world, uid, from_="2026-03-08T00:00:00-05:00", to="2026-03-09T00:00:00-04:00",
        tz="America/New_York", max_points=30,
    )  # fmt: skip
    assert (fine["bucket"], fine["bucket_s"], fine["tz"]) == ("1h", 3600, "America/New_York")
    hours = fine["series"][0]["points"]
    assert len(hours) == 23 and hours[2]["local"] == "2026-03-08T03:00:00-04:00"


async def test_kolkata_days_are_read_from_minute_rollups(world: World) -> None:
    # India is UTC+05:30: local midnight is 18:30 UTC, not a whole hour.
    uid, series = await device_with(
        world, every("2026-06-09T12:00:00Z", "2026-06-12T20:00:00Z", 15 * MINUTE)
    )
    days = ("2026-06-10T00:00:00+05:30", "2026-06-11T00:00:00+05:30",
            "2026-06-12T00:00:00+05:30", "2026-06-13T00:00:00+05:30")  # fmt: skip
    body = await aggregate(world, uid, from_=days[0], to=days[-1], bucket="1d", tz="Asia/Kolkata")
    assert body["source"] == "rollup_1m"
    points = body["series"][0]["points"]
    assert [p["ts"] for p in points] == [
        "2026-06-09T18:30:00Z", "2026-06-10T18:30:00Z", "2026-06-11T18:30:00Z"
    ]  # fmt: skip
    assert [p["local"] for p in points] == list(days[:3])
    assert [p["count"] for p in points] == [96, 96, 96]
    check_points(points, want_points(series, days, days[0], days[-1]))
    assert points[1]["first"] == dict(series)[at("2026-06-10T18:30:00Z")]
    assert points[1]["last"] == dict(series)[at("2026-06-11T18:15:00Z")]

    # Weeks from Monday; a range that ends mid-week cuts the last one.
    week = await aggregate(
        world, uid, from_="2026-06-08T00:00:00+05:30", to="2026-06-12T03:00:00+05:30",
        bucket="1w", tz="Asia/Kolkata",
    )  # fmt: skip
    (point,) = week["series"][0]["points"]
    assert point["local"] == "2026-06-08T00:00:00+05:30"
    check_points([point], want_points(series, ["2026-06-07T18:30:00Z", "2026-06-14T18:30:00Z"],
                                      "2026-06-07T18:30:00Z", "2026-06-11T21:30:00Z"))  # fmt: skip


# --- Parquet export ---------------------------------------------------------------------------

PARQUET_SCHEMA = pa.schema(
    [
        ("device", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("text", pa.string()),
        ("unit", pa.string()),
        ("flags", pa.list_(pa.string())),
        ("ts_device", pa.timestamp("us", tz="UTC")),
        ("received_at", pa.timestamp("us", tz="UTC")),
    ]
)


async def test_export_parquet(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "PAGE", 7)
    monkeypatch.setattr(export, "PARQUET_ROW_GROUP_PAGES", 2)  # row groups of 14 rows
    c = world.client
    start = hour_base()
    uid, readings = await fleet_of_readings(world, start, 20)
    rotated = await c.post(f"{API}/devices/{uid}/token", headers=world.auth("a-operator"))
    token = rotated.json()["token"]
    await ingest(world, token, [{"ts": (start + 30 * MINUTE) // 1000, "status": "door open"}])
    reply = await c.get(
        f"{API}/devices/{uid}/export",
        params={"format": "parquet", "from": format_us(start), "to": format_us(start + HOUR)},
        headers=world.auth("a-viewer"),
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/vnd.apache.parquet"
    assert reply.headers["content-disposition"] == (
        f'attachment; filename="{uid}-telemetry.parquet"'
    )
    file = pq.ParquetFile(io.BytesIO(reply.content))
    assert file.schema_arrow == PARQUET_SCHEMA == export.parquet_schema(pa)
    assert file.metadata.num_rows == 41
    assert file.metadata.num_row_groups == 3  # 14 + 14 + 13 rows
    table = file.read()
    rows = table.to_pylist()
    start_dt = _EPOCH + timedelta(microseconds=start)
    got = {(r["ts"], r["metric"], r["value"]) for r in rows if r["text"] is None}
    assert got == {(_EPOCH + timedelta(microseconds=ts), m, v) for m, ts, v in readings}
    assert [r["ts"] for r in rows] == sorted(r["ts"] for r in rows)
    assert rows[0]["ts"] == start_dt and rows[0]["ts"].tzinfo is not None
    (text,) = [r for r in rows if r["text"] is not None]
    assert text["metric"] == "status" and text["text"] == "door open" and text["value"] is None
    assert text["unit"] is None
    assert {r["unit"] for r in rows if r["metric"] == "temperature"} == {"°C"}
    assert {r["device"] for r in rows} == {uid}
    assert all(r["flags"] == ["late"] and r["ts_device"] is None for r in rows)
    assert all(r["received_at"] > r["ts"] for r in rows)

    only = await c.get(
        f"{API}/devices/{uid}/export",
        params={"format": "parquet", "metric": "humidity", "from": format_us(start),
                "to": format_us(start + 3 * MINUTE)},
        headers=world.auth("a-viewer"),
    )  # fmt: skip
    small = pq.read_table(io.BytesIO(only.content))
    assert small.column("metric").to_pylist() == ["humidity"] * 3
    assert small.column("value").to_pylist() == [v for m, _, v in readings if m == "humidity"][:3]

    # Nothing in range: a valid file with the columns and no rows.
    empty = await c.get(
        f"{API}/devices/{uid}/export",
        params={"format": "parquet", "from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z"},
        headers=world.auth("a-viewer"),
    )
    nothing = pq.read_table(io.BytesIO(empty.content))
    assert nothing.schema == PARQUET_SCHEMA and nothing.num_rows == 0


class _Pages(export.Export):
    """An export of made-up pages, without a database."""

    __slots__ = ("handed_out",)

    async def pages(self) -> AsyncIterator[list[HistoryRow]]:
        self.handed_out: list[int] = []
        for p in range(10):
            self.handed_out.append(p)
            yield [
                HistoryRow(f"m{i % 3}", p * 1000 + i, float(i), None, i % 4, 0, None)
                for i in range(100)
            ]


async def test_parquet_leaves_row_group_by_row_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "PARQUET_ROW_GROUP_PAGES", 3)
    made_up = _Pages(None, 1, 1, "dev-1", None, 0, 10_000, page_size=100)  # type: ignore[arg-type]
    chunks: list[bytes] = []
    async for chunk in export.chunks(made_up, "parquet"):
        chunks.append(chunk)
        # Bytes leave once a row group is written: never more than one group of pages ahead.
        assert len(made_up.handed_out) <= 3 * len(chunks)
    assert len(chunks) == 3 + 1  # three full row groups, then the last one with the footer
    assert chunks[0].startswith(b"PAR1") and chunks[-1].endswith(b"PAR1")
    file = pq.ParquetFile(io.BytesIO(b"".join(chunks)))
    assert file.metadata.num_row_groups == 4 and file.metadata.num_rows == 1000
    table = file.read()
    assert table.column("ts").to_pylist()[-1] == _EPOCH + timedelta(microseconds=9099)
    assert table.column("flags").to_pylist()[:4] == [[], ["late"], ["out_of_order"],
                                                      ["late", "out_of_order"]]  # fmt: skip


# --- export, then import into a fresh database ------------------------------------------------

ROUND_TRIP_COLUMNS = ("device", "ts", "metric", "value", "text", "unit")


async def readings_of_every_kind(world: World) -> tuple[str, int]:
    """A device with numbers (with and without a unit, converted, tiny, sub-second times) and
    texts (quotes, commas, a line break, spaces); returns its uid and how many readings."""
    uid, token = await new_device(world)
    t = hour_base(2)
    entries: list[dict[str, Any]] = [
        {"ts": t // 1000, "temperature": 21.5, "humidity": 40, "status": "door open"},
        {"ts": format_us(t + 123_457), "temperature": 0.1 + 0.2, "pressure": 1e-300,
         "note": '  two lines,\n"quoted" — é  ', "zähler": -7},
        {"ts": format_us(t + MINUTE), "event_type": "temperature", "value": 70, "unit": "F"},
        {"ts": format_us(t + 2 * MINUTE), "env": {"co2": 412.25}, "status": "-inf"},
    ]  # fmt: skip
    results = await ingest(world, token, entries)
    accepted = sum(r["accepted"] for r in results)
    assert accepted == 10 and not any(r["rejected"] for r in results)
    return uid, accepted


def export_rows(body: str) -> list[tuple[str, ...]]:
    """The CSV export's rows without the columns that say how a reading arrived."""
    return [tuple(r[c] for c in ROUND_TRIP_COLUMNS) for r in csv.DictReader(io.StringIO(body))]


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
async def test_an_export_imports_back_to_the_same_readings(
    world: World, tmp_path: Path, fmt: export.Format
) -> None:
    c, h = world.client, world.auth("a-viewer")
    uid, n = await readings_of_every_kind(world)
    window = {"from": "-1d", "to": "now"}
    reply = await c.get(f"{API}/devices/{uid}/export", params={**window, "format": fmt}, headers=h)
    assert reply.status_code == 200, reply.text
    path = tmp_path / f"{uid}-telemetry.{fmt}"
    path.write_bytes(reply.content)
    source = await c.get(f"{API}/devices/{uid}/export", params=window, headers=h)
    want = export_rows(source.text)
    assert len(want) == n
    assert any(r[4] == '  two lines,\n"quoted" — é  ' for r in want)
    assert ("temperature", "21.1111111111111", "°C") in {(r[2], r[3][:16], r[5]) for r in want}

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    fresh = await open_database(url, migrate_schema=True)
    try:
        async with fresh.begin() as conn:
            tenant_id = await create_tenant(conn, "elsewhere")
            await create_device(conn, tenant_id, uid)
        settings = Settings(database_url=url, auto_register=False)
        first = await import_file(import_pipeline(fresh, settings), path)
        assert (first.accepted, first.stored, first.rejected) == (n, n, 0), first
        again = await import_file(import_pipeline(fresh, settings), path)
        assert (again.accepted, again.stored, again.rejected) == (n, 0, 0), again

        async with fresh.connect() as conn:
            device = await get_device(conn, uid, None)
        start, end = timerange.time_range("-1d", "now")
        copy = export.Export(fresh, tenant_id, int(device.id), uid, None, start, end)
        body = b"".join([chunk async for chunk in export.chunks(copy, "csv")])
        # The same readings; at one time in metric id order, which is this database's own.
        assert sorted(export_rows(body.decode())) == sorted(want)
    finally:
        await fresh.dispose()


def test_every_flag_has_a_name() -> None:
    bits = {v: k for k, v in vars(Flag).items() if k.isupper()}
    assert {bit: name.upper() for bit, name in FLAG_NAMES.items()} == bits
    assert list(FLAG_NAMES.values()) == list(get_args(FlagName))
    assert flag_names(65) == ["late", "naive_time"] and flag_names(0) == []


async def test_parquet_without_pyarrow_is_501(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> None:
        raise export.ParquetUnavailable(export.NO_PYARROW)

    monkeypatch.setattr(export, "_pyarrow", missing)
    uid, _ = await new_device(world)
    url = f"{API}/devices/{uid}/export"
    reply = await world.client.get(
        url, params={"format": "parquet"}, headers=world.auth("a-viewer")
    )
    assert_error(reply, 501, "not_implemented")
    assert "pyarrow" in reply.json()["error"]["message"]
    csv_still = await world.client.get(url, headers=world.auth("a-viewer"))
    assert csv_still.status_code == 200
