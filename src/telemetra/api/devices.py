"""Devices: register, list, inspect, edit, delete, rotate tokens — scoped to the caller's tenant."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import structlog
from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.exc import IntegrityError

from telemetra.api import errors
from telemetra.api.auth import Caller, role
from telemetra.api.errors import ApiError
from telemetra.ingest.timestamps import format_us
from telemetra.store import catalog

log = structlog.get_logger("telemetra.api")
router = APIRouter(prefix="/devices", tags=["devices"], responses=errors.responses(422, 429))
OPERATOR = "this needs the operator role or higher"
OTHER_TENANT = "only platform admins register devices in another tenant"
NO_DEVICE = "no device 'greenhouse-9'"
DeviceSort = Literal["uid", "-uid", "last_seen", "-last_seen", "type", "-type", "name", "-name"]
UidParam = Annotated[str, Path(description="the device's uid", examples=["greenhouse-1"])]
_TOKEN = "hMFZF4jt5k0IlwFGLaX75UnejoIOiRS9LolsWRiDFtg"  # noqa: S105 - an example for /docs
_DEVICE: dict[str, Any] = {
    "uid": "greenhouse-1",
    "tenant_id": 2,
    "tenant": "acme",
    "name": "Greenhouse 1",
    "type": "climate",
    "status": "active",
    "timezone": "Europe/Berlin",
    "metadata": {"location": {"lat": 48.2, "lon": 16.4}, "firmware": "1.2"},
    "last_seen": "2026-11-22T10:00:01.250000Z",
    "online": True,
    "clock_offset_s": -0.8,
    "created_at": "2026-01-05T10:00:00Z",
}


def scope(caller: Caller) -> int | None:
    """The tenant a caller sees: their own; every tenant for platform admins."""
    return None if caller.role == "admin" else caller.tenant_id


async def tenant_named(request: Request, name: str) -> int | None:
    """The id of the tenant named ``name``, or None."""
    async with request.app.state.engine.connect() as conn:
        try:
            return await catalog.tenant_id_by_name(conn, name)
        except LookupError:
            return None


async def tenant_in_view(request: Request, caller: Caller, name: str | None) -> int | None:
    """The tenant a listing covers: the caller's (platform admins: every tenant), or the one
    ``name`` names — 404 for an unknown tenant and another's alike."""
    visible = scope(caller)
    if name is None:
        return visible
    wanted = await tenant_named(request, name)
    if wanted is None or (visible is not None and wanted != visible):
        raise ApiError(404, f"no tenant named {name!r}")
    return wanted


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


def _bounded(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None and (problem := catalog.metadata_problem(value)) is not None:
        raise ValueError(problem)
    return value


METADATA_DOC = (
    f"free-form JSON object (location, firmware, tags): at most {catalog.METADATA_MAX_DEPTH} "
    f"levels deep, {catalog.METADATA_MAX_BYTES} bytes as JSON, {catalog.METADATA_MAX_KEYS} "
    f"keys in all, keys of at most {catalog.METADATA_MAX_KEY_CHARS} characters"
)


class DeviceIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "uid": "greenhouse-1",
                    "name": "Greenhouse 1",
                    "type": "climate",
                    "timezone": "Europe/Berlin",
                    "metadata": {"location": {"lat": 48.2, "lon": 16.4}, "firmware": "1.2"},
                }
            ]
        },
    )

    uid: str = Field(
        examples=["greenhouse-1"],
        description="MQTT topic level and username; not a broker service's login "
        "(telemetra-ingest, chirpstack)",
    )
    name: str | None = Field(None, max_length=200)
    type: str | None = Field(None, max_length=64, examples=["climate"])
    timezone: str | None = Field(None, examples=["Europe/Berlin"])
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description=METADATA_DOC,
        examples=[{"location": {"lat": 48.2, "lon": 16.4}, "firmware": "1.2"}],
    )
    tenant: str | None = Field(
        None, examples=["acme"], description="tenant name; default: the caller's (admins only)"
    )

    _check_zone = field_validator("timezone")(_zone)
    _check_metadata = field_validator("metadata")(_bounded)


