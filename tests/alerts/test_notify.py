"""Notification delivery against real receivers: an HTTP(S) server on 127.0.0.1, an SMTP server
(aiosmtpd, with STARTTLS), a private Mosquitto; outbox rows made by the real store on SQLite and
PostgreSQL. Webhook headers and signature, Slack text, retries with backoff, permanent failures,
redirects, SSRF refusals, email, MQTT, and a deliverer killed mid-delivery."""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import hmac
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from prometheus_client import REGISTRY
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.alerts import store
from telemetra.alerts.notify import deliver_due, lease_seconds
from telemetra.alerts.ssrf import check_url, parse_allow
from telemetra.alerts.store import Notification
from telemetra.certs import DeviceCA, issue_server_cert
from telemetra.config import Settings
from telemetra.store.catalog import create_tenant, now_us
from telemetra.store.database import open_database
from telemetra.store.schema import notification_outbox
from telemetra.store.tenancy import ALL_TENANTS, NO_TENANT, platform_wide

from broker_fixtures import Client
from conftest import PG_SERVER, Broker, _admin, app_role_url, free_port, missing

S = 1_000_000  # µs
MESSAGE = "temperature -12.5 > -15 for 2m"
SUBJECT = f"[critical] freezer too warm: cold-room-3 {MESSAGE} (fired)"


def no_backoff(_attempt: int) -> float:
    return 0.0


def settings(**values: Any) -> Settings:
    """Settings for a test: nothing read from the environment's .env file."""
    values.setdefault("notify_allow", "127.0.0.1")
    values.setdefault("notify_timeout", 2.0)
    return Settings(_env_file=None, **values)


# --- databases: fresh ones for this module, so no other test's outbox rows are due ------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def notify_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('notify') / 'telemetra.db'}"
        await (await open_database(url)).dispose()
        yield url
        return
    name = f"telemetra_notify_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        await _admin(f'CREATE DATABASE "{name}"')
    except (TimeoutError, OSError) as exc:
        missing(f"PostgreSQL at {PG_SERVER} ({exc})")
    url = f"{PG_SERVER}/{name}"
    await (await open_database(url, migrate_schema=True)).dispose()
    yield url
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def engine(notify_db: str) -> AsyncIterator[AsyncEngine]:
    """Opened as the CLI and the worker open theirs: platform-wide."""
    eng = await open_database(notify_db, migrate_schema=False, tenant_scope=ALL_TENANTS)
    async with eng.begin() as conn:  # nothing left due from an earlier test
        await conn.execute(delete(notification_outbox))
    yield eng
    await eng.dispose()


async def fire(
    engine: AsyncEngine, *channels: dict[str, Any], name: str = "freezer too warm"
) -> list[Notification]:
    """A new tenant with a rule on these channels, and its alert fired: the outbox rows."""
    definition = {
        "name": name, "kind": "threshold", "metric": "temperature",
        "condition": {"op": ">", "value": -15}, "for": "2m", "severity": "critical",
        "scope": {"devices": ["cold-room-3"]}, "channels": list(channels),
    }  # fmt: skip
    with platform_wide():
        async with engine.begin() as conn:
            tenant = await create_tenant(conn, f"notify-{uuid.uuid4().hex[:8]}")
            rule = await store.create_rule(conn, tenant, definition)
            alert, opened = await store.open_alert(
                conn, rule, "cold-room-3", "temperature", value=-12.5, message=MESSAGE,
                started_at=now_us() - 120 * S,
            )  # fmt: skip
            assert opened
        return await rows(engine, alert.id)


async def rows(engine: AsyncEngine, alert_id: int) -> list[Notification]:
    with platform_wide():
        async with engine.connect() as conn:
            return (await store.notifications_of(conn, [alert_id]))[alert_id]


async def row(engine: AsyncEngine, notification: Notification) -> Notification:
    return next(n for n in await rows(engine, notification.alert_id) if n.id == notification.id)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- an HTTP receiver -------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0


