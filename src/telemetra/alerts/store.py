"""Alert rules and alerts in the database (SQLAlchemy Core): rule CRUD, the alert lifecycle
(open → acknowledged → resolved), the engine's per-series state and the notification outbox.

A rule is stored as the JSON of ``alerts.rules.Rule`` (``definition``); this module reads only
``name``, ``kind``, ``severity``, ``enabled`` and ``channels`` from it. Every alert change
writes one outbox row per channel of its rule in the same transaction: run these functions
inside ``engine.begin()``. Queries are scoped by ``tenant_id`` where one is given (None: every
tenant, for platform admins and the CLI); Row-Level Security holds beneath.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Select, and_, or_, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from telemetra.ingest.timestamps import format_us
from telemetra.store.catalog import dialect_insert, now_us
from telemetra.store.schema import (
    OPEN_ALERT,
    alert_rules,
    alert_series_state,
    alerts,
    devices,
    metrics,
    notification_outbox,
    readings,
)

FIRING = "firing"
ACKNOWLEDGED = "acknowledged"
RESOLVED = "resolved"
STATES = (FIRING, ACKNOWLEDGED, RESOLVED)
SEVERITIES = ("info", "warning", "critical")
AUTO = "auto"  # resolved_by when the clear condition held
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
_CURSOR = "a1"
# The partial index's predicate as a literal: PostgreSQL cannot match a bound parameter to it.
_OPEN_LITERAL = text("state <> 'resolved'")


class RuleNameTaken(ValueError):
    """The tenant already has a rule of that name."""

    @staticmethod
    def message(name: str) -> str:
        return f"an alert rule named {name!r} already exists; choose another name"


class AlertStateError(ValueError):
    """The alert is not in a state that allows the change (acknowledging a resolved one …)."""


@dataclass(frozen=True, slots=True)
class StoredRule:
    """A rule as stored: its definition (``alerts.rules.Rule`` as JSON) and bookkeeping."""

    id: int
    tenant_id: int
    name: str
    kind: str
    severity: str
    enabled: bool
    definition: dict[str, Any]
    created_at: int
    updated_at: int

    @property
    def channels(self) -> list[dict[str, Any]]:
        return list(self.definition.get("channels") or [])


@dataclass(frozen=True, slots=True)
class Notification:
    """One delivery of an alert change to one channel."""

    id: int
    alert_id: int
    channel: str
    channel_index: int
    event: str
    status: str  # pending | delivered | failed
    attempts: int
    last_error: str | None
    next_attempt_at: int | None
    created_at: int
    delivered_at: int | None
    target: dict[str, Any] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert of one series (rule, device, metric); ``metric`` None: the device as a whole."""

    id: int
    tenant_id: int
    rule_id: int
    rule: str
    device: str
    metric: str | None
    severity: str
    state: str
    flapping: bool
    value: float | None
    message: str
    started_at: int
    acknowledged_at: int | None
    acknowledged_by: str | None
    note: str | None
    resolved_at: int | None
    resolved_by: str | None
    updated_at: int

    @property
    def open(self) -> bool:
        return self.state != RESOLVED


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """Which alerts: of a tenant (None: every tenant), in these states and severities (empty:
    any), of a device, of a rule (by id or name), active at some time in [since, until)."""

    tenant_id: int | None = None
    states: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    device: str | None = None
    rule_id: int | None = None
    rule_name: str | None = None
    since: int | None = None
    until: int | None = None


@dataclass(frozen=True, slots=True)
class AlertPage:
    """Alerts newest first (by start); pass ``next_cursor`` back for the next page."""

    items: list[Alert]
    next_cursor: str | None


# --- rules ------------------------------------------------------------------------------------


def _rule(row: Any) -> StoredRule:
    return StoredRule(
        id=int(row.id), tenant_id=int(row.tenant_id), name=str(row.name), kind=str(row.kind),
        severity=str(row.severity), enabled=bool(row.enabled), definition=dict(row.definition),
        created_at=int(row.created_at), updated_at=int(row.updated_at),
    )  # fmt: skip


def _rule_columns(definition: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": str(definition["name"]),
        "kind": str(definition["kind"]),
        "severity": str(definition.get("severity", "warning")),
        "enabled": bool(definition.get("enabled", True)),
        "definition": definition,
    }


