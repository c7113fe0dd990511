"""Tenants and users: platform admins manage tenants; owners manage the users of their tenant.

Every endpoint here re-reads the caller's account on each request (``current_caller``), so a
disabled, deleted or demoted user's still-unexpired token stops working at once.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.exc import IntegrityError

from telemetra.api import errors
from telemetra.api.auth import Caller, hash_password, password_matches, role
from telemetra.api.devices import tenant_in_view, tenant_named
from telemetra.api.errors import ApiError
from telemetra.ingest.timestamps import format_us
from telemetra.store import catalog

router = APIRouter(tags=["tenants and users"], responses=errors.responses(422, 429))

Role = Literal["viewer", "operator", "owner", "admin"]
NAME_TAKEN = "this username is not available; choose another"
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # argon2 hashes any length; a cap keeps requests cheap


# --- who is calling: the token, checked against the account as it is now ---


# --- models ---


def _clean_name(value: str) -> str:
    if value != value.strip() or not value.isprintable():
        raise ValueError("must be printable, without spaces at the ends")
    return value


def _zone(value: str | None) -> str | None:
    if value is not None:
        try:
            ZoneInfo(value)
        except (ValueError, KeyError, OSError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name") from None
    return value


class TenantIn(BaseModel):
    """A new tenant."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "acme", "timezone": "UTC"}]}
    )

    name: str = Field(min_length=1, max_length=100, examples=["acme"])
    timezone: str | None = Field(
        None,
        examples=["Europe/Berlin"],
        description="IANA name; how naive device timestamps are read unless a device says",
    )

    _check_name = field_validator("name")(_clean_name)
    _check_zone = field_validator("timezone")(_zone)


class TenantOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"id": 2, "name": "acme", "timezone": "UTC", "created_at": "2026-01-05T10:00:00Z"}
            ]
        }
    )

    id: int
    name: str
    timezone: str | None
    created_at: str


class TenantPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {"id": 2, "name": "acme", "timezone": "UTC",
                         "created_at": "2026-01-05T10:00:00Z"},
                        {"id": 3, "name": "globex", "timezone": "Europe/Berlin",
                         "created_at": "2026-02-01T08:30:00.125000Z"},
                    ],
                    "next_offset": 2,
                }
            ]
        }
    )  # fmt: skip

    items: list[TenantOut]
    next_offset: int | None = Field(description="pass as offset for the next page; null: last")


class TenantPatch(BaseModel):
    """Changes to a tenant: its name (admins) and time zone (its owner, admins)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"timezone": "Europe/Vienna"}]}
    )

    name: str | None = Field(None, min_length=1, max_length=100, examples=["acme-labs"])
    timezone: str | None = Field(
        None, examples=["Europe/Vienna"], description="IANA name; null: the installation default"
    )

    _check_name = field_validator("name")(lambda v: None if v is None else _clean_name(v))
    _check_zone = field_validator("timezone")(_zone)


def _password(*default: None) -> Any:
    return Field(
        *default,
        min_length=MIN_PASSWORD,
        max_length=MAX_PASSWORD,
        description=f"at least {MIN_PASSWORD} characters; stored only as an argon2 hash",
        json_schema_extra={"format": "password", "writeOnly": True},
    )


class UserIn(BaseModel):
    """A new user. Owners create users in their own tenant (never admins); admins anywhere."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"username": "maria", "password": "a long passphrase", "role": "operator"}]
        },
    )

    username: str = Field(min_length=1, max_length=200, examples=["maria"])
    password: str = _password()
    role: Role = Field("viewer", examples=["operator"])
    tenant: str | None = Field(
        None, examples=["acme"], description="tenant name; default: the caller's (admins only)"
    )

    _check_name = field_validator("username")(_clean_name)


