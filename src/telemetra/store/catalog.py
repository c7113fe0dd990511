"""Interning of metric names and the device registry, with in-memory caches in front.

Metric names become small integer ids once; devices are looked up by uid. Both caches are
per process; new names are inserted in their own short transaction so that an id handed out
always exists, even when the batch that first used it rolls back.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson
from sqlalchemy import Text, and_, case, cast, exists, false, func, select, type_coerce
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from telemetra.broker.mosquitto import CHIRPSTACK_USERNAME, INGEST_USERNAME
from telemetra.credentials import mosquitto_hash, new_token, token_hash
from telemetra.model import Device, valid_device_uid
from telemetra.store.schema import (
    DEFAULT_TENANT,
    dead_letters,
    device_certificates,
    device_quality,
    devices,
    event_times,
    latest,
    metric_rules,
    metrics,
    readings,
    rollup_1h,
    rollup_1m,
    tenants,
    users,
)


def now_us() -> int:
    """The current time in µs since the epoch."""
    return time.time_ns() // 1000


def dialect_insert(conn: AsyncConnection, table: Any) -> Any:
    """An INSERT supporting ``on_conflict_do_*`` on PostgreSQL and SQLite alike."""
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


class MetricIds:
    """Metric name -> id, created on first use."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    @property
    def ids(self) -> dict[str, int]:
        """The names resolved so far."""
        return self._ids

    async def resolve(self, engine: AsyncEngine, names: Iterable[str]) -> dict[str, int]:
        """Ids for ``names``, inserting unknown ones (committed at once)."""
        missing = {n for n in names if n not in self._ids}
        if missing:
            async with engine.begin() as conn:
                stmt = dialect_insert(conn, metrics).on_conflict_do_nothing(index_elements=["name"])
                await conn.execute(stmt, [{"name": n, "kind": "gauge"} for n in sorted(missing)])
                rows = await conn.execute(
                    select(metrics.c.name, metrics.c.id).where(metrics.c.name.in_(missing))
                )
                self._ids.update({name: mid for name, mid in rows})
        return self._ids


def _device(row: Any) -> Device:
    return Device(row.id, row.tenant_id, row.uid, row.type, row.timezone, row.clock_offset_us)


class DeviceRegistry:
    """Device uid -> Device, cached for a while (unknown uids for less).

    Entries are re-read after ``known_ttl_s``, so a disabled or deleted device, or an edited
    time zone, reaches running workers within that time.
    """

    def __init__(self, known_ttl_s: float = 60.0, unknown_ttl_s: float = 5.0) -> None:
        self._known: dict[str, tuple[Device, float]] = {}  # uid -> (device, valid until)
        self._unknown: dict[str, float] = {}  # uid -> not asked again until
        self._known_ttl = known_ttl_s
        self._unknown_ttl = unknown_ttl_s
        self.tenant_zones: dict[int, str | None] = {}

    async def lookup(self, engine: AsyncEngine, uids: Iterable[str]) -> dict[str, Device]:
        """Registered, active devices among ``uids`` (others are simply absent)."""
        clock = time.monotonic()
        known, unknown = self._known, self._unknown
        wanted = {
            u for u in uids
            if known.get(u, (None, 0.0))[1] <= clock and unknown.get(u, 0.0) <= clock
        }  # fmt: skip
        if wanted:
            for uid in wanted:
                known.pop(uid, None)
            async with engine.connect() as conn:
                rows = await conn.execute(
                    select(devices, tenants.c.timezone.label("tenant_timezone"))
                    .join(tenants, tenants.c.id == devices.c.tenant_id)
                    .where(devices.c.uid.in_(wanted), devices.c.status == "active")
                )
                for row in rows:
                    known[row.uid] = (_device(row), clock + self._known_ttl)
                    self.tenant_zones[row.tenant_id] = row.tenant_timezone
            for uid in wanted - known.keys():
                unknown[uid] = clock + self._unknown_ttl
        return {u: known[u][0] for u in uids if u in known}

    async def register(self, engine: AsyncEngine, uids: Iterable[str]) -> dict[str, Device]:
        """Auto-register ``uids`` into the default tenant (idempotent)."""
        wanted = sorted(set(uids))
        if not wanted:
            return {}
        async with engine.begin() as conn:
            tenant_id = await default_tenant_id(conn)
            stmt = dialect_insert(conn, devices).on_conflict_do_nothing(index_elements=["uid"])
            created = now_us()
            await conn.execute(
                stmt,
                [
                    {"tenant_id": tenant_id, "uid": u, "name": u, "metadata": {},
                     "status": "active", "created_at": created}
                    for u in wanted
                ],
            )  # fmt: skip
        for uid in wanted:
            self._unknown.pop(uid, None)
        return await self.lookup(engine, wanted)


