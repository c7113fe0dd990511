"""Alert evaluation, kind by kind, on concrete readings."""

from __future__ import annotations

import json
from typing import Any

import pytest

from telemetra.alerts.evaluate import (
    Event,
    Point,
    QualitySample,
    SeriesState,
    observe,
    observe_all,
    observe_quality,
    preview,
    resolved_by_hand,
    tick,
)
from telemetra.alerts.rules import Rule

S = 1_000_000
M = 60 * S


def rule(**fields: Any) -> Rule:
    base: dict[str, Any] = {"name": "r", "kind": "threshold", "metric": "temperature"}
    return Rule.model_validate(base | fields)


def run(r: Rule, readings: list[tuple[float, float]], device: str = "d1") -> list[Event]:
    """(seconds, value) readings of one series, in order."""
    points = [Point(device, r.metric or "temperature", int(t * S), v) for t, v in readings]
    return observe_all(r, {}, points)


def brief(events: list[Event]) -> list[tuple[str, float]]:
    return [(e.kind, e.time_us / S) for e in events]


FREEZER = {
    "condition": {"op": ">", "value": -15},
    "for": "2m",
    "clear": {"op": "<=", "value": -17},
}


def test_threshold_fires_after_for_with_the_contract_message() -> None:
    events = run(rule(**FREEZER), [(0, -20), (60, -12.5), (120, -13), (180, -12.5)])
    assert brief(events) == [("fired", 180)]
    assert events[0].message == "temperature -12.5 > -15 for 2m"
    assert events[0].value == -12.5


def test_threshold_shorter_than_for_does_not_fire() -> None:
    assert run(rule(**FREEZER), [(0, -12), (60, -12), (100, -18), (400, -18)]) == []


def test_threshold_hysteresis_band_keeps_firing_until_clear() -> None:
    r = rule(**FREEZER | {"for": "0s"})
    events = run(r, [(0, -14), (10, -16), (20, -14.5), (30, -16.9), (40, -17)])
    assert brief(events) == [("fired", 0), ("resolved", 40)]
    assert events[1].message == "temperature -17 <= -17"


def test_threshold_default_clear_is_the_negation() -> None:
    events = run(rule(condition={"outside": [2, 8]}), [(0, 5), (10, 9), (20, 8), (30, 1)])
    assert brief(events) == [("fired", 10), ("resolved", 20), ("fired", 30)]
    assert events[0].message == "temperature 9 outside [2, 8]"
    assert events[1].message == "temperature 8, no longer outside [2, 8]"


def test_inside_and_equality_ops() -> None:
    assert brief(run(rule(condition={"inside": [2, 8]}), [(0, 1), (1, 2), (2, 9)])) == [
        ("fired", 1),
        ("resolved", 2),
    ]
    assert brief(run(rule(condition={"op": "==", "value": 1}), [(0, 0), (1, 1)])) == [("fired", 1)]
    assert brief(run(rule(condition={"op": "!=", "value": 1}), [(0, 1), (1, 0)])) == [("fired", 1)]


def test_for_ended_by_the_clock_fires_at_its_end() -> None:
    r = rule(**FREEZER)
    state, events = observe(r, SeriesState(), Point("d1", "temperature", 0, -12.0))
    assert events == []
    state, events = tick(r, state, 119 * S, "d1", "temperature")
    assert events == []
    state, events = tick(r, state, 150 * S, "d1", "temperature")
    assert brief(events) == [("fired", 120)]
    # ticking again changes nothing: one open alert per series
    assert tick(r, state, 300 * S, "d1", "temperature")[1] == []
    state, events = observe(r, state, Point("d1", "temperature", 310 * S, -18.0))
    assert brief(events) == [("resolved", 310)]


def test_a_reading_after_the_for_end_fires_what_the_clock_would_have() -> None:
    # No tick ran (the worker was down): the next reading, clear, still reports the alert.
    events = run(rule(**FREEZER), [(0, -12), (600, -18)])
    assert brief(events) == [("fired", 120), ("resolved", 600)]


def test_late_reading_is_ignored() -> None:
    r = rule(**FREEZER | {"for": "0s"})
    state, _ = observe(r, SeriesState(), Point("d1", "temperature", 100 * S, -20.0))
    for t in (100, 50):
        again, events = observe(r, state, Point("d1", "temperature", t * S, 0.0))
        assert again is state and events == []


def test_other_metrics_and_text_values_are_not_judged() -> None:
    r = rule(condition={"op": ">", "value": 0})
    state = SeriesState()
    assert observe(r, state, Point("d1", "humidity", S, 50.0)) == (state, [])
    state, events = observe(r, state, Point("d1", "temperature", S, None))
    assert events == [] and state.last_us == S


