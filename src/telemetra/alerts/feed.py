"""The alert feed: committed readings that enabled rules watch, from ingest to the worker.

Ingest writes one ``alert_feed`` row per batch and tenant *in the batch's own transaction*
(``AlertFeed.write``), so a reading that is stored is evaluated, whichever ingest process
stored it and whenever that process dies. The worker — one active at a time — takes rows in
id order (``take``) and deletes them in the transaction that saves what they changed
(``done``), so a worker killed halfway evaluates them again on restart; evaluation of a reading
already seen changes nothing (``evaluate.observe`` ignores late readings), so that is safe.
Every series is evaluated by that one worker: its state is never split between processes.

What is written is only what some enabled rule can use: the readings of the metrics the
tenant's rules name (every metric for a ``no_data`` rule without one) and, for tenants with
``quality`` rules, each device's accepted/rejected counts. A tenant without enabled rules costs
ingest one dictionary lookup per batch. Ingest learns of new or changed rules within
``REFRESH_S``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from telemetra.store.catalog import now_us
from telemetra.store.schema import alert_feed, alert_rules

if TYPE_CHECKING:
    from telemetra.ingest.pipeline import Committed

REFRESH_S = 2.0


@dataclass(slots=True)
class Watched:
    """What a tenant's enabled rules need from ingest."""

    metrics: set[str] = field(default_factory=set)
    every_metric: bool = False  # a no_data rule without a metric: any reading counts
    quality: bool = False

    def wants(self, metric: str) -> bool:
        return self.every_metric or metric in self.metrics


def watched_by(definitions: Iterable[tuple[int, dict[str, Any]]]) -> dict[int, Watched]:
    """Per tenant, what its enabled rules (tenant id, definition) watch."""
    found: dict[int, Watched] = {}
    for tenant_id, definition in definitions:
        watched = found.setdefault(tenant_id, Watched())
        kind, metric = definition.get("kind"), definition.get("metric")
        if kind == "quality":
            watched.quality = True
        elif metric:
            watched.metrics.add(str(metric))
        elif kind == "no_data":
            watched.every_metric = True
    return found


@dataclass(frozen=True, slots=True)
class DeviceCounts:
    """One device's messages in a batch: accepted, and rejected (any value rejected), at
    ``time_us`` (the latest receive time of its messages)."""

    tenant_id: int
    device: str
    time_us: int
    accepted: int
    rejected: int


class AlertFeed:
    """Ingest's side: which tenants' readings to feed, and the feed rows of a batch."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.watched: dict[int, Watched] = {}
        self._clock = clock
        self._loaded_at: float | None = None

    async def refresh(self, conn: AsyncConnection, *, force: bool = False) -> None:
        """Reload what the enabled rules watch, at most every ``REFRESH_S``."""
        at = self._clock()
        if not force and self._loaded_at is not None and at - self._loaded_at < REFRESH_S:
            return
        r = alert_rules.c
        rows = await conn.execute(select(r.tenant_id, r.definition).where(r.enabled.is_(True)))
        self.watched = watched_by((int(t), dict(d)) for t, d in rows)
        self._loaded_at = at

    def bodies(
        self, committed: Sequence[Committed], counts: Sequence[DeviceCounts]
    ) -> dict[int, dict[str, list[list[Any]]]]:
        """Per tenant, the feed body of a batch: ``p`` readings [device, metric, ts, value]
        (value None for text), ``q`` quality counts [device, time, accepted, rejected]."""
        watched = self.watched
        out: dict[int, dict[str, list[list[Any]]]] = {}
        if not watched:
            return out
        for item in committed:
            w = watched.get(item.tenant_id)
            reading = item.reading
            if w is not None and w.wants(reading.metric):
                body = out.setdefault(item.tenant_id, {"p": [], "q": []})
                body["p"].append([item.device, reading.metric, reading.ts, reading.value])
        for c in counts:
            w = watched.get(c.tenant_id)
            if w is not None and w.quality:
                body = out.setdefault(c.tenant_id, {"p": [], "q": []})
                body["q"].append([c.device, c.time_us, c.accepted, c.rejected])
        return out

    async def write(
        self,
        conn: AsyncConnection,
        committed: Sequence[Committed],
        counts: Sequence[DeviceCounts],
    ) -> int:
        """Add the batch's feed rows inside its transaction; how many were written."""
        await self.refresh(conn)
        bodies = self.bodies(committed, counts)
        if bodies:
            at = now_us()
            await conn.execute(
                alert_feed.insert(),
                [
                    {"tenant_id": t, "body": b, "size": len(b["p"]) + len(b["q"]), "created_at": at}
                    for t, b in bodies.items()
                ],
            )
        return len(bodies)


# --- the worker's side ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedRow:
    id: int
    tenant_id: int
    body: dict[str, Any]
    created_at: int


async def take(
    conn: AsyncConnection, limit: int = 100, before: int | None = None, most: int = 2000
) -> list[FeedRow]:
    """The oldest feed rows written before ``before`` (µs): at most ``limit`` rows holding
    about ``most`` readings and samples (at least one row), so that one evaluation stays short.
    A batch committed later with a lower id is simply taken on a later call: rows are deleted
    when done, not skipped by a cursor."""
    f = alert_feed.c
    query = select(f.id, f.size).order_by(f.id).limit(limit)
    if before is not None:
        query = query.where(f.created_at <= before)
    ids: list[int] = []
    total = 0
    for row_id, size in await conn.execute(query):
        if ids and total + int(size) > most:
            break
        ids.append(int(row_id))
        total += int(size)
    if not ids:
        return []
    rows = await conn.execute(select(alert_feed).where(f.id.in_(ids)).order_by(f.id))
    return [FeedRow(int(r.id), int(r.tenant_id), dict(r.body), int(r.created_at)) for r in rows]


async def done(conn: AsyncConnection, rows: Sequence[FeedRow]) -> None:
    """Delete evaluated rows (in the transaction that saved their outcome)."""
    if rows:
        await conn.execute(delete(alert_feed).where(alert_feed.c.id.in_([r.id for r in rows])))


async def backlog(conn: AsyncConnection) -> tuple[int, int | None]:
    """Rows waiting and the creation time of the oldest (for metrics and /ready)."""
    from sqlalchemy import func

    f = alert_feed.c
    count, oldest = (await conn.execute(select(func.count(), func.min(f.created_at)))).one()
    return int(count), None if oldest is None else int(oldest)
