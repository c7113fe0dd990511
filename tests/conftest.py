"""Shared fixtures: real PostgreSQL, real Mosquitto, SQLite files.

PostgreSQL: a fresh database per test session on the local server (TELEMETRA_TEST_PG, default
postgresql://postgres@127.0.0.1:5432). Mosquitto: a private broker with a generated config on a
free port. When a service is missing the tests skip locally, but fail under CI=true.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.store.database import open_database

PG_SERVER = os.environ.get("TELEMETRA_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str) -> None:
    """Skip locally, fail in CI: CI must exercise the real services."""
    if IN_CI:
        pytest.fail(f"{what} is required in CI", pytrace=False)
    pytest.skip(f"{what} not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_SERVER + "/postgres", timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def pg_url() -> AsyncIterator[str]:
    """A fresh, migrated PostgreSQL database for this test session."""
    name = f"telemetra_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        await _admin(f'CREATE DATABASE "{name}"')
    except (TimeoutError, OSError) as exc:
        missing(f"PostgreSQL at {PG_SERVER} ({exc})")
    url = f"{PG_SERVER}/{name}"
    engine = await open_database(url, migrate_schema=True)
    await engine.dispose()
    yield url
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


APP_ROLE = "telemetra_app_test"


async def app_role_url(pg_url: str) -> str:
    """The test database as seen by an ordinary role (NOSUPERUSER NOBYPASSRLS) with the usual
    privileges, as production's ``serve`` should connect: Row-Level Security applies to it.
    Made as ``telemetra migrate --app-role`` makes it."""
    from telemetra.store.database import create_engine, grant_app_role

    engine = create_engine(pg_url)
    try:
        async with engine.begin() as conn:
            await grant_app_role(conn, APP_ROLE)
    finally:
        await engine.dispose()
    return pg_url.replace(PG_SERVER.split("//", 1)[1].split("@")[0] + "@", f"{APP_ROLE}@", 1)


@pytest.fixture(scope="session")
async def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'telemetra.db'}"
    engine = await open_database(url)
    await engine.dispose()
    yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test using it runs once on SQLite and once on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = await open_database(db_url, migrate_schema=False)
    yield eng
    await eng.dispose()


class Broker:
    """A private Mosquitto on a free port."""

    def __init__(self, port: int, process: subprocess.Popen[bytes], folder: Path) -> None:
        self.port = port
        self.process = process
        self.folder = folder

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


def start_mosquitto(folder: Path, port: int | None = None, extra: str = "") -> Broker:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        missing("mosquitto")
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "mosquitto.conf"
    conf.write_text(
        # As root, mosquitto would switch to its own user and could not write here.
        f"user {getpass.getuser()}\n"
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {folder}/\nmax_queued_messages 1000000\n"
        f"max_inflight_messages 0\nlog_dest file {folder}/mosquitto.log\n{extra}"
    )
    proc = subprocess.Popen(
        [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for_port(port)
    except TimeoutError:
        proc.kill()
        err = proc.stderr.read().decode() if proc.stderr else ""
        pytest.fail(f"mosquitto did not start: {err}")
    return Broker(port, proc, folder)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A private Mosquitto per test (cheap: ~10 ms to start)."""
    broker = start_mosquitto(tmp_path / "mosquitto")
    yield broker
    stop(broker.process)


class TcpProxy:
    """A TCP forwarder we can take down and bring back: a database outage on demand."""

    def __init__(self, target_port: int) -> None:
        import threading

        self.target_port = target_port
        self.port = free_port()
        self.down = False
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def take_down(self) -> None:
        """Refuse new connections and cut the open ones."""
        self.down = True
        with self._lock:
            for s in self._conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            self._conns.clear()

    def bring_up(self) -> None:
        self.down = False

    def close(self) -> None:
        self.take_down()
        self._server.close()


@pytest.fixture
def clients() -> Iterator[list[Any]]:
    """MQTT test clients (broker_fixtures.Client) a test makes: closed when it ends."""
    made: list[Any] = []
    yield made
    for c in made:
        c.close()


@pytest.fixture
async def world(
    engine: AsyncEngine, db_url: str, tmp_path: Path, mosquitto: Broker
) -> AsyncIterator[Any]:
    """API tests: two tenants, three logged-in users each, the app running in-process."""
    from api_fixtures import make_world

    # On PostgreSQL the app connects as an ordinary role, so RLS applies beneath every request.
    url = await app_role_url(db_url) if db_url.startswith("postgresql") else db_url
    app_engine = await open_database(url, migrate_schema=False) if url != db_url else engine
    try:
        async for made in make_world(app_engine, url, tmp_path / "data", mosquitto.url):
            yield made
    finally:
        if app_engine is not engine:
            await app_engine.dispose()
