"""A Mosquitto 2.0 configuration for the registered devices: TLS listener, password file, ACL.

Devices log in with their id as username and their token as password (or, with
``require_certificate``, with a client certificate whose CN is their id), and the ACL lets each
one publish only under its own id and read only its own acks. The ingest user reads the routes'
telemetry topics and writes their ack topics and dead letters, nothing else.

Files and users: Mosquitto 2.0 started as root switches to ``user`` (default ``mosquitto``)
right after reading its configuration, before it writes its pid file or opens anything else.
So the files it reads (passwd, acl, server.key) are group-readable by that user's group and the
folder is set-group-id to it (files a later sync writes there inherit the group), while its pid
file and persistence live in folders that user owns (``run/``, ``data/``): never in the folder
holding its configuration, which it must not be able to rewrite.

Keeping it in step: ``sync_accounts`` rewrites ``passwd``, ``acl`` and ``crl.pem`` from the
database (validated, atomically) and sends Mosquitto SIGHUP through the pid file the
configuration names. On reload Mosquitto re-reads them, disconnects clients whose login is gone
(a deleted, disabled or re-keyed device), refuses revoked certificates at the TLS handshake and
re-checks every session against the new ACL, which denies everything to disabled devices and to
deleted ones whose certificates have not expired. Listener changes (ports, bind address, TLS
files, ``require_certificate``) need ``write_config`` and a restart.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from telemetra.certs import DeviceCA, issue_server_cert, issue_service_cert
from telemetra.credentials import mosquitto_hash
from telemetra.ingest.routes import DEFAULT_ROUTES, DEVICE, Route, subscription
from telemetra.model import valid_device_uid
from telemetra.store.schema import devices

__all__ = [
    "INGEST_USERNAME",
    "BrokerState",
    "IngestTopics",
    "SyncResult",
    "broker_accounts",
    "broker_state",
    "ingest_topics",
    "split_accounts",
    "sync_accounts",
    "sync_lock",
    "sync_state",
    "write_config",
]

log = structlog.get_logger("telemetra.broker")

INGEST_USERNAME = "telemetra-ingest"
# ChirpStack's MQTT integration publishes uplinks (and reads downlinks) under application/.
CHIRPSTACK_USERNAME = "chirpstack"
CHIRPSTACK_ACL = ("topic readwrite application/#",)
# What a device may do, %u being its username (the certificate CN with
# use_identity_as_username). These follow ingest.routes.DEFAULT_ROUTES; ChirpStack topics are
# published by ChirpStack, not by devices. Patterns, not a section per device: Mosquitto 2.0
# finds a user's ACL section by walking a list, so 10,000 sections took 1.2 s to load and
# 50,000 over 10 s (bench/broker_sync.py), with the broker stalled meanwhile.
DEVICE_ACL = (
    "pattern write devices/%u/telemetry",
    "pattern write qs/v1/%u/events",
    "pattern write tele/%u/#",
    "pattern read devices/%u/acks",
    "pattern read qs/v1/%u/acks",
)
# Written by write_config next to the broker files, read by sync_accounts.
STATE_FILE = "telemetra-broker.json"
SERVICES_FILE = "services.passwd"  # the ingest user's line(s) of passwd
RUN_DIR = "run"  # holds the pid file; owned by the broker's user, who writes it
PID_FILE = "mosquitto.pid"
# max_packet_size = largest accepted payload + this, room for the topic and MQTT 5 properties.
_PACKET_HEADROOM = 64 * 1024
# "$7$<iterations>$<salt>$<hash>" (Mosquitto 2.0) or "$6$<salt>$<hash>" (1.x); anything else,
# a ':' or a line break above all, would corrupt the password file.
_HASH = re.compile(r"\$(7\$[0-9]+|6)\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+")
_START_TIMEOUT_S = 10.0
_LOGIN_TIMEOUT_S = 5.0

RELOAD_TEXT = """\
Mosquitto configuration written by Telemetra.

Start:   mosquitto -c {conf} -d
Devices: with TELEMETRA_BROKER_DIR={out} set for `telemetra serve` and the CLI,
         creating, rotating, disabling or deleting a device rewrites passwd and acl
         and reloads Mosquitto (SIGHUP to the pid in {pid}); by hand:
         `telemetra broker-config --out {out} --sync`.
Reload:  kill -HUP <pid> re-reads passwd and acl: clients whose login is gone are
         disconnected, the others keep their connection under the new ACL.
         Listener changes (ports, bind address, TLS certificate files,
         require_certificate) need a restart.

