"""File import: JSON lines and CSV through the live pipeline, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import json
import re
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from telemetra.cli import app
from telemetra.config import Settings
from telemetra.ingest.clean import MIN_TS
from telemetra.ingest.decode import decode
from telemetra.ingest.importer import (
    ImportSummary,
    _Feeder,
    detect_format,
    import_file,
    import_pipeline,
)
from telemetra.ingest.pipeline import Pipeline
from telemetra.ingest.timestamps import format_us
from telemetra.model import US_PER_S, Flag
from telemetra.store import export
from telemetra.store.catalog import create_device, create_tenant
from telemetra.store.query import HistoryRow
from telemetra.store.schema import dead_letters, devices, metrics, readings

DAY = 86_400


def base_s() -> int:
    """A whole minute about a day ago: old enough to be late, never in the future."""
    return (int(time.time()) - DAY) // 60 * 60


async def make_devices(engine: AsyncEngine, n: int = 1) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    uids = [f"imp-{tag}-{i}" for i in range(n)]
    async with engine.begin() as conn:
        tenant_id = await create_tenant(conn, f"import-{tag}")
        for uid in uids:
            await create_device(conn, tenant_id, uid)
    return uids


def pipeline_for(engine: AsyncEngine, db_url: str) -> Pipeline:
    return import_pipeline(engine, Settings(database_url=db_url, auto_register=False))


async def stored(engine: AsyncEngine, uid: str) -> dict[tuple[str, int], float | str | None]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(metrics.c.name, readings.c.ts, readings.c.value, readings.c.text)
            .join(metrics, metrics.c.id == readings.c.metric_id)
            .join(devices, devices.c.id == readings.c.device_id)
            .where(devices.c.uid == uid)
        )
        return {(name, ts): text if value is None else value for name, ts, value, text in rows}


async def letters(engine: AsyncEngine, name: str) -> list[tuple[str, str, str | None]]:
    """(topic, reason, device) of the dead letters of one imported file, by line."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(dead_letters.c.topic, dead_letters.c.reason, dead_letters.c.device_uid).where(
                dead_letters.c.source == "import", dead_letters.c.topic.like(f"import:{name}:%")
            )
        )
        found = [(topic, reason, uid) for topic, reason, uid in rows]
    return sorted(found, key=lambda r: int(r[0].rsplit(":", 1)[1]))


async def import_twice(
    engine: AsyncEngine, db_url: str, path: Path, **options: Any
) -> tuple[ImportSummary, ImportSummary]:
    first = await import_file(pipeline_for(engine, db_url), path, **options)
    # A fresh pipeline, as a second `telemetra import` would have.
    again = await import_file(pipeline_for(engine, db_url), path, **options)
    return first, again


