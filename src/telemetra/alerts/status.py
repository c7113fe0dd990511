"""Device connectivity: online or offline, from when it was last seen and how often it reports.

A device is expected to report every ``expected_interval`` seconds: its metadata's
``expected_interval`` (seconds, or a duration like ``"30s"``), else its type's entry in
``TELEMETRA_EXPECTED_INTERVALS``, else ``TELEMETRA_EXPECTED_INTERVAL_S``. It is **offline** once
``MISSED`` intervals pass without a message, and online again with its next message. A device
never seen is neither (``None``) until it sends something. The worker judges every few seconds;
each change is stored on the device (``online``, ``online_changed_at``) and sent on the live
stream as a ``status`` frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from telemetra.alerts.rules import parse_duration
from telemetra.ingest.timestamps import format_us
from telemetra.store.schema import devices

MISSED = 3
US_PER_S = 1_000_000


def expected_interval_us(
    metadata: Any, device_type: str | None, by_type: Mapping[str, float], default_s: float
) -> int:
    """The device's expected report interval in µs (see the module's docstring)."""
    given = metadata.get("expected_interval") if isinstance(metadata, dict) else None
    if isinstance(given, int | float) and not isinstance(given, bool) and given > 0:
        return int(given * US_PER_S)
    if isinstance(given, str):
        try:
            us = parse_duration(given)
        except ValueError:
            us = 0
        if us > 0:
            return us
    seconds = by_type.get(device_type or "", default_s)
    return int(seconds * US_PER_S)


def judge(last_seen: int | None, interval_us: int, now: int) -> bool | None:
    """Online (True), offline (False), or never seen (None)."""
    if last_seen is None:
        return None
    return now - last_seen <= MISSED * interval_us


@dataclass(frozen=True, slots=True)
class Change:
    tenant_id: int
    device: str
    online: bool
    last_seen: int | None

    def frame(self) -> dict[str, Any]:
        seen = None if self.last_seen is None else format_us(self.last_seen)
        return {"type": "status", "device": self.device, "online": self.online, "last_seen": seen}


async def update_status(
    conn: AsyncConnection, now: int, by_type: Mapping[str, float], default_s: float
) -> list[Change]:
    """Judge every active device at ``now`` and store the verdicts that changed."""
    d = devices.c
    rows = await conn.execute(
        select(d.id, d.tenant_id, d.uid, d.type, d.metadata, d.last_seen, d.online).where(
            d.status == "active"
        )
    )
    changes: list[tuple[int, Change]] = []
    for device_id, tenant_id, uid, type_, meta, last_seen, online in rows:
        interval = expected_interval_us(meta, type_, by_type, default_s)
        verdict = judge(last_seen, interval, now)
        if verdict is not None and verdict != online:
            changes.append((int(device_id), Change(int(tenant_id), str(uid), verdict, last_seen)))
    for device_id, change in changes:
        await conn.execute(
            update(devices)
            .where(d.id == device_id)
            .values(online=change.online, online_changed_at=now)
        )
    return [change for _, change in changes]
