"""Cleaning: rules per metric and device type, time sanity, clock offset, flags.

Pure: decoded entries and a device's running state in, accepted readings, rejections and
quality counts out. No I/O; the pipeline keeps the state between batches.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from telemetra.model import US_PER_S, Decoded, Flag, Reading, Reason, Rejection

MIN_TS = 946_684_800 * US_PER_S  # 2000-01-01: earlier device times mean an unset clock


@dataclass(frozen=True, slots=True)
class Rule:
    """How one metric is cleaned: valid range (in ``unit``), canonical unit, kind."""

    min_value: float | None = None
    max_value: float | None = None
    unit: str | None = None
    kind: str = "gauge"  # gauge | counter


# Built-in defaults, matched on the last dotted part of a metric name, lower-cased.
_TEMPERATURE = Rule(-90.0, 200.0, "°C")
_PERCENT = Rule(0.0, 100.0, "%")
_COUNTER = Rule(0.0, None, None, "counter")
DEFAULT_RULES: dict[str, Rule] = {
    "temperature": _TEMPERATURE,
    "temp": _TEMPERATURE,
    "humidity": _PERCENT,
    "hum": _PERCENT,
    "rh": _PERCENT,
    "battery": _PERCENT,
    "battery_pct": _PERCENT,
    "battery_v": Rule(0.0, 100.0, "V"),
    "voltage": Rule(-1000.0, 1000.0, "V"),
    "rssi": Rule(-200.0, 0.0, "dBm"),
    "snr": Rule(-50.0, 50.0, "dB"),
    "pressure": Rule(0.0, 2000.0, "hPa"),
    "co2": Rule(0.0, 100_000.0, "ppm"),
    "energy": _COUNTER,
    "energy_wh": Rule(0.0, None, "Wh", "counter"),
    "energy_kwh": Rule(0.0, None, "kWh", "counter"),
    "total": _COUNTER,
    "fcnt": _COUNTER,
}

# (from unit, to unit) -> conversion; units are compared after normalisation.
CONVERSIONS: dict[tuple[str, str], Callable[[float], float]] = {
    ("°F", "°C"): lambda f: (f - 32.0) * 5.0 / 9.0,
    ("K", "°C"): lambda k: k - 273.15,
    ("kPa", "hPa"): lambda p: p * 10.0,
    ("Pa", "hPa"): lambda p: p / 100.0,
    ("mV", "V"): lambda v: v / 1000.0,
    ("kWh", "Wh"): lambda e: e * 1000.0,
}
_UNIT_ALIASES = {"c": "°C", "degc": "°C", "celsius": "°C", "f": "°F", "degf": "°F",
                 "fahrenheit": "°F", "kelvin": "K", "k": "K"}  # fmt: skip


def normalise_unit(unit: str) -> str:
    """Map common spellings (``C``, ``degF``, ``°c``) onto one canonical spelling."""
    key = unit.strip().lower().replace("°", "").replace("º", "")
    return _UNIT_ALIASES.get(key, unit.strip())


@dataclass(frozen=True, slots=True)
class RuleOverride:
    """A stored rule (``metric_rules``): each field set replaces the inherited one."""

    min_value: float | None = None
    max_value: float | None = None
    unit: str | None = None
    kind: str | None = None


# (tenant id or None for all, metric name, device type or None for all)
RuleKey = tuple[int | None, str, str | None]


@dataclass(slots=True)
class RuleBook:
    """Rules as data: stored overrides on top of the built-in defaults.

    From general to specific, each level replaces the fields it sets: built-in default
    (by the last part of the metric name), then the metric for all tenants, for a device
    type, for a tenant, for a tenant's device type.
    """

    overrides: Mapping[RuleKey, RuleOverride] = field(default_factory=dict)
    _cache: dict[RuleKey, Rule] = field(default_factory=dict)

    def rule(self, metric: str, device_type: str | None, tenant_id: int | None = None) -> Rule:
        """The rule for ``metric`` on a device of ``device_type`` in tenant ``tenant_id``."""
        key = (tenant_id, metric, device_type)
        found = self._cache.get(key)
        if found is None:
            found = DEFAULT_RULES.get(metric.rsplit(".", 1)[-1].lower()) or Rule()
            for scope in ((None, metric, None), (None, metric, device_type),
                          (tenant_id, metric, None), key):  # fmt: skip
                override = self.overrides.get(scope)
                if override is not None:
                    found = Rule(
                        found.min_value if override.min_value is None else override.min_value,
                        found.max_value if override.max_value is None else override.max_value,
                        # A stored "C" means °C: compare units in one spelling.
                        normalise_unit(override.unit) if override.unit else found.unit,
                        override.kind or found.kind,
                    )
            self._cache[key] = found
        return found


@dataclass(frozen=True, slots=True)
class Policy:
    """Time-related cleaning settings (see ``telemetra.config.Settings``)."""

    max_future_skew_us: int = 300 * US_PER_S
    late_after_us: int = 600 * US_PER_S
    clock_correct_after_us: int = 120 * US_PER_S
    clock_min_samples: int = 5
    clock_min_span_us: int = 20 * US_PER_S  # samples must cover this much receive time
    clock_max_spread_us: int = 60 * US_PER_S
    # Samples agree when their spread is at most this share of the receive time they cover:
    # a replayed backlog's device time runs faster than receive time and never agrees.
    clock_spread_per_span: float = 0.1
    clock_max_slot_us: int = 8 * US_PER_S  # 50 slots of 8 s: a window of about 7 minutes
    gap_min_us: int = 60 * US_PER_S


@dataclass(slots=True)
class Series:
    """What cleaning remembers of one device+metric: newest event time and its value."""

    last_ts: int
    last_value: float | None


@dataclass(slots=True)
class DeviceState:
    """A device's running cleaning state, kept by the pipeline between batches."""

    series: dict[str, Series] = field(default_factory=dict)
    offsets: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=50))
    slot_us: int = US_PER_S  # slot width in ``offsets``: doubles up to ``clock_max_slot_us``
    samples: int = 0
    offset_us: int | None = None  # current clock-offset estimate (device − receive time)
    applied_us: int = 0  # the correction in force (see ``applied_offset``)
    offset_stable: bool = False
    last_ts: int | None = None
    interval_us: float | None = None  # smoothed interval between readings


