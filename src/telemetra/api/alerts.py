"""Alerts: the history with filters and a cursor, one alert with its notifications, and the
hand-made steps of the lifecycle — acknowledge and resolve — scoped to the caller's tenant.

Viewers read; operators and up acknowledge and resolve; platform admins see every tenant's.
Alerts are raised and resolved automatically by the alert engine (``telemetra worker``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from telemetra.alerts import store
from telemetra.alerts.store import Alert, AlertFilter, AlertStateError, Notification
from telemetra.api import errors
from telemetra.api.auth import Caller, role
from telemetra.api.devices import scope
from telemetra.api.errors import ApiError
from telemetra.ingest.replay import time_window
from telemetra.store.timerange import ParamError

router = APIRouter(prefix="/alerts", tags=["alerts"], responses=errors.responses(422, 429))
OPERATOR = "this needs the operator role or higher"
NO_ALERT = "no alert 17"
AlertIdParam = Annotated[int, Path(description="the alert's id", examples=[17], ge=1, le=2**63 - 1)]
_NOTIFICATION: dict[str, Any] = {
    "channel": "webhook", "event": "fired", "status": "delivered", "attempts": 1,
    "last_error": None,
}  # fmt: skip
_ALERT: dict[str, Any] = {
    "id": 17, "rule_id": 3, "rule": "freezer too warm", "device": "freezer-1",
    "metric": "temperature", "severity": "critical", "state": "firing", "flapping": False,
    "value": -12.5, "message": "temperature -12.5 > -15 for 2m",
    "started_at": "2026-11-22T10:02:00Z", "acknowledged_at": None, "acknowledged_by": None,
    "note": None, "resolved_at": None, "resolved_by": None, "notifications": [_NOTIFICATION],
}  # fmt: skip
_ACKED: dict[str, Any] = {
    **_ALERT, "state": "acknowledged", "acknowledged_at": "2026-11-22T10:05:00Z",
    "acknowledged_by": "maria", "note": "door left open; closing it",
    "notifications": [_NOTIFICATION, {**_NOTIFICATION, "event": "acknowledged"}],
}  # fmt: skip
_CONFLICT = (
    "alert 17 was resolved by auto at 2026-11-22T10:20:00Z: cannot acknowledge",
    None,
)
_LIST_HELP = "comma-separated, any of: "


class NotificationOut(BaseModel):
    channel: str = Field(description="webhook, email, mqtt or slack", examples=["webhook"])
    event: str = Field(description="fired, acknowledged or resolved", examples=["fired"])
    status: str = Field(
        description="pending (being delivered, retried with backoff), delivered, or failed "
        "(for good: last_error says why)",
        examples=["delivered"],
    )
    attempts: int = Field(examples=[1])
    last_error: str | None = Field(examples=[None])


class AlertOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_ALERT]})

    id: int
    rule_id: int = Field(description="may name a rule deleted since")
    rule: str = Field(description="the rule's name")
    device: str
    metric: str | None = Field(description="null: the device as a whole (no_data, quality)")
    severity: str = Field(description="info, warning or critical")
    state: str = Field(description="firing, acknowledged or resolved")
    flapping: bool = Field(description="fired and cleared often: held firing")
    value: float | None
    message: str
    started_at: str
    acknowledged_at: str | None
    acknowledged_by: str | None
    note: str | None
    resolved_at: str | None
    resolved_by: str | None = Field(description='"auto" (the clear condition held) or a user')
    notifications: list[NotificationOut] = Field(
        description="one delivery per channel of the rule and change, oldest first"
    )


class AlertPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"items": [_ALERT], "next_cursor": "YTE6MTc5NTM0MTMyMDAwMDAwMDoxNw"}]
        }
    )

    items: list[AlertOut] = Field(description="newest start first")
    next_cursor: str | None = Field(description="pass as cursor for the next page; null: last")


class NoteIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"note": "door left open; closing it"}]},
    )

    note: str | None = Field(None, max_length=2000, description="kept on the alert")


_NO_NOTE = NoteIn()


def _notification(n: Notification) -> NotificationOut:
    return NotificationOut(
        channel=n.channel, event=n.event, status=n.status, attempts=n.attempts,
        last_error=n.last_error,
    )  # fmt: skip


def alert_out(alert: Alert, notifications: list[Notification]) -> AlertOut:
    return AlertOut.model_validate(
        {**store.alert_json(alert), "notifications": [_notification(n) for n in notifications]}
    )


def _choices(value: str | None, allowed: tuple[str, ...], name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    chosen = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    wrong = [v for v in chosen if v not in allowed]
    if wrong:
        problem = f"expected {', '.join(allowed)} (comma-separated), got {wrong[0]!r}"
        raise ApiError(
            422, f"`{name}`: {problem}", details=[{"field": f"query.{name}", "problem": problem}]
        )
    return chosen


async def _visible(request: Request, caller: Caller, alert_id: int) -> Alert:
    async with request.app.state.engine.connect() as conn:
        found = await store.get_alert(conn, alert_id, scope(caller))
    if found is None:  # another tenant's alert answers exactly like a missing one
        raise ApiError(404, f"no alert {alert_id}")
    return found


async def _shown(request: Request, alert: Alert) -> AlertOut:
    async with request.app.state.engine.connect() as conn:
        sent = await store.notifications_of(conn, [alert.id])
    return alert_out(alert, sent[alert.id])


@router.get("", response_model=AlertPage, summary="List alerts")
async def list_alerts(
    request: Request,
    caller: Annotated[Caller, role("viewer")],
    state: Annotated[
        str | None,
        Query(description=_LIST_HELP + "firing, acknowledged, resolved", examples=["firing"]),
    ] = None,
    severity: Annotated[
        str | None,
        Query(description=_LIST_HELP + "info, warning, critical", examples=["critical"]),
    ] = None,
    device: Annotated[str | None, Query(description="device uid", examples=["freezer-1"])] = None,
    rule: Annotated[
        str | None,
        Query(description="the rule's id, or its name", examples=["freezer too warm"]),
    ] = None,
    start: Annotated[
        str | None,
        Query(
            alias="from",
            description="active at or after: ISO-8601 with Z/offset, epoch ms, now, or "
            "-24h/-7d (alerts not resolved before it)",
            examples=["-7d"],
        ),
    ] = None,
    end: Annotated[
        str | None,
        Query(alias="to", description="active before: alerts started before it", examples=["now"]),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="items per page")] = 100,
    cursor: Annotated[
        str | None,
        Query(description="next_cursor of the previous page, unchanged (absent: the first page)"),
    ] = None,
) -> AlertPage:
    """The alert history of the caller's tenant (platform admins: of every tenant), newest
    start first, with each alert's notifications. `from`/`to` select the alerts active at
    some time between them."""
    try:
        since, until = time_window(start, end)
    except ParamError as error:
        field = f"query.{error.param}"
        raise ApiError(
            422, str(error), details=[{"field": field, "problem": error.problem}]
        ) from None
    rule_id, rule_name = None, None
    if rule is not None:
        is_id = rule.isascii() and rule.isdecimal() and int(rule) < 2**63  # a 64-bit id
        rule_id, rule_name = (int(rule), None) if is_id else (None, rule)
    selection = AlertFilter(
        tenant_id=scope(caller), states=_choices(state, store.STATES, "state"),
        severities=_choices(severity, store.SEVERITIES, "severity"), device=device,
        rule_id=rule_id, rule_name=rule_name, since=since, until=until,
    )  # fmt: skip
    async with request.app.state.engine.connect() as conn:
        try:
            found = await store.list_alerts(conn, selection, limit=limit, cursor=cursor)
        except ValueError as error:
            raise ApiError(
                422, str(error), details=[{"field": "query.cursor", "problem": str(error)}]
            ) from None
        sent = await store.notifications_of(conn, [a.id for a in found.items])
    return AlertPage(
        items=[alert_out(a, sent[a.id]) for a in found.items], next_cursor=found.next_cursor
    )


@router.get(
    "/{alert_id}",
    response_model=AlertOut,
    summary="Get an alert",
    responses=errors.responses(404, messages={404: NO_ALERT}),
)
async def get_alert(
    request: Request, alert_id: AlertIdParam, caller: Annotated[Caller, role("viewer")]
) -> AlertOut:
    """One alert with its notifications (final failures show status failed and last_error)."""
    return await _shown(request, await _visible(request, caller, alert_id))


async def _forget_breach(conn: Any, alert: Alert) -> None:
    """The engine's state of the alert's series, as after a resolve by hand (same transaction):
    its condition must hold anew to fire again, rather than on the very next reading."""
    from telemetra.alerts.evaluate import SeriesState, resolved_by_hand

    key = (alert.rule_id, alert.device, alert.metric)
    stored = await store.series_state_of(conn, key)
    if stored is not None:
        state = resolved_by_hand(SeriesState.from_dict(stored))
        await store.save_series_state(conn, [(alert.tenant_id, key, state.to_dict())])


def _live(request: Request, event: str, alert: Alert) -> None:
    """The change out on the live stream (after its commit)."""
    frame = {"type": "alert", "event": event, "alert": store.alert_json(alert)}
    request.app.state.live.publish(alert.tenant_id, [frame])


def _refused(error: AlertStateError) -> ApiError:
    return ApiError(409, str(error))


@router.post(
    "/{alert_id}/ack",
    response_model=AlertOut,
    summary="Acknowledge an alert",
    responses={
        200: {"content": {"application/json": {"example": _ACKED}}},
        **errors.responses(403, 404, 409, messages={403: OPERATOR, 404: NO_ALERT, 409: _CONFLICT}),
    },
)
async def acknowledge_alert(
    request: Request,
    alert_id: AlertIdParam,
    caller: Annotated[Caller, role("operator")],
    body: Annotated[NoteIn, Body(description="optional")] = _NO_NOTE,
) -> AlertOut:
    """firing → acknowledged: you are on it (by you, now, with an optional note). The rule's
    channels are told. 409 when it is acknowledged or resolved already."""
    alert = await _visible(request, caller, alert_id)
    try:
        async with request.app.state.engine.begin() as conn:
            changed = await store.acknowledge(conn, alert, caller.username, body.note)
    except AlertStateError as error:
        raise _refused(error) from None
    _live(request, "acknowledged", changed)
    return await _shown(request, changed)


@router.post(
    "/{alert_id}/resolve",
    response_model=AlertOut,
    summary="Resolve an alert by hand",
    responses=errors.responses(
        403, 404, 409,
        messages={403: OPERATOR, 404: NO_ALERT,
                  409: "alert 17 was resolved by auto at 2026-11-22T10:20:00Z: cannot resolve"},
    ),
)  # fmt: skip
async def resolve_alert(
    request: Request,
    alert_id: AlertIdParam,
    caller: Annotated[Caller, role("operator")],
    body: Annotated[NoteIn, Body(description="optional")] = _NO_NOTE,
) -> AlertOut:
    """firing or acknowledged → resolved, by you (an optional note replaces the alert's). The
    rule's channels are told, and the series must breach anew (for the rule's `for`) before it
    fires again. 409 when it is resolved already."""
    alert = await _visible(request, caller, alert_id)
    try:
        async with request.app.state.engine.begin() as conn:
            changed = await store.resolve(conn, alert, caller.username, note=body.note)
            await _forget_breach(conn, changed)
    except AlertStateError as error:
        raise _refused(error) from None
    _live(request, "resolved", changed)
    return await _shown(request, changed)