async def default_tenant_id(conn: AsyncConnection) -> int:
    """The id of the tenant created by the first migration."""
    tenant_id = await conn.scalar(select(tenants.c.id).where(tenants.c.name == DEFAULT_TENANT))
    if tenant_id is None:
        raise LookupError("the default tenant is missing; run `telemetra migrate`")
    return int(tenant_id)


async def create_tenant(conn: AsyncConnection, name: str, timezone: str | None = None) -> int:
    """Create a tenant; ValueError when the name is taken."""
    if await conn.scalar(select(tenants.c.id).where(tenants.c.name == name)) is not None:
        raise ValueError(f"tenant {name!r} already exists")
    result = await conn.execute(
        tenants.insert()
        .values(name=name, timezone=timezone, created_at=now_us())
        .returning(tenants.c.id)
    )
    return int(result.scalar_one())


async def update_tenant(conn: AsyncConnection, tenant_id: int, changes: dict[str, Any]) -> None:
    """Rename a tenant or change its time zone; ValueError when the new name is taken, or when
    the default tenant would be renamed (ingest and the CLI find it by name)."""
    name = changes.get("name")
    if name is not None:
        current = await conn.scalar(select(tenants.c.name).where(tenants.c.id == tenant_id))
        if current == DEFAULT_TENANT and name != DEFAULT_TENANT:
            raise ValueError(f"the {DEFAULT_TENANT!r} tenant keeps its name")
        taken = await conn.scalar(
            select(tenants.c.id).where(tenants.c.name == name, tenants.c.id != tenant_id)
        )
        if taken is not None:
            raise ValueError(f"tenant {name!r} already exists")
    allowed = {k: v for k, v in changes.items() if k in ("name", "timezone")}
    if allowed:
        await conn.execute(tenants.update().where(tenants.c.id == tenant_id).values(**allowed))


async def delete_tenant(conn: AsyncConnection, tenant_id: int) -> int:
    """Delete a tenant with everything it holds: devices with their data (certificates
    revoked for good), users, cleaning rules, dead letters. Returns the number of devices.
    ValueError for the default tenant."""
    name = await conn.scalar(select(tenants.c.name).where(tenants.c.id == tenant_id))
    if name == DEFAULT_TENANT:
        raise ValueError(f"the {DEFAULT_TENANT!r} tenant cannot be deleted")
    count = await _remove_devices(conn, devices.c.tenant_id == tenant_id)
    for table in (dead_letters, metric_rules, users):
        await conn.execute(table.delete().where(table.c.tenant_id == tenant_id))
    await conn.execute(tenants.delete().where(tenants.c.id == tenant_id))
    return count


async def tenant_id_by_name(conn: AsyncConnection, name: str) -> int:
    """The id of tenant ``name``; LookupError when there is none."""
    tenant_id = await conn.scalar(select(tenants.c.id).where(tenants.c.name == name))
    if tenant_id is None:
        raise LookupError(f"no tenant named {name!r}")
    return int(tenant_id)


# The broker's own logins (telemetra.broker.mosquitto): a device with one of these ids would
# get 201 yet never log in, since the broker keeps the name for the service.
RESERVED_DEVICE_IDS = frozenset({INGEST_USERNAME, CHIRPSTACK_USERNAME})


# Device metadata is free-form JSON, bounded so that no device can break a listing (pydantic
# and orjson give up on nesting deeper than ~255 levels) or bloat every page.
METADATA_MAX_DEPTH = 8  # the metadata object itself is level 1
METADATA_MAX_BYTES = 16 * 1024  # as compact JSON
METADATA_MAX_KEYS = 256  # in all objects together
METADATA_MAX_KEY_CHARS = 128