async def test_jsonl_import_counts_rejections_by_line_and_is_idempotent(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    d1, d2 = await make_devices(engine, 2)
    t0 = base_s()
    lines = [
        json.dumps({"device": d1, "ts": t0 * 1000, "temperature": 21.5, "humidity": "40"}),
        "{not json at all",  # names no device: the default device's dead letter
        f'{{"device": "{d1}", "ts": {t0 + 60}, "temperature": }}',  # broken, but names d1
        json.dumps({"device": d1, "ts": t0 + 120, "temperature": 999}),  # out of range
        "",  # blank lines are skipped
        json.dumps([{"ts": t0 + 180, "temperature": 22}, {"ts": t0 + 240, "status": "ok"}]),
        json.dumps(
            {
                "schema": 1,
                "event_id": f"e-{d2}",
                "device_id": d2,
                "event_type": "temperature",
                "value": 19.5,
                "unit": "C",
                "ts_device": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
            }
        ),  # the event form: device_id names the device
        json.dumps({"device": "nobody-" + d1, "ts": t0, "x": 1}),  # unknown device
        json.dumps({"device": d1, "ts": t0 + 300, "x": 1, "y": None}),
    ]
    path = tmp_path / "readings.jsonl"
    path.write_text("\n".join(lines) + "\n")
    seen: list[tuple[int, int]] = []

    first = await import_file(
        pipeline_for(engine, db_url),
        path,
        device=d1,  # the default for lines naming none: line 6 (the array)
        batch_size=3,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert first.rows == 8 and first.messages == 8
    assert first.accepted == 6  # 2 + 2 (array) + 1 (event) + 1
    assert first.rejected_by_reason == {
        "invalid_json": 2,
        "out_of_range": 1,
        "unknown_device": 1,
    }
    assert [(r.line, r.reason) for r in first.rejections] == [
        (2, "invalid_json"),
        (3, "invalid_json"),
        (4, "out_of_range"),
        (8, "unknown_device"),
    ]
    assert seen[-1] == (path.stat().st_size, path.stat().st_size)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)

    us = US_PER_S
    assert await stored(engine, d1) == {
        ("temperature", t0 * us): 21.5,
        ("humidity", t0 * us): 40.0,
        ("temperature", (t0 + 180) * us): 22.0,
        ("status", (t0 + 240) * us): "ok",
        ("x", (t0 + 300) * us): 1.0,
    }
    assert await stored(engine, d2) == {("temperature", t0 * us): 19.5}
    assert await letters(engine, path.name) == [
        ("import:readings.jsonl:2", "invalid_json", d1),  # the default device's
        ("import:readings.jsonl:3", "invalid_json", d1),
        ("import:readings.jsonl:4", "out_of_range", d1),
        ("import:readings.jsonl:8", "unknown_device", f"nobody-{d1}"),
    ]

    again = await import_file(pipeline_for(engine, db_url), path, device=d1)
    assert again.accepted == first.accepted and again.stored == 0
    assert again.duplicates == first.accepted
    assert len(await stored(engine, d1)) == 5

    # Without --device, lines naming no device are still rejected one by one, never fatal.
    orphans = tmp_path / "orphans.ndjson"
    orphans.write_bytes(
        b'{"ts": 1, "x": 1}\n{broken\n\xff\xfe\n'
        + json.dumps({"device": d2, "ts": t0 + 60, "x": 2}).encode()
        + b"\n"
    )
    summary = await import_file(pipeline_for(engine, db_url), orphans)
    assert (summary.rows, summary.accepted) == (4, 1)
    assert [(r.line, r.reason) for r in summary.rejections] == [
        (1, "unknown_device"),
        (2, "invalid_json"),
        (3, "invalid_utf8"),
    ]
    assert await letters(engine, orphans.name) == [
        ("import:orphans.ndjson:1", "unknown_device", None),
        ("import:orphans.ndjson:2", "invalid_json", None),
        ("import:orphans.ndjson:3", "invalid_utf8", None),
    ]


async def test_csv_long_and_wide_forms(engine: AsyncEngine, db_url: str, tmp_path: Path) -> None:
    d1, d2 = await make_devices(engine, 2)
    t0 = base_s()
    long_csv = tmp_path / "long.csv"
    long_csv.write_text(
        "device,ts,metric,value,unit,event_id\n"
        f"{d1},{t0},temperature,21.5,C,\n"
        f"{d1},{t0},humidity,40,,\n"  # grouped with the row above into one message
        f"{d1},{t0 + 60},temperature,70.7,F,\n"  # converted to °C
        f"{d1},{t0 + 60},humidity,,,\n"  # empty value: no_values
        f"{d2},{t0 + 60},state,abc,,ev-1\n"  # text value
        f"{d2},{t0 + 120},humidity,150,,\n"  # out of range
        f"{d2},not-a-time,humidity,1,,\n"
        f"{d2},{t0 + 180},humidity,1,,,extra\n"  # more cells than the header
        f"{d2},{t0 + 240},rssi,-70,,\n"
    )
    first, again = await import_twice(engine, db_url, long_csv, batch_size=2)
    assert first.rows == 9
    assert first.messages == 7  # rows 2+3 and 4+5 share device and time
    assert first.accepted == 5
    assert first.rejected_by_reason == {
        "no_values": 1,
        "out_of_range": 1,
        "bad_timestamp": 1,
        "bad_shape": 1,
    }
    assert [(r.line, r.reason) for r in first.rejections] == [
        (5, "no_values"),
        (7, "out_of_range"),
        (8, "bad_timestamp"),
        (9, "bad_shape"),
    ]
    us = US_PER_S
    d1_rows = await stored(engine, d1)
    assert d1_rows.keys() == {
        ("temperature", t0 * us),
        ("humidity", t0 * us),
        ("temperature", (t0 + 60) * us),
    }
    assert d1_rows[("temperature", (t0 + 60) * us)] == pytest.approx(21.5)
    assert await stored(engine, d2) == {
        ("state", (t0 + 60) * us): "abc",
        ("rssi", (t0 + 240) * us): -70.0,
    }
    assert again.stored == 0 and again.accepted == first.accepted
    assert len(await letters(engine, long_csv.name)) == 4  # the second import adds none

    # Wide form without a device column: --device names it; empty cells are skipped.
    (d3,) = await make_devices(engine)
    wide = tmp_path / "wide.csv"
    wide.write_text(
        "\ufeffts, temperature ,humidity,status\n"  # a BOM and padded names are fine
        + "".join(f"{t0 + 60 * i},{20 + i},{40 + i if i % 2 else ''},ok\n" for i in range(4))
        + f"{t0 + 300},,,\n"  # nothing at all: no_values
    )
    first, again = await import_twice(engine, db_url, wide, device=d3)
    assert (first.rows, first.messages, first.accepted) == (5, 5, 10)
    assert first.rejected_by_reason == {"no_values": 1}
    rows = await stored(engine, d3)
    assert len(rows) == 10
    assert rows[("humidity", (t0 + 60) * us)] == 41.0
    assert ("humidity", t0 * us) not in rows
    assert again.stored == 0 and len(await stored(engine, d3)) == 10


async def test_long_form_takes_a_text_column_and_ignores_how_readings_arrived(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    """The columns of an export: text readings in `text`; flags, ts_device and received_at
    describe the reading where it came from and are ignored (cleaning here sets its own)."""
    (d1,) = await make_devices(engine)
    t0 = base_s()
    path = tmp_path / "exported.csv"
    path.write_text(
        "device,ts,metric,value,text,unit,flags,ts_device,received_at\n"
        f"{d1},{t0},temperature,21.5,,°C,unit_converted,,2026-01-01T00:00:00Z\n"
        f'{d1},{t0},door,," open, ""wide""",,late|server_time,{t0 - 5},x\n'
        f"{d1},{t0 + 60},door,1,closed,,,,\n"  # both: which one?
        f"{d1},{t0 + 60},level,3,,,,,\n"
    )
    first, again = await import_twice(engine, db_url, path)
    assert (first.rows, first.accepted, first.stored) == (4, 3, 3)
    assert [(r.line, r.reason) for r in first.rejections] == [(4, "bad_shape")]
    assert "both a value and a text" in first.rejections[0].detail
    us = US_PER_S
    assert await stored(engine, d1) == {
        ("temperature", t0 * us): 21.5,
        ("door", t0 * us): ' open, "wide"',
        ("level", (t0 + 60) * us): 3.0,
    }
    async with engine.connect() as conn:
        flags = (await conn.execute(
            select(readings.c.flags, readings.c.ts_device)
            .join(devices, devices.c.id == readings.c.device_id)
            .where(devices.c.uid == d1)
        )).all()  # fmt: skip
    assert set(flags) == {(int(Flag.LATE), None)}  # this import's flags, not the file's
    assert again.stored == 0 and again.accepted == 3

    odd = tmp_path / "odd.csv"
    odd.write_text(f"device,ts,metric,value,colour\n{d1},{t0},x,1,red\n")
    with pytest.raises(ValueError, match=r"unexpected column 'colour'.*optionally text, unit"):
        await import_file(pipeline_for(engine, db_url), odd)


async def test_readings_keep_their_time_and_flags(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    """Dense old data is imported as recorded: late, never "clock corrected" to now."""
    (d1,) = await make_devices(engine)
    t0 = base_s()
    path = tmp_path / "dense.csv"
    path.write_text("ts,v\n" + "".join(f"{t0 + i},{i}\n" for i in range(300)))
    pipeline = pipeline_for(engine, db_url)
    summary = await import_file(pipeline, path, device=d1, batch_size=7)
    assert summary.stored == 300
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(readings.c.ts, readings.c.flags)
                .join(devices, devices.c.id == readings.c.device_id)
                .where(devices.c.uid == d1)
            )
        ).all()
    assert sorted(ts for ts, _ in rows) == [(t0 + i) * US_PER_S for i in range(300)]
    assert {flags for _, flags in rows} == {int(Flag.LATE)}


async def test_whole_file_problems_raise_before_importing(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    pipeline = pipeline_for(engine, db_url)
    path = tmp_path / "no-device.csv"
    path.write_text(f"ts,temperature\n{base_s()},20\n")
    with pytest.raises(ValueError, match="no 'device' column"):
        await import_file(pipeline, path)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="header row is required"):
        await import_file(pipeline, empty, device="x")
    half = tmp_path / "half.csv"
    half.write_text("device,ts,metric\n")
    with pytest.raises(ValueError, match="'metric' and 'value'"):
        await import_file(pipeline, half)
    with pytest.raises(ValueError, match="unknown file suffix"):
        detect_format(tmp_path / "data.xlsx")
    assert detect_format(tmp_path / "data.txt", "NDJSON") == "jsonl"
    assert detect_format(tmp_path / "DATA.CSV") == "csv"


async def test_parquet_import(engine: AsyncEngine, db_url: str, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    [uid] = await make_devices(engine)
    t0 = base_s()
    table = pa.table(
        {
            "device": [uid, uid, uid],
            "ts": [t0 * 1000, (t0 + 60) * 1000, (t0 + 120) * 1000],
            "temperature": [20.5, None, 6000.0],
            "humidity": [40.0, 41.0, 42.0],
        }
    )
    path = tmp_path / "history.parquet"
    pq.write_table(table, path)
    first, again = await import_twice(engine, db_url, path)
    assert first.accepted == 4 and first.rejected_by_reason == {"out_of_range": 1}
    assert again.stored == 0
    assert (await stored(engine, uid))[("temperature", t0 * US_PER_S)] == 20.5


def test_cli_import(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEMETRA_DATABASE_URL", db_url)
    monkeypatch.delenv("TELEMETRA_AUTO_REGISTER", raising=False)
    tag = uuid.uuid4().hex[:8]
    runner = CliRunner()
    uid = f"imp-cli-{tag}"
    made = runner.invoke(app, ["device", "create", uid])
    assert made.exit_code == 0, made.output
    t0 = base_s()
    path = tmp_path / "cli.csv"
    path.write_text(
        "device,ts,metric,value\n"
        + "".join(f"{uid},{t0 + 60 * i},temperature,{20 + i / 10}\n" for i in range(50))
        + f"{uid},{t0},temperature,19.5\n"  # a different value: conflict
        + f"{uid},{t0 + 3000},temperature,500\n"
    )

    result = runner.invoke(app, ["import", str(path), "--batch-size", "7"])
    assert result.exit_code == 0, result.output
    assert "readings accepted" in result.output
    assert "out_of_range" in result.output and "conflict" in result.output
    assert "line 53: out_of_range" in result.output

    result = runner.invoke(app, ["import", str(path)])
    assert result.exit_code == 0, result.output
    assert "already stored" in result.output

    missing = runner.invoke(app, ["import", str(tmp_path / "missing.csv")])
    assert missing.exit_code == 1 and "no such file" in missing.output
    odd = tmp_path / "data.xml"
    odd.write_text("<x/>")
    unknown = runner.invoke(app, ["import", str(odd)])
    assert unknown.exit_code == 1 and "unknown file suffix" in unknown.output
    bad_format = runner.invoke(app, ["import", str(path), "--format", "xls"])
    assert bad_format.exit_code == 1 and "unknown format 'xls'" in bad_format.output
    nobody = tmp_path / "nobody.jsonl"
    nobody.write_text(json.dumps({"device": f"nobody-{tag}", "ts": t0, "x": 1}) + "\n")
    rejected = runner.invoke(app, ["import", str(nobody)])
    assert rejected.exit_code == 1 and "no readings accepted" in rejected.output


async def test_untimed_rows_keep_their_first_import_time(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    [uid] = await make_devices(engine)
    path = tmp_path / "untimed.jsonl"
    path.write_text(
        json.dumps({"device": uid, "level": 3}) + "\n"
        + json.dumps({"device": uid, "event_id": "e-1", "level": 4}) + "\n"
    )  # fmt: skip
    first, again = await import_twice(engine, db_url, path)
    assert first.stored == 2 and again.stored == 0 and again.accepted == 2
    assert len(await stored(engine, uid)) == 2


ROUND_TRIP_COLUMNS = ("device", "ts", "metric", "value", "text", "unit")


def exported_readings(path: Path) -> list[tuple[str, ...]]:
    """A CSV export's readings without the columns that say how they arrived."""
    with path.open(newline="") as f:
        return [tuple(row[c] for c in ROUND_TRIP_COLUMNS) for row in csv.DictReader(f)]


def test_cli_export_imports_back(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`telemetra export` in each format, then `telemetra import` into a device made afresh
    under the same id, stores the same readings; a second import stores nothing."""
    monkeypatch.setenv("TELEMETRA_DATABASE_URL", db_url)
    monkeypatch.delenv("TELEMETRA_AUTO_REGISTER", raising=False)
    runner = CliRunner()
    tag = uuid.uuid4().hex[:8]
    uid, pulses = f"exp-cli-{tag}", f"pulses_{tag}"
    assert runner.invoke(app, ["device", "create", uid]).exit_code == 0
    assert runner.invoke(app, ["rule", "set", pulses, "--unit", "imp"]).exit_code == 0
    t0 = base_s() * US_PER_S
    source = tmp_path / "source.jsonl"
    source.write_text(
        json.dumps({"device": uid, "ts": format_us(t0), "temperature": 21.5, "status": "open"})
        + "\n"
        + json.dumps({"device": uid, "ts": format_us(t0 + 1), "humidity": 40.125,
                      "note": 'a "quoted",\nline', pulses: 7})
        + "\n"
        + json.dumps({"device": uid, "ts": format_us(t0 + 60_000_001),
                      "event_type": "temperature", "value": 70, "unit": "F"})
        + "\n"
    )  # fmt: skip
    assert runner.invoke(app, ["import", str(source)]).exit_code == 0

    files = {}
    for fmt in ("csv", "jsonl", "parquet"):
        files[fmt] = tmp_path / f"{uid}.{fmt}"
        done = runner.invoke(app, ["export", uid, "--from", "-2d", "--out", str(files[fmt])])
        assert done.exit_code == 0, done.output
        assert f"exported 6 readings of {uid} ({fmt}) to {files[fmt]}" in done.output
    want = exported_readings(files["csv"])
    assert len(want) == 6 and want[0][:2] == (uid, format_us(t0))
    assert {("temperature", "°C"), (pulses, "imp")} <= {(r[2], r[5]) for r in want}
    assert not list(tmp_path.glob("*.part"))

    for fmt, path in files.items():
        assert runner.invoke(app, ["device", "delete", uid, "--yes"]).exit_code == 0
        assert runner.invoke(app, ["device", "create", uid]).exit_code == 0
        imported = runner.invoke(app, ["import", str(path)])
        assert imported.exit_code == 0, imported.output
        again = runner.invoke(app, ["import", str(path)])
        assert re.search(r"new\W+0\b", again.output), again.output
        copy = tmp_path / f"copy-{fmt}.csv"
        assert (
            runner.invoke(app, ["export", uid, "--from", "-2d", "--out", str(copy)]).exit_code == 0
        )
        # The same readings; at one time in metric id order, which is the database's own.
        assert sorted(exported_readings(copy)) == sorted(want), fmt

    piped = runner.invoke(app, ["export", uid, "--from", "-2d", "--metric", "note", "--out", "-"])
    assert piped.exit_code == 0
    assert piped.stdout.startswith("device,ts,metric,value,text,unit,flags,ts_device,received_at")
    assert '"a ""quoted"",\nline"' in piped.stdout and "temperature" not in piped.stdout

    for args, message in [
        (["nobody-here", "--out", "x.csv"], "no device 'nobody-here'"),
        ([uid, "--from", "yesterday", "--out", "x.csv"],
         "`--from` is not a time: 'yesterday'; expected ISO-8601"),
        ([uid, "--from", "now", "--to", "-1h", "--out", "x.csv"], "`--from` ("),
        ([uid, "--out", "x.xlsx"], "unknown file suffix '.xlsx'"),
        ([uid, "--format", "xml", "--out", "x.csv"], "unknown format 'xml'"),
    ]:  # fmt: skip
        failed = runner.invoke(app, ["export", *args])
        assert failed.exit_code == 1 and message in failed.output, failed.output


# --- the round trip without a database: export writers, import readers, the decoder -----------


class _Rows(export.Export):
    """An export of given rows, without a database."""

    __slots__ = ("given",)

    async def pages(self) -> AsyncIterator[list[HistoryRow]]:
        yield self.given


def _reads_as_text(s: str) -> bool:
    try:
        float(s.strip())
    except ValueError:
        return s != ""  # an empty text is an empty cell in CSV and Parquet
    return False


_TEXTS = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
).filter(_reads_as_text)
_READING = st.tuples(
    st.sampled_from(["temperature", "status", "env.co2", "zähler", "a b"]),
    st.integers(MIN_TS, 4_102_444_800 * US_PER_S - 1),  # 2000 .. 2100
    st.one_of(st.floats(-1e200, 1e200, allow_nan=False), _TEXTS),
    st.integers(0, 127),
)


def _decoded(fmt: str, data: bytes, tmp: Path) -> set[tuple[str, int, float | None, str | None]]:
    """What importing ``data`` would hand the cleaning: (metric, ts, value, text) per reading."""
    path = tmp / f"export.{fmt}"
    path.write_bytes(data)
    feeder = _Feeder.open(fmt, path, None, Settings())
    try:
        found = set()
        for item in feeder.items:
            assert item.reason is None and item.device == "dev-1", item
            result = decode("native", "dev-1", item.payload, MIN_TS, UTC)
            assert not result.rejections, result.rejections
            for entry in result.entries:
                found |= {(r.metric, r.ts, r.value, r.text) for r in entry.readings}
        return found
    finally:
        feeder.close()


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@given(readings=st.lists(_READING, max_size=30, unique_by=lambda r: (r[0], r[1])))
@settings(max_examples=60, deadline=None)
def test_what_an_export_writes_an_import_reads_back(
    fmt: export.Format, readings: list[tuple[str, int, float | str, int]]
) -> None:
    rows = [
        HistoryRow(m, ts, v if isinstance(v, float) else None,
                   v if isinstance(v, str) else None, flags, ts + 1, None)
        for m, ts, v, flags in sorted(readings, key=lambda r: r[1])
    ]  # fmt: skip
    given_rows = _Rows(None, 1, 1, "dev-1", None, 0, 2**62)  # type: ignore[arg-type]
    given_rows.given = rows

    async def write() -> bytes:
        return b"".join([chunk async for chunk in export.chunks(given_rows, fmt)])

    with tempfile.TemporaryDirectory() as tmp:
        got = _decoded(fmt, asyncio.run(write()), Path(tmp))
    assert got == {(r.metric, r.ts, r.value, r.text) for r in rows}
