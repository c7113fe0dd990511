"""Alert rules: the JSON a user writes, validated into typed models (pure, no I/O).

A rule watches series: one per (rule, device, metric) — per device alone for ``quality`` rules
and for ``no_data`` rules without a metric. Durations are written ``30s``, ``5m``, ``2h``, ``1d``
and held as integer microseconds, like every time in Telemetra; they serialise back to the
shortest exact string (``120s`` → ``2m``). Evaluation lives in ``alerts.evaluate``.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)

US_PER_S = 1_000_000
_UNITS = {"s": US_PER_S, "m": 60 * US_PER_S, "h": 3600 * US_PER_S, "d": 86400 * US_PER_S}
_DURATION = re.compile(r"(\d{1,6})([smhd])")
MAX_DURATION_US = 366 * _UNITS["d"]
DURATION_EXPECTED = "a whole number with s, m, h or d, such as 30s, 5m, 2h, 1d"

Kind = Literal["threshold", "rate", "no_data", "quality", "anomaly"]
Severity = Literal["info", "warning", "critical"]
Op = Literal[">", ">=", "<", "<=", "==", "!="]
KINDS: tuple[Kind, ...] = ("threshold", "rate", "no_data", "quality", "anomaly")


def parse_duration(value: object) -> int:
    """``"30s"``, ``"5m"``, ``"2h"``, ``"1d"`` → µs; a ValueError says what was expected."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"expected a duration string ({DURATION_EXPECTED}), got {value!r}")
    m = _DURATION.fullmatch(value.strip())
    if m is None:
        raise ValueError(f"{value[:40]!r} is not a duration: expected {DURATION_EXPECTED}")
    us = int(m.group(1)) * _UNITS[m.group(2)]
    if us > MAX_DURATION_US:
        raise ValueError(f"{value!r} is longer than the longest duration allowed, 366d")
    return us


def format_duration(us: int) -> str:
    """Microseconds → the shortest exact duration string (``120_000_000`` → ``"2m"``)."""
    for unit in ("d", "h", "m"):
        if us and us % _UNITS[unit] == 0:
            return f"{us // _UNITS[unit]}{unit}"
    return f"{us // US_PER_S}s"


_DURATION_SCHEMA = {"type": "string", "pattern": r"^\d{1,6}[smhd]$", "examples": ["5m"]}
# A duration: written as a string, held as µs, written back as a string.
Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(_DURATION_SCHEMA),
]


def _positive(us: int, what: str) -> int:
    if us <= 0:
        raise ValueError(f"{what} must be longer than 0s")
    return us


