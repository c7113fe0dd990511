"""``telemetra worker``: the alert engine, device status and notification delivery.

Only one worker is active at a time: it holds a PostgreSQL advisory lock (on a connection of
its own, for its whole life) or, on SQLite, an exclusive lock on a file beside the database.
A second worker waits and takes over within ``LOCK_POLL_S`` once the first one dies — the
operating system or PostgreSQL frees the lock with the process. Nothing is held in memory that
the database does not also hold: feed rows are deleted in the transaction that saves their
outcome, series states are saved with every change, notifications stay pending until delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO

import structlog
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from telemetra import metrics as prometheus
from telemetra.alerts.engine import BACKLOG_READINGS, BATCH_READINGS, Engine, Frame, Outcome
from telemetra.alerts.notify import deliver_due
from telemetra.alerts.status import update_status
from telemetra.config import Settings
from telemetra.store.catalog import now_us

log = structlog.get_logger("telemetra.worker")

LOCK_KEY = 0x7E1E_3E7A  # pg advisory lock id of "the active worker"
LOCK_POLL_S = 1.0
TICK_S = 1.0
STATUS_S = 2.0
IDLE_S = 0.05  # feed empty: look again after this long (one indexed query)
RETRY_MAX_S = 10.0
STOP_GRACE_S = 3.0

Publish = Callable[[int, list[Frame]], None]


class Lock:
    """The active worker's lock: ``try_take`` until it is held; ``alive`` while it is."""

    async def try_take(self) -> bool:
        raise NotImplementedError

    async def alive(self) -> bool:
        return True

    async def release(self) -> None:
        """Give the lock up (exit frees it too)."""


