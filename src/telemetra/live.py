"""The live bus: committed readings (and the worker's status and alert events) out to the
clients that follow them.

Producers never wait and never fail: ``publish`` and ``publish_committed`` put their data in
a bounded buffer that a task drains. Without Redis the bus delivers within its process (one
``serve``, or the demo). With ``TELEMETRA_REDIS_URL`` every drained batch goes out as one
Redis pub/sub message per tenant on ``telemetra:live:<tenant id>``, and each process with
live clients subscribes to the channels of its clients' tenants (admins: the pattern of all),
so any ``serve`` streams what any ``telemetra ingest`` committed.

Pub/sub rather than streams: the live stream is a view of what is stored, not a record (the
database is the record, and the history API reads it). Pub/sub keeps nothing in Redis to trim
or size, sends a process only the tenants its clients follow, and costs nothing while nobody
follows. What a client misses (an outage, a full queue) is announced to it as a ``gap``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
import structlog

from telemetra import metrics as prometheus
from telemetra.ingest.timestamps import format_us

if TYPE_CHECKING:
    from telemetra.ingest.pipeline import Committed, Outcome

log = structlog.get_logger("telemetra.live")

TYPES = ("readings", "status", "alert")
CHANNEL = "telemetra:live:"  # + tenant id
PENDING_LIMIT = 200_000  # readings and frames waiting to be published, at most
SUBSCRIBE_WAIT_S = 2.0  # how long a new client waits for Redis to confirm its subscription
RETRY_MAX_S = 5.0

Frame = dict[str, Any]


class Event:
    """One frame as sent to clients; its JSON is made once, however many clients get it."""

    __slots__ = ("_text", "frame")

    def __init__(self, frame: Frame) -> None:
        self.frame = frame
        self._text: str | None = None

    @property
    def type(self) -> str:
        return str(self.frame.get("type"))

    def text(self) -> str:
        if self._text is None:
            self._text = orjson.dumps(self.frame).decode()
        return self._text


@dataclass(frozen=True, slots=True)
class Filter:
    """What one client follows: devices, metrics and event types (``None``: all)."""

    devices: frozenset[str] | None = None
    metrics: frozenset[str] | None = None
    types: frozenset[str] = frozenset(TYPES)

    def apply(self, event: Event) -> Event | None:
        """The event as this client sees it (readings of other metrics left out), or None."""
        frame = event.frame
        kind = frame.get("type")
        if kind not in self.types:
            return None
        alert = frame.get("alert") if kind == "alert" else None
        if self.devices is not None and _device_of(frame) not in self.devices:
            return None
        if self.metrics is None:
            return event
        if kind == "readings":
            points = [p for p in frame["points"] if p["metric"] in self.metrics]
            if not points:
                return None
            return (
                event if len(points) == len(frame["points"]) else Event({**frame, "points": points})
            )
        if isinstance(alert, dict) and alert.get("metric") not in self.metrics:
            return None
        return event  # status changes concern the device, whatever the metric


def _names(text: str | None, what: str) -> frozenset[str] | None:
    if text is None or not text.strip():
        return None
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    if len(names) > 1000:
        raise ValueError(f"{what}: at most 1000 names")
    return names


def parse_filter(devices: str | None, metrics: str | None, types: str | None) -> Filter:
    """The filter of the query ``devices=d1,d2&metrics=temperature&types=readings,alert``."""
    kinds = _names(types, "types")
    unknown = sorted((kinds or frozenset()) - set(TYPES))
    if unknown:
        raise ValueError(f"types: unknown {', '.join(unknown)}; use {', '.join(TYPES)}")
    return Filter(_names(devices, "devices"), _names(metrics, "metrics"), kinds or frozenset(TYPES))


def readings_frames(committed: Iterable[Committed]) -> dict[int, list[Frame]]:
    """Committed readings as frames: per tenant, one ``readings`` frame per device."""
    by_device: dict[tuple[int, str], list[Any]] = {}
    for item in committed:
        key = (item.tenant_id, item.device)
        points = by_device.get(key)
        if points is None:
            points = by_device[key] = []
        points.append(item.reading)
    frames: dict[int, list[Frame]] = {}
    for (tenant_id, device), readings in by_device.items():
        readings.sort(key=lambda r: r.ts)
        points = [
            {"metric": r.metric, "ts": format_us(r.ts),
             "value": r.text if r.value is None else r.value}
            for r in readings
        ]  # fmt: skip
        frames.setdefault(tenant_id, []).append(
            {"type": "readings", "device": device, "points": points}
        )
    return frames


class Subscription:
    """One client's bounded queue: the oldest frames give way, and the client is told."""

    def __init__(self, tenant_id: int | None, filter: Filter, limit: int) -> None:
        self.tenant_id = tenant_id  # None: every tenant (a platform admin)
        self.filter = filter
        self.limit = limit
        self._queue: deque[Event] = deque()
        self._dropped = 0
        self._interrupted = False
        self._ready = asyncio.Event()

    def offer(self, event: Event) -> None:
        """Queue ``event`` if the client follows it (never waits)."""
        chosen = self.filter.apply(event)
        if chosen is None:
            return
        if len(self._queue) >= self.limit:
            self._queue.popleft()
            self._dropped += 1
            prometheus.LIVE_DROPPED.labels("slow_client").inc()
        self._queue.append(chosen)
        self._ready.set()

    def interrupt(self) -> None:
        """The bus lost events it cannot count (Redis went away): the client gets a gap."""
        self._interrupted = True
        self._ready.set()

    def take(self) -> list[tuple[str, str]]:
        """(type, JSON text) of the frames waiting, a ``gap`` first when some were lost."""
        out: list[tuple[str, str]] = []
        if self._interrupted or self._dropped:
            gap: Frame = {
                "type": "gap",
                "dropped": None if self._interrupted else self._dropped,  # None: not counted
                "reason": "bus_unavailable" if self._interrupted else "slow_client",
            }
            out.append(("gap", orjson.dumps(gap).decode()))
            self._interrupted, self._dropped = False, 0
        out.extend((event.type, event.text()) for event in self._queue)
        self._queue.clear()
        self._ready.clear()
        return out

    async def next(self, wait_s: float) -> list[tuple[str, str]]:
        """The frames waiting, as soon as there are any; ``[]`` after ``wait_s`` without."""
        if not self._ready.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait_s)
        return self.take()