class DevicePatch(BaseModel):
    """Editable fields; anything else (tenant, uid, token) is refused."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"name": "Greenhouse 1 (north)", "metadata": {"firmware": "1.3"}},
                {"status": "disabled"},
            ]
        },
    )

    name: str | None = Field(None, max_length=200)
    type: str | None = Field(None, max_length=64)
    timezone: str | None = None
    metadata: dict[str, Any] | None = Field(None, description=METADATA_DOC)
    status: str | None = Field(None, pattern="^(active|disabled)$")

    _check_zone = field_validator("timezone")(_zone)
    _check_metadata = field_validator("metadata")(_bounded)
    _check_status = field_validator("status")(_not_null)  # the column is NOT NULL


class DeviceOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_DEVICE]})

    uid: str
    tenant_id: int
    tenant: str = Field(description="the tenant's name")
    name: str | None
    type: str | None
    status: str
    timezone: str | None
    metadata: dict[str, Any]
    last_seen: str | None
    online: bool | None = Field(
        description="the worker's verdict from last seen and the expected interval "
        "(metadata `expected_interval`, else per type); null until judged"
    )
    clock_offset_s: float | None
    created_at: str


BROKER_FIELD = Field(
    None,
    description="what happened to the Mosquitto password file and ACL (TELEMETRA_BROKER_DIR): "
    "'reloaded', or why not and what to do; null when Telemetra does not manage the broker",
    examples=["reloaded"],
)


class DeviceCreated(DeviceOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {**_DEVICE, "last_seen": None, "online": None, "clock_offset_s": None,
                 "token": _TOKEN, "broker": "reloaded"}
            ]
        }
    )  # fmt: skip

    token: str = Field(description="shown only once; only a hash is stored")
    broker: str | None = BROKER_FIELD


class DevicePage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        _DEVICE,
                        {**_DEVICE, "uid": "greenhouse-2", "name": "Greenhouse 2",
                         "status": "disabled", "metadata": {}, "clock_offset_s": 0.1},
                    ],
                    "next_offset": 2,
                }
            ]
        }
    )  # fmt: skip

    items: list[DeviceOut]
    next_offset: int | None = Field(description="pass as offset for the next page; null: last")


class TokenOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"uid": "greenhouse-1", "token": _TOKEN, "broker": "reloaded"}]
        }
    )

    uid: str
    token: str = Field(description="the new token, shown only once; the old one stops working")
    broker: str | None = BROKER_FIELD


def _metadata(row: Any) -> dict[str, Any]:
    """The stored metadata, or a note in its place when it exceeds today's bounds (stored
    before they existed, or by hand): one device must never break a listing."""
    metadata = row.metadata or {}
    problem = catalog.metadata_problem(metadata)
    if problem is None:
        return dict(metadata)
    log.warning("device metadata exceeds the bounds", uid=row.uid, problem=problem)
    return {"_unreadable": f"{problem}; replace it with PATCH /api/v1/devices/{row.uid}"}


def _out(row: Any) -> dict[str, Any]:
    return {
        "uid": row.uid,
        "tenant_id": row.tenant_id,
        "tenant": row.tenant_name,
        "name": row.name,
        "type": row.type,
        "status": row.status,
        "timezone": row.timezone,
        "metadata": _metadata(row),
        "last_seen": format_us(row.last_seen) if row.last_seen else None,
        "online": row.online,
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


@router.get(
    "",
    response_model=DevicePage,
    summary="List devices",
    responses=errors.responses(404, messages={404: "no tenant named 'initech'"}),
)
async def list_devices(
    request: Request,
    caller: Annotated[Caller, role("viewer")],
    tenant: Annotated[
        str | None, Query(description="tenant name (admins: any; others: their own)")
    ] = None,
    status: Annotated[
        str | None,
        Query(pattern="^(active|disabled)$", description="active or disabled", examples=["active"]),
    ] = None,
    type: Annotated[str | None, Query(description="device type", examples=["climate"])] = None,
    q: Annotated[str | None, Query(description="text in uid or name")] = None,
    tag: Annotated[
        str | None,
        Query(
            description="devices whose metadata `tags` list holds this tag (exactly)",
            examples=["north"],
        ),
    ] = None,
    online: Annotated[
        Literal["true", "false", "unknown"] | None,
        Query(
            description="the worker's verdict: true, false, or unknown (not judged yet)",
            examples=["false"],
        ),
    ] = None,
    sort: Annotated[
        DeviceSort,
        Query(
            description="uid, last_seen, type or name; `-` first for descending (`-last_seen`: "
            "most recent first); devices without the value come last either way, ties by uid",
            examples=["-last_seen"],
        ),
    ] = "uid",
    limit: Annotated[int, Query(ge=1, le=1000, description="items per page")] = 100,
    offset: Annotated[
        int,
        Query(ge=0, le=2**63 - 1, description="items to skip: next_offset of the previous page"),
    ] = 0,  # 64-bit in the database
) -> DevicePage:
    """Devices of the caller's tenant in ``sort`` order (by uid unless told), filtered by
    status, type, text, tag and connection state; platform admins see every tenant's (each
    device names its tenant), or one tenant's with ``tenant``. Pages by offset: pass the same
    filters and sort with each page's ``next_offset``."""
    visible = await tenant_in_view(request, caller, tenant)
    async with request.app.state.engine.connect() as conn:
        rows = await catalog.find_devices(
            conn, visible, status=status, type=type, text=q, tag=tag, online=online,
            sort=sort, limit=limit + 1, offset=offset,
        )  # fmt: skip
    more = len(rows) > limit
    return DevicePage(
        items=[DeviceOut(**_out(r)) for r in rows[:limit]],
        next_offset=offset + limit if more else None,
    )