Regenerate these files rather than editing them; the next run replaces them.
"""


async def broker_accounts(conn: AsyncConnection) -> list[tuple[str, str]]:
    """(uid, broker_hash) of every active device that has a broker password hash, by uid."""
    rows = await conn.execute(
        select(devices.c.uid, devices.c.broker_hash)
        .where(devices.c.status == "active", devices.c.broker_hash.is_not(None))
        .order_by(devices.c.uid)
    )
    return [(str(uid), str(broker_hash)) for uid, broker_hash in rows]


@dataclass(frozen=True)
class BrokerState:
    """What the broker must know: who logs in with a password, which identities may do
    nothing (disabled devices, deleted ones with certificates still unexpired), and which
    certificates to refuse."""

    accounts: list[tuple[str, str]]
    blocked: list[str]
    revoked: list[str]


async def broker_state(conn: AsyncConnection) -> BrokerState:
    """The broker's part of the database, for ``write_config`` and ``sync_accounts``."""
    from telemetra.store.catalog import blocked_identities, revoked_serials

    return BrokerState(
        await broker_accounts(conn), await blocked_identities(conn), await revoked_serials(conn)
    )


def split_accounts(
    accounts: Iterable[tuple[str, str]], ingest_username: str = INGEST_USERNAME
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(usable accounts, skipped (uid, reason)): what ``write_config`` will and won't write."""
    usable: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for uid, broker_hash in accounts:
        if not valid_device_uid(uid):
            # CVE-2017-7650: a username such as '#' or '+' turns %u pattern rules into
            # wildcards that grant access to every device's topics.
            skipped.append((uid, "invalid device id (wildcard, separator or control character)"))
        elif uid in (ingest_username, CHIRPSTACK_USERNAME):
            skipped.append((uid, "device id equals a service's username"))
        elif uid in seen:
            skipped.append((uid, "duplicate device id"))
        elif not _HASH.fullmatch(broker_hash):
            skipped.append((uid, "broker hash is not a Mosquitto password hash"))
        else:
            seen.add(uid)
            usable.append((uid, broker_hash))
    return usable, skipped


@dataclass(frozen=True)
class _Layout:
    """Where one rendering of the config points: the real one, or the validation copy."""

    files: Path  # folder holding passwd, acl, ca.pem, server.pem, server.key
    persistence: Path
    run: Path  # folder for the pid file
    tls_port: int
    plain_port: int | None
    bind: str
    user: str | None
    require_certificate: bool
    max_payload_bytes: int


def _value(what: str, value: str) -> str:
    # A line break (or NUL) in any value would inject extra configuration lines.
    if not value or value != value.strip() or any(c in value for c in "\r\n\0"):
        raise ValueError(f"invalid {what} {value!r} for the Mosquitto configuration")
    return value


def _render_config(layout: _Layout) -> str:
    """mosquitto.conf text for ``layout``."""
    files = layout.files
    lines = [
        "# Mosquitto 2.0 configuration written by Telemetra; regenerate rather than edit.",
        f"# kill -HUP $(cat {RUN_DIR}/{PID_FILE}) reloads passwd and acl; listener changes need a",
        "# restart.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"pid_file {_value('path', str(layout.run / PID_FILE))}",
        f"password_file {_value('path', str(files / 'passwd'))}",
        f"acl_file {_value('path', str(files / 'acl'))}",
    ]
    if layout.user is not None:
        lines.append(f"user {_value('user', layout.user)}")
    lines += [
        "",
        "# Hold the ingest workers' queue through an outage and across a broker restart.",
        "persistence true",
        f"persistence_location {_value('path', str(layout.persistence))}/",
        "autosave_interval 60",
        "max_queued_messages 1000000",
        "max_queued_bytes 0",
        "",
        "# A retained message is re-checked against its publisher's ACL when it is delivered",
        "# later. A packet larger than TELEMETRA_MAX_PAYLOAD_BYTES plus room for the topic is",
        "# refused (its sender disconnected) before it is read: it never reaches the workers.",
        "check_retain_source true",
        f"max_packet_size {layout.max_payload_bytes + _PACKET_HEADROOM}",
        "",
        "# TLS listener for devices and the ingest workers.",
        f"listener {layout.tls_port} {_value('bind address', layout.bind)}",
        "tls_version tlsv1.2",
        f"cafile {files / 'ca.pem'}",
        f"certfile {files / 'server.pem'}",
        f"keyfile {files / 'server.key'}",
    ]
    if layout.require_certificate:
        lines += [
            "# mTLS: a certificate from the CA is required and its CN is the username;",
            "# certificates of deleted and disabled devices are revoked (reloaded on SIGHUP).",
            "require_certificate true",
            "use_identity_as_username true",
            f"crlfile {files / 'crl.pem'}",
        ]
    else:
        lines.append("require_certificate false")
    if layout.plain_port is not None:
        lines += [
            "",
            "# Plain TCP: username and password, no encryption.",
            f"listener {layout.plain_port} {layout.bind}",
        ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class IngestTopics:
    """What the ingest user may do: read the routes' telemetry, write acks and dead letters."""

    read: tuple[str, ...]
    write: tuple[str, ...]


def ingest_topics(routes: Iterable[Route] = DEFAULT_ROUTES) -> IngestTopics:
    """The ingest user's topics for ``routes`` (TELEMETRA_ROUTES), {device} being any device."""
    from telemetra.ingest.pipeline import DEADLETTER_TOPIC

    routes = list(routes)
    acks = [r.ack.replace(DEVICE, "+") for r in routes if r.ack is not None]
    return IngestTopics(
        read=tuple(dict.fromkeys(subscription(r) for r in routes)),
        write=tuple(dict.fromkeys([*acks, DEADLETTER_TOPIC])),
    )


def _render_acl(
    ingest_username: str,
    blocked: Iterable[str],
    chirpstack: bool = False,
    topics: IngestTopics | None = None,
) -> str:
    topics = topics or ingest_topics()
    lines = [
        "# Written by Telemetra; regenerate rather than edit. Devices (username = device id)",
        "# publish only under their own id and read only their own acks. Device ids with '+' or",
        "# '#' are never written (CVE-2017-7650).",
        *DEVICE_ACL,
        "",
        "# The ingest workers read the routes' telemetry and write acks and dead letters.",
        f"user {ingest_username}",
        *(f"topic read {_value('topic', t)}" for t in topics.read),
        *(f"topic write {_value('topic', t)}" for t in topics.write),
    ]
    if chirpstack:
        lines += [
            "",
            "# ChirpStack: LoRaWAN uplinks in, downlinks out.",
            f"user {CHIRPSTACK_USERNAME}",
        ]
        lines += CHIRPSTACK_ACL
    services = (ingest_username, CHIRPSTACK_USERNAME)
    denied = sorted({uid for uid in blocked if valid_device_uid(uid) and uid not in services})
    if denied:
        lines += [
            "",
            "# Disabled devices, and deleted ones whose certificates have not expired: their",
            "# certificates are also revoked (crl.pem); this stops a session already open.",
        ]
    for uid in denied:
        lines += [f"user {uid}", "topic deny #"]
    return "\n".join(lines) + "\n"


def _render_passwd(services: str, accounts: Iterable[tuple[str, str]]) -> str:
    return services + "".join(f"{uid}:{broker_hash}\n" for uid, broker_hash in accounts)


def _write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


@dataclass(frozen=True)
class _Owner:
    """The system user a root-started Mosquitto switches to."""

    name: str
    uid: int
    gid: int


def _broker_owner(user: str | None) -> _Owner | None:
    """Who Mosquitto will run as, when that is not us (we are root and it drops privileges).

    Mosquitto 2.0 started as root switches to ``user`` (default ``mosquitto``) right after
    parsing its configuration: its pid file, password, ACL, key and persistence files are all
    opened as that user.
    """
    if os.geteuid() != 0:
        return None  # not root: Mosquitto cannot switch users and ignores `user`
    name = user or "mosquitto"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if user is None:
            return None  # Mosquitto then stays root, with a warning
        raise ValueError(f"there is no system user {user!r} for Mosquitto to run as") from None
    if entry.pw_uid == 0:
        return None
    return _Owner(name, entry.pw_uid, entry.pw_gid)


def _unreachable(path: Path, owner: _Owner) -> str | None:
    """Why ``owner`` cannot reach into folder ``path`` (a folder on the way it may not
    enter), or None."""
    gids = set(os.getgrouplist(owner.name, owner.gid))
    for folder in [*reversed(path.parents), path]:
        try:
            st = folder.stat()
        except FileNotFoundError:
            return None  # created by us below, with modes that let it in
        if st.st_uid == owner.uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid in gids:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            return f"{folder} (mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid})"
    return None


def _secret_for_broker(path: Path, owner: _Owner | None) -> None:
    """A file Mosquitto reads that nobody else may: 0600, or 0640 for its group when it
    switches users (a later sync by root, or by the folder's set-group-id, keeps that)."""
    if owner is None:
        os.chmod(path, 0o600)
    else:
        os.chown(path, -1, owner.gid)
        os.chmod(path, 0o640)


def _broker_folder(path: Path, owner: _Owner | None, mode: int) -> None:
    """A folder Mosquitto writes (pid file, persistence): its user's when it switches."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)
    os.chmod(path, mode)


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP ``port`` (any address), from /proc/net."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local_address is ADDR:PORT in hex; state 0A is LISTEN.
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                inodes.add(fields[9])
    return inodes


def _holds(pid: int, inodes: set[str]) -> bool | None:
    """Whether process ``pid`` holds one of these sockets; None when we may not look."""
    sockets = {f"socket:[{inode}]" for inode in inodes}
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except PermissionError:
        return None
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(fd) in sockets:
                return True
    return False


def _process_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _holder(inodes: set[str]) -> str:
    """' (by <name>, pid N)' for the process listening on one of ``inodes``, if we may see it."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and _holds(int(proc.name), inodes):
            return f" (by {_process_name(int(proc.name))}, pid {proc.name})"
    return ""


def _low_ports_allowed(exe: str) -> bool:
    """Whether ``exe`` carries the file capability CAP_NET_BIND_SERVICE (setcap)."""
    try:
        caps = os.getxattr(exe, "security.capability")
    except OSError:
        return False
    # struct vfs_cap_data: magic, then the low 32 bits of the permitted set; bit 10.
    return len(caps) >= 8 and bool(int.from_bytes(caps[4:8], "little") & (1 << 10))


def _port_problem(
    option: str, port: int, bind: str, owner: _Owner | None, pid_files: Sequence[Path]
) -> str | None:
    """Why Mosquitto could not listen on ``bind``:``port``, or None.

    The validation copy runs on free ports, so this is the only check of the real ones;
    a port held by the Mosquitto this folder's pid file names (the broker being replaced)
    is fine. ``mosquitto -d`` would exit 0 and die in the background on a taken port.
    """
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        first = 1024
    if port < first and (os.geteuid() != 0 or owner is not None):
        who = f"user {owner.name!r}" if owner else "an ordinary user"
        if not _low_ports_allowed(_mosquitto_exe()):
            return (
                f"{option} {port}: Mosquitto runs as {who} and cannot listen below {first}; "
                f"choose a port from {first}, or allow it with "
                f"`setcap cap_net_bind_service=+ep {_mosquitto_exe()}`"
            )
    try:
        addresses = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        return f"bind address {bind!r} cannot be resolved: {error}"
    for family, kind, proto, _name, address in addresses:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Mosquitto does
            try:
                s.bind(address)
                continue
            except PermissionError:
                continue  # a privileged port probed as an ordinary user: checked above
            except OSError as error:
                if error.errno == errno.EADDRNOTAVAIL:
                    return f"bind address {bind!r} is not an address of this machine"
                if error.errno != errno.EADDRINUSE:
                    return f"{option} {port} on {bind}: {error.strerror}"
        inodes = _listening_inodes(port)
        for pid_file in pid_files:
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().strip())
                if _process_name(pid) == "mosquitto" and _holds(pid, inodes) is not False:
                    return None  # the broker this configuration replaces
        return (
            f"{option} {port} on {bind} is already in use{_holder(inodes)}; "
            f"choose another {option} or stop what listens there"
        )
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mosquitto_exe() -> str:
    # Debian installs it in /usr/sbin, which is not on every user's PATH.
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise ValueError(
            "mosquitto is not installed: it is needed to validate the configuration "
            "(or pass validate=False)"
        )
    return exe


def _login_error(
    port: int,
    ca_file: Path,
    *,
    tls: bool,
    username: str,
    password: str | None = None,
    cert: Path | None = None,
    key: Path | None = None,
) -> str | None:
    """None when ``username`` can log in on 127.0.0.1:``port``, else why not."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"telemetra-check-{secrets.token_hex(4)}",
        protocol=mqtt.MQTTv311,
    )
    if tls:
        client.tls_set(
            ca_certs=str(ca_file),
            certfile=str(cert) if cert else None,
            keyfile=str(key) if key else None,
        )
        # The copy listens on 127.0.0.1, which the server certificate need not name; the chain
        # is still verified against the CA.
        client.tls_insecure_set(True)
    if cert is None:
        client.username_pw_set(username, password)
    outcome: list[str] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: outcome.append(
        f"refused: {reason}" if reason.is_failure else ""
    )
    try:
        client.connect("127.0.0.1", port, keepalive=10)
        deadline = time.monotonic() + _LOGIN_TIMEOUT_S
        while not outcome and time.monotonic() < deadline:
            if client.loop(0.1) not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
                break
    except (OSError, ssl.SSLError) as exc:
        return f"connection failed: {exc}"
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
    if not outcome:
        return "no answer to CONNECT (connection closed or timed out)"
    return outcome[0] or None


def _broker_errors(log_file: Path) -> str:
    lines = [
        line.split(": ", 1)[-1]  # drop Mosquitto's timestamp prefix
        for line in log_file.read_text(errors="replace").splitlines()
        if line.strip()
    ]
    errors = [line for line in lines if "Error" in line]
    return "; ".join(errors or lines[-5:]) or "no output"


def _validate(
    folder: Path,
    layout: _Layout,
    owner: _Owner | None,
    *,
    ingest_username: str,
    ingest_password: str,
) -> None:
    """Start Mosquitto on a copy of the config (free ports, 127.0.0.1) and log in as ingest.

    ValueError, with Mosquitto's own message, when it refuses the configuration.
    """
    check = _Layout(
        files=folder,
        persistence=folder / "check-data",
        run=folder / "check-run",
        tls_port=_free_port(),
        plain_port=_free_port() if layout.plain_port is not None else None,
        bind="127.0.0.1",
        user=layout.user,
        require_certificate=layout.require_certificate,
        max_payload_bytes=layout.max_payload_bytes,
    )
    # As the real ones will be: the broker's user writes these (see write_config).
    _broker_folder(check.persistence, owner, 0o700)
    _broker_folder(check.run, owner, 0o755)
    ports = [p for p in (check.tls_port, check.plain_port) if p is not None]
    with _throwaway(folder, _render_config(check), ports, "the configuration") as log_file:
        ca_file = folder / "ca.pem"
        if layout.require_certificate:
            error = _login_error(
                check.tls_port,
                ca_file,
                tls=True,
                username=ingest_username,
                cert=folder / "ingest.crt",
                key=folder / "ingest.key",
            )
        else:
            error = _login_error(
                check.tls_port,
                ca_file,
                tls=True,
                username=ingest_username,
                password=ingest_password,
            )
        if error is None and check.plain_port is not None:
            error = _login_error(
                check.plain_port,
                ca_file,
                tls=False,
                username=ingest_username,
                password=ingest_password,
            )
        if error is not None:
            raise ValueError(
                f"Mosquitto started but the ingest user {ingest_username!r} could not log in "
                f"({error}): {_broker_errors(log_file)}"
            )


@contextlib.contextmanager
def _throwaway(folder: Path, config: str, ports: list[int], what: str) -> Iterator[Path]:
    """A Mosquitto on ``config`` (written to ``folder``), up until the block ends; yields its
    log file. ValueError with Mosquitto's own message when it exits (it does on a file it
    cannot use) or does not open ``ports`` in time."""
    exe = _mosquitto_exe()
    conf = folder / "check.conf"
    _write(conf, config)
    log_file = folder / "check.log"
    with log_file.open("wb") as sink:
        proc = subprocess.Popen(
            [exe, "-c", str(conf)], stdout=sink, stderr=subprocess.STDOUT, cwd=folder
        )
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not all(_listening(p) for p in ports):
            if proc.poll() is not None:
                raise ValueError(f"Mosquitto refused {what}: {_broker_errors(log_file)}")
            if time.monotonic() > deadline:
                raise ValueError(
                    f"Mosquitto did not open its listeners within {_START_TIMEOUT_S:.0f} s: "
                    f"{_broker_errors(log_file)}"
                )
            time.sleep(0.02)
        yield log_file
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def write_config(
    out: Path,
    accounts: Iterable[tuple[str, str]],
    ca: DeviceCA,
    *,
    blocked: Iterable[str] = (),
    revoked: Iterable[str] = (),
    hostnames: Sequence[str] = ("localhost", "127.0.0.1"),
    tls_port: int = 8883,
    plain_port: int | None = None,
    require_certificate: bool = False,
    ingest_username: str = INGEST_USERNAME,
    ingest_password: str,
    chirpstack_password: str | None = None,
    routes: Iterable[Route] = DEFAULT_ROUTES,
    max_payload_bytes: int = 256 * 1024,
    persistence_dir: Path | None = None,
    user: str | None = None,
    bind: str = "127.0.0.1",
    validate: bool = True,
) -> Path:
    """Write a validated Mosquitto configuration into ``out``; returns ``out/mosquitto.conf``.

    Files: mosquitto.conf, passwd (devices + ingest user), acl (the ingest user may read the
    telemetry topics of ``routes`` and write their ack topics and dead letters; everything
    is denied to the ``blocked`` identities), ca.pem, crl.pem (the certificates with serials
    ``revoked``; see ``broker_state``), server.pem, server.key, RELOAD.txt, and with
    ``require_certificate`` ingest.crt/ingest.key (the ingest worker's client certificate,
    CN = ``ingest_username``); folders ``run/`` (pid file) and ``data/`` (persistence).
    ``plain_port=None`` opens no plain TCP listener. Payloads over ``max_payload_bytes``
    (TELEMETRA_MAX_PAYLOAD_BYTES) are dropped by the broker. Accounts with unusable ids are
    skipped and logged (see ``split_accounts``).

    ``user`` is Mosquitto's ``user`` option: started as root, Mosquitto switches to it
    (default ``mosquitto``) at once, so that user gets ``run/`` and ``data/``, and read access
    through its group to passwd, acl and server.key (0640); ``out`` becomes set-group-id to
    that group. Run as an ordinary user, everything stays that user's (secrets 0600).

    Everything is generated in a temporary sibling folder and checked by starting Mosquitto on
    a copy of the config (listeners on free ports of 127.0.0.1) and logging in as the ingest
    user; only then are the files moved into ``out``, each atomically. A configuration
    Mosquitto refuses raises ValueError with Mosquitto's message and leaves ``out`` untouched.
    With ``validate`` the real ports are also checked: each must be free on ``bind``, or held
    by the Mosquitto that ``out``'s pid file names (the broker being replaced).

    To apply it to a running broker: ``kill -HUP <pid>`` reloads passwd and acl; listener
    changes need a restart.
    """
    if not valid_device_uid(ingest_username) or any(c.isspace() for c in ingest_username):
        raise ValueError(
            f"invalid ingest username {ingest_username!r}: no spaces, '/', '+', '#' or ':'"
        )
    if not ingest_password:
        raise ValueError("the ingest user needs a password")
    for name, port in (("tls_port", tls_port), ("plain_port", plain_port)):
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"{name} must be between 1 and 65535, not {port}")
    if plain_port is not None and plain_port == tls_port:
        raise ValueError(f"the TLS and plain listeners cannot share port {tls_port}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    out = out.absolute()
    usable, skipped = split_accounts(accounts, ingest_username)
    for uid, reason in skipped:
        log.warning("broker account skipped", uid=uid, reason=reason)
    layout = _Layout(
        files=out,
        persistence=(persistence_dir or out / "data").absolute(),
        run=out / RUN_DIR,
        tls_port=tls_port,
        plain_port=plain_port,
        bind=bind,
        user=user,
        require_certificate=require_certificate,
        max_payload_bytes=max_payload_bytes,
    )
    config = _render_config(layout)  # also checks the values before any work is done
    topics = ingest_topics(routes)
    acl = _render_acl(ingest_username, blocked, bool(chirpstack_password), topics)
    owner = _broker_owner(user)
    if owner is not None:
        for place in (out.parent, layout.persistence.parent):
            if blocked_at := _unreachable(place, owner):
                raise ValueError(
                    f"Mosquitto runs as user {owner.name!r} and cannot enter {blocked_at}; "
                    f"choose a folder it can reach (e.g. /etc/mosquitto/telemetra) or --user"
                )
    if validate:
        pid_files = [layout.run / PID_FILE, out / PID_FILE]  # out/: before run/ existed
        for option, port in (("--tls-port", tls_port), ("--plain-port", plain_port)):
            if port is not None and (
                problem := _port_problem(option, port, bind, owner, pid_files)
            ):
                raise ValueError(problem)
    server_cert, server_key = issue_server_cert(ca, hostnames)

    out.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if owner is not None:
            # Mosquitto, as its own user, must reach the files inside (each has its own mode).
            os.chown(folder, -1, owner.gid)
            os.chmod(folder, 0o750)  # noqa: S103 - group: the broker's
        services = f"{ingest_username}:{mosquitto_hash(ingest_password)}\n"
        if chirpstack_password:
            services += f"{CHIRPSTACK_USERNAME}:{mosquitto_hash(chirpstack_password)}\n"
        state = {
            "ingest_username": ingest_username,
            "user": user,
            "chirpstack": bool(chirpstack_password),
            "pid_file": str(layout.run / PID_FILE),
            "ingest_read": list(topics.read),
            "ingest_write": list(topics.write),
        }
        reload_text = RELOAD_TEXT.format(
            conf=out / "mosquitto.conf", out=out, pid=layout.run / PID_FILE
        )
        files: dict[str, tuple[str | bytes, int]] = {
            "RELOAD.txt": (reload_text, 0o644),
            STATE_FILE: (json.dumps(state, indent=2) + "\n", 0o644),
            SERVICES_FILE: (services, 0o600),  # Telemetra's syncs read it, Mosquitto not
            "ca.pem": (ca.cert_pem, 0o644),
            "crl.pem": (ca.revocation_list(revoked), 0o644),
            "server.pem": (server_cert, 0o644),
            "server.key": (server_key, 0o600),
            "passwd": (_render_passwd(services, usable), 0o600),
            "acl": (acl, 0o600),
            "mosquitto.conf": (config, 0o644),
        }
        if require_certificate:
            cert, key = issue_service_cert(ca, ingest_username)
            files["ingest.crt"] = (cert, 0o644)
            files["ingest.key"] = (key, 0o600)  # for the ingest worker, not for Mosquitto
            if chirpstack_password:
                cert, key = issue_service_cert(ca, CHIRPSTACK_USERNAME)
                files["chirpstack.crt"] = (cert, 0o644)
                files["chirpstack.key"] = (key, 0o600)
        for name, (data, mode) in files.items():
            _write(folder / name, data, mode)
            if name in ("server.key", "passwd", "acl"):
                _secret_for_broker(folder / name, owner)
        if validate:
            _validate(
                folder,
                layout,
                owner,
                ingest_username=ingest_username,
                ingest_password=ingest_password,
            )
        out.mkdir(exist_ok=True)
        if owner is not None:
            # Files written here later (syncs, by root or by a user given the folder) get
            # the broker's group, so Mosquitto can read them; it cannot write here.
            os.chown(out, -1, owner.gid)
            os.chmod(out, 0o2755)  # noqa: S103 - only its secrets are private
        _broker_folder(layout.persistence, owner, 0o700)
        _broker_folder(layout.run, owner, 0o755)
        # mosquitto.conf last: a broker started meanwhile finds the files it names.
        for name in files:
            os.replace(folder / name, out / name)
        # Service certificates of an earlier --mtls configuration would mislead (README step 5).
        for name in ("ingest.crt", "ingest.key", "chirpstack.crt", "chirpstack.key"):
            if name not in files:
                (out / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    log.info(
        "broker configuration written",
        folder=str(out),
        devices=len(usable),
        skipped=len(skipped),
    )
    return out / "mosquitto.conf"


@dataclass(frozen=True)
class SyncResult:
    """What ``sync_accounts`` did: devices written, those skipped, and the reload."""

    devices: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    reload: str = "reloaded"  # or why Mosquitto was not reloaded, and how to do it

    @property
    def reloaded(self) -> bool:
        return self.reload == "reloaded"


@contextlib.contextmanager
def sync_lock(out: Path) -> Iterator[None]:
    """Hold while reading the accounts and syncing them: one sync at a time per broker folder,
    across processes (API workers, CLI), so a slower sync never writes older accounts over a
    newer one."""
    fd = os.open(out / ".sync.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_state(out: Path) -> dict[str, Any]:
    """What ``write_config`` left for later syncs; ValueError if ``out`` is not its folder."""
    try:
        state = json.loads((out / STATE_FILE).read_text())
        services = out / SERVICES_FILE
        if not services.is_file() or not isinstance(state.get("ingest_username"), str):
            raise ValueError
        default = ingest_topics()
        return {
            "ingest_username": state["ingest_username"],
            "user": state.get("user"),
            "chirpstack": bool(state.get("chirpstack")),
            # Folders written before these were recorded: the pid file sat next to the config.
            "pid_file": Path(state.get("pid_file") or out / PID_FILE),
            "topics": IngestTopics(
                tuple(state.get("ingest_read") or default.read),
                tuple(state.get("ingest_write") or default.write),
            ),
        }
    except (OSError, ValueError):
        raise ValueError(
            f"{out} is not a folder written by `telemetra broker-config` (no {STATE_FILE} "
            f"or {SERVICES_FILE}); run `telemetra broker-config --out {out}` first"
        ) from None


def _check_starts(folder: Path, out: Path, user: str | None) -> None:
    """Start Mosquitto on ``folder``'s passwd, acl and crl.pem (if any) with ``out``'s
    certificates (free ports, 127.0.0.1): it exits on a file it cannot read. ValueError with
    Mosquitto's message when it does."""
    ports = [_free_port()]
    lines = [
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {folder / 'passwd'}",
        f"acl_file {folder / 'acl'}",
        f"listener {ports[0]} 127.0.0.1",
    ]
    if (folder / "crl.pem").exists():
        ports.append(_free_port())
        lines += [
            f"listener {ports[1]} 127.0.0.1",
            f"cafile {out / 'ca.pem'}",
            f"certfile {out / 'server.pem'}",
            f"keyfile {out / 'server.key'}",
            "require_certificate true",
            f"crlfile {folder / 'crl.pem'}",
        ]
    if user is not None:
        lines.append(f"user {_value('user', user)}")
    with _throwaway(folder, "\n".join(lines) + "\n", ports, "the new files"):
        pass