async def _check_name(
    conn: AsyncConnection, tenant_id: int, name: str, rule_id: int | None = None
) -> None:
    r = alert_rules.c
    query = select(r.id).where(r.tenant_id == tenant_id, r.name == name)
    if rule_id is not None:
        query = query.where(r.id != rule_id)
    if await conn.scalar(query) is not None:
        raise RuleNameTaken(RuleNameTaken.message(name))


async def create_rule(
    conn: AsyncConnection, tenant_id: int, definition: dict[str, Any], *, at: int | None = None
) -> StoredRule:
    """Store a new rule of ``tenant_id``; RuleNameTaken when the tenant has one of that name."""
    at = now_us() if at is None else at
    columns = _rule_columns(definition)
    await _check_name(conn, tenant_id, columns["name"])
    rule_id = await conn.scalar(
        alert_rules.insert()
        .values(tenant_id=tenant_id, created_at=at, updated_at=at, **columns)
        .returning(alert_rules.c.id)
    )
    found = await get_rule(conn, int(rule_id or 0), tenant_id)
    assert found is not None  # just inserted, in this transaction
    return found


async def get_rule(conn: AsyncConnection, rule_id: int, tenant_id: int | None) -> StoredRule | None:
    """Rule ``rule_id`` if ``tenant_id`` (None: any tenant) may see it."""
    query = select(alert_rules).where(alert_rules.c.id == rule_id)
    if tenant_id is not None:
        query = query.where(alert_rules.c.tenant_id == tenant_id)
    row = (await conn.execute(query)).one_or_none()
    return None if row is None else _rule(row)


async def rules_named(conn: AsyncConnection, name: str, tenant_id: int | None) -> list[StoredRule]:
    """The rules called ``name`` (one per tenant at most) that ``tenant_id`` may see."""
    query = select(alert_rules).where(alert_rules.c.name == name)
    if tenant_id is not None:
        query = query.where(alert_rules.c.tenant_id == tenant_id)
    return [_rule(row) for row in await conn.execute(query.order_by(alert_rules.c.tenant_id))]


async def list_rules(
    conn: AsyncConnection, tenant_id: int | None, *, enabled: bool | None = None
) -> list[StoredRule]:
    """Rules of ``tenant_id`` (None: every tenant), by tenant and name."""
    r = alert_rules.c
    query = select(alert_rules)
    if tenant_id is not None:
        query = query.where(r.tenant_id == tenant_id)
    if enabled is not None:
        query = query.where(r.enabled == enabled)
    return [_rule(row) for row in await conn.execute(query.order_by(r.tenant_id, r.name, r.id))]


async def update_rule(
    conn: AsyncConnection,
    rule: StoredRule,
    definition: dict[str, Any],
    *,
    at: int | None = None,
    by: str = AUTO,
) -> StoredRule:
    """Replace ``rule``'s definition (a rename follows into its alerts); RuleNameTaken.
    Disabling it resolves its open alerts ``by`` whoever did, and forgets its engine state:
    enabled again, it starts afresh."""
    at = now_us() if at is None else at
    if rule.enabled and not definition.get("enabled", True):
        query = select(alerts).where(alerts.c.rule_id == rule.id, OPEN_ALERT)
        for row in (await conn.execute(query.order_by(alerts.c.id))).all():
            note = None if row.note else "rule disabled"  # an operator's note stays
            await resolve(conn, _alert(row), by, at=at, note=note, rule=rule)
        await forget_series_state(conn, rule.id)
    columns = _rule_columns(definition)
    await _check_name(conn, rule.tenant_id, columns["name"], rule.id)
    await conn.execute(
        update(alert_rules).where(alert_rules.c.id == rule.id).values(updated_at=at, **columns)
    )
    if columns["name"] != rule.name:
        await conn.execute(
            update(alerts).where(alerts.c.rule_id == rule.id).values(rule_name=columns["name"])
        )
    found = await get_rule(conn, rule.id, rule.tenant_id)
    assert found is not None
    return found


