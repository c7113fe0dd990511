"""The demo's embedded MQTT broker: amqtt in the caller's event loop, devices log in with tokens.

amqtt 0.12 speaks **MQTT 3.1.1 only**: an MQTT 5 client never connects (paho 2.2 with
``protocol=MQTTv5`` gets no answer it understands and waits; ThingsBoard's Python SDK, which
always asks for MQTT 5, reports "unsupported protocol version" and retries). Production
uses Mosquitto (``telemetra broker-config``); this broker is for the one-command demo.

Logins: username = device id and password = its Telemetra device token, or (ThingsBoard style)
username = the token and any or no password. The token is checked as HTTP ingest checks
``X-API-Key`` (its hash, active devices only); a positive answer is cached for ``token_ttl_s``
(2 s), and every publish re-checks it, so a rotated token or a disabled device stops within
seconds. Anything else is refused at CONNECT (not authorised).

Topics follow the production ACL (``broker.mosquitto.DEVICE_ACL``), derived from the routes: a
device publishes only to topics whose route names itself (not ChirpStack's ``application/…``,
which ChirpStack publishes), plus ``v1/devices/me/telemetry`` (ThingsBoard), which is mapped to
the logged-in device; it subscribes to, and receives, only its own ack topics. A will message
must also be one of its own topics, else the login is refused. A publish to any other topic is
dropped (amqtt still sends the PUBACK) and never reaches ``deliver``.

Accepted messages go to ``deliver`` in-process, in the order each device sent them, as pipeline
``Message``s; ``publish`` sends acks and dead letters back after commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import BrokerError
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.config import Settings
from telemetra.ingest.pipeline import Message
from telemetra.ingest.routes import DEFAULT_ROUTES, DEVICE, Route, match, parse_routes
from telemetra.store import catalog
from telemetra.store.tenancy import platform_wide

__all__ = [
    "THINGSBOARD_TELEMETRY",
    "BrokerListenError",
    "DeviceTopics",
    "EmbeddedBroker",
    "TokenCache",
]

log = structlog.get_logger("telemetra.demo.broker")

THINGSBOARD_TELEMETRY = "v1/devices/me/telemetry"
STOP_TIMEOUT_S = 4.0
# Keys of amqtt's per-session attributes.
_DEVICE = "telemetra.device"
_CREDENTIAL = "telemetra.token"

Deliver = Callable[[Message], Awaitable[None]]


class BrokerListenError(OSError):
    """The broker cannot listen on its address (``errno`` EADDRINUSE: the port is taken)."""


class TokenCache:
    """Device token -> uid of its active device, positive answers cached for ``ttl_s``.

    Looked up as HTTP ingest looks up ``X-API-Key`` (``catalog.device_by_token``). When the
    database fails while an answer is being renewed, the last answer stands (a busy SQLite file
    must not drop a device's messages); a token never seen is refused.
    """

    def __init__(self, engine: AsyncEngine, ttl_s: float = 2.0) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self._known: dict[str, tuple[str, float]] = {}  # token -> (uid, valid until)

    async def device(self, token: str) -> str | None:
        """The uid of the active device with this token, or None."""
        now = time.monotonic()
        cached = self._known.get(token)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            with platform_wide():  # found by the token alone, before any tenant is known
                async with self.engine.connect() as conn:
                    row = await catalog.device_by_token(conn, token)
        except (SQLAlchemyError, OSError) as exc:
            if cached is None:
                raise
            log.warning("device lookup failed; keeping the last answer", error=str(exc))
            self._known[token] = (cached[0], now + self.ttl_s)
            return cached[0]
        if row is None:
            self._known.pop(token, None)
            return None
        if len(self._known) > 100_000:
            self._known.clear()
        self._known[token] = (str(row.uid), now + self.ttl_s)
        return str(row.uid)


@dataclass(frozen=True)
class DeviceTopics:
    """What a device may do, by the routes: the production ACL's rules for any route list."""

    routes: tuple[Route, ...]

    def may_publish(self, uid: str, topic: str) -> bool:
        """A topic whose route names this device (ChirpStack's are ChirpStack's), or
        ThingsBoard's ``v1/devices/me/telemetry``."""
        if topic == THINGSBOARD_TELEMETRY:
            return True
        found = match(self.routes, topic)
        return found is not None and found.device == uid and found.route.format != "chirpstack"

    def may_read(self, uid: str, topic: str) -> bool:
        """Only the device's own ack topics, exactly (no wildcard filter)."""
        return any(r.ack is not None and r.ack.replace(DEVICE, uid) == topic for r in self.routes)

    def message(self, uid: str, topic: str, payload: bytes, received_at: int) -> Message | None:
        """The pipeline message for a publish of ``uid``, or None when it may not publish there."""
        if topic == THINGSBOARD_TELEMETRY:  # the topic names no device: the login does
            return Message(topic, payload, received_at, source="mqtt", device=uid, fmt="native")
        if self.may_publish(uid, topic):
            return Message(topic, payload, received_at, source="mqtt")
        return None


class _Login(BaseAuthPlugin):  # type: ignore[misc]
    """amqtt's authentication hook: asks the EmbeddedBroker."""

    @dataclass
    class Config:
        owner: Any = None

    async def authenticate(self, *, session: Any) -> bool:
        owner: EmbeddedBroker = self.context.config.owner
        return await owner._login(session)


class _Acl(BaseTopicPlugin):  # type: ignore[misc]
    """amqtt's topic-filtering hook (publish, subscribe, receive): asks the EmbeddedBroker."""

    @dataclass
    class Config:
        owner: Any = None

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Any = None
    ) -> bool:
        owner: EmbeddedBroker = self.context.config.owner
        return await owner._allowed(session, topic, action)


