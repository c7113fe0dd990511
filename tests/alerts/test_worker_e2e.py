"""End to end on PostgreSQL and a real Mosquitto: two `telemetra ingest` processes share one
subscription, so one device's messages reach both; one `telemetra worker` evaluates them as one
series, fires and resolves exactly one alert and delivers its webhooks; killed (SIGKILL) between
the two, a spare worker takes over and nothing is lost or sent twice."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.alerts import store
from telemetra.store.catalog import create_device, create_tenant
from telemetra.store.database import open_database

from conftest import Broker, free_port, stop

S = 1_000_000


class Receiver:
    """A webhook receiver on 127.0.0.1: records every call's headers and JSON body."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], dict[str, Any]]] = []
        calls = self.calls

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                calls.append((dict(self.headers), json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def start(
    command: str, env: dict[str, str], log: Path, ready: bytes | None
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "telemetra.cli", command],
        env={**os.environ, **env},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while ready is not None and ready not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail(f"{command} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return proc


def messages_taken(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.findall(r'^telemetra_ingest_messages_total\{source="mqtt"\} (\S+)$', text, re.M)
    return float(found[0]) if found else 0.0


async def wait_for(engine: AsyncEngine, tenant_id: int, check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        async with engine.connect() as conn:
            page = await store.list_alerts(conn, store.AlertFilter(tenant_id=tenant_id))
        if check(page.items) or time.monotonic() > deadline:
            return page.items
        await asyncio.sleep(0.2)


async def test_two_ingest_processes_one_worker_and_a_takeover(
    pg_url: str, mosquitto: Broker, tmp_path: Path, receiver: Receiver
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    tag = uuid.uuid4().hex[:8]
    uid = f"tw-{tag}"
    engine = await open_database(pg_url, migrate_schema=False)
    procs: list[subprocess.Popen[bytes]] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{tag}")
    try:
        async with engine.begin() as conn:
            tenant_id = await create_tenant(conn, f"tw-{tag}")
            await create_device(conn, tenant_id, uid, type="freezer")
            await store.create_rule(conn, tenant_id, {
                "name": "too warm", "kind": "threshold", "metric": "temperature",
                "condition": {"op": ">", "value": -15}, "for": "5s",
                "clear": {"op": "<=", "value": -17}, "scope": {"devices": [uid]},
                "channels": [{"kind": "webhook", "url": receiver.url, "secret": "s3cret-key"}],
            })  # fmt: skip
        common = {
            "TELEMETRA_DATABASE_URL": pg_url, "TELEMETRA_MQTT_URL": mosquitto.url,
            "TELEMETRA_LOG_FORMAT": "json", "TELEMETRA_NOTIFY_ALLOW": "127.0.0.1",
        }  # fmt: skip
        ports = [free_port(), free_port()]
        for i, port in enumerate(ports):
            env = {**common, "TELEMETRA_MQTT_CLIENT_ID": f"ingest-{tag}-{i}",
                   "TELEMETRA_MQTT_SHARE_GROUP": f"g{tag}", "TELEMETRA_METRICS_PORT": str(port),
                   "TELEMETRA_BATCH_MAX_WAIT_MS": "10"}  # fmt: skip
            procs.append(start("ingest", env, tmp_path / f"ingest{i}.log", b"connected to broker"))
        first = start("worker", common, tmp_path / "worker1.log", b"worker active")
        procs.append(first)
        spare = start("worker", common, tmp_path / "worker2.log", b"waits to take over")
        procs.append(spare)

        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        t0 = (int(time.time()) - 60) * 1000  # ms, a minute ago
        values = [-20.0] * 10 + [-10.0] * 10 + [-20.0] * 10

        def send(i: int) -> None:
            body = json.dumps({"ts": t0 + i * 1000, "temperature": values[i]})
            client.publish(f"devices/{uid}/telemetry", body, qos=1).wait_for_publish(10)
            time.sleep(0.1)  # each message committed before the next: no reordering here

        for i in range(18):
            await asyncio.to_thread(send, i)
        fired = await wait_for(engine, tenant_id, lambda items: len(items) == 1)
        assert [(a.state, a.started_at) for a in fired] == [("firing", (t0 + 15_000) * 1000)]
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        for i in range(18, 30):
            await asyncio.to_thread(send, i)
        [alert] = await wait_for(
            engine, tenant_id, lambda items: items and items[0].state == "resolved"
        )
        assert (alert.state, alert.resolved_by, alert.resolved_at) == (
            "resolved", "auto", (t0 + 20_000) * 1000,
        )  # fmt: skip
        assert b"worker active" in (tmp_path / "worker2.log").read_bytes()
        # Both ingest processes took a share of the device's messages.
        taken = [messages_taken(port) for port in ports]
        assert all(n > 0 for n in taken) and sum(taken) == 30, taken
        deadline = time.monotonic() + 20
        while len(receiver.calls) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        events = [body["event"] for _, body in receiver.calls]
        assert sorted(set(events)) == ["fired", "resolved"], receiver.calls
        keys = {headers.get("Idempotency-Key") for headers, _ in receiver.calls}
        assert len(keys) == 2  # a redelivery would carry the same key as before
    finally:
        client.loop_stop()
        client.disconnect()
        for proc in procs:
            stop(proc)
        await engine.dispose()
