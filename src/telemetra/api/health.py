"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text

from telemetra.config import Settings

router = APIRouter(tags=["health"])

_READY: dict[str, Any] = {
    "status": "ok",
    "checks": {"database": "ok", "broker": "ok"},
    "broker": "mqtts://mqtt.example.org:8883",
}
_UNAVAILABLE: dict[str, Any] = {
    "status": "unavailable",
    "checks": {
        "database": "ok",
        "broker": "unreachable at mosquitto:1883: [Errno 111] Connection refused",
    },
    "broker": "mqtt://mosquitto:1883",
}


class HealthOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"]


class ReadyOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_READY, _UNAVAILABLE]})

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(
        description="per dependency (database, broker, and redis when TELEMETRA_REDIS_URL "
        "is set): ok, or why it is unreachable"
    )
    broker: str = Field(
        description="the MQTT broker checked: TELEMETRA_MQTT_URL without its credentials"
    )


@router.get("/health", response_model=HealthOut, summary="Liveness")
async def health() -> HealthOut:
    """The process is up (it checks nothing else; see /ready)."""
    return HealthOut(status="ok")


async def _broker(settings: Settings) -> tuple[str, str]:
    """(the broker checked, whether it accepts connections): the configured
    TELEMETRA_MQTT_URL, for mqtts:// with a TLS handshake that checks its certificate against
    TELEMETRA_MQTT_CA_FILE. A login is ingest's business."""
    from telemetra.ingest.mqtt import broker_name, parse_mqtt_url, tls_context

    try:
        address = parse_mqtt_url(settings.mqtt_url)
    except ValueError as error:
        return "invalid TELEMETRA_MQTT_URL", str(error)
    name = broker_name(address)
    try:
        context = tls_context(settings) if address.tls else None
    except (OSError, ssl.SSLError) as error:  # TELEMETRA_MQTT_CA_FILE, _CERT_FILE, _KEY_FILE
        return name, f"TLS settings for {address.host}:{address.port} unusable: {error}"
    try:
        async with asyncio.timeout(2):
            _, writer = await asyncio.open_connection(address.host, address.port, ssl=context)
        writer.close()
        with contextlib.suppress(OSError):  # a TLS close the broker cut short
            await writer.wait_closed()
    except ssl.SSLCertVerificationError as error:
        return name, f"TLS certificate of {address.host}:{address.port} not trusted: {error}"
    except (OSError, TimeoutError) as error:
        return name, f"unreachable at {address.host}:{address.port}: {error or 'timeout'}"
    return name, "ok"


_READY_DOC: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ReadyOut,
        "description": "A dependency is unreachable",
        "content": {"application/json": {"example": _UNAVAILABLE}},
    }
}


@router.get("/ready", response_model=ReadyOut, summary="Readiness", responses=_READY_DOC)
async def ready(request: Request) -> Any:
    """The database answers and the MQTT broker accepts connections (within 2 s each), and
    Redis answers when TELEMETRA_REDIS_URL is set (the live stream across processes).

    The broker is the one TELEMETRA_MQTT_URL names (with TLS for mqtts://), named in the
    answer."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(2):
            async with request.app.state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as error:
        checks["database"] = f"unreachable: {str(error)[:200]}"
    broker, checks["broker"] = await _broker(request.app.state.settings)
    if request.app.state.settings.redis_url:  # the live stream across processes
        checks["redis"] = await request.app.state.live.check()
    ok = all(v == "ok" for v in checks.values())
    body = {"status": "ok" if ok else "unavailable", "checks": checks, "broker": broker}
    return JSONResponse(body, status_code=200 if ok else 503)