async def delete_rule(
    conn: AsyncConnection, rule: StoredRule, by: str, *, at: int | None = None
) -> list[Alert]:
    """Delete ``rule`` and its engine state; its open alerts are resolved ``by`` the one who
    deleted it (notifying its channels), and every alert of it is kept. Returns those resolved."""
    at = now_us() if at is None else at
    resolved = []
    query = select(alerts).where(alerts.c.rule_id == rule.id, OPEN_ALERT)
    for row in (await conn.execute(query.order_by(alerts.c.id))).all():
        resolved.append(await resolve(conn, _alert(row), by, at=at, rule=rule))
    s = alert_series_state.c
    await conn.execute(alert_series_state.delete().where(s.rule_id == rule.id))
    await conn.execute(alert_rules.delete().where(alert_rules.c.id == rule.id))
    return resolved


async def forget_device(
    conn: AsyncConnection, tenant_id: int, device: str, by: str, *, at: int | None = None
) -> list[Alert]:
    """Before a device is deleted: resolve its open alerts ``by`` whoever deletes it (note
    ``device deleted``; the history stays) and drop its engine state. Returns those resolved."""
    at = now_us() if at is None else at
    a, s = alerts.c, alert_series_state.c
    query = select(alerts).where(a.tenant_id == tenant_id, a.device == device, OPEN_ALERT)
    resolved = []
    for row in (await conn.execute(query.order_by(a.id))).all():
        note = None if row.note else "device deleted"
        resolved.append(await resolve(conn, _alert(row), by, at=at, note=note))
    await conn.execute(
        alert_series_state.delete().where(s.tenant_id == tenant_id, s.device == device)
    )
    return resolved


# --- alerts -----------------------------------------------------------------------------------


def _alert(row: Any) -> Alert:
    def maybe(value: Any) -> int | None:
        return None if value is None else int(value)

    return Alert(
        id=int(row.id), tenant_id=int(row.tenant_id), rule_id=int(row.rule_id),
        rule=str(row.rule_name), device=str(row.device), metric=row.metric or None,
        severity=str(row.severity), state=str(row.state), flapping=bool(row.flapping),
        value=None if row.value is None else float(row.value), message=str(row.message),
        started_at=int(row.started_at), acknowledged_at=maybe(row.acknowledged_at),
        acknowledged_by=row.acknowledged_by, note=row.note, resolved_at=maybe(row.resolved_at),
        resolved_by=row.resolved_by, updated_at=int(row.updated_at),
    )  # fmt: skip


def alert_json(alert: Alert) -> dict[str, Any]:
    """An alert as the API shows it and notifications carry it (without ``notifications``)."""

    def when(value: int | None) -> str | None:
        return None if value is None else format_us(value)

    return {
        "id": alert.id, "rule_id": alert.rule_id, "rule": alert.rule, "device": alert.device,
        "metric": alert.metric, "severity": alert.severity, "state": alert.state,
        "flapping": alert.flapping, "value": alert.value, "message": alert.message,
        "started_at": format_us(alert.started_at), "acknowledged_at": when(alert.acknowledged_at),
        "acknowledged_by": alert.acknowledged_by, "note": alert.note,
        "resolved_at": when(alert.resolved_at), "resolved_by": alert.resolved_by,
    }  # fmt: skip


async def _notify(
    conn: AsyncConnection, alert: Alert, event: str, rule: StoredRule | None, at: int
) -> None:
    """One outbox row per channel of ``rule`` (none when the rule is gone)."""
    if rule is None or not rule.channels:
        return
    payload = {**alert_json(alert), "event": event}
    await conn.execute(
        notification_outbox.insert(),
        [
            {
                "tenant_id": alert.tenant_id,
                "alert_id": alert.id,
                "rule_id": alert.rule_id,
                "channel": str(channel.get("kind", "")),
                "channel_index": index,
                "target": channel,
                "event": event,
                "payload": payload,
                "status": PENDING,
                "attempts": 0,
                "next_attempt_at": at,
                "created_at": at,
            }
            for index, channel in enumerate(rule.channels)
        ],
    )


async def _open_alert_of(
    conn: AsyncConnection, rule_id: int, device: str, metric: str | None
) -> Alert | None:
    a = alerts.c
    query = select(alerts).where(
        a.rule_id == rule_id, a.device == device, a.metric == (metric or ""), OPEN_ALERT
    )
    row = (await conn.execute(query)).one_or_none()
    return None if row is None else _alert(row)