def test_rate_over_a_window() -> None:
    r = rule(kind="rate", condition={"op": ">", "value": 2, "per": "1m", "window": "10m"})
    # +1/min, then +3/min measured over the samples within 10 minutes
    readings = [(0, 0.0), (60, 1.0), (120, 2.0), (180, 8.0), (240, 14.0), (1200, 14.0)]
    events = run(r, readings)
    assert brief(events) == [("fired", 180), ("resolved", 1200)]
    assert events[0].value == pytest.approx(8 / 3)
    assert events[0].message == "temperature changing 2.666666667 per 1m over 10m > 2"


def test_rate_with_a_clear_condition() -> None:
    r = rule(
        kind="rate",
        condition={"op": ">", "value": 2, "per": "1s", "window": "1m"},
        clear={"op": "<", "value": 0.5},
    )
    events = run(r, [(0, 0), (1, 3), (2, 4), (3, 4.1), (100, 4.1)])
    assert brief(events) == [("fired", 1), ("resolved", 100)]


def test_no_data_fires_by_the_clock_and_resolves_on_data() -> None:
    r = rule(kind="no_data", metric=None, condition={"for": "5m"})
    state, _ = observe(r, SeriesState(), Point("d1", "humidity", 0, 40.0))
    state, events = tick(r, state, 299 * S, "d1", "")
    assert events == []
    state, events = tick(r, state, 400 * S, "d1", "")
    assert brief(events) == [("fired", 300)]
    assert events[0].message == "no data from d1 for 5m" and events[0].metric == ""
    state, events = observe(r, state, Point("d1", "temperature", 500 * S, 1.0))
    assert brief(events) == [("resolved", 500)]
    assert events[0].message == "data from d1 again"


def test_no_data_gap_seen_from_readings_alone() -> None:
    r = rule(kind="no_data", condition={"for": "5m"})
    assert brief(run(r, [(0, 1), (200, 1), (800, 1), (900, 1)])) == [
        ("fired", 500),
        ("resolved", 800),
    ]


def test_quality_rejection_rate() -> None:
    r = rule(kind="quality", metric=None, condition={"rejection_rate": 0.2, "window": "15m"})
    state = SeriesState()
    events: list[Event] = []
    for t, ok, bad in [(0, 50, 5), (60, 10, 30), (120, 20, 0)]:
        state, more = observe_quality(r, state, QualitySample("d1", t * S, ok, bad))
        events += more
    assert brief(events) == [("fired", 60)]
    assert events[0].message == "36.8 % of messages from d1 rejected over 15m > 20 %"
    # rejections leave the window: resolved by the clock
    state, events = tick(r, state, 1000 * S, "d1", "")
    assert brief(events) == [("resolved", 1000)]


def test_quality_needs_enough_messages() -> None:
    r = rule(kind="quality", metric=None, condition={"rejection_rate": 0.2, "window": "15m"})
    _, events = observe_quality(r, SeriesState(), QualitySample("d1", S, 1, 5))
    assert events == []


def test_quality_clock_offset() -> None:
    r = rule(kind="quality", metric=None, condition={"clock_offset": "30s"})
    state, events = observe_quality(
        r, SeriesState(), QualitySample("d1", S, clock_offset_us=-45 * S)
    )
    assert brief(events) == [("fired", 1)]
    assert events[0].message == "clock of d1 off by -45s, beyond ±30s"
    state, events = observe_quality(r, state, QualitySample("d1", 2 * S, 3, 0))
    assert events == []  # no offset estimate: no verdict
    _, events = observe_quality(r, state, QualitySample("d1", 3 * S, clock_offset_us=2 * S))
    assert brief(events) == [("resolved", 3)]


def test_anomaly_fires_on_a_spike_after_warmup() -> None:
    r = rule(kind="anomaly", condition={"sigma": 4, "halflife": "1h", "warmup": 20})
    noise = [20.0 + (0.5 if i % 2 else -0.5) for i in range(40)]
    readings = [(i * 60, v) for i, v in enumerate(noise)]
    assert run(r, readings) == []
    events = run(r, [*readings, (40 * 60, 30.0), (41 * 60, 20.2)])
    assert brief(events) == [("fired", 2400), ("resolved", 2460)]
    assert events[0].message.startswith("temperature 30 is ")
    assert events[0].message.endswith("σ from its mean")


def test_anomaly_after_a_constant_stretch() -> None:
    r = rule(kind="anomaly", condition={"sigma": 3, "warmup": 5})
    events = run(r, [(i, 7.0) for i in range(10)] + [(10, 7.5)])
    assert [e.message for e in events] == ["temperature 7.5 is far from its mean"]
    state: dict[Any, SeriesState] = {}
    observe_all(r, state, [Point("d1", "temperature", i * S, 7.0 + (i == 9)) for i in range(10)])
    json.dumps(state[("d1", "temperature")].to_dict(), allow_nan=False)  # storable as JSON


def test_anomaly_waits_for_warmup() -> None:
    r = rule(kind="anomaly", condition={"sigma": 1, "warmup": 10})
    assert run(r, [(i, float(i % 2)) for i in range(9)] + [(9, 100.0)]) == []


