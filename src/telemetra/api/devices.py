"""Devices: register, list, inspect, edit, delete, rotate tokens — scoped to the caller's tenant."""

from __future__ import annotations

from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from telemetra.api.auth import Caller, role
from telemetra.api.errors import ApiError
from telemetra.ingest.timestamps import format_us
from telemetra.store import catalog

router = APIRouter(prefix="/devices", tags=["devices"])


def scope(caller: Caller) -> int | None:
    """The tenant a caller sees: their own; every tenant for platform admins."""
    return None if caller.role == "admin" else caller.tenant_id


def _zone(value: str | None) -> str | None:
    if value is not None:
        try:
            ZoneInfo(value)
        except (ValueError, KeyError, OSError):  # OSError: "America" is a folder of zones
            raise ValueError(f"unknown time zone {value!r}; use an IANA name") from None
    return value


def _not_null(value: str | None) -> str:
    if value is None:
        raise ValueError("may be left out, but not null")
    return value


class DeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uid: str = Field(examples=["greenhouse-1"], description="MQTT topic level and username")
    name: str | None = Field(None, max_length=200)
    type: str | None = Field(None, max_length=64, examples=["climate"])
    timezone: str | None = Field(None, examples=["Europe/Berlin"])
    metadata: dict[str, Any] = Field(
        default_factory=dict, examples=[{"location": {"lat": 48.2, "lon": 16.4}, "firmware": "1.2"}]
    )

    _check_zone = field_validator("timezone")(_zone)


class DevicePatch(BaseModel):
    """Editable fields; anything else (tenant, uid, token) is refused."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200)
    type: str | None = Field(None, max_length=64)
    timezone: str | None = None
    metadata: dict[str, Any] | None = None
    status: str | None = Field(None, pattern="^(active|disabled)$")

    _check_zone = field_validator("timezone")(_zone)
    _check_status = field_validator("status")(_not_null)  # the column is NOT NULL


class DeviceOut(BaseModel):
    uid: str
    name: str | None
    type: str | None
    status: str
    timezone: str | None
    metadata: dict[str, Any]
    last_seen: str | None
    clock_offset_s: float | None
    created_at: str


BROKER_FIELD = Field(
    None,
    description="what happened to the Mosquitto password file and ACL (TELEMETRA_BROKER_DIR): "
    "'reloaded', or why not and what to do; null when Telemetra does not manage the broker",
    examples=["reloaded"],
)


class DeviceCreated(DeviceOut):
    token: str = Field(description="shown only once; only a hash is stored")
    broker: str | None = BROKER_FIELD


class DevicePage(BaseModel):
    items: list[DeviceOut]
    next_offset: int | None


class TokenOut(BaseModel):
    uid: str
    token: str = Field(description="the new token, shown only once; the old one stops working")
    broker: str | None = BROKER_FIELD


def _out(row: Any) -> dict[str, Any]:
    return {
        "uid": row.uid,
        "name": row.name,
        "type": row.type,
        "status": row.status,
        "timezone": row.timezone,
        "metadata": row.metadata or {},
        "last_seen": format_us(row.last_seen) if row.last_seen else None,
        "clock_offset_s": row.clock_offset_us / 1e6 if row.clock_offset_us is not None else None,
        "created_at": format_us(row.created_at),
    }


async def sync_broker(request: Request) -> str | None:
    """Bring the broker's logins and ACL up to date after a committed device change."""
    broker_sync = request.app.state.broker_sync
    return None if broker_sync is None else str(await broker_sync.apply())


async def visible_device(request: Request, caller: Caller, uid: str) -> Any:
    async with request.app.state.engine.connect() as conn:
        row = await catalog.get_device(conn, uid, scope(caller))
    if row is None:  # another tenant's device answers exactly like a missing one
        raise ApiError(404, f"no device {uid!r}")
    return row


