"""Reading dead letters back: list them (API, CLI), select them for replay, mark them replayed.

Writing them is ``write.add_dead_letters`` (idempotent by fingerprint). A selection is always
scoped by the application (``tenant_id``); Row-Level Security is the second line beneath.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, bindparam, func, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from telemetra.store.schema import dead_letters

_CURSOR = "d1"  # the format of the cursors the API has always handed out
STORED = "stored"
REJECTED = "rejected"
SKIPPED = "skipped"
OUTCOMES = (STORED, REJECTED, SKIPPED)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message or value with its reason, raw payload (size-capped) and last replay."""

    id: int
    tenant_id: int | None
    device_uid: str | None
    source: str
    topic: str | None
    reason: str
    detail: str
    entry_index: int | None
    metric: str | None
    payload: bytes | None
    payload_size: int
    received_at: int
    replayed_at: int | None
    replay_outcome: str | None  # stored | rejected | skipped
    replay_detail: str | None
    fingerprint: str | None = None  # None: stored before migration 0007

    @property
    def truncated(self) -> bool:
        """Only a capped copy of the payload was kept: it cannot be replayed."""
        return self.payload is None or len(self.payload) < self.payload_size


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters: of a tenant (None: every tenant), a device, a reason, a time range.

    ``since``/``until`` are receive times in µs (``until`` exclusive). ``replayed``: True only
    replayed ones, False only those never replayed, None either.
    """

    tenant_id: int | None = None
    device_uid: str | None = None
    reason: str | None = None
    since: int | None = None
    until: int | None = None
    replayed: bool | None = None
    up_to_id: int | None = None  # only dead letters stored up to this one


@dataclass(frozen=True, slots=True)
class Page:
    """A page of dead letters, newest first; pass ``next_cursor`` back for the next one."""

    items: list[DeadLetter]
    next_cursor: str | None


def _letter(row: Any) -> DeadLetter:
    return DeadLetter(
        id=int(row.id),
        tenant_id=None if row.tenant_id is None else int(row.tenant_id),
        device_uid=row.device_uid,
        source=str(row.source),
        topic=row.topic,
        reason=str(row.reason),
        detail=str(row.detail),
        entry_index=None if row.entry_index is None else int(row.entry_index),
        metric=row.metric,
        payload=None if row.payload is None else bytes(row.payload),
        payload_size=int(row.payload_size),
        received_at=int(row.received_at),
        replayed_at=None if row.replayed_at is None else int(row.replayed_at),
        replay_outcome=row.replay_outcome,
        replay_detail=row.replay_detail,
        fingerprint=row.fingerprint,
    )


def _where(query: Select[Any], selection: Selection) -> Select[Any]:
    d = dead_letters.c
    if selection.tenant_id is not None:
        query = query.where(d.tenant_id == selection.tenant_id)
    if selection.device_uid is not None:
        query = query.where(d.device_uid == selection.device_uid)
    if selection.reason is not None:
        query = query.where(d.reason == selection.reason)
    if selection.since is not None:
        query = query.where(d.received_at >= selection.since)
    if selection.until is not None:
        query = query.where(d.received_at < selection.until)
    if selection.replayed is not None:
        replayed = d.replayed_at.is_not(None) if selection.replayed else d.replayed_at.is_(None)
        query = query.where(replayed)
    if selection.up_to_id is not None:
        query = query.where(d.id <= selection.up_to_id)
    return query


def encode_cursor(last_id: int) -> str:
    raw = f"{_CURSOR}:{last_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The id a cursor continues below; ValueError naming the problem if it is not ours."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        kind, last = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii").split(":")
        if kind != _CURSOR:
            raise ValueError(kind)
        return int(last)
    except (binascii.Error, UnicodeError, ValueError):
        raise ValueError(
            f"invalid cursor {cursor[:40]!r}: pass the next_cursor of the previous page "
            "unchanged, or no cursor for the first page"
        ) from None


async def page(
    conn: AsyncConnection, selection: Selection, *, limit: int = 100, cursor: str | None = None
) -> Page:
    """Dead letters of ``selection``, newest first, ``limit`` per page (keyset cursor on id)."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    d = dead_letters.c
    query = _where(select(dead_letters), selection)
    if cursor is not None:
        query = query.where(d.id < decode_cursor(cursor))
    fetched = (await conn.execute(query.order_by(d.id.desc()).limit(limit + 1))).all()
    items = [_letter(row) for row in fetched[:limit]]
    more = len(fetched) > limit
    return Page(items, encode_cursor(items[-1].id) if more else None)


