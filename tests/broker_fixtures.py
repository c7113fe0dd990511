"""Real Mosquitto brokers from generated configurations, and a paho client that records."""

from __future__ import annotations

import queue
import shutil
import ssl
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from telemetra.certs import DeviceCA

from conftest import missing, stop, wait_for_port


def mosquitto_exe() -> str:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        missing("mosquitto")
    return exe


class Client:
    """A paho client on a background thread that records its CONNACK and what it receives."""

    def __init__(
        self,
        port: int,
        *,
        ca: Path | None = None,
        username: str | None = None,
        password: str | None = None,
        cert: Path | None = None,
        key: Path | None = None,
    ) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._connack = threading.Event()
        self.dropped = threading.Event()  # the broker closed an accepted connection
        self._accepted = False
        self._subacks: dict[int, threading.Event] = {}
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        self.client.reconnect_delay_set(5, 5)  # a refused client should not hammer the broker
        if ca is not None:
            self.client.tls_set(
                ca_certs=str(ca),
                certfile=str(cert) if cert else None,
                keyfile=str(key) if key else None,
            )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.failed = False
        try:
            self.client.connect("127.0.0.1", port, keepalive=10)
        except (OSError, ssl.SSLError):
            self.failed = True
            return
        self.client.loop_start()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._accepted = self._accepted or not reason.is_failure
        self._connack.set()

    def _on_disconnect(self, *_: Any) -> None:
        if self._accepted:
            self.dropped.set()
        self._connack.set()  # a refusal after the TLS handshake (TLS 1.3) ends the wait

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, _codes: Any, _p: Any) -> None:
        self._subacks.setdefault(mid, threading.Event()).set()

    def connected(self, timeout: float = 3.0) -> bool:
        """True once the broker accepted the login; False if refused or silent."""
        if self.failed:
            return False
        self._connack.wait(timeout)
        return self._accepted

    def subscribe(self, *topics: str) -> None:
        assert self.connected()
        _, mid = self.client.subscribe([(t, 1) for t in topics])
        assert mid is not None
        assert self._subacks.setdefault(mid, threading.Event()).wait(5)

    def publish(self, topic: str, payload: str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def receive(self, timeout: float) -> list[tuple[str, bytes]]:
        """Everything that arrives within ``timeout`` seconds."""
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        return got

    def wait_for(self, topic: str, payload: str, timeout: float = 5.0) -> list[tuple[str, bytes]]:
        """Messages received up to and including (topic, payload); fails when it never comes."""
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while (topic, payload.encode()) not in got:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"{topic} {payload!r} never arrived; got {got}")
            try:
                got.append(self.messages.get(timeout=left))
            except queue.Empty:
                continue
        return got

    def close(self) -> None:
        self.client.disconnect()  # first: it also ends a refused client's reconnect wait
        self.client.loop_stop()


@dataclass
class Running:
    out: Path
    port: int
    ca: DeviceCA
    process: subprocess.Popen[bytes]

    @property
    def ca_file(self) -> Path:
        return self.out / "ca.pem"


def start_broker(out: Path, port: int, ca: DeviceCA) -> Running:
    proc = subprocess.Popen(
        [mosquitto_exe(), "-c", str(out / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=(out / "broker.log").open("wb"),
    )
    try:
        wait_for_port(port)
    except TimeoutError:
        stop(proc)
        pytest.fail(f"mosquitto did not start: {(out / 'broker.log').read_text()}")
    return Running(out, port, ca, proc)
