"""MQTT source: a persistent MQTT 5 session whose QoS1 messages are acknowledged after commit.

paho-mqtt's network loop runs in its own thread and hands messages to the pipeline through an
``Inbox``. The broker may hold up to ``mqtt_receive_maximum`` unacknowledged messages for us;
those it redelivers after a crash, and idempotent writes make the redelivery harmless.

Retained messages: a device's retained publish reaches us live like any other (and is stored
once); the broker's stored copy, which it would hand to every new subscription, is not a new
reading, so we ask for none (retain handling 2) and skip any that still arrive.

When the broker will not have us, the log says why in one line (password, authorisation,
certificate, TLS) and, where only configuration can fix it, the worker stops with that line;
otherwise it retries with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from telemetra.config import Settings
from telemetra.ingest.pipeline import (
    DEADLETTER_TOPIC,
    Inbox,
    Message,
    Outcome,
    Pipeline,
    deadletter_payload,
)
from telemetra.ingest.routes import subscription

log = structlog.get_logger("telemetra.mqtt")

SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps our queue this long while we are away
MAX_RETRY_DELAY_S = 30.0
# CONNACK reasons that may pass by themselves; every other refusal needs a configuration change.
_TRANSIENT_REFUSALS = frozenset({"Server unavailable", "Server busy", "Connection rate exceeded"})


class BrokerRefused(Exception):
    """The broker refuses us for a reason that retrying cannot fix; the message says which."""


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """Why a connection attempt failed, in one line, and whether to try again."""

    message: str
    retry: bool


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


def parse_mqtt_url(url: str) -> BrokerAddress:
    """``mqtt://[user:pass@]host[:port]`` or ``mqtts://…``; ValueError says what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"MQTT URL {url!r}: scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError(f"MQTT URL {url!r} names no host")
    tls = parts.scheme in ("mqtts", "ssl")
    return BrokerAddress(
        parts.hostname,
        parts.port or (8883 if tls else 1883),
        tls,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )


def broker_name(address: BrokerAddress) -> str:
    """mqtt(s)://host:port, without credentials: for logs and answers."""
    return f"{'mqtts' if address.tls else 'mqtt'}://{address.host}:{address.port}"


def diagnose_refusal(reason: str, address: BrokerAddress, username: str | None) -> Diagnosis:
    """A CONNACK refusal (its reason, e.g. 'Not authorized') as what the broker wants."""
    where = broker_name(address)
    who = f"user {username!r}" if username else "an anonymous client"
    if reason in ("Bad user name or password", "Not authorized"):
        what = (
            "bad username or password"
            if reason == "Bad user name or password"
            else "not authorised (wrong password, unknown user, or not allowed to connect)"
        )
        fix = (
            "check TELEMETRA_MQTT_USERNAME and TELEMETRA_MQTT_PASSWORD (or the URL's "
            "user:password) against `broker-config --ingest-password`"
            if username
            else "it requires a login: set TELEMETRA_MQTT_USERNAME and TELEMETRA_MQTT_PASSWORD"
        )
        return Diagnosis(f"broker {where} refused {who}: {what}; {fix}", retry=False)
    if reason in _TRANSIENT_REFUSALS:
        return Diagnosis(f"broker {where} refused the connection for now: {reason}", retry=True)
    return Diagnosis(f"broker {where} refused {who}: {reason}", retry=False)


