"""Cleaning: valid ranges, units, time sanity, counters, clock offset and gaps (pure, no I/O)."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetra.ingest.clean import (
    CONVERSIONS,
    DEFAULT_RULES,
    MIN_TS,
    DeviceState,
    Policy,
    Rule,
    RuleBook,
    RuleOverride,
    applied_offset,
    clean,
    normalise_unit,
    observe_clock,
)
from telemetra.model import US_PER_S, Decoded, Flag, Reading, Reason, Rejection

S = US_PER_S
MINUTE = 60 * S
HOUR = 3600 * S
T0 = 1_732_270_000 * S  # 2024-11-22T10:06:40Z
POLICY = Policy()
FEW_SECONDS = 3 * S


# --------------------------------------------------------------------------- helpers


def rd(
    metric: str = "temperature",
    ts: int = T0,
    value: float | None = 21.5,
    *,
    unit: str | None = None,
    text: str | None = None,
    flags: int = 0,
) -> Reading:
    return Reading(metric=metric, ts=ts, value=value, text=text, flags=flags, unit=unit)


def entry(*readings: Reading, index: int = 0, device_time: bool = True) -> Decoded:
    return Decoded(
        device_uid="d1", readings=list(readings), index=index, has_device_time=device_time
    )


def server_entry(*readings: Reading, index: int = 0) -> Decoded:
    for r in readings:
        r.flags |= Flag.SERVER_TIME
    return entry(*readings, index=index, device_time=False)


def run(
    *items: Reading | Decoded,
    received_at: int = T0,
    state: DeviceState | None = None,
    rules: RuleBook | None = None,
    device_type: str | None = None,
    policy: Policy = POLICY,
) -> tuple[list[Reading], list[Rejection], Counter[str]]:
    """Clean one message: bare readings are wrapped into one entry with device time."""
    entries = [i for i in items if isinstance(i, Decoded)]
    loose = [i for i in items if isinstance(i, Reading)]
    if loose:
        entries.append(entry(*loose))
    return clean(
        entries,
        device_type,
        state if state is not None else DeviceState(),
        rules if rules is not None else RuleBook(),
        received_at,
        policy,
    )


def accepted_one(*items: Reading | Decoded, **kw: object) -> Reading:
    accepted, rejections, _ = run(*items, **kw)  # type: ignore[arg-type]
    assert rejections == []
    assert len(accepted) == 1
    return accepted[0]


def rejected_one(*items: Reading | Decoded, **kw: object) -> Rejection:
    accepted, rejections, _ = run(*items, **kw)  # type: ignore[arg-type]
    assert accepted == []
    assert len(rejections) == 1
    return rejections[0]


# --------------------------------------------------------------------------- valid ranges


def test_out_of_range_value_rejected_others_in_the_entry_accepted() -> None:
    accepted, rejections, _ = run(
        entry(rd("temperature", value=250.0), rd("humidity", value=40.0), index=3)
    )
    assert [r.metric for r in accepted] == ["humidity"]
    assert len(rejections) == 1
    rej = rejections[0]
    assert rej.reason is Reason.OUT_OF_RANGE
    assert rej.metric == "temperature"
    assert rej.index == 3
    assert "250" in rej.detail
    assert "[-90, 200]" in rej.detail
    assert "°C" in rej.detail


@pytest.mark.parametrize(
    ("metric", "value", "ok"),
    [
        ("temperature", -90.0, True),
        ("temperature", 200.0, True),
        ("temperature", 200.001, False),
        ("temperature", -90.001, False),
        ("temp", 201.0, False),
        ("humidity", 100.0, True),
        ("humidity", 100.5, False),
        ("rh", -0.1, False),
        ("battery", 101.0, False),
        ("rssi", 3.0, False),
        ("rssi", -120.0, True),
        ("snr", 60.0, False),
        ("pressure", -1.0, False),
        ("co2", 100_001.0, False),
        ("voltage", -1000.0, True),
        ("energy_wh", -1.0, False),
        ("energy_wh", 1e15, True),  # no upper bound
        ("fcnt", -1.0, False),
    ],
)
def test_default_ranges(metric: str, value: float, ok: bool) -> None:
    accepted, rejections, _ = run(rd(metric, value=value))
    if ok:
        assert [r.value for r in accepted] == [value]
        assert rejections == []
    else:
        assert accepted == []
        assert [(r.reason, r.metric) for r in rejections] == [(Reason.OUT_OF_RANGE, metric)]


def test_open_bound_is_shown_as_dash() -> None:
    rules = RuleBook({(None, "level", None): RuleOverride(min_value=0.0)})
    rej = rejected_one(rd("level", value=-5.0), rules=rules)
    assert rej.reason is Reason.OUT_OF_RANGE
    assert "[0, -]" in rej.detail


@pytest.mark.parametrize(
    "metric", ["env.temperature", "a.b.c.temperature", "Sensor.Env.TEMP", "ENV.Humidity"]
)
def test_default_rule_matched_by_last_dotted_part(metric: str) -> None:
    rej = rejected_one(rd(metric, value=500.0))
    assert rej.reason is Reason.OUT_OF_RANGE
    assert rej.metric == metric


@pytest.mark.parametrize("metric", ["temperature.raw", "temperature_max", "env_temperature"])
def test_only_the_last_dotted_part_names_the_rule(metric: str) -> None:
    assert accepted_one(rd(metric, value=500.0)).value == 500.0


def test_override_precedence() -> None:
    rules = RuleBook(
        {
            (None, "temperature", "freezer"): RuleOverride(-40.0, -10.0, "°C"),
            (None, "temperature", None): RuleOverride(0.0, 50.0, "°C"),
        }
    )

    def ok(value: float, device_type: str | None, book: RuleBook = rules) -> bool:
        accepted, _, _ = run(rd(value=value), rules=book, device_type=device_type)
        return bool(accepted)

    # (metric, device type) beats (metric, None)
    assert ok(-20.0, "freezer")
    assert not ok(20.0, "freezer")
    # (metric, None) applies to other device types and to untyped devices, beating the default
    assert ok(20.0, "room")
    assert not ok(-20.0, "room")
    assert not ok(-20.0, None)
    assert not ok(60.0, None)
    # defaults apply without overrides
    assert ok(-20.0, None, RuleBook())
    assert ok(60.0, "freezer", RuleBook())
    assert not ok(250.0, "freezer", RuleBook())


def test_override_for_dotted_metric_name() -> None:
    rules = RuleBook({(None, "env.temperature", "freezer"): RuleOverride(-40.0, -10.0, "°C")})
    assert run(rd("env.temperature", value=5.0), rules=rules, device_type="freezer")[1]
    assert run(rd("env.temperature", value=5.0), rules=rules, device_type="room")[0]
    # other names are unaffected by the override
    assert run(rd("box.temperature", value=5.0), rules=rules, device_type="freezer")[0]


def test_override_can_turn_a_metric_into_a_counter() -> None:
    rules = RuleBook({(None, "pulses", None): RuleOverride(kind="counter")})
    state = DeviceState()
    run(rd("pulses", T0 - 20 * S, 100.0), rules=rules, state=state)
    acc, _, counts = run(rd("pulses", T0 - 10 * S, 5.0), rules=rules, state=state)
    assert acc[0].flags & Flag.COUNTER_RESET
    assert counts["counter_reset"] == 1


@pytest.mark.parametrize("value", [0.0, -1e300, 1e300, 5e-324, -0.0, 1.7976931348623157e308])
def test_metric_without_rule_accepts_any_finite_value(value: float) -> None:
    assert accepted_one(rd("foo.bar", value=value)).value == value
    assert accepted_one(rd("zz", value=value, unit="furlong")).value == value


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_rejected(value: float) -> None:
    for metric in ("foo", "temperature", "energy_wh"):
        rej = rejected_one(rd(metric, value=value))
        assert rej.reason is Reason.NON_FINITE_NUMBER
        assert rej.metric == metric


def test_text_for_a_metric_with_a_numeric_rule_is_rejected_as_not_numeric() -> None:
    rej = rejected_one(rd("humidity", value=None, text="wet"))
    assert rej.reason is Reason.NOT_NUMERIC
    assert rej.metric == "humidity"
    assert "'wet'" in rej.detail and "valid range [0, 100]" in rej.detail
    rej = rejected_one(rd("temperature", value=None, text="sensor error", unit="F"))
    assert rej.reason is Reason.NOT_NUMERIC


def test_text_for_a_metric_without_a_numeric_rule_is_kept() -> None:
    got = accepted_one(rd("status", value=None, text="ok"))
    assert got.text == "ok"
    assert got.value is None


def test_null_value_is_not_text() -> None:
    got = accepted_one(rd("humidity", value=None, text=None))
    assert got.value is None and got.text is None


@pytest.mark.parametrize(
    ("override", "numeric"),
    [
        (RuleOverride(unit="m"), True),
        (RuleOverride(min_value=0.0), True),
        (RuleOverride(max_value=5.0), True),
        (RuleOverride(kind="counter"), True),
        (RuleOverride(kind="gauge"), False),
    ],
)
def test_a_stored_rule_makes_a_metric_numeric(override: RuleOverride, numeric: bool) -> None:
    rules = RuleBook({(None, "level", None): override})
    accepted, rejections, _ = run(rd("level", value=None, text="high"), rules=rules)
    if numeric:
        assert accepted == [] and [r.reason for r in rejections] == [Reason.NOT_NUMERIC]
    else:
        assert [r.text for r in accepted] == ["high"] and rejections == []


NUMERIC_METRICS = sorted(DEFAULT_RULES)


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(min_size=1, max_size=50),
    metric=st.sampled_from([*NUMERIC_METRICS, "status", "state", "fw"]),
    prefix=st.sampled_from(["", "AM2301.", "env."]),
)
def test_property_text_rejected_exactly_where_the_rule_is_numeric(
    text: str, metric: str, prefix: str
) -> None:
    name = prefix + metric
    accepted, rejections, _ = run(rd(name, value=None, text=text), rd("x", value=1.0))
    numeric = metric in DEFAULT_RULES
    assert len(accepted) == (1 if numeric else 2)
    assert [r.reason for r in rejections] == ([Reason.NOT_NUMERIC] if numeric else [])
    if numeric:
        assert rejections[0].metric == name


def test_rule_lookup_is_cached_and_stable() -> None:
    book = RuleBook({(None, "x", "t"): RuleOverride(0.0, 1.0)})
    first = book.rule("x", "t")
    assert book.rule("x", "t") is first
    assert book.rule("x", None) == Rule()
    assert book.rule("a.Temperature", None) is DEFAULT_RULES["temperature"]


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize("unit", ["°F", "F", "degF", "f", "fahrenheit", "°f", " F "])
def test_fahrenheit_converted_to_celsius(unit: str) -> None:
    got = accepted_one(rd("env.temperature", value=212.0, unit=unit))
    assert got.value == pytest.approx(100.0)
    assert got.unit == "°C"
    assert got.flags & Flag.UNIT_CONVERTED


@pytest.mark.parametrize("unit", ["K", "k", "kelvin"])
def test_kelvin_converted_to_celsius(unit: str) -> None:
    got = accepted_one(rd("temperature", value=273.15, unit=unit))
    assert got.value == pytest.approx(0.0)
    assert got.unit == "°C"
    assert got.flags & Flag.UNIT_CONVERTED


@pytest.mark.parametrize("unit", ["°C", "C", "c", "degC", "celsius", "ºC"])
def test_celsius_spellings_not_converted(unit: str) -> None:
    got = accepted_one(rd("temperature", value=21.5, unit=unit))
    assert got.value == 21.5
    assert not got.flags & Flag.UNIT_CONVERTED


@pytest.mark.parametrize(
    ("metric", "value", "unit", "expected"),
    [
        ("pressure", 101.3, "kPa", 1013.0),
        ("pressure", 101_300.0, "Pa", 1013.0),
        ("voltage", 3300.0, "mV", 3.3),
        ("battery_v", 3700.0, "mV", 3.7),
        ("energy_wh", 1.5, "kWh", 1500.0),
    ],
)
def test_other_conversions(metric: str, value: float, unit: str, expected: float) -> None:
    got = accepted_one(rd(metric, value=value, unit=unit))
    assert got.value == pytest.approx(expected)
    assert got.unit == DEFAULT_RULES[metric].unit
    assert got.flags & Flag.UNIT_CONVERTED


@pytest.mark.parametrize(
    ("metric", "unit"), [("temperature", "%"), ("humidity", "°C"), ("temperature", "hPa")]
)
def test_unconvertible_unit_rejected(metric: str, unit: str) -> None:
    accepted, rejections, _ = run(rd(metric, value=20.0, unit=unit), rd("co2", value=400.0))
    assert [r.metric for r in accepted] == ["co2"]
    assert len(rejections) == 1
    assert rejections[0].reason is Reason.OUT_OF_RANGE
    assert rejections[0].metric == metric
    assert "cannot be converted" in rejections[0].detail
    assert repr(unit) in rejections[0].detail


def test_converted_value_is_range_checked_in_canonical_unit() -> None:
    rej = rejected_one(rd("temperature", value=450.0, unit="F"))  # 232.2 °C
    assert rej.reason is Reason.OUT_OF_RANGE
    assert "232.2" in rej.detail
    assert accepted_one(rd("temperature", value=-130.0, unit="F")).value == pytest.approx(-90.0)
    assert run(rd("temperature", value=-131.0, unit="F"))[1]


def test_unit_kept_when_the_rule_has_no_unit() -> None:
    got = accepted_one(rd("foo", value=70.0, unit="F"))
    assert got.value == 70.0
    assert got.unit == "F"
    assert not got.flags & Flag.UNIT_CONVERTED


def test_normalise_unit() -> None:
    assert normalise_unit("degF") == "°F"
    assert normalise_unit(" °c ") == "°C"
    assert normalise_unit("Kelvin") == "K"
    assert normalise_unit(" hPa ") == "hPa"
    for src, dst in CONVERSIONS:
        assert normalise_unit(src) == src
        assert normalise_unit(dst) == dst


@settings(max_examples=200, deadline=None)
@given(
    f=st.floats(allow_nan=False, allow_infinity=False),
    unit=st.sampled_from(["°F", "F", "degF"]),
    device_type=st.sampled_from([None, "freezer"]),
)
def test_property_fahrenheit_then_range_equals_range_of_converted(
    f: float, unit: str, device_type: str | None
) -> None:
    rules = RuleBook({(None, "temperature", "freezer"): RuleOverride(-40.0, -10.0, "°C")})
    celsius = CONVERSIONS[("°F", "°C")](f)
    acc_f, rej_f, _ = run(rd(value=f, unit=unit), rules=rules, device_type=device_type)
    acc_c, rej_c, _ = run(rd(value=celsius, unit="°C"), rules=rules, device_type=device_type)
    assert bool(acc_f) == bool(acc_c)
    assert [r.reason for r in rej_f] == [r.reason for r in rej_c]
    if acc_f:
        assert acc_f[0].value == acc_c[0].value
        assert acc_f[0].flags & Flag.UNIT_CONVERTED
        assert not acc_c[0].flags & Flag.UNIT_CONVERTED


# --------------------------------------------------------------------------- time


def test_future_timestamp_beyond_skew_rejected() -> None:
    policy = Policy(max_future_skew_us=10 * S)
    rej = rejected_one(rd(ts=T0 + 10 * S + 1), policy=policy)
    assert rej.reason is Reason.FUTURE_TIMESTAMP
    assert rej.metric == "temperature"
    assert accepted_one(rd(ts=T0 + 10 * S), policy=policy).ts == T0 + 10 * S
    rej = rejected_one(rd(ts=T0 + POLICY.max_future_skew_us + 1))
    assert rej.reason is Reason.FUTURE_TIMESTAMP


def test_future_rejection_only_hits_that_reading() -> None:
    accepted, rejections, _ = run(
        entry(rd("a", T0 + HOUR, 1.0), index=0), entry(rd("b", T0, 2.0), index=1)
    )
    assert [r.metric for r in accepted] == ["b"]
    assert [(r.reason, r.index, r.metric) for r in rejections] == [
        (Reason.FUTURE_TIMESTAMP, 0, "a")
    ]


@pytest.mark.parametrize("ts", [MIN_TS - 1, 0, -1, 946_684_799 * S, -(2**62)])
def test_before_2000_rejected(ts: int) -> None:
    rej = rejected_one(rd(ts=ts))
    assert rej.reason is Reason.BAD_TIMESTAMP
    assert rej.metric == "temperature"


def test_year_2000_itself_accepted() -> None:
    assert accepted_one(rd(ts=MIN_TS)).ts == MIN_TS


def test_late_flag() -> None:
    limit = POLICY.late_after_us
    acc, _, counts = run(rd("a", T0 - limit - 1), rd("b", T0 - limit), rd("c", T0))
    flags = {r.metric: r.flags for r in acc}
    assert flags["a"] & Flag.LATE
    assert not flags["b"] & Flag.LATE
    assert not flags["c"] & Flag.LATE
    assert counts["late"] == 1


def test_server_time_readings_never_late() -> None:
    acc, _, counts = run(server_entry(rd("a", T0 - 2 * HOUR)))
    assert acc[0].flags & Flag.SERVER_TIME
    assert not acc[0].flags & Flag.LATE
    assert counts["late"] == 0


def test_out_of_order_is_per_metric() -> None:
    state = DeviceState()
    run(rd("temperature", T0 - 100 * S), state=state)
    acc, _, counts = run(rd("humidity", T0 - 200 * S, 50.0), state=state)
    assert not acc[0].flags & Flag.OUT_OF_ORDER  # older than another metric: fine
    acc, _, counts = run(rd("temperature", T0 - 150 * S), state=state)
    assert acc[0].flags & Flag.OUT_OF_ORDER
    assert counts["out_of_order"] == 1
    acc, _, counts = run(rd("temperature", T0 - 100 * S), state=state)  # same time: not older
    assert not acc[0].flags & Flag.OUT_OF_ORDER
    assert counts["out_of_order"] == 0
    acc, _, _ = run(rd("humidity", T0 - 250 * S, 50.0), state=state)
    assert acc[0].flags & Flag.OUT_OF_ORDER


def test_out_of_order_within_one_message() -> None:
    acc, _, counts = run(rd("a", T0 - 10 * S, 1.0), rd("a", T0 - 20 * S, 2.0), rd("a", T0, 3.0))
    assert [bool(r.flags & Flag.OUT_OF_ORDER) for r in acc] == [False, True, False]
    assert counts["out_of_order"] == 1


def test_rejected_reading_does_not_advance_the_series() -> None:
    state = DeviceState()
    _, rej, _ = run(rd("temperature", T0 - 10 * S, 999.0), state=state)
    assert rej
    acc, _, _ = run(rd("temperature", T0 - 20 * S, 20.0), state=state)
    assert not acc[0].flags & Flag.OUT_OF_ORDER


@settings(max_examples=150, deadline=None)
@given(
    seq=st.lists(
        st.tuples(st.sampled_from(["a", "b", "env.c"]), st.integers(0, 3600)),
        max_size=60,
    ),
    batch=st.booleans(),
)
def test_property_out_of_order_count(seq: list[tuple[str, int]], batch: bool) -> None:
    readings = [rd(metric, T0 - HOUR + sec * S, 1.0) for metric, sec in seq]
    running: dict[str, int] = {}
    expected = 0
    for metric, sec in seq:
        if metric in running and sec < running[metric]:
            expected += 1
        running[metric] = max(running.get(metric, sec), sec)

    state = DeviceState()
    results = [run(*readings, state=state)] if batch else [run(r, state=state) for r in readings]
    accepted = [r for acc, _, _ in results for r in acc]
    assert len(accepted) == len(seq)
    flagged = sum(1 for r in accepted if r.flags & Flag.OUT_OF_ORDER)
    assert flagged == expected
    assert sum(c["out_of_order"] for _, _, c in results) == expected
    assert not any(r.flags & Flag.CLOCK_CORRECTED for r in accepted)


# --------------------------------------------------------------------------- counters


def counter_run(
    points: list[tuple[int, float]], metric: str = "energy_wh"
) -> tuple[list[Reading], int]:
    state = DeviceState()
    out: list[Reading] = []
    resets = 0
    for sec, value in points:
        acc, rej, counts = run(rd(metric, T0 - HOUR + sec * S, value), state=state)
        assert rej == []
        out += acc
        resets += counts["counter_reset"]
    return out, resets


def test_counter_decrease_flagged_as_reset() -> None:
    out, resets = counter_run([(0, 100.0), (10, 150.0), (20, 10.0), (30, 20.0)])
    assert [bool(r.flags & Flag.COUNTER_RESET) for r in out] == [False, False, True, False]
    assert resets == 1


@pytest.mark.parametrize("metric", ["meter.energy_wh", "energy", "total", "fcnt", "x.Energy_kWh"])
def test_counter_metrics_by_name(metric: str) -> None:
    out, resets = counter_run([(0, 100.0), (10, 5.0)], metric)
    assert out[1].flags & Flag.COUNTER_RESET
    assert resets == 1


def test_gauge_decrease_never_a_reset() -> None:
    out, resets = counter_run([(0, 30.0), (10, 20.0), (20, -10.0)], "temperature")
    assert not any(r.flags & Flag.COUNTER_RESET for r in out)
    assert resets == 0
    out, resets = counter_run([(0, 30.0), (10, 20.0)], "unknown_metric")
    assert resets == 0


def test_out_of_order_counter_value_not_a_reset() -> None:
    out, resets = counter_run([(10, 100.0), (20, 200.0), (15, 150.0), (5, 50.0), (30, 250.0)])
    flags = [r.flags for r in out]
    assert flags[2] & Flag.OUT_OF_ORDER and not flags[2] & Flag.COUNTER_RESET
    assert flags[3] & Flag.OUT_OF_ORDER and not flags[3] & Flag.COUNTER_RESET
    assert not flags[4] & Flag.COUNTER_RESET  # compared with 200 at t=20, not with 50
    assert resets == 0


def test_counter_same_timestamp_not_a_reset() -> None:
    _, resets = counter_run([(10, 100.0), (10, 50.0)])
    assert resets == 0


def test_counter_compared_after_unit_conversion() -> None:
    state = DeviceState()
    run(rd("energy_wh", T0 - 20 * S, 1500.0), state=state)
    acc, _, counts = run(rd("energy_wh", T0 - 10 * S, 2.0, unit="kWh"), state=state)
    assert acc[0].value == pytest.approx(2000.0)
    assert not acc[0].flags & Flag.COUNTER_RESET
    assert counts["counter_reset"] == 0


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.floats(0, 1e6), max_size=40),
    metric=st.sampled_from(["energy_wh", "temperature"]),
)
def test_property_resets_equal_decreases(values: list[float], metric: str) -> None:
    values = [v % 150 for v in values] if metric == "temperature" else values
    out, resets = counter_run(list(enumerate(values)), metric)
    decreases = sum(1 for a, b in itertools.pairwise(values) if b < a)
    expected = decreases if metric == "energy_wh" else 0
    assert resets == expected
    assert sum(1 for r in out if r.flags & Flag.COUNTER_RESET) == expected


# --------------------------------------------------------------------------- clock offset


@dataclass
class Message:
    received_at: int
    device_ts: int
    accepted: list[Reading]
    rejections: list[Rejection]
    counts: Counter[str]


def simulate(
    offset_us: int,
    *,
    interval_us: int = 30 * S,
    duration_us: int = 20 * MINUTE,
    max_delay_us: int = 2 * S,
    seed: int = 1,
    state: DeviceState | None = None,
) -> tuple[DeviceState, list[Message]]:
    """A device whose clock runs ``offset_us`` ahead, one message per interval."""
    rng = random.Random(seed)
    state = state if state is not None else DeviceState()
    messages = []
    for i in range(duration_us // interval_us):
        received = T0 + i * interval_us
        device_ts = received + offset_us - rng.randint(0, max_delay_us)
        acc, rej, counts = run(
            rd("temperature", device_ts, 21.0), rd("humidity", device_ts, 40.0),
            received_at=received, state=state,
        )  # fmt: skip
        messages.append(Message(received, device_ts, acc, rej, counts))
    return state, messages


def first_corrected(messages: list[Message]) -> int:
    return next(
        i
        for i, m in enumerate(messages)
        if m.accepted and m.accepted[0].flags & Flag.CLOCK_CORRECTED
    )


def assert_corrected(m: Message) -> None:
    assert m.rejections == []
    assert len(m.accepted) == 2
    for r in m.accepted:
        assert r.flags & Flag.CLOCK_CORRECTED
        assert r.ts_device == m.device_ts
        assert abs(r.ts - m.received_at) <= FEW_SECONDS
        assert not r.flags & (Flag.LATE | Flag.OUT_OF_ORDER)
    assert m.counts["clock_corrected"] == 2


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_clock_one_hour_ahead_is_estimated_and_corrected(seed: int) -> None:
    state, messages = simulate(HOUR, seed=seed)
    assert len(messages) == 40
    assert state.offset_stable
    assert state.offset_us is not None
    assert abs(state.offset_us - HOUR) <= FEW_SECONDS
    k = first_corrected(messages)
    assert 0 < k <= len(messages) // 2
    for m in messages[:k]:  # until the estimate is stable: future, rejected
        assert m.accepted == []
        assert [r.reason for r in m.rejections] == [Reason.FUTURE_TIMESTAMP] * 2
        assert m.counts["clock_corrected"] == 0
    for m in messages[k:]:
        assert_corrected(m)


def test_clock_three_hours_behind_is_estimated_and_corrected() -> None:
    state, messages = simulate(-3 * HOUR)
    assert state.offset_stable
    assert state.offset_us is not None
    assert abs(state.offset_us + 3 * HOUR) <= FEW_SECONDS
    k = first_corrected(messages)
    assert 0 < k <= len(messages) // 2
    for m in messages[:k]:  # accepted as they are, but late
        assert len(m.accepted) == 2
        for r in m.accepted:
            assert r.ts == m.device_ts
            assert r.ts_device is None
            assert r.flags & Flag.LATE
            assert not r.flags & Flag.CLOCK_CORRECTED
    for m in messages[k:]:
        assert_corrected(m)


@pytest.mark.parametrize("offset", [0, 60 * S, -90 * S, 100 * S])
def test_accurate_clock_never_corrected(offset: int) -> None:
    state, messages = simulate(offset)
    assert state.offset_us is not None
    assert abs(state.offset_us - offset) <= FEW_SECONDS
    for m in messages:
        assert m.rejections == []
        assert m.counts["clock_corrected"] == 0
        for r in m.accepted:
            assert r.ts == m.device_ts
            assert r.ts_device is None
            assert not r.flags & Flag.CLOCK_CORRECTED


@pytest.mark.parametrize("messages_count", [300, 2160])
def test_backlog_replay_not_corrected(messages_count: int) -> None:
    """6 h of 10-s readings replayed 0.2 s apart: device time runs 50x receive time."""
    state = DeviceState()
    for i in range(messages_count):
        received = T0 + i * 200_000
        device_ts = T0 - 6 * HOUR + i * 10 * S
        acc, rej, counts = run(rd("temperature", device_ts), received_at=received, state=state)
        assert rej == []
        assert counts["clock_corrected"] == 0
        assert acc[0].ts == device_ts
        assert acc[0].ts_device is None
        assert not acc[0].flags & (Flag.CLOCK_CORRECTED | Flag.OUT_OF_ORDER)
    assert not state.offset_stable


def test_server_time_entries_neither_sampled_nor_corrected() -> None:
    state, _ = simulate(HOUR)
    assert state.offset_stable
    samples = state.samples
    received = T0 + 21 * MINUTE
    acc, rej, counts = run(
        server_entry(rd("temperature", received)), received_at=received, state=state
    )
    assert rej == []
    assert state.samples == samples
    assert acc[0].ts == received
    assert acc[0].ts_device is None
    assert not acc[0].flags & Flag.CLOCK_CORRECTED
    assert counts["clock_corrected"] == 0


def test_observe_clock_needs_min_samples_and_span() -> None:
    policy = Policy()
    state = DeviceState()
    for i in range(policy.clock_min_samples - 1):
        observe_clock(state, T0 + i * MINUTE, HOUR, policy)
    assert state.offset_us is None
    assert not state.offset_stable
    state = DeviceState()
    for i in range(5):  # 8 s of receive time: an estimate, but no verdict yet
        observe_clock(state, T0 + i * 2 * S, HOUR, policy)
    assert state.offset_us == HOUR
    assert not state.offset_stable
    for i in range(5, 11):  # 20 s
        observe_clock(state, T0 + i * 2 * S, HOUR, policy)
    assert state.offset_stable
    assert state.offset_us == HOUR


def test_samples_that_disagree_within_the_span_give_no_verdict() -> None:
    """Spread 3 s over 20 s is more than 10 %: wait for more receive time."""
    policy = Policy()
    state = DeviceState()
    for i in range(11):
        observe_clock(state, T0 + i * 2 * S, HOUR - (i % 2) * 3 * S, policy)
    assert not state.offset_stable
    for i in range(11, 20):  # 38 s: 3 s is within 10 %
        observe_clock(state, T0 + i * 2 * S, HOUR - (i % 2) * 3 * S, policy)
    assert state.offset_stable
    assert state.offset_us == HOUR


def test_window_widens_its_slots_and_keeps_the_best_sample() -> None:
    policy = Policy()
    state = DeviceState()
    for i in range(10 * 60):  # 10 minutes, one sample a second, 0-2 s network delay
        observe_clock(state, T0 + i * S, HOUR - (i * 7919 % 3) * S, policy)
    assert state.slot_us == policy.clock_max_slot_us
    assert len(state.offsets) <= 50
    assert T0 + 10 * MINUTE - state.offsets[0][0] >= 6 * MINUTE
    assert all(sample == HOUR for _, sample in list(state.offsets)[:-1])
    assert state.offset_stable and state.offset_us == HOUR


def test_drifting_sim_device_is_corrected_within_half_a_minute() -> None:
    """The walkthrough's drifting device: 496 s ahead, 2.5 messages a second."""
    state = DeviceState()
    rng = random.Random(4)
    first = None
    for i in range(75):  # 30 s
        received = T0 + i * 400_000
        device_ts = received + 496 * S - rng.randint(0, 50_000)
        acc, rej, _ = run(rd("temperature", device_ts), received_at=received, state=state)
        if acc and first is None:
            first = i
            assert acc[0].flags & Flag.CLOCK_CORRECTED
        if first is None:
            assert [r.reason for r in rej] == [Reason.FUTURE_TIMESTAMP]
    assert first is not None and first * 0.4 <= 22
    assert state.offset_stable and state.offset_us is not None
    assert abs(state.offset_us - 496 * S) <= S


