"""Alert rules (not the cleaning rules of ``telemetra rule``): list, create, read, edit, delete,
and preview a rule over stored readings before saving it — scoped to the caller's tenant.

Viewers read; operators and up write and preview; platform admins see every tenant's rules and
create rules in any tenant. Channel secrets are write-only (see ``alerts.documents``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import IntegrityError

from telemetra.alerts import store
from telemetra.alerts.documents import keep_secrets, problems, shown_channels
from telemetra.alerts.rules import Rule, RuleUpdate, apply_update
from telemetra.alerts.store import RuleNameTaken, StoredRule
from telemetra.api import errors
from telemetra.api.auth import Caller, role
from telemetra.api.devices import scope
from telemetra.api.errors import ApiError
from telemetra.ingest.timestamps import format_us
from telemetra.store import catalog

router = APIRouter(prefix="/rules", tags=["alert rules"], responses=errors.responses(422, 429))
OPERATOR = "this needs the operator role or higher"
NO_RULE = "no alert rule 12"
TAKEN = "an alert rule named 'freezer too warm' already exists; choose another name"
OTHER_TENANT = "only platform admins create alert rules in another tenant"
RuleIdParam = Annotated[int, Path(description="the rule's id", examples=[3], ge=1, le=2**63 - 1)]

_CONDITIONS = (
    'by kind — threshold: {"op": ">", "value": -15} (op one of > >= < <= == !=), '
    '{"outside": [lo, hi]} or {"inside": [lo, hi]}; rate: {"op": ">", "value": 2, "per": "1m", '
    '"window": "10m"}; no_data: {"for": "5m"}; quality: {"rejection_rate": 0.2, "window": '
    '"15m"} or {"clock_offset": "30s"}; anomaly: {"sigma": 4, "halflife": "1h", "warmup": 50}'
)
_CHANNELS = (
    'where alerts go: {"kind": "webhook", "url", "secret"}, {"kind": "email", "to": [...]}, '
    '{"kind": "mqtt", "topic"}, {"kind": "slack", "url"}. Secrets are write-only: a webhook '
    "shows `secret_set`, a Slack URL only its host; send a channel back as shown to keep them"
)
_EXAMPLE: dict[str, Any] = {
    "name": "freezer too warm", "kind": "threshold", "metric": "temperature",
    "condition": {"op": ">", "value": -15}, "for": "2m", "clear": {"op": "<=", "value": -17},
    "scope": {"devices": ["freezer-1"]}, "severity": "critical", "enabled": True,
    "channels": [{"kind": "webhook", "url": "https://ops.example.org/hook",
                  "secret": "a long shared secret"},
                 {"kind": "email", "to": ["ops@example.org"]}],
}  # fmt: skip
_SHOWN: dict[str, Any] = {
    "id": 3, "tenant_id": 2, **_EXAMPLE, "flap": {"count": 5, "window": "10m"},
    "channels": [{"kind": "webhook", "url": "https://ops.example.org/hook", "secret_set": True},
                 {"kind": "email", "to": ["ops@example.org"]}],
    "created_at": "2026-11-22T09:00:00Z", "updated_at": "2026-11-22T09:30:00Z",
}  # fmt: skip


class _RuleFields(BaseModel):
    """The fields of a rule, read as plain JSON here and checked by ``alerts.rules.Rule``."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, serialize_by_alias=True,
        json_schema_extra={"examples": [_EXAMPLE]},
    )  # fmt: skip

    kind: str = Field(
        description="threshold, rate, no_data, quality or anomaly", examples=["threshold"]
    )
    metric: str | None = Field(
        None, description="the metric watched (none for quality; optional for no_data)"
    )
    condition: dict[str, Any] = Field(description=f"when the rule fires, {_CONDITIONS}")
    for_: str | None = Field(
        None, alias="for", description="how long the condition must hold first: 30s, 5m, 2h, 1d"
    )
    clear: dict[str, Any] | None = Field(
        None,
        description="threshold and rate rules: when a firing alert resolves (hysteresis); "
        "must exclude every value that fires. Default: when the condition stops holding",
    )
    scope: dict[str, Any] = Field(
        default_factory=dict,
        description='{"devices": [...]}, {"type": "freezer"}, {"tag": "cold-room"} (a tag in '
        "the device's metadata `tags`), or {} for every device of the tenant",
    )
    severity: str = Field("warning", description="info, warning or critical")
    enabled: bool = True
    channels: list[dict[str, Any]] = Field(default_factory=list, description=_CHANNELS)
    flap: dict[str, Any] | None = Field(
        None,
        description='{"count": 5, "window": "10m"}: a series that fires this often in the '
        "window is held firing and marked flapping (default as shown; null: never)",
    )