class Audience:
    """The subscriptions of one tenant (or the admins'), indexed by the devices they name:
    a frame is offered only to those who follow its device, so idle clients cost nothing."""

    def __init__(self) -> None:
        self.any_device: set[Subscription] = set()
        self.by_device: dict[str, set[Subscription]] = {}
        self.subs: set[Subscription] = set()

    def __len__(self) -> int:
        return len(self.subs)

    def add(self, sub: Subscription) -> None:
        self.subs.add(sub)
        if sub.filter.devices is None:
            self.any_device.add(sub)
        else:
            for device in sub.filter.devices:
                self.by_device.setdefault(device, set()).add(sub)

    def remove(self, sub: Subscription) -> None:
        self.subs.discard(sub)
        self.any_device.discard(sub)
        for device in sub.filter.devices or ():
            subs = self.by_device.get(device, set())
            subs.discard(sub)
            if not subs:
                self.by_device.pop(device, None)

    def following(self, device: Any) -> Iterable[Subscription]:
        named = self.by_device.get(device) if isinstance(device, str) else None
        return (*self.any_device, *named) if named else self.any_device


def _device_of(frame: Frame) -> Any:
    alert = frame.get("alert") if frame.get("type") == "alert" else None
    return alert.get("device") if isinstance(alert, dict) else frame.get("device")


