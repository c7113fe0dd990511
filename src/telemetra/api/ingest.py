"""HTTP ingest with device authentication, through the same pipeline as MQTT.

Requests put their messages into one inbox; the pipeline's loop batches them with those of
other requests, commits, and each request gets its own outcome back: what was accepted, what
was rejected and why, per entry.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from telemetra.api import errors
from telemetra.api.errors import ApiError
from telemetra.config import Settings
from telemetra.ingest.pipeline import Inbox, Message, Outcome, Pipeline
from telemetra.store import catalog
from telemetra.store.tenancy import platform_wide

router = APIRouter(
    tags=["ingest"],
    responses=errors.responses(
        401, 413, 422, 429, 503,
        messages={401: "unknown or disabled device token",
                  429: "too many requests for this device; at most 20/s (bursts of 60)"},
    ),
)  # fmt: skip
HTTP_BATCH_WAIT_S = 0.005  # requests are interactive: do not wait long for a batch to fill
_TOKEN = "hMFZF4jt5k0IlwFGLaX75UnejoIOiRS9LolsWRiDFtg"  # noqa: S105 - an example for /docs


class HttpIngest:
    """Feeds the pipeline from HTTP requests and hands each request its outcomes."""

    def __init__(self, pipeline: Pipeline, settings: Settings) -> None:
        self.pipeline = pipeline
        self.inbox = Inbox(settings.queue_max_messages, settings.batch_max_messages)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(
            self.pipeline.run(self.inbox, self._done, self.stop, HTTP_BATCH_WAIT_S)
        )

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task

    def _done(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            future = outcome.message.handle
            if not future.done():
                future.set_result(outcome)

    async def submit(self, messages: list[Message]) -> list[Outcome]:
        """Queue messages and wait until they are committed (or refused)."""
        if self.inbox.full():
            raise ApiError(503, "ingest is saturated; retry shortly", headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        for message in messages:
            message.handle = loop.create_future()
            self.inbox.put(message)
        return [await message.handle for message in messages]


_REJECTED: dict[str, Any] = {
    "index": 1,
    "reason": "out_of_range",
    "metric": "temperature",
    "detail": "6000 outside the valid range [-90, 200] °C",
}


class Rejected(BaseModel):
    """A message, an entry of it or one value of it that was not stored (see /deadletters)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_REJECTED]})

    index: int | None = Field(description="entry of the message (array payloads)")
    reason: str = Field(examples=["out_of_range"])
    metric: str | None = Field(None, description="the metric, when one value was rejected")
    detail: str


