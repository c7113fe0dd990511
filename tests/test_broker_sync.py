"""Device changes reach a running Mosquitto: logins appear, re-key, disappear; live sessions end."""

from __future__ import annotations

import asyncio
import getpass
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from telemetra.api.app import create_app
from telemetra.broker import mosquitto as broker_mod
from telemetra.broker import sync_accounts, write_config
from telemetra.certs import DeviceCA
from telemetra.cli import app as cli
from telemetra.config import Settings
from telemetra.credentials import mosquitto_hash
from telemetra.store.database import open_database

from api_fixtures import SECRET, World, make_world
from broker_fixtures import Client, Running, mosquitto_exe, start_broker
from conftest import free_port, stop

Headers = dict[str, str]

INGEST_PW = "ingest-secret"
QUIET_S = 1.0  # how long "nothing arrives" is watched


def _broker(base: Path, *, mtls: bool = False) -> Running:
    """A Mosquitto from ``broker-config`` with no devices yet, its CA the app's (data/ca)."""
    mosquitto_exe()
    ca = DeviceCA.load_or_create(base / "data" / "ca")
    port = free_port()
    write_config(
        base / "broker", [], ca, tls_port=port, require_certificate=mtls,
        ingest_password=INGEST_PW, user=getpass.getuser(),
    )  # fmt: skip
    running = start_broker(base / "broker", port, ca)
    deadline = time.monotonic() + 5
    while not (running.out / "run" / "mosquitto.pid").exists():  # how reloads find it
        assert time.monotonic() < deadline, "Mosquitto wrote no pid file"
        time.sleep(0.02)
    return running


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[Running]:
    running = _broker(tmp_path)
    yield running
    stop(running.process)


@pytest.fixture
def mtls_broker(tmp_path: Path) -> Iterator[Running]:
    running = _broker(tmp_path, mtls=True)
    yield running
    stop(running.process)


async def _world(engine: AsyncEngine, db_url: str, base: Path) -> AsyncIterator[World]:
    async for world in make_world(engine, db_url, base / "data", broker_dir=base / "broker"):
        yield world


@pytest.fixture
async def world(
    engine: AsyncEngine, db_url: str, tmp_path: Path, password_broker: Running
) -> AsyncIterator[World]:
    async for made in _world(engine, db_url, tmp_path):
        yield made


def _login(broker: Running, uid: str, token: str, clients: list[Client]) -> Client | None:
    """A connected client for ``uid``, or None when the broker refuses it."""
    c = Client(broker.port, ca=broker.ca_file, username=uid, password=token)
    clients.append(c)
    return c if c.connected() else None


def _ingest(broker: Running, clients: list[Client]) -> Client:
    if (broker.out / "ingest.crt").exists():
        c = Client(broker.port, ca=broker.ca_file, cert=broker.out / "ingest.crt",
                   key=broker.out / "ingest.key")  # fmt: skip
    else:
        c = Client(broker.port, ca=broker.ca_file, username="telemetra-ingest", password=INGEST_PW)
    clients.append(c)
    c.subscribe("devices/+/telemetry")
    return c


async def _dropped(c: Client, timeout: float = 5.0) -> bool:
    return await asyncio.to_thread(c.dropped.wait, timeout)


async def test_device_changes_reach_the_running_broker(
    world: World, password_broker: Running, clients: list[Client]
) -> None:
    uid = f"dev-{os.urandom(3).hex()}"
    ingest = _ingest(password_broker, clients)
    assert _login(password_broker, uid, "x" * 40, clients) is None  # not registered yet

    reply = await world.client.post(
        "/api/v1/devices", json={"uid": uid}, headers=world.auth("a-operator")
    )
    assert reply.status_code == 201, reply.text
    assert reply.json()["broker"] == "reloaded"
    token = reply.json()["token"]
    device = _login(password_broker, uid, token, clients)
    assert device is not None, "a new device could not log in after its creation"
    device.publish(f"devices/{uid}/telemetry", '{"t": 1}')
    ingest.wait_for(f"devices/{uid}/telemetry", '{"t": 1}')

    # Rotation: the live session on the old token ends, the old token is refused, the new works.
    reply = await world.client.post(
        f"/api/v1/devices/{uid}/token", headers=world.auth("a-operator")
    )
    assert reply.status_code == 200 and reply.json()["broker"] == "reloaded"
    new_token = reply.json()["token"]
    assert await _dropped(device), "the session on the rotated token was not ended"
    assert _login(password_broker, uid, token, clients) is None
    device = _login(password_broker, uid, new_token, clients)
    assert device is not None

    # Disabling kicks the device off at once; enabling lets it back in.
    path = f"/api/v1/devices/{uid}"
    reply = await world.client.patch(
        path, json={"status": "disabled"}, headers=world.auth("a-operator")
    )
    assert reply.status_code == 200
    assert await _dropped(device), "a disabled device stayed connected"
    assert _login(password_broker, uid, new_token, clients) is None
    reply = await world.client.patch(
        path, json={"status": "active"}, headers=world.auth("a-operator")
    )
    assert reply.status_code == 200
    device = _login(password_broker, uid, new_token, clients)
    assert device is not None

    # A change that does not concern the broker does not reload it.
    mtime = (password_broker.out / "passwd").stat().st_mtime_ns
    await world.client.patch(path, json={"name": "renamed"}, headers=world.auth("a-operator"))
    assert (password_broker.out / "passwd").stat().st_mtime_ns == mtime

    reply = await world.client.delete(path, headers=world.auth("a-operator"))
    assert reply.status_code == 204
    assert await _dropped(device), "a deleted device stayed connected"
    assert _login(password_broker, uid, new_token, clients) is None


