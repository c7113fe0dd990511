"""Cleaning rules: the valid range, unit and kind of a metric, per tenant and device type — what
`telemetra rule set` edits, over HTTP. Not the alert rules (``/rules``).

A stored rule overrides the built-in default of its metric field by field (see
``ingest.clean.RuleBook``); ingest and `serve` re-read the rules within 30 s. Viewers read;
operators and up write their tenant's; platform admins write any tenant's and those for all
tenants.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError

from telemetra.api import errors
from telemetra.api.auth import Caller, role
from telemetra.api.devices import scope, tenant_in_view, tenant_named
from telemetra.api.errors import ApiError
from telemetra.ingest.clean import DEFAULT_RULES
from telemetra.store import catalog
from telemetra.store.schema import metric_rules, tenants

router = APIRouter(
    prefix="/cleaning-rules", tags=["cleaning rules"], responses=errors.responses(422, 429)
)

OTHER_TENANT = "only platform admins set cleaning rules in another tenant"
ALL_TENANTS = "only platform admins change cleaning rules for all tenants"
Source = Literal["tenant", "all_tenants", "builtin"]
Kind = Literal["gauge", "counter"]
RuleId = Annotated[
    int, Path(ge=1, le=2**63 - 1, description="the cleaning rule's id", examples=[12])
]


def _printable(value: str | None) -> str | None:
    if value is not None and (value != value.strip() or not value or not value.isprintable()):
        raise ValueError("must be printable, without spaces at the ends")
    return value


class CleaningRuleIn(BaseModel):
    """One cleaning rule, replacing the one of the same scope (metric, device type, tenant).
    Fields left out or null inherit: from the rule for all device types, the rule for all
    tenants, the built-in default."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"metric": "temperature", "device_type": "freezer", "min": -40, "max": 10,
                 "unit": "°C", "kind": "gauge"},
                {"metric": "energy_wh", "kind": "counter", "tenant": "acme"},
            ]
        },
    )  # fmt: skip

    metric: str = Field(min_length=1, max_length=200, description="metric name, e.g. env.co2")
    device_type: str | None = Field(
        None, min_length=1, max_length=64, description="only devices of this type (null: all)"
    )
    min: float | None = Field(None, allow_inf_nan=False, description="lowest valid value")
    max: float | None = Field(None, allow_inf_nan=False, description="highest valid value")
    unit: str | None = Field(
        None, min_length=1, max_length=32, description="canonical unit; others are converted"
    )
    kind: Kind | None = Field(None, description="gauge, or counter (resets detected)")
    tenant: str | None = Field(None, description="tenant name; default: the caller's (admins: any)")
    all_tenants: bool = Field(False, description="a rule for every tenant (platform admins)")

    _check_names = field_validator("metric", "device_type", "unit")(_printable)

    @model_validator(mode="after")
    def _range(self) -> CleaningRuleIn:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        if self.all_tenants and self.tenant is not None:
            raise ValueError("give tenant or all_tenants, not both")
        return self


class CleaningRuleOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"id": 12, "source": "tenant", "tenant_id": 2, "tenant": "acme",
                 "metric": "temperature", "device_type": "freezer", "min": -40.0, "max": 10.0,
                 "unit": "°C", "kind": "gauge"}
            ]
        }
    )  # fmt: skip

    id: int | None = Field(description="null for a built-in default")
    source: Source = Field(
        description="tenant (a tenant's rule), all_tenants (stored for every tenant), "
        "builtin (the default of metrics named so, by the last dotted part; read-only)"
    )
    tenant_id: int | None
    tenant: str | None = Field(description="the tenant's name; null: all tenants")
    metric: str
    device_type: str | None = Field(description="null: every device type")
    min: float | None
    max: float | None
    unit: str | None
    kind: str | None


class CleaningRuleList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {"id": 12, "source": "tenant", "tenant_id": 2, "tenant": "acme",
                         "metric": "temperature", "device_type": "freezer", "min": -40.0,
                         "max": 10.0, "unit": "°C", "kind": "gauge"},
                        {"id": None, "source": "builtin", "tenant_id": None, "tenant": None,
                         "metric": "temperature", "device_type": None, "min": -90.0,
                         "max": 200.0, "unit": "°C", "kind": "gauge"},
                    ]
                }
            ]
        }
    )  # fmt: skip

    items: list[CleaningRuleOut] = Field(
        description="stored rules by metric, device type and tenant, then the built-in defaults"
    )


def _stored(row: Any) -> CleaningRuleOut:
    return CleaningRuleOut(
        id=row.id, source="all_tenants" if row.tenant_id is None else "tenant",
        tenant_id=row.tenant_id, tenant=row.tenant, metric=row.metric,
        device_type=row.device_type, min=row.min_value, max=row.max_value, unit=row.unit,
        kind=row.kind,
    )  # fmt: skip


def _builtins() -> list[CleaningRuleOut]:
    return [
        CleaningRuleOut(
            id=None,
            source="builtin",
            tenant_id=None,
            tenant=None,
            metric=metric,
            device_type=None,
            min=rule.min_value,
            max=rule.max_value,
            unit=rule.unit,
            kind=rule.kind,
        )
        for metric, rule in sorted(DEFAULT_RULES.items())
    ]