def metadata_problem(metadata: Any) -> str | None:
    """Why ``metadata`` exceeds the bounds above (or is not a JSON object), or None."""
    if not isinstance(metadata, dict):
        return "metadata must be a JSON object"
    keys = 0
    pending: list[tuple[Any, int]] = [(metadata, 1)]  # a stack, not recursion: any depth is safe
    while pending:
        value, depth = pending.pop()
        # PostgreSQL's JSON operators refuse a whole document holding a NUL escape.
        if isinstance(value, str) and "\x00" in value:
            return "metadata holds a NUL character (\\u0000), which cannot be stored"
        if isinstance(value, dict) and any("\x00" in k for k in value):
            return "metadata holds a NUL character (\\u0000), which cannot be stored"
        if isinstance(value, dict | list):
            if depth > METADATA_MAX_DEPTH:
                return f"metadata is nested deeper than {METADATA_MAX_DEPTH} levels"
            if isinstance(value, dict):
                keys += len(value)
                if keys > METADATA_MAX_KEYS:
                    return f"metadata has more than {METADATA_MAX_KEYS} keys"
                longest = max(map(len, value), default=0)
                if longest > METADATA_MAX_KEY_CHARS:
                    return f"metadata keys have at most {METADATA_MAX_KEY_CHARS} characters"
                children = list(value.values())
            else:
                children = value
            pending.extend((child, depth + 1) for child in children)
    try:
        encoded = orjson.dumps(metadata)
    except (TypeError, orjson.JSONEncodeError):
        return "metadata must be plain JSON (integers within 64 bits)"
    size = len(encoded)
    if size > METADATA_MAX_BYTES:
        return f"metadata is {size} bytes as JSON; at most {METADATA_MAX_BYTES} are allowed"
    return None


def reserved_device_id(uid: str, reserved: Iterable[str] = ()) -> str | None:
    """Why ``uid`` may not be a device id because a broker service uses it, or None."""
    if uid in RESERVED_DEVICE_IDS or uid in reserved:
        return (
            f"device id {uid!r} is reserved: it is the broker login of a Telemetra service; "
            "choose another"
        )
    return None


def device_id_taken(uid: str) -> str:
    """Why ``uid`` cannot be registered: the same words whichever tenant holds it (device ids
    are MQTT usernames and topic levels, so one namespace for the whole installation)."""
    return (
        f"device {uid!r} already exists: device ids are unique across the installation "
        "(they are MQTT usernames and topic levels); choose another, e.g. with a prefix "
        "of your own"
    )


async def create_device(
    conn: AsyncConnection,
    tenant_id: int,
    uid: str,
    *,
    name: str | None = None,
    type: str | None = None,
    timezone: str | None = None,
    metadata: dict[str, Any] | None = None,
    reserved: Iterable[str] = (),
) -> str:
    """Register a device and return its new token (shown once; only a hash is stored).

    ValueError when ``uid`` is invalid, reserved (the broker's service logins, and any in
    ``reserved``) or taken, as far as this connection sees; under Row-Level Security another
    tenant's device is invisible and the insert raises IntegrityError.
    """
    if not valid_device_uid(uid):
        raise ValueError(
            f"invalid device id {uid!r}: 1–128 printable characters without spaces at the "
            "ends and without '/', '+', '#', ':' (device ids become MQTT topic levels)"
        )
    if (why := reserved_device_id(uid, reserved)) is not None:
        raise ValueError(why)
    if (why := metadata_problem(metadata or {})) is not None:
        raise ValueError(why)
    if await conn.scalar(select(devices.c.id).where(devices.c.uid == uid)) is not None:
        raise ValueError(device_id_taken(uid))
    token = new_token()
    await conn.execute(
        devices.insert().values(
            tenant_id=tenant_id, uid=uid, name=name or uid, type=type, timezone=timezone,
            metadata=metadata or {}, status="active", token_hash=token_hash(token),
            broker_hash=mosquitto_hash(token), created_at=now_us(),
        )
    )  # fmt: skip
    return token


async def list_devices(conn: AsyncConnection, tenant_id: int | None = None) -> list[Any]:
    """Devices (of one tenant, or all), by uid."""
    query = select(devices, tenants.c.name.label("tenant")).join(
        tenants, tenants.c.id == devices.c.tenant_id
    )
    if tenant_id is not None:
        query = query.where(devices.c.tenant_id == tenant_id)
    return list((await conn.execute(query.order_by(devices.c.uid))).all())


