"""Dead-letter replay: run stored rejected messages again through today's devices and rules.

After registering a device, fixing a cleaning rule or once a device's clock offset is known,
``replay`` hands the raw payload of each selected dead letter back to the ``Pipeline`` as the
message it was — same topic, source, device and receive time, flagged as a redelivery — so it
is decoded, cleaned, written and dead-lettered exactly like live data. Writes are idempotent:
replaying twice stores nothing twice, and a rejection seen again has the fingerprint of its
dead letter, so it is not stored again. Each replayed dead letter is kept and marked with the
time and outcome of its replay (``stored``, ``rejected`` with the reason now, or ``skipped``
with why); once stored it is not selected again.

Dead letters whose payload was cut at ``TELEMETRA_DEADLETTER_PAYLOAD_BYTES`` cannot be replayed
(the message is not there to replay), nor those that name no device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.config import Settings
from telemetra.ingest.pipeline import Message, Pipeline
from telemetra.ingest.routes import DEFAULT_ROUTES, parse_routes
from telemetra.model import Rejection
from telemetra.store import timerange
from telemetra.store.deadletters import (
    REJECTED,
    SKIPPED,
    STORED,
    DeadLetter,
    Selection,
    adopt_fingerprint,
    count_replayable,
    mark_replayed,
    replayable,
)
from telemetra.store.schema import dead_letters

__all__ = [
    "SKIP_NO_DEVICE",
    "SKIP_TRUNCATED",
    "ReplayReport",
    "replay",
    "replay_pipeline",
    "time_window",
]

SKIP_TRUNCATED = "payload_truncated"
SKIP_NO_DEVICE = "no_device"
Progress = Callable[[int, int], None]


@dataclass(slots=True)
class ReplayReport:
    """What a replay did (or, in a dry run, would do)."""

    dry_run: bool
    dead_letters: int = 0  # taken: replayed or skipped
    messages: int = 0  # messages run again through the pipeline
    accepted: int = 0  # readings accepted: new, or already stored
    stored: int = 0  # readings new to the database (a dry run stores none)
    resolved: int = 0  # dead letters whose message is now stored
    rejected: dict[str, int] = field(default_factory=dict)  # rejections now, by reason
    skipped: dict[str, int] = field(default_factory=dict)  # dead letters not replayed, by why
    remaining: int = 0  # selected beyond the limit: replay again for those


def time_window(
    start: str | None, end: str | None, names: tuple[str, str] = ("from", "to")
) -> tuple[int | None, int | None]:
    """``from``/``to`` of a selection (receive times; either may be open) as µs.

    The forms of telemetry queries: ISO-8601 with Z or an offset, epoch ms, ``now``, ``-24h``.
    Raises ``timerange.ParamError`` naming the parameter.
    """
    now = time.time_ns() // 1000
    since = None if start is None else timerange.parse_time(start, names[0], now)
    until = None if end is None else timerange.parse_time(end, names[1], now)
    if since is not None and until is not None and since >= until:
        raise timerange.ParamError(
            names[0], f"`{names[0]}` must be before `{names[1]}`", f"{names[0]} < {names[1]}"
        )
    return since, until


def replay_pipeline(engine: AsyncEngine, settings: Settings) -> Pipeline:
    """The ingest pipeline with the configured routes; it never registers devices (a replay
    runs through the devices registered today)."""
    routes = parse_routes(settings.routes) if settings.routes else DEFAULT_ROUTES
    return Pipeline(engine, settings.model_copy(update={"auto_register": False}), routes)


async def replay(
    engine: AsyncEngine,
    settings: Settings,
    selection: Selection,
    *,
    dry_run: bool = False,
    limit: int | None = None,
    batch_size: int = 500,
    progress: Progress | None = None,
) -> ReplayReport:
    """Replay the dead letters of ``selection`` (oldest first, at most ``limit``).

    ``progress`` is called with (dead letters done, dead letters to do) after every batch.
    A dry run decodes and cleans as a replay would, and writes nothing (but new metric
    names); whether a reading is already stored shows only when writing.
    """
    report = ReplayReport(dry_run)
    async with engine.connect() as conn:
        # Dead letters a replay itself adds (rejected again for another reason) wait for the
        # next replay: this one takes only those that exist now.
        newest = (await conn.execute(select(func.max(dead_letters.c.id)))).scalar()
        selection = replace(selection, up_to_id=newest or 0)
        total = await count_replayable(conn, selection)
    todo = total if limit is None else min(total, limit)
    pipeline = replay_pipeline(engine, settings)
    after: tuple[int, int] | None = None
    while report.dead_letters < todo:
        async with engine.connect() as conn:
            wanted = min(batch_size, todo - report.dead_letters)
            letters = await replayable(conn, selection, after, wanted)
        if not letters:
            break
        after = (letters[-1].received_at, letters[-1].id)
        await _replay_batch(pipeline, letters, report, selection.up_to_id or 0)
        if progress is not None:
            progress(min(report.dead_letters, todo), todo)
    report.remaining = max(0, total - report.dead_letters)
    return report


def _message(letter: DeadLetter) -> Message:
    """The message a dead letter came from, as its transport handed it to the pipeline."""
    payload, topic = letter.payload or b"", letter.topic or ""
    if letter.source == "mqtt":  # routed by topic, like the ingest worker's messages
        return Message(topic, payload, letter.received_at, "mqtt", redelivered=True)
    return Message(
        topic, payload, letter.received_at, letter.source, redelivered=True,
        device=letter.device_uid, fmt="native",
    )  # fmt: skip


def _skip(letter: DeadLetter) -> tuple[str, str] | None:
    if letter.device_uid is None:
        return SKIP_NO_DEVICE, "names no device: nothing to replay it for"
    if letter.truncated:
        kept = len(letter.payload or b"")
        return SKIP_TRUNCATED, (
            f"only {kept} of {letter.payload_size} payload bytes were kept "
            "(TELEMETRA_DEADLETTER_PAYLOAD_BYTES): the message cannot be replayed"
        )
    return None


async def _replay_batch(
    pipeline: Pipeline, letters: Sequence[DeadLetter], report: ReplayReport, newest: int
) -> None:
    marks: list[tuple[int, str, str]] = []
    adopting: list[tuple[DeadLetter, Rejection]] = []  # dead letters from before fingerprints
    messages: dict[tuple[object, ...], list[DeadLetter]] = {}
    for letter in letters:
        skipped = _skip(letter)
        if skipped is not None:
            why, detail = skipped
            report.skipped[why] = report.skipped.get(why, 0) + 1
            marks.append((letter.id, SKIPPED, f"{why}: {detail}"))
            continue
        key = (letter.source, letter.topic, letter.device_uid, letter.received_at, letter.payload)
        messages.setdefault(key, []).append(letter)
    report.dead_letters += len(letters)
    groups = list(messages.values())
    results = await _run(pipeline, [_message(group[0]) for group in groups], report)
    for group, (accepted, rejections) in zip(groups, results, strict=True):
        report.messages += 1
        report.accepted += accepted
        for rejection in rejections:
            reason = str(rejection.reason)
            report.rejected[reason] = report.rejected.get(reason, 0) + 1
        for letter in group:
            outcome, detail = _verdict(letter, accepted, rejections)
            report.resolved += outcome == STORED
            marks.append((letter.id, outcome, detail))
            again = [r for r in rejections if _covers(r, letter) and r.reason == letter.reason]
            if letter.fingerprint is None and again:
                adopting.append((letter, again[0]))
    if not report.dry_run:
        async with pipeline.engine.begin() as conn:
            for letter, r in adopting:
                await adopt_fingerprint(conn, letter, newest, str(r.reason), r.index, r.metric)
            await mark_replayed(conn, marks, time.time_ns() // 1000)


async def _run(
    pipeline: Pipeline, messages: list[Message], report: ReplayReport
) -> list[tuple[int, list[Rejection]]]:
    """(readings accepted, rejections) per message: stored, or only prepared in a dry run."""
    if not messages:
        return []
    if report.dry_run:
        batch = await pipeline.prepare_until_ready(messages)
        extra: dict[int, list[Rejection]] = {}
        for position, rejection in batch.extra:
            extra.setdefault(position, []).append(rejection)
        return [
            (batch.accepted[i], [*work.outcome.rejected, *extra.get(i, [])])
            for i, work in enumerate(batch.works)
        ]
    before = pipeline.stats["readings"]
    outcomes = await pipeline.process_until_stored(messages)
    report.stored += pipeline.stats["readings"] - before
    return [(outcome.accepted, list(outcome.rejected)) for outcome in outcomes]


def _covers(rejection: Rejection, letter: DeadLetter) -> bool:
    """Whether a rejection now concerns what ``letter`` was about (message, entry or value)."""
    if None not in (rejection.index, letter.entry_index) and rejection.index != letter.entry_index:
        return False  # another entry of the message
    if rejection.metric is None:  # a whole message, or one entry
        return rejection.index is None or letter.entry_index is not None
    if letter.metric is None:  # about a message or an entry, or from before metrics were kept
        return str(rejection.reason) == letter.reason
    return rejection.metric == letter.metric


def _verdict(letter: DeadLetter, accepted: int, rejections: list[Rejection]) -> tuple[str, str]:
    """The replay outcome of one dead letter, and its detail."""
    covering = [r for r in rejections if _covers(r, letter)]
    others = len(rejections) - len(covering)
    if covering or not accepted:
        first = covering[0] if covering else (rejections[0] if rejections else None)
        if first is None:
            return REJECTED, "nothing was stored"
        return REJECTED, f"{first.reason}: {first.detail}"
    detail = f"{accepted} reading{'s' if accepted != 1 else ''} of its message accepted"
    if others:
        detail += f"; {others} other value{'s' if others != 1 else ''} rejected again"
    return STORED, detail