async def test_a_burst_of_registrations_shares_syncs(
    world: World, password_broker: Running, clients: list[Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs: list[int] = []
    real = broker_mod.sync_accounts

    def counted(*args: object, **kwargs: object) -> broker_mod.SyncResult:
        result = real(*args, **kwargs)  # type: ignore[arg-type]
        syncs.append(result.devices)
        return result

    monkeypatch.setattr(broker_mod, "sync_accounts", counted)  # what sync_state calls
    uids = [f"burst-{i}-{os.urandom(2).hex()}" for i in range(20)]
    replies = await asyncio.gather(
        *(
            world.client.post("/api/v1/devices", json={"uid": u}, headers=world.auth("a-owner"))
            for u in uids
        )
    )
    assert all(r.status_code == 201 and r.json()["broker"] == "reloaded" for r in replies)
    assert len(syncs) < len(uids)  # coalesced
    assert syncs[-1] >= len(uids)  # the last one has them all
    for uid, reply in zip(uids[:3] + uids[-3:], replies[:3] + replies[-3:], strict=True):
        assert _login(password_broker, uid, reply.json()["token"], clients) is not None


async def test_certificates_of_disabled_and_deleted_devices_are_refused(
    engine: AsyncEngine, db_url: str, tmp_path: Path, mtls_broker: Running, clients: list[Client]
) -> None:
    """mTLS: the revocation list refuses new connections; the ACL silences live sessions."""
    async for world in _world(engine, db_url, tmp_path):
        ingest = _ingest(mtls_broker, clients)
        uid = f"cert-{os.urandom(3).hex()}"
        headers = world.auth("a-operator")
        path = f"/api/v1/devices/{uid}"

        async def create_with_certificate(
            name: str, world: World = world, uid: str = uid, headers: Headers = headers
        ) -> tuple[Path, Path]:
            made = await world.client.post("/api/v1/devices", json={"uid": uid}, headers=headers)
            assert made.status_code == 201, made.text
            reply = await world.client.post(f"/api/v1/devices/{uid}/certificate", headers=headers)
            assert reply.status_code == 200
            files = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
            files[0].write_text(reply.json()["certificate"])
            files[1].write_text(reply.json()["private_key"])
            return files

        def connect(cert: tuple[Path, Path]) -> Client | None:
            c = Client(mtls_broker.port, ca=mtls_broker.ca_file, cert=cert[0], key=cert[1])
            clients.append(c)
            return c if c.connected() else None

        first = await create_with_certificate("first")
        live = connect(first)
        assert live is not None
        live.publish(f"devices/{uid}/telemetry", "before")
        ingest.wait_for(f"devices/{uid}/telemetry", "before")

        reply = await world.client.patch(path, json={"status": "disabled"}, headers=headers)
        assert reply.status_code == 200
        assert connect(first) is None, "a disabled device's certificate was accepted"
        assert connect(first) is None, "a disabled device certificate was accepted"
        live.publish(f"devices/{uid}/telemetry", "while disabled")
        assert ingest.receive(QUIET_S) == [], "a disabled device's live session published"

        reply = await world.client.patch(path, json={"status": "active"}, headers=headers)
        again = connect(first)
        assert again is not None, "an enabled device's certificate was refused"
        again.publish(f"devices/{uid}/telemetry", "enabled")
        ingest.wait_for(f"devices/{uid}/telemetry", "enabled")

        assert (await world.client.delete(path, headers=headers)).status_code == 204
        assert connect(first) is None, "a deleted device's certificate was accepted"
        again.publish(f"devices/{uid}/telemetry", "after delete")
        assert ingest.receive(QUIET_S) == [], "a deleted device's live session published"

        # The id is free again, but the old certificate stays revoked for the new device.
        second = await create_with_certificate("second")
        assert connect(first) is None, "a certificate of a deleted device came back"
        fresh = connect(second)
        assert fresh is not None
        fresh.publish(f"devices/{uid}/telemetry", "second life")
        ingest.wait_for(f"devices/{uid}/telemetry", "second life")


def test_a_refused_file_leaves_the_broker_untouched(
    password_broker: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = password_broker.out
    before = {name: (out / name).read_bytes() for name in ("passwd", "acl")}
    monkeypatch.setattr(broker_mod, "_render_acl", lambda *_: "topic nonsense here\n")
    with pytest.raises(ValueError, match="Mosquitto refused the new files"):
        sync_accounts(out, [("ok-device", mosquitto_hash("secret-token"))])
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".sync.") and p.is_dir()]


def test_reload_only_ever_signals_mosquitto(tmp_path: Path) -> None:
    pid_file = tmp_path / "mosquitto.pid"
    assert "not running from this folder" in broker_mod._reload(pid_file)
    pid_file.write_text(f"{os.getpid()}\n")  # a stale pid file now naming this test process
    assert "not mosquitto" in broker_mod._reload(pid_file)
    pid_file.write_text("garbage")
    assert "cannot read" in broker_mod._reload(pid_file)


def test_serve_refuses_a_broker_dir_that_is_not_one(tmp_path: Path) -> None:
    settings = Settings(secret_key=SECRET, data_dir=tmp_path, broker_dir=tmp_path)
    with pytest.raises(ValueError, match="telemetra broker-config --out"):
        create_app(settings)


def test_cli_keeps_the_broker_in_step(
    password_broker: Running, tmp_path: Path, clients: list[Client]
) -> None:
    runner = CliRunner()
    env = {
        "TELEMETRA_DATA_DIR": str(tmp_path / "data"),
        "TELEMETRA_DATABASE_URL": "",
        "TELEMETRA_BROKER_DIR": str(password_broker.out),
    }
    result = runner.invoke(cli, ["device", "create", "cli-dev"], env=env)
    assert result.exit_code == 0, result.output
    assert "reloaded" in result.output
    token = result.output.strip().splitlines()[-1]
    assert _login(password_broker, "cli-dev", token, clients) is not None

    result = runner.invoke(cli, ["device", "token", "cli-dev"], env=env)
    assert result.exit_code == 0, result.output
    new_token = result.output.strip().splitlines()[-1]
    assert _login(password_broker, "cli-dev", token, clients) is None
    assert _login(password_broker, "cli-dev", new_token, clients) is not None

    for command, admitted in (("disable", False), ("enable", True)):
        result = runner.invoke(cli, ["device", command, "cli-dev"], env=env)
        assert result.exit_code == 0 and "reloaded" in result.output, result.output
        assert (_login(password_broker, "cli-dev", new_token, clients) is not None) is admitted
    result = runner.invoke(cli, ["device", "disable", "no-such-device"], env=env)
    assert result.exit_code == 1 and "no device 'no-such-device'" in result.output

    (password_broker.out / "passwd").write_text("telemetra-ingest:$7$101$aaaa$bbbb\n")  # damage

    result = runner.invoke(
        cli, ["broker-config", "--out", str(password_broker.out), "--sync"], env=env
    )
    assert result.exit_code == 0, result.output
    assert "written for 1 devices" in result.output and "reloaded" in result.output
    assert "cli-dev:" in (password_broker.out / "passwd").read_text()

    result = runner.invoke(cli, ["device", "delete", "cli-dev"], env=env, input="n\n")
    assert result.exit_code == 1 and "Aborted" in result.output  # asks first
    assert _login(password_broker, "cli-dev", new_token, clients) is not None
    result = runner.invoke(cli, ["device", "delete", "cli-dev", "--yes"], env=env)
    assert result.exit_code == 0 and "reloaded" in result.output, result.output
    assert _login(password_broker, "cli-dev", new_token, clients) is None

    env["TELEMETRA_BROKER_DIR"] = str(tmp_path / "nowhere")
    result = runner.invoke(cli, ["device", "create", "cli-dev-2"], env=env)
    assert result.exit_code == 1 and "broker files not updated" in result.output
    assert len(result.output.strip().splitlines()[-1]) >= 40  # the token is still shown


async def test_ready_checks_the_configured_broker_and_names_it(
    sqlite_url: str, password_broker: Running
) -> None:
    """/ready checks TELEMETRA_MQTT_URL's broker (TLS and its CA for mqtts://) and says
    which one it checked."""
    engine = await open_database(sqlite_url, migrate_schema=False)
    tls = f"mqtts://telemetra-ingest:{INGEST_PW}@localhost:{password_broker.port}"
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"mqtt_url": tls, "mqtt_ca_file": password_broker.ca_file}, 200, "ok"),
        ({"mqtt_url": tls}, 503, f"TLS certificate of localhost:{password_broker.port} not"),
        ({"mqtt_url": f"mqtt://localhost:{password_broker.port}"}, 200, "ok"),  # TCP only
        ({"mqtt_url": tls, "mqtt_ca_file": password_broker.out / "missing.pem"}, 503,
         f"TLS settings for localhost:{password_broker.port} unusable"),
    ]  # fmt: skip
    try:
        for options, status, check in cases:
            app = create_app(Settings(database_url=sqlite_url, secret_key=SECRET, **options),
                             engine)  # fmt: skip
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
            ):
                reply = await c.get("/ready")
            assert reply.status_code == status, (options, reply.text)
            assert reply.json()["checks"]["broker"].startswith(check), reply.text
            scheme = "mqtts" if options["mqtt_url"].startswith("mqtts") else "mqtt"
            assert reply.json()["broker"] == f"{scheme}://localhost:{password_broker.port}"
            assert INGEST_PW not in reply.text
    finally:
        await engine.dispose()
