"""The one writer path for readings: idempotent bulk insert plus rollups, in one transaction.

PostgreSQL: ``COPY`` into a temporary staging table, then a single statement whose
``INSERT … ON CONFLICT DO NOTHING RETURNING`` feeds the 1-minute and 1-hour rollup upserts and
the latest-value table, so that only rows actually inserted are counted. SQLite (one writer):
``executemany`` into staging, drop the rows that already exist, insert the rest and roll them up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from telemetra.store.catalog import dialect_insert
from telemetra.store.schema import (
    dead_letters,
    device_quality,
    devices,
    event_times,
)


class Row(NamedTuple):
    """One reading as stored (column order of the staging table).

    The writer accepts plain tuples in this order too: building them is much cheaper.
    """

    tenant_id: int
    device_id: int
    metric_id: int
    ts: int
    value: float | None
    text: str | None
    received_at: int
    flags: int
    ts_device: int | None


class Existing(NamedTuple):
    """A reading that was already stored: ``same`` tells a duplicate from a conflict."""

    device_id: int
    metric_id: int
    ts: int
    same: bool


@dataclass(slots=True)
class WriteResult:
    inserted: int
    existing: list[Existing]


COLUMNS = Row._fields
_STAGING_DDL = """CREATE TEMP TABLE IF NOT EXISTS staging_readings (
    tenant_id BIGINT, device_id BIGINT, metric_id BIGINT, ts BIGINT, value DOUBLE PRECISION,
    text TEXT, received_at BIGINT, flags INTEGER, ts_device BIGINT){suffix}"""
_KEY_JOIN = "r.device_id = s.device_id AND r.metric_id = s.metric_id AND r.ts = s.ts"
_SAME = "(s.value IS NOT DISTINCT FROM r.value AND s.text IS NOT DISTINCT FROM r.text)"
_SAME_SQLITE = "(s.value IS r.value AND s.text IS r.text)"


_ROLLUP_COLUMNS = (
    "tenant_id, device_id, metric_id, bucket, count, sum, min, max, "
    "first_ts, first_value, last_ts, last_value"
)
_HOUR_US = 3_600_000_000
_MINUTE_US = 60_000_000


def _minutes_sql(src: str) -> str:
    """Per-minute aggregates (rollup columns) of the new readings in ``src``."""
    bucket = f"ts - ts % {_MINUTE_US}"
    return f"""
SELECT tenant_id, device_id, metric_id, bucket, count(*) AS count, sum(value) AS sum,
       min(value) AS min, max(value) AS max, min(ts) AS first_ts, max(first_v) AS first_value,
       max(ts) AS last_ts, max(last_v) AS last_value
FROM (
    SELECT tenant_id, device_id, metric_id, ts, value, {bucket} AS bucket,
           first_value(value) OVER w AS first_v,
           last_value(value) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING
                                     AND UNBOUNDED FOLLOWING) AS last_v
    FROM {src}
    WHERE value IS NOT NULL
    WINDOW w AS (PARTITION BY device_id, metric_id, {bucket} ORDER BY ts)
) AS b
WHERE true
GROUP BY tenant_id, device_id, metric_id, bucket"""


def _hours_sql(minutes: str) -> str:
    """Per-hour aggregates from per-minute ones: far fewer rows than the raw readings."""
    hour = f"bucket - bucket % {_HOUR_US}"
    return f"""
SELECT tenant_id, device_id, metric_id, hour, sum(count), sum(sum), min(min), max(max),
       min(first_ts), max(first_v), max(last_ts), max(last_v)
