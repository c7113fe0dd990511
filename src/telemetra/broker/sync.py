"""Keep a Mosquitto's passwd and acl in step with the devices table, from the API.

Every device change that matters to the broker (created, token rotated, disabled, enabled,
deleted) calls ``BrokerSync.apply`` after its transaction committed. Concurrent changes share
syncs: a caller waits for the first sync that read the devices after its change, so a burst of
registrations costs a few rewrites, not one each.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.broker.mosquitto import BrokerState, broker_state, sync_lock, sync_state
from telemetra.store.tenancy import ALL_TENANTS, TENANT_SCOPE

log = structlog.get_logger("telemetra.broker")


class BrokerSync:
    """Rewrites the broker folder ``out`` (from ``telemetra broker-config``) on request; with
    the installation CA in ``ca_folder``, also its certificate revocation list."""

    def __init__(self, engine: AsyncEngine, out: Path, ca_folder: Path) -> None:
        self.engine = engine
        self.out = out
        self.ca_folder = ca_folder
        self._lock = asyncio.Lock()
        self._requested = 0
        self._done = 0
        self._last = ""

    async def apply(self) -> str:
        """Sync now (or join a sync that starts after this call); "reloaded" or what went wrong.

        A failure is reported, not raised: the device change is committed either way, and the
        next change, or ``telemetra broker-config --sync``, brings the broker up to date.
        """
        self._requested += 1
        ticket = self._requested
        async with self._lock:
            if self._done >= ticket:
                return self._last
            covers = self._requested  # the devices read below include every change so far
            loop = asyncio.get_running_loop()
            try:
                # In a thread that sees it through even if this request is cancelled: the lock
                # across processes is held from reading the devices to the reload.
                self._last = await asyncio.to_thread(self._sync, loop)
            except Exception as error:  # the database too: the change itself is committed
                log.error("broker files not updated", folder=str(self.out), error=str(error))
                self._last = f"broker files not updated: {error}"
            self._done = covers
            return self._last

    def _sync(self, loop: asyncio.AbstractEventLoop) -> str:
        with sync_lock(self.out):
            state = asyncio.run_coroutine_threadsafe(self._state(), loop).result()
            return sync_state(self.out, state, self.ca_folder).reload

    async def _state(self) -> BrokerState:
        TENANT_SCOPE.set(ALL_TENANTS)  # every tenant's devices (this task's own context)
        async with self.engine.connect() as conn:
            return await broker_state(conn)