class Hub:
    """The subscriptions of this process, by tenant."""

    def __init__(self) -> None:
        self.tenants: dict[int, Audience] = {}
        self.everyone = Audience()  # platform admins: every tenant

    def __len__(self) -> int:
        return sum(map(len, self.tenants.values())) + len(self.everyone)

    def add(self, sub: Subscription) -> None:
        if sub.tenant_id is None:
            self.everyone.add(sub)
        else:
            self.tenants.setdefault(sub.tenant_id, Audience()).add(sub)
        prometheus.LIVE_CLIENTS.inc()

    def remove(self, sub: Subscription) -> None:
        if sub.tenant_id is None:
            self.everyone.remove(sub)
        else:
            audience = self.tenants.get(sub.tenant_id)
            if audience is not None:
                audience.remove(sub)
                if not audience:
                    self.tenants.pop(sub.tenant_id, None)
        prometheus.LIVE_CLIENTS.dec()

    def deliver(
        self, tenant_id: int, frames: Sequence[Frame], *, tenant: bool = True, others: bool = True
    ) -> None:
        """Offer ``frames`` of ``tenant_id`` to that tenant's subscribers and/or the admins'."""
        audiences = [
            *((self.tenants[tenant_id],) if tenant and tenant_id in self.tenants else ()),
            *((self.everyone,) if others and self.everyone else ()),
        ]
        if not audiences:
            return
        for frame in frames:
            event = Event(frame)
            device = _device_of(frame)
            for audience in audiences:
                for sub in audience.following(device):
                    sub.offer(event)

    def interrupt(self) -> None:
        for audience in (self.everyone, *self.tenants.values()):
            for sub in audience.subs:
                sub.interrupt()


Pending = tuple[int, list[Frame]] | list["Committed"]


class Bus:
    """Publishing (never blocking, never raising) and following; delivery is the subclass's."""

    def __init__(self, client_queue: int = 1000, pending_limit: int = PENDING_LIMIT) -> None:
        self.hub = Hub()
        self.client_queue = client_queue
        self.pending_limit = pending_limit
        self.stats: Counter[str] = Counter()
        self._pending: deque[tuple[Pending, int]] = deque()
        self._pending_size = 0
        self._wake = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        self._overflowing = False

    # -- publishing ------------------------------------------------------------------------

    def publish(self, tenant_id: int, frames: list[Frame]) -> None:
        """Publish frames of one tenant (status, alert events): queued, never waits."""
        if frames:
            self._enqueue((tenant_id, frames), len(frames))

    def publish_committed(self, committed: list[Committed]) -> None:
        """Publish a committed batch's readings (grouped per device when drained)."""
        if committed and self.may_reach_someone(committed):
            self._enqueue(committed, len(committed))

    async def on_commit(self, outcomes: list[Outcome], committed: list[Committed]) -> None:
        """The pipeline's after-commit listener."""
        self.publish_committed(committed)

    def may_reach_someone(self, committed: list[Committed]) -> bool:
        """Whether publishing can reach a client (the in-process bus knows; Redis does not)."""
        return True

    def _enqueue(self, item: Pending, size: int) -> None:
        self._pending.append((item, size))
        self._pending_size += size
        self._trim()
        self._wake.set()

    def _trim(self) -> None:
        while self._pending_size > self.pending_limit and len(self._pending) > 1:
            _, gone = self._pending.popleft()
            self._pending_size -= gone
            self.stats["dropped"] += gone
            prometheus.LIVE_DROPPED.labels("publisher").inc(gone)
            if not self._overflowing:  # once per episode, not per batch
                self._overflowing = True
                log.warning(
                    "live bus cannot keep up; oldest unpublished readings dropped (ingest goes on)",
                    pending_limit=self.pending_limit,
                )

    def _take_pending(self) -> list[Pending]:
        items = [item for item, _ in self._pending]
        self._pending.clear()
        self._pending_size = 0
        self._overflowing = False
        self._wake.clear()
        return items

    @staticmethod
    def frames_of(items: Iterable[Pending]) -> dict[int, list[Frame]]:
        """Pending items as frames per tenant."""
        out: dict[int, list[Frame]] = {}
        for item in items:
            if isinstance(item, tuple):
                out.setdefault(item[0], []).extend(item[1])
            else:
                for tenant_id, frames in readings_frames(item).items():
                    out.setdefault(tenant_id, []).extend(frames)
        return out

    async def _drain(self) -> None:
        while True:
            await self._wake.wait()
            items = self._take_pending()
            try:
                await self._send(self.frames_of(items))
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end publishing for good
                self.stats["errors"] += 1
                log.exception("live bus: publishing failed")

    async def _send(self, frames: dict[int, list[Frame]]) -> None:
        raise NotImplementedError

    # -- following ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def following(self, tenant_id: int | None, filter: Filter) -> AsyncIterator[Subscription]:
        """A subscription for one client, for as long as the block runs."""
        sub = Subscription(tenant_id, filter, self.client_queue)
        self.hub.add(sub)
        try:
            await self._subscribed(sub)
            yield sub
        finally:
            self.hub.remove(sub)
            await self._unsubscribed(sub)

    async def _subscribed(self, sub: Subscription) -> None:
        """A client joined (Redis: listen to its tenant's channel)."""

    async def _unsubscribed(self, sub: Subscription) -> None:
        """A client left."""

    # -- life --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())

    async def close(self) -> None:
        """Publish what is pending (briefly), then stop."""
        if self._drainer is None:
            return
        for _ in range(20):
            if not self._pending:
                break
            await asyncio.sleep(0.05)
        self._drainer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._drainer
        self._drainer = None

    async def check(self) -> str:
        """``ok``, or why the bus cannot carry events now."""
        return "ok"