@router.post(
    "",
    response_model=DeviceCreated,
    status_code=201,
    summary="Register a device",
    responses=errors.responses(
        403, 409, messages={403: OPERATOR, 409: "device 'greenhouse-1' already exists: device "
                            "ids are unique across the installation"}
    ),
)  # fmt: skip
async def create_device(
    request: Request, body: DeviceIn, caller: Annotated[Caller, role("operator")]
) -> DeviceCreated:
    """Register a device in the caller's tenant (platform admins: in the tenant named by
    ``tenant``); the response holds its token, once."""
    tenant_id = caller.tenant_id
    if body.tenant is not None:
        async with request.app.state.engine.connect() as conn:
            try:
                found: int | None = await catalog.tenant_id_by_name(conn, body.tenant)
            except LookupError:
                found = None
        if caller.role != "admin" and found != caller.tenant_id:  # never says which exist
            raise ApiError(403, OTHER_TENANT)
        if found is None:
            raise ApiError(
                422,
                f"no tenant named {body.tenant!r}",
                details=[{"field": "body.tenant", "problem": "no such tenant"}],
            )
        tenant_id = found
    try:
        async with request.app.state.engine.begin() as conn:
            token = await catalog.create_device(
                conn, tenant_id, body.uid, name=body.name, type=body.type,
                timezone=body.timezone, metadata=body.metadata,
                reserved=request.app.state.reserved_device_ids,
            )  # fmt: skip
            row = await catalog.get_device(conn, body.uid, tenant_id)
    except ValueError as error:
        status = 409 if "already exists" in str(error) else 422
        raise ApiError(status, str(error)) from None
    except IntegrityError:  # held by another tenant (hidden by RLS), or created meanwhile
        raise ApiError(409, catalog.device_id_taken(body.uid)) from None
    return DeviceCreated(**_out(row), token=token, broker=await sync_broker(request))


@router.get(
    "/{uid}",
    response_model=DeviceOut,
    summary="Get a device",
    responses=errors.responses(404, messages={404: NO_DEVICE}),
)
async def get_device(
    request: Request, uid: UidParam, caller: Annotated[Caller, role("viewer")]
) -> DeviceOut:
    """One device."""
    return DeviceOut(**_out(await visible_device(request, caller, uid)))


