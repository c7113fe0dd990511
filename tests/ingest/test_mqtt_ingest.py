"""End to end over a real Mosquitto: formats, acks, redelivery, crash before commit, outages."""

from __future__ import annotations

import asyncio
import getpass
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

from telemetra.broker import write_config
from telemetra.certs import DeviceCA, issue_client_cert
from telemetra.credentials import mosquitto_hash
from telemetra.ingest.mqtt import diagnose_error, diagnose_refusal, parse_mqtt_url
from telemetra.store.database import open_database
from telemetra.store.schema import dead_letters, devices, readings, rollup_1m

from broker_fixtures import Client, Running, mosquitto_exe, start_broker
from conftest import PG_SERVER, Broker, TcpProxy, free_port, stop

NOW_MS = int(time.time() * 1000) - 60_000


def start_ingest(
    db_url: str,
    broker: Broker,
    client_id: str,
    log: Path,
    *,
    wait: bool = True,
    extra: dict[str, str] | None = None,
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
        **(extra or {}),
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


async def count_letters(engine: AsyncEngine, prefix: str) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(
                select(func.count())
                .select_from(dead_letters)
                .where(dead_letters.c.device_uid.like(f"{prefix}%"))
            )
            or 0
        )


async def test_retained_messages_are_not_stored_again_on_reconnect(
    db_url: str, mosquitto: Broker, publisher: Publisher, ingest_log: Path
) -> None:
    """A retained reading without time or event id, and Tasmota's retained LWT: each stored
    (or dead-lettered) once when published, however often the worker reconnects."""
    p = f"ret{uuid.uuid4().hex[:6]}"
    worker = start_ingest(db_url, mosquitto, f"ingest-{p}", ingest_log)
    engine = await open_database(db_url, migrate_schema=False)

    def retain(topic: str, payload: str) -> None:
        publisher.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)

    try:
        retain(f"devices/{p}-r/telemetry", '{"level": 1}')
        retain(f"tele/{p}-t/LWT", "Online")
        retain(f"tele/{p}-t/SENSOR", '{"AM2301": {"Temperature": 21.0}}')
        assert await wait_rows(engine, p, 2) >= 2  # the LWT may be a reading or a dead letter
        await asyncio.sleep(0.5)
        stored = (await count_rows(engine, p), await count_letters(engine, p))
        assert sum(stored) == 3
        # Reconnects: the same persistent session twice, then a fresh session (new client id).
        for i, client_id in enumerate((f"ingest-{p}", f"ingest-{p}", f"ingest-{p}-fresh")):
            stop(worker)
            log = ingest_log.with_name(f"ingest-{i}.log")  # start_ingest waits for its line
            worker = start_ingest(db_url, mosquitto, client_id, log)
            await asyncio.sleep(1.0)
            assert (await count_rows(engine, p), await count_letters(engine, p)) == stored
        # A retained publish while connected is a reading like any other.
        retain(f"devices/{p}-r/telemetry", '{"level": 2}')
        assert await wait_rows(engine, p, stored[0] + 1) == stored[0] + 1
    finally:
        stop(worker)
        await engine.dispose()
        for topic in (f"devices/{p}-r/telemetry", f"tele/{p}-t/LWT", f"tele/{p}-t/SENSOR"):
            retain(topic, "")  # clear the broker's copies


INGEST_PW = "ingest-secret"


@pytest.fixture
def tls_broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Running, str]]:
    """A broker from `broker-config` (least-privilege ACL; mTLS when the test's parameter says
    so), with one device account; yields it and the device's token."""
    mosquitto_exe()
    mtls = getattr(request, "param", False)
    ca = DeviceCA.load_or_create(tmp_path / "ca")
    port, plain = free_port(), free_port()
    token = "device-token-" + uuid.uuid4().hex
    uid = f"tls{uuid.uuid4().hex[:6]}"
    write_config(
        tmp_path / "broker", [(uid, mosquitto_hash(token))], ca, tls_port=port, plain_port=plain,
        require_certificate=mtls, ingest_password=INGEST_PW, user=getpass.getuser(),
    )  # fmt: skip
    running = start_broker(tmp_path / "broker", port, ca)
    yield running, f"{uid}:{token}"
    stop(running.process)


def broker_env(broker: Running, *, cert: bool, password: str = INGEST_PW) -> dict[str, str]:
    """README step 5: the ingest worker's settings for a `broker-config` folder."""
    out = broker.out
    env = {
        "TELEMETRA_MQTT_URL": f"mqtts://telemetra-ingest:{password}@localhost:{broker.port}",
        "TELEMETRA_MQTT_CA_FILE": str(out / "ca.pem"),
        "TELEMETRA_MQTT_SHARE_GROUP": "telemetra",
    }
    if cert:
        env["TELEMETRA_MQTT_CERT_FILE"] = str(out / "ingest.crt")
        env["TELEMETRA_MQTT_KEY_FILE"] = str(out / "ingest.key")
    return env


