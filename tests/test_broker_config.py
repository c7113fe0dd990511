"""The generated Mosquitto configuration, run by a real Mosquitto: who may publish and read what."""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from telemetra.broker import broker_accounts, split_accounts, sync_accounts, write_config
from telemetra.broker import mosquitto as broker_mod
from telemetra.certs import DeviceCA, issue_client_cert
from telemetra.credentials import mosquitto_hash
from telemetra.store.catalog import create_device, create_tenant
from telemetra.store.database import open_database
from telemetra.store.schema import devices

from broker_fixtures import Client, Running, mosquitto_exe, start_broker
from conftest import free_port, stop, wait_for_port

INGEST_PW = "ingest-secret"
WILDCARD_PW = "wildcard-secret"
CHIRPSTACK_PW = "chirpstack-secret"
MONITOR_PW = "monitor-secret"
QUIET_S = 1.0  # how long "nothing arrives" is watched


@dataclass
class Fleet:
    a: str
    b: str
    disabled: str
    tokens: dict[str, str]
    accounts: list[tuple[str, str]]


@pytest.fixture(scope="module")
async def fleet(sqlite_url: str) -> AsyncIterator[Fleet]:
    """Devices A, B and a disabled one in a fresh tenant, and the broker accounts read back."""
    engine = await open_database(sqlite_url, migrate_schema=False)
    suffix = uuid.uuid4().hex[:8]
    a, b, off = f"dev-a-{suffix}", f"dev-b-{suffix}", f"dev-off-{suffix}"
    async with engine.begin() as conn:
        tenant = await create_tenant(conn, f"broker-{suffix}")
        tokens = {uid: await create_device(conn, tenant, uid) for uid in (a, b, off)}
        await conn.execute(update(devices).where(devices.c.uid == off).values(status="disabled"))
    async with engine.connect() as conn:
        accounts = await broker_accounts(conn)
    await engine.dispose()
    yield Fleet(a, b, off, tokens, accounts)


