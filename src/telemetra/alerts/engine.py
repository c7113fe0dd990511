"""The alert engine: the worker's evaluation of the feed and of the passing time.

``evaluate_feed`` takes committed readings from the alert feed (see ``alerts.feed``) once they
have settled for ``SETTLE_US``, runs them through the pure evaluation (``alerts.evaluate``)
against each series' stored state, and in one transaction opens, resolves or marks alerts (their
notifications go to the outbox in that same transaction), saves the states and deletes the feed
rows. ``tick`` does what time alone decides:
``for`` durations and silences (``no_data``) that end without a new reading. Both hand back the
live frames of the alert changes, for the caller to publish once the transaction is committed.

The states read for a batch come from the database, not from memory, so a change made beside
the engine (a rule edited, an alert resolved by hand) is seen at once. For ``tick`` the engine
keeps a copy of the states it may have to advance, reloaded every ``RELOAD_S``; a series whose
tick yields a change is re-read and re-judged before anything is written.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from telemetra.alerts import feed, store
from telemetra.alerts.evaluate import (
    Event,
    Point,
    QualitySample,
    SeriesState,
    observe,
    observe_quality,
    tick,
)
from telemetra.alerts.rules import NoDataCondition, RejectionRate, Rule, applies_to
from telemetra.store.catalog import now_us
from telemetra.store.schema import alert_rules, alert_series_state, devices

log = structlog.get_logger("telemetra.alerts")

RELOAD_S = 30.0
# Feed rows are evaluated once they are this old: the batches that several ingest processes
# commit within it are evaluated together, in event-time order, instead of one batch's
# readings making the other's late.
SETTLE_US = 50_000
# Readings per evaluation transaction, about (whole feed rows): few while the feed keeps up, so a
# new alert never waits behind a long evaluation; many through a backlog, where saving each
# series' state once per transaction rather than once per batch is what keeps up.
BATCH_READINGS = 2000
BACKLOG_READINGS = 50_000
KEY_CHUNK = 500
Frame = dict[str, Any]
SeriesKey = tuple[int, str, str]  # (rule id, device, metric or '')


@dataclass(frozen=True, slots=True)
class Watcher:
    """An enabled rule, parsed."""

    stored: store.StoredRule
    rule: Rule


@dataclass(slots=True)
class DeviceInfo:
    tenant_id: int
    uid: str
    type: str | None
    tags: tuple[str, ...]
    last_seen: int | None
    clock_offset_us: int | None


@dataclass(slots=True)
class Outcome:
    """What one evaluation did: alert changes (as live frames, per tenant) and counts."""

    frames: dict[int, list[Frame]] = field(default_factory=dict)
    rows: int = 0  # feed rows evaluated
    readings: int = 0
    events: int = 0

    def add_frame(self, tenant_id: int, event: str, alert: store.Alert) -> None:
        frame = {"type": "alert", "event": event, "alert": store.alert_json(alert)}
        self.frames.setdefault(tenant_id, []).append(frame)


def _tags(meta: Any) -> tuple[str, ...]:
    tags = meta.get("tags") if isinstance(meta, dict) else None
    return tuple(str(t) for t in tags) if isinstance(tags, list) else ()


def _needs_tick(rule: Rule, s: SeriesState) -> bool:
    """Whether time alone can change the series: something is waiting for a clock."""
    if isinstance(rule.condition, NoDataCondition) and not s.raw and s.last_us is not None:
        return True
    if s.pending_us is not None or (s.open and s.clear_us is not None):
        return True
    return isinstance(rule.condition, RejectionRate) and s.raw


class Engine:
    """Evaluation of enabled rules for every tenant (one active worker runs it)."""

    def __init__(
        self, db: AsyncEngine, clock: Any = time.monotonic, settle_us: int = SETTLE_US
    ) -> None:
        self.db = db
        self.settle_us = settle_us
        self.watchers: dict[int, Watcher] = {}
        self.devices: dict[str, DeviceInfo] = {}
        self.states: dict[SeriesKey, SeriesState] = {}  # for tick: reloaded every RELOAD_S
        self._clock = clock
        self._reloaded_at: float | None = None
        self._bad_rules: set[tuple[int, int]] = set()  # (id, updated_at) already reported

    # -- what to evaluate ----------------------------------------------------------------------

    async def _load_rules(self, conn: AsyncConnection) -> None:
        r = alert_rules.c
        rows = await conn.execute(select(alert_rules).where(r.enabled.is_(True)))
        watchers: dict[int, Watcher] = {}
        for row in rows:
            stored = store._rule(row)
            try:
                rule = Rule.model_validate(stored.definition)
            except ValidationError as error:  # stored by an older version: say so once
                if (stored.id, stored.updated_at) not in self._bad_rules:
                    self._bad_rules.add((stored.id, stored.updated_at))
                    log.error("alert rule cannot be evaluated", rule=stored.name, error=str(error))
                continue
            watchers[stored.id] = Watcher(stored, rule)
        self.watchers = watchers

    async def _load_devices(self, conn: AsyncConnection, uids: Iterable[str] | None = None) -> None:
        d = devices.c
        query = select(
            d.tenant_id, d.uid, d.type, d.metadata, d.last_seen, d.clock_offset_us
        ).where(d.status == "active")
        wanted = None if uids is None else sorted(set(uids))
        if wanted is not None:
            if not wanted:
                return
            query = query.where(d.uid.in_(wanted))
        found = {
            str(uid): DeviceInfo(int(t), str(uid), type_, _tags(meta), seen, offset)
            for t, uid, type_, meta, seen, offset in await conn.execute(query)
        }
        if wanted is None:
            self.devices = found
        else:
            for uid in wanted:
                if uid in found:
                    self.devices[uid] = found[uid]
                else:
                    self.devices.pop(uid, None)

    def _watches(self, w: Watcher, tenant_id: int, device: str) -> bool:
        info = self.devices.get(device)
        if w.stored.tenant_id != tenant_id or info is None or info.tenant_id != tenant_id:
            return False
        return applies_to(w.rule.scope, device, info.type, info.tags)

    async def _reload_if_due(self, conn: AsyncConnection) -> None:
        at = self._clock()
        if self._reloaded_at is not None and at - self._reloaded_at < RELOAD_S:
            return
        await self._load_devices(conn)
        ids = sorted(self.watchers)
        stored = await store.load_series_state(conn, ids)
        states: dict[SeriesKey, SeriesState] = {}
        for (rule_id, device, metric), data in stored.items():
            w = self.watchers.get(rule_id)
            state = _state(data)
            if w is not None and state is not None and _needs_tick(w.rule, state):
                states[(rule_id, device, metric or "")] = state
        self.states = states
        self._reloaded_at = at

    # -- the feed ------------------------------------------------------------------------------

    async def evaluate_feed(self, limit: int = 100, most: int = BATCH_READINGS) -> Outcome:
        """Evaluate the oldest feed rows in one transaction; what changed."""
        outcome = Outcome()
        async with self.db.begin() as conn:
            cutoff = now_us() - self.settle_us
            rows = await feed.take(conn, limit, before=cutoff, most=most)
            if not rows:
                return outcome
            await self._load_rules(conn)
            uids = {p[0] for r in rows for p in r.body.get("p", ())}
            uids |= {q[0] for r in rows for q in r.body.get("q", ())}
            await self._load_devices(conn, uids)
            points, samples = _inputs(rows)
            outcome.rows, outcome.readings = len(rows), len(points)
            jobs = self._jobs(points, samples)
            states = await _states_of(conn, {key for key, _, _ in jobs})
            changed: dict[SeriesKey, SeriesState] = {}
            for key, w, item in jobs:
                before = states.get(key) or SeriesState()
                if isinstance(item, Point):
                    after, events = observe(w.rule, before, item)
                else:
                    device = self.devices.get(item.device)
                    offset = None if device is None else device.clock_offset_us
                    sample = QualitySample(
                        item.device, item.time_us, item.accepted, item.rejected, offset
                    )
                    after, events = observe_quality(w.rule, before, sample)
                if after is not before:
                    states[key] = changed[key] = after
                for event in events:
                    await _apply(conn, w, event, outcome)
            await self._save(conn, changed)
            await feed.done(conn, rows)
        return outcome

    def _jobs(
        self, points: Sequence[tuple[int, Point]], samples: Sequence[tuple[int, QualitySample]]
    ) -> list[tuple[SeriesKey, Watcher, Point | QualitySample]]:
        """(series, rule, input) for every input some rule watches, in event-time order."""
        by_metric: dict[tuple[int, str | None], list[Watcher]] = {}  # None: every metric
        quality: dict[int, list[Watcher]] = {}
        for w in self.watchers.values():
            tenant_id = w.stored.tenant_id
            if w.rule.kind == "quality":
                quality.setdefault(tenant_id, []).append(w)
            else:
                by_metric.setdefault((tenant_id, w.rule.metric), []).append(w)
        scoped: dict[tuple[int, str], bool] = {}  # (rule id, device): in the rule's scope

        def watches(w: Watcher, tenant_id: int, device: str) -> bool:
            key = (w.stored.id, device)
            found = scoped.get(key)
            if found is None:
                found = scoped[key] = self._watches(w, tenant_id, device)
            return found

        jobs: list[tuple[SeriesKey, Watcher, Point | QualitySample]] = []
        for tenant_id, point in points:
            for metric in (point.metric, None):
                for w in by_metric.get((tenant_id, metric), ()):
                    if watches(w, tenant_id, point.device):
                        key = (w.stored.id, point.device, w.rule.series_metric)
                        jobs.append((key, w, point))
        for tenant_id, sample in samples:
            for w in quality.get(tenant_id, ()):
                if watches(w, tenant_id, sample.device):
                    jobs.append(((w.stored.id, sample.device, ""), w, sample))
        return jobs

    async def _save(self, conn: AsyncConnection, changed: dict[SeriesKey, SeriesState]) -> None:
        rows = []
        for key, state in changed.items():
            w = self.watchers[key[0]]
            rows.append((w.stored.tenant_id, (key[0], key[1], key[2] or None), state.to_dict()))
            if _needs_tick(w.rule, state):
                self.states[key] = state
            else:
                self.states.pop(key, None)
        await store.save_series_state(conn, rows)

    # -- the clock -----------------------------------------------------------------------------

    async def tick(self, now: int | None = None) -> Outcome:
        """What time alone decides by ``now``: fires and resolutions without a new reading."""
        now = now_us() if now is None else now
        outcome = Outcome()
        async with self.db.begin() as conn:
            await self._load_rules(conn)
            await self._reload_if_due(conn)
            await self._watch_silent_devices(conn, now)
            due = []
            for key, state in list(self.states.items()):
                w = self.watchers.get(key[0])
                if w is None:
                    del self.states[key]
                    continue
                _, events = tick(w.rule, state, now, key[1], key[2])
                if events:
                    due.append(key)
            if not due:
                return outcome
            fresh = await _states_of(conn, set(due))
            changed: dict[SeriesKey, SeriesState] = {}
            for key in due:
                w = self.watchers[key[0]]
                stored = fresh.get(key)
                if stored is None:
                    self.states.pop(key, None)
                    continue
                after, events = tick(w.rule, stored, now, key[1], key[2])
                changed[key] = after
                for event in events:
                    await _apply(conn, w, event, outcome)
            await self._save(conn, changed)
        return outcome

    async def _watch_silent_devices(self, conn: AsyncConnection, now: int) -> None:
        """Start the no_data series of devices in scope that have none: a device that never
        reports (again) is watched from its last message, or from now if it has none."""
        silent = [
            w for w in self.watchers.values() if isinstance(w.rule.condition, NoDataCondition)
        ]
        if not silent:
            return
        known = await _known_series(conn, [w.stored.id for w in silent])
        start: dict[SeriesKey, SeriesState] = {}
        for w in silent:
            metric = w.rule.series_metric
            for uid, info in self.devices.items():
                key = (w.stored.id, uid, metric)
                if key in known or not self._watches(w, info.tenant_id, uid):
                    continue
                since = info.last_seen if metric == "" and info.last_seen else now
                start[key] = SeriesState(last_us=min(since, now))
        if start:
            await self._save(conn, start)


# --- helpers ----------------------------------------------------------------------------------


def _state(data: dict[str, Any]) -> SeriesState | None:
    try:
        return SeriesState.from_dict(data)
    except (KeyError, TypeError, ValueError):
        return None  # an unknown version: the series starts over


def _inputs(
    rows: Sequence[feed.FeedRow],
) -> tuple[list[tuple[int, Point]], list[tuple[int, QualitySample]]]:
    """The feed rows' readings and quality samples, each in event-time order (rows from
    several ingest processes interleave)."""
    points = [
        (r.tenant_id, Point(str(d), str(m), int(t), None if v is None else float(v)))
        for r in rows
        for d, m, t, v in r.body.get("p", ())
    ]
    samples = [
        (r.tenant_id, QualitySample(str(d), int(t), int(a), int(j)))
        for r in rows
        for d, t, a, j in r.body.get("q", ())
    ]
    points.sort(key=lambda p: p[1].time_us)
    samples.sort(key=lambda s: s[1].time_us)
    return points, samples


async def _states_of(conn: AsyncConnection, keys: set[SeriesKey]) -> dict[SeriesKey, SeriesState]:
    """The stored state of these series (those without one are left out). Read by rules and
    devices (two short lists, not one long list of triples), keeping only the keys asked for."""
    s = alert_series_state.c
    found: dict[SeriesKey, SeriesState] = {}
    rule_ids = sorted({k[0] for k in keys})
    devices = sorted({k[1] for k in keys})
    for i in range(0, len(devices), KEY_CHUNK):
        query = select(s.rule_id, s.device, s.metric, s.state).where(
            s.rule_id.in_(rule_ids), s.device.in_(devices[i : i + KEY_CHUNK])
        )
        for rule_id, device, metric, data in await conn.execute(query):
            key = (int(rule_id), str(device), str(metric))
            if key in keys:
                state = _state(dict(data))
                if state is not None:
                    found[key] = state
    return found


async def _known_series(conn: AsyncConnection, rule_ids: list[int]) -> set[SeriesKey]:
    s = alert_series_state.c
    rows = await conn.execute(
        select(s.rule_id, s.device, s.metric).where(s.rule_id.in_(sorted(rule_ids)))
    )
    return {(int(r), str(d), str(m)) for r, d, m in rows}


async def _apply(conn: AsyncConnection, w: Watcher, event: Event, outcome: Outcome) -> None:
    """One evaluation event as an alert change (and its outbox rows)."""
    metric = event.metric or None
    outcome.events += 1
    if event.kind == "fired":
        alert, opened = await store.open_alert(
            conn, w.stored, event.device, metric, value=event.value, message=event.message,
            started_at=event.time_us,
        )  # fmt: skip
        if opened:
            outcome.add_frame(w.stored.tenant_id, "fired", alert)
        else:  # held open (flapping) or fired again: refresh what it says
            changed = await store.update_open_alert(
                conn, alert, value=event.value, message=event.message
            )
            if changed is not None:
                outcome.add_frame(w.stored.tenant_id, "updated", changed)
    elif event.kind == "resolved":
        resolved = await store.resolve_series(
            conn, w.stored, event.device, metric, at=event.time_us
        )
        if resolved is not None:
            outcome.add_frame(w.stored.tenant_id, "resolved", resolved)
    else:  # flapping: held firing, marked
        found = await store.open_alert(
            conn, w.stored, event.device, metric, value=event.value, message=event.message,
            started_at=event.time_us, flapping=True,
        )  # fmt: skip
        alert, opened = found
        changed = alert if opened else await store.update_open_alert(conn, alert, flapping=True)
        if changed is not None:
            outcome.add_frame(w.stored.tenant_id, "fired" if opened else "flapping", changed)