class UserPatch(BaseModel):
    """Changes to a user. Owners and admins: role, disabled, password. Anyone: their own
    password (with ``current_password``). Nobody changes their own role or disables themselves;
    any other field (tenant, username, id) is refused."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"role": "viewer"}, {"disabled": True}]},
    )

    role: Role | None = Field(None, examples=["viewer"])
    disabled: bool | None = Field(None, description="a disabled user cannot log in; tokens stop")
    password: str | None = _password(None)
    current_password: str | None = Field(
        None,
        max_length=MAX_PASSWORD,
        description="required to change your own password",
        json_schema_extra={"format": "password", "writeOnly": True},
    )


class UserOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"id": 7, "username": "maria", "tenant_id": 2, "tenant": "acme",
                 "role": "operator", "disabled": False, "created_at": "2026-01-05T10:00:00Z"}
            ]
        }
    )  # fmt: skip

    id: int
    username: str
    tenant_id: int
    tenant: str
    role: Role
    disabled: bool
    created_at: str


class UserPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {"id": 7, "username": "maria", "tenant_id": 2, "tenant": "acme",
                         "role": "operator", "disabled": False,
                         "created_at": "2026-01-05T10:00:00Z"},
                        {"id": 9, "username": "li.wei", "tenant_id": 2, "tenant": "acme",
                         "role": "viewer", "disabled": True,
                         "created_at": "2026-03-12T14:20:31.402115Z"},
                    ],
                    "next_offset": 2,
                }
            ]
        }
    )  # fmt: skip

    items: list[UserOut]
    next_offset: int | None = Field(description="pass as offset for the next page; null: last")


def _tenant(row: Any) -> TenantOut:
    return TenantOut(
        id=row.id, name=row.name, timezone=row.timezone, created_at=format_us(row.created_at)
    )


def _user(row: Any) -> UserOut:  # never the password hash
    return UserOut(
        id=row.id, username=row.username, tenant_id=row.tenant_id, tenant=row.tenant,
        role=row.role, disabled=bool(row.disabled), created_at=format_us(row.created_at),
    )  # fmt: skip


MAX_INT64 = 2**63 - 1  # ids and offsets are 64-bit in the database: larger ones are a 422
Limit = Annotated[int, Query(ge=1, le=1000, description="items per page")]
Offset = Annotated[
    int, Query(ge=0, le=MAX_INT64, description="items to skip: next_offset of the previous page")
]
UserId = Annotated[int, Path(ge=1, le=MAX_INT64, description="user id", examples=[7])]
TenantId = Annotated[int, Path(ge=1, le=MAX_INT64, description="tenant id", examples=[2])]


# --- tenants ---


@router.get("/tenants", response_model=TenantPage, summary="List tenants")
async def list_tenants(
    request: Request,
    caller: Annotated[Caller, role("viewer")],
    q: Annotated[str | None, Query(description="text in the name")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> TenantPage:
    """Tenants by name: all of them for admins, otherwise only the caller's own."""
    scope = None if caller.role == "admin" else caller.tenant_id
    async with request.app.state.engine.connect() as conn:
        rows = await catalog.find_tenants(conn, scope, text=q, limit=limit + 1, offset=offset)
    return TenantPage(
        items=[_tenant(r) for r in rows[:limit]],
        next_offset=offset + limit if len(rows) > limit else None,
    )


@router.post(
    "/tenants",
    response_model=TenantOut,
    status_code=201,
    summary="Create a tenant",
    responses=errors.responses(
        403, 409, messages={403: "this needs the admin role or higher",
                            409: "tenant 'acme' already exists"}
    ),
)  # fmt: skip
async def create_tenant(
    request: Request, body: TenantIn, caller: Annotated[Caller, role("admin")]
) -> TenantOut:
    """Create a tenant (platform admins only); names are unique."""
    try:
        async with request.app.state.engine.begin() as conn:
            tenant_id = await catalog.create_tenant(conn, body.name, body.timezone)
            row = await catalog.get_tenant(conn, tenant_id)
    except (ValueError, IntegrityError):
        raise ApiError(409, f"tenant {body.name!r} already exists") from None
    return _tenant(row)


async def _visible_tenant(request: Request, caller: Caller, tenant_id: int) -> Any:
    async with request.app.state.engine.connect() as conn:
        row = await catalog.get_tenant(conn, tenant_id)
    # Another tenant answers exactly like a missing one.
    if row is None or (caller.role != "admin" and tenant_id != caller.tenant_id):
        raise ApiError(404, f"no tenant {tenant_id}")
    return row


@router.get(
    "/tenants/{tenant_id}",
    response_model=TenantOut,
    summary="Get a tenant",
    responses=errors.responses(404, messages={404: "no tenant 2"}),
)
async def get_tenant(
    request: Request, tenant_id: TenantId, caller: Annotated[Caller, role("viewer")]
) -> TenantOut:
    """One tenant: the caller's own, or any for platform admins."""
    return _tenant(await _visible_tenant(request, caller, tenant_id))