def test_a_verdict_survives_delayed_messages_but_not_a_clock_set_right() -> None:
    policy = Policy()
    state = DeviceState()
    received = T0
    for _ in range(30):  # 30 s, 1 message a second: verdict
        observe_clock(state, received, 496 * S, policy)
        received += S
    assert state.offset_stable
    for i in range(20):  # a congested link: every other message 10 s late
        observe_clock(state, received, 496 * S - (i % 2) * 10 * S, policy)
        received += S
        assert state.offset_stable and applied_offset(state, policy) == 496 * S
    for _ in range(60):  # NTP set the clock right: the old verdict goes
        observe_clock(state, received, 0, policy)
        received += S
        if not state.offset_stable:
            break
    assert not state.offset_stable and applied_offset(state, policy) == 0
    for _ in range(400):  # and a new one comes once the old samples have left the window
        observe_clock(state, received, 0, policy)
        received += S
    assert state.offset_stable and state.offset_us == 0


@settings(max_examples=150, deadline=None)
@given(
    offset_s=st.integers(130, 86_400) | st.integers(-86_400, -130),
    interval_ms=st.integers(200, 10_000),
    jitter_ms=st.integers(0, 3_000),
    seed=st.integers(0, 2**16),
)
def test_property_constant_offset_with_network_jitter_converges_quickly(
    offset_s: int, interval_ms: int, jitter_ms: int, seed: int
) -> None:
    """Verdict once the span covers 10x the jitter (at least 20 s) and 5 slots are in."""
    offset = offset_s * S
    rng = random.Random(seed)
    state = DeviceState()
    interval, jitter = interval_ms * 1000, jitter_ms * 1000
    due = max(POLICY.clock_min_span_us, 10 * jitter) + 6 * max(interval, S)
    received = T0
    while received - T0 <= due:
        observe_clock(state, received, offset - rng.randint(0, jitter), POLICY)
        received += interval
    assert state.offset_stable, (state.offset_us, list(state.offsets)[:8])
    assert state.offset_us is not None
    assert offset - jitter <= state.offset_us <= offset
    assert applied_offset(state, POLICY) == state.offset_us


