"""Properties of alert evaluation that must hold for any readings (hypothesis)."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from telemetra.alerts.evaluate import (
    Event,
    Point,
    SeriesKey,
    SeriesState,
    observe,
    observe_all,
    tick,
)
from telemetra.alerts.rules import Rule, holds, parse_duration

S = 1_000_000
OPS = [">", ">=", "<", "<=", "==", "!="]

ops = st.sampled_from(OPS)
small = st.integers(-5, 5).map(float)
compares = st.builds(lambda op, v: {"op": op, "value": v}, ops, small)
ranges = st.tuples(small, small).filter(lambda r: r[0] < r[1]).map(list)
thresholds = st.one_of(
    compares, ranges.map(lambda r: {"outside": r}), ranges.map(lambda r: {"inside": r})
)
fors = st.sampled_from(["0s", "5s", "30s", "2m"])
flaps = st.one_of(
    st.none(),
    st.builds(
        lambda c, w: {"count": c, "window": w},
        st.integers(2, 4),
        st.sampled_from(["5s", "30s", "2m"]),
    ),
)


@st.composite
def condition_and_clear(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A condition and a clear condition that excludes it (the model refuses overlaps)."""
    a, gap = draw(small), draw(st.integers(0, 3))
    lo, hi = draw(ranges)
    pairs = [
        ({"op": draw(st.sampled_from([">", ">="])), "value": a}, {"op": "<", "value": a - gap}),
        ({"op": draw(st.sampled_from(["<", "<="])), "value": a}, {"op": ">", "value": a + gap}),
        ({"op": ">", "value": a}, {"op": "<=", "value": a - gap}),
        ({"outside": [lo, hi]}, {"inside": [lo, hi]}),
        ({"inside": [lo, hi]}, {"outside": [lo, hi]}),
        ({"outside": [lo - gap, hi + gap]}, {"inside": [lo, hi]}),
    ]
    return draw(st.sampled_from(pairs))


@st.composite
def threshold_rules(draw: st.DrawFn, with_clear: bool | None = None) -> Rule:
    condition = draw(thresholds)
    clear = None
    if with_clear is not False and (with_clear or draw(st.booleans())):
        condition, clear = draw(condition_and_clear())
    data: dict[str, Any] = {
        "name": "r",
        "kind": "threshold",
        "metric": "m",
        "condition": condition,
        "clear": clear,
        "for": draw(fors),
        "flap": draw(flaps),
    }
    return Rule.model_validate(data)


def other_rules() -> st.SearchStrategy[Rule]:
    specs = [
        {"kind": "rate", "condition": {"op": ">", "value": 1, "per": "10s", "window": "1m"}},
        {"kind": "rate", "condition": {"op": "<", "value": -1, "per": "1s", "window": "30s"}},
        {"kind": "no_data", "metric": None, "condition": {"for": "30s"}},
        {"kind": "no_data", "condition": {"for": "1m"}},
        {"kind": "anomaly", "condition": {"sigma": 2, "halflife": "1m", "warmup": 5}},
    ]
    return st.sampled_from(specs).map(
        lambda spec: Rule.model_validate({"name": "r", "metric": "m"} | spec)
    )


any_rules = st.one_of(threshold_rules(), other_rules())
readings = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 600), small), max_size=60
)


def points(raw: list[tuple[str, int, float]]) -> list[Point]:
    return [Point(device, "m", t * S, v) for device, t, v in raw]


def by_series(events: list[Event]) -> dict[SeriesKey, list[Event]]:
    grouped: dict[SeriesKey, list[Event]] = defaultdict(list)
    for e in events:
        grouped[(e.device, e.metric)].append(e)
    return dict(grouped)


@given(any_rules, readings, st.randoms(use_true_random=False))
def test_interleaving_across_series_does_not_change_alerts(
    rule: Rule, raw: list[tuple[str, int, float]], rnd: Any
) -> None:
    original = points(raw)
    queues: dict[str, list[Point]] = defaultdict(list)
    for p in original:
        queues[p.device].append(p)
    labels = [p.device for p in original]
    rnd.shuffle(labels)  # another arrival order across series; each series keeps its own
    shuffled = [queues[label].pop(0) for label in labels]
    a_states: dict[SeriesKey, SeriesState] = {}
    b_states: dict[SeriesKey, SeriesState] = {}
    a = observe_all(rule, a_states, original)
    b = observe_all(rule, b_states, shuffled)
    assert by_series(a) == by_series(b)
    assert a_states == b_states


@given(any_rules, readings, st.integers(0, 600), small)
def test_a_late_reading_changes_nothing(
    rule: Rule, raw: list[tuple[str, int, float]], late_s: int, value: float
) -> None:
    states: dict[SeriesKey, SeriesState] = {}
    observe_all(rule, states, points(raw))
    for (device, metric), state in states.items():
        assert state.last_us is not None
        late = Point(device, "m", min(late_s * S, state.last_us), value)
        again, events = observe(rule, state, late)
        assert again is state and events == []
        del metric


@given(threshold_rules(with_clear=True), readings)
def test_fires_only_on_the_condition_never_on_clear(
    rule: Rule, raw: list[tuple[str, int, float]]
) -> None:
    assert rule.clear is not None
    cond = rule.condition
    assert not isinstance(cond, dict)
    for e in observe_all(rule, {}, points(raw)):
        if e.kind == "fired":
            assert e.value is not None
            assert holds(cond, e.value)  # type: ignore[arg-type]
            assert not holds(rule.clear, e.value)
        if e.kind == "resolved":
            assert e.value is not None and holds(rule.clear, e.value)


