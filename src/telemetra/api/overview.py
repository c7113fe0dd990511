"""The fleet at a glance, for the dashboard's first screen: devices online, readings per second,
open alerts, data quality (rejections, clock drift) and where the devices are."""

from __future__ import annotations

import math
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from telemetra.api import errors
from telemetra.api.auth import Caller, role
from telemetra.api.devices import tenant_in_view
from telemetra.store.schema import OPEN_ALERT, alerts, dead_letters, devices, latest, readings

router = APIRouter(tags=["overview"], responses=errors.responses(422, 429))

US = 1_000_000
RATE_WINDOW_S = 60
REJECTIONS_WINDOW_S = 3600
DRIFT_MIN_S = 1.0
DRIFT_LIMIT = 20
SEVERITIES = ("info", "warning", "critical")


class DeviceCounts(BaseModel):
    total: int = Field(examples=[42])
    online: int = Field(examples=[38])
    offline: int = Field(examples=[3])
    unknown: int = Field(
        description="not judged yet: no message since registration, or no worker running",
        examples=[1],
    )


class AlertCounts(BaseModel):
    info: int = Field(examples=[0])
    warning: int = Field(examples=[2])
    critical: int = Field(examples=[1])


class DriftOut(BaseModel):
    device: str = Field(examples=["sim-00007"])
    clock_offset_s: float = Field(
        description="device clock minus server clock, seconds", examples=[496.4]
    )


class LocatedOut(BaseModel):
    device: str = Field(examples=["greenhouse-1"])
    name: str | None = Field(examples=["Greenhouse north"])
    lat: float = Field(examples=[52.52])
    lon: float = Field(examples=[13.405])
    online: bool | None = Field(examples=[True])


class OverviewOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "devices": {"total": 42, "online": 38, "offline": 3, "unknown": 1},
                    "readings_per_s": 12.5,
                    "alerts_open": {"info": 0, "warning": 2, "critical": 1},
                    "rejections_last_hour": {"out_of_range": 4, "future_timestamp": 17},
                    "clock_drift": [{"device": "sim-00007", "clock_offset_s": 496.4},
                                    {"device": "sim-00016", "clock_offset_s": -108.0}],
                    "located": [{"device": "greenhouse-1", "name": "Greenhouse north",
                                 "lat": 52.52, "lon": 13.405, "online": True}],
                }
            ]
        }
    )  # fmt: skip

    devices: DeviceCounts
    readings_per_s: float = Field(
        description="readings whose time falls in the last 60 s, per second"
    )
    alerts_open: AlertCounts = Field(description="alerts firing or acknowledged, by severity")
    rejections_last_hour: dict[str, int] = Field(
        description="dead letters received in the last hour, by rejection reason"
    )
    clock_drift: list[DriftOut] = Field(
        description="devices whose clock is off by 1 s or more, largest first, at most 20"
    )
    located: list[LocatedOut] = Field(
        description="devices whose metadata has `location: {lat, lon}` (numbers, in degrees)"
    )


def _of(column: Any, tenant_id: int | None) -> list[Any]:
    return [] if tenant_id is None else [column == tenant_id]


async def _device_counts(conn: AsyncConnection, tenant_id: int | None) -> DeviceCounts:
    rows = await conn.execute(
        select(devices.c.online, func.count())
        .where(*_of(devices.c.tenant_id, tenant_id))
        .group_by(devices.c.online)
    )
    by_state = {online: int(n) for online, n in rows}
    online, offline, unknown = by_state.get(True, 0), by_state.get(False, 0), by_state.get(None, 0)
    return DeviceCounts(
        total=online + offline + unknown, online=online, offline=offline, unknown=unknown
    )


async def _readings_per_s(conn: AsyncConnection, tenant_id: int | None, now: int) -> float:
    """Readings with a time in the last minute, per second. Only series whose newest reading
    is that recent can hold one, so the primary key is probed for those series alone."""
    cutoff = now - RATE_WINDOW_S * US
    same_series = and_(
        readings.c.device_id == latest.c.device_id, readings.c.metric_id == latest.c.metric_id
    )
    count = await conn.scalar(
        select(func.count())
        .select_from(latest.join(readings, same_series))
        .where(
            latest.c.ts >= cutoff,
            readings.c.ts >= cutoff,
            readings.c.ts < now,
            *_of(latest.c.tenant_id, tenant_id),
        )
    )
    return round(int(count or 0) / RATE_WINDOW_S, 3)