class RuleIn(_RuleFields):
    """A new alert rule."""

    name: str = Field(description="unique in the tenant", examples=["freezer too warm"])
    tenant: str | None = Field(
        None, examples=["acme"], description="tenant name; default: the caller's (admins only)"
    )


class RulePatch(BaseModel):
    """Any subset of a rule's fields; the result must be a valid rule."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, serialize_by_alias=True,
        json_schema_extra={"examples": [{"enabled": False},
                                        {"condition": {"op": ">", "value": -12}, "for": "5m"}]},
    )  # fmt: skip

    name: str | None = None
    kind: str | None = None
    metric: str | None = None
    condition: dict[str, Any] | None = None
    for_: str | None = Field(None, alias="for")
    clear: dict[str, Any] | None = None
    scope: dict[str, Any] | None = None
    severity: str | None = None
    enabled: bool | None = None
    channels: list[dict[str, Any]] | None = None
    flap: dict[str, Any] | None = None


class RuleOut(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True, serialize_by_alias=True, json_schema_extra={"examples": [_SHOWN]}
    )

    id: int
    tenant_id: int
    name: str
    kind: str
    metric: str | None = None
    condition: dict[str, Any]
    for_: str | None = Field(None, alias="for")
    clear: dict[str, Any] | None = None
    scope: dict[str, Any]
    severity: str
    enabled: bool
    channels: list[dict[str, Any]] = Field(description="secrets never shown: see `secret_set`")
    flap: dict[str, Any] | None = None
    created_at: str
    updated_at: str


class RuleList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_SHOWN]}]})

    items: list[RuleOut] = Field(description="by name (admins: by tenant, then name)")


def rule_out(rule: StoredRule) -> RuleOut:
    # The columns name the rule; the definition fills in the rest, with the defaults of a rule
    # where a stored one lacks a field: one odd row must never break a listing.
    shown = {"condition": {}, "scope": {}, **rule.definition}
    shown["channels"] = shown_channels(list(shown.get("channels") or []))
    return RuleOut.model_validate(
        {**shown, "id": rule.id, "tenant_id": rule.tenant_id, "name": rule.name,
         "kind": rule.kind, "severity": rule.severity, "enabled": rule.enabled,
         "created_at": format_us(rule.created_at), "updated_at": format_us(rule.updated_at)}
    )  # fmt: skip


def checked_rule(data: dict[str, Any], where: str = "body") -> Rule:
    """``data`` as a valid rule, or a 422 naming each field that is wrong."""
    try:
        return Rule.model_validate(data)
    except ValidationError as error:
        found = problems(error)
        details = [{"field": f"{where}.{field}", "problem": problem} for field, problem in found]
        field, problem = found[0]
        raise ApiError(422, f"invalid rule: {field}: {problem}", details=details) from None


def _definition(rule: Rule) -> dict[str, Any]:
    return rule.model_dump(mode="json")


async def visible_rule(request: Request, caller: Caller, rule_id: int) -> StoredRule:
    async with request.app.state.engine.connect() as conn:
        found = await store.get_rule(conn, rule_id, scope(caller))
    if found is None:  # another tenant's rule answers exactly like a missing one
        raise ApiError(404, f"no alert rule {rule_id}")
    return found


async def target_tenant(request: Request, caller: Caller, name: str | None) -> int:
    """The tenant a rule is created or previewed in: the caller's, or (admins) the one named."""
    if name is None:
        return caller.tenant_id
    async with request.app.state.engine.connect() as conn:
        try:
            found: int | None = await catalog.tenant_id_by_name(conn, name)
        except LookupError:
            found = None
    if caller.role != "admin" and found != caller.tenant_id:  # never says which exist
        raise ApiError(403, OTHER_TENANT)
    if found is None:
        raise ApiError(
            422, f"no tenant named {name!r}",
            details=[{"field": "body.tenant", "problem": "no such tenant"}],
        )  # fmt: skip
    return found


@router.get("", response_model=RuleList, summary="List alert rules")
async def list_rules(
    request: Request,
    caller: Annotated[Caller, role("viewer")],
    enabled: Annotated[bool | None, Query(description="only enabled (or disabled) ones")] = None,
) -> RuleList:
    """The alert rules of the caller's tenant (platform admins: of every tenant), by name."""
    async with request.app.state.engine.connect() as conn:
        rules = await store.list_rules(conn, scope(caller), enabled=enabled)
    return RuleList(items=[rule_out(r) for r in rules])


