"""The demo's embedded broker: token logins, the device ACL, in-process delivery, acks back, stop.

Real databases (SQLite and PostgreSQL), real MQTT 3.1.1 clients (paho, on their own threads;
every blocking wait runs in a worker thread so that the broker, in the test's loop, goes on).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.config import Settings
from telemetra.demo.broker import THINGSBOARD_TELEMETRY, BrokerListenError, EmbeddedBroker
from telemetra.ingest.pipeline import Inbox, Message, Outcome, Pipeline
from telemetra.store.catalog import (
    create_device,
    default_tenant_id,
    get_device,
    rotate_token,
    update_device,
)

from broker_fixtures import Client
from conftest import missing

pytestmark = pytest.mark.timeout(60)


@dataclass
class Fleet:
    a: str
    a_token: str
    b: str
    b_token: str
    off: str  # disabled
    off_token: str


@dataclass
class Running:
    broker: EmbeddedBroker
    inbox: asyncio.Queue[Message]
    clients: list[Client]

    async def client(self, username: str | None = None, password: str | None = None) -> Client:
        c = await asyncio.to_thread(Client, self.broker.port, username=username, password=password)
        self.clients.append(c)
        return c

    async def device(self, username: str, password: str | None = None) -> Client:
        c = await self.client(username, password)
        assert await connected(c), f"login of {username} refused"
        return c

    async def nothing_delivered(self, wait: float = 0.3) -> None:
        await asyncio.sleep(wait)
        assert self.inbox.empty(), self.inbox.get_nowait()

    async def next(self, timeout: float = 5.0) -> Message:
        return await asyncio.wait_for(self.inbox.get(), timeout)


async def connected(c: Client) -> bool:
    return await asyncio.to_thread(c.connected, 3.0)


async def publish(c: Client, topic: str, payload: str) -> None:
    await asyncio.to_thread(c.publish, topic, payload)


@pytest.fixture
async def fleet(engine: AsyncEngine) -> Fleet:
    tag = uuid.uuid4().hex[:6]
    async with engine.begin() as conn:
        tenant = await default_tenant_id(conn)
        made = [(uid, await create_device(conn, tenant, uid)) for uid in
                (f"dev-a-{tag}", f"dev-b-{tag}", f"dev-off-{tag}")]  # fmt: skip
        off = await get_device(conn, made[2][0], None)
        await update_device(conn, off.id, {"status": "disabled"})
    (a, a_token), (b, b_token), (o, o_token) = made
    return Fleet(a, a_token, b, b_token, o, o_token)


@pytest.fixture
async def running(engine: AsyncEngine) -> AsyncIterator[Running]:
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    broker = EmbeddedBroker(engine, Settings(), "127.0.0.1", 0, inbox.put)
    await broker.start()
    run = Running(broker, inbox, [])
    yield run
    await asyncio.gather(*(asyncio.to_thread(c.close) for c in run.clients))
    await broker.stop()


async def test_logins(running: Running, fleet: Fleet) -> None:
    accepted = [
        (fleet.a, fleet.a_token),  # device id and token
        (fleet.a_token, None),  # ThingsBoard: the token as username, no password
        (fleet.b_token, "anything"),  # ... or any password
    ]
    refused = [
        (None, None),  # anonymous
        (fleet.a, "wrong-token"),
        (fleet.a, fleet.b_token),  # another device's token
        (fleet.a, None),
        ("no-such-device", fleet.a_token),
        ("wrong-token", None),
        (fleet.off, fleet.off_token),  # disabled
        (fleet.off_token, None),
    ]
    clients = [await running.client(u, p) for u, p in accepted + refused]
    results = await asyncio.gather(*(connected(c) for c in clients))
    assert results == [True] * len(accepted) + [False] * len(refused)


async def test_own_topics_reach_deliver(running: Running, fleet: Fleet) -> None:
    c = await running.device(fleet.a, fleet.a_token)
    before = time.time_ns() // 1000
    sent = [
        (f"devices/{fleet.a}/telemetry", '{"temperature": 21.5}'),
        (f"qs/v1/{fleet.a}/events", '{"schema": 1, "event_id": "e-1", "value": 1}'),
        (f"tele/{fleet.a}/SENSOR", '{"ENERGY": {"Power": 12}}'),
    ]
    for topic, payload in sent:
        await publish(c, topic, payload)
    got = [await running.next() for _ in sent]
    assert [(m.topic, m.payload.decode()) for m in got] == sent  # in order
    for m in got:
        assert m.source == "mqtt"
        assert m.device is None  # the topic names the device; the pipeline's routes read it
        assert before <= m.received_at <= time.time_ns() // 1000


async def test_foreign_topics_never_reach_deliver(running: Running, fleet: Fleet) -> None:
    c = await running.device(fleet.a, fleet.a_token)
    for topic in (
        f"devices/{fleet.b}/telemetry",  # another device's
        f"tele/{fleet.b}/SENSOR",
        f"application/1/device/{fleet.a}/event/up",  # ChirpStack publishes these, not devices
        f"devices/{fleet.a}/acks",  # its own acks are read, not written
        "telemetra/deadletter",
        "somewhere/else",
    ):
        await publish(c, topic, '{"temperature": 6}')
    await publish(c, f"devices/{fleet.a}/telemetry", '{"marker": 1}')
    m = await running.next()
    assert (m.topic, m.payload) == (f"devices/{fleet.a}/telemetry", b'{"marker": 1}')
    await running.nothing_delivered()
    assert running.broker.dropped == 6


async def test_acks_reach_only_their_device(running: Running, fleet: Fleet) -> None:
    a = await running.device(fleet.a, fleet.a_token)
    b = await running.device(fleet.b, fleet.b_token)
    # Subscriptions to another device's acks, or wildcards over them, are refused (SUBACK 0x80).
    await asyncio.to_thread(
        a.subscribe, f"devices/{fleet.b}/acks", "devices/+/acks", "#", f"devices/{fleet.a}/acks"
    )
    await asyncio.to_thread(b.subscribe, f"devices/{fleet.b}/acks", f"qs/v1/{fleet.b}/acks")
    await running.broker.publish(f"devices/{fleet.b}/acks", b'{"accepted": 1}')
    await running.broker.publish(f"qs/v1/{fleet.b}/acks", b'{"accepted": 2}', qos=0)
    await running.broker.publish(f"devices/{fleet.a}/acks", b'{"accepted": 3}')
    await asyncio.to_thread(b.wait_for, f"qs/v1/{fleet.b}/acks", '{"accepted": 2}')
    got_a = await asyncio.to_thread(a.wait_for, f"devices/{fleet.a}/acks", '{"accepted": 3}')
    assert got_a == [(f"devices/{fleet.a}/acks", b'{"accepted": 3}')]
    assert await asyncio.to_thread(a.receive, 0.3) == []


async def test_thingsboard_login_and_topic(running: Running, fleet: Fleet) -> None:
    # ThingsBoard's own SDK (tb-mqtt-client) always connects with MQTT 5, which amqtt does not
    # speak; this is what it sends over MQTT 3.1.1: the token as username, no password.
    c = await running.device(fleet.b_token)
    await publish(c, THINGSBOARD_TELEMETRY, '{"ts": 1732270000000, "values": {"temperature": 4}}')
    m = await running.next()
    assert (m.topic, m.device, m.fmt) == (THINGSBOARD_TELEMETRY, fleet.b, "native")
    assert m.source == "mqtt"
    assert m.payload == b'{"ts": 1732270000000, "values": {"temperature": 4}}'
    # Its usual subscriptions name no device we know: refused, and the connection goes on.
    await asyncio.to_thread(c.subscribe, "v1/devices/me/attributes", "v1/devices/me/rpc/request/+")
    await publish(c, f"devices/{fleet.b}/telemetry", '{"t": 1}')
    assert (await running.next()).device is None


async def test_token_rotation_and_disabling_take_effect(
    running: Running, fleet: Fleet, engine: AsyncEngine
) -> None:
    a = await running.device(fleet.a, fleet.a_token)
    b = await running.device(fleet.b_token)
    async with engine.begin() as conn:
        a_row, b_row = [await get_device(conn, uid, None) for uid in (fleet.a, fleet.b)]
        new_token = await rotate_token(conn, a_row.id)
        await update_device(conn, b_row.id, {"status": "disabled"})
    deadline = time.monotonic() + running.broker.tokens.ttl_s + 1
    while time.monotonic() < deadline:  # the cache answers for at most ttl_s
        await asyncio.sleep(0.2)
    await publish(a, f"devices/{fleet.a}/telemetry", '{"t": 1}')
    await publish(b, f"devices/{fleet.b}/telemetry", '{"t": 1}')
    await running.nothing_delivered()
    assert not await connected(await running.client(fleet.a, fleet.a_token))
    assert not await connected(await running.client(fleet.b_token))
    c = await running.device(fleet.a, new_token)
    await publish(c, f"devices/{fleet.a}/telemetry", '{"t": 2}')
    assert (await running.next()).payload == b'{"t": 2}'


async def test_will_topic_must_be_the_devices_own(running: Running, fleet: Fleet) -> None:
    def login(will_topic: str) -> bool:
        answered = threading.Event()
        codes: list[Any] = []
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        c.username_pw_set(fleet.a, fleet.a_token)
        c.will_set(will_topic, "Offline", qos=1)
        c.on_connect = lambda _c, _u, _f, reason, _p: (codes.append(reason), answered.set())
        c.connect("127.0.0.1", running.broker.port)
        c.loop_start()
        try:
            assert answered.wait(3)
            return not codes[0].is_failure
        finally:
            c.disconnect()
            c.loop_stop()

    assert await asyncio.to_thread(login, f"tele/{fleet.a}/LWT")
    assert not await asyncio.to_thread(login, f"tele/{fleet.b}/LWT")


async def test_stop_disconnects_clients_within_5_s(engine: AsyncEngine, fleet: Fleet) -> None:
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    broker = EmbeddedBroker(engine, Settings(), "127.0.0.1", 0, inbox.put)
    await broker.start()
    run = Running(broker, inbox, [])
    try:
        clients = [await run.device(fleet.a, fleet.a_token), await run.device(fleet.b_token)]
        await asyncio.to_thread(clients[0].subscribe, f"devices/{fleet.a}/acks")
        started = time.monotonic()
        await broker.stop()
        took = time.monotonic() - started
        assert took < 5, took
        for c in clients:
            assert await asyncio.to_thread(c.dropped.wait, 3), "client still connected"
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", broker.port)) != 0  # nothing listens any more
    finally:
        await asyncio.gather(*(asyncio.to_thread(c.close) for c in run.clients))
        await broker.stop()


async def test_port_in_use_names_the_port(engine: AsyncEngine) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = EmbeddedBroker(engine, Settings(), "127.0.0.1", port, lambda m: asyncio.sleep(0))
        with pytest.raises(BrokerListenError) as caught:
            await broker.start()
    assert isinstance(caught.value, OSError)
    assert caught.value.errno == errno.EADDRINUSE
    assert f"port {port} is in use" in str(caught.value)
    await broker.stop()  # harmless when it never started


async def test_pipeline_round_trip_acks_after_commit(engine: AsyncEngine, fleet: Fleet) -> None:
    """The demo's wiring: deliver -> the ingest pipeline -> commit -> ack on the device's topic."""
    settings = Settings(batch_max_wait_ms=20)
    pipeline = Pipeline(engine, settings, feed_alerts=False)
    inbox = Inbox(settings.queue_max_messages, settings.batch_max_messages)
    sent: list[asyncio.Future[None]] = []

    async def deliver(message: Message) -> None:
        inbox.put(message)

    def done(outcomes: list[Outcome]) -> None:
        for o in outcomes:
            if o.ack_topic:
                sent.append(asyncio.ensure_future(broker.publish(o.ack_topic, o.ack_payload())))

    broker = EmbeddedBroker(engine, settings, "127.0.0.1", 0, deliver)
    await broker.start()
    stop = asyncio.Event()
    ingest = asyncio.create_task(pipeline.run(inbox, done, stop))
    run = Running(broker, asyncio.Queue(), [])
    try:
        c = await run.device(fleet.a, fleet.a_token)
        await asyncio.to_thread(c.subscribe, f"devices/{fleet.a}/acks")
        for payload in ('{"temperature": 21.5, "humidity": "40"}', '{"temperature": 6000}'):
            await publish(c, f"devices/{fleet.a}/telemetry", payload)
        acks = [await asyncio.to_thread(c.messages.get, True, 5) for _ in range(2)]
        assert [t for t, _ in acks] == [f"devices/{fleet.a}/acks"] * 2
        first, second = (json.loads(p) for _, p in acks)
        assert (first["accepted"], first["rejected"]) == (2, [])
        assert [r["reason"] for r in second["rejected"]] == ["out_of_range"]
    finally:
        stop.set()
        await asyncio.wait_for(ingest, 10)
        await asyncio.gather(*(asyncio.to_thread(c.close) for c in run.clients))
        await broker.stop()


async def test_mqtt5_client_never_connects(running: Running, fleet: Fleet) -> None:
    """amqtt 0.12 speaks MQTT 3.1.1 only. It answers an MQTT 5 CONNECT with a 3.1.1 refusal,
    which paho 2.2 does not report at all: the client just is not connected."""

    def login() -> bool:
        answered = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.username_pw_set(fleet.a, fleet.a_token)
        c.on_connect = lambda *_: answered.set()
        c.connect("127.0.0.1", running.broker.port)
        c.loop_start()
        try:
            answered.wait(1.5)
            return c.is_connected()
        finally:
            with contextlib.suppress(OSError):
                c.disconnect()
            c.loop_stop()

    assert not await asyncio.to_thread(login)
    c = await running.device(fleet.a, fleet.a_token)  # the broker is none the worse
    await publish(c, f"devices/{fleet.a}/telemetry", "{}")
    assert (await running.next()).topic == f"devices/{fleet.a}/telemetry"


# ThingsBoard's device SDK, installed apart by `make setup` (`pip install --target .tbsdk`): it
# replaces paho-mqtt's files with its own fork, so it cannot share the project's environment.
TB_SDK = os.environ.get("TELEMETRA_TB_SDK") or str(Path(__file__).parents[2] / ".tbsdk")
TB_CLIENT = """
import sys, time
from tb_device_mqtt import TBDeviceMqttClient
c = TBDeviceMqttClient("127.0.0.1", port=int(sys.argv[1]), username=sys.argv[2])
c._client._protocol, c._client._clean_session = 4, True  # the SDK always asks for MQTT 5
c.connect(timeout=5)
deadline = time.time() + 5
while not c.is_connected() and time.time() < deadline:
    time.sleep(0.05)
assert c.is_connected(), "not connected"
assert c.send_telemetry({"temperature": 21.5}).get() == 0
c.disconnect()
"""


async def test_thingsboard_sdk(running: Running, fleet: Fleet) -> None:
    if not (Path(TB_SDK) / "tb_device_mqtt.py").exists():
        missing(f"ThingsBoard's device SDK in {TB_SDK} (make setup installs it)")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", TB_CLIENT, str(running.broker.port), fleet.b_token,
        env={**os.environ, "PYTHONPATH": str(TB_SDK)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, out.decode()[-2000:]
    m = await running.next()
    assert (m.topic, m.device, m.fmt) == (THINGSBOARD_TELEMETRY, fleet.b, "native")
    assert json.loads(m.payload) == [{"temperature": 21.5}]