@settings(max_examples=150, deadline=None)
@given(
    behind_s=st.integers(600, 7 * 86_400),
    speed=st.floats(1.5, 1000.0),
    interval_ms=st.integers(10, 5_000),
    jitter_ms=st.integers(0, 3_000),
    seed=st.integers(0, 2**16),
)
def test_property_backlog_replay_never_yields_a_verdict(
    behind_s: int, speed: float, interval_ms: int, jitter_ms: int, seed: int
) -> None:
    """Device time runs ``speed`` times faster than receive time until it catches up."""
    rng = random.Random(seed)
    state = DeviceState()
    interval = interval_ms * 1000
    received = T0
    device = T0 - behind_s * S
    for _ in range(3000):
        sample = device - received - rng.randint(0, jitter_ms * 1000)
        if sample > -POLICY.clock_correct_after_us:
            break  # caught up: from here on it is a live device
        observe_clock(state, received, sample, POLICY)
        assert not state.offset_stable
        assert applied_offset(state, POLICY) == 0
        received += interval
        device += round(interval * speed)


@pytest.mark.parametrize("interval", [1 * S, 5 * S])
def test_fast_publishing_device_clock_offset_becomes_stable(interval: int) -> None:
    state, messages = simulate(HOUR, interval_us=interval, max_delay_us=S)
    assert state.offset_stable
    assert_corrected(messages[-1])


