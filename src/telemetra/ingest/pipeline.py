"""The flow of one reading: batch → decode → clean → one transaction → ack, fan-out.

Every source (MQTT, HTTP, files) hands ``Message`` objects to a ``Pipeline``. A message is
acknowledged to its source only after the batch holding it has been committed; writes are
idempotent, so a redelivery after a crash stores nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import math
import time
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import orjson
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra import metrics as prometheus
from telemetra.alerts.feed import AlertFeed, DeviceCounts
from telemetra.config import Settings
from telemetra.ingest.clean import (
    DeviceState,
    Policy,
    RuleBook,
    RuleOverride,
    Series,
    applied_offset,
    clean,
)
from telemetra.ingest.decode import decode
from telemetra.ingest.routes import DEFAULT_ROUTES, Route, match
from telemetra.model import (
    US_PER_S,
    Decoded,
    Device,
    Reading,
    Reason,
    Rejection,
    valid_device_uid,
)
from telemetra.store.catalog import DeviceRegistry, MetricIds
from telemetra.store.database import database_unavailable
from telemetra.store.schema import latest, metric_rules, metrics
from telemetra.store.write import (
    add_dead_letters,
    add_quality_counts,
    assigned_times,
    dead_letter_row,
    forget_event_times,
    payload_digest,
    remember_event_times,
    touch_devices,
    write_readings,
)

log = structlog.get_logger("telemetra.pipeline")

DEADLETTER_TOPIC = "telemetra/deadletter"
T = TypeVar("T")
# Preparing a batch is CPU work with no I/O; it pauses every so many messages so that the
# commit running beside it is not kept waiting for the event loop.
YIELD_EVERY = 100
_UNSEEN = object()
RULES_REFRESH_S = 30.0  # stored cleaning rules are re-read this often
# Assigned event times are needed only while a redelivery can still come: the ingest
# session's broker queue lives 7 days (see ``mqtt.SESSION_EXPIRY_S``).
EVENT_TIMES_KEEP_US = 7 * 24 * 3600 * US_PER_S
EVENT_TIMES_PURGE_S = 3600.0


@dataclass(slots=True)
class Message:
    """One unit of input: an MQTT message, an HTTP body or a line of a file."""

    topic: str
    payload: bytes
    received_at: int
    source: str = "mqtt"
    redelivered: bool = False  # the transport says this may be a redelivery (MQTT DUP)
    handle: Any = None  # what the transport needs to acknowledge it
    device: str | None = None  # set by authenticated transports instead of a topic route
    fmt: str = "native"  # format when ``device`` is set


@dataclass(slots=True)
class Outcome:
    """What became of one message, reported back to its source after commit."""

    message: Message
    device: str | None = None
    tenant_id: int | None = None
    ack_topic: str | None = None
    accepted: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)

    def ack_payload(self) -> bytes:
        """The ack-topic message of the contract."""
        return orjson.dumps(
            {
                "accepted": self.accepted,
                "rejected": [
                    {"index": r.index, "reason": str(r.reason), "metric": r.metric,
                     "detail": r.detail}
                    for r in self.rejected
                ],
                "event_ids": self.event_ids,
            }
        )  # fmt: skip


@dataclass(slots=True)
class Committed:
    """Readings stored by one batch, for live views and alert rules (the fan-out)."""

    tenant_id: int
    device: str
    reading: Reading


Listener = Callable[[list[Outcome], list[Committed]], Awaitable[None]]


def deadletter_payload(outcome: Outcome, rejection: Rejection, cap: int) -> bytes:
    """The JSON published on ``telemetra/deadletter`` for one rejection."""
    raw = outcome.message.payload[:cap]
    return orjson.dumps(
        {
            "device": outcome.device,
            "topic": outcome.message.topic,
            "source": outcome.message.source,
            "reason": str(rejection.reason),
            "detail": rejection.detail,
            "index": rejection.index,
            "metric": rejection.metric,
            "received_at": outcome.message.received_at,
            "payload": raw.decode("utf-8", "replace"),
            "payload_size": len(outcome.message.payload),
        }
    )


# Ingest allocates many short-lived objects (decoded payloads, readings, rows) that the
# cyclic collector kept scanning: it took a third of the worker's CPU, full collections up
# to 362 ms (profiled). Reference counting frees these; cycles are rare.
GC_THRESHOLDS = (50_000, 50, 100)


def tune_gc() -> None:
    """Move start-up objects out of the collector's view and collect less often.

    Call once start-up is done (imports, engine, app), before taking traffic.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class UnknownDeviceWarning:
    """Warns about messages from unregistered devices: at once, then at most every minute.

    Each warning counts the messages rejected since the last one and names a few devices and
    the fix, so that a fleet nobody registered shows in the log, not only in dead letters.
    """

    EXAMPLES = 5

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self._next_at = -math.inf
        self._messages = 0
        self._devices: dict[str, None] = {}  # an insertion-ordered set

    def add(self, uids: Sequence[str]) -> None:
        """Count rejected messages (one uid each) and warn if a warning is due."""
        if not uids:
            return
        self._messages += len(uids)
        for uid in uids:
            if len(self._devices) >= 1000:
                break
            self._devices.setdefault(uid, None)
        now = self.clock()
        if now < self._next_at:
            return
        log.warning(
            "messages from unregistered devices rejected (unknown_device)",
            messages=self._messages,
            devices=len(self._devices),
            examples=list(self._devices)[: self.EXAMPLES],
            fix="register them: `telemetra device create <id>` (simulated fleets: "
            "`telemetra sim --register`), or run ingest with TELEMETRA_AUTO_REGISTER=true",
        )
        self._next_at = now + self.every_s
        self._messages = 0
        self._devices.clear()


