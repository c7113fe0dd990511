"""Delivering alert notifications from the outbox: webhook, Slack, email and MQTT.

``deliver_due`` takes the due rows of ``notification_outbox``, leases them (so a second worker
leaves them alone), delivers them concurrently and records each attempt in its own short
transaction: delivered, pending again after a backoff (a transient error), or failed for good (a
permanent error, or ``TELEMETRA_NOTIFY_MAX_ATTEMPTS`` used up). The status is written only after
the attempt: a process killed while delivering leaves the row pending, and it is delivered again
once its lease ends (at least once). Receivers tell a repeat by ``Idempotency-Key``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import smtplib
import socket
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any
from urllib.parse import urljoin

import httpx
import orjson
import structlog
from pydantic import ValidationError
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra import metrics
from telemetra.alerts.rules import EmailChannel, MqttChannel, SlackChannel, WebhookChannel
from telemetra.alerts.ssrf import AllowList, Refused, check_url, parse_allow
from telemetra.alerts.store import PENDING, Notification, due_notifications, record_attempt
from telemetra.config import Settings
from telemetra.store.catalog import now_us
from telemetra.store.schema import notification_outbox
from telemetra.store.tenancy import platform_wide

log = structlog.get_logger("telemetra.notify")

CONCURRENCY = 8  # deliveries in flight at once
MAX_REDIRECTS = 3
BACKOFF_FIRST_S = 5.0
BACKOFF_FACTOR = 3.0
BACKOFF_MAX_S = 900.0
_RESPONSE_SNIPPET = 300  # characters of a refusing answer kept in last_error
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_STATUS = frozenset({408, 429})
US = 1_000_000


class DeliveryError(Exception):
    """One attempt failed: ``permanent`` ones are not tried again; ``retry_after`` (seconds) is
    the receiver's wish for the next attempt, if it said one."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        refused: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent or refused
        self.retry_after = retry_after
        self.refused = refused  # the target is not a public address


def backoff_delay(attempt: int) -> float:
    """Seconds before the next try after failed attempt ``attempt`` (1, 2, …): 5 s, 15 s, 45 s,
    … capped at 15 minutes, each ±20 % at random so that retries do not come in a wave."""
    base = min(BACKOFF_FIRST_S * BACKOFF_FACTOR ** max(attempt - 1, 0), BACKOFF_MAX_S)
    return base * random.uniform(0.8, 1.2)


def lease_seconds(settings: Settings) -> float:
    """How long a notification being delivered is left alone by other deliverers: longer than
    any attempt may take (each request and redirect is bounded by the timeout)."""
    return settings.notify_timeout * (MAX_REDIRECTS + 2) + 30


def idempotency_key(notification: Notification) -> str:
    """The same for every attempt of one outbox row."""
    return f"telemetra-{notification.id}"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of "<timestamp>." + body>`` (X-Telemetra-Signature)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def summary(payload: dict[str, Any]) -> str:
    """One line: ``[critical] freezer too warm: cold-room-3 temperature -12.5 > -15 for 2m
    (fired)`` (the metric is named when the message does not name it)."""
    message = str(payload.get("message") or "")
    metric = payload.get("metric")
    what = message if not metric or str(metric) in message else f"{metric}: {message}"
    return (
        f"[{payload.get('severity')}] {payload.get('rule')}: {payload.get('device')} {what} "
        f"({payload.get('event')})"
    )


# --- HTTP (webhook, Slack) --------------------------------------------------------------------


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None


async def _snippet(response: httpx.Response) -> str:
    """The start of an answer's body, for last_error (never all of a large one)."""
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= _RESPONSE_SNIPPET * 4:
            break
    text = data.decode("utf-8", "replace").strip().replace("\n", " ")
    return f": {text[:_RESPONSE_SNIPPET]}" if text else ""