def test_flapping_holds_the_alert_until_stable() -> None:
    r = rule(condition={"op": ">", "value": 0}, flap={"count": 3, "window": "10m"})
    flips = [(t * 10, 1.0 if t % 2 == 0 else -1.0) for t in range(10)]  # fire/clear every 10 s
    events = run(r, flips)
    assert brief(events) == [
        ("fired", 0),
        ("resolved", 10),
        ("fired", 20),
        ("resolved", 30),
        ("fired", 40),
        ("flapping", 50),
    ]
    assert "flapping (3 fires within 10m)" in events[-1].message
    state: dict[Any, SeriesState] = {}
    observe_all(r, state, [Point("d1", "temperature", int(t * S), v) for t, v in flips])
    series = state[("d1", "temperature")]
    assert series.open and series.flapping
    # stable (no fire) for the window after the last clear at 90 s: resolved by the clock
    assert tick(r, series, 600 * S, "d1", "temperature")[1] == []
    _, events = tick(r, series, 700 * S, "d1", "temperature")
    assert brief(events) == [("resolved", 690)]


def test_flapping_off() -> None:
    r = rule(condition={"op": ">", "value": 0}, flap=None)
    events = run(r, [(t, 1.0 if t % 2 == 0 else -1.0) for t in range(20)])
    assert [e.kind for e in events] == ["fired", "resolved"] * 10


def test_state_round_trips_through_json() -> None:
    r = rule(kind="rate", condition={"op": ">", "value": 2, "window": "10m"})
    state: dict[Any, SeriesState] = {}
    observe_all(r, state, [Point("d1", "temperature", t * S, t * 1.5) for t in range(5)])
    s = state[("d1", "temperature")]
    assert SeriesState.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_preview_reports_transitions_in_range() -> None:
    r = rule(**FREEZER | {"for": "0s"})
    points = [
        Point("a", "temperature", 0, -10.0),  # before the range: warms up, not reported
        Point("a", "temperature", 100 * S, -20.0),
        Point("b", "temperature", 150 * S, -10.0),
        Point("a", "temperature", 200 * S, -10.0),
        Point("b", "humidity", 210 * S, 99.0),
        Point("b", "temperature", 900 * S, -10.0),  # after the range
    ]
    events = preview(r, reversed(points), 50 * S, 500 * S)
    assert [(e.kind, e.device, e.time_us // S) for e in events] == [
        ("resolved", "a", 100),
        ("fired", "b", 150),
        ("fired", "a", 200),
    ]
    assert events[0].to_dict()["event"] == "resolved"


def test_preview_judges_durations_at_the_end_of_the_range() -> None:
    r = rule(kind="no_data", condition={"for": "5m"})
    events = preview(r, [Point("a", "temperature", 0, 1.0)], 0, 600 * S)
    assert brief(events) == [("fired", 300)]


def test_rate_state_stays_small_on_a_dense_series() -> None:
    r = rule(kind="rate", condition={"op": ">", "value": 2, "per": "1m", "window": "10m"})
    states: dict[Any, SeriesState] = {}
    # 1.5 per minute, a reading every second for almost 3 hours
    events = observe_all(
        r, states, [Point("d1", "temperature", t * S, t / 40) for t in range(10_000)]
    )
    state = states[("d1", "temperature")]
    assert events == [] and len(state.window) <= 66
    assert state.measure == pytest.approx(1.5)
    assert state.window[0][0] >= (10_000 - 1 - 600 - 600 / 64) * S  # baseline near window start


def test_flap_fire_times_kept_are_bounded() -> None:
    r = rule(condition={"op": ">", "value": 0}, flap={"count": 3, "window": "1h"})
    states: dict[Any, SeriesState] = {}
    observe_all(r, states, [Point("d1", "temperature", t * S, (-1.0) ** t) for t in range(500)])
    assert len(states[("d1", "temperature")].fires) <= 3


def test_no_data_for_a_device_that_never_reported() -> None:
    r = rule(kind="no_data", metric=None, condition={"for": "5m"})
    assert tick(r, SeriesState(), 3600 * S, "d9", "")[1] == []  # nothing known: no silence
    _, events = tick(r, SeriesState(last_us=1000 * S), 3600 * S, "d9", "")
    assert brief(events) == [("fired", 1300)]


def test_resolved_by_hand_fires_again_only_after_for() -> None:
    r = rule(**FREEZER)
    states: dict[Any, SeriesState] = {}
    events = observe_all(r, states, [Point("d1", "temperature", t * S, -12.0) for t in (0, 130)])
    assert brief(events) == [("fired", 120)]
    state = resolved_by_hand(states[("d1", "temperature")])
    assert not state.open
    state, events = observe(r, state, Point("d1", "temperature", 140 * S, -12.0))
    assert events == []  # breaching again from 140 s: `for` counts anew
    state, events = observe(r, state, Point("d1", "temperature", 260 * S, -12.0))
    assert brief(events) == [("fired", 260)]