async def _alerts_open(conn: AsyncConnection, tenant_id: int | None) -> AlertCounts:
    rows = await conn.execute(
        select(alerts.c.severity, func.count())
        .where(OPEN_ALERT, *_of(alerts.c.tenant_id, tenant_id))
        .group_by(alerts.c.severity)
    )
    counts = {severity: int(n) for severity, n in rows}
    return AlertCounts(**{s: counts.get(s, 0) for s in SEVERITIES})


async def _rejections(conn: AsyncConnection, tenant_id: int | None, now: int) -> dict[str, int]:
    rows = await conn.execute(
        select(dead_letters.c.reason, func.count())
        .where(
            dead_letters.c.received_at >= now - REJECTIONS_WINDOW_S * US,
            *_of(dead_letters.c.tenant_id, tenant_id),
        )
        .group_by(dead_letters.c.reason)
        .order_by(dead_letters.c.reason)
    )
    return {reason: int(n) for reason, n in rows}


async def _clock_drift(conn: AsyncConnection, tenant_id: int | None) -> list[DriftOut]:
    size = func.abs(devices.c.clock_offset_us)
    rows = await conn.execute(
        select(devices.c.uid, devices.c.clock_offset_us)
        .where(size >= round(DRIFT_MIN_S * US), *_of(devices.c.tenant_id, tenant_id))
        .order_by(size.desc(), devices.c.uid)
        .limit(DRIFT_LIMIT)
    )
    return [DriftOut(device=uid, clock_offset_s=round(offset / US, 1)) for uid, offset in rows]


def _degrees(value: Any, bound: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and -bound <= number <= bound else None


async def _located(conn: AsyncConnection, tenant_id: int | None) -> list[LocatedOut]:
    rows = await conn.execute(
        # The whole metadata, read in Python: a JSON operator in the query would fail for
        # every device if one's metadata held a NUL escape (stored before they were refused).
        select(devices.c.uid, devices.c.name, devices.c.online, devices.c.metadata)
        .where(*_of(devices.c.tenant_id, tenant_id))
        .order_by(devices.c.uid)
    )
    found = []
    for uid, name, online, metadata in rows:
        location = metadata.get("location") if isinstance(metadata, dict) else None
        if not isinstance(location, dict):
            continue
        lat, lon = _degrees(location.get("lat"), 90), _degrees(location.get("lon"), 180)
        if lat is not None and lon is not None:
            found.append(LocatedOut(device=uid, name=name, lat=lat, lon=lon, online=online))
    return found


@router.get(
    "/overview",
    response_model=OverviewOut,
    summary="The fleet at a glance",
    responses=errors.responses(404, messages={404: "no tenant named 'initech'"}),
)
async def overview(
    request: Request,
    caller: Annotated[Caller, role("viewer")],
    tenant: Annotated[
        str | None,
        Query(
            description="tenant name (admins: any, default all; others: their own)",
            examples=["acme"],
        ),
    ] = None,
) -> OverviewOut:
    """The caller's tenant (platform admins: every tenant, or one with `tenant`): devices by
    status, readings per second over the last minute, open alerts by severity, dead letters of
    the last hour by reason, the devices with the largest clock offsets, and the devices with
    a location (`metadata.location.lat`/`lon`) for a map."""
    visible = await tenant_in_view(request, caller, tenant)
    now = time.time_ns() // 1000
    async with request.app.state.engine.connect() as conn:
        return OverviewOut(
            devices=await _device_counts(conn, visible),
            readings_per_s=await _readings_per_s(conn, visible, now),
            alerts_open=await _alerts_open(conn, visible),
            rejections_last_hour=await _rejections(conn, visible, now),
            clock_drift=await _clock_drift(conn, visible),
            located=await _located(conn, visible),
        )
