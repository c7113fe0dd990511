"""End to end over a real Mosquitto: formats, acks, redelivery, crash before commit, outages."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.store.database import open_database
from telemetra.store.schema import dead_letters, devices, readings, rollup_1m

from conftest import PG_SERVER, Broker, TcpProxy, stop

NOW_MS = int(time.time() * 1000) - 60_000


def start_ingest(
    db_url: str, broker: Broker, client_id: str, log: Path, *, wait: bool = True
) -> subprocess.Popen[bytes]:
    """`telemetra ingest` as a subprocess; by default returns once it is connected."""
    env = {
        **os.environ,
        "TELEMETRA_DATABASE_URL": db_url,
        "TELEMETRA_MQTT_URL": broker.url,
        "TELEMETRA_AUTO_REGISTER": "1",
        "TELEMETRA_MQTT_CLIENT_ID": client_id,
        "TELEMETRA_BATCH_MAX_WAIT_MS": "20",
        "TELEMETRA_LOG_FORMAT": "json",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "telemetra.cli", "ingest"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while wait and b"connected to broker" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail(f"ingest did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return proc


class Publisher:
    """A QoS1 publisher that waits for every PUBACK, and collects ack-topic messages."""

    def __init__(self, broker: Broker) -> None:
        self.acks: list[tuple[str, dict[str, Any]]] = []
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_message = lambda _c, _u, m: self.acks.append(
            (m.topic, json.loads(m.payload))
        )
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.client.subscribe(
            [("devices/+/acks", 1), ("qs/v1/+/acks", 1), ("telemetra/deadletter", 1)]
        )

    def publish(self, topic: str, payload: bytes | str | dict[str, Any] | list[Any]) -> None:
        if isinstance(payload, dict | list):
            payload = json.dumps(payload)
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def publisher(mosquitto: Broker) -> Iterator[Publisher]:
    pub = Publisher(mosquitto)
    yield pub
    pub.close()


async def count_rows(engine: AsyncEngine, prefix: str) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(
                select(func.count())
                .select_from(readings.join(devices, devices.c.id == readings.c.device_id))
                .where(devices.c.uid.like(f"{prefix}%"))
            )
            or 0
        )


async def wait_rows(engine: AsyncEngine, prefix: str, want: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    n = await count_rows(engine, prefix)
    while n < want and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        n = await count_rows(engine, prefix)
    return n


def batch_of(prefix: str, n: int, start_ms: int = NOW_MS) -> list[tuple[str, dict[str, Any]]]:
    return [
        (
            f"devices/{prefix}-{i % 5}/telemetry",
            {"ts": start_ms + i * 1000, "event_id": f"e{i}",
             "values": {"temperature": 20 + i % 7, "humidity": 40 + i % 3}},
        )
        for i in range(n)
    ]  # fmt: skip


@pytest.fixture
def ingest_log(tmp_path: Path) -> Path:
    return tmp_path / "ingest.log"


async def test_every_format_lands_and_is_acknowledged(
    db_url: str, mosquitto: Broker, publisher: Publisher, ingest_log: Path
) -> None:
    p = f"fmt{uuid.uuid4().hex[:6]}"
    worker = start_ingest(db_url, mosquitto, f"ingest-{p}", ingest_log)
    engine = await open_database(db_url, migrate_schema=False)
    try:
        publisher.publish(f"devices/{p}-a/telemetry", {"temperature": 21.5, "env": {"co2": 410}})
        publisher.publish(
            f"devices/{p}-a/telemetry", {"ts": NOW_MS, "values": {"humidity": "40", "s": "ok"}}
        )
        publisher.publish(
            f"qs/v1/{p}-b/events",
            [
                {"schema": 1, "event_id": "e-1", "device_id": f"{p}-b", "event_type": "temperature",
                 "value": 70.7, "unit": "F", "ts_device": "2026-11-22T10:00:00"},
                {"schema": 1, "event_id": "e-2", "device_id": f"{p}-b", "event_type": "temperature",
                 "value": 9999, "unit": "C", "ts_device": NOW_MS},
            ],
        )  # fmt: skip
        publisher.publish(
            f"application/app1/device/{p}-c/event/up",
            {"deduplicationId": str(uuid.uuid4()), "time": "2026-11-25T10:00:00.5+00:00",
             "deviceInfo": {"devEui": f"{p}-c"}, "object": {"temperature": 19.0},
             "rxInfo": [{"rssi": -80, "snr": 7.5}, {"rssi": -70, "snr": 3.0}]},
        )  # fmt: skip
        publisher.publish(
            f"tele/{p}-d/SENSOR", {"Time": "2026-11-25T11:00:00", "AM2301": {"Temperature": 22.1}}
        )
        publisher.publish(f"devices/{p}-a/telemetry", b"{not json")

        # a: 2 + 2, b: 1 accepted (one out of range), c: 3, d: 1
        assert await wait_rows(engine, p, 9) == 9
        deadline = time.monotonic() + 10
        while len(publisher.acks) < 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        acks = [a for t, a in publisher.acks if t != "telemetra/deadletter"]
        assert acks[2] != {"accepted": 1, "rejected": [], "event_ids": ["e-1", "e-2"]}
        assert acks[2]["accepted"] == 1 and acks[2]["rejected"][0]["reason"] == "out_of_range"
        assert acks[2]["rejected"][0]["index"] == 1 and acks[2]["event_ids"] == ["e-1", "e-2"]
        assert acks[3]["rejected"][0]["reason"] == "invalid_json"
        letters = [a for t, a in publisher.acks if t == "telemetra/deadletter"]
        assert {x["reason"] for x in letters} == {"out_of_range", "invalid_json"}
        async with engine.connect() as conn:
            stored = await conn.scalar(
                select(func.count())
                .select_from(dead_letters)
                .where(dead_letters.c.device_uid.like(f"{p}%"))
            )
        assert stored == 2
    finally:
        stop(worker)
        await engine.dispose()


async def test_redelivery_adds_no_row_and_no_rollup_count(
    db_url: str, mosquitto: Broker, publisher: Publisher, ingest_log: Path
) -> None:
    p = f"dup{uuid.uuid4().hex[:6]}"
    worker = start_ingest(db_url, mosquitto, f"ingest-{p}", ingest_log)
    engine = await open_database(db_url, migrate_schema=False)
    try:
        messages = batch_of(p, 200)
        # Messages without device time: their assigned time is remembered by event id.
        untimed = [
            (f"devices/{p}-x/telemetry", {"event_id": f"u{i}", "level": i}) for i in range(20)
        ]
        for topic, body in messages + untimed:
            publisher.publish(topic, body)
        assert await wait_rows(engine, p, 420) == 420
        for topic, body in messages + untimed:
            publisher.publish(topic, body)
        deadline = time.monotonic() + 10
        while len(publisher.acks) < 440 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(publisher.acks) == 440
        assert all(a["accepted"] >= 1 and not a["rejected"] for _, a in publisher.acks)
        assert await count_rows(engine, p) == 420
        async with engine.connect() as conn:
            rolled = await conn.scalar(
                select(func.sum(rollup_1m.c.count))
                .select_from(rollup_1m.join(devices, devices.c.id == rollup_1m.c.device_id))
                .where(devices.c.uid.like(f"{p}%"))
            )
        assert rolled == 420
    finally:
        stop(worker)
        await engine.dispose()


async def test_crash_before_commit_loses_nothing(
    db_url: str, mosquitto: Broker, publisher: Publisher, ingest_log: Path, tmp_path: Path
) -> None:
    """Kill -9 the worker while its batch cannot commit: the broker redelivers, all land once."""
    p = f"crash{uuid.uuid4().hex[:6]}"
    client_id = f"ingest-{p}"
    with outage(db_url) as (worker_url, down, up):
        worker = start_ingest(worker_url, mosquitto, client_id, ingest_log)
        engine = await open_database(db_url, migrate_schema=False)
        try:
            publisher.publish(f"devices/{p}-0/telemetry", {"ts": NOW_MS - 5000, "warmup": 1})
            assert await wait_rows(engine, p, 1) == 1
            down()
            for topic, body in batch_of(p, 100):
                publisher.publish(topic, body)
            time.sleep(1.0)  # the worker has the messages but cannot commit them
            assert await count_rows(engine, p) == 1
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            up()
            worker = start_ingest(worker_url, mosquitto, client_id, ingest_log)
            assert await wait_rows(engine, p, 201) == 201
            await asyncio.sleep(0.5)
            assert await count_rows(engine, p) == 201
        finally:
            stop(worker)
            await engine.dispose()


async def test_database_outage_holds_then_stores_everything(
    db_url: str, mosquitto: Broker, publisher: Publisher, ingest_log: Path
) -> None:
    p = f"down{uuid.uuid4().hex[:6]}"
    with outage(db_url) as (worker_url, down, up):
        worker = start_ingest(worker_url, mosquitto, f"ingest-{p}", ingest_log)
        engine = await open_database(db_url, migrate_schema=False)
        try:
            down()
            for topic, body in batch_of(p, 300):
                publisher.publish(topic, body)
            time.sleep(1.5)
            assert worker.poll() is None, "the worker must survive an outage"
            assert await count_rows(engine, p) == 0
            up()
            assert await wait_rows(engine, p, 600, timeout=40) == 600
            if db_url.startswith("postgresql"):  # SQLite just waits for its lock
                assert b"database unavailable" in ingest_log.read_bytes()
        finally:
            stop(worker)
            await engine.dispose()


class outage:
    """A database outage on demand: a TCP proxy for PostgreSQL, a held write lock for SQLite."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.proxy: TcpProxy | None = None
        self.lock: Any = None

    def __enter__(self) -> tuple[str, Any, Any]:
        if self.db_url.startswith("postgresql"):
            self.proxy = TcpProxy(int(PG_SERVER.rsplit(":", 1)[1]))
            url = self.db_url.replace(PG_SERVER.rsplit("@", 1)[1], f"127.0.0.1:{self.proxy.port}")
            return url, self.proxy.take_down, self.proxy.bring_up
        return self.db_url, self._lock, self._unlock

    def _lock(self) -> None:
        import sqlite3

        self.lock = sqlite3.connect(self.db_url.removeprefix("sqlite:///"), timeout=30)
        self.lock.execute("BEGIN EXCLUSIVE")

    def _unlock(self) -> None:
        if self.lock is not None:
            self.lock.rollback()
            self.lock.close()
            self.lock = None

    def __exit__(self, *exc: object) -> None:
        self._unlock()
        if self.proxy is not None:
            self.proxy.close()