class Abandoned(Exception):
    """Stopping while the database is unavailable: the batch stays unacknowledged."""


@dataclass(slots=True)
class _Work:
    """A message in flight through ``Pipeline.process``."""

    outcome: Outcome
    fmt: str = "native"
    rest: tuple[str, ...] = ()
    device: Device | None = None
    entries: list[Decoded] = field(default_factory=list)
    readings: list[Reading] = field(default_factory=list)
    counts: Mapping[str, int] = field(default_factory=dict)
    new_times: list[tuple[int, str, int]] = field(default_factory=list)  # to remember

    @property
    def message(self) -> Message:
        return self.outcome.message


@dataclass(slots=True)
class Prepared:
    """A batch ready to commit: rows keyed by (device, metric, time) and counts to add."""

    works: list[_Work]
    # (device, metric, time) -> (row to write, position in ``works``, reading)
    entries: dict[tuple[int, int, int], tuple[tuple[Any, ...], int, Reading]] = field(
        default_factory=dict
    )
    quality: Counter[tuple[int, int, str]] = field(default_factory=Counter)
    accepted: Counter[int] = field(default_factory=Counter)  # by position in ``works``
    extra: list[tuple[int, Rejection]] = field(default_factory=list)
    seen: dict[int, tuple[int, int | None]] = field(default_factory=dict)