async def post(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    allow: AllowList,
) -> None:
    """POST ``body`` to ``url``, following at most 3 redirects by hand; every URL is checked
    (``ssrf.check_url``) and the request goes to the address checked. DeliveryError unless 2xx.

    The connection is pinned to the checked address: the URL's host is replaced by it, the
    Host header names the host, and for https the TLS handshake sends the host as SNI and
    verifies the certificate against it.
    """
    method = "POST"
    content: bytes | None = body
    for _hop in range(MAX_REDIRECTS + 1):
        try:
            target = await check_url(url, allow)
        except Refused as refused:
            raise DeliveryError(str(refused), refused=True) from None
        except (socket.gaierror, UnicodeError) as error:
            raise DeliveryError(f"cannot resolve the host of {url}: {error}") from None
        sent = {**headers, "Host": target.host_header}
        if content is None:
            sent.pop("Content-Type", None)
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        request = client.build_request(
            method, target.pinned_url, content=content, headers=sent, extensions=extensions
        )
        response = await client.send(request, stream=True)
        try:
            status = response.status_code
            if 200 <= status < 300:
                return
            location = response.headers.get("location")
            if status in _REDIRECTS and location:
                url = urljoin(url, location)
                if status in (301, 302, 303):  # as browsers do: the body is not sent on
                    method, content = "GET", None
                continue
            detail = await _snippet(response)
        finally:
            await response.aclose()
        what = f"{target.host} answered {status} {response.reason_phrase}{detail}"
        if status in _TRANSIENT_STATUS or status >= 500:
            raise DeliveryError(what, retry_after=_retry_after(response))
        raise DeliveryError(what, permanent=True)
    raise DeliveryError(f"more than {MAX_REDIRECTS} redirects, the last to {url}", permanent=True)


async def _http(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    allow: AllowList,
    seconds: float,
) -> None:
    """``post`` bounded by ``seconds`` in all (look-ups, redirects, slow answers included)."""
    try:
        async with asyncio.timeout(seconds):
            await post(client, url, body, headers, allow)
    except TimeoutError:
        raise DeliveryError(f"no answer from {url} within {seconds:g} s") from None
    except httpx.UnsupportedProtocol as error:
        raise DeliveryError(f"{url}: {error}", permanent=True) from None
    except httpx.TransportError as error:
        name = type(error).__name__
        raise DeliveryError(f"{url}: {name}: {error or 'connection failed'}") from None