FROM (
    SELECT tenant_id, device_id, metric_id, {hour} AS hour, count, sum, min, max,
           first_ts, last_ts,
           first_value(first_value) OVER w AS first_v,
           last_value(last_value) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING
                                          AND UNBOUNDED FOLLOWING) AS last_v
    FROM {minutes}
    WINDOW w AS (PARTITION BY device_id, metric_id, {hour} ORDER BY first_ts)
) AS h
WHERE true
GROUP BY tenant_id, device_id, metric_id, hour"""


def _upsert_rollup_sql(table: str, select: str) -> str:
    """Merge the aggregates of ``select`` into a rollup table (sums add, extremes compare)."""
    smaller = "CASE WHEN excluded.{c} < {t}.{c} THEN excluded.{v} ELSE {t}.{v} END"
    larger = "CASE WHEN excluded.{c} > {t}.{c} THEN excluded.{v} ELSE {t}.{v} END"
    return f"""
INSERT INTO {table} ({_ROLLUP_COLUMNS})
{select}
ON CONFLICT (device_id, metric_id, bucket) DO UPDATE SET
    count = {table}.count + excluded.count,
    sum = {table}.sum + excluded.sum,
    min = {smaller.format(c="min", v="min", t=table)},
    max = {larger.format(c="max", v="max", t=table)},
    first_ts = {smaller.format(c="first_ts", v="first_ts", t=table)},
    first_value = {smaller.format(c="first_ts", v="first_value", t=table)},
    last_ts = {larger.format(c="last_ts", v="last_ts", t=table)},
    last_value = {larger.format(c="last_ts", v="last_value", t=table)}"""


def _latest_sql(src: str) -> str:
    """Keep the newest value by event time per series (never the last received)."""
    return f"""
INSERT INTO latest (tenant_id, device_id, metric_id, ts, value, text, received_at, flags)
SELECT tenant_id, device_id, metric_id, ts, value, text, received_at, flags FROM {src}
WHERE (device_id, metric_id, ts) IN
      (SELECT device_id, metric_id, max(ts) FROM {src} GROUP BY device_id, metric_id)
ON CONFLICT (device_id, metric_id) DO UPDATE SET
    ts = excluded.ts, value = excluded.value, text = excluded.text,
    received_at = excluded.received_at, flags = excluded.flags
WHERE excluded.ts > latest.ts"""


_PG_WRITE = f"""
WITH ins AS (
    INSERT INTO readings ({", ".join(COLUMNS)})
    SELECT {", ".join(COLUMNS)} FROM staging_readings
    ORDER BY device_id, metric_id, ts  -- index order: fewer pages touched
    ON CONFLICT DO NOTHING
    RETURNING tenant_id, device_id, metric_id, ts, value, text, received_at, flags
),
m AS ({_minutes_sql("ins")}),
r1m AS ({_upsert_rollup_sql("rollup_1m", "SELECT * FROM m WHERE true")}),
r1h AS ({_upsert_rollup_sql("rollup_1h", _hours_sql("m"))}),
lt AS ({_latest_sql("ins")})
SELECT NULL::bigint, NULL::bigint, NULL::bigint, NULL::boolean, (SELECT count(*) FROM ins)
UNION ALL
-- Rows not inserted: compare with what was stored before this statement (its snapshot).
-- An index lookup per skipped row, so a large readings table is never scanned.
SELECT s.device_id, s.metric_id, s.ts,
       (SELECT {_SAME} FROM readings r WHERE {_KEY_JOIN}), NULL