async def set_rule(
    conn: AsyncConnection,
    metric: str,
    *,
    tenant_id: int | None = None,
    device_type: str | None = None,
    min_value: float | None = None,
    max_value: float | None = None,
    unit: str | None = None,
    kind: str | None = None,
) -> None:
    """Store (replace) the cleaning rule of one scope: metric, tenant or all, device type or all."""
    if min_value is not None and max_value is not None and min_value > max_value:
        raise ValueError(f"--min {min_value:g} is above --max {max_value:g}")
    if kind not in (None, "gauge", "counter"):
        raise ValueError(f"kind must be gauge or counter, not {kind!r}")
    scope = (
        metric_rules.c.metric == metric,
        metric_rules.c.tenant_id.is_(None)
        if tenant_id is None
        else metric_rules.c.tenant_id == tenant_id,
        metric_rules.c.device_type.is_(None)
        if device_type is None
        else metric_rules.c.device_type == device_type,
    )
    await conn.execute(metric_rules.delete().where(*scope))
    await conn.execute(
        metric_rules.insert().values(
            tenant_id=tenant_id, metric=metric, device_type=device_type,
            min_value=min_value, max_value=max_value, unit=unit, kind=kind,
        )
    )  # fmt: skip


async def list_rules(conn: AsyncConnection) -> list[Any]:
    """Stored cleaning rules with their tenant names."""
    query = (
        select(metric_rules, tenants.c.name.label("tenant"))
        .outerjoin(tenants, tenants.c.id == metric_rules.c.tenant_id)
        .order_by(metric_rules.c.metric, metric_rules.c.device_type, metric_rules.c.tenant_id)
    )
    return list((await conn.execute(query)).all())


def _device_query() -> Any:
    """Device rows with their tenant's name (``tenant_name``)."""
    return select(devices, tenants.c.name.label("tenant_name")).join(
        tenants, tenants.c.id == devices.c.tenant_id
    )


async def get_device(conn: AsyncConnection, uid: str, tenant_id: int | None) -> Any:
    """A device row (with ``tenant_name``) by uid, within ``tenant_id`` (None: any tenant);
    None when not visible."""
    query = _device_query().where(devices.c.uid == uid)
    if tenant_id is not None:
        query = query.where(devices.c.tenant_id == tenant_id)
    return (await conn.execute(query)).one_or_none()


async def device_by_token(conn: AsyncConnection, token: str) -> Any:
    """The active device a token belongs to, or None."""
    row = (
        await conn.execute(select(devices).where(devices.c.token_hash == token_hash(token)))
    ).one_or_none()
    return row if row is not None and row.status == "active" else None


DEVICE_SORTS = ("uid", "-uid", "last_seen", "-last_seen", "type", "-type", "name", "-name")
ONLINE_STATES = ("true", "false", "unknown")


def _has_tag(conn: AsyncConnection, tag: str) -> Any:
    """Devices whose metadata ``tags`` is a list holding the string ``tag`` (exactly)."""
    meta = devices.c.metadata
    if conn.dialect.name == "postgresql":  # a json column: as jsonb, list containment
        tags = cast(meta, postgresql.JSONB)["tags"]
        # Metadata stored before NUL characters were refused cannot become jsonb: such a
        # device has no tags here rather than failing the whole listing.
        unreadable = func.strpos(cast(meta, Text), "\\u0000") > 0
        return case(
            (unreadable, false()), else_=tags.contains(type_coerce([tag], postgresql.JSONB))
        )
    each = func.json_each(meta, "$.tags").table_valued("value", "type").alias("tag")
    return and_(
        func.json_type(meta, "$.tags") == "array",
        exists().where(each.c.type == "text", each.c.value == tag),
    )


def _device_order(conn: AsyncConnection, sort: str) -> list[Any]:
    """ORDER BY for a sort key (``-`` first: descending): devices without a value last either
    way, then by uid, so that offset pages never overlap or skip. Names and types compare
    case-insensitively, character by character, alike on SQLite and PostgreSQL."""
    if sort not in DEVICE_SORTS:
        raise ValueError(f"unknown sort {sort!r}: expected one of {', '.join(DEVICE_SORTS)}")
    column = devices.c[sort.removeprefix("-")]
    descending = sort.startswith("-")
    if column is devices.c.uid:
        return [column.desc() if descending else column.asc()]
    key: Any = column
    if column is not devices.c.last_seen:
        key = func.lower(column)
        if conn.dialect.name == "postgresql":  # not the database's locale order
            key = key.collate("C")
    return [column.is_(None), key.desc() if descending else key.asc(), devices.c.uid]