def webhook_request(
    notification: Notification, channel: WebhookChannel, at: int
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a webhook delivery at unix time ``at``."""
    body = orjson.dumps(notification.payload)
    timestamp = str(at)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "telemetra-notify",
        "X-Telemetra-Event": notification.event,
        "Idempotency-Key": idempotency_key(notification),
        "X-Telemetra-Timestamp": timestamp,
    }
    if channel.secret:
        headers["X-Telemetra-Signature"] = signature(channel.secret, timestamp, body)
    return body, headers


# --- email ------------------------------------------------------------------------------------


def email_message(notification: Notification, channel: EmailChannel, sender: str) -> EmailMessage:
    """The mail of one notification: the summary as subject, the alert's fields as text."""
    p = notification.payload
    mail = EmailMessage()
    mail["Subject"] = summary(p)
    mail["From"] = sender
    mail["To"] = ", ".join(channel.to)
    mail["Date"] = formatdate(localtime=False)
    domain = sender.rpartition("@")[2] or "telemetra"
    mail["Message-ID"] = f"<{idempotency_key(notification)}@{domain}>"
    mail["X-Telemetra-Event"] = notification.event
    mail["X-Telemetra-Idempotency-Key"] = idempotency_key(notification)
    lines = [
        str(p.get("message") or ""),
        "",
        f"event:     {notification.event}",
        f"rule:      {p.get('rule')}",
        f"device:    {p.get('device')}",
        f"metric:    {p.get('metric') or '(the device)'}",
        f"severity:  {p.get('severity')}",
        f"state:     {p.get('state')}",
        f"value:     {'' if p.get('value') is None else p.get('value')}",
        f"started:   {p.get('started_at')}",
    ]
    if p.get("acknowledged_at"):
        lines.append(f"acknowledged: {p.get('acknowledged_at')} by {p.get('acknowledged_by')}")
    if p.get("resolved_at"):
        lines.append(f"resolved:  {p.get('resolved_at')} by {p.get('resolved_by')}")
    if p.get("note"):
        lines.append(f"note:      {p.get('note')}")
    lines += ["", f"alert {p.get('id')}, rule {p.get('rule_id')}"]
    mail.set_content("\n".join(lines) + "\n")
    return mail


def smtp_context(settings: Settings) -> ssl.SSLContext:
    """TLS for the SMTP server: its certificate checked against TELEMETRA_SMTP_CA_FILE (or
    the system's CAs) and the host name."""
    ca = str(settings.smtp_ca_file) if settings.smtp_ca_file else None
    return ssl.create_default_context(cafile=ca)


def _send_mail(settings: Settings, mail: EmailMessage, context: ssl.SSLContext) -> None:
    """Send one mail (blocking: run in a thread)."""
    host = settings.smtp_host or ""
    security = settings.smtp_security
    port = settings.smtp_port or {"tls": 465, "starttls": 587}.get(security, 25)
    timeout = settings.notify_timeout
    server: smtplib.SMTP
    if security == "tls":
        server = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
    else:
        server = smtplib.SMTP(host, port, timeout=timeout)
    with server:
        if security == "starttls":
            server.starttls(context=context)
        if settings.smtp_username:
            server.login(settings.smtp_username, settings.smtp_password or "")
        server.send_message(mail)


async def send_email(settings: Settings, notification: Notification, channel: EmailChannel) -> None:
    """Mail the notification through TELEMETRA_SMTP_HOST; DeliveryError on failure."""
    if not settings.smtp_host:
        raise DeliveryError("email needs TELEMETRA_SMTP_HOST (the SMTP server)", permanent=True)
    mail = email_message(notification, channel, settings.smtp_from)
    where = f"SMTP server {settings.smtp_host}"
    try:
        context = smtp_context(settings)
        await asyncio.wait_for(
            asyncio.to_thread(_send_mail, settings, mail, context), settings.notify_timeout * 2
        )
    except smtplib.SMTPRecipientsRefused as error:
        refused = ", ".join(f"{to} ({code} {text!r})" for to, (code, text) in
                            error.recipients.items())  # fmt: skip
        final = all(code >= 500 for code, _text in error.recipients.values())
        raise DeliveryError(
            f"{where} refused every recipient: {refused}", permanent=final
        ) from None
    except smtplib.SMTPNotSupportedError as error:
        raise DeliveryError(
            f"{where}: {error}; set TELEMETRA_SMTP_SECURITY to what it offers", permanent=True
        ) from None
    except smtplib.SMTPResponseException as error:
        text = error.smtp_error.decode("utf-8", "replace") if isinstance(
            error.smtp_error, bytes) else str(error.smtp_error)  # fmt: skip
        raise DeliveryError(
            f"{where} answered {error.smtp_code} {text}", permanent=error.smtp_code >= 500
        ) from None
    except TimeoutError:
        raise DeliveryError(f"{where}: no answer within {settings.notify_timeout:g} s") from None
    except (smtplib.SMTPException, OSError) as error:  # ssl.SSLError is an OSError
        raise DeliveryError(f"{where}: {type(error).__name__}: {error}") from None


# --- MQTT -------------------------------------------------------------------------------------


def _publish_all(
    settings: Settings, messages: Sequence[tuple[str, bytes, str]], timeout: float
) -> list[DeliveryError | None]:
    """Publish (topic, payload, idempotency key) at QoS 1 with one short-lived client on the
    broker of TELEMETRA_MQTT_URL (blocking: run in a thread). One result per message."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from telemetra.ingest.mqtt import broker_name, make_client

    client, address = make_client(settings, f"telemetra-notify-{uuid.uuid4().hex[:12]}")
    where = broker_name(address)
    answered = threading.Event()
    refusal: list[str] = []
    acks: dict[int, str | None] = {}
    acked = threading.Condition()

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            refusal.append(str(reason))
        answered.set()

    def on_publish(_c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with acked:
            acks[mid] = str(reason) if reason.is_failure else None
            acked.notify_all()

    client.on_connect = on_connect
    client.on_publish = on_publish
    deadline = time.monotonic() + timeout
    try:
        client.connect(address.host, address.port, keepalive=max(int(timeout), 5))
    except OSError as error:  # ssl.SSLError included
        return [DeliveryError(f"cannot reach the broker at {where}: {error}")] * len(messages)
    client.loop_start()
    try:
        if not answered.wait(max(deadline - time.monotonic(), 0)) or refusal:
            why = refusal[0] if refusal else f"no answer within {timeout:g} s"
            return [DeliveryError(f"broker {where} did not accept us: {why}")] * len(messages)
        mids: list[int | None] = []
        for topic, payload, key in messages:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = [("idempotency-key", key)]
            info = client.publish(topic, payload, qos=1, properties=props)
            mids.append(info.mid if info.rc == 0 else None)
        with acked:
            acked.wait_for(
                lambda: all(m is None or m in acks for m in mids),
                max(deadline - time.monotonic(), 0),
            )
        results: list[DeliveryError | None] = []
        for (topic, _payload, _key), mid in zip(messages, mids, strict=True):
            if mid is None or mid not in acks:
                results.append(DeliveryError(f"broker {where} did not acknowledge {topic}"))
            elif acks[mid] is not None:
                results.append(
                    DeliveryError(f"broker {where} refused {topic}: {acks[mid]}", permanent=True)
                )
            else:
                results.append(None)
        return results
    finally:
        client.disconnect()
        client.loop_stop()


# --- one batch --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    """What became of one attempt: error None when delivered."""

    notification: Notification
    error: DeliveryError | None


class _Sender:
    """Delivers one batch: an HTTP client, the allow-list, a bound on concurrency."""

    def __init__(
        self, settings: Settings, client: httpx.AsyncClient, allow: AllowList, at: int
    ) -> None:
        self.settings = settings
        self.client = client
        self.allow = allow
        self.at = at
        self.slots = asyncio.Semaphore(CONCURRENCY)

    async def one(self, n: Notification) -> Attempt:
        async with self.slots:
            try:
                await self._send(n)
            except DeliveryError as error:
                return Attempt(n, error)
            except ValidationError as error:
                problem = error.errors()[0]
                where = ".".join(str(p) for p in problem["loc"])
                message = f"invalid {n.channel} channel: {where}: {problem['msg']}"
                return Attempt(n, DeliveryError(message, permanent=True))
            return Attempt(n, None)

    async def _send(self, n: Notification) -> None:
        timeout = self.settings.notify_timeout
        if n.channel == "webhook":
            hook = WebhookChannel.model_validate(n.target)
            body, headers = webhook_request(n, hook, self.at // US)
            await _http(self.client, hook.url, body, headers, self.allow, timeout)
        elif n.channel == "slack":
            slack = SlackChannel.model_validate(n.target)
            body = orjson.dumps({"text": summary(n.payload)})
            headers = {"Content-Type": "application/json", "User-Agent": "telemetra-notify",
                       "Idempotency-Key": idempotency_key(n)}  # fmt: skip
            await _http(self.client, slack.url, body, headers, self.allow, timeout)
        elif n.channel == "email":
            await send_email(self.settings, n, EmailChannel.model_validate(n.target))
        else:
            raise DeliveryError(f"unknown channel kind {n.channel!r}", permanent=True)

    async def mqtt(self, batch: Sequence[Notification]) -> list[Attempt]:
        attempts: list[Attempt] = []
        messages: list[tuple[str, bytes, str]] = []
        valid: list[Notification] = []
        for n in batch:
            try:
                topic = MqttChannel.model_validate(n.target).topic
            except ValidationError:
                bad = DeliveryError(f"invalid mqtt channel {n.target!r}", permanent=True)
                attempts.append(Attempt(n, bad))
                continue
            messages.append((topic, orjson.dumps(n.payload), idempotency_key(n)))
            valid.append(n)
        if messages:
            timeout = self.settings.notify_timeout
            results = await asyncio.to_thread(_publish_all, self.settings, messages, timeout)
            attempts += [Attempt(n, e) for n, e in zip(valid, results, strict=True)]
        return attempts


async def _claim(
    engine: AsyncEngine, due: Sequence[Notification], now: int, until: int
) -> set[int]:
    """Lease the due rows until ``until`` (µs): the ids this deliverer got. A row another
    deliverer leased meanwhile is not due any more and is not returned."""
    if not due:
        return set()
    n = notification_outbox.c
    async with engine.begin() as conn:
        rows = await conn.execute(
            update(notification_outbox)
            .where(n.id.in_([d.id for d in due]), n.status == PENDING, n.next_attempt_at <= now)
            .values(next_attempt_at=until)
            .returning(n.id)
        )
        return {int(row[0]) for row in rows}


async def _record(
    engine: AsyncEngine,
    settings: Settings,
    attempt: Attempt,
    at: int,
    backoff: Callable[[int], float],
) -> str:
    """Write one attempt's outcome (own transaction); its result: delivered, retry or failed."""
    n, error = attempt.notification, attempt.error
    number = n.attempts + 1
    retry_at: int | None = None
    reason = ""
    if error is None:
        result, message = "delivered", None
    elif error.permanent:
        result, message = "failed", error.message
        reason = "refused" if error.refused else "permanent"
    elif number >= settings.notify_max_attempts:
        result, message = "failed", f"gave up after {number} attempts: {error.message}"
        reason = "gave_up"
    else:
        delay = max(backoff(number), min(error.retry_after or 0.0, BACKOFF_MAX_S))
        result, message, retry_at = "retry", error.message, at + int(delay * US)
    async with engine.begin() as conn:
        await record_attempt(conn, n.id, error=message, retry_at=retry_at, at=at)
    metrics.NOTIFICATIONS.labels(n.channel, result).inc()
    if reason:
        metrics.NOTIFICATION_FAILURES.labels(n.channel, reason).inc()
    say = log.info if result == "delivered" else log.warning
    say("notification", id=n.id, alert=n.alert_id, channel=n.channel, change=n.event,
        result=result, attempt=number, error=message)  # fmt: skip
    return result


async def deliver_due(
    engine: AsyncEngine,
    settings: Settings,
    *,
    now: int | None = None,
    limit: int = 100,
    backoff: Callable[[int], float] = backoff_delay,
    verify: ssl.SSLContext | bool = True,
) -> Counter[str]:
    """Deliver up to ``limit`` due notifications (``now`` in µs, default the clock) and record
    each attempt; counts of ``delivered``, ``retry`` and ``failed``. ``backoff`` gives the
    seconds before retry N+1; ``verify`` the TLS trust for https targets.

    Database work runs platform-wide (every tenant's outbox), whatever scope the engine has.
    """
    counts: Counter[str] = Counter()
    fixed = now

    def clock() -> int:
        return now_us() if fixed is None else fixed

    with platform_wide():
        start = clock()
        async with engine.connect() as conn:
            due = await due_notifications(conn, start, limit=limit)
        lease_until = start + int(lease_seconds(settings) * US)
        claimed = await _claim(engine, due, start, lease_until)
        batch = [n for n in due if n.id in claimed]
        if not batch:
            return counts
        allow = parse_allow(settings.notify_allow)
        limits = httpx.Limits(max_keepalive_connections=0)  # one connection per pinned request
        async with httpx.AsyncClient(
            timeout=settings.notify_timeout, follow_redirects=False, trust_env=False,
            verify=verify, limits=limits,
        ) as client:  # fmt: skip
            sender = _Sender(settings, client, allow, start)

            async def finish(attempts: list[Attempt]) -> None:
                for attempt in attempts:
                    counts[await _record(engine, settings, attempt, clock(), backoff)] += 1

            async def one(n: Notification) -> None:
                await finish([await sender.one(n)])

            jobs = [one(n) for n in batch if n.channel != "mqtt"]
            mqtt = [n for n in batch if n.channel == "mqtt"]
            if mqtt:

                async def publish() -> None:
                    await finish(await sender.mqtt(mqtt))

                jobs.append(publish())
            outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        for failure in failures:  # the database went away: those rows stay leased, pending
            log.error("notification attempt not recorded", error=str(failure))
        if failures:
            raise failures[0]
    return counts
