"""Dead letters: list what was rejected, and replay it through today's devices and rules.

A caller sees and replays the dead letters of their own tenant (a platform admin: of every
tenant, including those of devices that were not registered). Row-Level Security holds
beneath: a replay runs in the caller's scope, so another tenant's devices and dead letters
are invisible to it, as if they did not exist.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from telemetra.api import errors
from telemetra.api.auth import Caller, role
from telemetra.api.devices import scope
from telemetra.api.errors import ApiError
from telemetra.ingest.replay import replay, time_window
from telemetra.ingest.timestamps import format_us
from telemetra.store import deadletters
from telemetra.store.deadletters import DeadLetter, Selection
from telemetra.store.timerange import ParamError

router = APIRouter(tags=["quality"], responses=errors.responses(422, 429))

MAX_REPLAY = 10_000  # dead letters per request: more in further requests (see ``remaining``)
_REASON_HELP = (
    "rejection reason: invalid_json, bad_shape, out_of_range, future_timestamp, "
    "unknown_device, conflict …"
)
_FROM_HELP = (
    "received at or after: ISO-8601 with Z/offset, epoch ms, now, or -24h/-7d/-30m "
    "(default: no limit)"
)
_TO_HELP = "received before, same forms (default: no limit)"


class ReplayedOut(BaseModel):
    at: str = Field(description="when it was last replayed", examples=["2026-11-22T11:00:00Z"])
    outcome: str = Field(
        description="stored (its message is stored now), rejected (again: the reason now in "
        "detail), skipped (cannot be replayed: why in detail)",
        examples=["stored"],
    )
    detail: str | None = Field(examples=["1 reading of its message accepted"])


class DeadLetterOut(BaseModel):
    id: int = Field(examples=[42])
    device: str | None = Field(description="null: the device was not known", examples=["gh-1"])
    source: str = Field(examples=["mqtt"])
    topic: str | None = Field(examples=["devices/gh-1/telemetry"])
    reason: str = Field(examples=["out_of_range"])
    detail: str = Field(examples=["temperature 6000 is outside [-60, 150] C"])
    index: int | None = Field(description="entry of an array payload", examples=[1])
    metric: str | None = Field(description="the value rejected, if one", examples=["temperature"])
    payload: str | None = Field(
        description="raw payload as UTF-8 text (invalid bytes as U+FFFD), size-capped",
        examples=['{"temperature": 6000}'],
    )
    payload_size: int = Field(description="size of the original payload in bytes", examples=[21])
    received_at: str = Field(examples=["2026-11-22T10:00:01Z"])
    replayed: ReplayedOut | None = Field(
        description="the last replay (null: never replayed)",
        examples=[{"at": "2026-11-22T11:00:00Z", "outcome": "rejected",
                   "detail": "out_of_range: 6000 outside the valid range [-90, 200] °C"}],
    )  # fmt: skip


class DeadLetterPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {"id": 42, "device": "gh-1", "source": "mqtt",
                         "topic": "devices/gh-1/telemetry", "reason": "out_of_range",
                         "detail": "6000 outside the valid range [-90, 200] °C", "index": 1,
                         "metric": "temperature",
                         "payload": '[{"temperature": 21.5}, {"temperature": 6000}]',
                         "payload_size": 46, "received_at": "2026-11-22T10:00:01Z",
                         "replayed": None},
                        {"id": 41, "device": "gh-1", "source": "mqtt",
                         "topic": "devices/gh-1/telemetry", "reason": "unknown_device",
                         "detail": "device 'gh-1' is not registered (or disabled); create it "
                                   "with `telemetra device create` or enable "
                                   "TELEMETRA_AUTO_REGISTER",
                         "index": None, "metric": None, "payload": '{"temperature": 21.4}',
                         "payload_size": 21, "received_at": "2026-11-22T09:59:00Z",
                         "replayed": {"at": "2026-11-22T11:00:00Z", "outcome": "stored",
                                      "detail": "1 reading of its message accepted"}},
                    ],
                    "next_cursor": "ZDE6NDE",
                }
            ]
        }
    )  # fmt: skip

    items: list[DeadLetterOut]
    next_cursor: str | None = Field(examples=[None])


class ReplayRequest(BaseModel):
    """Which dead letters to replay; all filters optional (none: every one not yet stored)."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        serialize_by_alias=True,
        json_schema_extra={
            "examples": [
                {"device": "gh-1", "reason": "unknown_device", "from": "-7d", "dry_run": True}
            ]
        },
    )

    device: str | None = Field(None, description="only this device's", max_length=128)
    reason: str | None = Field(None, description=_REASON_HELP, max_length=40)
    start: str | None = Field(None, alias="from", description=_FROM_HELP, max_length=64)
    end: str | None = Field(None, alias="to", description=_TO_HELP, max_length=64)
    dry_run: bool = Field(
        False, description="decode and clean only: say what would happen, store and mark nothing"
    )
    limit: int = Field(
        1000, ge=1, le=MAX_REPLAY, description="at most this many dead letters, oldest first"
    )


class ReplayOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"dry_run": False, "dead_letters": 12, "messages": 11, "accepted": 30,
                 "stored": 30, "resolved": 10, "rejected": {"out_of_range": 1},
                 "skipped": {"payload_truncated": 1}, "remaining": 0},
            ]
        }
    )  # fmt: skip

    dry_run: bool
    dead_letters: int = Field(description="dead letters taken: replayed or skipped")
    messages: int = Field(description="messages run again through decoding and cleaning")
    accepted: int = Field(description="readings accepted: new, or already stored")
    stored: int = Field(description="readings new to the database (0 in a dry run)")
    resolved: int = Field(description="dead letters whose message is stored now")
    rejected: dict[str, int] = Field(
        description="rejections of the replayed messages now, by reason (their dead letters "
        "are marked rejected; one already stored is not stored again)"
    )
    skipped: dict[str, int] = Field(
        description="dead letters not replayed, by why: payload_truncated (only part of the "
        "payload was kept, TELEMETRA_DEADLETTER_PAYLOAD_BYTES), no_device (names no device)"
    )
    remaining: int = Field(description="selected beyond `limit`: replay again for those")


def _out(d: DeadLetter) -> DeadLetterOut:
    return DeadLetterOut(
        id=d.id,
        device=d.device_uid,
        source=d.source,
        topic=d.topic,
        reason=d.reason,
        detail=d.detail,
        index=d.entry_index,
        metric=d.metric,
        payload=None if d.payload is None else d.payload.decode("utf-8", "replace"),
        payload_size=d.payload_size,
        received_at=format_us(d.received_at),
        replayed=None
        if d.replayed_at is None
        else ReplayedOut(
            at=format_us(d.replayed_at), outcome=d.replay_outcome or "", detail=d.replay_detail
        ),
    )


def _window(start: str | None, end: str | None, where: str) -> tuple[int | None, int | None]:
    try:
        return time_window(start, end)
    except ParamError as error:
        field = f"{where}.{error.param}"
        raise ApiError(
            422, str(error), details=[{"field": field, "problem": error.problem}]
        ) from None


@router.get("/deadletters", response_model=DeadLetterPage, summary="List dead letters")
async def list_dead_letters(
    request: Request,
    caller: Annotated[Caller, role("viewer")],
    device: Annotated[
        str | None, Query(description="device uid", examples=["greenhouse-1"])
    ] = None,
    reason: Annotated[
        str | None, Query(description=_REASON_HELP, examples=["out_of_range"])
    ] = None,
    start: Annotated[
        str | None, Query(alias="from", description=_FROM_HELP, examples=["-24h"])
    ] = None,
    end: Annotated[str | None, Query(alias="to", description=_TO_HELP, examples=["now"])] = None,
    replayed: Annotated[
        bool | None,
        Query(description="true: only replayed ones; false: only those never replayed"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="items per page")] = 100,
    cursor: Annotated[
        str | None,
        Query(description="next_cursor of the previous page, unchanged (absent: the first page)"),
    ] = None,
) -> DeadLetterPage:
    """Rejected messages and values of the caller's tenant with reason, payload and last
    replay, newest first."""
    since, until = _window(start, end, "query")
    selection = Selection(scope(caller), device, reason, since, until, replayed)
    async with request.app.state.engine.connect() as conn:
        try:
            found = await deadletters.page(conn, selection, limit=limit, cursor=cursor)
        except ValueError as error:
            raise ApiError(
                422, str(error), details=[{"field": "query.cursor", "problem": str(error)}]
            ) from None
    return DeadLetterPage(items=[_out(d) for d in found.items], next_cursor=found.next_cursor)


@router.post(
    "/deadletters/replay",
    response_model=ReplayOut,
    summary="Replay dead letters",
    responses=errors.responses(403),
)
async def replay_dead_letters(
    request: Request, caller: Annotated[Caller, role("operator")], body: ReplayRequest
) -> ReplayOut:
    """Run the caller's tenant's dead letters again through today's devices, cleaning rules
    and clock offsets (operator role or higher; a platform admin: every tenant's).

    For after registering a device, fixing a cleaning rule or once a device's clock offset is
    known. The same decoding, cleaning and writing as live data, with each message's original
    receive time. Idempotent: replaying twice stores nothing twice, and a rejection seen again
    is not dead-lettered again. Each replayed dead letter is kept and marked (see `replayed`
    in the list); those stored are not taken again. Oldest first, at most `limit` per request.
    """
    since, until = _window(body.start, body.end, "body")
    selection = Selection(scope(caller), body.device, body.reason, since, until)
    report = await replay(
        request.app.state.engine, request.app.state.settings, selection,
        dry_run=body.dry_run, limit=body.limit,
    )  # fmt: skip
    return ReplayOut(
        dry_run=report.dry_run, dead_letters=report.dead_letters, messages=report.messages,
        accepted=report.accepted, stored=report.stored, resolved=report.resolved,
        rejected=report.rejected, skipped=report.skipped, remaining=report.remaining,
    )  # fmt: skip