async def find_devices(
    conn: AsyncConnection,
    tenant_id: int | None,
    *,
    status: str | None = None,
    type: str | None = None,
    text: str | None = None,
    tag: str | None = None,
    online: str | None = None,
    sort: str = "uid",
    limit: int = 100,
    offset: int = 0,
) -> list[Any]:
    """Devices (with ``tenant_name``) of a tenant (None: all), filtered, one page in ``sort``
    order (a key of ``DEVICE_SORTS``). ``tag``: metadata ``tags`` holds it; ``online``:
    "true", "false" or "unknown" (not judged yet)."""
    query = _device_query().order_by(*_device_order(conn, sort)).limit(limit).offset(offset)
    if tenant_id is not None:
        query = query.where(devices.c.tenant_id == tenant_id)
    if status is not None:
        query = query.where(devices.c.status == status)
    if type is not None:
        query = query.where(devices.c.type == type)
    if text:
        pattern = f"%{text.lower()}%"
        query = query.where(
            func.lower(devices.c.uid).like(pattern) | func.lower(devices.c.name).like(pattern)
        )
    if tag is not None:
        query = query.where(_has_tag(conn, tag))
    if online is not None:
        if online not in ONLINE_STATES:
            raise ValueError(f"unknown online {online!r}: expected one of true, false, unknown")
        state = {"true": devices.c.online.is_(True), "false": devices.c.online.is_(False)}
        query = query.where(state.get(online, devices.c.online.is_(None)))
    return list((await conn.execute(query)).all())


async def update_device(conn: AsyncConnection, device_id: int, changes: dict[str, Any]) -> None:
    """Change a device's editable fields (name, type, timezone, metadata, status)."""
    if changes:
        await conn.execute(devices.update().where(devices.c.id == device_id).values(**changes))


async def rotate_token(conn: AsyncConnection, device_id: int) -> str:
    """Give a device a new token (the old one stops working); returns it once."""
    token = new_token()
    await conn.execute(
        devices.update()
        .where(devices.c.id == device_id)
        .values(token_hash=token_hash(token), broker_hash=mosquitto_hash(token))
    )
    return token


async def delete_device(conn: AsyncConnection, device_id: int) -> None:
    """Delete a device with its readings, rollups, latest values and quality record; its
    client certificates are revoked for good (a device created later under the same id must
    not be reachable with them)."""
    await _remove_devices(conn, devices.c.id == device_id)


async def _remove_devices(conn: AsyncConnection, which: Any) -> int:
    """Delete the devices matching ``which`` (a condition on ``devices``) with all their data,
    revoking their certificates for good; returns how many there were."""
    ids = select(devices.c.id).where(which)
    count = len((await conn.execute(ids)).all())
    await conn.execute(
        device_certificates.update()
        .where(
            device_certificates.c.device_uid.in_(select(devices.c.uid).where(which)),
            device_certificates.c.revoked_at.is_(None),
        )
        .values(revoked_at=now_us())
    )
    for table in (readings, rollup_1m, rollup_1h, latest, device_quality, event_times):
        await conn.execute(table.delete().where(table.c.device_id.in_(ids)))
    await conn.execute(devices.delete().where(which))
    return count


async def record_certificate(
    conn: AsyncConnection, tenant_id: int, uid: str, serial: str, not_after: int
) -> None:
    """Remember a client certificate issued to a device (for the revocation list)."""
    await conn.execute(
        device_certificates.insert().values(
            serial=serial, tenant_id=tenant_id, device_uid=uid, issued_at=now_us(),
            not_after=not_after,
        )
    )  # fmt: skip


async def blocked_identities(conn: AsyncConnection) -> list[str]:
    """Device ids that may do nothing on the broker: disabled devices, and deleted ones whose
    certificates have not expired yet (unless a device holds the id again)."""
    disabled = select(devices.c.uid).where(devices.c.status != "active")
    gone = select(device_certificates.c.device_uid).where(
        device_certificates.c.revoked_at.is_not(None),
        device_certificates.c.not_after > now_us(),
        device_certificates.c.device_uid.not_in(select(devices.c.uid)),
    )
    rows = await conn.execute(disabled.union(gone))
    return sorted(str(uid) for (uid,) in rows)


async def revoked_serials(conn: AsyncConnection) -> list[str]:
    """Serials (hex) of unexpired certificates the broker must refuse: revoked ones (their
    device was deleted) and those of devices that are not active."""
    inactive = select(devices.c.uid).where(devices.c.status != "active")
    rows = await conn.execute(
        select(device_certificates.c.serial)
        .where(
            device_certificates.c.not_after > now_us(),
            device_certificates.c.revoked_at.is_not(None)
            | device_certificates.c.device_uid.in_(inactive),
        )
        .order_by(device_certificates.c.serial)
    )
    return [str(serial) for (serial,) in rows]