@pytest.mark.parametrize("offset", [-3 * HOUR, -4 * MINUTE])
def test_clock_correction_start_is_not_a_gap(offset: int) -> None:
    _, messages = simulate(offset)
    assert sum(m.counts["gap"] for m in messages) == 0


# --------------------------------------------------------------------------- gaps


def stream(deltas_s: list[float]) -> Counter[str]:
    state = DeviceState()
    total: Counter[str] = Counter()
    ts = T0 - 2 * HOUR
    for delta in deltas_s:
        ts += int(delta * S)
        _, rej, counts = run(rd("temperature", ts), rd("humidity", ts, 40.0), state=state)
        assert rej == []
        total += counts
    return total


def test_steady_stream_has_no_gaps() -> None:
    assert stream([30.0] * 100)["gap"] == 0


def test_jittery_stream_has_no_gaps() -> None:
    rng = random.Random(7)
    assert stream([rng.uniform(15, 45) for _ in range(200)])["gap"] == 0


def test_gap_counted_when_interval_jumps() -> None:
    assert stream([30.0] * 20 + [30 * 60.0] + [30.0] * 20)["gap"] == 1
    assert stream([30.0] * 20 + [600.0, 30.0, 30.0, 900.0] + [30.0] * 5)["gap"] == 2


def test_gap_needs_at_least_gap_min() -> None:
    # 3x the typical 1 s, but under the 60 s minimum: not a gap
    assert stream([1.0] * 50 + [30.0] + [1.0] * 10)["gap"] == 0
    assert stream([1.0] * 50 + [120.0] + [1.0] * 10)["gap"] == 1