def _percentile(sorted_values: list[int], q: float) -> int:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def observe_clock(state: DeviceState, received_at: int, sample_us: int, policy: Policy) -> None:
    """Add one sample of (device time − receive time) and update the offset estimate.

    Network delay only ever makes the sample smaller, so a high percentile estimates the
    true offset. A verdict needs at least ``clock_min_samples`` slots over
    ``clock_min_span_us`` of receive time that agree: their spread is within
    ``clock_spread_per_span`` of that time (and ``clock_max_spread_us``). A device
    replaying a backlog sends device times that advance faster than the receive time, so
    its samples never agree and it is never "corrected". Until there is enough evidence,
    the previous verdict stands.
    """
    offsets = state.offsets
    state.samples += 1
    # One slot per step of receive time, keeping the best (least delayed) sample, so that
    # the window spans the same time for fast and slow publishers.
    if offsets and received_at - offsets[-1][0] < state.slot_us:
        if sample_us > offsets[-1][1]:
            offsets[-1] = (offsets[-1][0], sample_us)
        return
    if len(offsets) == offsets.maxlen and state.slot_us < policy.clock_max_slot_us:
        # Full while young: merge neighbours and widen the slots, so that a verdict can
        # come within seconds and the window still grows to minutes in the same memory.
        pairs = iter(list(offsets))
        merged = [(a[0], max(a[1], b[1])) for a, b in zip(pairs, pairs, strict=False)]
        offsets.clear()
        offsets.extend(merged)
        state.slot_us *= 2
    offsets.append((received_at, sample_us))
    if len(offsets) < policy.clock_min_samples:
        return
    ordered = sorted(sample for _, sample in offsets)
    high = _percentile(ordered, 0.9)
    span = received_at - offsets[0][0]
    if span >= policy.clock_min_span_us:
        # A verdict needs close agreement; once given, only a real disagreement (a clock set
        # right, a backlog) withdraws it, not a few delayed messages.
        allowed = policy.clock_max_spread_us
        if not state.offset_stable:
            allowed = min(allowed, int(span * policy.clock_spread_per_span))
        state.offset_us = high
        state.offset_stable = high - _percentile(ordered, 0.1) <= allowed
    elif not state.offset_stable:
        state.offset_us = high  # for display; not applied


def applied_offset(state: DeviceState, policy: Policy) -> int:
    """The correction to subtract from device times now (0: the clock is trusted)."""
    offset = state.offset_us
    if state.offset_stable and offset is not None and abs(offset) > policy.clock_correct_after_us:
        return offset
    return 0


def clean(
    entries: list[Decoded],
    device_type: str | None,
    state: DeviceState,
    rules: RuleBook,
    received_at: int,
    policy: Policy,
    tenant_id: int | None = None,
) -> tuple[list[Reading], list[Rejection], defaultdict[str, int]]:
    """Validate and flag the readings of one message's entries for one device."""
    accepted: list[Reading] = []
    rejections: list[Rejection] = []
    counts: defaultdict[str, int] = defaultdict(int)  # per message: cheaper than a Counter
    newest = max((r.ts for e in entries if e.has_device_time for r in e.readings), default=None)
    if newest is not None:
        observe_clock(state, received_at, newest - received_at, policy)
    offset = applied_offset(state, policy)
    if offset != state.applied_us:
        # Times remembered so far were corrected by the old offset: keep them comparable,
        # so that starting a correction is neither a gap nor out of order.
        shift = offset - state.applied_us
        for series in state.series.values():
            series.last_ts -= shift
        if state.last_ts is not None:
            state.last_ts -= shift
        state.applied_us = offset

    for entry in entries:
        for reading in entry.readings:
            if offset and entry.has_device_time:
                reading.ts_device = reading.ts
                reading.ts -= offset
                reading.flags |= Flag.CLOCK_CORRECTED
                counts["clock_corrected"] += 1
            problem = _check_time(reading, received_at, policy)
            if problem is None:
                problem = _apply_rule(reading, rules.rule(reading.metric, device_type, tenant_id))
            if problem is not None:
                problem.index = entry.index
                rejections.append(problem)
                continue
            _track(reading, state, received_at, policy, counts, rules, device_type, tenant_id)
            accepted.append(reading)
    return accepted, rejections, counts