def diagnose_error(error: str, address: BrokerAddress, has_cert: bool) -> Diagnosis:
    """A failure before the broker answered CONNECT (``error`` from the TLS or TCP layer,
    empty when the connection just closed) as what the broker wants."""
    where = broker_name(address)
    text = error.upper()
    if "CERTIFICATE_REQUIRED" in text or ("EOF OCCURRED" in text and not has_cert):
        return Diagnosis(
            f"broker {where} requires a client certificate ({error}); set "
            "TELEMETRA_MQTT_CERT_FILE and TELEMETRA_MQTT_KEY_FILE (`broker-config --mtls` wrote "
            "ingest.crt and ingest.key)",
            retry=False,
        )
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return Diagnosis(
            f"the certificate of broker {where} is not trusted ({error}); set "
            "TELEMETRA_MQTT_CA_FILE to the CA that signed it (`broker-config` wrote ca.pem) and "
            "use a host name the certificate names (--hostname)",
            retry=False,
        )
    refused_cert = ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_REVOKED", "CERTIFICATE_EXPIRED",
                    "CERTIFICATE_UNKNOWN", "UNSUPPORTED_CERTIFICATE", "EOF OCCURRED")  # fmt: skip
    if any(mark in text for mark in refused_cert):
        return Diagnosis(
            f"broker {where} refused our client certificate ({error}); it must be signed by the "
            "broker's CA, unexpired and not revoked (TELEMETRA_MQTT_CERT_FILE/KEY_FILE)",
            retry=False,
        )
    if "WRONG_VERSION_NUMBER" in text or "RECORD_LAYER_FAILURE" in text:
        return Diagnosis(
            f"TLS handshake with {where} failed ({error}): that port does not speak TLS; "
            "use mqtt:// or the broker's TLS port",
            retry=False,
        )
    if "SSL" in text or "TLS" in text:
        return Diagnosis(f"TLS handshake with {where} failed ({error})", retry=False)
    # Plain MQTT to a TLS listener, or TLS to a plain one: the broker closes or resets.
    hint = (
        "; if that port is not a TLS listener, use mqtt:// or the broker's TLS port"
        if address.tls
        else "; if that port is a TLS listener, use mqtts://"
    )
    if not error:
        return Diagnosis(
            f"broker {where} closed the connection before answering CONNECT{hint}", retry=True
        )
    if "reset by peer" not in error:
        hint = ""
    return Diagnosis(f"cannot reach the broker at {where}: {error}{hint}", retry=True)


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The TLS settings for mqtts://: the broker's CA (else the system's), our certificate."""
    context = ssl.create_default_context(
        cafile=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None
    )
    if settings.mqtt_cert_file:
        context.load_cert_chain(
            str(settings.mqtt_cert_file),
            str(settings.mqtt_key_file) if settings.mqtt_key_file else None,
        )
    return context


def make_client(
    settings: Settings, client_id: str, *, manual_ack: bool = False
) -> tuple[mqtt.Client, BrokerAddress]:
    """A paho MQTT 5 client configured from settings (credentials, TLS)."""
    address = parse_mqtt_url(settings.mqtt_url)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    username = settings.mqtt_username or address.username
    if username:
        client.username_pw_set(username, settings.mqtt_password or address.password)
    if address.tls:
        client.tls_set_context(tls_context(settings))
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client, address