async def open_alert(
    conn: AsyncConnection,
    rule: StoredRule,
    device: str,
    metric: str | None,
    *,
    value: float | None,
    message: str,
    started_at: int,
    flapping: bool = False,
    at: int | None = None,
) -> tuple[Alert, bool]:
    """Fire an alert for the series (rule, device, metric), or find the one already open (at
    most one, even under concurrent callers). (alert, True) when opened now — then its channels
    are notified — else (the open one, False)."""
    at = now_us() if at is None else at
    insert = dialect_insert(conn, alerts).values(
        tenant_id=rule.tenant_id, rule_id=rule.id, rule_name=rule.name, device=device,
        metric=metric or "", severity=rule.severity, state=FIRING, flapping=flapping,
        value=value, message=message, started_at=started_at, updated_at=at,
    )  # fmt: skip
    statement = insert.on_conflict_do_nothing(
        index_elements=["rule_id", "device", "metric"], index_where=_OPEN_LITERAL
    ).returning(alerts.c.id)
    new_id = await conn.scalar(statement)
    if new_id is None:
        existing = await _open_alert_of(conn, rule.id, device, metric)
        assert existing is not None  # the conflicting row, visible in this transaction
        return existing, False
    alert = await get_alert(conn, int(new_id), rule.tenant_id)
    assert alert is not None
    await _notify(conn, alert, "fired", rule, at)
    return alert, True


async def get_alert(conn: AsyncConnection, alert_id: int, tenant_id: int | None) -> Alert | None:
    """Alert ``alert_id`` if ``tenant_id`` (None: any tenant) may see it."""
    query = select(alerts).where(alerts.c.id == alert_id)
    if tenant_id is not None:
        query = query.where(alerts.c.tenant_id == tenant_id)
    row = (await conn.execute(query)).one_or_none()
    return None if row is None else _alert(row)


def _refusal(alert: Alert, change: str) -> AlertStateError:
    if alert.state == RESOLVED:
        who = f" by {alert.resolved_by}" if alert.resolved_by else ""
        when = format_us(alert.resolved_at) if alert.resolved_at else "?"
        return AlertStateError(f"alert {alert.id} was resolved{who} at {when}: cannot {change}")
    who = alert.acknowledged_by or "?"
    when = format_us(alert.acknowledged_at) if alert.acknowledged_at else "?"
    return AlertStateError(f"alert {alert.id} was already acknowledged by {who} at {when}")


async def _change(
    conn: AsyncConnection, alert: Alert, allowed: Sequence[str], values: dict[str, Any]
) -> Alert | None:
    """Apply ``values`` if the alert is (still) in one of ``allowed``: the new alert, or None."""
    changed = await conn.execute(
        update(alerts).where(alerts.c.id == alert.id, alerts.c.state.in_(allowed)).values(**values)
    )
    return await get_alert(conn, alert.id, alert.tenant_id) if changed.rowcount else None


async def acknowledge(
    conn: AsyncConnection, alert: Alert, by: str, note: str | None = None, *, at: int | None = None
) -> Alert:
    """firing → acknowledged, by whom, when, with an optional note; AlertStateError otherwise."""
    at = now_us() if at is None else at
    values = {"state": ACKNOWLEDGED, "acknowledged_at": at, "acknowledged_by": by,
              "updated_at": at}  # fmt: skip
    if note is not None:
        values["note"] = note
    changed = await _change(conn, alert, (FIRING,), values)
    if changed is None:
        raise _refusal(await get_alert(conn, alert.id, alert.tenant_id) or alert, "acknowledge")
    await _notify(conn, changed, "acknowledged", await get_rule(conn, alert.rule_id, None), at)
    return changed