def _reload(pid_file: Path) -> str:
    """SIGHUP to the Mosquitto named by ``pid_file``: "reloaded", or why not and what to do."""
    by_hand = "reload it by hand: kill -HUP <pid of mosquitto>"
    try:
        pid = int(pid_file.read_text().strip())
    except FileNotFoundError:
        return f"Mosquitto is not running from this folder (no {pid_file}); {by_hand}"
    except (OSError, ValueError) as error:
        return f"cannot read {pid_file} ({error}); {by_hand}"
    # A stale pid file may name an unrelated process by now: only ever signal a mosquitto.
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        name = None
    if name is not None and name != "mosquitto":
        return f"process {pid} from {pid_file} is {name!r}, not mosquitto; {by_hand}"
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return f"no process {pid} (stale {pid_file}); {by_hand}"
    except PermissionError:
        return f"not allowed to signal Mosquitto (pid {pid}); {by_hand}"
    if not _signal_taken(pid, signal.SIGHUP):
        return f"Mosquitto (pid {pid}) was sent SIGHUP but has not taken it yet"
    return "reloaded"


def _signal_taken(pid: int, signum: int, timeout_s: float = 2.0) -> bool:
    """Wait until ``pid`` no longer has ``signum`` pending (Linux /proc).

    Mosquitto is single-threaded: its handler only sets a flag and interrupts the wait for
    network events, and the loop reloads before it takes the next event. So once the signal
    is no longer pending, every connection made afterwards meets the new files.
    """
    bit = 1 << (signum - 1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return True  # no /proc (not Linux): nothing to wait on
        pending = 0
        for line in status.splitlines():
            if line.startswith(("SigPnd:", "ShdPnd:")):
                pending |= int(line.split()[1], 16)
        if not pending & bit:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)