class LoopNetwork:
    """Drives a paho client from the asyncio loop: no network thread, no lock hand-offs.

    paho's own thread would compete with the pipeline for the GIL on every packet; here
    reads, writes and keep-alives are plain callbacks of the loop. Reading pauses while
    the inbox is full (backpressure on the TCP connection) and resumes once it drains.
    """

    def __init__(self, client: mqtt.Client, loop: asyncio.AbstractEventLoop, inbox: Inbox) -> None:
        self.client = client
        self.loop = loop
        self.inbox = inbox
        self.sock: Any = None
        self.reading = False
        self.has_cert = False  # whether we present a client certificate
        self.failure: str | None = None  # set when the broker refuses us for good
        self._answer: Diagnosis | None = None  # a refusing CONNACK on this connection
        self._accepted = False  # a CONNACK accepted us on this connection
        self._error = ""  # the last socket error paho reported
        client.on_log = self._log
        client.on_socket_open = self._opened
        client.on_socket_close = self._closed
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._done_writing
        inbox.on_drained = self._resume

    def _log(self, _c: Any, _u: Any, level: int, text: str) -> None:
        # paho reports a failed read or write (a TLS alert above all) only here.
        if level == mqtt.MQTT_LOG_ERR and text.startswith("failed to "):
            self._error = text.split(": ", 1)[-1]

    @property
    def accepted(self) -> bool:
        """Whether the broker accepted the current (or last) connection."""
        return self._accepted

    def connack(self, refusal: Diagnosis | None) -> None:
        """The broker answered CONNECT: accepted (None) or refused."""
        self._accepted = refusal is None
        self._answer = refusal

    def _opened(self, _c: Any, _u: Any, sock: Any) -> None:
        self.sock = sock
        self._resume()

    def _closed(self, _c: Any, _u: Any, sock: Any) -> None:
        self._pause()
        self.loop.remove_writer(sock)
        self.sock = None

    def _want_write(self, _c: Any, _u: Any, sock: Any) -> None:
        self.loop.add_writer(sock, self.client.loop_write)

    def _done_writing(self, _c: Any, _u: Any, sock: Any) -> None:
        self.loop.remove_writer(sock)

    def _resume(self) -> None:
        if self.sock is not None and not self.reading and not self.inbox.full():
            self.loop.add_reader(self.sock, self._read)
            self.reading = True

    def _pause(self) -> None:
        if self.sock is not None and self.reading:
            self.loop.remove_reader(self.sock)
        self.reading = False

    def _read(self) -> None:
        # paho reads one packet per call; go on while packets keep arriving, within bounds.
        inbox = self.inbox
        for _ in range(1000):
            before = len(inbox)
            if self.client.loop_read() != mqtt.MQTT_ERR_SUCCESS or len(inbox) == before:
                break
            if inbox.full():
                self._pause()
                break

    async def keep_connected(self, address: BrokerAddress, props: Any, stop: asyncio.Event) -> None:
        """Connect, keep alive, and reconnect with backoff until stopped.

        A refusal that only configuration can fix (password, authorisation, certificate, TLS)
        is logged once and stops the worker (``failure``, then ``stop``); anything else is
        logged and retried, 1 s doubling to 30 s, back to 1 s once the broker accepted us.
        """
        delay = 1.0
        while not stop.is_set():
            self._answer, self._accepted, self._error = None, False, ""
            diagnosis: Diagnosis | None = None
            try:
                self.client.connect(
                    address.host, address.port, keepalive=30, clean_start=False, properties=props
                )
                while self.client.loop_misc() == mqtt.MQTT_ERR_SUCCESS and not stop.is_set():
                    if self._accepted:
                        delay = 1.0
                    with contextlib.suppress(TimeoutError):  # keep-alive pings once a second
                        await asyncio.wait_for(stop.wait(), 1.0)
            except OSError as error:  # ssl.SSLError included: a handshake that failed
                diagnosis = diagnose_error(str(error), address, self.has_cert)
            if stop.is_set():
                break
            if diagnosis is None and not self._accepted:  # closed before it accepted us
                diagnosis = self._answer or diagnose_error(self._error, address, self.has_cert)
            if diagnosis is not None and not diagnosis.retry:
                log.error(diagnosis.message)
                self.failure = diagnosis.message
                stop.set()
                break
            if diagnosis is not None:
                log.warning(diagnosis.message, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY_S)

    def close(self) -> None:
        """Disconnect cleanly, flushing the acknowledgements already queued."""
        if self.sock is not None:
            self.client.disconnect()
            with contextlib.suppress(OSError):
                self.client.loop_write()
        self._pause()