def _query() -> Any:
    return select(metric_rules, tenants.c.name.label("tenant")).outerjoin(
        tenants, tenants.c.id == metric_rules.c.tenant_id
    )


@router.get(
    "",
    response_model=CleaningRuleList,
    summary="List cleaning rules",
    responses=errors.responses(404, messages={404: "no tenant named 'initech'"}),
)
async def list_cleaning_rules(
    request: Request,
    caller: Annotated[Caller, role("viewer")],
    tenant: Annotated[
        str | None,
        Query(
            description="tenant name (admins: any, default all; others: their own)",
            examples=["acme"],
        ),
    ] = None,
) -> CleaningRuleList:
    """The cleaning rules that apply to the caller's tenant (platform admins: every tenant's,
    or one tenant's with `tenant`): its own, those for all tenants, and the built-in defaults
    (marked `builtin`)."""
    visible = await tenant_in_view(request, caller, tenant)
    query = _query()
    if visible is not None:
        query = query.where(
            or_(metric_rules.c.tenant_id.is_(None), metric_rules.c.tenant_id == visible)
        )
    async with request.app.state.engine.connect() as conn:
        rows = (await conn.execute(query)).all()

    def order(row: Any) -> tuple[str, str, str]:
        return row.metric, row.device_type or "", row.tenant or ""

    return CleaningRuleList(items=[_stored(r) for r in sorted(rows, key=order)] + _builtins())


@router.put(
    "",
    response_model=CleaningRuleOut,
    summary="Set a cleaning rule",
    responses=errors.responses(403, 409, messages={403: OTHER_TENANT,
                                                   409: "changed meanwhile; try again"}),
)  # fmt: skip
async def put_cleaning_rule(
    request: Request, body: CleaningRuleIn, caller: Annotated[Caller, role("operator")]
) -> CleaningRuleOut:
    """Create or replace the cleaning rule of one scope (metric, device type or all, tenant or
    all tenants), as `telemetra rule set` does; ingest applies it within 30 s. Operators and up
    set their tenant's; platform admins any tenant's (`tenant`) and those for all
    (`all_tenants`). The answer is the rule as stored (a replaced rule gets a new id)."""
    tenant_id: int | None = caller.tenant_id
    if body.all_tenants:
        if caller.role != "admin":
            raise ApiError(403, ALL_TENANTS)
        tenant_id = None
    elif body.tenant is not None:
        found = await tenant_named(request, body.tenant)
        if caller.role != "admin" and found != caller.tenant_id:  # never says which exist
            raise ApiError(403, OTHER_TENANT)
        if found is None:
            raise ApiError(
                422,
                f"no tenant named {body.tenant!r}",
                details=[{"field": "body.tenant", "problem": "no such tenant"}],
            )
        tenant_id = found
    scope_ = (
        metric_rules.c.metric == body.metric,
        metric_rules.c.tenant_id.is_(None)
        if tenant_id is None
        else metric_rules.c.tenant_id == tenant_id,
        metric_rules.c.device_type.is_(None)
        if body.device_type is None
        else metric_rules.c.device_type == body.device_type,
    )
    try:
        async with request.app.state.engine.begin() as conn:
            await catalog.set_rule(
                conn, body.metric, tenant_id=tenant_id, device_type=body.device_type,
                min_value=body.min, max_value=body.max, unit=body.unit, kind=body.kind,
            )  # fmt: skip
            row = (await conn.execute(_query().where(*scope_))).one()
    except ValueError as error:
        raise ApiError(422, str(error)) from None
    except IntegrityError:  # the same scope set concurrently
        raise ApiError(409, "changed meanwhile; try again") from None
    return _stored(row)


@router.delete(
    "/{cleaning_rule_id}",
    status_code=204,
    summary="Delete a cleaning rule",
    responses=errors.responses(403, 404, messages={403: ALL_TENANTS,
                                                   404: "no cleaning rule 12"}),
)  # fmt: skip
async def delete_cleaning_rule(
    request: Request, cleaning_rule_id: RuleId, caller: Annotated[Caller, role("operator")]
) -> None:
    """Delete a stored cleaning rule (operators and up: their tenant's; platform admins: any,
    and those for all tenants); what it set falls back to the wider rules and the built-in
    default. Another tenant's rule answers 404, like a missing one."""
    visible = scope(caller)
    async with request.app.state.engine.begin() as conn:
        row = (
            await conn.execute(select(metric_rules).where(metric_rules.c.id == cleaning_rule_id))
        ).one_or_none()
        if row is None or (visible is not None and row.tenant_id not in (None, visible)):
            raise ApiError(404, f"no cleaning rule {cleaning_rule_id}")
        if row.tenant_id is None and visible is not None:
            raise ApiError(403, ALL_TENANTS)
        await conn.execute(metric_rules.delete().where(metric_rules.c.id == cleaning_rule_id))