def sync_accounts(
    out: Path,
    accounts: Iterable[tuple[str, str]],
    *,
    blocked: Iterable[str] = (),
    crl: bytes | None = None,
    validate: bool = True,
    reload: bool = True,
) -> SyncResult:
    """Rewrite ``out``'s passwd and acl for ``accounts`` and ``blocked`` (see
    ``broker_state``), and its crl.pem when a ``crl`` is given (``DeviceCA.revocation_list``),
    then reload.

    ``out`` is a folder written by ``write_config``; its certificates, listeners and ingest
    login stay as they are. The new files are checked by starting Mosquitto on them (unless
    ``validate`` is false) before they replace the live ones, each atomically; a file
    Mosquitto refuses raises ValueError and leaves ``out`` untouched. Then Mosquitto, found by
    the pid file its configuration writes, gets SIGHUP (unless ``reload`` is false). Where
    several processes sync one folder, read the accounts and call this under ``sync_lock``.
    """
    out = out.absolute()
    state = read_state(out)
    ingest_username = str(state["ingest_username"])
    user = state["user"]
    usable, skipped = split_accounts(accounts, ingest_username)
    owner = _broker_owner(user)
    # Not root: the folder's set-group-id (write_config as root) gives new files the broker's
    # group; they need to be readable by it.
    group_readable = owner is not None or bool(out.stat().st_mode & stat.S_ISGID)
    folder = Path(tempfile.mkdtemp(prefix=".sync.", dir=out))
    try:
        if owner is not None:
            os.chown(folder, -1, owner.gid)
        os.chmod(folder, 0o750 if group_readable else 0o700)  # Mosquitto reads inside
        services = (out / SERVICES_FILE).read_text()
        files: dict[str, str | bytes] = {
            "passwd": _render_passwd(services, usable),
            "acl": _render_acl(ingest_username, blocked, state["chirpstack"], state["topics"]),
        }
        if crl is not None:
            files["crl.pem"] = crl
        for name, data in files.items():
            _write(folder / name, data, 0o644 if name == "crl.pem" else 0o600)
            if name != "crl.pem":
                if owner is not None:
                    os.chown(folder / name, -1, owner.gid)
                if group_readable:
                    os.chmod(folder / name, 0o640)
        if validate:
            _check_starts(folder, out, user)
        for name in files:
            os.replace(folder / name, out / name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = SyncResult(
        devices=len(usable),
        skipped=skipped,
        reload=_reload(state["pid_file"]) if reload else "not reloaded (reload=False)",
    )
    log.info(
        "broker accounts synced",
        folder=str(out),
        devices=result.devices,
        skipped=len(skipped),
        reload=result.reload,
    )
    return result


def sync_state(out: Path, state: BrokerState, ca_folder: Path) -> SyncResult:
    """``sync_accounts`` for ``state``, with its revocation list signed by the installation CA
    in ``ca_folder`` (none when there is no CA there yet)."""
    ca = DeviceCA.load_existing(ca_folder)
    crl = ca.revocation_list(state.revoked) if ca is not None else None
    return sync_accounts(out, state.accounts, blocked=state.blocked, crl=crl)