async def create_user(
    conn: AsyncConnection, tenant_id: int, username: str, password_hash: str, role: str
) -> int:
    """Create a user (the password arrives hashed); ValueError when the name is taken."""
    if role not in ("admin", "owner", "operator", "viewer"):
        raise ValueError(f"role must be admin, owner, operator or viewer, not {role!r}")
    if not username or len(username) > 200 or not username.isprintable():
        raise ValueError("username must be 1–200 printable characters")
    if await conn.scalar(select(users.c.id).where(users.c.username == username)) is not None:
        raise ValueError(f"user {username!r} already exists")
    result = await conn.execute(
        users.insert()
        .values(
            tenant_id=tenant_id, username=username, password_hash=password_hash, role=role,
            disabled=False, created_at=now_us(),
        )
        .returning(users.c.id)
    )  # fmt: skip
    return int(result.scalar_one())


# --- tenants and users (API accounts) ---


def _user_query() -> Any:
    return select(users, tenants.c.name.label("tenant")).join(
        tenants, tenants.c.id == users.c.tenant_id
    )


async def find_tenants(
    conn: AsyncConnection,
    tenant_id: int | None,
    *,
    text: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Any]:
    """Tenants (one, or all when ``tenant_id`` is None), filtered by name text, one page."""
    query = select(tenants).order_by(tenants.c.name).limit(limit).offset(offset)
    if tenant_id is not None:
        query = query.where(tenants.c.id == tenant_id)
    if text:
        query = query.where(func.lower(tenants.c.name).contains(text.lower(), autoescape=True))
    return list((await conn.execute(query)).all())


async def tenant_overview(conn: AsyncConnection) -> list[Any]:
    """Every tenant by name, with its numbers of devices and users."""
    device_count = select(func.count()).where(devices.c.tenant_id == tenants.c.id).scalar_subquery()
    user_count = select(func.count()).where(users.c.tenant_id == tenants.c.id).scalar_subquery()
    query = select(tenants, device_count.label("devices"), user_count.label("users")).order_by(
        tenants.c.name
    )
    return list((await conn.execute(query)).all())


async def get_tenant(conn: AsyncConnection, tenant_id: int) -> Any:
    """A tenant row by id, or None."""
    return (await conn.execute(select(tenants).where(tenants.c.id == tenant_id))).one_or_none()


async def get_user(conn: AsyncConnection, user_id: int, tenant_id: int | None) -> Any:
    """A user row (with tenant name) within ``tenant_id`` (None: any); None when not visible."""
    query = _user_query().where(users.c.id == user_id)
    if tenant_id is not None:
        query = query.where(users.c.tenant_id == tenant_id)
    return (await conn.execute(query)).one_or_none()


async def username_taken(conn: AsyncConnection, username: str) -> bool:
    """Whether any tenant has a user called ``username`` (names are global: login is by name)."""
    return await conn.scalar(select(users.c.id).where(users.c.username == username)) is not None


async def find_users(
    conn: AsyncConnection,
    tenant_id: int | None,
    *,
    text: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Any]:
    """Users (with tenant names) of a tenant (None: all), filtered by username text, one page."""
    query = _user_query().order_by(users.c.username).limit(limit).offset(offset)
    if tenant_id is not None:
        query = query.where(users.c.tenant_id == tenant_id)
    if text:
        query = query.where(func.lower(users.c.username).contains(text.lower(), autoescape=True))
    return list((await conn.execute(query)).all())


async def update_user(conn: AsyncConnection, user_id: int, changes: dict[str, Any]) -> None:
    """Change a user's role, disabled flag or password hash."""
    allowed = {"role", "disabled", "password_hash"}
    if unknown := changes.keys() - allowed:
        raise ValueError(f"users cannot change {sorted(unknown)}")
    if changes:
        await conn.execute(users.update().where(users.c.id == user_id).values(**changes))


async def delete_user(conn: AsyncConnection, user_id: int) -> None:
    """Delete a user."""
    await conn.execute(users.delete().where(users.c.id == user_id))


async def devices_without_broker_password(conn: AsyncConnection) -> list[str]:
    """Active devices registered before broker passwords existed (their token must rotate)."""
    rows = await conn.execute(
        select(devices.c.uid)
        .where(devices.c.status == "active", devices.c.broker_hash.is_(None))
        .order_by(devices.c.uid)
    )
    return list(rows.scalars())