class _Broker(Broker):  # type: ignore[misc]
    """amqtt's broker, handing each client message (after the ACL) to the EmbeddedBroker.

    Every message a client sends goes through ``_broadcast_message`` once it is allowed, will
    messages included, awaited in that client's read loop (so in order, and a slow ``deliver``
    slows that client down rather than piling up).
    """

    def __init__(self, config: dict[str, Any], owner: EmbeddedBroker) -> None:
        super().__init__(config)
        self.owner = owner

    async def stream_connected(self, reader: Any, writer: Any, listener_name: str) -> None:
        # amqtt lets an OSError of a connection escape (an MQTT 5 CONNECT that it refuses and
        # then fails to close cleanly): one line, not a traceback.
        try:
            await super().stream_connected(reader, writer, listener_name)
        except OSError as exc:
            log.info("MQTT connection failed", error=str(exc))
            writer.close()

    async def _broadcast_message(
        self, session: Any, topic: str | None, data: Any, force_qos: int | None = None
    ) -> None:
        if session is not None and topic:
            await self.owner._received(session, topic, bytes(data or b""))
        await super()._broadcast_message(session, topic, data, force_qos)


class EmbeddedBroker:
    """An MQTT 3.1.1 broker in this event loop whose accepted messages go to ``deliver``.

    ``deliver`` is awaited for each accepted device message (topic, payload, ``received_at`` in
    µs, ``device`` for ThingsBoard's topic, source "mqtt"); it should return quickly (queue the
    message). ``start`` listens on ``host:port`` (port 0: any free port, then see ``port``);
    ``stop`` closes every client connection and the listener within 5 s.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        host: str,
        port: int,
        deliver: Deliver,
        *,
        token_ttl_s: float = 2.0,
    ) -> None:
        self.host = host
        self.port = port
        self.deliver = deliver
        routes: Sequence[Route] = (
            parse_routes(settings.routes) if settings.routes else DEFAULT_ROUTES
        )
        self.topics = DeviceTopics(tuple(routes))
        self.tokens = TokenCache(engine, token_ttl_s)
        self.dropped = 0  # publishes refused by the ACL
        self._broker: _Broker | None = None

    @property
    def address(self) -> str:
        """``mqtt://host:port``, once started."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    async def start(self) -> None:
        """Listen; BrokerListenError (an OSError) names the address when that fails."""
        if self._broker is not None:
            raise RuntimeError("the embedded broker is already running")
        bind_host = f"[{self.host}]" if ":" in self.host else self.host
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{bind_host}:{self.port}"}},
            "plugins": {
                f"{__name__}._Login": {"owner": self},
                f"{__name__}._Acl": {"owner": self},
            },
        }
        broker = _Broker(config, self)
        try:
            await broker.start()
        except BrokerError as exc:
            raise self._listen_error(exc) from exc
        if self.port == 0:
            server = broker._servers["default"].instance
            self.port = int(server.sockets[0].getsockname()[1])
        self._broker = broker
        log.info("embedded MQTT broker listening", address=self.address)

    def _listen_error(self, exc: BrokerError) -> BrokerListenError:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__
        where = f"{self.host}:{self.port}"
        if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
            return BrokerListenError(
                errno.EADDRINUSE, f"cannot listen for MQTT on {where}: port {self.port} is in use"
            )
        reason = cause.strerror or str(cause) if isinstance(cause, OSError) else str(exc)
        code = cause.errno if isinstance(cause, OSError) and cause.errno else errno.EINVAL
        return BrokerListenError(code, f"cannot listen for MQTT on {where}: {reason}")

    async def stop(self) -> None:
        """Disconnect every client and stop listening, within 5 s."""
        broker, self._broker = self._broker, None
        if broker is None:
            return
        try:
            await asyncio.wait_for(broker.shutdown(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("embedded broker did not stop in time; closing its connections")
            for session, handler in list(broker.sessions.values()):
                with contextlib.suppress(Exception):
                    if handler.writer is not None:
                        await asyncio.wait_for(handler.writer.close(), 0.2)
                del session
            for server in broker._servers.values():
                server.instance.close()
        log.info("embedded MQTT broker stopped", address=self.address)

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Send a message to the clients subscribed to ``topic`` (acks, dead letters)."""
        if self._broker is None:
            raise RuntimeError("the embedded broker is not running")
        await self._broker.internal_message_broadcast(topic, payload, qos)

    # amqtt's hooks land here.

    async def _login(self, session: Any) -> bool:
        username: str = session.username or ""
        password: str = session.password or ""
        uid = token = None
        try:
            if username and password and await self.tokens.device(password) == username:
                uid, token = username, password
            elif username and (found := await self.tokens.device(username)) is not None:
                uid, token = found, username  # ThingsBoard: the token is the username
        except (SQLAlchemyError, OSError) as exc:
            log.warning("login refused: database unavailable", error=str(exc))
            return False
        if uid is None or token is None:
            log.info("login refused: unknown device or wrong token", username=username[:64])
            return False
        will = session.will_topic if session.will_flag else None
        if will is not None and not self.topics.may_publish(uid, will):
            log.info("login refused: will topic not the device's own", device=uid, topic=will)
            return False
        session.attributes[_DEVICE] = uid
        session.attributes[_CREDENTIAL] = token
        return True

    async def _allowed(self, session: Any, topic: str | None, action: Any) -> bool:
        uid = session.attributes.get(_DEVICE) if session is not None else None
        if uid is None or not topic:
            return False
        if action == Action.PUBLISH:
            if not self.topics.may_publish(uid, topic):
                self.dropped += 1
                log.info("publish dropped: not the device's topic", device=uid, topic=topic)
                return False
            # The token again (cached): a rotation or a disabled device takes effect here.
            try:
                current = await self.tokens.device(session.attributes[_CREDENTIAL])
            except (SQLAlchemyError, OSError):
                current = None
            if current != uid:
                self.dropped += 1
                log.info("publish dropped: token rotated or device disabled", device=uid)
                return False
            return True
        return self.topics.may_read(uid, topic)  # subscribe and receive

    async def _received(self, session: Any, topic: str, payload: bytes) -> None:
        uid = session.attributes.get(_DEVICE)
        message = self.topics.message(uid, topic, payload, time.time_ns() // 1000) if uid else None
        if message is None:
            return
        try:
            await self.deliver(message)
        except Exception:
            log.exception("deliver failed; message dropped", device=uid, topic=topic)
