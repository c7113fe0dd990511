"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


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


@router.get("/ready", responses={503: {"description": "a dependency is unreachable"}})
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