async def resolve(
    conn: AsyncConnection,
    alert: Alert,
    by: str = AUTO,
    *,
    note: str | None = None,
    at: int | None = None,
    rule: StoredRule | None = None,
) -> Alert:
    """firing or acknowledged → resolved, ``by`` "auto" (the clear condition held) or a user;
    AlertStateError when it is resolved already."""
    at = now_us() if at is None else at
    values: dict[str, Any] = {"state": RESOLVED, "resolved_at": at, "resolved_by": by,
                              "updated_at": at}  # fmt: skip
    if note is not None:
        values["note"] = note
    changed = await _change(conn, alert, (FIRING, ACKNOWLEDGED), values)
    if changed is None:
        raise _refusal(await get_alert(conn, alert.id, alert.tenant_id) or alert, "resolve")
    rule = rule if rule is not None else await get_rule(conn, alert.rule_id, None)
    await _notify(conn, changed, "resolved", rule, at)
    return changed


async def resolve_series(
    conn: AsyncConnection,
    rule: StoredRule,
    device: str,
    metric: str | None,
    *,
    at: int | None = None,
    by: str = AUTO,
) -> Alert | None:
    """Resolve the open alert of (rule, device, metric), if there is one (the engine, when the
    clear condition holds)."""
    found = await _open_alert_of(conn, rule.id, device, metric)
    if found is None:
        return None
    try:
        return await resolve(conn, found, by, at=at, rule=rule)
    except AlertStateError:  # resolved meanwhile by someone else
        return None


async def update_open_alert(
    conn: AsyncConnection,
    alert: Alert,
    *,
    value: float | None = None,
    message: str | None = None,
    flapping: bool | None = None,
    at: int | None = None,
) -> Alert | None:
    """Refresh an open alert's value, message or flapping mark (no notification); None when it
    is resolved meanwhile."""
    values: dict[str, Any] = {"updated_at": now_us() if at is None else at}
    for name, given in (("value", value), ("message", message), ("flapping", flapping)):
        if given is not None:
            values[name] = given
    return await _change(conn, alert, (FIRING, ACKNOWLEDGED), values)


def _encode_cursor(started_at: int, alert_id: int) -> str:
    raw = f"{_CURSOR}:{started_at}:{alert_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int]:
    """(started_at, id) a page continues below; ValueError naming the problem if not ours."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        kind, started, last = (
            base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii").split(":")
        )
        if kind != _CURSOR:
            raise ValueError(kind)
        return int(started), int(last)
    except (binascii.Error, UnicodeError, ValueError):
        raise ValueError(
            f"invalid cursor {cursor[:40]!r}: pass the next_cursor of the previous page "
            "unchanged, or no cursor for the first page"
        ) from None


def _where(query: Select[Any], selection: AlertFilter) -> Select[Any]:
    a = alerts.c
    if selection.tenant_id is not None:
        query = query.where(a.tenant_id == selection.tenant_id)
    if selection.states:
        query = query.where(a.state.in_(selection.states))
    if selection.severities:
        query = query.where(a.severity.in_(selection.severities))
    if selection.device is not None:
        query = query.where(a.device == selection.device)
    if selection.rule_id is not None:
        query = query.where(a.rule_id == selection.rule_id)
    if selection.rule_name is not None:
        query = query.where(a.rule_name == selection.rule_name)
    if selection.until is not None:  # active at some time in [since, until)
        query = query.where(a.started_at < selection.until)
    if selection.since is not None:
        query = query.where(or_(a.resolved_at.is_(None), a.resolved_at >= selection.since))
    return query


async def list_alerts(
    conn: AsyncConnection, selection: AlertFilter, *, limit: int = 100, cursor: str | None = None
) -> AlertPage:
    """Alerts of ``selection``, newest start first, ``limit`` per page (keyset cursor)."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    a = alerts.c
    query = _where(select(alerts), selection)
    if cursor is not None:
        query = query.where(tuple_(a.started_at, a.id) < tuple_(*decode_cursor(cursor)))
    query = query.order_by(a.started_at.desc(), a.id.desc()).limit(limit + 1)
    fetched = [_alert(row) for row in (await conn.execute(query)).all()]
    items = fetched[:limit]
    more = len(fetched) > limit
    return AlertPage(items, _encode_cursor(items[-1].started_at, items[-1].id) if more else None)


# --- notifications ----------------------------------------------------------------------------


