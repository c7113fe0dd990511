"""File import: CSV, JSON lines and Parquet through the same pipeline as live data.

Every line (JSON lines) or row (CSV, Parquet) becomes a native-format ``Message`` with
``source="import"`` and the topic ``import:{file name}:{line}``, so it is decoded, cleaned,
dead-lettered and stored exactly like a device message, and importing a file twice stores
nothing twice (readings are keyed by device, metric and event time; rows without a time are
keyed by their ``event_id`` if they have one, else by their content, and keep the time of
their first import).

Every file ``telemetra export`` writes imports back to the same readings (see
``telemetra.store.export``): long-form tables may carry a text reading in a ``text`` column,
and the export's ``flags``, ``ts_device`` and ``received_at`` columns are accepted and ignored.

The file is streamed: only one batch of messages is held in memory at a time. Nothing a line
contains aborts the import; every problem becomes a rejection with its line number. Only
problems with the file as a whole (unknown format, missing CSV header or device column) raise
``ValueError`` before anything is imported.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import orjson
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.config import Settings
from telemetra.ingest.pipeline import Message, Pipeline
from telemetra.model import Reason, Rejection, valid_device_uid
from telemetra.store.write import add_dead_letters, dead_letter_row

__all__ = [
    "FORMATS",
    "ImportSummary",
    "LineRejection",
    "detect_format",
    "import_file",
    "import_pipeline",
]

log = structlog.get_logger("telemetra.importer")

# File name suffix (and --format value) -> reader.
FORMATS = {
    "csv": "csv",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "json": "jsonl",
    "parquet": "parquet",
    "pq": "parquet",
}
MAX_LISTED = 1000  # rejections kept with their line numbers in the summary
MAX_GROUP = 500  # long-form CSV rows merged into one message at most
_BOM = b"\xef\xbb\xbf"
_DEVICE_KEYS = ("device", "device_id")
_TS_KEYS = ("ts", "timestamp")
_LONG_KEYS = ("metric", "value", "text", "unit", "event_id")
# Columns of an export that say how a reading arrived where it was exported from: accepted in a
# long-form file and ignored, as this installation's cleaning sets its own flags and times.
_INFORMATIONAL = ("flags", "ts_device", "received_at")
# Finds the device of a line that is not valid JSON, so its dead letter names the device.
_DEVICE_HINT = re.compile(rb'"device(?:_id)?"\s*:\s*"([^"\\]{1,128})"')

Progress = Callable[[int, int], None]


@dataclass(slots=True)
class LineRejection:
    """One rejected line or row (or one value of it)."""

    line: int
    reason: str
    detail: str
    metric: str | None = None


@dataclass(slots=True)
class ImportSummary:
    """What an import did; ``accepted`` counts readings (new ones plus duplicates)."""

    path: str
    format: str
    rows: int = 0  # non-blank lines or rows read
    messages: int = 0
    accepted: int = 0
    stored: int = 0  # readings new to the database
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    rejections: list[LineRejection] = field(default_factory=list)  # the first MAX_LISTED
    bytes: int = 0
    seconds: float = 0.0

    @property
    def duplicates(self) -> int:
        """Readings already stored with the same value (e.g. from an earlier import)."""
        return self.accepted - self.stored

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())


def detect_format(path: Path, fmt: str | None = None) -> str:
    """``csv``, ``jsonl`` or ``parquet``: ``fmt``, else from the suffix; ValueError if unknown."""
    name = (fmt or path.suffix.lstrip(".")).lower()
    found = FORMATS.get(name)
    if found is None:
        known = ", ".join(sorted(FORMATS))
        what = f"format {fmt!r}" if fmt else f"file suffix {path.suffix or '(none)'!r}"
        raise ValueError(f"unknown {what}; expected one of {known} (use --format)")
    return found


def import_pipeline(engine: AsyncEngine, settings: Settings) -> Pipeline:
    """A pipeline for imports: clock-offset estimation is off.

    Live ingest estimates a device's clock offset from device time minus receive time; for a
    file the receive time is the import time, so dense old data would look like a device clock
    that is days behind and be "corrected" to now. Imported timestamps are taken as recorded.
    """
    pipeline = Pipeline(engine, settings, feed_alerts=False)
    # No estimate from file times, and no live estimate applied to recorded times either.
    pipeline.policy = dataclasses.replace(
        pipeline.policy, clock_min_samples=2**31, clock_correct_after_us=2**62
    )
    return pipeline


@dataclass(slots=True)
class _Item:
    """One message to send, or (with ``reason``) a line rejected before the pipeline."""

    lines: list[int]  # line number of each entry of the payload (at least one)
    payload: bytes
    device: str | None
    reason: Reason | None = None
    detail: str = ""
    metrics: list[str] | None = None  # long-form CSV: the metric of each entry


async def import_file(
    pipeline: Pipeline,
    path: Path,
    *,
    fmt: str | None = None,
    device: str | None = None,
    batch_size: int = 1000,
    progress: Progress | None = None,
) -> ImportSummary:
    """Import ``path`` through ``pipeline``; ``device`` is used for rows that name none.

    ``progress`` is called with (bytes done, bytes total) after every batch. Use
    ``import_pipeline`` for the pipeline (see there why). The file is read in a worker thread,
    one batch ahead of the batch being stored.
    """
    kind = detect_format(path, fmt)
    if batch_size < 1:
        raise ValueError("batch size must be at least 1")
    if device is not None and not valid_device_uid(device):
        raise ValueError(f"invalid device id {device!r}")
    started = time.monotonic()
    feeder = await asyncio.to_thread(_Feeder.open, kind, path, device, pipeline.settings)
    summing = _Summing(pipeline, ImportSummary(str(path), kind, bytes=feeder.total))
    pending: asyncio.Future[_Batch] | None = None
    try:
        ahead = asyncio.ensure_future(asyncio.to_thread(feeder.fill, batch_size))
        pending = ahead
        while True:
            batch = await ahead
            pending = None
            if not batch.last:
                ahead = asyncio.ensure_future(asyncio.to_thread(feeder.fill, batch_size))
                pending = ahead
            await summing.send(batch)
            if progress is not None:
                progress(batch.done, feeder.total)
            if batch.last:
                break
    finally:
        if pending is not None:  # a worker thread cannot be cancelled: let it finish first
            await asyncio.wait([pending])
        feeder.close()
    summary = summing.summary
    summary.seconds = time.monotonic() - started
    summary.rejections.sort(key=lambda r: r.line)
    log.debug(
        "import finished", path=str(path), rows=summary.rows, accepted=summary.accepted,
        rejected=summary.rejected, seconds=round(summary.seconds, 2),
    )  # fmt: skip
    return summary


@dataclass(slots=True)
class _Batch:
    messages: list[Message] = field(default_factory=list)
    items: list[_Item] = field(default_factory=list)  # what each message came from
    early: list[tuple[Message, _Item]] = field(default_factory=list)  # rejected here
    rows: int = 0
    done: int = 0  # bytes of the file read
    last: bool = False


class _Feeder:
    """Turns a file's items into batches of messages (runs in a worker thread)."""

    def __init__(self, f: IO[bytes] | None, reader: _Reader, name: str, total: int) -> None:
        self.f = f
        self.reader = reader
        self.items = reader.items()
        self.topic = f"import:{name}:"
        self.total = total
        self.received = 0

    @classmethod
    def open(cls, kind: str, path: Path, device: str | None, settings: Settings) -> _Feeder:
        """Open the file and check what can be checked before importing anything."""
        total = path.stat().st_size
        if kind == "parquet":
            return cls(None, _Parquet(path, device, total), path.name, total)
        f = path.open("rb")
        try:
            reader: _Reader
            if kind == "csv":
                reader = _Csv(f, device, path.name)
            else:
                reader = _JsonLines(f, device, settings.max_payload_bytes + 1024)
            return cls(f, reader, path.name, total)
        except BaseException:
            f.close()
            raise

    def close(self) -> None:
        if self.f is not None:
            self.f.close()

    def fill(self, size: int) -> _Batch:
        batch = _Batch()
        for item in self.items:
            batch.rows += len(item.lines)
            if item.device is None and item.reason is None:
                item.reason = Reason.UNKNOWN_DEVICE
                item.detail = "the row names no device (add a device column or key, or --device)"
            # Distinct receive times: rows without a timestamp get them as their event time.
            self.received = max(self.received + 1, time.time_ns() // 1000)
            message = Message(
                topic=f"{self.topic}{item.lines[0]}",
                payload=item.payload,
                received_at=self.received,
                source="import",
                device=item.device,
                fmt="native",
                # A re-import is a redelivery: untimed rows keep their first import time.
                redelivered=True,
            )
            if item.reason is not None:
                batch.early.append((message, item))
                continue
            batch.messages.append(message)
            batch.items.append(item)
            if len(batch.messages) >= size:
                break
        else:
            batch.last = True
        batch.done = self.reader.done
        return batch


def _line_of(item: _Item, rejection: Rejection) -> int:
    """The line of the entry a rejection names (by index, or by metric for conflicts)."""
    index = rejection.index
    if index is None and item.metrics is not None and rejection.metric in item.metrics:
        index = item.metrics.index(rejection.metric)
    return (
        item.lines[index] if index is not None and 0 <= index < len(item.lines) else item.lines[0]
    )


class _Summing:
    """Sends batches, writes early rejections as dead letters, and adds up the outcomes."""

    def __init__(self, pipeline: Pipeline, summary: ImportSummary) -> None:
        self.pipeline = pipeline
        self.summary = summary

    def count(self, line: int, reason: str, detail: str, metric: str | None = None) -> None:
        by_reason = self.summary.rejected_by_reason
        by_reason[reason] = by_reason.get(reason, 0) + 1
        if len(self.summary.rejections) < MAX_LISTED:
            self.summary.rejections.append(LineRejection(line, reason, detail, metric))

    async def send(self, batch: _Batch) -> None:
        summary = self.summary
        summary.rows += batch.rows
        if batch.messages:
            before = self.pipeline.stats["readings"]
            outcomes = await self.pipeline.process_until_stored(batch.messages)
            summary.stored += self.pipeline.stats["readings"] - before
            summary.messages += len(outcomes)
            for outcome, item in zip(outcomes, batch.items, strict=True):
                summary.accepted += outcome.accepted
                for r in outcome.rejected:
                    self.count(_line_of(item, r), str(r.reason), r.detail, r.metric)
        if batch.early:
            summary.messages += len(batch.early)
            for _, item in batch.early:
                self.count(item.lines[0], str(item.reason), item.detail)
            await self._write_letters(batch.early)

    async def _write_letters(self, letters: list[tuple[Message, _Item]]) -> None:
        """Dead letters for lines the pipeline cannot take (no device, malformed CSV row)."""
        pipeline = self.pipeline
        uids = {m.device for m, _ in letters if m.device is not None}
        known = await pipeline.devices.lookup(pipeline.engine, uids)
        cap = pipeline.settings.deadletter_payload_bytes
        rows = []
        for message, item in letters:
            found = known.get(message.device) if message.device is not None else None
            rows.append(
                dead_letter_row(
                    tenant_id=found.tenant_id if found is not None else None,
                    device_uid=message.device if found is not None else None,
                    source=message.source,
                    topic=message.topic,
                    reason=str(item.reason),
                    detail=item.detail,
                    entry_index=None,
                    metric=None,
                    payload=message.payload,
                    received_at=message.received_at,
                    cap=cap,
                )
            )
        async with pipeline.engine.begin() as conn:
            await add_dead_letters(conn, rows)


class _Reader:
    done = 0  # bytes of the file consumed so far

    def items(self) -> Iterator[_Item]:
        raise NotImplementedError


# -- JSON lines -----------------------------------------------------------------------------


class _Duplicate(Exception):
    pass


def _strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _Duplicate
    return d


# As strict as the pipeline's decoder; anything it refuses is handed on as raw bytes so that
# the decoder itself names the problem (invalid_json, duplicate_key, invalid_utf8, ...).
_STRICT = json.JSONDecoder(object_pairs_hook=_strict_pairs)


def _hint(raw: bytes) -> str | None:
    found = _DEVICE_HINT.search(raw)
    if found is None:
        return None
    uid = found.group(1).decode("utf-8", "replace")
    return uid if valid_device_uid(uid) else None


def _take_device(doc: Any) -> tuple[str | None, bool, str | None]:
    """(device named, payload changed, problem) after removing ``device`` keys from ``doc``.

    ``device_id`` stays: the decoder checks it against the message's device. In an array, an
    element naming another device than the first named one gets that name as ``device_id``,
    so the decoder rejects just that element as a device mismatch.
    """
    if type(doc) is dict:
        entries = [doc]
    elif type(doc) is list:
        entries = [e for e in doc if type(e) is dict]
    else:
        return None, False, None
    chosen: str | None = None
    changed = False
    own: list[tuple[dict[str, Any], str | None]] = []
    for entry in entries:
        name: Any = None
        if "device" in entry:
            name = entry.pop("device")
            changed = True
        if name is None:
            name = entry.get("device_id")
            if name is None:
                own.append((entry, None))
                continue
        if not isinstance(name, str):
            return None, changed, f"device must be a string, got {type(name).__name__}"
        own.append((entry, name))
        if chosen is None:
            chosen = name
    for entry, name in own:
        if name is not None and name != chosen and entry.get("device_id") != name:
            entry["device_id"] = name
    return chosen, changed, None


def _unreadable(error: Exception) -> tuple[Reason, str]:
    if isinstance(error, UnicodeDecodeError):
        return Reason.INVALID_UTF8, f"invalid UTF-8 at byte {error.start}: {error.reason}"
    if isinstance(error, _Duplicate):
        return Reason.DUPLICATE_KEY, "a key appears twice in one object"
    if isinstance(error, RecursionError):
        return Reason.TOO_DEEP, "JSON nesting is too deep to parse"
    if isinstance(error, json.JSONDecodeError):
        return Reason.INVALID_JSON, f"invalid JSON: {error.msg} at column {error.colno}"
    return Reason.INVALID_JSON, f"invalid JSON: {str(error)[:200]}"


class _JsonLines(_Reader):
    def __init__(self, f: IO[bytes], default: str | None, cap: int) -> None:
        self.f = f
        self.default = default
        self.cap = cap

    def items(self) -> Iterator[_Item]:
        line_no = 0
        while True:
            raw = self.f.readline(self.cap)
            if not raw:
                return
            line_no += 1
            self.done += len(raw)
            if len(raw) == self.cap and not raw.endswith(b"\n"):
                size = len(raw)
                while more := self.f.readline(self.cap):
                    size += len(more)
                    self.done += len(more)
                    if more.endswith(b"\n"):
                        break
                detail = f"line is {size} bytes; the limit is {self.cap}"
                device = _hint(raw) or self.default
                yield _Item([line_no], raw, device, Reason.TOO_LARGE, detail)
                continue
            if line_no == 1 and raw.startswith(_BOM):
                raw = raw[3:]
            raw = raw.strip()
            if raw:
                yield self._item(line_no, raw)

    def _item(self, line_no: int, raw: bytes) -> _Item:
        try:
            doc = _STRICT.decode(raw.decode("utf-8"))
        except (ValueError, RecursionError, _Duplicate) as error:
            # Not valid JSON (or not UTF-8): the decoder rejects it and names the problem;
            # without a device to hand it to, the reason is given here.
            device = _hint(raw) or self.default
            if device is not None:
                return _Item([line_no], raw, device)
            reason, detail = _unreadable(error)
            return _Item([line_no], raw, None, reason, detail)
        named, changed, problem = _take_device(doc)
        if problem is not None:
            return _Item([line_no], raw, self.default, Reason.BAD_SHAPE, problem)
        if changed:
            raw = json.dumps(doc, separators=(",", ":")).encode()
        return _Item([line_no], raw, named or self.default)


# -- tables: CSV and Parquet ------------------------------------------------------------------


@dataclass(slots=True)
class _Layout:
    """Where device, time and values are in a table's rows (long or wide form)."""

    width: int
    device: int | None
    ts: int | None
    event_id: int | None
    long: bool
    metric: int = -1
    value: int = -1
    unit: int | None = None
    text: int | None = None
    metrics: list[tuple[int, str]] = field(default_factory=list)

    @classmethod
    def of(cls, header: Sequence[str], default: str | None, name: str) -> _Layout:
        columns = [h.strip() for h in header]
        seen: Counter[str] = Counter(c.lower() for c in columns)
        twice = sorted(c for c, n in seen.items() if n > 1)
        if twice:
            raise ValueError(f"{name}: column {twice[0]!r} appears twice in the header")
        where = {c.lower(): i for i, c in enumerate(columns)}

        def find(*names: str) -> int | None:
            found = [where[n] for n in names if n in where]
            if len(found) > 1:
                raise ValueError(f"{name}: use only one of the columns {', '.join(names)}")
            return found[0] if found else None

        device = find(*_DEVICE_KEYS)
        if device is None and default is None:
            raise ValueError(f"{name} has no 'device' column; name the device with --device")
        ts = find(*_TS_KEYS)
        layout = cls(len(columns), device, ts, where.get("event_id"), "metric" in where)
        if layout.long or "value" in where:
            if "metric" not in where or "value" not in where:
                raise ValueError(
                    f"{name}: long form needs both 'metric' and 'value' columns "
                    "(wide form: one column per metric, no 'value' column)"
                )
            known = {*_DEVICE_KEYS, *_TS_KEYS, *_LONG_KEYS, *_INFORMATIONAL}
            extra = [c for c in columns if c.lower() not in known]
            if extra:
                raise ValueError(
                    f"{name}: unexpected column {extra[0]!r} in a long-form file (columns: "
                    "device, ts, metric, value and optionally text, unit, event_id; an export's "
                    "flags, ts_device, received_at are ignored)"
                )
            layout.long = True
            layout.metric, layout.value = where["metric"], where["value"]
            layout.unit, layout.text = where.get("unit"), where.get("text")
            return layout
        reserved = {device, ts, layout.event_id}
        layout.metrics = [(i, c) for i, c in enumerate(columns) if i not in reserved]
        if not layout.metrics:
            raise ValueError(f"{name}: no metric columns (wide form: one column per metric)")
        return layout


def _empty(cell: Any) -> bool:
    return cell is None or (type(cell) is str and not cell.strip())


def _cell_json(value: Any) -> Any:
    # Parquet values that JSON has no type for.
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _dumps_strings(doc: Any) -> bytes:
    return orjson.dumps(doc)  # CSV cells are strings: nothing orjson would change


def _dumps_typed(doc: Any) -> bytes:
    # NaN stays NaN (orjson would write null): the decoder then rejects it as non-finite.
    return json.dumps(doc, separators=(",", ":"), default=_cell_json).encode()


# (line number, cells, raw bytes when not valid UTF-8, why the row is unreadable)
_Row = tuple[int, Sequence[Any], bytes | None, str | None]


def _table_items(
    rows: Iterator[_Row],
    layout: _Layout,
    default: str | None,
    dumps: Callable[[Any], bytes],
) -> Iterator[_Item]:
    """Rows to messages: wide rows one each, long rows grouped by device and time."""
    group: list[dict[str, Any]] = []
    group_lines: list[int] = []
    group_metrics: list[str] = []
    group_key: tuple[Any, Any] = (None, None)

    def flush() -> _Item:
        item = _Item(list(group_lines), dumps(group), group_key[0])
        item.metrics = list(group_metrics)
        group.clear()
        group_lines.clear()
        group_metrics.clear()
        return item

    for line_no, cells, bad_utf8, unreadable in rows:
        if unreadable is not None:
            if group:
                yield flush()
            yield _Item([line_no], bad_utf8 or b"", default, Reason.BAD_SHAPE, unreadable)
            continue
        if not cells:
            continue  # blank line
        device = default
        if layout.device is not None and layout.device < len(cells):
            named = cells[layout.device]
            if not _empty(named):
                device = str(named).strip()
        if len(cells) != layout.width or bad_utf8 is not None:
            if group:
                yield flush()
            if bad_utf8 is not None:  # the decoder rejects it as invalid UTF-8
                yield _Item([line_no], bad_utf8, default if device is None else device)
            else:
                raw = ",".join(str(c) for c in cells).encode("utf-8", "replace")
                detail = f"row has {len(cells)} cells; the header has {layout.width}"
                yield _Item([line_no], raw, device, Reason.BAD_SHAPE, detail)
            continue
        ts = None if layout.ts is None or _empty(cells[layout.ts]) else cells[layout.ts]
        event_id = None
        if layout.event_id is not None and not _empty(cells[layout.event_id]):
            event_id = cells[layout.event_id]
        if not layout.long:
            entry = {} if ts is None else {"ts": ts}
            if event_id is not None:
                entry["event_id"] = event_id
            for i, metric in layout.metrics:
                if not _empty(cells[i]):
                    entry[metric] = cells[i]
            yield _Item([line_no], dumps(entry), device)
            continue
        key = (device, ts)
        if group and (key != group_key or len(group) >= MAX_GROUP):
            yield flush()
        value = cells[layout.value]
        if _empty(value):
            value = None
        text = None if layout.text is None else cells[layout.text]
        if text is not None and text != "":  # a text of spaces is a text (an empty cell: none)
            if value is not None:
                if group:
                    yield flush()
                raw = ",".join(str(c) for c in cells).encode("utf-8", "replace")
                detail = "row has both a value and a text; a reading is one or the other"
                yield _Item([line_no], raw, device, Reason.BAD_SHAPE, detail)
                continue
            value = text  # a text reading (as a string that reads as text)
        group_key = key
        entry = {"event_type": cells[layout.metric], "value": value}
        if ts is not None:
            entry["ts"] = ts
        if event_id is not None:
            entry["event_id"] = event_id
        if layout.unit is not None and not _empty(cells[layout.unit]):
            entry["unit"] = cells[layout.unit]
        group.append(entry)
        group_lines.append(line_no)
        group_metrics.append(str(entry["event_type"]))
    if group:
        yield flush()


class _Csv(_Reader):
    def __init__(self, f: IO[bytes], default: str | None, name: str) -> None:
        self.f = f
        self.default = default
        self.raw: list[bytes] = []  # the physical lines of the row being read
        self.bad_utf8 = False
        self.reader = csv.reader(self._lines())
        try:
            header = next(self.reader, None)
        except csv.Error as error:
            raise ValueError(f"{name}: unreadable CSV header: {error}") from None
        if not header:
            raise ValueError(f"{name} is empty: a CSV header row is required")
        if self.bad_utf8:
            raise ValueError(f"{name}: the CSV header is not valid UTF-8")
        self.layout = _Layout.of(header, default, name)

    def _lines(self) -> Iterator[str]:
        first = True
        for raw in self.f:
            self.done += len(raw)
            self.raw.append(raw)
            if first:
                first = False
                raw = raw.removeprefix(_BOM)
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                self.bad_utf8 = True
                yield raw.decode("utf-8", "surrogateescape")

    def _rows(self) -> Iterator[_Row]:
        reader = self.reader
        while True:
            self.raw.clear()
            self.bad_utf8 = False
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                yield reader.line_num, (), b"".join(self.raw), f"unreadable CSV row: {error}"
                continue
            yield reader.line_num, cells, b"".join(self.raw) if self.bad_utf8 else None, None

    def items(self) -> Iterator[_Item]:
        return _table_items(self._rows(), self.layout, self.default, _dumps_strings)


class _Parquet(_Reader):
    def __init__(self, path: Path, default: str | None, total: int) -> None:
        try:
            import pyarrow.parquet as pq  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            raise ValueError(
                "Parquet import needs pyarrow, which is not installed: pip install pyarrow"
            ) from None
        self.file = pq.ParquetFile(path)
        self.default = default
        self.total = total
        self.layout = _Layout.of(self.file.schema_arrow.names, default, path.name)

    def _rows(self) -> Iterator[_Row]:
        count = max(1, self.file.metadata.num_rows)
        row = 1  # the header is line 1, as in a CSV export of the same table
        for batch in self.file.iter_batches(batch_size=8192):
            columns = [column.to_pylist() for column in batch.columns]
            for cells in zip(*columns, strict=True):
                row += 1
                yield row, cells, None, None
            self.done = self.total * (row - 1) // count

    def items(self) -> Iterator[_Item]:
        return _table_items(self._rows(), self.layout, self.default, _dumps_typed)