class AdvisoryLock(Lock):
    """PostgreSQL: a session advisory lock on a connection kept for the worker's life."""

    def __init__(self, db: AsyncEngine) -> None:
        self.db = db
        self.conn: AsyncConnection | None = None

    async def try_take(self) -> bool:
        if self.conn is None:
            conn = await self.db.connect()
            self.conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        taken = await self.conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY})
        return bool(taken)

    async def alive(self) -> bool:
        if self.conn is None:
            return False
        try:
            await self.conn.scalar(text("SELECT 1"))
            return True
        except Exception:
            await self.release()
            return False

    async def release(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            with contextlib.suppress(Exception):
                await conn.invalidate()  # closed, not pooled: the session's lock goes with it


class FileLock(Lock):
    """SQLite: an exclusive ``flock`` on ``<database>.worker.lock``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: IO[str] | None = None

    async def try_take(self) -> bool:
        if self.file is None:
            self.file = self.path.open("a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()
        return True

    async def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing frees the flock
            self.file = None


def lock_for(db: AsyncEngine) -> Lock:
    if db.dialect.name == "postgresql":
        return AdvisoryLock(db)
    database = make_url(str(db.url)).database or "telemetra.db"
    return FileLock(Path(f"{database}.worker.lock"))


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


@contextlib.asynccontextmanager
async def active(lock: Lock, stop: asyncio.Event) -> AsyncIterator[bool]:
    """Wait until this worker holds ``lock`` (True) or ``stop`` is set first (False)."""
    told = False
    try:
        while not stop.is_set():
            try:
                if await lock.try_take():
                    break
            except Exception as error:
                log.warning("worker: cannot reach the database for its lock", error=str(error))
            if not told:
                told = True
                log.info("another worker is active; this one waits to take over")
            await _sleep(stop, LOCK_POLL_S)
        yield not stop.is_set()
    finally:
        await lock.release()


class Worker:
    """The active worker's loops: evaluation (feed, clock, device status) and delivery."""

    def __init__(
        self,
        db: AsyncEngine,
        settings: Settings,
        publish: Publish | None = None,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self.db = db
        self.settings = settings
        self.engine = Engine(db)
        self.publish = publish
        self.clock = clock
        self.stats: dict[str, int] = {"readings": 0, "events": 0, "status": 0, "delivered": 0}
        self._changed = asyncio.Event()  # alerts changed: their notifications are due

    def _done(self, outcome: Outcome) -> None:
        """After an evaluation's commit: its frames out, delivery woken for its outbox rows."""
        self._out(outcome.frames)
        if outcome.events:
            self._changed.set()

    def _out(self, frames: dict[int, list[Frame]]) -> None:
        if self.publish is not None:
            for tenant_id, tenant_frames in frames.items():
                self.publish(tenant_id, tenant_frames)

    async def evaluate_once(self) -> int:
        """Evaluate what the feed holds now, up to a few batches; how many feed rows."""
        total = rows = 0
        for i in range(20):  # then let the clock and status have their turn
            # The first take is small (a fresh alert goes out at once); more rows behind it
            # are a backlog, taken in big transactions.
            outcome = await self.engine.evaluate_feed(
                most=BACKLOG_READINGS if i else BATCH_READINGS
            )
            self._done(outcome)
            total += outcome.readings
            rows += outcome.rows
            self.stats["events"] += outcome.events
            if not outcome.rows:
                break
        self.stats["readings"] += total
        prometheus.ALERT_EVALUATED.inc(total)
        return rows

    async def tick_once(self) -> None:
        outcome = await self.engine.tick(self.clock())
        self.stats["events"] += outcome.events
        self._done(outcome)

    async def status_once(self) -> None:
        s = self.settings
        async with self.db.begin() as conn:
            changes = await update_status(
                conn, self.clock(), s.expected_intervals, s.expected_interval_s
            )
        self.stats["status"] += len(changes)
        for online in (True, False):
            uids = [c.device for c in changes if c.online is online]
            if uids:  # one line per judgement, not per device (a fleet comes online at once)
                word = "online" if online else "offline"
                log.info(f"{len(uids)} device(s) {word}", devices=uids[:5], more=len(uids[5:]))
        for change in changes:
            self._out({change.tenant_id: [change.frame()]})

    async def _evaluating(self, stop: asyncio.Event) -> None:
        last = {"tick": 0.0, "status": 0.0}

        async def step() -> float:
            evaluated = await self.evaluate_once()
            at = time.monotonic()
            if at - last["tick"] >= TICK_S:
                last["tick"] = at
                await self.tick_once()
            if at - last["status"] >= STATUS_S:
                last["status"] = at
                await self.status_once()
            return 0.0 if evaluated else IDLE_S

        await _guarded(stop, "evaluation", step)

    async def _delivering(self, stop: asyncio.Event) -> None:
        async def step() -> float:
            report = await deliver_due(self.db, self.settings)
            self.stats["delivered"] += int(report.get("delivered", 0))
            if not sum(report.values()):  # nothing due: wait for new alerts, or retries
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), TICK_S)
                self._changed.clear()
            return 0.0

        await _guarded(stop, "notification delivery", step)

    async def run(self, stop: asyncio.Event, lock: Lock | None = None) -> None:
        """Wait for the lock, then evaluate and deliver until ``stop`` (or the lock is lost)."""
        lock = lock or lock_for(self.db)
        while not stop.is_set():
            async with active(lock, stop) as holding:
                if not holding:
                    return
                log.info("worker active: evaluating alert rules and delivering notifications")
                prometheus.WORKER_ACTIVE.set(1)
                lost = asyncio.Event()
                tasks = [
                    asyncio.create_task(self._evaluating(lost)),
                    asyncio.create_task(self._delivering(lost)),
                ]
                try:
                    while not stop.is_set():
                        await _sleep(stop, LOCK_POLL_S)
                        if not await lock.alive():
                            log.error("worker lost its lock (database connection); waiting again")
                            break
                finally:
                    prometheus.WORKER_ACTIVE.set(0)
                    lost.set()
                    # Work in hand gets a moment; a delivery still waiting on a slow receiver
                    # is cut short (its row stays leased and pending: it is sent again later).
                    _, unfinished = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
                    for task in unfinished:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)


async def _guarded(
    stop: asyncio.Event,
    what: str,
    step: Callable[[], Awaitable[float]],
) -> None:
    """Run ``step`` until ``stop``, sleeping what it asks; errors are logged and retried with
    backoff (the database may be down), never the end of the loop."""
    delay = 0.5
    while not stop.is_set():
        try:
            pause = await step()
            delay = 0.5
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning(f"worker: {what} failed; retrying", error=str(error), retry_in_s=delay)
            pause, delay = delay, min(delay * 2, RETRY_MAX_S)
        if pause:
            await _sleep(stop, pause)