@router.patch(
    "/tenants/{tenant_id}",
    response_model=TenantOut,
    summary="Edit a tenant",
    responses=errors.responses(
        403, 404, 409, messages={403: "only platform admins rename tenants", 404: "no tenant 2",
                                 409: "tenant 'acme' already exists"}
    ),
)  # fmt: skip
async def edit_tenant(
    request: Request,
    tenant_id: TenantId,
    body: TenantPatch,
    caller: Annotated[Caller, role("owner")],
) -> TenantOut:
    """Change a tenant's time zone (its owner, admins) or name (admins). The time zone is how
    naive device timestamps are read unless the device has its own."""
    await _visible_tenant(request, caller, tenant_id)
    changes = body.model_dump(exclude_unset=True)
    if "name" in changes and caller.role != "admin":
        raise ApiError(403, "only platform admins rename tenants")
    if changes.get("name", "") is None:
        raise ApiError(422, "name may be left out, but not null")
    try:
        async with request.app.state.engine.begin() as conn:
            await catalog.update_tenant(conn, tenant_id, changes)
            row = await catalog.get_tenant(conn, tenant_id)
    except ValueError as error:
        raise ApiError(409, str(error)) from None
    except IntegrityError:  # renamed concurrently to the same name
        raise ApiError(409, f"tenant {changes.get('name')!r} already exists") from None
    return _tenant(row)


@router.delete(
    "/tenants/{tenant_id}",
    status_code=204,
    summary="Delete a tenant and all it holds",
    responses=errors.responses(
        403, 404, 409, messages={403: "this needs the admin role or higher", 404: "no tenant 2",
                                 409: "you cannot delete your own tenant"}
    ),
)  # fmt: skip
async def delete_tenant(
    request: Request, tenant_id: TenantId, caller: Annotated[Caller, role("admin")]
) -> None:
    """Delete a tenant with its devices and their data, users, rules and dead letters (platform
    admins; not their own tenant, not the default one). Its devices lose their broker logins
    and certificates at once when Telemetra manages the broker's files."""
    from telemetra.api.devices import sync_broker

    await _visible_tenant(request, caller, tenant_id)
    if tenant_id == caller.tenant_id:
        raise ApiError(409, "you cannot delete your own tenant")
    try:
        async with request.app.state.engine.begin() as conn:
            devices = await catalog.delete_tenant(conn, tenant_id)
    except ValueError as error:
        raise ApiError(409, str(error)) from None
    if devices:
        await sync_broker(request)


# --- users ---


async def _visible_user(request: Request, caller: Caller, user_id: int) -> Any:
    scope = None if caller.role == "admin" else caller.tenant_id
    async with request.app.state.engine.connect() as conn:
        row = await catalog.get_user(conn, user_id, scope)
    if row is None:  # another tenant's user answers exactly like a missing one
        raise ApiError(404, f"no user {user_id}")
    return row


def _guard_admin(caller: Caller, target: Any) -> None:
    if target.role == "admin" and caller.role != "admin":
        raise ApiError(403, "only platform admins can change or delete an admin")