@router.patch(
    "/{uid}",
    response_model=DeviceOut,
    summary="Edit a device",
    responses=errors.responses(403, 404, messages={403: OPERATOR, 404: NO_DEVICE}),
)
async def edit_device(
    request: Request, uid: UidParam, body: DevicePatch, caller: Annotated[Caller, role("operator")]
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


@router.delete(
    "/{uid}",
    status_code=204,
    summary="Delete a device",
    responses=errors.responses(403, 404, messages={403: OPERATOR, 404: NO_DEVICE}),
)
async def delete_device(
    request: Request, uid: UidParam, caller: Annotated[Caller, role("operator")]
) -> None:
    """Delete a device and all its data (and its broker login); its open alerts are resolved
    (by you), their history is kept."""
    from telemetra.alerts.store import alert_json, forget_device

    row = await visible_device(request, caller, uid)
    async with request.app.state.engine.begin() as conn:
        resolved = await forget_device(conn, row.tenant_id, row.uid, caller.username)
        await catalog.delete_device(conn, row.id)
    frames = [{"type": "alert", "event": "resolved", "alert": alert_json(a)} for a in resolved]
    request.app.state.live.publish(row.tenant_id, frames)
    await sync_broker(request)


@router.post(
    "/{uid}/token",
    response_model=TokenOut,
    summary="Rotate a device's token",
    responses=errors.responses(403, 404, messages={403: OPERATOR, 404: NO_DEVICE}),
)
async def rotate_token(
    request: Request, uid: UidParam, caller: Annotated[Caller, role("operator")]
) -> TokenOut:
    """Issue a new token for a device; the old one stops working."""
    row = await visible_device(request, caller, uid)
    async with request.app.state.engine.begin() as conn:
        token = await catalog.rotate_token(conn, row.id)
    return TokenOut(uid=uid, token=token, broker=await sync_broker(request))


class CertificateOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "uid": "greenhouse-1",
                    "certificate": "-----BEGIN CERTIFICATE-----\nMIIBwDCCAWagAwIBAgIU…\n"
                    "-----END CERTIFICATE-----\n",
                    "private_key": "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49…\n"
                    "-----END PRIVATE KEY-----\n",
                    "ca_certificate": "-----BEGIN CERTIFICATE-----\nMIIBzDCCAXKgAwIBAgIU…\n"
                    "-----END CERTIFICATE-----\n",
                }
            ]
        }
    )

    uid: str
    certificate: str = Field(description="PEM, CN = device id, signed by the installation CA")
    private_key: str = Field(description="PEM; not stored by Telemetra: keep it safe")
    ca_certificate: str = Field(description="PEM of the installation CA, to trust the broker")


@router.post(
    "/{uid}/certificate",
    response_model=CertificateOut,
    summary="Issue a client certificate (mTLS)",
    responses={
        200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
        **errors.responses(403, 404, messages={403: OPERATOR, 404: NO_DEVICE}),
    },
)
async def issue_certificate(
    request: Request,
    uid: UidParam,
    caller: Annotated[Caller, role("operator")],
    format: Annotated[
        str,
        Query(
            pattern="^(json|zip)$",
            description="json: the PEMs in JSON; zip: a bundle of files to copy to the device",
        ),
    ] = "json",
) -> Any:
    """Issue an X.509 client certificate for mTLS (as PEM in JSON, or a zip bundle). It is
    recorded, so that the broker refuses it while the device is disabled and for good once
    the device is deleted (with TELEMETRA_BROKER_DIR)."""
    from fastapi.responses import Response

    from telemetra.certs import DeviceCA, certificate_facts, device_bundle_zip, issue_client_cert

    row = await visible_device(request, caller, uid)
    ca = DeviceCA.load_or_create(request.app.state.settings.ca_folder)
    cert, key = issue_client_cert(ca, uid)
    async with request.app.state.engine.begin() as conn:  # for the revocation list
        await catalog.record_certificate(conn, row.tenant_id, uid, *certificate_facts(cert))
    if format == "zip":
        return Response(
            device_bundle_zip(ca, uid, issued=(cert, key)),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{uid}.zip"'},
        )
    return CertificateOut(
        uid=uid,
        certificate=cert.decode(),
        private_key=key.decode(),
        ca_certificate=ca.cert_pem.decode(),
    )