def _check_time(reading: Reading, received_at: int, policy: Policy) -> Rejection | None:
    if reading.ts > received_at + policy.max_future_skew_us:
        return Rejection(
            Reason.FUTURE_TIMESTAMP,
            f"{(reading.ts - received_at) / US_PER_S:.0f} s ahead of receive time "
            f"(allowed {policy.max_future_skew_us / US_PER_S:.0f} s); check the device clock",
            metric=reading.metric,
        )
    if reading.ts < MIN_TS:
        return Rejection(
            Reason.BAD_TIMESTAMP,
            "before 2000-01-01: the device clock looks unset",
            metric=reading.metric,
        )
    return None


def _apply_rule(reading: Reading, rule: Rule) -> Rejection | None:
    value = reading.value
    if value is None:
        if reading.text is not None and is_numeric(rule):
            return Rejection(
                Reason.NOT_NUMERIC,
                f"got text {reading.text[:40]!r}; {reading.metric} takes numbers "
                f"({describe(rule)})",
                metric=reading.metric,
            )
        return None
    if reading.unit and rule.unit:
        unit = normalise_unit(reading.unit)
        if unit != rule.unit:
            convert = CONVERSIONS.get((unit, rule.unit))
            if convert is None:
                return Rejection(
                    Reason.OUT_OF_RANGE,
                    f"unit {reading.unit!r} cannot be converted to {rule.unit!r}",
                    metric=reading.metric,
                )
            value = reading.value = convert(value)
            reading.flags |= Flag.UNIT_CONVERTED
        reading.unit = rule.unit  # one spelling in storage: "C" is kept as "°C"
    if not math.isfinite(value):
        return Rejection(Reason.NON_FINITE_NUMBER, f"{value} is not finite", metric=reading.metric)
    if (rule.min_value is not None and value < rule.min_value) or (
        rule.max_value is not None and value > rule.max_value
    ):
        return Rejection(
            Reason.OUT_OF_RANGE,
            f"{value:g} outside the valid range [{_bound(rule.min_value)}, "
            f"{_bound(rule.max_value)}]{' ' + rule.unit if rule.unit else ''}",
            metric=reading.metric,
        )
    return None


def is_numeric(rule: Rule) -> bool:
    """True when the rule only makes sense for numbers: a valid range, a unit or a counter."""
    return (
        rule.min_value is not None
        or rule.max_value is not None
        or rule.unit is not None
        or rule.kind == "counter"
    )


def describe(rule: Rule) -> str:
    """The numeric parts of a rule in words, e.g. ``valid range [0, 100] %``."""
    parts = []
    if rule.min_value is not None or rule.max_value is not None:
        parts.append(f"valid range [{_bound(rule.min_value)}, {_bound(rule.max_value)}]")
    if rule.unit is not None:
        parts.append(f"unit {rule.unit}")
    if rule.kind == "counter":
        parts.append("a counter")
    return ", ".join(parts)


def _bound(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _track(
    reading: Reading,
    state: DeviceState,
    received_at: int,
    policy: Policy,
    counts: defaultdict[str, int],
    rules: RuleBook,
    device_type: str | None,
    tenant_id: int | None,
) -> None:
    """Flag late, out-of-order and counter resets; count gaps; remember the newest point."""
    ts = reading.ts
    if received_at - ts > policy.late_after_us and not reading.flags & Flag.SERVER_TIME:
        reading.flags |= Flag.LATE
        counts["late"] += 1
    series = state.series.get(reading.metric)
    if series is None:
        state.series[reading.metric] = Series(ts, reading.value)
    elif ts < series.last_ts:
        reading.flags |= Flag.OUT_OF_ORDER
        counts["out_of_order"] += 1
    elif ts > series.last_ts:
        if (
            reading.value is not None
            and series.last_value is not None
            and reading.value < series.last_value
            and rules.rule(reading.metric, device_type, tenant_id).kind == "counter"
        ):
            reading.flags |= Flag.COUNTER_RESET
            counts["counter_reset"] += 1
        series.last_ts, series.last_value = ts, reading.value

    if state.last_ts is None or ts > state.last_ts:
        if state.last_ts is not None:
            delta = ts - state.last_ts
            typical = state.interval_us
            if typical is not None and delta > max(policy.gap_min_us, 3 * typical):
                counts["gap"] += 1
            state.interval_us = delta if typical is None else 0.9 * typical + 0.1 * delta
        state.last_ts = ts
