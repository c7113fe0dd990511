"""The live bus's pure parts: frames of committed readings, filters, bounded client queues,
and the in-process bus end to end (publish → subscription)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetra.ingest.pipeline import Committed
from telemetra.live import (
    TYPES,
    Event,
    Filter,
    LocalBus,
    Subscription,
    parse_filter,
    readings_frames,
)
from telemetra.model import Reading

names = st.sampled_from(["d1", "d2", "d3"])
metrics = st.sampled_from(["temperature", "humidity", "door"])
committed = st.lists(
    st.builds(
        Committed,
        st.integers(1, 3),
        names,
        st.builds(
            Reading,
            metrics,
            st.integers(0, 10**15),
            st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
            st.one_of(st.none(), st.text(max_size=5)),
        ),
    ),
    max_size=40,
)


@given(committed)
def test_one_frame_per_tenant_and_device_with_every_reading_in_time_order(
    batch: list[Committed],
) -> None:
    frames = readings_frames(batch)
    keys = [(t, f["device"]) for t, fs in frames.items() for f in fs]
    assert sorted(keys) == sorted({(c.tenant_id, c.device) for c in batch})
    assert len(keys) == len(set(keys))
    for tenant, fs in frames.items():
        for frame in fs:
            assert frame["type"] == "readings"
            ours = [
                c.reading for c in batch if (c.tenant_id, c.device) == (tenant, frame["device"])
            ]
            assert len(frame["points"]) == len(ours)
            times = [datetime.fromisoformat(p["ts"]) for p in frame["points"]]
            assert times == sorted(times)
            assert sorted(times) == sorted(
                datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=r.ts) for r in ours
            )
            for point in frame["points"]:
                assert point["ts"].endswith("Z")
            values = sorted(map(repr, (p["value"] for p in frame["points"])))
            assert values == sorted(repr(r.text if r.value is None else r.value) for r in ours)
            json.dumps(frame)  # plain JSON


frames_st = st.fixed_dictionaries(
    {
        "type": st.just("readings"),
        "device": names,
        "points": st.lists(
            st.fixed_dictionaries({"metric": metrics, "ts": st.just("2026-11-22T10:00:00Z"),
                                   "value": st.floats(-50, 50)}),
            min_size=1, max_size=5,
        ),
    }
)  # fmt: skip
filters = st.builds(
    Filter,
    st.one_of(st.none(), st.frozensets(names)),
    st.one_of(st.none(), st.frozensets(metrics)),
    st.frozensets(st.sampled_from(TYPES)),
)


@given(frames_st, filters)
def test_a_filter_passes_exactly_what_it_names(frame: dict[str, object], flt: Filter) -> None:
    seen = flt.apply(Event(frame))
    wanted = [p for p in frame["points"] if flt.metrics is None or p["metric"] in flt.metrics]  # type: ignore[attr-defined]
    if (
        "readings" not in flt.types
        or (flt.devices is not None and frame["device"] not in flt.devices)
        or not wanted
    ):
        assert seen is None
    else:
        assert seen is not None
        assert seen.frame["points"] == wanted
        assert seen.frame["device"] == frame["device"]
        assert json.loads(seen.text()) == seen.frame


def test_filters_of_status_and_alert_frames() -> None:
    status = Event({"type": "status", "device": "d1", "online": False, "last_seen": None})
    alert = Event({"type": "alert", "event": "fired", "alert": {"device": "d1", "metric": "t"}})
    assert Filter(metrics=frozenset({"x"})).apply(status) is status  # about the device
    assert Filter(metrics=frozenset({"x"})).apply(alert) is None
    assert Filter(devices=frozenset({"d1"}), metrics=frozenset({"t"})).apply(alert) is alert
    assert Filter(devices=frozenset({"d2"})).apply(alert) is None
    assert Filter(types=frozenset({"readings"})).apply(status) is None


def test_parse_filter() -> None:
    assert parse_filter(None, None, None) == Filter()
    assert parse_filter("a, b,", "t", "alert") == Filter(
        frozenset({"a", "b"}), frozenset({"t"}), frozenset({"alert"})
    )
    with pytest.raises(ValueError, match="types: unknown gossip; use readings, status, alert"):
        parse_filter(None, None, "readings,gossip")


@given(st.integers(10, 30), st.integers(0, 100))
def test_a_full_queue_drops_the_oldest_and_says_how_many(limit: int, n: int) -> None:
    sub = Subscription(1, Filter(), limit)
    for i in range(n):
        sub.offer(Event({"type": "readings", "device": f"d{i}", "points": [{"metric": "m"}]}))
    taken = [json.loads(text) for _, text in sub.take()]
    if n > limit:
        assert taken[0] == {"type": "gap", "dropped": n - limit, "reason": "slow_client"}
        taken = taken[1:]
    assert [f["device"] for f in taken] == [f"d{i}" for i in range(max(0, n - limit), n)]
    assert sub.take() == []  # nothing twice, and the count starts again


async def test_the_in_process_bus_delivers_per_tenant() -> None:
    bus = LocalBus(client_queue=100)
    await bus.start()
    try:
        async with (
            bus.following(1, Filter()) as one,
            bus.following(2, Filter()) as two,
            bus.following(None, Filter()) as everyone,
        ):
            bus.publish_committed(
                [Committed(1, "a", Reading("t", 1, 1.0)), Committed(2, "b", Reading("t", 1, 2.0)),
                 Committed(1, "a", Reading("t", 2, 3.0))]
            )  # fmt: skip
            got = {
                name: [json.loads(t) for _, t in await asyncio.wait_for(sub.next(5), 5)]
                for name, sub in (("one", one), ("two", two), ("everyone", everyone))
            }
        assert [(f["device"], len(f["points"])) for f in got["one"]] == [("a", 2)]
        assert [(f["device"], len(f["points"])) for f in got["two"]] == [("b", 1)]
        assert sorted(f["device"] for f in got["everyone"]) == ["a", "b"]
        assert len(bus.hub) == 0
        # Nobody follows: nothing is even queued.
        bus.publish_committed([Committed(1, "a", Reading("t", 3, 1.0))])
        assert not bus._pending
    finally:
        await bus.close()