class Pipeline:
    """Decode, clean and store batches of messages; the single writer path for readings."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        routes: Sequence[Route] = DEFAULT_ROUTES,
        rules: RuleBook | None = None,
        *,
        feed_alerts: bool = True,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.routes = tuple(routes)
        self.rules = rules or RuleBook()
        self._rules_fixed = rules is not None  # given by the caller: not reloaded
        self._rules_loaded_at = -RULES_REFRESH_S
        self.policy = Policy(
            max_future_skew_us=int(settings.max_future_skew_s * US_PER_S),
            late_after_us=int(settings.late_after_s * US_PER_S),
            clock_correct_after_us=int(settings.clock_correct_after_s * US_PER_S),
        )
        self.devices = DeviceRegistry()
        self.metric_ids = MetricIds()
        self.states: dict[int, DeviceState] = {}
        self.listeners: list[Listener] = []
        self.default_zone = ZoneInfo(settings.default_timezone)
        self._zones: dict[str | None, tzinfo] = {}
        # Times assigned to events without a device timestamp, including batches not yet
        # committed, so a redelivery inside that window maps to the same key too.
        self._recent_times: OrderedDict[tuple[int, str], int] = OrderedDict()
        self.stats: Counter[str] = Counter()
        self._topics: dict[str, Any] = {}  # topic -> RouteMatch | None: topics repeat
        self.timings: defaultdict[str, float] = defaultdict(float)  # seconds per phase
        self.stopping = asyncio.Event()  # set: give up waiting for the database
        self.unknown_devices = UnknownDeviceWarning()
        # Committed readings that enabled alert rules watch, fed to the worker in the same
        # transaction (None: not evaluated, e.g. a history import).
        self.alert_feed: AlertFeed | None = AlertFeed() if feed_alerts else None

    # -- one batch ------------------------------------------------------------------------

    async def process(self, messages: Sequence[Message]) -> list[Outcome]:
        """Store one batch; returns an outcome per message once it is committed.

        Raises when the database is unavailable or refuses the batch.
        """
        return await self.commit(await self.prepare(messages))

    async def prepare(self, messages: Sequence[Message]) -> Prepared:
        """Route, decode and clean a batch (reads the database, writes only new names).

        Cleaning, which moves each device's state forward, comes last: when a lookup fails
        the whole call can be retried without counting anything twice.
        """
        await self._refresh_rules()
        works = [self._route(m) for m in messages]
        await self._resolve_devices(works)
        for i, work in enumerate(works):
            if work.device is not None:
                self._decode(work)
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)  # let the previous batch's commit move on
        await self._load_states({w.device.id: w.device for w in works if w.device is not None})
        await self._assign_event_times(works)
        await self.metric_ids.resolve(
            self.engine, {r.metric for w in works for e in w.entries for r in e.readings}
        )
        for i, work in enumerate(works):
            if work.device is not None:
                self._clean(work)
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
        return self._assemble(works)

    async def _refresh_rules(self) -> None:
        """Re-read ``metric_rules`` now and then, so `telemetra rule set` needs no restart."""
        if self._rules_fixed or time.monotonic() - self._rules_loaded_at < RULES_REFRESH_S:
            return
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(metric_rules))
            overrides = {
                (row.tenant_id, row.metric, row.device_type): RuleOverride(
                    row.min_value, row.max_value, row.unit, row.kind
                )
                for row in rows
            }
        self.rules = RuleBook(overrides)
        self._rules_loaded_at = time.monotonic()

    def _route(self, message: Message) -> _Work:
        outcome = Outcome(message)
        work = _Work(outcome)
        if message.device is not None:
            outcome.device, work.fmt = message.device, message.fmt
            return work
        found = self._topics.get(message.topic, _UNSEEN)
        if found is _UNSEEN:
            if len(self._topics) > 200_000:
                self._topics.clear()
            found = self._topics[message.topic] = match(self.routes, message.topic)
        if found is None:
            outcome.rejected.append(
                Rejection(Reason.UNKNOWN_ROUTE, f"no route matches topic {message.topic!r}")
            )
            return work
        outcome.device, outcome.ack_topic = found.device, found.ack_topic
        work.fmt, work.rest = found.route.format, found.rest
        return work

    async def _resolve_devices(self, works: list[_Work]) -> None:
        uids = set()
        for work in works:
            uid = work.outcome.device
            if uid is None:
                continue
            if not valid_device_uid(uid):
                work.outcome.rejected.append(
                    Rejection(
                        Reason.UNKNOWN_DEVICE,
                        f"invalid device id {uid[:64]!r}: 1–128 printable characters "
                        "without '/', '+', '#', ':'",
                    )
                )
                work.outcome.device = None
            else:
                uids.add(uid)
        known = await self.devices.lookup(self.engine, uids)
        if self.settings.auto_register and uids - known.keys():
            known |= await self.devices.register(self.engine, uids - known.keys())
        for work in works:
            uid = work.outcome.device
            if uid is None:
                continue
            device = known.get(uid)
            if device is None:
                work.outcome.rejected.append(
                    Rejection(
                        Reason.UNKNOWN_DEVICE,
                        f"device {uid!r} is not registered (or disabled); create it with "
                        "`telemetra device create` or enable TELEMETRA_AUTO_REGISTER",
                    )
                )
            else:
                work.device = device
                work.outcome.tenant_id = device.tenant_id

    def _zone(self, device: Device) -> tzinfo:
        name = device.timezone or self.devices.tenant_zones.get(device.tenant_id)
        zone = self._zones.get(name)
        if zone is None:
            try:
                zone = ZoneInfo(name) if name else self.default_zone
            except (ValueError, KeyError):
                zone = self.default_zone
            self._zones[name] = zone
        return zone

    def _decode(self, work: _Work) -> None:
        assert work.device is not None
        message = work.message
        result = decode(
            work.fmt,
            work.device.uid,
            message.payload,
            message.received_at,
            self._zone(work.device),
            work.rest,
            self.settings.max_payload_bytes,
        )
        work.entries = result.entries
        work.outcome.rejected.extend(result.rejections)

    async def _load_states(self, devices: dict[int, Device]) -> None:
        """Start the cleaning state of devices new to this process from what is stored.

        Latest values feed out-of-order and counter checks; the stored clock offset is
        trusted again at once, so a restart does not pause a device's correction.
        """
        new = devices.keys() - self.states.keys()
        if not new:
            return
        for device_id in new:
            state = self.states[device_id] = DeviceState()
            stored_offset = devices[device_id].clock_offset_us
            if stored_offset is not None:
                state.offset_us, state.offset_stable = stored_offset, True
                state.applied_us = applied_offset(state, self.policy)
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(latest.c.device_id, metrics.c.name, latest.c.ts, latest.c.value)
                .join(metrics, metrics.c.id == latest.c.metric_id)
                .where(latest.c.device_id.in_(new))
            )
            for device_id, name, ts, value in rows:
                state = self.states[device_id]
                state.series[name] = Series(ts, value)
                state.last_ts = ts if state.last_ts is None else max(state.last_ts, ts)

    async def _assign_event_times(self, works: list[_Work]) -> None:
        """Give entries without a device time the time first assigned to their event.

        Entries with an ``event_id`` are always looked up; entries without one get a key
        from the payload's hash, looked up only when the transport flags a redelivery, so
        two genuinely equal messages a minute apart stay two readings.
        """
        wanted: list[tuple[_Work, Decoded, tuple[int, str], bool]] = []
        for work in works:
            if work.device is None:
                continue
            for entry in work.entries:
                if entry.has_device_time:
                    continue
                if entry.event_id is not None:
                    key, look = (work.device.id, entry.event_id), True
                else:
                    digest = hashlib.blake2b(work.message.payload, digest_size=12).hexdigest()
                    key = (work.device.id, f"#{digest}:{entry.index}")
                    look = work.message.redelivered
                wanted.append((work, entry, key, look))
        if not wanted:
            return
        lookup = [k for _, _, k, look in wanted if look and k not in self._recent_times]
        stored: dict[tuple[int, str], int] = {}
        if lookup:
            async with self.engine.connect() as conn:
                stored = await assigned_times(conn, lookup)
        for work, entry, key, look in wanted:
            ts = self._recent_times.get(key) if look else None
            if ts is None and look:
                ts = stored.get(key)
            if ts is None:
                ts = work.message.received_at
                work.new_times.append((key[0], key[1], ts))
            self._recent_times[key] = ts
            self._recent_times.move_to_end(key)
            for reading in entry.readings:
                reading.ts = ts
        while len(self._recent_times) > 100_000:
            self._recent_times.popitem(last=False)

    def _clean(self, work: _Work) -> None:
        assert work.device is not None
        accepted, rejected, counts = clean(
            work.entries,
            work.device.type,
            self.states[work.device.id],
            self.rules,
            work.message.received_at,
            self.policy,
            work.device.tenant_id,
        )
        work.readings = accepted
        work.outcome.rejected.extend(rejected)
        work.outcome.event_ids = [e.event_id for e in work.entries if e.event_id is not None]
        self.stats.update(counts)
        work.counts = counts

    def _assemble(self, works: list[_Work]) -> Prepared:
        """The rows to write and the counts to add, keyed and deduplicated (pure CPU work)."""
        ids = self.metric_ids.ids
        batch = Prepared(works)
        entries, quality = batch.entries, batch.quality
        for position, work in enumerate(works):
            device = work.device
            if device is None:
                continue
            state = self.states[device.id]
            batch.seen[device.id] = (
                max(batch.seen.get(device.id, (0, None))[0], work.message.received_at),
                state.offset_us if state.offset_stable else None,
            )
            q = (device.tenant_id, device.id)
            quality[(*q, "messages")] += 1
            for name, n in work.counts.items():
                quality[(*q, name)] += n
            received_at, tenant_id, device_id = work.message.received_at, *q
            fresh = 0  # accepted unless the database already has them (see ``commit``)
            for reading in work.readings:
                metric_id = ids[reading.metric]
                key = (device_id, metric_id, reading.ts)
                earlier = entries.get(key)
                if earlier is None:
                    row = (
                        tenant_id, device_id, metric_id, reading.ts, reading.value,
                        reading.text, received_at, reading.flags, reading.ts_device,
                    )  # fmt: skip
                    entries[key] = (row, position, reading)
                    fresh += 1
                elif earlier[0][4] == reading.value and earlier[0][5] == reading.text:
                    # Same key twice in one batch: first wins, as in the database.
                    quality[(*q, "duplicate")] += 1
                    batch.accepted[position] += 1
                else:
                    batch.extra.append((position, _conflict(reading, _conflict_detail(earlier[0]))))
            if fresh:
                batch.accepted[position] += fresh
                quality[(*q, "accepted")] += fresh
        return batch

    async def commit(self, batch: Prepared) -> list[Outcome]:
        """Write a prepared batch in one transaction: readings, rollups, quality, dead letters.

        Neither the batch nor its outcomes change before the commit succeeds, so a failed
        attempt can simply be retried.
        """
        works, entries = batch.works, batch.entries
        quality = batch.quality.copy()
        accepted = batch.accepted.copy()
        seen = batch.seen
        async with self.engine.begin() as conn:
            result = await write_readings(conn, [entry[0] for entry in entries.values()])
            db_conflicts = []
            for old in result.existing:  # stored before: a duplicate or a conflict
                row, position, reading = entries[old.device_id, old.metric_id, old.ts]
                quality[(row[0], row[1], "accepted")] -= 1
                if old.same:
                    quality[(row[0], row[1], "duplicate")] += 1
                else:
                    accepted[position] -= 1
                    db_conflicts.append((position, _conflict(reading, None)))
            rejected: dict[int, list[Rejection]] = {
                i: list(w.outcome.rejected) for i, w in enumerate(works)
            }
            for position, rejection in batch.extra + db_conflicts:
                rejected[position].append(rejection)
            letters = []
            counters: list[tuple[int, int, str] | None] = []  # quality counter per letter
            cap = self.settings.deadletter_payload_bytes
            for position, work in enumerate(works):
                if not rejected[position]:
                    continue
                outcome = work.outcome
                digest = payload_digest(outcome.message.payload)
                equal: Counter[tuple[str, int | None, str | None]] = Counter()
                for rejection in rejected[position]:
                    counter = None
                    if work.device is not None:
                        name = (
                            "conflict"
                            if rejection.reason == Reason.CONFLICT
                            else f"rejected:{rejection.reason}"
                        )
                        counter = (work.device.tenant_id, work.device.id, name)
                    same = (str(rejection.reason), rejection.index, rejection.metric)
                    letters.append(
                        dead_letter_row(
                            tenant_id=outcome.tenant_id,
                            device_uid=outcome.device,
                            source=outcome.message.source,
                            topic=outcome.message.topic,
                            reason=str(rejection.reason),
                            detail=_sanitize(rejection.detail),
                            entry_index=rejection.index,
                            metric=rejection.metric,
                            payload=outcome.message.payload,
                            received_at=outcome.message.received_at,
                            cap=cap,
                            digest=digest,
                            ordinal=equal[same],
                        )
                    )
                    counters.append(counter)
                    equal[same] += 1
            await remember_event_times(conn, [t for w in works for t in w.new_times])
            new = await add_dead_letters(conn, letters)
            # A dead letter already stored (a redelivery, a file imported again, a replay
            # rejected again) is counted once, like a reading stored twice.
            known: Counter[str] = Counter()
            for letter, counter in zip(letters, counters, strict=True):
                fresh = letter["fingerprint"] in new
                new.discard(letter["fingerprint"])
                if not fresh:
                    known[letter["reason"]] += 1
                if counter is not None:
                    quality[counter if fresh else (*counter[:2], "duplicate_rejection")] += 1
            await add_quality_counts(conn, dict(quality))
            await touch_devices(conn, seen)
            committed = self._committed(works, entries, result.existing)
            if self.alert_feed is not None:
                await self.alert_feed.write(
                    conn, committed, _device_counts(works, accepted, rejected)
                )

        for position, work in enumerate(works):
            work.outcome.accepted += accepted[position]
            work.outcome.rejected = rejected[position]
        self.stats["messages"] += len(works)
        self.stats["readings"] += result.inserted
        self.stats["rejections"] += len(letters) - known.total()
        self.stats["duplicate_rejections"] += known.total()
        self.unknown_devices.add(
            [
                w.outcome.device
                for w in works
                if w.device is None
                and w.outcome.device is not None
                and any(r.reason == Reason.UNKNOWN_DEVICE for r in w.outcome.rejected)
            ]
        )
        for source, n in Counter(w.message.source for w in works).items():
            prometheus.MESSAGES.labels(source).inc(n)
        prometheus.READINGS.inc(result.inserted)
        for reason, n in (Counter(letter["reason"] for letter in letters) - known).items():
            prometheus.REJECTIONS.labels(reason).inc(n)
        for reason, n in known.items():
            prometheus.DUPLICATE_REJECTIONS.labels(reason).inc(n)
        outcomes = [w.outcome for w in works]
        if self.listeners:
            for listener in self.listeners:
                try:
                    await listener(outcomes, committed)
                except Exception:  # a listener must never undo or block ingest
                    log.exception("fan-out listener failed")
        return outcomes

    def _committed(
        self,
        works: list[_Work],
        entries: dict[tuple[int, int, int], tuple[tuple[Any, ...], int, Reading]],
        existing: Sequence[Any],
    ) -> list[Committed]:
        """The readings this batch stored (not those stored before), for the fan-out."""
        if not self.listeners and self.alert_feed is None:
            return []
        stored_before = {(e.device_id, e.metric_id, e.ts) for e in existing}
        return [
            Committed(row[0], works[position].outcome.device or "", reading)
            for key, (row, position, reading) in entries.items()
            if key not in stored_before
        ]

    # -- the loop ---------------------------------------------------------------------------

    async def _retrying(self, step: Callable[[], Awaitable[T]], size: int) -> T:
        """Run ``step`` until it succeeds or fails for a reason other than availability."""
        delay = 0.2
        while True:
            try:
                return await step()
            except Exception as error:
                if not database_unavailable(error):
                    raise
                if self.stopping.is_set():
                    raise Abandoned(f"stopping with {size} messages not stored") from error
                self.stats["db_retries"] += 1
                prometheus.DB_RETRIES.inc()
                log.warning(
                    "database unavailable; holding the batch and retrying",
                    messages=size, retry_in_s=round(delay, 1), error=str(error)[:200],
                )  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                delay = min(delay * 2, 10.0)

    async def process_until_stored(self, messages: Sequence[Message]) -> list[Outcome]:
        """``process`` that waits out database outages (retry with backoff)."""
        return await self.commit_until_stored(await self.prepare_until_ready(messages))

    async def prepare_until_ready(self, messages: Sequence[Message]) -> Prepared:
        """``prepare``, retried while the database is unavailable."""
        started = time.perf_counter()
        works = await self._retrying(lambda: self.prepare(messages), len(messages))
        self.timings["prepare_s"] += time.perf_counter() - started
        return works

    async def commit_until_stored(self, batch: Prepared) -> list[Outcome]:
        """``commit``, retried while the database is unavailable.

        A batch the database refuses for its content (not its availability) is split, so one
        poisonous message is dead-lettered instead of blocking everything behind it.
        """
        started = time.perf_counter()
        try:
            outcomes = await self._retrying(lambda: self.commit(batch), len(batch.works))
            self.timings["commit_s"] += time.perf_counter() - started
            prometheus.BATCH_SECONDS.observe(time.perf_counter() - started)
            self.timings["batches"] += 1
            return outcomes
        except Abandoned:
            raise
        except Exception as error:
            works = batch.works
            if len(works) > 1:
                middle = len(works) // 2
                return [
                    *await self.commit_until_stored(self._assemble(works[:middle])),
                    *await self.commit_until_stored(self._assemble(works[middle:])),
                ]
            work = works[0]
            log.error("message refused by the database", topic=work.message.topic, error=str(error))
            work.readings = []
            work.outcome.rejected.append(
                Rejection(Reason.BAD_VALUE, f"refused by the database: {str(error)[:300]}")
            )
            alone = self._assemble(works)
            return await self._retrying(lambda: self.commit(alone), 1)

    async def _purge_event_times(self, stop: asyncio.Event) -> None:
        """Forget assigned event times older than any redelivery can be, once an hour."""
        while not stop.is_set():
            cutoff = time.time_ns() // 1000 - EVENT_TIMES_KEEP_US
            try:
                async with self.engine.begin() as conn:
                    gone = await forget_event_times(conn, cutoff)
                if gone:
                    log.info("forgot old assigned event times", rows=gone)
            except Exception as error:  # never worth stopping ingest for
                log.warning("could not purge assigned event times", error=str(error)[:200])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), EVENT_TIMES_PURGE_S)

    async def run(
        self,
        inbox: Inbox,
        done: Callable[[list[Outcome]], None],
        stop: asyncio.Event,
        max_wait_s: float | None = None,
    ) -> None:
        """Take batches from ``inbox`` until ``stop`` is set; ``done`` acknowledges them.

        The next batch is decoded and cleaned while the previous one is being committed.
        On stop, what was received is stored first — unless the database is unavailable:
        then it is left unacknowledged, for the broker to deliver again.
        """
        self.stopping = stop
        max_wait = self.settings.batch_max_wait_ms / 1000 if max_wait_s is None else max_wait_s
        prepared: asyncio.Queue[Prepared | None] = asyncio.Queue(maxsize=1)

        async def writer() -> None:
            while (batch := await prepared.get()) is not None:
                done(await self.commit_until_stored(batch))

        writing = asyncio.create_task(writer())
        purging = asyncio.create_task(self._purge_event_times(stop))
        try:
            while not (stop.is_set() and not len(inbox)):
                batch = await inbox.take(self.settings.batch_max_messages, max_wait, stop)
                if batch:
                    handing = asyncio.ensure_future(
                        prepared.put(await self.prepare_until_ready(batch))
                    )
                    await asyncio.wait({handing, writing}, return_when=asyncio.FIRST_COMPLETED)
                    if not handing.done():
                        handing.cancel()
                if writing.done():
                    break
        except Abandoned as reason:
            log.warning("unacknowledged messages left for redelivery", reason=str(reason))
        finally:
            purging.cancel()
            while not writing.done():
                try:
                    prepared.put_nowait(None)
                    break
                except asyncio.QueueFull:
                    await asyncio.wait({writing}, timeout=0.1)
            try:
                await writing
            except Abandoned as reason:
                log.warning("unacknowledged messages left for redelivery", reason=str(reason))


def _device_counts(
    works: Sequence[_Work], accepted: Counter[int], rejected: dict[int, list[Rejection]]
) -> list[DeviceCounts]:
    """Per device of the batch: messages accepted and rejected, the latest receive time."""
    by_device: dict[tuple[int, str], list[int]] = {}
    for position, work in enumerate(works):
        device = work.device
        if device is None:
            continue
        counts = by_device.setdefault((device.tenant_id, device.uid), [0, 0, 0])
        counts[0] = max(counts[0], work.message.received_at)
        if rejected[position]:  # a message with any value rejected counts as rejected
            counts[2] += 1
        else:
            counts[1] += 1
    return [DeviceCounts(t, uid, *c) for (t, uid), c in by_device.items()]


def _conflict(reading: Reading, detail: str | None) -> Rejection:
    return Rejection(
        Reason.CONFLICT, detail or "a different value is already stored", metric=reading.metric
    )


def _conflict_detail(row: tuple[Any, ...]) -> str:
    shown = row[4] if row[5] is None else repr(row[5][:40])
    return f"another value ({shown}) arrived for the same time in this batch; first kept"


def _sanitize(text: str) -> str:
    return text.replace("\x00", "\\0").encode("utf-8", "replace").decode("utf-8")


class Inbox:
    """The bounded queue between a source and the pipeline, on the pipeline's event loop.

    The pipeline is woken only when a batch fills or the first message of a batch arrives,
    not per message. A source stops reading while the inbox is ``full()`` and resumes when
    ``on_drained`` tells it there is room: backpressure down to the TCP connection.
    """

    def __init__(self, limit: int, batch: int) -> None:
        self._items: deque[Message] = deque()
        self._limit = limit
        self._batch = batch
        self._arrived = asyncio.Event()
        self._filled = asyncio.Event()
        self.on_drained: Callable[[], None] | None = None  # room again: resume reading

    def __len__(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        """True when the source should stop reading until ``on_drained``."""
        return len(self._items) >= self._limit

    def put(self, message: Message) -> None:
        """Queue a message (never blocks; the source checks ``full()``)."""
        self._items.append(message)
        n = len(self._items)
        if n == 1:
            self._arrived.set()
        if n == self._batch:
            self._filled.set()

    async def take(self, most: int, max_wait: float, stop: asyncio.Event) -> list[Message]:
        """Up to ``most`` messages: as soon as that many wait, or ``max_wait`` s after one."""
        if not self._items:
            self._arrived.clear()
            waiter = asyncio.ensure_future(self._arrived.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
        if len(self._items) < most:
            self._filled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._filled.wait(), max_wait)
        batch = [self._items.popleft() for _ in range(min(most, len(self._items)))]
        prometheus.QUEUE_DEPTH.set(len(self._items))
        if self.on_drained is not None:
            self.on_drained()
        return batch