@router.get(
    "/users",
    response_model=UserPage,
    summary="List users",
    responses=errors.responses(
        403, 404, messages={403: "this needs the owner role or higher",
                            404: "no tenant named 'initech'"}
    ),
)  # fmt: skip
async def list_users(
    request: Request,
    caller: Annotated[Caller, role("owner")],
    tenant: Annotated[str | None, Query(description="tenant name (admins)")] = None,
    q: Annotated[str | None, Query(description="text in the username")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> UserPage:
    """Users by username: of the caller's tenant for owners; of all or one tenant for admins."""
    scope = await tenant_in_view(request, caller, tenant)
    async with request.app.state.engine.connect() as conn:
        rows = await catalog.find_users(conn, scope, text=q, limit=limit + 1, offset=offset)
    return UserPage(
        items=[_user(r) for r in rows[:limit]],
        next_offset=offset + limit if len(rows) > limit else None,
    )


@router.post(
    "/users",
    response_model=UserOut,
    status_code=201,
    summary="Create a user",
    responses=errors.responses(
        403, 409, messages={403: "owners create users only in their own tenant", 409: NAME_TAKEN}
    ),
)
async def create_user(
    request: Request, body: UserIn, caller: Annotated[Caller, role("owner")]
) -> UserOut:
    """Create a user; the password is stored only as an argon2 hash and never returned.

    Usernames are unique across all tenants (login is by username alone)."""
    admin = caller.role == "admin"
    if body.role == "admin" and not admin:
        raise ApiError(403, "only platform admins can create admins")
    tenant_id = caller.tenant_id
    if body.tenant is not None:
        found = await tenant_named(request, body.tenant)
        if not admin and found != caller.tenant_id:
            raise ApiError(403, "owners create users only in their own tenant")
        if found is None:
            raise ApiError(422, f"no tenant named {body.tenant!r}", details=[{"field": "tenant"}])
        tenant_id = found
    async with request.app.state.engine.connect() as conn:
        if await catalog.username_taken(conn, body.username):
            raise ApiError(409, NAME_TAKEN)  # the same answer whichever tenant has it
    password_hash = await asyncio.to_thread(hash_password, body.password)
    try:
        async with request.app.state.engine.begin() as conn:
            user_id = await catalog.create_user(
                conn, tenant_id, body.username, password_hash, body.role
            )
            row = await catalog.get_user(conn, user_id, None)
    except IntegrityError:
        raise ApiError(409, NAME_TAKEN) from None
    except ValueError as error:
        if "already exists" in str(error):
            raise ApiError(409, NAME_TAKEN) from None
        raise ApiError(422, str(error)) from None
    return _user(row)


@router.get(
    "/users/{user_id}",
    response_model=UserOut,
    summary="Get a user",
    responses=errors.responses(
        403, 404, messages={403: "this needs the owner role or higher", 404: "no user 7"}
    ),
)  # fmt: skip
async def get_user(
    request: Request, user_id: UserId, caller: Annotated[Caller, role("viewer")]
) -> UserOut:
    """One user: yourself, any of your tenant's (owners), anyone (admins)."""
    if user_id != caller.user_id and not caller.at_least("owner"):
        raise ApiError(403, "this needs the owner role or higher")
    return _user(await _visible_user(request, caller, user_id))


@router.patch(
    "/users/{user_id}",
    response_model=UserOut,
    summary="Edit a user",
    responses=errors.responses(
        403, 404, messages={403: "you can change only your own password", 404: "no user 7"}
    ),
)
async def edit_user(
    request: Request, user_id: UserId, body: UserPatch, caller: Annotated[Caller, role("viewer")]
) -> UserOut:
    """Change a user's role, disabled flag or password (owners within their tenant, admins);
    anyone may change their own password, giving ``current_password``."""
    own = user_id == caller.user_id
    if own and (body.role is not None or body.disabled is not None):
        raise ApiError(403, "nobody can change their own role or disable themselves")
    if not own and not caller.at_least("owner"):
        raise ApiError(403, "you can change only your own password")
    target = await _visible_user(request, caller, user_id)
    _guard_admin(caller, target)
    if body.role == "admin" and caller.role != "admin":
        raise ApiError(403, "only platform admins can make admins")
    changes: dict[str, Any] = body.model_dump(include={"role", "disabled"}, exclude_none=True)
    if body.password is not None:
        if own:
            if body.current_password is None:
                raise ApiError(
                    422,
                    "changing your own password needs current_password",
                    details=[{"field": "current_password", "problem": "missing"}],
                )
            if not await asyncio.to_thread(
                password_matches, body.current_password, target.password_hash
            ):
                raise ApiError(403, "current_password is wrong")
        changes["password_hash"] = await asyncio.to_thread(hash_password, body.password)
    async with request.app.state.engine.begin() as conn:
        await catalog.update_user(conn, user_id, changes)
        row = await catalog.get_user(conn, user_id, None)
    return _user(row)


@router.delete(
    "/users/{user_id}",
    status_code=204,
    summary="Delete a user",
    responses=errors.responses(
        403, 404, 409, messages={403: "only platform admins can change or delete an admin",
                                 404: "no user 7", 409: "you cannot delete yourself"}
    ),
)  # fmt: skip
async def delete_user(
    request: Request, user_id: UserId, caller: Annotated[Caller, role("owner")]
) -> None:
    """Delete a user (owners within their tenant, admins); nobody deletes themselves."""
    target = await _visible_user(request, caller, user_id)
    if user_id == caller.user_id:
        raise ApiError(409, "you cannot delete yourself")
    _guard_admin(caller, target)
    async with request.app.state.engine.begin() as conn:
        await catalog.delete_user(conn, user_id)