def _notification(row: Any) -> Notification:
    return Notification(
        id=int(row.id), alert_id=int(row.alert_id), channel=str(row.channel),
        channel_index=int(row.channel_index), event=str(row.event), status=str(row.status),
        attempts=int(row.attempts), last_error=row.last_error,
        next_attempt_at=None if row.next_attempt_at is None else int(row.next_attempt_at),
        created_at=int(row.created_at),
        delivered_at=None if row.delivered_at is None else int(row.delivered_at),
        target=dict(row.target), payload=dict(row.payload),
    )  # fmt: skip


async def notifications_of(
    conn: AsyncConnection, alert_ids: Iterable[int]
) -> dict[int, list[Notification]]:
    """The outbox rows of these alerts, oldest first, by alert id."""
    ids = sorted(set(alert_ids))
    found: dict[int, list[Notification]] = {i: [] for i in ids}
    if ids:
        n = notification_outbox.c
        query = select(notification_outbox).where(n.alert_id.in_(ids)).order_by(n.id)
        for row in await conn.execute(query):
            found[int(row.alert_id)].append(_notification(row))
    return found


async def due_notifications(
    conn: AsyncConnection, now: int, *, limit: int = 100
) -> list[Notification]:
    """Pending deliveries whose next attempt is due, oldest first (for the worker)."""
    n = notification_outbox.c
    query = (
        select(notification_outbox)
        .where(n.status == PENDING, n.next_attempt_at <= now)
        .order_by(n.next_attempt_at, n.id)
        .limit(limit)
    )
    return [_notification(row) for row in await conn.execute(query)]


async def record_attempt(
    conn: AsyncConnection,
    notification_id: int,
    *,
    error: str | None,
    retry_at: int | None = None,
    at: int | None = None,
) -> None:
    """After one delivery attempt: delivered (``error`` None), pending again at ``retry_at``,
    or failed for good (an error and no ``retry_at``)."""
    at = now_us() if at is None else at
    n = notification_outbox.c
    if error is None:
        values: dict[str, Any] = {"status": DELIVERED, "delivered_at": at, "last_error": None,
                                  "next_attempt_at": None}  # fmt: skip
    else:
        status = PENDING if retry_at is not None else FAILED
        values = {"status": status, "last_error": error[:2000], "next_attempt_at": retry_at}
    await conn.execute(
        update(notification_outbox)
        .where(n.id == notification_id)
        .values(attempts=n.attempts + 1, **values)
    )


# --- the engine's per-series state ------------------------------------------------------------

SeriesKey = tuple[int, str, str | None]  # (rule id, device, metric or None)


async def load_series_state(
    conn: AsyncConnection, rule_ids: Iterable[int]
) -> dict[SeriesKey, dict[str, Any]]:
    """The stored evaluation state of every series of these rules."""
    ids = sorted(set(rule_ids))
    if not ids:
        return {}
    s = alert_series_state.c
    rows = await conn.execute(select(alert_series_state).where(s.rule_id.in_(ids)))
    return {(int(r.rule_id), str(r.device), r.metric or None): dict(r.state) for r in rows}


async def series_state_of(conn: AsyncConnection, key: SeriesKey) -> dict[str, Any] | None:
    """The stored evaluation state of one series, if any."""
    rule_id, device, metric = key
    s = alert_series_state.c
    query = select(s.state).where(
        s.rule_id == rule_id, s.device == device, s.metric == (metric or "")
    )
    found = await conn.scalar(query)
    return None if found is None else dict(found)


_SAVE_STATES_PG = text(
    "INSERT INTO alert_series_state (tenant_id, rule_id, device, metric, state, updated_at) "
    "SELECT (r->>0)::bigint, (r->>1)::bigint, r->>2, r->>3, (r->4)::json, :at "
    "FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS r "
    "ON CONFLICT (rule_id, device, metric) "
    "DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at"
)