@router.get("", response_model=DevicePage)
async def list_devices(
    request: Request,
    caller: Annotated[Caller, role("viewer")],
    status: Annotated[str | None, Query(pattern="^(active|disabled)$")] = None,
    type: str | None = None,
    q: Annotated[str | None, Query(description="text in uid or name")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,  # 64-bit in the database
) -> DevicePage:
    """Devices of the caller's tenant, by uid."""
    async with request.app.state.engine.connect() as conn:
        rows = await catalog.find_devices(
            conn, scope(caller), status=status, type=type, text=q, limit=limit + 1, offset=offset
        )
    more = len(rows) > limit
    return DevicePage(
        items=[DeviceOut(**_out(r)) for r in rows[:limit]],
        next_offset=offset + limit if more else None,
    )


@router.post("", response_model=DeviceCreated, status_code=201)
async def create_device(
    request: Request, body: DeviceIn, caller: Annotated[Caller, role("operator")]
) -> DeviceCreated:
    """Register a device in the caller's tenant; the response holds its token, once."""
    async with request.app.state.engine.begin() as conn:
        try:
            token = await catalog.create_device(
                conn, caller.tenant_id, body.uid, name=body.name, type=body.type,
                timezone=body.timezone, metadata=body.metadata,
            )  # fmt: skip
        except ValueError as error:
            status = 409 if "already exists" in str(error) else 422
            raise ApiError(status, str(error)) from None
        row = await catalog.get_device(conn, body.uid, caller.tenant_id)
    return DeviceCreated(**_out(row), token=token, broker=await sync_broker(request))


@router.get("/{uid}", response_model=DeviceOut)
async def get_device(
    request: Request, uid: str, caller: Annotated[Caller, role("viewer")]
) -> DeviceOut:
    """One device."""
    return DeviceOut(**_out(await visible_device(request, caller, uid)))


@router.patch("/{uid}", response_model=DeviceOut)
async def edit_device(
    request: Request, uid: str, body: DevicePatch, caller: Annotated[Caller, role("operator")]
) -> DeviceOut:
    """Change name, type, time zone, metadata or status (a disabled device loses its broker
    login at once, when Telemetra manages the broker's files)."""
    row = await visible_device(request, caller, uid)
    changes = body.model_dump(exclude_unset=True)
    async with request.app.state.engine.begin() as conn:
        await catalog.update_device(conn, row.id, changes)
        updated = await catalog.get_device(conn, uid, scope(caller))
    if updated.status != row.status:
        await sync_broker(request)
    return DeviceOut(**_out(updated))


@router.delete("/{uid}", status_code=204)
async def delete_device(
    request: Request, uid: str, caller: Annotated[Caller, role("operator")]
) -> None:
    """Delete a device and all its data (and its broker login)."""
    row = await visible_device(request, caller, uid)
    async with request.app.state.engine.begin() as conn:
        await catalog.delete_device(conn, row.id)
    await sync_broker(request)


@router.post("/{uid}/token", response_model=TokenOut)
async def rotate_token(
    request: Request, uid: str, caller: Annotated[Caller, role("operator")]
) -> TokenOut:
    """Issue a new token for a device; the old one stops working."""
    row = await visible_device(request, caller, uid)
    async with request.app.state.engine.begin() as conn:
        token = await catalog.rotate_token(conn, row.id)
    return TokenOut(uid=uid, token=token, broker=await sync_broker(request))


class CertificateOut(BaseModel):
    uid: str
    certificate: str = Field(description="PEM, CN = device id, signed by the installation CA")
    private_key: str = Field(description="PEM; not stored by Telemetra: keep it safe")
    ca_certificate: str = Field(description="PEM of the installation CA, to trust the broker")


@router.post(
    "/{uid}/certificate",
    response_model=CertificateOut,
    responses={200: {"content": {"application/zip": {}}}},
)
async def issue_certificate(
    request: Request,
    uid: str,
    caller: Annotated[Caller, role("operator")],
    format: Annotated[str, Query(pattern="^(json|zip)$")] = "json",
) -> Any:
    """Issue an X.509 client certificate for mTLS (as PEM in JSON, or a zip bundle)."""
    from fastapi.responses import Response

    from telemetra.certs import DeviceCA, device_bundle_zip, issue_client_cert

    await visible_device(request, caller, uid)
    ca = DeviceCA.load_or_create(request.app.state.settings.ca_folder)
    if format == "zip":
        return Response(
            device_bundle_zip(ca, uid),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{uid}.zip"'},
        )
    cert, key = issue_client_cert(ca, uid)
    return CertificateOut(
        uid=uid,
        certificate=cert.decode(),
        private_key=key.decode(),
        ca_certificate=ca.cert_pem.decode(),
    )