class Receiver:
    """An HTTP(S) server on a free port that records requests and answers from a script
    (200 when the script is empty); ``hold_first`` stalls the first request until released."""

    def __init__(
        self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None, hold_first: bool = False
    ) -> None:
        self.seen: list[Seen] = []
        self.replies: list[Reply] = []
        self.hold = threading.Event() if hold_first else None
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                receiver.handle(self)

            do_GET = do_POST

            def log_message(self, *_: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

            def handle_error(self, *_: Any) -> None:
                pass  # a client that went away (killed, timed out)

        self.server = Server((host, 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        name = f"[{host}]" if ":" in host else host
        self.base = f"{'https' if tls else 'http'}://{name}:{self.port}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        with self._lock:
            self.seen.append(Seen(h.command, h.path, {k.lower(): v for k, v in h.headers.items()},
                                  body))  # fmt: skip
            first = len(self.seen) == 1
            reply = self.replies.pop(0) if self.replies else Reply()
        if first and self.hold is not None:
            self.hold.wait(30)
        time.sleep(reply.delay)
        h.send_response(reply.status)
        for key, value in reply.headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(reply.body)))
        h.end_headers()
        h.wfile.write(reply.body)

    def close(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


def webhook(receiver: Receiver, path: str = "/hook", secret: str | None = None) -> dict[str, Any]:
    channel: dict[str, Any] = {"kind": "webhook", "url": receiver.base + path}
    if secret is not None:
        channel["secret"] = secret
    return channel


# --- webhook and Slack ------------------------------------------------------------------------


async def test_a_webhook_is_posted_signed_with_an_idempotency_key(
    engine: AsyncEngine, receiver: Receiver
) -> None:
    secret = "a long shared secret"
    (pending,) = await fire(engine, webhook(receiver, "/hook?team=ops", secret))
    delivered_before = sample("telemetra_notifications_total", channel="webhook",
                              result="delivered")  # fmt: skip

    counts = await deliver_due(engine, settings())

    assert counts == {"delivered": 1}
    (seen,) = receiver.seen
    assert (seen.method, seen.path) == ("POST", "/hook?team=ops")
    h = seen.headers
    assert h["content-type"] == "application/json"
    assert h["host"] == f"127.0.0.1:{receiver.port}"
    assert h["x-telemetra-event"] == "fired"
    assert h["idempotency-key"] == f"telemetra-{pending.id}"
    assert abs(int(h["x-telemetra-timestamp"]) - time.time()) < 30
    # The receiver's check, as docs/alerts.md shows it:
    expected = hmac.new(
        secret.encode(), h["x-telemetra-timestamp"].encode() + b"." + seen.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(h["x-telemetra-signature"], "sha256=" + expected)
    body = json.loads(seen.body)
    assert body == pending.payload
    assert (body["event"], body["rule"], body["device"], body["state"]) == (
        "fired", "freezer too warm", "cold-room-3", "firing")  # fmt: skip

    done = await row(engine, pending)
    assert (done.status, done.attempts, done.last_error) == ("delivered", 1, None)
    assert done.delivered_at is not None and done.next_attempt_at is None
    assert sample("telemetra_notifications_total", channel="webhook",
                  result="delivered") == delivered_before + 1  # fmt: skip
    assert await deliver_due(engine, settings()) == {}  # nothing due any more
    assert len(receiver.seen) == 1


async def test_without_a_secret_there_is_no_signature(
    engine: AsyncEngine, receiver: Receiver
) -> None:
    await fire(engine, webhook(receiver))
    assert await deliver_due(engine, settings()) == {"delivered": 1}
    assert "x-telemetra-signature" not in receiver.seen[0].headers


async def test_slack_gets_one_line_of_text(engine: AsyncEngine, receiver: Receiver) -> None:
    await fire(engine, {"kind": "slack", "url": receiver.base + "/services/T0/B0/X"})
    assert await deliver_due(engine, settings()) == {"delivered": 1}
    (seen,) = receiver.seen
    assert seen.path == "/services/T0/B0/X"
    assert json.loads(seen.body) == {"text": SUBJECT}


async def test_a_500_is_retried_after_the_backoff_with_the_same_key(
    engine: AsyncEngine, receiver: Receiver
) -> None:
    receiver.replies = [Reply(500, body=b"database down")]
    (pending,) = await fire(engine, webhook(receiver))
    t = now_us() + S

    assert await deliver_due(engine, settings(), now=t, backoff=lambda n: 2.0 * n) == {"retry": 1}
    again = await row(engine, pending)
    assert (again.status, again.attempts, again.next_attempt_at) == ("pending", 1, t + 2 * S)
    assert again.last_error == "127.0.0.1 answered 500 Internal Server Error: database down"

    assert await deliver_due(engine, settings(), now=t + S) == {}  # not due yet
    assert await deliver_due(engine, settings(), now=t + 2 * S) == {"delivered": 1}
    assert [s.headers["idempotency-key"] for s in receiver.seen] == [f"telemetra-{pending.id}"] * 2
    assert receiver.seen[0].body == receiver.seen[1].body
    done = await row(engine, pending)
    assert (done.status, done.attempts, done.last_error) == ("delivered", 2, None)


async def test_retry_after_of_a_429_is_honoured(engine: AsyncEngine, receiver: Receiver) -> None:
    receiver.replies = [Reply(429, {"Retry-After": "120"})]
    (pending,) = await fire(engine, webhook(receiver))
    t = now_us()
    assert await deliver_due(engine, settings(), now=t, backoff=no_backoff) == {"retry": 1}
    assert (await row(engine, pending)).next_attempt_at == t + 120 * S


async def test_a_400_fails_for_good(engine: AsyncEngine, receiver: Receiver) -> None:
    receiver.replies = [Reply(400, body=b'{"error": "unknown field"}')]
    (pending,) = await fire(engine, webhook(receiver))
    before = sample("telemetra_notification_failures_total", channel="webhook", reason="permanent")
    assert await deliver_due(engine, settings(), backoff=no_backoff) == {"failed": 1}
    failed = await row(engine, pending)
    assert (failed.status, failed.attempts, failed.next_attempt_at) == ("failed", 1, None)
    assert failed.last_error == '127.0.0.1 answered 400 Bad Request: {"error": "unknown field"}'
    after = sample("telemetra_notification_failures_total", channel="webhook", reason="permanent")
    assert after == before + 1
    assert await deliver_due(engine, settings(), now=now_us() + 3600 * S) == {}


async def test_it_gives_up_after_the_last_attempt(engine: AsyncEngine, receiver: Receiver) -> None:
    receiver.replies = [Reply(503, body=b""), Reply(502, body=b"")]
    (pending,) = await fire(engine, webhook(receiver))
    two = settings(notify_max_attempts=2)
    assert await deliver_due(engine, two, backoff=no_backoff) == {"retry": 1}
    assert await deliver_due(engine, two, backoff=no_backoff) == {"failed": 1}
    failed = await row(engine, pending)
    assert failed.status == "failed" and failed.attempts == 2
    assert failed.last_error == "gave up after 2 attempts: 127.0.0.1 answered 502 Bad Gateway"


async def test_timeouts_and_closed_ports_are_retried(
    engine: AsyncEngine, receiver: Receiver
) -> None:
    receiver.replies = [Reply(delay=1.0)]
    slow, closed = await fire(
        engine, webhook(receiver), {"kind": "webhook", "url": f"http://127.0.0.1:{free_port()}/"}
    )
    quick = settings(notify_timeout=0.3)
    assert await deliver_due(engine, quick, backoff=no_backoff) == {"retry": 2}
    assert (await row(engine, slow)).last_error == (
        f"no answer from {receiver.base}/hook within 0.3 s"
    )
    error = (await row(engine, closed)).last_error or ""
    assert error.startswith(f"{closed.target['url']}: ConnectError")


async def test_redirects_are_followed_and_each_location_checked(
    engine: AsyncEngine, receiver: Receiver
) -> None:
    receiver.replies = [Reply(307, {"Location": "/moved"}), Reply(308, {"Location": "/final"})]
    await fire(engine, webhook(receiver))
    assert await deliver_due(engine, settings()) == {"delivered": 1}
    assert [(s.method, s.path) for s in receiver.seen] == [
        ("POST", "/hook"), ("POST", "/moved"), ("POST", "/final")]  # fmt: skip
    assert receiver.seen[0].body == receiver.seen[2].body

    receiver.seen.clear()
    metadata = "http://169.254.169.254/latest/meta-data/"
    receiver.replies = [Reply(302, {"Location": metadata})]
    (refused,) = await fire(engine, webhook(receiver), name="other")
    assert await deliver_due(engine, settings()) == {"failed": 1}
    assert len(receiver.seen) == 1
    error = (await row(engine, refused)).last_error or ""
    assert error.startswith(f"refused to send to {metadata}: 169.254.169.254 is a link-local")
    assert "TELEMETRA_NOTIFY_ALLOW" in error


async def test_at_most_three_redirects(engine: AsyncEngine, receiver: Receiver) -> None:
    receiver.replies = [Reply(307, {"Location": f"/r{i}"}) for i in range(4)]
    (pending,) = await fire(engine, webhook(receiver))
    assert await deliver_due(engine, settings()) == {"failed": 1}
    assert len(receiver.seen) == 4
    assert (await row(engine, pending)).last_error == (
        f"more than 3 redirects, the last to {receiver.base}/r3"
    )


async def test_targets_that_are_not_public_are_refused_unless_allowed(
    engine: AsyncEngine, receiver: Receiver
) -> None:
    hook, slack = await fire(
        engine, webhook(receiver), {"kind": "slack", "url": f"http://localhost:{receiver.port}/s"}
    )
    before = sample("telemetra_notification_failures_total", channel="slack", reason="refused")
    assert await deliver_due(engine, settings(notify_allow="")) == {"failed": 2}
    assert receiver.seen == []
    assert (await row(engine, hook)).last_error == (
        f"refused to send to {receiver.base}/hook: 127.0.0.1 is a loopback address; add it (or "
        "the host, or its network) to TELEMETRA_NOTIFY_ALLOW to allow it"
    )
    assert "(localhost resolves to it) is a loopback address" in (
        (await row(engine, slack)).last_error or ""
    )
    assert sample("telemetra_notification_failures_total", channel="slack",
                  reason="refused") == before + 1  # fmt: skip

    await fire(engine, webhook(receiver), name="allowed by network")
    assert await deliver_due(engine, settings(notify_allow="127.0.0.0/8")) == {"delivered": 1}


async def test_https_connects_to_the_checked_address_and_verifies_the_host_name(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    # The URL names a host; the connection goes to the address checked, and TLS checks the
    # certificate against the host name (sent as SNI), not against the address.
    target = await check_url("http://localhost:1/", parse_allow("localhost"))
    ca = DeviceCA.load_or_create(tmp_path / "ca")
    cert, key = issue_server_cert(ca, ["localhost"])
    (tmp_path / "server.pem").write_bytes(cert + key)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(tmp_path / "server.pem")
    secure = Receiver(str(target.address), tls=server_tls)
    trust = ssl.create_default_context(cafile=str(tmp_path / "ca" / "ca.pem"))
    try:
        url = f"https://localhost:{secure.port}/hook"
        (pending,) = await fire(engine, {"kind": "webhook", "url": url})
        allow = settings(notify_allow="localhost")
        assert await deliver_due(engine, allow, verify=trust) == {"delivered": 1}
        assert secure.seen[0].headers["host"] == f"localhost:{secure.port}"

        # A certificate for another name is not accepted: retried, saying why.
        (other,) = await fire(engine, {"kind": "webhook", "url": url}, name="other")
        cert, key = issue_server_cert(ca, ["elsewhere.example"])
        (tmp_path / "server.pem").write_bytes(cert + key)
        server_tls.load_cert_chain(tmp_path / "server.pem")
        assert await deliver_due(engine, allow, verify=trust, backoff=no_backoff) == {"retry": 1}
        assert "CERTIFICATE_VERIFY_FAILED" in ((await row(engine, other)).last_error or "")
        assert len(secure.seen) == 1
    finally:
        secure.close()
    assert pending.channel == "webhook"


async def test_an_invalid_stored_channel_fails_for_good(engine: AsyncEngine) -> None:
    (pending,) = await fire(engine, {"kind": "mqtt", "topic": "alerts/x"})
    async with engine.begin() as conn:
        await conn.execute(
            notification_outbox.update()
            .where(notification_outbox.c.id == pending.id)
            .values(channel="pager", target={"kind": "pager"})
        )
    assert await deliver_due(engine, settings()) == {"failed": 1}
    assert (await row(engine, pending)).last_error == "unknown channel kind 'pager'"


# --- email ------------------------------------------------------------------------------------


class Mailbox:
    """aiosmtpd handler: keeps what it receives; refuses recipients at ``refuse``."""

    def __init__(self) -> None:
        self.mails: list[Envelope] = []
        self.logins: list[str] = []

    async def handle_RCPT(
        self, _server: Any, session: Session, envelope: Envelope, address: str, _options: Any
    ) -> str:
        if address.endswith("@refuse.example"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, _server: Any, _session: Session, envelope: Envelope) -> str:
        self.mails.append(envelope)
        return "250 OK"

    def authenticate(
        self, _server: Any, _session: Session, _envelope: Envelope, _mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.password == b"mail secret"
        if ok:
            self.logins.append(data.login.decode())
        return AuthResult(success=ok)


def start_smtp(mailbox: Mailbox, tls: ssl.SSLContext | None = None) -> Controller:
    extra: dict[str, Any] = {}
    if tls is not None:
        extra = {
            "tls_context": tls,
            "require_starttls": True,
            "authenticator": mailbox.authenticate,
        }
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port(), **extra)
    controller.start()
    return controller


async def test_email_without_an_smtp_host_fails_saying_what_to_set(engine: AsyncEngine) -> None:
    (pending,) = await fire(engine, {"kind": "email", "to": ["ops@example.org"]})
    assert await deliver_due(engine, settings()) == {"failed": 1}
    assert (await row(engine, pending)).last_error == (
        "email needs TELEMETRA_SMTP_HOST (the SMTP server)"
    )


async def test_email_is_sent_over_smtp(engine: AsyncEngine) -> None:
    mailbox = Mailbox()
    smtp = start_smtp(mailbox)
    try:
        (pending,) = await fire(engine, {"kind": "email", "to": ["ops@example.org", "b@x.org"]})
        mail = settings(smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_security="none",
                        smtp_from="alerts@telemetra.example")  # fmt: skip
        assert await deliver_due(engine, mail) == {"delivered": 1}
    finally:
        smtp.stop()
    (got,) = mailbox.mails
    assert got.mail_from == "alerts@telemetra.example"
    assert got.rcpt_tos == ["ops@example.org", "b@x.org"]
    assert isinstance(got.content, bytes)
    message = email.message_from_bytes(got.content, policy=email.policy.default)
    assert message["Subject"] == SUBJECT
    assert message["X-Telemetra-Idempotency-Key"] == f"telemetra-{pending.id}"
    assert message["Message-ID"] == f"<telemetra-{pending.id}@telemetra.example>"
    assert message["To"] == "ops@example.org, b@x.org"
    body = message.get_body()
    assert body is not None
    text = body.get_content().replace("\r\n", "\n")
    assert text.startswith(MESSAGE + "\n")
    assert "device:    cold-room-3\n" in text


async def test_email_with_starttls_and_a_login(engine: AsyncEngine, tmp_path: Path) -> None:
    ca = DeviceCA.load_or_create(tmp_path / "ca")
    cert, key = issue_server_cert(ca, ["127.0.0.1"])
    (tmp_path / "smtp.pem").write_bytes(cert + key)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(tmp_path / "smtp.pem")
    mailbox = Mailbox()
    smtp = start_smtp(mailbox, server_tls)
    try:
        (pending,) = await fire(engine, {"kind": "email", "to": ["ops@example.org"]})
        mail = settings(
            smtp_host="127.0.0.1",
            smtp_port=smtp.port,
            smtp_username="telemetra",
            smtp_password="mail secret",
            smtp_ca_file=tmp_path / "ca" / "ca.pem",
        )
        assert await deliver_due(engine, mail) == {"delivered": 1}
        assert mailbox.logins == ["telemetra"]
        assert len(mailbox.mails) == 1

        # An untrusted certificate: retried later, saying why.
        (again,) = await fire(engine, {"kind": "email", "to": ["ops@example.org"]}, name="2")
        untrusting = settings(smtp_host="127.0.0.1", smtp_port=smtp.port)
        assert await deliver_due(engine, untrusting, backoff=lambda n: 60) == {"retry": 1}
        assert "CERTIFICATE_VERIFY_FAILED" in ((await row(engine, again)).last_error or "")
        # A refused recipient: failed for good.
        (refused,) = await fire(engine, {"kind": "email", "to": ["x@refuse.example"]}, name="3")
        assert await deliver_due(engine, mail, backoff=no_backoff) == {"failed": 1}
        assert "550" in ((await row(engine, refused)).last_error or "")
    finally:
        smtp.stop()
    assert pending.channel == "email"


# --- MQTT -------------------------------------------------------------------------------------


async def test_mqtt_publishes_the_payload(
    engine: AsyncEngine, mosquitto: Broker, clients: list[Any]
) -> None:
    listener = Client(mosquitto.port)
    clients.append(listener)
    listener.subscribe("alerts/#")
    first, second = await fire(
        engine, {"kind": "mqtt", "topic": "alerts/cold-room"}, {"kind": "mqtt", "topic": "alerts/b"}
    )
    assert await deliver_due(engine, settings(mqtt_url=mosquitto.url)) == {"delivered": 2}
    got: dict[str, bytes] = {}
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        got.update(listener.receive(0.05))
    assert json.loads(got["alerts/cold-room"]) == first.payload
    assert json.loads(got["alerts/b"]) == second.payload
    assert (await row(engine, first)).status == "delivered"


async def test_mqtt_without_a_broker_is_retried(engine: AsyncEngine) -> None:
    (pending,) = await fire(engine, {"kind": "mqtt", "topic": "alerts/cold-room"})
    nowhere = settings(mqtt_url=f"mqtt://127.0.0.1:{free_port()}")
    assert await deliver_due(engine, nowhere, backoff=no_backoff) == {"retry": 1}
    error = (await row(engine, pending)).last_error or ""
    assert error.startswith("cannot reach the broker at mqtt://127.0.0.1:")


# --- the database's tenant scope, and a crash ---------------------------------------------------


async def test_an_engine_scoped_to_no_tenant_still_delivers_every_tenants(
    engine: AsyncEngine, notify_db: str, receiver: Receiver
) -> None:
    # On PostgreSQL as the ordinary role serve uses, with Row-Level Security beneath it.
    pg = notify_db.startswith("postgresql")
    (pending,) = await fire(engine, webhook(receiver))
    url = await app_role_url(notify_db) if pg else notify_db
    app = await open_database(url, tenant_scope=NO_TENANT)
    try:
        assert await deliver_due(app, settings()) == {"delivered": 1}
    finally:
        await app.dispose()
    assert (await row(engine, pending)).status == "delivered"


DELIVERER = """
import asyncio, sys
from telemetra.alerts.notify import deliver_due
from telemetra.config import Settings
from telemetra.store.database import open_database
from telemetra.store.tenancy import ALL_TENANTS

async def main():
    engine = await open_database(sys.argv[1], tenant_scope=ALL_TENANTS)
    settings = Settings(_env_file=None, notify_allow="127.0.0.1", notify_timeout=5)
    while True:
        await deliver_due(engine, settings)
        await asyncio.sleep(0.05)

asyncio.run(main())
"""


async def test_a_deliverer_killed_mid_delivery_leaves_it_pending_and_it_is_sent_again(
    engine: AsyncEngine, notify_db: str, tmp_path: Path
) -> None:
    stalling = Receiver(hold_first=True)
    try:
        (pending,) = await fire(engine, webhook(stalling))
        script = tmp_path / "deliverer.py"
        script.write_text(textwrap.dedent(DELIVERER))
        log = (tmp_path / "deliverer.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, str(script), notify_db], cwd=tmp_path, stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 20
            while not stalling.seen and time.monotonic() < deadline and process.poll() is None:
                await asyncio.sleep(0.05)
            assert stalling.seen, (tmp_path / "deliverer.log").read_text()
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        killed = await row(engine, pending)
        assert (killed.status, killed.attempts) == ("pending", 0)

        same = settings(notify_timeout=5)
        assert await deliver_due(engine, same) == {}  # leased by the dead deliverer for now
        later = now_us() + int((lease_seconds(same) + 1) * S)
        assert await deliver_due(engine, same, now=later) == {"delivered": 1}
    finally:
        stalling.close()
    first, second = stalling.seen
    key = f"telemetra-{pending.id}"
    assert first.headers["idempotency-key"] == key
    assert second.headers["idempotency-key"] == key
    assert first.body == second.body
    done = await row(engine, pending)
    assert (done.status, done.attempts) == ("delivered", 1)
    async with engine.connect() as conn:
        statuses = await conn.scalars(select(notification_outbox.c.status))
        assert list(statuses) == ["delivered"]