def test_out_of_order_readings_do_not_count_as_gaps() -> None:
    state = DeviceState()
    total: Counter[str] = Counter()
    for sec in [*range(0, 600, 30), 100, 50, 600, 630]:
        total += run(rd("temperature", T0 - HOUR + sec * S), state=state)[2]
    assert total["gap"] == 0
    assert total["out_of_order"] == 2


# --------------------------------------------------------------------------- robustness

METRICS = ["temperature", "env.temp", "humidity", "energy_wh", "rssi", "foo", "a.b.total"]
UNITS = [None, "F", "°C", "K", "kelvin", "%", "mV", "kWh", "", " ", "°", "zz"]


@st.composite
def readings(draw: st.DrawFn) -> Reading:
    text = draw(st.booleans())
    return Reading(
        metric=draw(st.sampled_from(METRICS)),
        ts=draw(
            st.one_of(
                st.integers(-(2**63), 2**63),
                st.integers(T0 - 4 * HOUR, T0 + 4 * HOUR),
            )
        ),
        value=None if text else draw(st.floats()),
        text=draw(st.text(max_size=5)) if text else None,
        unit=draw(st.sampled_from(UNITS)),
    )


@st.composite
def entries(draw: st.DrawFn) -> Decoded:
    device_time = draw(st.booleans())
    items = draw(st.lists(readings(), max_size=5))
    if not device_time:
        for r in items:
            r.flags |= Flag.SERVER_TIME
    return Decoded("d1", items, index=draw(st.integers(0, 10)), has_device_time=device_time)


