"""The device simulator: deterministic generation, faults at their rates, formats, publishing."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from telemetra.sim import (
    FORMATS,
    Faults,
    Fleet,
    Outcomes,
    SimError,
    SimMessage,
    fleet_devices,
    metric_names,
    run,
)
from telemetra.store.database import open_database
from telemetra.store.schema import devices, readings

from conftest import stop

START = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
ALL_FORMATS = ("native", "event", "chirpstack", "tele")


def gen(
    n: int = 2000,
    faults: Faults | None = None,
    seed: int = 7,
    devices: int = 10,
    formats: tuple[str, ...] = ("native",),
    metrics: int = 10,
    **kw: Any,
) -> list[SimMessage]:
    fleet = Fleet(devices, seed, START, 1.0, faults or Faults(), formats, metrics, **kw)
    return list(fleet.messages(n))


def strict_json(payload: bytes) -> Any:
    """Parse like a careful ingest: UTF-8, no NaN, no duplicate keys, bounded depth."""

    def no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate key")
        return dict(pairs)

    def no_constant(name: str) -> Any:
        raise ValueError(name)

    value = json.loads(payload.decode(), object_pairs_hook=no_dupes, parse_constant=no_constant)
    if payload.count(b"{") > 100:
        raise ValueError("too deep")
    return value


def tagged(msgs: list[SimMessage], fault: str) -> list[SimMessage]:
    return [m for m in msgs if fault in m.faults]


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_and_other_seed_differs() -> None:
    a = gen(3000, Faults.all(), formats=ALL_FORMATS)
    b = gen(3000, Faults.all(), formats=ALL_FORMATS)
    assert [(m.topic, m.payload) for m in a] == [(m.topic, m.payload) for m in b]
    c = gen(3000, Faults.all(), seed=8, formats=ALL_FORMATS)
    assert [m.payload for m in a] != [m.payload for m in c]


def test_a_device_is_the_same_in_every_shard() -> None:
    fleet = Fleet(6, 3, START, 1.0, Faults.all(), ALL_FORMATS)
    whole = [m for m in fleet.messages(6000) if m.device == fleet.device_id(4)]
    half = Fleet(6, 3, START, 1.0, Faults.all(), ALL_FORMATS, shard=(0, 2))
    assert fleet.device_id(4) in half.device_ids() and fleet.device_id(1) not in half.device_ids()
    part = [m for m in half.messages(6000) if m.device == fleet.device_id(4)]
    n = min(len(whole), len(part))
    assert n > 500 and whole[:n] == part[:n]


def test_clean_fleet_has_no_faults_and_names_devices() -> None:
    msgs = gen(1000, Faults.none(), devices=5)
    assert {m.kind for m in msgs} == {"normal"}
    assert {m.device for m in msgs} == {f"sim-{i:05d}" for i in range(5)}
    assert all(strict_json(m.payload) for m in msgs)


def test_timestamps_advance_by_interval_per_device() -> None:
    fleet = Fleet(4, 1, START, 2.5, Faults(), ("native",))
    per: dict[str, list[int]] = defaultdict(list)
    for m in fleet.messages(400):
        per[m.device].append(m.ts_us)
    for series in per.values():
        assert {b - a for a, b in itertools.pairwise(series)} == {2_500_000}


def test_until_stops_at_simulated_time() -> None:
    msgs = list(Fleet(3, 1, START, 1.0, Faults()).messages(until_us=START + 10_000_000))
    assert len(msgs) == 30 and max(m.ts_us for m in msgs) < START + 10_000_000


def test_clock_gives_realtime_timestamps() -> None:
    now = [START + 123_456]
    fleet = Fleet(1, 1, 0, 1.0, Faults(), clock=lambda: now[0])
    it = fleet.messages(4)
    first = next(it)
    assert first.ts_us == START + 123_000
    assert json.loads(first.payload)["ts"] == (START + 123_000) // 1000
    now[0] += 5_000_000
    assert next(it).ts_us == START + 5_123_000
    assert next(it).ts_us == START + 5_124_000  # same ms again: strictly increasing per device


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("field", "marker"),
    [
        ("duplicates", "duplicate"),
        ("out_of_order", "out_of_order"),
        ("late", "late"),
        ("missing_fields", "missing_fields"),
        ("spikes", "spike"),
        ("garbage", "garbage"),
    ],
)
def test_fault_appears_at_its_rate(field: str, marker: str) -> None:
    rate = 0.05
    msgs = gen(12_000, Faults(**{field: rate}), devices=20, formats=ALL_FORMATS)
    share = len(tagged(msgs, marker)) / len(msgs)
    assert rate * 0.7 < share < rate * 1.3, share
    assert all(m.kind == marker for m in tagged(msgs, marker))


def test_offline_devices_fall_silent() -> None:
    until = START + 1000 * 1_000_000
    full = list(Fleet(10, 1, START, 1.0, Faults()).messages(until_us=until))
    some = list(Fleet(10, 1, START, 1.0, Faults(offline=0.2)).messages(until_us=until))
    assert 0.7 < len(some) / len(full) < 0.9
    assert tagged(some, "gap")  # the first message after a silence


def test_clock_drift_offsets_some_devices_and_one_falls_back_to_1970() -> None:
    msgs = gen(20_000, Faults(clock_drift=0.2), devices=50)
    drifting = {m.device for m in tagged(msgs, "drift")}
    assert 5 <= len(drifting) <= 16
    epoch = tagged(msgs, "epoch")
    assert epoch and len({m.device for m in epoch}) == 1
    assert all(m.ts_us < 3600 * 1_000_000 for m in epoch)
    for m in tagged(msgs, "drift"):
        if "epoch" not in m.faults:
            offset = abs(m.ts_us - (START + (m.seq - 1) * 1_000_000)) / 1e6
            assert 59 < offset < 601 + 1, offset


def test_duplicates_are_identical_copies() -> None:
    msgs = gen(5000, Faults(duplicates=0.05))
    originals = {(m.device, m.event_id): m.payload for m in msgs if m.kind == "normal"}
    for dup in tagged(msgs, "duplicate"):
        assert originals[(dup.device, dup.event_id)] == dup.payload


def test_event_ids_are_unique_per_device_except_duplicates() -> None:
    msgs = [m for m in gen(5000, Faults.all(), formats=ALL_FORMATS) if "duplicate" not in m.faults]
    assert len({(m.device, m.event_id) for m in msgs}) == len(msgs)


def test_timestamps_monotonic_per_device_except_injected_faults() -> None:
    msgs = gen(10_000, Faults.all(), devices=10, formats=ALL_FORMATS)
    last: dict[str, int] = {}
    for m in msgs:
        if {"out_of_order", "duplicate", "epoch"} & set(m.faults):
            continue
        assert m.ts_us > last.get(m.device, -1), m
        last[m.device] = m.ts_us


def test_garbage_is_not_valid_json_and_covers_every_variant() -> None:
    msgs = gen(10_000, Faults(garbage=0.05), formats=ALL_FORMATS)
    bad = tagged(msgs, "garbage")
    variants = Counter(f for m in bad for f in m.faults if f.startswith("garbage."))
    assert set(variants) == {
        "garbage.truncated",
        "garbage.nan",
        "garbage.non_utf8",
        "garbage.deep",
        "garbage.duplicate_key",
    }
    for m in bad:
        with pytest.raises(ValueError):
            strict_json(m.payload)
    for m in msgs:
        if "garbage" not in m.faults:
            strict_json(m.payload)


def test_spikes_are_impossible_and_missing_fields_are_missing() -> None:
    msgs = gen(5000, Faults(spikes=0.05, missing_fields=0.05), metrics=7)
    for m in tagged(msgs, "spike"):
        v = flat_values(json.loads(m.payload))
        assert (
            not -60 < v["temperature"] < 90
            or not 0 <= v["humidity"] <= 100
            or not 0 <= v["battery"] <= 100
            or not 800 < v["pressure"] < 1100
            or not 0 < v["co2"] < 10_000
        ), v
    for m in msgs:
        n = len(flat_values(json.loads(m.payload)))
        assert n < 8 if "missing_fields" in m.faults else n == 8  # 7 numeric + status


def test_counter_resets_are_marked() -> None:
    msgs = gen(20_000, Faults(counter_resets=0.01), devices=4)
    resets = 0
    last: dict[str, float] = {}
    for m in msgs:
        energy = flat_values(json.loads(m.payload))["energy"]
        if "counter_reset" in m.faults:
            resets += 1
            assert energy < 1
        else:
            assert energy >= last.get(m.device, 0)
        last[m.device] = energy
    assert 100 < resets < 300


def test_faults_parse() -> None:
    assert Faults.parse("") == Faults.none() == Faults.parse("none")
    f = Faults.parse("drift, dup=0.05,garbage=1%")
    assert f == Faults(clock_drift=0.1, duplicates=0.05, garbage=0.01)
    assert Faults.parse(f.spec()) == f
    assert Faults.parse("all") == Faults.all()
    assert Faults.parse("all,dup=0").duplicates == 0
    assert Faults.parse("out-of-order=0.1,missing_fields,reset").out_of_order == 0.1
    assert str(Faults()) == "none"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dupe", "unknown fault 'dupe'"),
        ("dup=abc", "rate must be a number"),
        ("dup=0.9", "from 0 to 0.5"),
        ("garbage=-1", "from 0 to 1"),
        ("dup,dup=0.1", "given twice"),
        ("dup,,late", "empty entry"),
        ("offline=nan", "finite"),
    ],
)
def test_faults_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Faults.parse(text)


# --------------------------------------------------------------------------- formats


def flat_values(body: Any) -> dict[str, Any]:
    """Metric values of one parsed message, whatever its format."""
    if isinstance(body, list):
        return {e["event_type"]: e["value"] for e in body}
    if "schema" in body:
        return {body["event_type"]: body["value"]}
    if "deduplicationId" in body:
        out = dict(body["object"])
        if "rssi" in body["rxInfo"][0]:
            out["rssi"] = body["rxInfo"][0]["rssi"]
        return out
    if "Time" in body:
        out = {"temperature": body["AM2301"]["Temperature"], "status": body.get("Status")}
        return out
    values = body.get("values", body)
    return {k: v for k, v in values.items() if k not in ("ts", "event_id")}


def test_native_format() -> None:
    msgs = gen(200, devices=10, metrics=12)
    shapes = set()
    for m in msgs:
        assert m.topic == f"devices/{m.device}/telemetry"
        body = json.loads(m.payload)
        assert body["ts"] == m.ts_us // 1000 and body["event_id"] == m.event_id
        shapes.add("values" in body)
        values = flat_values(body)
        assert list(values)[:12] == [name for name, _ in metric_names(12)]
        assert values["status"] in ("ok", "warn")
        assert all(isinstance(v, int | float) for k, v in values.items() if k != "status")
    assert shapes == {True, False}  # ThingsBoard shape and flat with ts


def test_event_format() -> None:
    for m in gen(100, formats=("event",)):
        assert m.topic == f"qs/v1/{m.device}/events"
        events = json.loads(m.payload)
        assert isinstance(events, list) and len(events) == 11
        for e in events:
            assert set(e) == {
                "schema",
                "event_id",
                "device_id",
                "event_type",
                "value",
                "unit",
                "ts_device",
                "meta",
            }
            assert e["schema"] == 1 and e["device_id"] == m.device
            assert e["event_id"] == f"{m.event_id}:{e['event_type']}"
            ts = time.strptime(e["ts_device"].split(".")[0], "%Y-%m-%dT%H:%M:%S")
            assert time.strftime("%Y-%m-%dT%H:%M:%S", ts)
        assert {e["event_type"]: e["unit"] for e in events}["temperature"] == "C"
    single = gen(10, formats=("event",), metrics=1, faults=Faults(missing_fields=1.0))
    assert all(isinstance(json.loads(m.payload), dict) for m in single)


def test_chirpstack_format() -> None:
    fleet = Fleet(3, 1, START, 1.0, Faults(), ("chirpstack",))
    for m in fleet.messages(30):
        body = json.loads(m.payload)
        info = body["deviceInfo"]
        assert len(m.device) == 16 and int(m.device, 16) >= 0
        assert m.topic == f"application/{info['applicationId']}/device/{m.device}/event/up"
        assert info["devEui"] == m.device and info["deviceName"].startswith("sim-")
        assert body["deduplicationId"] == m.event_id and body["fCnt"] == m.seq
        assert body["time"].endswith("+00:00") and "temperature" in body["object"]
        assert body["rxInfo"][0]["gatewayId"] and isinstance(body["rxInfo"][0]["rssi"], int)


def test_tele_format() -> None:
    for m in gen(50, formats=("tele",)):
        assert m.topic == f"tele/{m.device}/SENSOR"
        body = json.loads(m.payload)
        assert "T" in body["Time"] and "+" not in body["Time"] and "Z" not in body["Time"]
        assert {"Temperature", "Humidity"} <= set(body["AM2301"])
        assert body["ENERGY"]["Total"] >= 0


def test_mixed_formats_and_bad_arguments() -> None:
    fleet = Fleet(8, 1, START, 1.0, Faults(), FORMATS)
    assert {m.format for m in fleet.messages(80)} == set(FORMATS)
    with pytest.raises(ValueError, match="unknown format"):
        Fleet(1, 1, START, 1.0, Faults(), ("xml",))
    with pytest.raises(ValueError, match="count or duration"):
        run("mqtt://127.0.0.1:1", count=None, duration_s=None)


# --------------------------------------------------------------------------- publishing


def subscribe_all(port: int) -> tuple[Any, Counter[str], threading.Event]:
    from paho.mqtt.client import Client
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    got: Counter[str] = Counter()
    ready = threading.Event()
    client = Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.on_connect = lambda c, *_: c.subscribe("#", qos=1)
    client.on_subscribe = lambda *_: ready.set()
    client.on_message = lambda _c, _u, msg: got.update([msg.topic.split("/")[0]])
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert ready.wait(5)
    return client, got, ready


def wait_for(got: Counter[str], n: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while sum(got.values()) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    return sum(got.values())


def test_run_publishes_every_message_at_qos1_from_two_processes(mosquitto: Any) -> None:
    client, got, _ = subscribe_all(mosquitto.port)
    seen: list[int] = []
    try:
        report = run(
            mosquitto.url,
            devices=20,
            count=500,
            seed=1,
            faults=Faults.parse("dup=0.05,garbage=0.02"),
            formats=ALL_FORMATS,
            qos=1,
            processes=2,
            progress=seen.append,
        )
        assert report.sent == 500 and report.unacked == 0 and report.failed == 0
        assert report.processes == 2 and report.elapsed_s > 0
        assert sum(v for k, v in report.by_kind.items() if "." not in k) >= 500
        assert report.by_kind.get("duplicate", 0) > 0
        assert seen and seen[-1] == 500
        assert wait_for(got, 500) == 500
        assert set(got) == {"devices", "qs", "application", "tele"}
    finally:
        client.disconnect()
        client.loop_stop()


def test_run_inline_at_qos0_with_rate_and_duration(mosquitto: Any) -> None:
    client, got, _ = subscribe_all(mosquitto.port)
    try:
        report = run(mosquitto.url, devices=5, rate=200, duration_s=0.5, qos=0, seed=2)
        assert 60 < report.sent <= 101 and report.elapsed_s < 2
        assert wait_for(got, report.sent) == report.sent
    finally:
        client.disconnect()
        client.loop_stop()


def test_run_realtime_timestamps_are_publish_times(mosquitto: Any) -> None:
    from paho.mqtt.client import Client
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    lags: list[float] = []
    ready = threading.Event()
    client = Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.on_connect = lambda c, *_: c.subscribe("devices/#", qos=1)
    client.on_subscribe = lambda *_: ready.set()
    client.on_message = lambda _c, _u, msg: lags.append(
        time.time() * 1000 - json.loads(msg.payload)["ts"]
    )
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        assert ready.wait(5)
        run(mosquitto.url, devices=3, count=50, rate=500, seed=3)
        deadline = time.monotonic() + 5
        while len(lags) < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(lags) == 50 and all(-5 <= lag < 1000 for lag in lags)
    finally:
        client.disconnect()
        client.loop_stop()


def test_run_reports_an_unreachable_broker() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SimError, match="cannot connect"):
        run(f"mqtt://127.0.0.1:{port}", count=1)


# --------------------------------------------------------------------------- what ingest answered


def ack(accepted: int, *reasons: str) -> bytes:
    rejected = [{"index": 0, "reason": r, "metric": None, "detail": ""} for r in reasons]
    return json.dumps({"accepted": accepted, "rejected": rejected, "event_ids": []}).encode()


def test_outcomes_count_acks_and_dead_letters() -> None:
    out = Outcomes(expected=3, without_ack=1)
    out.add_ack("sim-00000", ack(10))
    out.add_ack("sim-00001", ack(9, "out_of_range"))
    out.add_ack("sim-00001", b"not json")  # not an ack: ignored
    assert not out.complete
    out.add_ack("sim-00002", ack(0, "invalid_json"))
    out.add_dead_letter("0011aa", json.dumps({"reason": "future_timestamp"}).encode())
    assert out.complete and out.acked == 3 and out.accepted == 19
    assert out.rejected == Counter({"out_of_range": 1, "invalid_json": 1, "future_timestamp": 1})
    assert out.problem("mqtt://127.0.0.1:1883", 10) is None
    summary = out.summary()
    assert "ingest accepted 19 readings (duplicates included); 3 of 3 messages acknowledged" in (
        summary
    )
    assert "1 messages on routes without an ack topic" in summary


def test_outcomes_name_unknown_devices_and_the_fix() -> None:
    out = Outcomes(expected=2)
    out.add_ack("sim-00000", ack(0, "unknown_device"))
    out.add_ack("sim-00001", ack(0, "unknown_device"))
    problem = out.problem("mqtt://user:secret@broker:1883", 10)
    assert problem is not None and "\n" not in problem
    assert "nothing was stored" in problem and "unknown_device" in problem
    assert "--register" in problem and "TELEMETRA_AUTO_REGISTER=true" in problem
    assert "sim-00000" in problem and "2 devices" in problem


def test_outcomes_without_any_ack_point_at_the_ingest_worker() -> None:
    problem = Outcomes(expected=5).problem("mqtt://user:secret@broker:1883", 10)
    assert problem is not None
    assert "no ingest worker answered" in problem and "mqtt://broker:1883" in problem
    assert "secret" not in problem


def test_outcomes_all_rejected_for_other_reasons() -> None:
    out = Outcomes(expected=1)
    out.add_ack("sim-00000", ack(0, "future_timestamp", "future_timestamp"))
    problem = out.problem("mqtt://b", 10)
    assert problem is not None and "future_timestamp 2" in problem


def test_outcomes_on_routes_without_acks_judge_only_unknown_devices() -> None:
    out = Outcomes(without_ack=2)
    out.add_dead_letter("a", json.dumps({"reason": "unknown_device"}).encode())
    assert out.problem("mqtt://b", 10) is None  # one message may have been stored
    out.add_dead_letter("b", json.dumps({"reason": "unknown_device"}).encode())
    assert "unknown_device" in (out.problem("mqtt://b", 10) or "")


def test_fleet_devices_match_the_published_ids() -> None:
    members = fleet_devices(6, ALL_FORMATS, "x", 9)
    fleet = Fleet(6, 9, START, 1.0, Faults(), ALL_FORMATS, prefix="x")
    assert [uid for uid, _ in members] == fleet.device_ids()
    assert {m.device for m in fleet.messages(60)} == {uid for uid, _ in members}
    assert [name for _, name in members] == [f"x-{i:05d}" for i in range(6)]


# --------------------------------------------------------------------------- end to end


def start_worker(db_url: str, broker: Any, log: Path) -> subprocess.Popen[bytes]:
    """`telemetra ingest` without auto-registration, as the walkthrough runs it."""
    env = {
        **os.environ,
        "TELEMETRA_DATABASE_URL": db_url,
        "TELEMETRA_MQTT_URL": broker.url,
        "TELEMETRA_AUTO_REGISTER": "false",
        "TELEMETRA_MQTT_CLIENT_ID": f"ingest-{uuid.uuid4().hex[:6]}",
        "TELEMETRA_BATCH_MAX_WAIT_MS": "20",
        "TELEMETRA_LOG_FORMAT": "json",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "telemetra.cli", "ingest"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while b"connected to broker" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail(f"ingest did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return proc


def sim_cli(db_url: str, broker: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TELEMETRA_DATABASE_URL": db_url,
        "TELEMETRA_MQTT_URL": broker.url,
        "COLUMNS": "400",
    }
    return subprocess.run(
        [sys.executable, "-m", "telemetra.cli", "sim", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_sim_tells_the_truth_and_register_makes_the_walkthrough_work(
    pg_url: str, mosquitto: Any, tmp_path: Path
) -> None:
    prefix = f"walk{uuid.uuid4().hex[:6]}"
    worker = start_worker(pg_url, mosquitto, tmp_path / "ingest.log")
    run_args = ["--devices", "5", "--rate", "100", "--count", "60", "--prefix", prefix]
    try:
        unregistered = sim_cli(pg_url, mosquitto, *run_args, "--faults", "garbage=0.1")
        assert unregistered.returncode == 1, unregistered.stderr
        line = unregistered.stderr.strip().splitlines()[-1]
        assert line.startswith("error: nothing was stored")
        assert "unknown_device" in line and "--register" in line
        assert "TELEMETRA_AUTO_REGISTER=true" in line
        assert "rejected: unknown_device 60" in unregistered.stderr

        time.sleep(6)  # the worker re-asks about unknown devices after 5 s
        registered = sim_cli(
            pg_url, mosquitto, *run_args, "--faults", "spike=0.2", "--register", "--processes", "2"
        )
        assert registered.returncode == 0, registered.stderr
        assert "registered 5 devices in the default tenant (0 were there" in registered.stderr
        assert "60 of 60 messages acknowledged" in registered.stderr
        assert "rejected: out_of_range" in registered.stderr
        stored = int(registered.stderr.split("ingest accepted ")[1].split(" readings")[0])
        assert 600 < stored < 660  # 60 messages of 10 readings + status, a few spikes

        engine = await open_database(pg_url, migrate_schema=False)
        try:
            async with engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(devices.c.uid, devices.c.type, devices.c.name).where(
                            devices.c.uid.like(f"{prefix}%")
                        )
                    )
                ).all()
                count = await conn.scalar(
                    select(func.count())
                    .select_from(readings.join(devices, devices.c.id == readings.c.device_id))
                    .where(devices.c.uid.like(f"{prefix}%"))
                )
        finally:
            await engine.dispose()
        assert sorted(r.uid for r in rows) == [f"{prefix}-{i:05d}" for i in range(5)]
        assert {r.type for r in rows} == {"sim"}
        assert count == stored

        again = sim_cli(pg_url, mosquitto, *run_args, "--register", "--seed", "2")
        assert again.returncode == 0, again.stderr
        assert "registered 0 devices in the default tenant (5 were there already)" in again.stderr
    finally:
        stop(worker)


def test_sim_without_ingest_says_nobody_answered(mosquitto: Any, tmp_path: Path) -> None:
    result = sim_cli(
        f"sqlite:///{tmp_path / 'x.db'}", mosquitto, "--count", "5", "--rate", "0",
        "--ack-wait", "1",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "no ingest worker answered on the ack topics within 1 s" in result.stderr, result.stderr
    quiet = sim_cli(
        f"sqlite:///{tmp_path / 'x.db'}",
        mosquitto,
        "--count",
        "5",
        "--rate",
        "0",
        "--ack-wait",
        "0",
    )
    assert quiet.returncode == 0, quiet.stderr
