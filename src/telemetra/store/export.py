"""Export of a device's raw readings as CSV, JSON lines or Parquet, streamed page by page.

One writer for ``GET /devices/{uid}/export`` and ``telemetra export``; every format imports back
with ``telemetra import`` to the same readings (device, metric, time, value or text, unit):

- CSV and Parquet: the long form ``device,ts,metric,value,text,unit,flags,ts_device,received_at``.
  ``unit`` is the unit the value is stored in (the canonical unit of the metric's cleaning rule;
  empty for text and for metrics without one). ``flags``, ``ts_device`` and ``received_at`` say
  how the reading arrived here; an import accepts and ignores them (its own cleaning sets flags).
- JSON lines: one native event-form object per reading (``device``, ``ts``, ``event_type``,
  ``value``, ``unit``), the same three informational fields under ``meta``.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

import orjson
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from telemetra.ingest.clean import RuleBook, RuleOverride
from telemetra.ingest.timestamps import format_us
from telemetra.model import flag_names
from telemetra.store import query
from telemetra.store.query import HistoryRow
from telemetra.store.schema import metric_rules

Format = Literal["csv", "jsonl", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl", "parquet")
COLUMNS = ("device", "ts", "metric", "value", "text", "unit", "flags", "ts_device", "received_at")
MEDIA_TYPES: dict[Format, str] = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson",
    "parquet": "application/vnd.apache.parquet",
}
PAGE = 5000  # readings read per query (one short connection each)
PARQUET_ROW_GROUP_PAGES = 10  # pages per Parquet row group
FLAG_SEPARATOR = "|"  # between flag names in a CSV cell: late|out_of_order
NO_PYARROW = "Parquet export needs pyarrow (pip install 'telemetra[parquet]'); use csv or jsonl"


class ParquetUnavailable(RuntimeError):
    """pyarrow is not installed."""


@dataclass(slots=True)
class Export:
    """The readings of one device in [start, end) to write, oldest first.

    ``rows`` and ``reached`` (the event time of the last row read) grow as pages are read:
    progress for a long export.
    """

    engine: AsyncEngine
    tenant_id: int
    device_id: int
    device: str
    device_type: str | None
    start: int
    end: int
    metrics: list[str] | None = None
    page_size: int | None = None  # None: PAGE
    rows: int = 0
    reached: int = 0
    _units: dict[str, str | None] = field(default_factory=dict)
    _rules: RuleBook | None = None

    async def pages(self) -> AsyncIterator[list[HistoryRow]]:
        """The readings, a page at a time, each read on its own short connection."""
        self.reached = self.start
        cursor: str | None = None
        while True:
            async with self.engine.connect() as conn:
                if self._rules is None:
                    self._rules = await _rule_book(conn, self.tenant_id)
                page = await query.history(
                    conn, self.tenant_id, self.device_id, metrics=self.metrics,
                    start=self.start, end=self.end, limit=self.page_size or PAGE, cursor=cursor,
                )  # fmt: skip
            self.rows += len(page.rows)
            if page.rows:
                self.reached = page.rows[-1].ts
            yield page.rows
            if page.next_cursor is None:
                self.reached = self.end
                return
            cursor = page.next_cursor

    def unit(self, row: HistoryRow) -> str | None:
        """The unit a numeric value is stored in: its metric's rule's unit (None for text)."""
        if row.value is None:
            return None
        if row.metric not in self._units:
            rules = self._rules or RuleBook()
            rule = rules.rule(row.metric, self.device_type, self.tenant_id)
            self._units[row.metric] = rule.unit
        return self._units[row.metric]


async def _rule_book(conn: AsyncConnection, tenant_id: int) -> RuleBook:
    """The stored rules that apply to a tenant's devices (its own and everyone's)."""
    rows = await conn.execute(
        select(metric_rules).where(
            or_(metric_rules.c.tenant_id.is_(None), metric_rules.c.tenant_id == tenant_id)
        )
    )
    return RuleBook(
        {
            (r.tenant_id, r.metric, r.device_type): RuleOverride(
                r.min_value, r.max_value, r.unit, r.kind
            )
            for r in rows
        }
    )


def chunks(export: Export, fmt: Format) -> AsyncIterator[bytes]:
    """The export as a stream of bytes; ParquetUnavailable (before anything is read) if
    ``fmt`` is parquet and pyarrow is not installed."""
    if fmt == "parquet":
        return _parquet_chunks(export, *_pyarrow())
    if fmt == "jsonl":
        return _jsonl_chunks(export)
    return _csv_chunks(export)


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow  # type: ignore[import-not-found, unused-ignore]
        import pyarrow.parquet  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise ParquetUnavailable(NO_PYARROW) from None
    return pyarrow, pyarrow.parquet


def _time(ts: int | None) -> str:
    return "" if ts is None else format_us(ts)


async def _csv_chunks(export: Export) -> AsyncIterator[bytes]:
    yield (",".join(COLUMNS) + "\r\n").encode()
    async for rows in export.pages():
        out = io.StringIO()
        writer = csv.writer(out)
        for r in rows:
            writer.writerow(
                (
                    export.device,
                    format_us(r.ts),
                    r.metric,
                    "" if r.value is None else repr(r.value),  # repr: reads back exactly
                    r.text or "",
                    export.unit(r) or "",
                    FLAG_SEPARATOR.join(flag_names(r.flags)),
                    _time(r.ts_device),
                    format_us(r.received_at),
                )
            )
        yield out.getvalue().encode()


async def _jsonl_chunks(export: Export) -> AsyncIterator[bytes]:
    async for rows in export.pages():
        lines = []
        for r in rows:
            entry: dict[str, Any] = {
                "device": export.device,
                "ts": format_us(r.ts),
                "event_type": r.metric,
                "value": r.text if r.value is None else r.value,
            }
            unit = export.unit(r)
            if unit is not None:
                entry["unit"] = unit
            entry["meta"] = {
                "flags": flag_names(r.flags),
                "ts_device": None if r.ts_device is None else format_us(r.ts_device),
                "received_at": format_us(r.received_at),
            }
            lines.append(orjson.dumps(entry))
        if lines:
            yield b"\n".join(lines) + b"\n"


class _Drain:
    """A write-only, non-seekable file for pyarrow that hands back what was written so far, so
    that a Parquet file leaves row group by row group instead of being kept whole."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)  # a copy: pyarrow may reuse its buffer
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def parquet_schema(pa: Any) -> Any:
    """The columns of a Parquet export, typed."""
    return pa.schema(
        [
            ("device", pa.string()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("metric", pa.string()),
            ("value", pa.float64()),
            ("text", pa.string()),
            ("unit", pa.string()),
            ("flags", pa.list_(pa.string())),
            ("ts_device", pa.timestamp("us", tz="UTC")),
            ("received_at", pa.timestamp("us", tz="UTC")),
        ]
    )


async def _parquet_chunks(export: Export, pa: Any, pq: Any) -> AsyncIterator[bytes]:
    """A Parquet file, streamed: pages become record batches (columnar; only one page is ever
    held as Python objects), every PARQUET_ROW_GROUP_PAGES pages are written as a row group and
    the bytes written so far are sent; the footer follows the last row group."""
    schema = parquet_schema(pa)
    group_rows = max(1, PARQUET_ROW_GROUP_PAGES) * (export.page_size or PAGE)
    sink = _Drain()
    writer = pq.ParquetWriter(sink, schema, compression="zstd")
    batches: list[Any] = []
    pending = 0

    def write_group() -> None:
        writer.write_table(pa.Table.from_batches(batches, schema=schema))
        batches.clear()

    def column(name: str, values: list[Any]) -> Any:
        return pa.array(values, type=schema.field(name).type)

    try:
        async for rows in export.pages():
            if rows:
                columns = [
                    column("device", [export.device] * len(rows)),
                    column("ts", [r.ts for r in rows]),
                    column("metric", [r.metric for r in rows]),
                    column("value", [r.value for r in rows]),
                    column("text", [r.text for r in rows]),
                    column("unit", [export.unit(r) for r in rows]),
                    column("flags", [flag_names(r.flags) for r in rows]),
                    column("ts_device", [r.ts_device for r in rows]),
                    column("received_at", [r.received_at for r in rows]),
                ]
                batches.append(pa.RecordBatch.from_arrays(columns, schema=schema))
                pending += len(rows)
            if pending >= group_rows:
                await asyncio.to_thread(write_group)  # encoding and compression off the loop
                pending = 0
                yield sink.drain()
        if batches:
            await asyncio.to_thread(write_group)
        await asyncio.to_thread(writer.close)
        yield sink.drain()
    finally:
        if not sink.closed:
            writer.close()  # the reader went away: release the writer


async def write_file(
    export: Export, fmt: Format, out: BinaryIO, progress: Callable[[Export], None] | None = None
) -> None:
    """Write the export to the binary file ``out``, calling ``progress`` after every chunk."""
    async for chunk in chunks(export, fmt):
        await asyncio.to_thread(out.write, chunk)
        if progress is not None:
            progress(export)