class LocalBus(Bus):
    """One process: committed data goes straight to this process's clients."""

    def may_reach_someone(self, committed: list[Committed]) -> bool:
        hub = self.hub
        return bool(hub.everyone) or any(c.tenant_id in hub.tenants for c in committed)

    async def _send(self, frames: dict[int, list[Frame]]) -> None:
        for tenant_id, tenant_frames in frames.items():
            self.hub.deliver(tenant_id, tenant_frames)


def redis_name(url: str) -> str:
    """host:port of a Redis URL, without credentials (for messages)."""
    parts = urlsplit(url)
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"


class RedisBus(Bus):
    """Several processes: committed data travels over Redis pub/sub, one channel per tenant."""

    def __init__(
        self, url: str, client_queue: int = 1000, pending_limit: int = PENDING_LIMIT
    ) -> None:
        super().__init__(client_queue, pending_limit)
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.name = redis_name(url)
        # Our own loops retry with backoff; the client's built-in retries would only add waits.
        self.redis = Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=5, retry=Retry(NoBackoff(), 0)
        )
        self._publish_down = False
        self._listen_down = False
        self._listener: asyncio.Task[None] | None = None
        self._pubsub: Any = None
        self._lock = asyncio.Lock()  # subscription changes, in order
        self._channels: set[str] = set()  # subscribed on the current connection
        self._pattern = False
        self._confirmed: dict[str, asyncio.Event] = {}
        self._connected = asyncio.Event()  # the listener is connected and subscribed

    # -- publishing ------------------------------------------------------------------------

    async def _drain(self) -> None:
        delay = 0.2
        while True:
            await self._wake.wait()
            items = self._take_pending()
            frames = self.frames_of(items)
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for tenant_id, tenant_frames in frames.items():
                        pipe.publish(f"{CHANNEL}{tenant_id}", orjson.dumps(tenant_frames))
                    await pipe.execute()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.stats["publish_errors"] += 1
                prometheus.LIVE_PUBLISH_ERRORS.inc()
                if not self._publish_down:  # once per outage, not per batch
                    self._publish_down = True
                    log.warning(
                        "live bus: Redis unavailable; readings are stored as always and "
                        "streamed again once it returns",
                        redis=self.name, error=str(error)[:200],
                    )  # fmt: skip
                for tenant_id, tenant_frames in reversed(frames.items()):  # back in front
                    self._pending.appendleft(((tenant_id, tenant_frames), len(tenant_frames)))
                    self._pending_size += len(tenant_frames)
                self._trim()
                self._wake.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = 0.2
            if self._publish_down:
                self._publish_down = False
                log.info("live bus: Redis reachable again; publishing", redis=self.name)

    # -- following ---------------------------------------------------------------------------

    def _wanted(self) -> tuple[set[str], bool]:
        return {f"{CHANNEL}{t}" for t in self.hub.tenants}, bool(self.hub.everyone)

    async def _sync(self) -> list[str]:
        """Make the connection's subscriptions those the clients need; the names newly asked."""
        pubsub = self._pubsub
        if pubsub is None:
            return []
        channels, pattern = self._wanted()
        asked: list[str] = []
        if channels - self._channels:
            new = sorted(channels - self._channels)
            for name in new:  # set when Redis confirms
                self._confirmed[name] = asyncio.Event()
            await pubsub.subscribe(*new)
            asked += new
        if self._channels - channels:
            gone = sorted(self._channels - channels)
            for name in gone:
                self._confirmed.pop(name, None)
            await pubsub.unsubscribe(*gone)
        if pattern and not self._pattern:
            self._confirmed[f"{CHANNEL}*"] = asyncio.Event()
            await pubsub.psubscribe(f"{CHANNEL}*")
            asked.append(f"{CHANNEL}*")
        elif self._pattern and not pattern:
            self._confirmed.pop(f"{CHANNEL}*", None)
            await pubsub.punsubscribe(f"{CHANNEL}*")
        self._channels, self._pattern = channels, pattern
        return asked

    async def _subscribed(self, sub: Subscription) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen())
        if self._pubsub is None:  # the first client, or Redis away: wait for the connection
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), SUBSCRIBE_WAIT_S)
        name = f"{CHANNEL}*" if sub.tenant_id is None else f"{CHANNEL}{sub.tenant_id}"
        try:
            async with self._lock:
                await self._sync()
        except Exception:  # noqa: S110 - the listener sees the outage and resubscribes
            pass
        confirmed = self._confirmed.get(name)
        if confirmed is not None:  # none while Redis is away: the listener resubscribes
            # Once Redis confirms, everything committed from now on reaches this client.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(confirmed.wait(), SUBSCRIBE_WAIT_S)

    async def _unsubscribed(self, sub: Subscription) -> None:
        try:
            async with self._lock:
                await self._sync()
        except Exception:  # noqa: S110 - a new connection subscribes only to what is wanted
            pass

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        channel = message["channel"].decode()
        if kind in ("subscribe", "psubscribe"):  # ``channel`` names the pattern for the latter
            confirmed = self._confirmed.get(channel)
            if confirmed is not None:
                confirmed.set()
            return
        if kind not in ("message", "pmessage"):
            return
        try:
            tenant_id = int(channel.removeprefix(CHANNEL))
            frames = orjson.loads(message["data"])
        except (ValueError, orjson.JSONDecodeError):
            log.warning("live bus: unreadable message ignored", channel=channel[:100])
            return
        if kind == "message":
            self.hub.deliver(tenant_id, frames, others=False)
        else:
            self.hub.deliver(tenant_id, frames, tenant=False)

    async def _listen(self) -> None:
        delay = 0.2
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.connect()
                async with self._lock:
                    self._pubsub, self._channels, self._pattern = pubsub, set(), False
                    await self._sync()
                self._connected.set()
                if self._listen_down:
                    self._listen_down = False
                    log.info("live bus: Redis reachable again; streaming", redis=self.name)
                delay = 0.2
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._on_message(message)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._pubsub = None
                self._connected.clear()
                self._confirmed.clear()
                if not self._listen_down:
                    self._listen_down = True
                    self.hub.interrupt()  # every client learns that it may miss readings
                    log.warning(
                        "live bus: Redis unavailable; live clients stay connected and "
                        "resume when it returns",
                        redis=self.name, error=str(error)[:200],
                    )  # fmt: skip
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    # -- life --------------------------------------------------------------------------------

    async def close(self) -> None:
        await super().close()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        await self.redis.aclose()

    async def check(self) -> str:
        try:
            async with asyncio.timeout(2):
                await self.redis.ping()
        except Exception as error:
            return f"unreachable at {self.name}: {str(error)[:200] or 'timeout'}"
        return "ok"


def open_bus(redis_url: str | None, client_queue: int = 1000) -> Bus:
    """The bus for this configuration: Redis when a URL is set, else in-process."""
    return RedisBus(redis_url, client_queue) if redis_url else LocalBus(client_queue)