async def test_stop_during_outage_exits_and_loses_nothing(
    db_url: str, mosquitto: Broker, publisher: Publisher, ingest_log: Path
) -> None:
    """SIGTERM while the database is down: exit promptly, leave the messages unacknowledged."""
    p = f"term{uuid.uuid4().hex[:6]}"
    client_id = f"ingest-{p}"
    with outage(db_url) as (worker_url, down, up):
        worker = start_ingest(worker_url, mosquitto, client_id, ingest_log)
        engine = await open_database(db_url, migrate_schema=False)
        try:
            down()
            for topic, body in batch_of(p, 50):
                publisher.publish(topic, body)
            time.sleep(1.0)
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(20) == 0
            assert b"left for redelivery" in ingest_log.read_bytes()
            up()
            worker = start_ingest(worker_url, mosquitto, client_id, ingest_log)
            assert await wait_rows(engine, p, 100) == 100
        finally:
            stop(worker)
            await engine.dispose()


async def test_broker_restart_and_late_broker_are_survived(
    db_url: str, tmp_path: Path, ingest_log: Path
) -> None:
    """The worker waits for a broker that is not up yet, and reconnects after a restart."""
    from conftest import free_port, start_mosquitto

    p = f"rc{uuid.uuid4().hex[:6]}"
    port = free_port()
    folder = tmp_path / "broker"
    late = Broker(port, None, folder)  # type: ignore[arg-type]
    env_worker = start_ingest(db_url, late, f"ingest-{p}", ingest_log, wait=False)
    engine = await open_database(db_url, migrate_schema=False)
    broker = None
    try:
        deadline = time.monotonic() + 10
        while b"cannot reach the broker" not in ingest_log.read_bytes():
            assert time.monotonic() < deadline, ingest_log.read_text()
            time.sleep(0.1)
        broker = start_mosquitto(folder, port)
        deadline = time.monotonic() + 20
        while b"connected to broker" not in ingest_log.read_bytes():
            assert time.monotonic() < deadline, ingest_log.read_text()
            time.sleep(0.1)
        publisher = Publisher(broker)
        publisher.publish(f"devices/{p}-0/telemetry", {"ts": NOW_MS, "a": 1})
        assert await wait_rows(engine, p, 1) == 1
        publisher.close()

        stop(broker.process)  # a broker restart: persistence keeps the worker's session
        broker = start_mosquitto(folder, port)
        publisher = Publisher(broker)
        for topic, body in batch_of(p, 20):
            publisher.publish(topic, body)
        publisher.close()
        assert await wait_rows(engine, p, 41, timeout=40) == 41
        assert ingest_log.read_bytes().count(b"connected to broker") >= 2
    finally:
        stop(env_worker)
        if broker is not None:
            stop(broker.process)
        await engine.dispose()


async def test_worker_waits_for_the_database_at_start(
    pg_url: str, mosquitto: Broker, publisher: Publisher, ingest_log: Path
) -> None:
    p = f"wait{uuid.uuid4().hex[:6]}"
    with outage(pg_url) as (worker_url, down, up):
        down()
        proc = start_ingest(worker_url, mosquitto, f"ingest-{p}", ingest_log, wait=False)
        engine = await open_database(pg_url, migrate_schema=False)
        try:
            deadline = time.monotonic() + 15
            while b"database unavailable; waiting" not in ingest_log.read_bytes():
                assert proc.poll() is None and time.monotonic() < deadline, ingest_log.read_text()
                time.sleep(0.1)
            up()
            deadline = time.monotonic() + 20
            while b"connected to broker" not in ingest_log.read_bytes():
                assert time.monotonic() < deadline, ingest_log.read_text()
                time.sleep(0.1)
            publisher.publish(f"devices/{p}-0/telemetry", {"ts": NOW_MS, "a": 1})
            assert await wait_rows(engine, p, 1) == 1
        finally:
            stop(proc)
            await engine.dispose()