@pytest.fixture(scope="module")
def password_broker(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Username + token over TLS only; two wildcard 'devices' smuggled into the accounts."""
    mosquitto_exe()
    base = tmp_path_factory.mktemp("password-broker")
    ca = DeviceCA.load_or_create(base / "ca")
    port = free_port()
    wildcards = [("#", mosquitto_hash(WILDCARD_PW)), ("+", mosquitto_hash(WILDCARD_PW))]
    write_config(
        base / "out",
        fleet.accounts + wildcards,
        ca,
        tls_port=port,
        ingest_password=INGEST_PW,
        chirpstack_password=CHIRPSTACK_PW,
        user=getpass.getuser(),
    )
    # A test-only observer that may read everything: what reaches the broker, by whom.
    with (base / "out" / "passwd").open("a") as passwd:
        passwd.write(f"monitor:{mosquitto_hash(MONITOR_PW)}\n")
    with (base / "out" / "acl").open("a") as acl:
        acl.write("\nuser monitor\ntopic read #\n")
    running = start_broker(base / "out", port, ca)
    yield running
    stop(running.process)


@pytest.fixture(scope="module")
def mtls_broker(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Client certificates required; the certificate CN is the username."""
    mosquitto_exe()
    base = tmp_path_factory.mktemp("mtls-broker")
    ca = DeviceCA.load_or_create(base / "ca")
    port = free_port()
    write_config(
        base / "out",
        fleet.accounts,
        ca,
        tls_port=port,
        require_certificate=True,
        ingest_password=INGEST_PW,
        user=getpass.getuser(),
    )
    running = start_broker(base / "out", port, ca)
    yield running
    stop(running.process)


def _device(broker: Running, fleet: Fleet, uid: str, clients: list[Client]) -> Client:
    c = Client(broker.port, ca=broker.ca_file, username=uid, password=fleet.tokens[uid])
    clients.append(c)
    assert c.connected(), f"{uid} could not log in"
    return c


def _ingest(broker: Running, clients: list[Client]) -> Client:
    c = Client(broker.port, ca=broker.ca_file, username="telemetra-ingest", password=INGEST_PW)
    clients.append(c)
    assert c.connected(), "the ingest user could not log in"
    return c


def _monitor(broker: Running, clients: list[Client]) -> Client:
    c = Client(broker.port, ca=broker.ca_file, username="monitor", password=MONITOR_PW)
    clients.append(c)
    c.subscribe("#")
    return c


def test_device_publishes_on_its_own_topics(
    password_broker: Running, fleet: Fleet, clients: list[Client]
) -> None:
    ingest = _ingest(password_broker, clients)
    # As the ingest worker subscribes: a shared subscription per route.
    ingest.subscribe(
        "$share/telemetra/devices/+/telemetry",
        "$share/telemetra/qs/v1/+/events",
        "$share/telemetra/tele/+/#",
    )
    device = _device(password_broker, fleet, fleet.a, clients)
    device.publish(f"devices/{fleet.a}/telemetry", '{"temperature": 21.5}')
    device.publish(f"qs/v1/{fleet.a}/events", '{"event_id": "e-1"}')
    device.publish(f"tele/{fleet.a}/SENSOR/temp", "21.5")
    got = ingest.wait_for(f"tele/{fleet.a}/SENSOR/temp", "21.5")
    assert (f"devices/{fleet.a}/telemetry", b'{"temperature": 21.5}') in got
    assert (f"qs/v1/{fleet.a}/events", b'{"event_id": "e-1"}') in got
    # ... and the ingest user may answer on the ack and dead-letter topics.
    device.subscribe(f"devices/{fleet.a}/acks")
    ingest.publish(f"devices/{fleet.a}/acks", '{"accepted": 1}')
    device.wait_for(f"devices/{fleet.a}/acks", '{"accepted": 1}')
    monitor = _monitor(password_broker, clients)
    ingest.publish("telemetra/deadletter", "{}")
    monitor.wait_for("telemetra/deadletter", "{}")


def test_ingest_user_reads_telemetry_and_writes_only_acks_and_dead_letters(
    password_broker: Running, fleet: Fleet, clients: list[Client]
) -> None:
    monitor = _monitor(password_broker, clients)
    ingest = _ingest(password_broker, clients)
    ingest.subscribe("#")  # reads only what its ACL grants, whatever it asks for
    device = _device(password_broker, fleet, fleet.a, clients)
    device.subscribe(f"devices/{fleet.a}/acks")
    forged = [
        f"devices/{fleet.a}/telemetry",  # a device's telemetry: it could forge readings
        f"qs/v1/{fleet.a}/events",
        f"tele/{fleet.a}/SENSOR",
        f"application/7/device/{fleet.a}/event/up",
        f"devices/{fleet.a}/commands",
        "$SYS/broker/forged",
        "other/topic",
    ]
    for topic in forged:
        ingest.publish(topic, '{"forged": 1}')
    ingest.publish(f"devices/{fleet.a}/acks", '{"accepted": 0}')
    ingest.publish("telemetra/deadletter", '{"marker": 1}')
    got = monitor.wait_for("telemetra/deadletter", '{"marker": 1}') + monitor.receive(QUIET_S)
    assert [topic for topic, _ in got] == [f"devices/{fleet.a}/acks", "telemetra/deadletter"]
    # It reads telemetry, not the acks it writes or what is not telemetry.
    device.publish(f"devices/{fleet.a}/telemetry", '{"t": 1}')
    device.publish(f"devices/{fleet.a}/telemetry", '{"t": 2}')
    got = ingest.wait_for(f"devices/{fleet.a}/telemetry", '{"t": 2}') + ingest.receive(QUIET_S)
    assert {topic for topic, _ in got} == {f"devices/{fleet.a}/telemetry"}


def test_device_cannot_publish_for_another_device(
    password_broker: Running, fleet: Fleet, clients: list[Client]
) -> None:
    ingest = _monitor(password_broker, clients)
    device = _device(password_broker, fleet, fleet.a, clients)
    device.publish(f"devices/{fleet.b}/telemetry", '{"forged": 1}')
    device.publish(f"qs/v1/{fleet.b}/events", '{"forged": 2}')
    device.publish(f"devices/{fleet.a}/acks", '{"forged": 3}')  # a device cannot fake acks
    device.publish(f"application/x/device/{fleet.a}/event/up", '{"forged": 4}')  # ChirpStack's
    device.publish("telemetra/deadletter", '{"forged": 5}')
    device.publish(f"devices/{fleet.a}/telemetry", '{"own": 1}')  # marker: all above are through
    got = ingest.wait_for(f"devices/{fleet.a}/telemetry", '{"own": 1}')
    got += ingest.receive(QUIET_S)
    assert got == [(f"devices/{fleet.a}/telemetry", b'{"own": 1}')]


def test_chirpstack_publishes_uplinks_and_nothing_of_the_devices(
    password_broker: Running, fleet: Fleet, clients: list[Client], tmp_path: Path
) -> None:
    ingest = _monitor(password_broker, clients)
    chirpstack = Client(password_broker.port, ca=password_broker.ca_file, username="chirpstack",
                        password=CHIRPSTACK_PW)  # fmt: skip
    clients.append(chirpstack)
    assert chirpstack.connected()
    chirpstack.publish(f"devices/{fleet.a}/telemetry", '{"forged": 1}')  # not a device
    uplink = "application/7/device/0102030405060708/event/up"
    chirpstack.publish(uplink, '{"object": {"t": 1}}')
    got = ingest.wait_for(uplink, '{"object": {"t": 1}}') + ingest.receive(QUIET_S)
    assert got == [(uplink, b'{"object": {"t": 1}}')]
    # The section outlives a sync, and no device may take the service's name (on a copy:
    # the running broker keeps the test's monitor).
    out = tmp_path / "copy"
    shutil.copytree(password_broker.out, out, ignore=shutil.ignore_patterns("data", "run"))
    result = sync_accounts(
        out, [*fleet.accounts, ("chirpstack", mosquitto_hash("x"))], reload=False
    )
    assert ("chirpstack", "device id equals a service's username") in result.skipped
    acl = (out / "acl").read_text().splitlines()
    assert acl[acl.index("user chirpstack") + 1] == "topic readwrite application/#"
    assert [line.split(":")[0] for line in (out / "passwd").read_text().splitlines()].count(
        "chirpstack"
    ) == 1


def test_device_reads_only_its_own_acks(
    password_broker: Running, fleet: Fleet, clients: list[Client]
) -> None:
    a = _device(password_broker, fleet, fleet.a, clients)
    a.subscribe(f"devices/{fleet.b}/acks", f"qs/v1/{fleet.b}/acks", "#", f"devices/{fleet.a}/acks")
    b = _device(password_broker, fleet, fleet.b, clients)
    b.publish(f"devices/{fleet.b}/telemetry", '{"b": 1}')  # A must not read B's data either
    ingest = _ingest(password_broker, clients)
    ingest.publish(f"devices/{fleet.b}/acks", '{"for": "b"}')
    ingest.publish(f"qs/v1/{fleet.b}/acks", '{"for": "b"}')
    ingest.publish(f"devices/{fleet.a}/acks", '{"for": "a"}')
    got = a.wait_for(f"devices/{fleet.a}/acks", '{"for": "a"}')
    got += a.receive(QUIET_S)
    assert {topic for topic, _ in got} == {f"devices/{fleet.a}/acks"}


@pytest.mark.parametrize("username", ["#", "+"])
def test_wildcard_usernames_cannot_connect(
    password_broker: Running, clients: list[Client], username: str
) -> None:
    passwd = (password_broker.out / "passwd").read_text()
    assert not any(line.startswith(username + ":") for line in passwd.splitlines())
    for password in (WILDCARD_PW, None, INGEST_PW):
        c = Client(password_broker.port, ca=password_broker.ca_file, username=username,
                   password=password)  # fmt: skip
        clients.append(c)
        assert not c.connected(), f"{username!r} logged in with password {password!r}"


def test_wrong_token_unknown_and_disabled_devices_are_refused(
    password_broker: Running, fleet: Fleet, clients: list[Client]
) -> None:
    attempts = [
        (fleet.a, "not-the-token"),
        (fleet.a, fleet.tokens[fleet.b]),
        (fleet.a, None),
        ("nobody", fleet.tokens[fleet.a]),
        (fleet.disabled, fleet.tokens[fleet.disabled]),  # not active: not in the password file
        (None, None),  # anonymous
    ]
    for username, password in attempts:
        c = Client(password_broker.port, ca=password_broker.ca_file, username=username,
                   password=password)  # fmt: skip
        clients.append(c)
        assert not c.connected(), f"{username!r} / {password!r} logged in"


def test_without_plain_port_only_tls_listens(
    password_broker: Running, clients: list[Client]
) -> None:
    conf = (password_broker.out / "mosquitto.conf").read_text()
    listeners = [line for line in conf.splitlines() if line.startswith("listener")]
    assert listeners == [f"listener {password_broker.port} 127.0.0.1"]
    plain = Client(password_broker.port, username="telemetra-ingest", password=INGEST_PW)
    clients.append(plain)
    assert not plain.connected(timeout=2)
    # Server certificate checks out against the CA for the default host names.
    assert _ingest(password_broker, clients).connected()


def test_generated_files(password_broker: Running, fleet: Fleet) -> None:
    out = password_broker.out
    for secret in ("server.key", "passwd", "acl"):
        assert stat.S_IMODE((out / secret).stat().st_mode) == 0o600, secret
    conf = (out / "mosquitto.conf").read_text().splitlines()
    for line in (
        "per_listener_settings false",
        "allow_anonymous false",
        "persistence true",
        f"persistence_location {out / 'data'}/",
        "autosave_interval 60",
        "max_queued_messages 1000000",
        "max_queued_bytes 0",
        f"user {getpass.getuser()}",
    ):
        assert line in conf
    assert (out / "data").is_dir()
    acl = (out / "acl").read_text().splitlines()
    assert "pattern write devices/%u/telemetry" in acl
    assert "pattern read devices/%u/acks" in acl
    assert f"user {fleet.a}" not in acl  # patterns: no section per device (load time)
    users = {line.split(":")[0] for line in (out / "passwd").read_text().splitlines()}
    assert {"telemetra-ingest", fleet.a, fleet.b} <= users
    assert fleet.disabled not in users
    assert "kill -HUP" in (out / "RELOAD.txt").read_text()
    assert not (out / "ingest.key").exists()  # only with require_certificate


def test_split_accounts_says_what_is_skipped() -> None:
    h = mosquitto_hash("x")
    usable, skipped = split_accounts(
        [("ok", h), ("#", h), ("a/b", h), ("telemetra-ingest", h), ("ok", h), ("bad", "x:y\n")]
    )
    assert usable == [("ok", h)]
    assert [uid for uid, _ in skipped] == ["#", "a/b", "telemetra-ingest", "ok", "bad"]


def test_device_certificate_logs_in_as_its_device(
    mtls_broker: Running, fleet: Fleet, clients: list[Client], tmp_path: Path
) -> None:
    out = mtls_broker.out
    assert f"crlfile {out / 'crl.pem'}" in (out / "mosquitto.conf").read_text().splitlines()
    ingest = Client(mtls_broker.port, ca=mtls_broker.ca_file, cert=out / "ingest.crt",
                    key=out / "ingest.key")  # fmt: skip
    clients.append(ingest)
    assert ingest.connected()
    ingest.subscribe("devices/+/telemetry")

    def cert_files(ca: DeviceCA, uid: str, name: str) -> tuple[Path, Path]:
        cert, key = issue_client_cert(ca, uid)
        (tmp_path / f"{name}.crt").write_bytes(cert)
        (tmp_path / f"{name}.key").write_bytes(key)
        return tmp_path / f"{name}.crt", tmp_path / f"{name}.key"

    cert, key = cert_files(mtls_broker.ca, fleet.a, "a")
    device = Client(mtls_broker.port, ca=mtls_broker.ca_file, cert=cert, key=key)
    clients.append(device)
    assert device.connected()
    device.publish(f"devices/{fleet.b}/telemetry", '{"forged": 1}')
    device.publish(f"devices/{fleet.a}/telemetry", '{"t": 1}')
    got = ingest.wait_for(f"devices/{fleet.a}/telemetry", '{"t": 1}')
    got += ingest.receive(QUIET_S)
    assert got == [(f"devices/{fleet.a}/telemetry", b'{"t": 1}')]

    stranger = DeviceCA.load_or_create(tmp_path / "stranger-ca")
    cert, key = cert_files(stranger, fleet.a, "stranger")
    refused = [
        Client(mtls_broker.port, ca=mtls_broker.ca_file, cert=cert, key=key),
        # No certificate: the device's token is no longer enough.
        Client(mtls_broker.port, ca=mtls_broker.ca_file, username=fleet.a,
               password=fleet.tokens[fleet.a]),
    ]  # fmt: skip
    clients += refused
    for c in refused:
        assert not c.connected(timeout=2)


def test_refused_config_leaves_out_untouched(
    tmp_path: Path, fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    mosquitto_exe()
    ca = DeviceCA.load_or_create(tmp_path / "ca")
    out = tmp_path / "out"
    write_config(out, fleet.accounts, ca, tls_port=free_port(), ingest_password=INGEST_PW,
                 user=getpass.getuser())  # fmt: skip
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    render = broker_mod._render_config
    monkeypatch.setattr(
        broker_mod, "_render_config", lambda layout: render(layout) + "bogus_option 1\n"
    )
    with pytest.raises(ValueError, match='Unknown configuration variable "bogus_option"'):
        write_config(out, fleet.accounts[:1], ca, tls_port=free_port(), ingest_password="new",
                     user=getpass.getuser())  # fmt: skip
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca", "out"]  # no temporary left


def test_a_user_mistake_is_a_value_error(tmp_path: Path) -> None:
    ca = DeviceCA.load_or_create(tmp_path / "ca")
    out = tmp_path / "out"
    mistakes: list[dict[str, Any]] = [
        {"ingest_username": "ingest user"},
        {"ingest_username": "#"},
        {"ingest_password": ""},
        {"bind": "127.0.0.1\nallow_anonymous true"},
        {"user": "root\nallow_anonymous true"},
        {"tls_port": 70000},
        {"tls_port": 8883, "plain_port": 8883},
        {"hostnames": ["bad host"]},
    ]
    for mistake in mistakes:
        kwargs: dict[str, Any] = {"ingest_password": INGEST_PW, "validate": False, **mistake}
        with pytest.raises(ValueError):
            write_config(out, [], ca, **kwargs)
    assert not out.exists()


@contextlib.contextmanager
def _shared_folder(owner: str | None) -> Iterator[Path]:
    """A folder outside pytest's private tmp (0700), as /etc/mosquitto would be: others may
    enter it; ``owner`` owns it when given."""
    base = Path(tempfile.mkdtemp(prefix="telemetra-broker-"))
    try:
        os.chmod(base, 0o755)
        if owner is not None:
            entry = pwd.getpwnam(owner)
            os.chown(base, entry.pw_uid, entry.pw_gid)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _as(user: str | None) -> list[str]:
    """Command prefix that runs as ``user`` (None: as we are, root here)."""
    if user is None:
        return []
    entry = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]


def _daemon_pid(pid_file: Path) -> int:
    deadline = time.monotonic() + 10
    # The daemon creates the file before it writes its pid: wait for the digits, not the name.
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline, f"no pid in {pid_file}"
        time.sleep(0.05)
    return int(pid_file.read_text())


@pytest.mark.parametrize("as_user", [None, "nobody"], ids=["root", "ordinary-user"])
def test_readme_broker_steps_work_as_root_and_as_an_ordinary_user(
    as_user: str | None, clients: list[Client]
) -> None:
    """`broker-config --out` (default --user), `mosquitto -c … -d`, a device created with
    TELEMETRA_BROKER_DIR: the broker runs, drops to its user as root, and takes the device."""
    if os.geteuid() != 0:
        if as_user is None:
            pytest.skip("run as root for the root case")
        as_user = None  # we are the ordinary user: run as ourselves
    mosquitto_exe()
    if as_user is not None:
        expected_uid = pwd.getpwnam(as_user).pw_uid
    elif os.geteuid() == 0:
        expected_uid = pwd.getpwnam("mosquitto").pw_uid  # started as root, it drops to its user
    else:
        expected_uid = os.geteuid()
    with _shared_folder(as_user) as base:
        out = base / "mosquitto" / "telemetra"
        port = free_port()
        env = {
            **os.environ,
            "TELEMETRA_DATA_DIR": str(base / "data"),
            "TELEMETRA_DATABASE_URL": "",
            "TELEMETRA_MQTT_PASSWORD": INGEST_PW,
            "TELEMETRA_BROKER_DIR": str(out),
            "HOME": str(base),
        }

        def telemetra(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*_as(as_user), sys.executable, "-m", "telemetra.cli", *args],
                env=env, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip

        done = telemetra("broker-config", "--out", str(out), "--tls-port", str(port),
                         "--bind", "127.0.0.1")  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        started = subprocess.run(
            [*_as(as_user), mosquitto_exe(), "-c", str(out / "mosquitto.conf"), "-d"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        pid = _daemon_pid(out / "run" / "mosquitto.pid")
        try:
            wait_for_port(port)
            runs_as = int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0])
            assert runs_as == expected_uid
            ca = out / "ca.pem"
            ingest = Client(port, ca=ca, username="telemetra-ingest", password=INGEST_PW)
            clients.append(ingest)
            ingest.subscribe("devices/+/telemetry")
            # A device created now reaches the running broker (sync + SIGHUP as that user).
            uid = f"dev-{uuid.uuid4().hex[:6]}"
            made = telemetra("device", "create", uid)
            assert made.returncode == 0, made.stdout + made.stderr
            assert "updated, reloaded" in made.stderr, made.stderr
            token = made.stdout.strip().splitlines()[-1]
            device = Client(port, ca=ca, username=uid, password=token)
            clients.append(device)
            assert device.connected(), f"{uid} could not log in after the sync"
            device.publish(f"devices/{uid}/telemetry", '{"t": 1}')
            ingest.wait_for(f"devices/{uid}/telemetry", '{"t": 1}')
            # Restarted on the synced files (what a reboot does): it can still read them.
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists():
                assert time.monotonic() < deadline, "Mosquitto did not stop"
                time.sleep(0.05)
            started = subprocess.run(
                [*_as(as_user), mosquitto_exe(), "-c", str(out / "mosquitto.conf"), "-d"],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            pid = _daemon_pid(out / "run" / "mosquitto.pid")
            wait_for_port(port)
            again = Client(port, ca=ca, username=uid, password=token)
            clients.append(again)
            assert again.connected()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def test_ports_must_be_free_or_the_replaced_brokers(
    tmp_path: Path, fleet: Fleet, clients: list[Client]
) -> None:
    mosquitto_exe()
    ca = DeviceCA.load_or_create(tmp_path / "ca")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        for option, ports in (
            ("--plain-port", {"plain_port": busy}),
            ("--tls-port", {"tls_port": busy}),
        ):
            kwargs: dict[str, Any] = {"tls_port": free_port(), **ports}
            held = rf"{option} {busy} on 127.0.0.1 is already in use \(by .*, pid {os.getpid()}\)"
            with pytest.raises(ValueError, match=held):
                write_config(tmp_path / "out", [], ca, ingest_password=INGEST_PW,
                             user=getpass.getuser(), **kwargs)  # fmt: skip
        assert not (tmp_path / "out").exists()
    # The broker being replaced holds its ports: writing its folder again is fine.
    port, plain = free_port(), free_port()
    write_config(tmp_path / "out", fleet.accounts, ca, tls_port=port, plain_port=plain,
                 ingest_password=INGEST_PW, user=getpass.getuser())  # fmt: skip
    running = start_broker(tmp_path / "out", port, ca)
    try:
        _daemon_pid(tmp_path / "out" / "run" / "mosquitto.pid")
        write_config(tmp_path / "out", fleet.accounts, ca, tls_port=port, plain_port=plain,
                     ingest_password=INGEST_PW, user=getpass.getuser())  # fmt: skip
        # … but another folder may not take them.
        with pytest.raises(ValueError, match=f"--tls-port {port} .* in use .by mosquitto, pid"):
            write_config(tmp_path / "other", [], ca, tls_port=port, ingest_password=INGEST_PW,
                         user=getpass.getuser())  # fmt: skip
    finally:
        stop(running.process)


def test_low_ports_and_unreachable_folders_are_refused_up_front(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("as root, Mosquitto switches to its own user")
    ca = DeviceCA.load_or_create(tmp_path / "ca")
    # pytest's tmp folders are private to root (0700): the broker's user cannot enter them.
    with pytest.raises(ValueError, match="runs as user 'mosquitto' and cannot enter"):
        write_config(tmp_path / "out", [], ca, ingest_password=INGEST_PW)
    low = "--tls-port 883: Mosquitto runs as user 'mosquitto'"
    with _shared_folder(None) as base, pytest.raises(ValueError, match=low):
        write_config(base / "out", [], ca, tls_port=883, ingest_password=INGEST_PW)


def test_oversized_payloads_never_reach_the_workers(
    password_broker: Running, fleet: Fleet, clients: list[Client]
) -> None:
    conf = (password_broker.out / "mosquitto.conf").read_text().splitlines()
    assert "check_retain_source true" in conf
    assert f"max_packet_size {256 * 1024 + 64 * 1024}" in conf
    monitor = _monitor(password_broker, clients)
    ingest = _ingest(password_broker, clients)
    ingest.subscribe("devices/+/telemetry")
    big = _device(password_broker, fleet, fleet.a, clients)
    big.client.publish(f"devices/{fleet.a}/telemetry", b"x" * (10 * 1024 * 1024), qos=1)
    assert big.dropped.wait(10), "the broker kept a client sending 10 MB"
    fits = _device(password_broker, fleet, fleet.b, clients)
    fits.publish(f"devices/{fleet.b}/telemetry", "1" * (256 * 1024))  # at the limit: passes
    for observer in (ingest, monitor):
        got = observer.wait_for(f"devices/{fleet.b}/telemetry", "1" * (256 * 1024), timeout=10)
        assert all(topic != f"devices/{fleet.a}/telemetry" for topic, _ in got)


def test_serve_as_another_user_keeps_the_broker_in_step(clients: list[Client]) -> None:
    """broker-config as root with --user for serve's user, the folder given to that user
    (docs/production.md): its device changes reach, and reload, the running broker."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    mosquitto_exe()
    with _shared_folder(None) as base:
        out, data, port = base / "broker", base / "data", free_port()
        env = {**os.environ, "TELEMETRA_DATA_DIR": str(data), "TELEMETRA_DATABASE_URL": "",
               "TELEMETRA_MQTT_PASSWORD": INGEST_PW, "TELEMETRA_BROKER_DIR": str(out)}  # fmt: skip

        def telemetra(user: str | None, *args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*_as(user), sys.executable, "-m", "telemetra.cli", *args],
                env=env, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip

        done = telemetra(None, "broker-config", "--out", str(out), "--tls-port", str(port),
                         "--bind", "127.0.0.1", "--user", "nobody")  # fmt: skip
        assert done.returncode == 0, done.stderr
        subprocess.run(["chown", "-R", "nobody", str(out), str(data)], check=True)
        subprocess.run([mosquitto_exe(), "-c", str(out / "mosquitto.conf"), "-d"], check=True)
        pid = _daemon_pid(out / "run" / "mosquitto.pid")
        try:
            wait_for_port(port)
            uid = f"dev-{uuid.uuid4().hex[:6]}"
            made = telemetra("nobody", "device", "create", uid)
            assert made.returncode == 0 and "updated, reloaded" in made.stderr, made.stderr
            device = Client(port, ca=out / "ca.pem", username=uid,
                            password=made.stdout.strip().splitlines()[-1])  # fmt: skip
            clients.append(device)
            assert device.connected()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def test_a_later_config_without_mtls_drops_the_service_certificates(tmp_path: Path) -> None:
    ca = DeviceCA.load_or_create(tmp_path / "ca")
    out = tmp_path / "out"
    options: dict[str, Any] = {"ingest_password": INGEST_PW, "chirpstack_password": "c",
                               "user": getpass.getuser(), "validate": False}  # fmt: skip
    write_config(out, [], ca, require_certificate=True, **options)
    assert (out / "ingest.key").exists() and (out / "chirpstack.key").exists()
    write_config(out, [], ca, **options)
    assert not [p.name for p in out.iterdir() if p.suffix in (".crt", ".key") and
                p.name != "server.key"]  # fmt: skip
