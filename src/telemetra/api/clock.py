"""A device's clock offset over time (the dashboard's quality panel)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from telemetra.api import errors
from telemetra.api.auth import Caller, role
from telemetra.api.devices import UidParam, visible_device
from telemetra.api.errors import ApiError
from telemetra.api.telemetry import FromParam, ToParam
from telemetra.ingest.timestamps import format_us
from telemetra.store import clock, timerange
from telemetra.store.timerange import US

router = APIRouter(tags=["telemetry"], responses=errors.responses(401, 422, 429))
MAX_POINTS = 2000


class OffsetPointOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"ts": "2026-11-22T10:00:00Z", "offset_s": 496.2, "corrected_s": 496.0,
                 "readings": 360}
            ]
        }
    )  # fmt: skip
    ts: str = Field(description="start of the bucket (event time)")
    offset_s: float = Field(description="device time minus receive time, least-delay sample")
    corrected_s: float | None = Field(description="correction applied to its readings, if any")
    readings: int


class ClockOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "device": "greenhouse-1",
                    "bucket_s": 3600,
                    "points": [
                        {
                            "ts": "2026-11-22T10:00:00Z",
                            "offset_s": 496.2,
                            "corrected_s": 496.0,
                            "readings": 360,
                        }
                    ],
                }
            ]
        }
    )
    device: str
    bucket_s: int = Field(description="the buckets' width in seconds")
    points: list[OffsetPointOut]


@router.get(
    "/devices/{uid}/clock",
    response_model=ClockOut,
    summary="Clock offset of a device over time",
    responses=errors.responses(404, messages={404: "no device 'greenhouse-1'"}),
)
async def device_clock(
    request: Request,
    uid: UidParam,
    caller: Annotated[Caller, role("viewer")],
    start: FromParam = None,
    end: ToParam = None,
    bucket: Annotated[
        str, Query(description="bucket width (5m, 1h, …), or auto: at most 500 buckets")
    ] = "auto",
) -> ClockOut:
    """The device's clock offset per bucket, read from its stored readings: for each bucket the
    sample that travelled fastest (device time minus receive time), the correction Telemetra
    applied, and how many readings it rests on. A device whose clock runs ahead shows a positive
    offset; a backlog sent late does not count as a clock error."""
    try:
        lo, hi = timerange.time_range(start, end)
        auto = bucket == "auto"
        width = timerange.auto_bucket(lo, hi, 500) if auto else timerange.parse_bucket(bucket)
    except timerange.ParamError as error:
        field = [{"field": f"query.{error.param}", "problem": error.problem}]
        raise ApiError(422, str(error), details=field) from None
    if timerange.bucket_count(lo, hi, width) > MAX_POINTS:
        raise ApiError(
            422, f"more than {MAX_POINTS} buckets: choose a wider `bucket`, or auto",
            details=[{"field": "query.bucket", "problem": f"at most {MAX_POINTS} buckets"}],
        )  # fmt: skip
    device = await visible_device(request, caller, uid)
    async with request.app.state.engine.connect() as conn:
        points = await clock.clock_offsets(conn, device.tenant_id, device.id, lo, hi, width)
    return ClockOut(
        device=uid,
        bucket_s=width // US,
        points=[
            OffsetPointOut(
                ts=format_us(p.bucket),
                offset_s=p.offset_us / US,
                corrected_s=None if p.corrected_us is None else p.corrected_us / US,
                readings=p.readings,
            )
            for p in points
        ],
    )