def _replayable(selection: Selection) -> Select[Any]:
    # Once stored by a replay, a dead letter is done; rejected or skipped ones may be retried
    # (after fixing a rule, say), and replaying them again stores nothing twice.
    query = _where(select(dead_letters), selection)
    outcome = dead_letters.c.replay_outcome
    return query.where(or_(outcome.is_(None), outcome != STORED))


async def count_replayable(conn: AsyncConnection, selection: Selection) -> int:
    """How many dead letters of ``selection`` a replay would take."""
    query = _replayable(selection).with_only_columns(func.count()).order_by(None)
    return int((await conn.execute(query)).scalar_one())


async def replayable(
    conn: AsyncConnection, selection: Selection, after: tuple[int, int] | None, limit: int
) -> list[DeadLetter]:
    """The next ``limit`` dead letters to replay, oldest first, after (received_at, id).

    A page never ends inside one receive time when it can help it, so the dead letters of one
    message (which share it) are replayed together.
    """
    d = dead_letters.c
    query = _replayable(selection)
    if after is not None:
        query = query.where(tuple_(d.received_at, d.id) > tuple_(*after))
    rows = (await conn.execute(query.order_by(d.received_at, d.id).limit(limit))).all()
    letters = [_letter(row) for row in rows]
    if len(letters) == limit:
        last = letters[-1].received_at
        whole = [x for x in letters if x.received_at != last]
        if whole:
            return whole
    return letters


async def mark_replayed(
    conn: AsyncConnection, marks: Sequence[tuple[int, str, str]], at: int
) -> None:
    """Record the outcome of a replay on dead letters ((id, outcome, detail) each); kept."""
    if not marks:
        return
    stmt = (
        update(dead_letters)
        .where(dead_letters.c.id == bindparam("b_id"))
        .values(
            replayed_at=at,
            replay_outcome=bindparam("b_outcome"),
            replay_detail=bindparam("b_detail"),
        )
    )
    await conn.execute(
        stmt, [{"b_id": i, "b_outcome": o, "b_detail": d[:2000]} for i, o, d in marks]
    )


async def adopt_fingerprint(
    conn: AsyncConnection,
    old: DeadLetter,
    newer_than: int,
    reason: str,
    entry_index: int | None,
    metric: str | None,
) -> None:
    """A dead letter from before fingerprints (``old``) rejected again on replay takes the
    fingerprint and metric of the one the replay just stored for that rejection (id above
    ``newer_than``), which goes: the rejection stays one dead letter."""
    d = dead_letters.c
    found = (
        await conn.execute(
            select(d.id, d.fingerprint, d.metric)
            .where(
                d.id > newer_than,
                d.source == old.source,
                d.received_at == old.received_at,
                d.reason == reason,
                d.device_uid.is_not_distinct_from(old.device_uid),
                d.topic.is_not_distinct_from(old.topic),
                d.entry_index.is_not_distinct_from(entry_index),
                d.metric.is_not_distinct_from(metric),
            )
            .order_by(d.id)
            .limit(1)
        )
    ).first()
    if found is not None:
        await conn.execute(dead_letters.delete().where(d.id == found.id))
        await conn.execute(
            update(dead_letters)
            .where(d.id == old.id)
            .values(fingerprint=found.fingerprint, metric=found.metric)
        )