@given(threshold_rules(with_clear=True), readings)
def test_values_that_satisfy_clear_never_fire(
    rule: Rule, raw: list[tuple[str, int, float]]
) -> None:
    assert rule.clear is not None
    only_clear = [r for r in raw if holds(rule.clear, r[2])]
    states: dict[SeriesKey, SeriesState] = {}
    assert observe_all(rule, states, points(only_clear)) == []
    for (device, metric), state in states.items():
        assert tick(rule, state, 10_000 * S, device, metric)[1] == []


@given(threshold_rules(), readings)
def test_hysteresis_band_changes_nothing(rule: Rule, raw: list[tuple[str, int, float]]) -> None:
    rule = rule.model_copy(update={"for_": 0, "flap": None})
    cond, clear = rule.condition, rule.clear
    assert not isinstance(cond, dict)
    by_time: dict[tuple[str, int], float] = {}
    for d, t, v in raw:
        by_time.setdefault((d, t * S), v)  # a second reading at the same time is late
    for e in observe_all(rule, {}, points(raw)):
        v = by_time[(e.device, e.time_us)]
        # every transition happens at a reading outside the band, on the matching side
        if e.kind == "fired":
            assert holds(cond, v)  # type: ignore[arg-type]
        else:
            assert holds(clear, v) if clear else not holds(cond, v)  # type: ignore[arg-type]


@given(
    threshold_rules(with_clear=False),
    st.lists(st.tuples(st.integers(1, 60), small), min_size=1, max_size=40),
)
def test_a_condition_shorter_than_for_never_fires(
    rule: Rule, steps: list[tuple[int, float]]
) -> None:
    rule = rule.model_copy(update={"flap": None})
    cond = rule.condition
    t = 0
    series = []
    for gap, v in steps:
        t += gap
        series.append((t * S, v))
    # the longest time the condition is known to have held: from the first breaching reading of
    # a run to the next reading that does not breach (or the last breaching reading)
    longest, start = -1, None
    for ts, v in series:
        if holds(cond, v):  # type: ignore[arg-type]
            start = ts if start is None else start
            longest = max(longest, ts - start)
        elif start is not None:
            longest = max(longest, ts - start - 1)  # held for less than up to this reading
            start = None
    fired = any(
        e.kind == "fired"
        for e in observe_all(rule, {}, [Point("a", "m", ts, v) for ts, v in series])
    )
    if longest < rule.for_:
        assert not fired
    if any(holds(cond, v) for _, v in series) and longest >= rule.for_:  # type: ignore[arg-type]
        assert fired


@given(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.lists(st.integers(1, 10_000), min_size=1, max_size=200),
    st.floats(0.1, 10),
    st.sampled_from(["1s", "1m", "1h"]),
    st.integers(2, 20),
)
def test_anomaly_never_fires_on_a_constant_series(
    value: float, gaps: list[int], sigma: float, halflife: str, warmup: int
) -> None:
    rule = Rule.model_validate(
        {
            "name": "r",
            "kind": "anomaly",
            "metric": "m",
            "condition": {"sigma": sigma, "halflife": halflife, "warmup": warmup},
        }
    )
    t = 0
    pts = []
    for gap in gaps:
        t += gap * 1000
        pts.append(Point("a", "m", t, value))
    states: dict[SeriesKey, SeriesState] = {}
    assert observe_all(rule, states, pts) == []
    assert tick(rule, states[("a", "m")], t + parse_duration("1d"), "a", "m")[1] == []


@given(any_rules, readings, st.integers(0, 60), st.integers(0, 1200))
def test_state_round_trip_changes_nothing(
    rule: Rule, raw: list[tuple[str, int, float]], split: int, tick_s: int
) -> None:
    pts = points(raw)
    plain: dict[SeriesKey, SeriesState] = {}
    expected = observe_all(rule, plain, pts)

    states: dict[SeriesKey, SeriesState] = {}
    got = observe_all(rule, states, pts[:split])
    restored = {
        key: SeriesState.from_dict(json.loads(json.dumps(state.to_dict(), allow_nan=False)))
        for key, state in states.items()
    }
    assert restored == states
    got += observe_all(rule, restored, pts[split:])
    assert got == expected and restored == plain
    for (device, metric), state in plain.items():
        again = SeriesState.from_dict(json.loads(json.dumps(state.to_dict())))
        now = tick_s * S
        assert tick(rule, again, now, device, metric) == tick(rule, state, now, device, metric)


@settings(max_examples=200)
@given(any_rules, readings, st.lists(st.integers(0, 1200), max_size=10))
def test_one_open_alert_per_series(
    rule: Rule, raw: list[tuple[str, int, float]], ticks: list[int]
) -> None:
    states: dict[SeriesKey, SeriesState] = {}
    events = observe_all(rule, states, points(raw))
    for now in sorted(ticks):
        for key, state in list(states.items()):
            states[key], more = tick(rule, state, now * S, *key)
            events += more
    for series in by_series(events).values():
        open_ = False
        for e in series:
            if e.kind == "fired":
                assert not open_
                open_ = True
            else:
                assert open_  # flapping and resolved only for an open alert
                open_ = e.kind == "flapping"


@given(any_rules, readings, st.integers(0, 1200))
def test_inputs_never_change_the_state_they_are_given(
    rule: Rule, raw: list[tuple[str, int, float]], now_s: int
) -> None:
    states: dict[SeriesKey, SeriesState] = {}
    for p in points(raw):
        key = (p.device, "m" if rule.metric else "")
        before = states.get(key, SeriesState())
        snapshot = before.to_dict()
        states[key], _ = observe(rule, before, p)
        assert before.to_dict() == snapshot
        tick(rule, states[key], now_s * S, *key)
        assert before.to_dict() == snapshot