FROM staging_readings s
WHERE (SELECT count(*) FROM ins) < (SELECT count(*) FROM staging_readings)  -- else skipped
  AND NOT EXISTS (SELECT 1 FROM ins
                  WHERE ins.device_id = s.device_id AND ins.metric_id = s.metric_id
                    AND ins.ts = s.ts)"""


async def write_readings(conn: AsyncConnection, rows: Sequence[tuple[Any, ...]]) -> WriteResult:
    """Insert ``rows`` idempotently with their rollups; report what already existed.

    Runs inside the caller's transaction. Rows must be unique per (device, metric, ts).
    """
    if not rows:
        return WriteResult(0, [])
    if conn.dialect.name == "postgresql":
        return await _write_postgresql(conn, rows)
    return await _write_sqlite(conn, rows)


async def _write_postgresql(conn: AsyncConnection, rows: Sequence[tuple[Any, ...]]) -> WriteResult:
    # The first statement through SQLAlchemy opens the transaction that COPY then joins.
    # JIT compiled the big write statement on every execution (~70 ms a commit, measured).
    await conn.exec_driver_sql("SET LOCAL jit = off")
    await conn.exec_driver_sql(_STAGING_DDL.format(suffix=" ON COMMIT DELETE ROWS"))
    raw = await conn.get_raw_connection()
    apg: Any = raw.driver_connection
    await apg.copy_records_to_table("staging_readings", records=rows, columns=COLUMNS)
    result = await apg.fetch(_PG_WRITE)
    inserted = int(result[0][4])
    # A row skipped for a concurrent writer's insert is invisible here: count it as equal.
    existing = [Existing(r[0], r[1], r[2], r[3] is not False) for r in result[1:]]
    return WriteResult(inserted, existing)


async def _write_sqlite(conn: AsyncConnection, rows: Sequence[tuple[Any, ...]]) -> WriteResult:
    run = conn.exec_driver_sql
    await run(_STAGING_DDL.format(suffix=""))
    await run("DELETE FROM staging_readings")
    await run(f"INSERT INTO staging_readings VALUES ({', '.join('?' * len(COLUMNS))})", rows)
    found: Any = await run(
        f"SELECT s.device_id, s.metric_id, s.ts, {_SAME_SQLITE} "
        f"FROM staging_readings s JOIN readings r ON {_KEY_JOIN}"
    )
    existing = [Existing(r[0], r[1], r[2], bool(r[3])) for r in found]
    if existing:
        await run(
            "DELETE FROM staging_readings AS s WHERE EXISTS "
            f"(SELECT 1 FROM readings r WHERE {_KEY_JOIN})"
        )
    cols = ", ".join(COLUMNS)
    result = await run(
        f"INSERT INTO readings ({cols}) SELECT {cols} FROM staging_readings WHERE true "
        "ORDER BY device_id, metric_id, ts ON CONFLICT DO NOTHING"
    )
    minutes = f"WITH m AS ({_minutes_sql('staging_readings')})"
    await run(f"{minutes} {_upsert_rollup_sql('rollup_1m', 'SELECT * FROM m WHERE true')}")
    await run(f"{minutes} {_upsert_rollup_sql('rollup_1h', _hours_sql('m'))}")
    await run(_latest_sql("staging_readings"))
    return WriteResult(result.rowcount, existing)


async def remember_event_times(
    conn: AsyncConnection, times: Iterable[tuple[int, str, int]]
) -> None:
    """Store the server-assigned time of (device id, event id) for later redeliveries."""
    values = [{"device_id": d, "event_id": e, "ts": t} for d, e, t in times]
    if values:
        stmt = dialect_insert(conn, event_times)
        stmt = stmt.on_conflict_do_update(
            index_elements=["device_id", "event_id"], set_={"ts": stmt.excluded.ts}
        )
        await conn.execute(stmt, values)


async def forget_event_times(conn: AsyncConnection, before: int) -> int:
    """Delete assigned event times older than ``before`` (µs); returns how many."""
    result = await conn.execute(event_times.delete().where(event_times.c.ts < before))
    return int(result.rowcount or 0)


async def assigned_times(
    conn: AsyncConnection, keys: Sequence[tuple[int, str]]
) -> dict[tuple[int, str], int]:
    """Times already assigned to these (device id, event id) pairs."""
    found: dict[tuple[int, str], int] = {}
    for device_id in {d for d, _ in keys}:
        ids = [e for d, e in keys if d == device_id]
        rows = await conn.execute(
            select(event_times.c.event_id, event_times.c.ts).where(
                event_times.c.device_id == device_id, event_times.c.event_id.in_(ids)
            )
        )
        for event_id, ts in rows:
            found[(device_id, event_id)] = ts
    return found


def payload_digest(payload: bytes | None) -> str:
    """A hash of a whole raw payload (dead letters keep only a capped copy)."""
    return hashlib.blake2b(payload or b"", digest_size=16).hexdigest()


def dead_letter_row(
    *,
    tenant_id: int | None,
    device_uid: str | None,
    source: str,
    topic: str | None,
    reason: str,
    detail: str,
    entry_index: int | None,
    metric: str | None,
    payload: bytes | None,
    received_at: int,
    cap: int,
    digest: str | None = None,
    ordinal: int = 0,
) -> dict[str, Any]:
    """A ``dead_letters`` row with its fingerprint; ``payload`` is the whole raw payload.

    The fingerprint names what was rejected — tenant, device, source, topic, the whole
    payload (by hash), entry, metric and reason, plus ``ordinal`` to tell apart equal
    rejections of one message — and never when it arrived or the detail (which may quote
    the receive time). A redelivery, a second import of the same file or a replay that is
    rejected again for the same reason therefore has the fingerprint of the dead letter
    already stored, and ``add_dead_letters`` keeps only the first.
    """
    topic = None if topic is None else topic[:512]
    digest = digest or payload_digest(payload)
    key = orjson.dumps(
        [tenant_id, device_uid, source, topic, digest, entry_index, metric, reason, ordinal]
    )
    return {
        "tenant_id": tenant_id,
        "device_uid": device_uid,
        "source": source,
        "topic": topic,
        "reason": reason,
        "detail": detail,
        "entry_index": entry_index,
        "metric": None if metric is None else metric[:200],
        "payload": None if payload is None else payload[:cap],
        "payload_size": 0 if payload is None else len(payload),
        "received_at": received_at,
        "fingerprint": hashlib.blake2b(key, digest_size=16).hexdigest(),
    }


async def add_dead_letters(conn: AsyncConnection, letters: Sequence[dict[str, Any]]) -> set[str]:
    """Keep rejected messages and values with their reason and (capped) raw payload.

    Rows come from ``dead_letter_row``. One already stored (same fingerprint) is not stored
    again; returns the fingerprints that are new, so callers count only those.
    """
    unique: dict[str, dict[str, Any]] = {}
    for letter in letters:  # the first of equal ones in one call is kept, as in the table
        unique.setdefault(letter["fingerprint"], letter)
    if not unique:
        return set()
    stmt = dialect_insert(conn, dead_letters).on_conflict_do_nothing(index_elements=["fingerprint"])
    rows = await conn.execute(stmt.returning(dead_letters.c.fingerprint), list(unique.values()))
    return {str(fingerprint) for fingerprint in rows.scalars()}


async def add_quality_counts(
    conn: AsyncConnection, counts: dict[tuple[int, int, str], int]
) -> None:
    """Add to the per-device quality counters ((tenant id, device id, counter) -> n)."""
    values = [
        {"tenant_id": t, "device_id": d, "counter": c, "count": n}
        for (t, d, c), n in counts.items()
        if n
    ]
    if values:
        stmt = dialect_insert(conn, device_quality)
        stmt = stmt.on_conflict_do_update(
            index_elements=["device_id", "counter"],
            set_={"count": device_quality.c.count + stmt.excluded["count"]},
        )
        await conn.execute(stmt, values)


async def touch_devices(conn: AsyncConnection, seen: dict[int, tuple[int, int | None]]) -> None:
    """Record last-seen receive times and clock-offset estimates (device id -> (seen, offset))."""
    if seen:
        stmt = (
            update(devices)
            .where(devices.c.id == bindparam("b_id"))
            .values(
                last_seen=func.coalesce(
                    func.max(devices.c.last_seen, bindparam("b_seen"))
                    if conn.dialect.name == "sqlite"
                    else func.greatest(devices.c.last_seen, bindparam("b_seen")),
                    bindparam("b_seen"),
                ),
                clock_offset_us=func.coalesce(bindparam("b_offset"), devices.c.clock_offset_us),
            )
        )
        await conn.execute(
            stmt,
            [{"b_id": d, "b_seen": s, "b_offset": o} for d, (s, o) in sorted(seen.items())],
        )
