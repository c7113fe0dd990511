"""The live stream across processes: a `telemetra ingest` process commits what a device
publishes over MQTT, and the WebSocket and SSE clients of a separate `telemetra serve` process
receive it through a private Redis; with Redis stopped ingest keeps storing and /ready says so,
and once Redis is back new readings are streamed again to the clients still connected."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

from telemetra.live import RedisBus, readings_frames
from telemetra.store.catalog import create_user, default_tenant_id
from telemetra.store.database import open_database
from telemetra.store.schema import devices, readings
from telemetra.store.tenancy import platform_wide

from api_fixtures import _HASH, PASSWORD, SECRET
from conftest import Broker, free_port, missing, stop, wait_for_port
from live_fixtures import Frames, sse_client, ws_client

NOW_MS = int(time.time() * 1000) - 60_000


class RedisServer:
    """A private redis-server on a free port that can be stopped and started again."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            missing("redis-server")
        self.process = subprocess.Popen(
            [str(exe), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def start_process(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "telemetra.cli", command],
        env={**os.environ, "TELEMETRA_LOG_FORMAT": "json", **env},
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip


async def wait_until(check: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


@pytest.fixture
async def processes(
    pg_url: str, mosquitto: Broker, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[dict[str, Any]]:
    """`telemetra ingest` and `telemetra serve`, both on the same Redis; a viewer's token."""
    tag = uuid.uuid4().hex[:8]
    engine = await open_database(pg_url, migrate_schema=False)
    with platform_wide():
        async with engine.begin() as conn:
            await create_user(conn, await default_tenant_id(conn), f"live-{tag}", _HASH, "viewer")
    env = {
        "TELEMETRA_DATABASE_URL": pg_url, "TELEMETRA_MQTT_URL": mosquitto.url,
        "TELEMETRA_REDIS_URL": redis_server.url, "TELEMETRA_SECRET_KEY": SECRET,
        "TELEMETRA_DATA_DIR": str(tmp_path / "data"),
    }  # fmt: skip
    ingest_log, serve_log = tmp_path / "ingest.log", tmp_path / "serve.log"
    ingest = start_process(
        "ingest",
        {**env, "TELEMETRA_AUTO_REGISTER": "1", "TELEMETRA_BATCH_MAX_WAIT_MS": "20",
         "TELEMETRA_MQTT_CLIENT_ID": f"live-{tag}"},
        ingest_log,
    )  # fmt: skip
    port = free_port()
    serve = start_process("serve", {**env, "TELEMETRA_API_PORT": str(port)}, serve_log)
    address = f"127.0.0.1:{port}"
    try:
        while b"connected to broker" not in ingest_log.read_bytes():
            assert ingest.poll() is None, ingest_log.read_text()[-3000:]
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:

            async def up() -> bool:
                assert serve.poll() is None, serve_log.read_text()[-3000:]
                try:
                    return (await client.get("/health")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(up, "serve to start")
            login = await client.post(
                "/api/v1/auth/token", data={"username": f"live-{tag}", "password": PASSWORD}
            )
            assert login.status_code == 200, login.text
            yield {"address": address, "token": login.json()["access_token"], "tag": tag,
                   "client": client, "engine": engine, "logs": (ingest_log, serve_log),
                   "env": env}  # fmt: skip
    finally:
        stop(ingest)
        stop(serve)
        await engine.dispose()


def publish(broker: Broker, uid: str, value: float, offset_ms: int) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{uuid.uuid4().hex[:8]}")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        payload = json.dumps({"ts": NOW_MS + offset_ms, "temperature": value})
        client.publish(f"devices/{uid}/telemetry", payload, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


async def stored(engine: Any, uid: str) -> int:
    with platform_wide():
        async with engine.connect() as conn:
            query = (
                select(func.count())
                .select_from(readings.join(devices, devices.c.id == readings.c.device_id))
                .where(devices.c.uid == uid)
            )
            return int(await conn.scalar(query) or 0)


def values(frames: Frames, uid: str) -> set[float]:
    return {v for d, _, v in frames.readings() if d == uid}


async def test_serve_streams_what_another_process_ingested_and_rides_out_redis_outages(
    processes: dict[str, Any], mosquitto: Broker, redis_server: RedisServer
) -> None:
    address, token, engine = processes["address"], processes["token"], processes["engine"]
    client: httpx.AsyncClient = processes["client"]
    uid = f"live-{processes['tag']}"
    ready = await client.get("/ready")
    assert ready.json()["checks"]["redis"] == "ok", ready.text

    async with (
        ws_client(address, token, devices=uid) as (_, ws),
        sse_client(address, token, devices=uid) as sse,
    ):
        # Both are subscribed in Redis by now (WS: before the handshake completes; SSE: before
        # ": connected"): the first reading reaches them.
        await asyncio.to_thread(publish, mosquitto, uid, 1.0, 0)
        for frames in (ws, sse):
            await frames.wait_for(lambda f: f.get("device") == uid and f["points"][0]["value"] == 1)

        redis_server.stop()
        await asyncio.to_thread(publish, mosquitto, uid, 2.0, 1000)
        await wait_until(lambda: _at_least(engine, uid, 2), "ingest to store without Redis")
        down = await client.get("/ready")
        assert down.status_code == 503
        assert down.json()["checks"]["redis"].startswith(
            f"unreachable at 127.0.0.1:{redis_server.port}"
        )
        for frames in (ws, sse):
            gap = await frames.wait_for(lambda f: f["type"] == "gap")
            assert gap == {"type": "gap", "dropped": None, "reason": "bus_unavailable"}

        redis_server.start()

        async def ready_again() -> bool:
            return (await client.get("/ready")).status_code == 200

        await wait_until(ready_again, "/ready to say Redis is back")
        # Live resumes: keep publishing new readings until both clients (still connected)
        # receive one, which takes the serve process's reconnection (at most a few seconds).
        value, deadline = 10.0, time.monotonic() + 30
        while not (values(ws, uid) & values(sse, uid) - {1.0, 2.0}):
            assert time.monotonic() < deadline, (ws.items, sse.items)
            await asyncio.to_thread(publish, mosquitto, uid, value, int(value) * 1000)
            value += 1
            await asyncio.sleep(0.5)
        assert await stored(engine, uid) >= value - 10 + 2

    ingest_log = processes["logs"][0].read_text()
    # The outage is logged once by the publisher, not once per batch.
    assert ingest_log.count("Redis unavailable") == 1, ingest_log[-3000:]


async def test_a_worker_process_sends_alert_and_status_frames_to_serve_through_redis(
    processes: dict[str, Any], mosquitto: Broker, tmp_path: Path
) -> None:
    from telemetra.alerts import store

    address, token, engine = processes["address"], processes["token"], processes["engine"]
    uid = f"live-{processes['tag']}"
    with platform_wide():
        async with engine.begin() as conn:
            await store.create_rule(conn, await default_tenant_id(conn), {
                "name": f"hot {uid}", "kind": "threshold", "metric": "temperature",
                "condition": {"op": ">", "value": 100}, "scope": {"devices": [uid]},
            })  # fmt: skip
    created = time.monotonic()
    log = tmp_path / "worker.log"
    worker = start_process("worker", processes["env"], log)
    try:
        async with ws_client(address, token, devices=uid) as (_, ws):
            while b"worker active" not in log.read_bytes():
                assert worker.poll() is None, log.read_text()[-3000:]
                await asyncio.sleep(0.05)
            # Ingest learns of new rules within 2 s (alerts.feed.REFRESH_S).
            await asyncio.sleep(max(0.0, created + 2.2 - time.monotonic()))
            await asyncio.to_thread(publish, mosquitto, uid, 150.0, 0)
            alert = await ws.wait_for(lambda f: f["type"] == "alert")
            assert (alert["event"], alert["alert"]["device"], alert["alert"]["value"]) == (
                "fired", uid, 150.0,
            )  # fmt: skip
            status = await ws.wait_for(lambda f: f["type"] == "status")
            assert (status["device"], status["online"]) == (uid, True)
    finally:
        stop(worker)


async def _at_least(engine: Any, uid: str, n: int) -> bool:
    return await stored(engine, uid) >= n


async def test_publishing_never_waits_for_redis(redis_server: RedisServer) -> None:
    """With Redis gone, publishing returns at once and keeps at most its bounded buffer."""
    from telemetra.ingest.pipeline import Committed
    from telemetra.model import Reading

    bus = RedisBus(redis_server.url, pending_limit=100)
    await bus.start()
    redis_server.stop()
    try:
        started = time.perf_counter()
        for i in range(1000):
            bus.publish_committed([Committed(1, "d1", Reading("temperature", i, 1.0))])
        assert time.perf_counter() - started < 0.5
        await asyncio.sleep(0.5)
        assert bus._pending_size <= 100
        assert bus.stats["dropped"] >= 900 - 100
        assert (await bus.check()).startswith(f"unreachable at 127.0.0.1:{redis_server.port}")
    finally:
        await bus.close()
    assert readings_frames([]) == {}


async def test_redis_carries_each_tenant_to_its_followers_and_admins_once(
    redis_server: RedisServer,
) -> None:
    """Two buses as two processes would use them: one publishes (ingest), one follows (serve).
    Tenant channels reach that tenant's clients only; an admin (pattern subscription) gets
    every tenant, each frame once, also beside clients of those tenants."""
    from telemetra.ingest.pipeline import Committed
    from telemetra.live import Filter
    from telemetra.model import Reading

    ingest, serve = RedisBus(redis_server.url), RedisBus(redis_server.url)
    await ingest.start()
    await serve.start()
    try:
        async with (
            serve.following(1, Filter()) as one,
            serve.following(2, Filter(devices=frozenset({"b"}))) as two,
            serve.following(None, Filter()) as admin,
        ):
            ingest.publish_committed(
                [Committed(1, "a", Reading("t", 1, 1.0)), Committed(2, "b", Reading("t", 1, 2.0)),
                 Committed(3, "c", Reading("t", 1, 3.0))]
            )  # fmt: skip
            ingest.publish(2, [{"type": "status", "device": "b", "online": False,
                                "last_seen": "2026-11-22T09:55:00Z"}])  # fmt: skip
            got: dict[str, list[dict[str, Any]]] = {"one": [], "two": [], "admin": []}
            deadline = time.monotonic() + 10
            while len(got["admin"]) < 4 and time.monotonic() < deadline:
                for name, sub in (("one", one), ("two", two), ("admin", admin)):
                    got[name] += [json.loads(t) for _, t in await sub.next(0.2)]
            await asyncio.sleep(0.3)
            for name, sub in (("one", one), ("two", two), ("admin", admin)):
                got[name] += [json.loads(t) for _, t in sub.take()]
    finally:
        await ingest.close()
        await serve.close()
    assert [(f["type"], f["device"]) for f in got["one"]] == [("readings", "a")]
    assert sorted((f["type"], f["device"]) for f in got["two"]) == [
        ("readings", "b"), ("status", "b")
    ]  # fmt: skip
    assert sorted((f["type"], f["device"]) for f in got["admin"]) == [
        ("readings", "a"), ("readings", "b"), ("readings", "c"), ("status", "b")
    ]  # fmt: skip