@pytest.mark.parametrize("tls_broker", [False, True], ids=["password", "mtls"], indirect=True)
async def test_readme_steps_4_and_5_ingest_under_the_generated_acl(
    sqlite_url: str, tls_broker: tuple[Running, str], ingest_log: Path, clients: list[Client],
    tmp_path: Path,
) -> None:  # fmt: skip
    broker, login = tls_broker
    uid, token = login.split(":")
    mtls = (broker.out / "ingest.crt").exists()
    placeholder = Broker(broker.port, None, broker.out)  # type: ignore[arg-type]
    worker = start_ingest(sqlite_url, placeholder, f"ingest-{uid}", ingest_log,
                          extra=broker_env(broker, cert=mtls))  # fmt: skip
    engine = await open_database(sqlite_url, migrate_schema=False)
    try:
        if mtls:
            cert, key = issue_client_cert(broker.ca, uid)
            (tmp_path / "d.crt").write_bytes(cert)
            (tmp_path / "d.key").write_bytes(key)
            device = Client(broker.port, ca=broker.ca_file, cert=tmp_path / "d.crt",
                            key=tmp_path / "d.key")  # fmt: skip
        else:
            device = Client(broker.port, ca=broker.ca_file, username=uid, password=token)
        clients.append(device)
        device.subscribe(f"devices/{uid}/acks")
        device.publish(f"devices/{uid}/telemetry", '{"temperature": 21.5}')
        device.publish(f"devices/{uid}/telemetry", '{"temperature": 6000}')
        acks = [json.loads(body) for _, body in device.receive(5.0)]
        assert [a["accepted"] for a in acks[:2]] == [1, 0], acks
        assert acks[1]["rejected"][0]["reason"] == "out_of_range"
        assert await count_rows(engine, uid) == 1
        assert await count_letters(engine, uid) == 1
    finally:
        stop(worker)
        await engine.dispose()


def _first_words(log: Path, phrase: str) -> int:
    return log.read_text().count(phrase)


@pytest.mark.parametrize("tls_broker", [True], ids=["mtls"], indirect=True)
def test_certificate_required_is_said_once_and_stops_the_worker(
    sqlite_url: str, tls_broker: tuple[Running, str], ingest_log: Path
) -> None:
    """README steps 4 (--mtls) then 5 with a password only: one clear line, exit 1."""
    broker, _ = tls_broker
    placeholder = Broker(broker.port, None, broker.out)  # type: ignore[arg-type]
    worker = start_ingest(sqlite_url, placeholder, "ingest-cert", ingest_log, wait=False,
                          extra=broker_env(broker, cert=False))  # fmt: skip
    assert worker.wait(30) == 1, ingest_log.read_text()
    assert _first_words(ingest_log, "requires a client certificate") == 2  # log + CLI error
    assert "TELEMETRA_MQTT_CERT_FILE" in ingest_log.read_text()
    assert "Unspecified error" not in ingest_log.read_text()


def test_the_log_says_what_the_broker_wants(
    sqlite_url: str, tls_broker: tuple[Running, str], tmp_path: Path
) -> None:
    broker, _ = tls_broker
    placeholder = Broker(broker.port, None, broker.out)  # type: ignore[arg-type]
    plain = next(
        int(line.split()[1])
        for line in (broker.out / "mosquitto.conf").read_text().splitlines()
        if line.startswith("listener") and int(line.split()[1]) != broker.port
    )
    no_ca = broker_env(broker, cert=False)
    del no_ca["TELEMETRA_MQTT_CA_FILE"]  # the system's CAs do not know ours
    fatal = {
        "wrong password": (broker_env(broker, cert=False, password="wrong"), "not authorised"),
        "no CA": (no_ca, "is not trusted"),
        "anonymous": ({"TELEMETRA_MQTT_URL": f"mqtt://127.0.0.1:{plain}"}, "requires a login"),
    }
    for case, (env, phrase) in fatal.items():
        log = tmp_path / f"{case}.log"
        worker = start_ingest(sqlite_url, placeholder, "ingest-x", log, wait=False, extra=env)
        assert worker.wait(30) == 1, f"{case}: {log.read_text()}"
        assert _first_words(log, phrase) == 2, f"{case}: {log.read_text()}"
    # TLS to the plain port: retried with backoff (a broker restart looks the same), and said.
    log = tmp_path / "mismatch.log"
    env = broker_env(broker, cert=False)
    env["TELEMETRA_MQTT_URL"] = f"mqtts://telemetra-ingest:{INGEST_PW}@localhost:{plain}"
    worker = start_ingest(sqlite_url, placeholder, "ingest-y", log, wait=False, extra=env)
    try:
        deadline = time.monotonic() + 20
        while log.read_text().count("not a TLS listener") < 2:
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        delays = [json.loads(line)["retry_in_s"] for line in log.read_text().splitlines()
                  if "not a TLS listener" in line]  # fmt: skip
        assert delays[:2] == [1.0, 2.0]
    finally:
        stop(worker)


def test_refusals_that_pass_are_retried() -> None:
    address = parse_mqtt_url("mqtts://broker:8883")
    assert diagnose_refusal("Server unavailable", address, "u").retry
    assert not diagnose_refusal("Not authorized", address, "u").retry
    assert not diagnose_refusal("Banned", address, "u").retry
    assert diagnose_error("[Errno 111] Connection refused", address, False).retry
    assert not diagnose_error("[SSL: CERTIFICATE_VERIFY_FAILED] x", address, False).retry