@settings(max_examples=200, deadline=None)
@given(
    batches=st.lists(st.tuples(st.lists(entries(), max_size=4), st.integers(0, 3600)), max_size=12),
    device_type=st.sampled_from([None, "freezer"]),
)
def test_property_clean_never_raises(
    batches: list[tuple[list[Decoded], int]], device_type: str | None
) -> None:
    rules = RuleBook({(None, "temperature", "freezer"): RuleOverride(-40.0, -10.0, "°C")})
    state = DeviceState()
    for items, sec in batches:
        received = T0 + sec * S
        total = sum(len(e.readings) for e in items)
        accepted, rejections, counts = clean(items, device_type, state, rules, received, POLICY)
        assert len(accepted) + len(rejections) == total
        for r in accepted:
            assert MIN_TS <= r.ts <= received + POLICY.max_future_skew_us
            assert r.value is None or math.isfinite(r.value)
        for rej in rejections:
            assert isinstance(rej.reason, Reason)
            assert rej.metric in METRICS
        assert all(v >= 0 for v in counts.values())


def test_overrides_inherit_unset_fields_and_scope_by_tenant() -> None:
    book = RuleBook(
        {
            (None, "temperature", None): RuleOverride(max_value=60.0),  # min stays -90
            (None, "temperature", "freezer"): RuleOverride(min_value=-40.0, max_value=-10.0),
            (7, "temperature", None): RuleOverride(min_value=10.0),
            (7, "temperature", "freezer"): RuleOverride(max_value=0.0),
        }
    )
    assert book.rule("temperature", None) == Rule(-90.0, 60.0, "°C")
    assert book.rule("temperature", "freezer") == Rule(-40.0, -10.0, "°C")
    assert book.rule("temperature", None, 7) == Rule(10.0, 60.0, "°C")
    assert book.rule("temperature", "freezer", 7) == Rule(10.0, 0.0, "°C")
    assert book.rule("temperature", "freezer", 8) == Rule(-40.0, -10.0, "°C")
    accepted, rejected, _ = clean(
        [Decoded("d", [Reading("temperature", T0 - S, 5.0)])],
        None, DeviceState(), book, T0, Policy(), tenant_id=7,
    )  # fmt: skip
    assert not accepted and rejected[0].reason is Reason.OUT_OF_RANGE


@pytest.mark.parametrize("stored", ["C", "degC", "celsius", "°C"])
def test_a_stored_unit_in_any_spelling_takes_readings_in_that_unit(stored: str) -> None:
    # `telemetra rule set level --unit C` stored "C" while readings compare as "°C": every
    # reading sent with unit C (and every re-import of an export) was rejected.
    rules = RuleBook({(None, "temperature", None): RuleOverride(unit=stored)})
    accepted, rejections, _ = run(rd(unit="C"), rules=rules)
    assert rejections == []
    assert [(r.value, r.unit) for r in accepted] == [(21.5, "°C")]
    assert rules.rule("temperature", None).unit == "°C"