async def save_series_state(
    conn: AsyncConnection,
    states: Sequence[tuple[int, SeriesKey, dict[str, Any]]],
    *,
    at: int | None = None,
) -> None:
    """Store (tenant id, series, state) for each series, replacing what was there."""
    if not states:
        return
    at = now_us() if at is None else at
    if conn.dialect.name == "postgresql":  # one statement, one parameter: ~4x faster in bulk
        data = orjson.dumps(
            [[t, rule_id, device, metric or "", state] for t, (rule_id, device, metric), state
             in states]
        ).decode()  # fmt: skip
        await conn.execute(_SAVE_STATES_PG, {"rows": data, "at": at})
        return
    rows = [
        {"tenant_id": tenant_id, "rule_id": rule_id, "device": device, "metric": metric or "",
         "state": state, "updated_at": at}
        for tenant_id, (rule_id, device, metric), state in states
    ]  # fmt: skip
    insert = dialect_insert(conn, alert_series_state)
    await conn.execute(
        insert.on_conflict_do_update(
            index_elements=["rule_id", "device", "metric"],
            set_={"state": insert.excluded.state, "updated_at": insert.excluded.updated_at},
        ),
        rows,
    )


async def forget_series_state(
    conn: AsyncConnection, rule_id: int, keys: Iterable[tuple[str, str | None]] | None = None
) -> None:
    """Drop the stored state of a rule's series (all of them when ``keys`` is None)."""
    s = alert_series_state.c
    condition = s.rule_id == rule_id
    if keys is not None:
        pairs = [and_(s.device == d, s.metric == (m or "")) for d, m in keys]
        if not pairs:
            return
        condition = and_(condition, or_(*pairs))
    await conn.execute(alert_series_state.delete().where(condition))


# --- stored readings for a preview ------------------------------------------------------------


async def devices_of(
    conn: AsyncConnection, tenant_id: int
) -> list[tuple[int, str, str | None, list[str]]]:
    """(id, uid, type, tags) of the tenant's devices; tags are the metadata's ``tags`` list."""
    d = devices.c
    rows = await conn.execute(
        select(d.id, d.uid, d.type, d.metadata).where(d.tenant_id == tenant_id).order_by(d.uid)
    )
    found = []
    for device_id, uid, type_, meta in rows:
        tags = (meta or {}).get("tags") if isinstance(meta, dict) else None
        labels = [str(t) for t in tags] if isinstance(tags, list) else []
        found.append((int(device_id), str(uid), type_, labels))
    return found


async def stored_readings(
    conn: AsyncConnection,
    tenant_id: int,
    device_ids: Sequence[int],
    metric: str | None,
    start: int,
    end: int,
    limit: int,
) -> list[tuple[int, str, int, float | None]]:
    """(device id, metric, ts, value) of the devices' readings in [start, end], oldest first,
    at most ``limit``; of one metric, or of all (``metric`` None)."""
    if not device_ids:
        return []
    r, m = readings.c, metrics.c
    # Plain primary-key ranges of readings, no joins: names are looked up once.
    query = (
        select(r.device_id, r.metric_id, r.ts, r.value)
        .where(r.tenant_id == tenant_id, r.device_id.in_(device_ids), r.ts >= start, r.ts <= end)
        .order_by(r.ts, r.device_id, r.metric_id)
        .limit(limit)
    )
    if metric is not None:
        metric_id = await conn.scalar(select(m.id).where(m.name == metric))
        if metric_id is None:
            return []
        query = query.where(r.metric_id == metric_id)
        names = {int(metric_id): metric}
    rows = (await conn.execute(query)).all()
    if metric is None:
        seen = {int(row[1]) for row in rows}
        found = await conn.execute(select(m.id, m.name).where(m.id.in_(sorted(seen))))
        names = {int(i): str(n) for i, n in found}
    return [(int(d), names[int(k)], int(t), None if v is None else float(v)) for d, k, t, v in rows]


async def put_rules(
    conn: AsyncConnection,
    tenant_id: int,
    definitions: Sequence[dict[str, Any]],
    *,
    replace: bool = False,
) -> list[tuple[StoredRule, bool]]:
    """Store rules in one go: (rule, True) for each created, (rule, False) for each that
    replaced the tenant's rule of that name (``replace``; else RuleNameTaken)."""
    done = []
    for definition in definitions:
        named = await rules_named(conn, str(definition["name"]), tenant_id)
        existing = named[0] if named else None
        if existing is None:
            done.append((await create_rule(conn, tenant_id, definition), True))
        elif replace:
            done.append((await update_rule(conn, existing, definition), False))
        else:
            raise RuleNameTaken(RuleNameTaken.message(existing.name))
    return done