@router.post(
    "",
    response_model=RuleOut,
    status_code=201,
    summary="Create an alert rule",
    responses=errors.responses(403, 409, messages={403: OPERATOR, 409: TAKEN}),
)
async def create_rule(
    request: Request, body: RuleIn, caller: Annotated[Caller, role("operator")]
) -> RuleOut:
    """Store a rule in the caller's tenant (platform admins: in the tenant named by
    ``tenant``). The answer shows it as stored, without channel secrets."""
    tenant_id = await target_tenant(request, caller, body.tenant)
    rule = checked_rule(body.model_dump(exclude={"tenant"}, exclude_unset=True))
    try:
        async with request.app.state.engine.begin() as conn:
            stored = await store.create_rule(conn, tenant_id, _definition(rule))
    except (RuleNameTaken, IntegrityError):  # IntegrityError: created meanwhile
        raise ApiError(409, RuleNameTaken.message(rule.name)) from None
    return rule_out(stored)


@router.get(
    "/{rule_id}",
    response_model=RuleOut,
    summary="Get an alert rule",
    responses=errors.responses(404, messages={404: NO_RULE}),
)
async def get_rule(
    request: Request, rule_id: RuleIdParam, caller: Annotated[Caller, role("viewer")]
) -> RuleOut:
    """One alert rule, without channel secrets."""
    return rule_out(await visible_rule(request, caller, rule_id))


@router.patch(
    "/{rule_id}",
    response_model=RuleOut,
    summary="Edit an alert rule",
    responses=errors.responses(403, 404, 409, messages={403: OPERATOR, 404: NO_RULE, 409: TAKEN}),
)
async def edit_rule(
    request: Request,
    rule_id: RuleIdParam,
    body: RulePatch,
    caller: Annotated[Caller, role("operator")],
) -> RuleOut:
    """Change any subset of a rule's fields (null clears an optional one); the whole rule is
    checked again. Channels sent back as shown keep their secrets; open alerts stay open, except
    that disabling the rule resolves them (by you)."""
    stored = await visible_rule(request, caller, rule_id)
    current = checked_rule(stored.definition)
    changes = body.model_dump(exclude_unset=True)
    if "channels" in changes and changes["channels"] is not None:
        changes["channels"] = keep_secrets(stored.channels, changes["channels"])
    try:
        update = RuleUpdate.model_validate(changes)
        rule = apply_update(current, update)
    except ValidationError as error:
        found = problems(error)
        details = [{"field": f"body.{field}", "problem": problem} for field, problem in found]
        raise ApiError(
            422, f"invalid rule: {found[0][0]}: {found[0][1]}", details=details
        ) from None
    try:
        async with request.app.state.engine.begin() as conn:
            updated = await store.update_rule(conn, stored, _definition(rule), by=caller.username)
    except (RuleNameTaken, IntegrityError):
        raise ApiError(409, RuleNameTaken.message(rule.name)) from None
    return rule_out(updated)


@router.delete(
    "/{rule_id}",
    status_code=204,
    summary="Delete an alert rule",
    responses=errors.responses(403, 404, messages={403: OPERATOR, 404: NO_RULE}),
)
async def delete_rule(
    request: Request, rule_id: RuleIdParam, caller: Annotated[Caller, role("operator")]
) -> None:
    """Delete a rule. Its open alerts are resolved by you (their channels are told); every alert
    it raised stays in the history, under the rule's last name."""
    stored = await visible_rule(request, caller, rule_id)
    async with request.app.state.engine.begin() as conn:
        await store.delete_rule(conn, stored, caller.username)


# --- preview ----------------------------------------------------------------------------------

MAX_PREVIEW_POINTS = 200_000
_PREVIEW_RULE = {**_EXAMPLE, "channels": []}
_PREVIEW_SHOWN: dict[str, Any] = {
    "from": "2026-11-21T10:00:00Z", "to": "2026-11-22T10:00:00Z", "devices": 1,
    "readings": 1440, "truncated": False,
    "transitions": [
        {"event": "fired", "device": "freezer-1", "metric": "temperature",
         "at": "2026-11-22T03:12:00Z", "value": -12.5,
         "message": "temperature -12.5 > -15 for 2m"},
        {"event": "resolved", "device": "freezer-1", "metric": "temperature",
         "at": "2026-11-22T03:40:00Z", "value": -17.5,
         "message": "temperature -17.5 <= -17"},
    ],
}  # fmt: skip


class PreviewRule(_RuleFields):
    """The rule to try; not saved, so its name is optional."""

    name: str = Field("preview", description="shown in messages only")


class PreviewIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, serialize_by_alias=True,
        json_schema_extra={"examples": [{"rule": _PREVIEW_RULE, "from": "-24h", "to": "now"}]},
    )  # fmt: skip

    rule: PreviewRule
    start: str | None = Field(
        None, alias="from", max_length=64,
        description="ISO-8601 with Z/offset, epoch ms, now, or -24h/-7d (default: -24h)",
    )  # fmt: skip
    end: str | None = Field(None, alias="to", max_length=64, description="default: now")
    max_points: int = Field(
        50_000, ge=1, le=MAX_PREVIEW_POINTS,
        description="readings evaluated at most, oldest first; beyond them `truncated` is true "
        "and the preview ends at the last reading read",
    )  # fmt: skip
    tenant: str | None = Field(
        None, description="whose devices: the caller's tenant, or (admins) the one named"
    )


class TransitionOut(BaseModel):
    event: str = Field(
        description="fired, resolved (the clear condition held) or flapping (held firing)",
        examples=["fired"],
    )
    device: str = Field(examples=["freezer-1"])
    metric: str | None = Field(description="null: the device as a whole", examples=["temperature"])
    at: str = Field(description="event time", examples=["2026-11-22T03:12:00Z"])
    value: float | None = Field(examples=[-12.5])
    message: str = Field(examples=["temperature -12.5 > -15 for 2m"])


class PreviewOut(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True, serialize_by_alias=True,
        json_schema_extra={"examples": [_PREVIEW_SHOWN]},
    )  # fmt: skip

    start: str = Field(alias="from")
    end: str = Field(alias="to", description="where the preview ended (earlier when truncated)")
    devices: int = Field(description="devices in the rule's scope")
    readings: int = Field(description="readings evaluated (with those warming the rule up)")
    truncated: bool = Field(description="more readings than max_points: the range was cut")
    transitions: list[TransitionOut] = Field(description="by event time")


def _lookback(rule: Rule) -> int:
    """How far before ``from`` readings warm the rule up: its longest window or duration."""
    spans = [rule.for_]
    for name in ("window", "for_", "per"):
        value = getattr(rule.condition, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            spans.append(value)
    return max(spans)


@router.post(
    "/preview",
    response_model=PreviewOut,
    summary="Preview an alert rule over stored readings",
    responses=errors.responses(403, messages={403: OPERATOR}),
)
async def preview_rule(
    request: Request, body: PreviewIn, caller: Annotated[Caller, role("operator")]
) -> PreviewOut:
    """Evaluate a rule (not saved) over the stored readings of the devices in its scope,
    between `from` and `to` (default: the last 24 hours), and answer when it would have fired
    and resolved — what the rule editor shows. Readings up to the rule's longest window or
    duration before `from` warm it up. Quality rules read the quality record, whose history is
    not kept: they cannot be previewed (422)."""
    from telemetra.alerts.evaluate import Point, preview
    from telemetra.alerts.rules import applies_to
    from telemetra.store.timerange import ParamError, time_range

    rule = checked_rule(body.rule.model_dump(exclude_unset=True) | {"name": body.rule.name},
                        "body.rule")  # fmt: skip
    if rule.kind == "quality":
        raise ApiError(
            422,
            "quality rules cannot be previewed: they read the devices' quality record, whose "
            "history is not kept",
            details=[{"field": "body.rule.kind", "problem": "quality cannot be previewed"}],
        )
    try:
        start, end = time_range(body.start, body.end)
    except ParamError as error:
        field = f"body.{error.param}"
        raise ApiError(
            422, str(error), details=[{"field": field, "problem": error.problem}]
        ) from None
    tenant_id = await target_tenant(request, caller, body.tenant)
    async with request.app.state.engine.connect() as conn:
        watched = [
            (device_id, uid)
            for device_id, uid, type_, tags in await store.devices_of(conn, tenant_id)
            if applies_to(rule.scope, uid, type_, tags)
        ]
        rows = await store.stored_readings(
            conn, tenant_id, [i for i, _ in watched], rule.metric, max(0, start - _lookback(rule)),
            end, body.max_points + 1,
        )  # fmt: skip
    truncated = len(rows) > body.max_points
    if truncated:
        rows = rows[: body.max_points]
        end = min(end, rows[-1][2])
    uids = dict(watched)
    points = [Point(uids[device_id], metric, ts, value) for device_id, metric, ts, value in rows]
    # Pure CPU work (~0.4 s per 50,000 readings): off the event loop, so other requests go on.
    events = await asyncio.to_thread(preview, rule, points, start, end)
    return PreviewOut.model_validate({
        "from": format_us(start), "to": format_us(end), "devices": len(watched),
        "readings": len(points), "truncated": truncated,
        "transitions": [
            {"event": e.kind, "device": e.device, "metric": e.metric or None,
             "at": format_us(e.time_us), "value": e.value, "message": e.message}
            for e in events
        ],
    })  # fmt: skip
