"""A device's clock offset over time, read back from its stored readings.

Every reading keeps the device's own time (``ts``, or ``ts_device`` when a correction moved it)
and when it was received (``received_at``). Their difference is the device's clock offset plus
the delay on the way; per bucket, the largest difference is the sample with the least delay —
the best estimate, as NTP takes the minimum-delay sample. A backlog sent late shows as large
negative differences and never wins the maximum unless a whole bucket is backlog.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from telemetra.store.schema import readings


@dataclass(frozen=True, slots=True)
class OffsetPoint:
    bucket: int  # µs, start of the bucket (by event time)
    offset_us: int  # the best estimate: device time minus receive time, least delay
    corrected_us: int | None  # the correction applied to its readings, if any (ts - ts_device)
    readings: int


async def clock_offsets(
    conn: AsyncConnection, tenant_id: int, device_id: int, start: int, end: int, bucket_us: int
) -> list[OffsetPoint]:
    """Per bucket of [start, end) by event time: the offset estimate, the applied correction,
    and how many readings it rests on."""
    r = readings.c
    device_time = func.coalesce(r.ts_device, r.ts)
    bucket = (r.ts / bucket_us).cast(readings.c.ts.type) * bucket_us
    if conn.dialect.name == "postgresql":  # integer division, as SQLite's
        bucket = func.div(r.ts, bucket_us) * bucket_us
    query = (
        select(
            bucket.label("b"),
            func.max(device_time - r.received_at),
            func.max(r.ts - r.ts_device),
            func.count(),
        )
        .where(r.tenant_id == tenant_id, r.device_id == device_id, r.ts >= start, r.ts < end)
        .group_by("b")
        .order_by("b")
    )
    return [
        OffsetPoint(int(b), int(offset), None if fix is None else int(fix), int(n))
        for b, offset, fix, n in await conn.execute(query)
    ]