class MqttIngest:
    """Subscribe to the pipeline's routes and feed it; ack each message after its commit."""

    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.connected = asyncio.Event()
        self.retained_skipped = 0  # stored copies the broker sent anyway
        self._client: mqtt.Client | None = None

    def _filters(self) -> list[str]:
        group = self.settings.mqtt_share_group
        filters = [subscription(r) for r in self.pipeline.routes]
        return [f"$share/{group}/{f}" if group else f for f in filters]

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then finish the batches already received."""
        loop = asyncio.get_running_loop()
        settings = self.settings
        inbox = Inbox(settings.queue_max_messages, settings.batch_max_messages)
        client, address = make_client(settings, settings.mqtt_client_id, manual_ack=True)
        self._client = client
        filters = self._filters()

        def on_connect(c: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
            if reason.is_failure:
                network.connack(diagnose_refusal(str(reason), address, username))
                return
            network.connack(None)
            # Retained copies are the broker's memory, not new readings (see the module doc).
            options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
            c.subscribe([(f, options) for f in filters])
            log.info(
                "connected to broker",
                host=address.host, port=address.port, session_present=flags.session_present,
                subscriptions=filters,
            )  # fmt: skip
            self.connected.set()

        def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            self.connected.clear()
            if not stop.is_set() and network.accepted:  # refusals: keep_connected says why
                log.warning("disconnected from broker; reconnecting", reason=str(reason))

        def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            if stop.is_set():
                return  # not acknowledged: the broker delivers it again next time
            if msg.retain:
                # A stored copy from a broker that ignored retain handling: already taken
                # when it was published (live messages arrive with the flag cleared).
                if msg.qos:
                    c.ack(msg.mid, msg.qos)
                self.retained_skipped += 1
                return
            inbox.put(
                Message(
                    msg.topic,
                    bytes(msg.payload),
                    time.time_ns() // 1000,
                    redelivered=bool(msg.dup),
                    handle=(msg.mid, msg.qos),
                )
            )

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_message = on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = settings.mqtt_receive_maximum
        username = settings.mqtt_username or address.username
        network = LoopNetwork(client, loop, inbox)
        network.has_cert = settings.mqtt_cert_file is not None
        connecting = asyncio.create_task(
            network.keep_connected(address, props, stop), name="mqtt-connection"
        )
        reporter = asyncio.create_task(self._report(inbox, stop))
        try:
            await self.pipeline.run(inbox, self._done, stop)
        finally:
            reporter.cancel()
            connecting.cancel()
            network.close()
            log.info(
                "ingest stopped", retained_skipped=self.retained_skipped, **self.pipeline.stats
            )
        if network.failure is not None:
            raise BrokerRefused(network.failure)

    def _done(self, outcomes: list[Outcome]) -> None:
        """After commit: PUBACK each message, then the ack-topic and dead-letter messages."""
        client = self._client
        assert client is not None
        cap = self.settings.deadletter_payload_bytes
        for outcome in outcomes:
            mid, qos = outcome.message.handle
            if qos:
                client.ack(mid, qos)
            if outcome.ack_topic:
                client.publish(outcome.ack_topic, outcome.ack_payload(), self.settings.mqtt_ack_qos)
            for rejection in outcome.rejected:
                client.publish(DEADLETTER_TOPIC, deadletter_payload(outcome, rejection, cap), 0)

    async def _report(self, inbox: Inbox, stop: asyncio.Event, every_s: float = 10.0) -> None:
        stats = self.pipeline.stats
        timings = self.pipeline.timings
        before = {**stats, **timings, "clock": time.monotonic()}
        while not stop.is_set():
            await asyncio.sleep(every_s)
            now = {**stats, **timings, "clock": time.monotonic()}
            delta = {k: now.get(k, 0) - before.get(k, 0) for k in now}
            batches = max(1, delta["batches"]) if "batches" in delta else 1
            log.info(
                "ingest progress",
                messages_per_s=round(delta.get("messages", 0) / delta["clock"]),
                readings_per_s=round(delta.get("readings", 0) / delta["clock"]),
                queue=len(inbox), rejections=stats["rejections"],
                batch_messages=round(delta.get("messages", 0) / batches),
                batch_prepare_ms=round(1000 * delta.get("prepare_s", 0) / batches),
                batch_commit_ms=round(1000 * delta.get("commit_s", 0) / batches),
            )  # fmt: skip
            before = now
