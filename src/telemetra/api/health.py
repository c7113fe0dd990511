"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text

router = APIRouter(tags=["health"])

_READY: dict[str, Any] = {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}
_UNAVAILABLE: dict[str, Any] = {
    "status": "unavailable",
    "checks": {
        "database": "ok",
        "broker": "unreachable at mosquitto:1883: [Errno 111] Connection refused",
    },
}


class HealthOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"]


class ReadyOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_READY, _UNAVAILABLE]})

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(
        description="per dependency (database, broker): ok, or why it is unreachable"
    )


@router.get("/health", response_model=HealthOut, summary="Liveness")
async def health() -> HealthOut:
    """The process is up (it checks nothing else; see /ready)."""
    return HealthOut(status="ok")


async def _broker(url: str) -> str:
    """Whether the MQTT broker accepts TCP connections (a login is ingest's business)."""
    from telemetra.ingest.mqtt import parse_mqtt_url

    address = parse_mqtt_url(url)
    try:
        async with asyncio.timeout(2):
            _, writer = await asyncio.open_connection(address.host, address.port)
        writer.close()
        await writer.wait_closed()
    except (OSError, TimeoutError) as error:
        return f"unreachable at {address.host}:{address.port}: {error or 'timeout'}"
    return "ok"


_READY_DOC: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ReadyOut,
        "description": "A dependency is unreachable",
        "content": {"application/json": {"example": _UNAVAILABLE}},
    }
}


@router.get("/ready", response_model=ReadyOut, summary="Readiness", responses=_READY_DOC)
async def ready(request: Request) -> Any:
    """The database answers and the MQTT broker accepts connections (within 2 s each)."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            async with request.app.state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as error:
        checks["database"] = f"unreachable: {str(error)[:200]}"
    checks["broker"] = await _broker(request.app.state.settings.mqtt_url)
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks},
                        status_code=200 if ok else 503)  # fmt: skip