class IngestResult(BaseModel):
    """What became of one message."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"accepted": 2, "rejected": [_REJECTED], "event_ids": []},
                {"accepted": 1, "rejected": [], "event_ids": ["e-1"]},
            ]
        }
    )

    accepted: int = Field(description="readings stored (or already stored: redelivery)")
    rejected: list[Rejected]
    event_ids: list[str] = Field(description="the event_id of each entry that carried one")


class BatchResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [
                        {"accepted": 1, "rejected": [], "event_ids": []},
                        {"accepted": 1, "rejected": [_REJECTED | {"index": None}], "event_ids": []},
                    ]
                }
            ]
        }
    )

    results: list[IngestResult] = Field(description="one per message, in request order")


def _result(outcome: Outcome) -> IngestResult:
    return IngestResult(
        accepted=outcome.accepted,
        rejected=[
            Rejected(index=r.index, reason=str(r.reason), metric=r.metric, detail=r.detail)
            for r in outcome.rejected
        ],
        event_ids=outcome.event_ids,
    )


async def _body(request: Request) -> bytes:
    """The request body (the app's BodyLimit has refused one over the limit with 413)."""
    return await request.body()


async def _device_by_token(request: Request, token: str | None) -> str:
    if not token:
        raise ApiError(
            401, "device token required in X-API-Key or Authorization: Bearer",
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    with platform_wide():  # the device is found by its token alone, before any tenant is known
        async with request.app.state.engine.connect() as conn:
            row = await catalog.device_by_token(conn, token)
    if row is None:
        raise ApiError(401, "unknown or disabled device token")
    request.app.state.device_limits.check(str(row.uid), "device")
    return str(row.uid)


async def authenticated_device(
    request: Request,
    x_api_key: Annotated[
        str | None,
        Header(
            description="the device token (from device creation or rotation)",
            examples=[_TOKEN],
        ),
    ] = None,
    authorization: Annotated[
        str | None,
        Header(
            description="`Bearer <device token>`, instead of X-API-Key",
            examples=[f"Bearer {_TOKEN}"],
        ),
    ] = None,
) -> str:
    """The uid of the device whose token the request carries."""
    token = x_api_key
    if token is None and authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    return await _device_by_token(request, token)


def _message(uid: str, payload: bytes, source: str = "http") -> Message:
    return Message(f"http/{uid}", payload, time.time_ns() // 1000, source=source, device=uid)


_PAYLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"oneOf": [{"type": "object"}, {"type": "array"}]},
                "examples": {
                    "flat": {"value": {"temperature": 21.5, "humidity": 40}},
                    "with time": {"value": {"ts": 1795660000000, "values": {"temperature": 21.5}}},
                    "event": {
                        "value": {"schema": 1, "event_id": "e-1", "event_type": "temperature",
                                  "value": 21.5, "unit": "C", "ts_device": "2026-11-22T10:00:00"}
                    },
                },
            }
        },
    }
}  # fmt: skip


@router.post(
    "/ingest", response_model=IngestResult, summary="Send telemetry", openapi_extra=_PAYLOAD_DOC
)
async def ingest(request: Request, uid: Annotated[str, Depends(authenticated_device)]) -> Any:
    """Telemetry of the authenticated device: one object or an array (native format)."""
    [outcome] = await request.app.state.http_ingest.submit([_message(uid, await _body(request))])
    return _result(outcome)


_BATCH_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "array",
                    "items": {"oneOf": [{"type": "object"}, {"type": "array"}]},
                },
                "example": [{"temperature": 21.5}, {"ts": 1795660000000, "values": {"rh": 40}}],
            }
        },
    }
}


@router.post(
    "/ingest/batch",
    response_model=BatchResult,
    summary="Send several messages",
    openapi_extra=_BATCH_DOC,
    responses=errors.responses(
        422, messages={422: ("a batch is a JSON array of messages", [{"field": "body",
                             "problem": "a batch is a JSON array of messages"}])}
    ),
)  # fmt: skip
async def ingest_batch(request: Request, uid: Annotated[str, Depends(authenticated_device)]) -> Any:
    """Several messages of the authenticated device: a JSON array, one message per element."""
    body = await _body(request)
    # Unreadable JSON is a 422 here as on every other JSON route.
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        problem = f"the batch is not valid JSON: {error}"
        raise ApiError(422, problem, details=[{"field": "body", "problem": problem}]) from None
    if not isinstance(items, list):
        problem = "a batch is a JSON array of messages"
        raise ApiError(422, problem, details=[{"field": "body", "problem": problem}])
    messages = [_message(uid, orjson.dumps(item)) for item in items]
    outcomes = await request.app.state.http_ingest.submit(messages) if messages else []
    return BatchResult(results=[_result(o) for o in outcomes])


@router.post(
    "/{device_token}/telemetry",
    response_model=IngestResult,
    summary="ThingsBoard-compatible device telemetry",
    openapi_extra=_PAYLOAD_DOC,
)
async def thingsboard_telemetry(
    request: Request,
    device_token: Annotated[
        str,
        Path(description="the device token", examples=[_TOKEN]),
    ],
) -> Any:
    """ThingsBoard's HTTP device API: the token is part of the path."""
    uid = await _device_by_token(request, device_token)
    [outcome] = await request.app.state.http_ingest.submit([_message(uid, await _body(request))])
    return _result(outcome)