class _Strict(BaseModel):
    """Unknown fields are refused (a typo must not silently do nothing); numbers are finite."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        frozen=True,
    )


# --- conditions -----------------------------------------------------------------------------


class Compare(_Strict):
    """``{"op": ">", "value": -15}``."""

    op: Op
    value: float


class Outside(_Strict):
    """``{"outside": [lo, hi]}``: true below lo or above hi."""

    outside: tuple[float, float]

    @field_validator("outside")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] >= v[1]:
            raise ValueError(f"expected [lo, hi] with lo < hi, got [{v[0]:g}, {v[1]:g}]")
        return v


class Inside(_Strict):
    """``{"inside": [lo, hi]}``: true from lo to hi, both included."""

    inside: tuple[float, float]

    @field_validator("inside")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] >= v[1]:
            raise ValueError(f"expected [lo, hi] with lo < hi, got [{v[0]:g}, {v[1]:g}]")
        return v


ThresholdCondition = Compare | Outside | Inside


class RateCondition(_Strict):
    """``{"op": ">", "value": 2, "per": "1m", "window": "10m"}``: change per `per` over `window`."""

    op: Op
    value: float
    per: Duration = 60 * US_PER_S
    window: Duration

    @field_validator("per", "window")
    @classmethod
    def _nonzero(cls, v: int, info: ValidationInfo) -> int:
        return _positive(v, f"`{info.field_name}`")


class NoDataCondition(_Strict):
    """``{"for": "5m"}``: no reading for this long."""

    for_: Duration = Field(alias="for")

    @field_validator("for_")
    @classmethod
    def _nonzero(cls, v: int) -> int:
        return _positive(v, "`for`")


class RejectionRate(_Strict):
    """``{"rejection_rate": 0.2, "window": "15m"}``: share of rejected messages over a window.

    ``min_messages`` keeps one bad message of a quiet device from reading as a 100 % rate.
    """

    rejection_rate: float = Field(gt=0, le=1)
    window: Duration
    min_messages: int = Field(default=10, ge=1, le=1_000_000)

    @field_validator("window")
    @classmethod
    def _nonzero(cls, v: int) -> int:
        return _positive(v, "`window`")


class ClockOffset(_Strict):
    """``{"clock_offset": "30s"}``: the device clock is off by more than this, either way."""

    clock_offset: Duration

    @field_validator("clock_offset")
    @classmethod
    def _nonzero(cls, v: int) -> int:
        return _positive(v, "`clock_offset`")


QualityCondition = RejectionRate | ClockOffset


class AnomalyCondition(_Strict):
    """``{"sigma": 4, "halflife": "1h", "warmup": 50}``: deviation from the EWMA mean."""

    sigma: float = Field(gt=0, le=1000)
    halflife: Duration = 3600 * US_PER_S
    warmup: int = Field(default=50, ge=2, le=1_000_000)

    @field_validator("halflife")
    @classmethod
    def _nonzero(cls, v: int) -> int:
        return _positive(v, "`halflife`")


Condition = (
    ThresholdCondition | RateCondition | NoDataCondition | QualityCondition | AnomalyCondition
)

_THRESHOLD_SHAPES = '{"op": ">", "value": 10}, {"outside": [lo, hi]} or {"inside": [lo, hi]}'


def _threshold(v: object) -> ThresholdCondition:
    if isinstance(v, Compare | Outside | Inside):
        return v
    if isinstance(v, dict) and "outside" in v:
        return Outside.model_validate(v)
    if isinstance(v, dict) and "inside" in v:
        return Inside.model_validate(v)
    if isinstance(v, dict) and "op" in v:
        return Compare.model_validate(v)
    raise ValueError(f"a threshold condition is one of {_THRESHOLD_SHAPES}, got {_show(v)}")


def _quality(v: object) -> QualityCondition:
    if isinstance(v, RejectionRate | ClockOffset):
        return v
    if isinstance(v, dict) and "clock_offset" in v:
        return ClockOffset.model_validate(v)
    if isinstance(v, dict) and "rejection_rate" in v:
        return RejectionRate.model_validate(v)
    raise ValueError(
        'a quality condition is {"rejection_rate": 0.2, "window": "15m"} or '
        f'{{"clock_offset": "30s"}}, got {_show(v)}'
    )


def _rate_clear(v: object) -> Compare:
    if isinstance(v, Compare):
        return v
    if isinstance(v, dict) and "op" in v:
        return Compare.model_validate(v)
    raise ValueError(
        'the clear condition of a rate rule is {"op": "<", "value": 1} (same per and window), '
        f"got {_show(v)}"
    )


def _condition_for(kind: Kind, v: object) -> Condition:
    if kind == "threshold":
        return _threshold(v)
    if kind == "quality":
        return _quality(v)
    models: dict[str, type[RateCondition | NoDataCondition | AnomalyCondition]] = {
        "rate": RateCondition,
        "no_data": NoDataCondition,
        "anomaly": AnomalyCondition,
    }
    model = models[kind]
    return v if isinstance(v, model) else model.model_validate(v)


def _show(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def compare(op: str, x: float, y: float) -> bool:
    """``x op y`` for one of ``> >= < <= == !=``."""
    if op == ">":
        return x > y
    if op == ">=":
        return x >= y
    if op == "<":
        return x < y
    if op == "<=":
        return x <= y
    if op == "==":
        return x == y
    return x != y


def holds(cond: ThresholdCondition, x: float) -> bool:
    """Whether the value ``x`` satisfies a threshold condition."""
    if isinstance(cond, Compare):
        return compare(cond.op, x, cond.value)
    if isinstance(cond, Outside):
        return x < cond.outside[0] or x > cond.outside[1]
    return cond.inside[0] <= x <= cond.inside[1]


def _bounds(cond: ThresholdCondition) -> list[float]:
    if isinstance(cond, Compare):
        return [cond.value]
    return list(cond.outside if isinstance(cond, Outside) else cond.inside)


def overlap(a: ThresholdCondition, b: ThresholdCondition) -> float | None:
    """A value satisfying both conditions, or None when none does.

    Each condition is a union of intervals whose ends are its bounds, so testing every bound,
    a point between each pair of neighbouring bounds and one beyond each end is exhaustive.
    """
    points = sorted(set(_bounds(a) + _bounds(b)))
    candidates = [-math.inf, math.inf, *points]
    candidates += [lo / 2 + hi / 2 for lo, hi in itertools.pairwise(points)]
    for x in sorted(candidates):
        if holds(a, x) and holds(b, x):
            return x
    return None


def describe(cond: ThresholdCondition | Compare) -> str:
    """A condition as people write it: ``> -15``, ``outside [2, 8]``."""
    if isinstance(cond, Compare):
        return f"{cond.op} {number(cond.value)}"
    if isinstance(cond, Outside):
        return f"outside [{number(cond.outside[0])}, {number(cond.outside[1])}]"
    return f"inside [{number(cond.inside[0])}, {number(cond.inside[1])}]"


def number(x: float) -> str:
    """A value for a message: ``-12.5``, ``3``, ``0.3`` (not ``0.30000000000000004``)."""
    return f"{x:.10g}"


# --- scope, channels, flapping --------------------------------------------------------------


def _name_check(v: str, what: str, longest: int) -> str:
    if not v or len(v) > longest or not v.isprintable() or v.strip() != v:
        raise ValueError(
            f"{what} must be 1 to {longest} printable characters without surrounding spaces"
        )
    return v


class Scope(_Strict):
    """Which devices a rule watches: listed ones, a type, a tag, or (``{}``) the whole tenant."""

    devices: list[str] | None = Field(default=None, min_length=1, max_length=10_000)
    type: str | None = None
    tag: str | None = None

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: list[str] | None) -> list[str] | None:
        for uid in v or ():
            _name_check(uid, "a device id", 128)
        return v

    @field_validator("type", "tag")
    @classmethod
    def _label(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else _name_check(v, f"`{info.field_name}`", 128)

    @model_validator(mode="after")
    def _one(self) -> Scope:
        given = [k for k in ("devices", "type", "tag") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(
                f"scope takes one of devices, type or tag (or {{}} for the whole tenant), "
                f"got {' and '.join(given)}"
            )
        return self

    @model_serializer(mode="wrap")
    def _only_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None}


def applies_to(
    scope: Scope, device_id: str, device_type: str | None, tags: Iterable[str] = ()
) -> bool:
    """Whether a rule with this scope watches the device."""
    if scope.devices is not None:
        return device_id in scope.devices
    if scope.type is not None:
        return device_type == scope.type
    if scope.tag is not None:
        return scope.tag in set(tags)
    return True


def _http_url(v: str, what: str, https_only: bool) -> str:
    parts = urlsplit(v)
    schemes = ("https",) if https_only else ("http", "https")
    if parts.scheme not in schemes or not parts.hostname or len(v) > 2000:
        raise ValueError(
            f"{what} must be an {' or '.join(schemes)} URL with a host, got {_show(v)}"
        )
    return v


class WebhookChannel(_Strict):
    """POST the alert as JSON; signed with ``secret`` (HMAC-SHA256) when one is given."""

    kind: Literal["webhook"]
    url: str
    secret: str | None = Field(default=None, min_length=8, max_length=500)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v, "a webhook url", https_only=False)


_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s.]{1,63}")


class EmailChannel(_Strict):
    """Mail the alert to these addresses."""

    kind: Literal["email"]
    to: list[str] = Field(min_length=1, max_length=50)

    @field_validator("to")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        for address in v:
            if not _EMAIL.fullmatch(address):
                raise ValueError(f"{_show(address)} is not an email address (name@example.org)")
        return v


class MqttChannel(_Strict):
    """Publish the alert as JSON to this topic."""

    kind: Literal["mqtt"]
    topic: str = Field(min_length=1, max_length=256)

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if "+" in v or "#" in v or v.startswith("$") or "\x00" in v:
            raise ValueError(
                f"an alert topic is a plain topic name: no + or # wildcards, "
                f"no leading $, got {_show(v)}"
            )
        return v


class SlackChannel(_Strict):
    """A Slack-compatible incoming webhook."""

    kind: Literal["slack"]
    url: str

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v, "a slack url", https_only=False)


Channel = Annotated[
    WebhookChannel | EmailChannel | MqttChannel | SlackChannel, Field(discriminator="kind")
]


class Flap(_Strict):
    """A series that fires ``count`` times within ``window`` is held firing, marked flapping."""

    count: int = Field(default=5, ge=2, le=1000)
    window: Duration = 600 * US_PER_S

    @field_validator("window")
    @classmethod
    def _nonzero(cls, v: int) -> int:
        return _positive(v, "`window`")


# --- the rule -------------------------------------------------------------------------------

_NEEDS_METRIC: tuple[Kind, ...] = ("threshold", "rate", "anomaly")
_EXAMPLE: dict[str, JsonValue] = {
    "name": "freezer too warm",
    "kind": "threshold",
    "metric": "temperature",
    "condition": {"op": ">", "value": -15},
    "for": "2m",
    "clear": {"op": "<=", "value": -17},
    "scope": {"devices": ["freezer-1"]},
    "severity": "critical",
    "enabled": True,
    "channels": [{"kind": "webhook", "url": "https://ops.example.org/hook"}],
}


class Rule(_Strict):
    """An alert rule (see docs/alerts.md, "Rules")."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE]})

    name: str
    kind: Kind
    metric: str | None = Field(default=None, validate_default=True)
    condition: Condition
    for_: Duration = Field(default=0, alias="for")
    clear: ThresholdCondition | None = None
    scope: Scope = Scope()
    severity: Severity = "warning"
    enabled: bool = True
    channels: list[Channel] = Field(default_factory=list, max_length=20)
    flap: Flap | None = Flap()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _name_check(v, "a rule name", 200)

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if kind in _NEEDS_METRIC and v is None:
            raise ValueError(f"a {kind} rule needs `metric`: the metric it watches")
        if kind == "quality" and v is not None:
            raise ValueError(
                "a quality rule watches a device's quality record, not one metric: drop `metric`"
            )
        return None if v is None else _name_check(v, "a metric name", 200)

    @field_validator("for_")
    @classmethod
    def _for(cls, v: int, info: ValidationInfo) -> int:
        if info.data.get("kind") == "no_data" and v:
            raise ValueError('a no_data rule takes its duration in `condition`: {"for": "5m"}')
        return v

    @field_validator("condition", mode="before")
    @classmethod
    def _condition(cls, v: object, info: ValidationInfo) -> Condition:
        kind = info.data.get("kind")
        if kind is None:  # `kind` itself is invalid and reported; say nothing more here
            raise ValueError("the condition depends on `kind`, which is missing or invalid")
        return _condition_for(kind, v)

    @field_validator("clear", mode="before")
    @classmethod
    def _clear(cls, v: object, info: ValidationInfo) -> ThresholdCondition | None:
        kind = info.data.get("kind")
        if v is None or kind is None:
            return None
        if kind not in ("threshold", "rate"):
            raise ValueError(
                f"only threshold and rate rules take a `clear` condition; a rule of kind {kind} "
                "resolves when its condition stops holding"
            )
        clear = _threshold(v) if kind == "threshold" else _rate_clear(v)
        fire = info.data.get("condition")
        if isinstance(fire, RateCondition):
            fire = Compare(op=fire.op, value=fire.value)
        if isinstance(fire, Compare | Outside | Inside):
            both = overlap(fire, clear)
            if both is not None:
                raise ValueError(
                    f"`clear` ({describe(clear)}) overlaps `condition` ({describe(fire)}): "
                    f"{number(both)} satisfies both; a clear condition must exclude every value "
                    "that fires"
                )
        return clear

    @property
    def series_metric(self) -> str:
        """The metric part of this rule's series keys: '' for per-device rules."""
        return self.metric or ""


class RuleUpdate(_Strict):
    """A PATCH: any subset of a rule's fields; ``apply_update`` re-validates the whole rule."""

    name: str | None = None
    kind: Kind | None = None
    metric: str | None = None
    condition: dict[str, Any] | None = None
    for_: str | None = Field(default=None, alias="for")
    clear: dict[str, Any] | None = None
    scope: dict[str, Any] | None = None
    severity: Severity | None = None
    enabled: bool | None = None
    channels: list[dict[str, Any]] | None = None
    flap: dict[str, Any] | None = None


def apply_update(rule: Rule, update: RuleUpdate) -> Rule:
    """The rule with the fields the update sets (an explicit null clears an optional field)."""
    data = rule.model_dump(mode="json")
    data.update(update.model_dump(mode="json", exclude_unset=True))
    return Rule.model_validate(data)
