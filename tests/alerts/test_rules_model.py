"""The alert rule model: what it accepts, what it refuses and how it says so."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from telemetra.alerts.rules import (
    Compare,
    Inside,
    Outside,
    Rule,
    RuleUpdate,
    Scope,
    applies_to,
    apply_update,
    format_duration,
    holds,
    overlap,
    parse_duration,
)

S = 1_000_000

CONTRACT_EXAMPLE: dict[str, Any] = {
    "name": "freezer too warm",
    "kind": "threshold",
    "metric": "temperature",
    "condition": {"op": ">", "value": -15},
    "for": "2m",
    "clear": {"op": "<=", "value": -17},
    "scope": {"devices": ["freezer-1"]},
    "severity": "critical",
    "enabled": True,
    "channels": [
        {"kind": "webhook", "url": "https://ops.example.org/hook", "secret": "s3cret-value"},
        {"kind": "email", "to": ["ops@example.org"]},
        {"kind": "mqtt", "topic": "alerts/cold-room"},
        {"kind": "slack", "url": "https://hooks.slack.com/services/T0/B0/x"},
    ],
}


def problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as caught:
        Rule.model_validate(data)
    return [(".".join(map(str, e["loc"])), e["msg"]) for e in caught.value.errors()]


def test_the_contract_example_round_trips() -> None:
    rule = Rule.model_validate(CONTRACT_EXAMPLE)
    assert rule.for_ == 120 * S
    assert isinstance(rule.condition, Compare) and rule.condition.value == -15
    dumped = rule.model_dump(mode="json")
    assert dumped["for"] == "2m" and dumped["scope"] == {"devices": ["freezer-1"]}
    assert dumped["flap"] == {"count": 5, "window": "10m"}  # the default
    assert Rule.model_validate(dumped) == rule


@pytest.mark.parametrize(
    ("kind", "condition", "cls_name"),
    [
        ("threshold", {"outside": [2, 8]}, "Outside"),
        ("threshold", {"inside": [2, 8]}, "Inside"),
        ("rate", {"op": ">", "value": 2, "per": "1m", "window": "10m"}, "RateCondition"),
        ("no_data", {"for": "5m"}, "NoDataCondition"),
        ("quality", {"rejection_rate": 0.2, "window": "15m"}, "RejectionRate"),
        ("quality", {"clock_offset": "30s"}, "ClockOffset"),
        ("anomaly", {"sigma": 4, "halflife": "1h", "warmup": 50}, "AnomalyCondition"),
    ],
)
def test_each_kind_reads_its_condition(kind: str, condition: dict[str, Any], cls_name: str) -> None:
    metric = None if kind == "quality" else "temperature"
    rule = Rule.model_validate(
        {"name": "r", "kind": kind, "metric": metric, "condition": condition}
    )
    assert type(rule.condition).__name__ == cls_name
    assert rule.model_dump(mode="json")["condition"] == condition | (
        {"min_messages": 10} if "rejection_rate" in condition else {}
    )


def test_no_data_without_metric_watches_the_device() -> None:
    rule = Rule.model_validate({"name": "r", "kind": "no_data", "condition": {"for": "5m"}})
    assert rule.metric is None and rule.series_metric == ""


@pytest.mark.parametrize(
    ("change", "where", "says"),
    [
        ({"for": "2 min"}, "for", "not a duration: expected a whole number with s, m, h or d"),
        ({"for": 120}, "for", "expected a duration string"),
        ({"for": "400d"}, "for", "longer than the longest duration allowed"),
        ({"kind": "thresh"}, "kind", "Input should be 'threshold'"),
        ({"metric": None}, "metric", "a threshold rule needs `metric`"),
        ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
        ({"severity": "urgent"}, "severity", "'info', 'warning' or 'critical'"),
        ({"condition": {"op": "=>", "value": 1}}, "condition.op", "Input should be '>'"),
        ({"condition": {"op": ">", "value": "high"}}, "condition.value", "valid number"),
        ({"condition": {"above": 3}}, "condition", "a threshold condition is one of"),
        ({"condition": {"outside": [8, 2]}}, "condition.outside", "lo < hi"),
        ({"clear": {"op": "<", "value": 0}}, "clear", "overlaps `condition` (> -15)"),
        ({"scope": {"type": "freezer", "tag": "x"}}, "scope", "got type and tag"),
        ({"scope": {"devices": []}}, "scope.devices", "at least 1 item"),
        ({"channels": [{"kind": "pager"}]}, "channels.0", "does not match any of the expected"),
        (
            {"channels": [{"kind": "webhook", "url": "ftp://x.org/"}]},
            "channels.0.webhook.url",
            "http or https URL",
        ),
        (
            {"channels": [{"kind": "email", "to": ["ops"]}]},
            "channels.0.email.to",
            "not an email address",
        ),
        (
            {"channels": [{"kind": "mqtt", "topic": "alerts/#"}]},
            "channels.0.mqtt.topic",
            "no + or # wildcards",
        ),
        ({"flap": {"count": 1}}, "flap.count", "greater than or equal to 2"),
        ({"name": " padded "}, "name", "without surrounding spaces"),
    ],
)
def test_errors_name_the_field_and_what_was_expected(
    change: dict[str, Any], where: str, says: str
) -> None:
    found = problems(CONTRACT_EXAMPLE | change)
    assert any(loc == where and says in msg for loc, msg in found), found


@pytest.mark.parametrize(
    ("data", "where", "says"),
    [
        (
            {"kind": "rate", "metric": "t", "condition": {"op": ">", "value": 1}},
            "condition.window",
            "Field required",
        ),
        (
            {"kind": "rate", "metric": "t", "condition": {"op": ">", "value": 1, "window": "0s"}},
            "condition.window",
            "longer than 0s",
        ),
        (
            {"kind": "quality", "metric": "t", "condition": {"clock_offset": "30s"}},
            "metric",
            "drop `metric`",
        ),
        (
            {"kind": "quality", "condition": {"rejection_rate": 1.5, "window": "1m"}},
            "condition.rejection_rate",
            "less than or equal to 1",
        ),
        (
            {"kind": "no_data", "condition": {"for": "5m"}, "for": "1m"},
            "for",
            'duration in `condition`: {"for": "5m"}',
        ),
        (
            {"kind": "anomaly", "metric": "t", "condition": {"sigma": 3}, "clear": {"op": ">"}},
            "clear",
            "only threshold and rate rules take a `clear`",
        ),
        (
            {
                "kind": "rate",
                "metric": "t",
                "condition": {"op": ">", "value": 2, "window": "1m"},
                "clear": {"op": "<", "value": 3},
            },
            "clear",
            "2.5 satisfies both",
        ),
    ],
)
def test_kind_specific_errors(data: dict[str, Any], where: str, says: str) -> None:
    found = problems({"name": "r"} | data)
    assert any(loc == where and says in msg for loc, msg in found), found


def test_update_applies_a_subset_and_revalidates() -> None:
    rule = Rule.model_validate(CONTRACT_EXAMPLE)
    changed = apply_update(rule, RuleUpdate.model_validate({"for": "5m", "clear": None}))
    assert changed.for_ == 300 * S and changed.clear is None and changed.name == rule.name
    with pytest.raises(ValidationError, match="overlaps"):
        apply_update(rule, RuleUpdate.model_validate({"clear": {"op": "<", "value": 0}}))
    with pytest.raises(ValidationError, match="Extra inputs"):
        RuleUpdate.model_validate({"colour": "red"})


@pytest.mark.parametrize(
    ("scope", "device", "type_", "tags", "expected"),
    [
        ({}, "d1", None, [], True),
        ({"devices": ["d1", "d2"]}, "d2", None, [], True),
        ({"devices": ["d1"]}, "d3", "freezer", [], False),
        ({"type": "freezer"}, "d3", "freezer", [], True),
        ({"type": "freezer"}, "d3", None, [], False),
        ({"tag": "cold-room"}, "d3", None, ["a", "cold-room"], True),
        ({"tag": "cold-room"}, "d3", "freezer", ["a"], False),
    ],
)
def test_applies_to(
    scope: dict[str, Any], device: str, type_: str | None, tags: list[str], expected: bool
) -> None:
    assert applies_to(Scope.model_validate(scope), device, type_, tags) is expected


@given(st.integers(0, 999_999), st.sampled_from("smhd"))
def test_durations_round_trip(n: int, unit: str) -> None:
    text = f"{n}{unit}"
    try:
        us = parse_duration(text)
    except ValueError as e:
        assert "longer than the longest duration allowed, 366d" in str(e)
        return
    assert parse_duration(format_duration(us)) == us


def test_durations() -> None:
    assert parse_duration("30s") == 30 * S
    assert parse_duration("1d") == 86_400 * S
    assert format_duration(120 * S) == "2m" and format_duration(90 * S) == "90s"
    assert format_duration(0) == "0s"


values = st.integers(-6, 6).map(float)
ranges = st.tuples(values, values).filter(lambda r: r[0] < r[1])
conditions = st.one_of(
    st.builds(Compare, op=st.sampled_from([">", ">=", "<", "<=", "==", "!="]), value=values),
    st.builds(Outside, outside=ranges),
    st.builds(Inside, inside=ranges),
)


@given(conditions, conditions, st.lists(st.floats(-10, 10), max_size=50))
def test_overlap_is_exact(a: Any, b: Any, xs: list[float]) -> None:
    found = overlap(a, b)
    if found is None:  # no value satisfies both: not these, nor the integers and halves
        grid = [x / 2 for x in range(-30, 31)]
        assert not any(holds(a, x) and holds(b, x) for x in [*xs, *grid])
    else:
        assert holds(a, found) and holds(b, found)
