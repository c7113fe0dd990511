"""Payload decoding: MQTT/HTTP message bytes to readings, without I/O and without ever raising.

Three formats: ``native`` (flat, ThingsBoard and event forms), ``chirpstack`` (v4 uplink JSON, v3
accepted) and ``tele`` (Tasmota style). Every problem becomes a Rejection naming the entry, the
metric and what was expected: one bad value rejects that value, one bad entry that entry, and
only an unreadable message rejects the whole message. A leading UTF-8 byte order mark is tolerated
and stripped (some Windows and .NET publishers add one); any other invalid UTF-8 is rejected.
"""

from __future__ import annotations

import json
import math
import sys
from datetime import tzinfo
from typing import Any

from telemetra.ingest.timestamps import TimestampError, parse_timestamp
from telemetra.model import Decoded, DecodeResult, Flag, Reading, Reason, Rejection

__all__ = ["MAX_DEPTH", "MAX_MAGNITUDE", "MAX_NAME", "MAX_TEXT", "decode"]

MAX_DEPTH = 8  # levels of nested objects flattened into one dotted metric name
MAX_NAME = 200  # characters in a metric name (after flattening)
MAX_TEXT = 1024  # characters in a text value
MAX_ID = 200  # characters in an event id
MAX_UNIT = 64  # characters in a unit

_BOM = b"\xef\xbb\xbf"
_NATIVE_RESERVED = frozenset({"ts", "ts_device", "event_id", "device_id", "schema", "meta"})
_EVENT_RESERVED = _NATIVE_RESERVED | {"event_type", "value", "unit"}
_NUMBER_START = frozenset("0123456789+-.")
_DIGITS = frozenset("0123456789")
_SERVER = int(Flag.SERVER_TIME)
_NAIVE = int(Flag.NAIVE_TIME)
_INT64 = 2**63
_MAX_FLOAT = sys.float_info.max
# The largest magnitude stored. Rollups and queries add values up (sum, avg): with every value
# within ±1e250, even a unit conversion (×1000 at most) and 10^50 values cannot overflow a
# double, where two values near ±1.8e308 in one minute did (PostgreSQL refused the whole
# batch: "value out of range: overflow"). No physical quantity comes near either bound.
MAX_MAGNITUDE = 1e250


class _DuplicateKey(Exception):
    """Raised from the JSON object hook: the parser has no other way to report it."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of two equal keys silently; a dict shorter than its pairs had one.
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return d


def _long_int(s: str) -> int | float:
    # Only on the retry path: Python refuses int() beyond 4300 digits; float() gives inf instead,
    # which the value rules then reject as non-finite.
    return int(s) if len(s) <= 4000 else float(s)


# Built once: json.loads with hooks would construct a new decoder per message.
_DECODER = json.JSONDecoder(object_pairs_hook=_pairs)
_LONG_INT_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_int=_long_int)


def _show(value: object, limit: int = 60) -> str:
    # repr escapes NUL and lone surrogates, so details are always safe to log and to store.
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit] + "…"
    return repr(value)


def _safe_metric(name: str) -> str:
    # Rejection.metric is stored too: a name that is itself the problem is kept escaped.
    if name.isprintable() and len(name) <= MAX_NAME:
        return name
    return repr(name[:MAX_NAME])[1:-1]


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _text_problem(s: str) -> str | None:
    """Why a string cannot be stored as text (PostgreSQL refuses NUL; UTF-8 refuses surrogates)."""
    if "\x00" in s:
        return "contains a NUL character"
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone surrogate (invalid Unicode)"
    return None


def _name_problem(name: str) -> str | None:
    if not name:
        return "metric name is empty"
    if len(name) > MAX_NAME:
        return f"metric name is {len(name)} characters; at most {MAX_NAME} allowed"
    if not name.isprintable():
        return (
            _text_problem(name) or "metric name contains a control or other non-printable character"
        )
    return None


def _load(text: str) -> tuple[Any, Rejection | None]:
    """Parse JSON strictly: duplicate keys, runaway nesting and syntax errors become rejections."""
    for decoder in (_DECODER, _LONG_INT_DECODER):
        try:
            return decoder.decode(text), None
        except _DuplicateKey as exc:
            return None, Rejection(
                Reason.DUPLICATE_KEY, f"key {_show(exc.key)} appears twice in one object"
            )
        except json.JSONDecodeError as exc:
            return None, Rejection(
                Reason.INVALID_JSON,
                f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos})",
            )
        except RecursionError:
            return None, Rejection(Reason.TOO_DEEP, "JSON nesting is too deep to parse")
        except ValueError as exc:
            # An integer beyond Python's digit limit: retry once with the long-int hook.
            error = str(exc)
    return None, Rejection(Reason.INVALID_JSON, f"invalid JSON: {error[:200]}")


def _flatten(
    obj: dict[str, Any],
    prefix: str,
    depth: int,
    ts: int,
    flags: int,
    unit: str | None,
    index: int,
    readings: list[Reading],
    rejections: list[Rejection],
    seen: set[str],
) -> None:
    """Append one Reading per leaf of obj (dotted names) and one Rejection per bad leaf."""
    for key, v in obj.items():
        if v is None:
            continue
        name = prefix + key
        t = type(v)
        if t is dict:
            if not key:
                rejections.append(
                    Rejection(
                        Reason.BAD_METRIC_NAME,
                        f"empty key in {_show(prefix or 'the entry')}",
                        index,
                        _safe_metric(name),
                    )
                )
            elif depth >= MAX_DEPTH:
                rejections.append(
                    Rejection(
                        Reason.TOO_DEEP,
                        f"{_show(name)} is nested deeper than {MAX_DEPTH} levels",
                        index,
                        _safe_metric(name),
                    )
                )
            else:
                _flatten(
                    v, name + ".", depth + 1, ts, flags, unit, index, readings, rejections, seen
                )
            continue
        # The common case (short printable name, number) stays on this path without calls.
        if not key or len(name) > MAX_NAME or not name.isprintable():
            problem = "empty key" if not key else _name_problem(name)
            rejections.append(
                Rejection(
                    Reason.BAD_METRIC_NAME,
                    f"{_show(name)}: {problem}",
                    index,
                    _safe_metric(name),
                )
            )
            continue
        if name in seen:
            rejections.append(
                Rejection(
                    Reason.DUPLICATE_KEY,
                    f"{_show(name)} appears twice in the entry after flattening nested objects",
                    index,
                    name,
                )
            )
            continue
        seen.add(name)
        if t is float:
            if -MAX_MAGNITUDE <= v <= MAX_MAGNITUDE:  # false for NaN and ±inf too
                readings.append(Reading(name, ts, v, None, flags, None, unit))
                continue
            if v - v == 0.0:  # finite, but too large to add up
                rejections.append(_too_large(name, v, index))
                continue
        elif t is int:
            if -MAX_MAGNITUDE <= v <= MAX_MAGNITUDE:
                readings.append(Reading(name, ts, float(v), None, flags, None, unit))
                continue
            if -_MAX_FLOAT <= v <= _MAX_FLOAT:
                rejections.append(_too_large(name, float(v), index))
                continue
        elif t is bool:
            readings.append(Reading(name, ts, 1.0 if v else 0.0, None, flags, None, unit))
            continue
        elif t is str:
            s = v.strip()
            if s and s[0] in _NUMBER_START and s.isascii() and "_" not in s:
                try:
                    f = float(s)
                except ValueError:
                    pass
                else:
                    if -MAX_MAGNITUDE <= f <= MAX_MAGNITUDE:
                        readings.append(Reading(name, ts, f, None, flags, None, unit))
                        continue
                    if f - f == 0.0:
                        rejections.append(_too_large(name, f, index))
                        continue
                    if not _DIGITS.isdisjoint(s):  # "1e400" is a number too big, "-inf" is text
                        rejections.append(
                            Rejection(
                                Reason.NON_FINITE_NUMBER,
                                f"{_show(name)}: {_show(s)} overflows a double; "
                                "expected a finite number",
                                index,
                                name,
                            )
                        )
                        continue
            problem = _text_problem(v)
            if problem is None and len(v) > MAX_TEXT:
                problem = f"is {len(v)} characters; at most {MAX_TEXT} allowed"
            if problem is None:
                readings.append(Reading(name, ts, None, v, flags, None, unit))
            else:
                rejections.append(
                    Rejection(Reason.BAD_TEXT, f"{_show(name)}: text {problem}", index, name)
                )
            continue
        rejections.append(_bad_value(name, v, index))


def _too_large(name: str, v: float, index: int) -> Rejection:
    return Rejection(
        Reason.OUT_OF_RANGE,
        f"{_show(name)}: {v:g} is beyond ±{MAX_MAGNITUDE:g}, the largest magnitude stored "
        "(larger values would overflow sums)",
        index,
        name,
    )


def _bad_value(name: str, v: object, index: int) -> Rejection:
    if isinstance(v, float):
        what = "NaN" if math.isnan(v) else "Infinity (or a number too large for a double)"
        return Rejection(
            Reason.NON_FINITE_NUMBER,
            f"{_show(name)}: {what}; expected a finite number",
            index,
            name,
        )
    if isinstance(v, int) and not isinstance(v, bool):
        return Rejection(
            Reason.NON_FINITE_NUMBER,
            f"{_show(name)}: integer too large for a double; expected a finite number",
            index,
            name,
        )
    return Rejection(
        Reason.BAD_VALUE,
        f"{_show(name)}: got {_kind(v)}; expected a number, boolean, string, null or object",
        index,
        name,
    )


def _meta_problem(v: object, depth: int) -> tuple[Reason, str] | None:
    """Why meta cannot be kept as JSON in either database (NUL, surrogates, NaN, huge ints)."""
    if isinstance(v, str):
        p = _text_problem(v)
        return (Reason.BAD_TEXT, f"string {p}") if p else None
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, float):
        return None if math.isfinite(v) else (Reason.NON_FINITE_NUMBER, "non-finite number")
    if isinstance(v, int):
        ok = -_INT64 <= v < 2 * _INT64
        return None if ok else (Reason.BAD_VALUE, "integer outside the 64-bit range")
    if isinstance(v, dict | list):
        if depth >= MAX_DEPTH:
            return Reason.TOO_DEEP, f"nested deeper than {MAX_DEPTH} levels"
        items = v.items() if isinstance(v, dict) else enumerate(v)
        for k, x in items:
            if isinstance(k, str):
                p = _text_problem(k)
                if p:
                    return Reason.BAD_TEXT, f"key {p}"
            found = _meta_problem(x, depth + 1)
            if found:
                return found
        return None
    return Reason.BAD_VALUE, f"unexpected {_kind(v)}"


def _label(value: object, field: str, limit: int) -> tuple[str | None, Rejection | None]:
    """An event id or unit: a short printable string (ids may also be integers)."""
    if value is None:
        return None, None
    if field == "event_id" and type(value) is int:
        value = str(value)
    if not isinstance(value, str):
        return None, Rejection(
            Reason.BAD_SHAPE, f"{field} must be a string, got {_kind(value)}", metric=None
        )
    if not value or len(value) > limit or not value.isprintable():
        problem = (
            _text_problem(value)
            or ("is empty" if not value else None)
            or (f"is {len(value)} characters; at most {limit}" if len(value) > limit else None)
            or "contains a control or other non-printable character"
        )
        return None, Rejection(Reason.BAD_TEXT, f"{field} {_show(value)} {problem}")
    return value, None


def _entry_time(
    obj: dict[str, Any], keys: tuple[str, ...], tz: tzinfo, received_at: int
) -> tuple[int, int, bool, Rejection | None]:
    """(ts, flags, has_device_time, rejection) from the first timestamp keys present."""
    found: list[tuple[str, int, bool]] = []
    for key in keys:
        raw = obj.get(key)
        if raw is None:
            continue
        try:
            us, naive = parse_timestamp(raw, tz)
        except TimestampError as exc:
            return 0, 0, False, Rejection(Reason.BAD_TIMESTAMP, f"{key}: {exc}")
        found.append((key, us, naive))
    if not found:
        return received_at, _SERVER, False, None
    key, us, naive = found[0]
    for other, us2, _ in found[1:]:
        if us2 != us:
            return (
                0,
                0,
                False,
                Rejection(
                    Reason.BAD_TIMESTAMP,
                    f"{key} and {other} disagree; send one device timestamp",
                ),
            )
    return us, _NAIVE if naive else 0, True, None


def _reject(result: DecodeResult, rej: Rejection, index: int) -> None:
    rej.index = index
    result.rejections.append(rej)


def _finish(
    result: DecodeResult,
    device: str,
    readings: list[Reading],
    rejected_before: int,
    index: int,
    event_id: str | None,
    has_time: bool,
    meta: dict[str, Any] | None,
    empty_detail: str,
) -> None:
    if readings:
        result.entries.append(Decoded(device, readings, event_id, index, has_time, meta))
    elif len(result.rejections) == rejected_before:
        result.rejections.append(Rejection(Reason.NO_VALUES, empty_detail, index))


def _native_entry(
    obj: dict[str, Any], index: int, device: str, tz: tzinfo, received_at: int, out: DecodeResult
) -> None:
    """Decode one object of the native format (flat, ThingsBoard or event form) into out."""
    device_id = obj.get("device_id")
    if device_id is not None:
        if not isinstance(device_id, str):
            _reject(
                out,
                Rejection(Reason.BAD_SHAPE, f"device_id must be a string, got {_kind(device_id)}"),
                index,
            )
            return
        if device_id != device:
            detail = (
                f"payload names device {_show(device_id)} "
                f"but the topic or credential names {_show(device)}"
            )
            _reject(out, Rejection(Reason.DEVICE_MISMATCH, detail), index)
            return
    schema = obj.get("schema")
    if schema is not None and not ((type(schema) is int and schema == 1) or schema == "1"):
        _reject(
            out,
            Rejection(Reason.BAD_SHAPE, f"schema {_show(schema)} is not supported; expected 1"),
            index,
        )
        return
    event_id, bad = _label(obj.get("event_id"), "event_id", MAX_ID)
    if bad is not None:
        _reject(out, bad, index)
        return
    ts, flags, has_time, bad = _entry_time(obj, ("ts", "ts_device"), tz, received_at)
    if bad is not None:
        _reject(out, bad, index)
        return
    meta = _entry_meta(obj.get("meta"), index, out)
    before = len(out.rejections)  # a dropped meta does not excuse an entry without values
    readings: list[Reading] = []
    seen: set[str] = set()
    empty = "entry has no values (nulls are skipped)"
    if "event_type" in obj:
        event_type = obj["event_type"]
        problem = _name_problem(event_type) if isinstance(event_type, str) else None
        if not isinstance(event_type, str) or problem:
            detail = f"event_type {_show(event_type)}: " + (
                problem or f"expected a metric name string, got {_kind(event_type)}"
            )
            metric = _safe_metric(event_type) if isinstance(event_type, str) else None
            _reject(out, Rejection(Reason.BAD_METRIC_NAME, detail, metric=metric), index)
            return
        unit, bad = _label(obj.get("unit"), "unit", MAX_UNIT)
        if bad is not None:
            bad.metric = event_type
            _reject(out, bad, index)
        else:
            _flatten(
                {event_type: obj.get("value")},
                "",
                1,
                ts,
                flags,
                unit,
                index,
                readings,
                out.rejections,
                seen,
            )
        extra = {k: v for k, v in obj.items() if k not in _EVENT_RESERVED}
        empty = f"event {_show(event_type)} has no value"
    else:
        values = obj.get("values")
        if type(values) is dict and all(k in _NATIVE_RESERVED or k == "values" for k in obj):
            extra = values  # ThingsBoard {"ts": ..., "values": {...}}
        else:
            extra = {k: v for k, v in obj.items() if k not in _NATIVE_RESERVED}
    _flatten(extra, "", 1, ts, flags, None, index, readings, out.rejections, seen)
    _finish(out, device, readings, before, index, event_id, has_time, meta, empty)


def _entry_meta(raw: object, index: int, out: DecodeResult) -> dict[str, Any] | None:
    # A bad meta is dropped with its own rejection; the readings it came with are still good.
    if raw is None:
        return None
    if not isinstance(raw, dict):
        detail = f"meta must be an object, got {_kind(raw)}; meta dropped"
        out.rejections.append(Rejection(Reason.BAD_SHAPE, detail, index, "meta"))
        return None
    found = _meta_problem(raw, 1)
    if found is not None:
        reason, problem = found
        detail = f"meta {problem}; meta dropped"
        out.rejections.append(Rejection(reason, detail, index, "meta"))
        return None
    return raw


def _native(doc: Any, device: str, tz: tzinfo, received_at: int, out: DecodeResult) -> None:
    if type(doc) is dict:
        _native_entry(doc, 0, device, tz, received_at, out)
    elif type(doc) is list:
        if not doc:
            out.rejections.append(Rejection(Reason.NO_VALUES, "empty array"))
        for i, item in enumerate(doc):
            if type(item) is dict:
                _native_entry(item, i, device, tz, received_at, out)
            else:
                detail = f"array element is {_kind(item)}; expected an object"
                out.rejections.append(Rejection(Reason.BAD_SHAPE, detail, i))
    else:
        detail = f"payload is {_kind(doc)}; expected a JSON object or an array of objects"
        out.rejections.append(Rejection(Reason.BAD_SHAPE, detail))


def _radio_max(rx_info: object, key: str) -> tuple[float | None, bool]:
    """Best (max) value of rssi or snr over gateways, and whether some gateway sent a bad one."""
    best: float | None = None
    bad = False
    if not isinstance(rx_info, list):
        return None, False
    for gw in rx_info:
        if not isinstance(gw, dict):
            continue
        v = gw.get(key)
        if v is None:
            continue
        if (
            isinstance(v, bool)
            or not isinstance(v, int | float)
            or not -_MAX_FLOAT <= v <= _MAX_FLOAT
        ):
            bad = True
            continue
        f = float(v)
        if best is None or f > best:
            best = f
    return best, bad


def _chirpstack(doc: Any, device: str, tz: tzinfo, received_at: int, out: DecodeResult) -> None:
    if type(doc) is not dict:
        detail = f"payload is {_kind(doc)}; expected a ChirpStack uplink object"
        out.rejections.append(Rejection(Reason.BAD_SHAPE, detail))
        return
    info = doc.get("deviceInfo")
    if info is not None and type(info) is not dict:
        detail = f"deviceInfo is {_kind(info)}; expected an object"
        out.rejections.append(Rejection(Reason.BAD_SHAPE, detail, 0))
        return
    dev_eui = info.get("devEui") if info is not None else None
    if dev_eui is None:
        dev_eui = doc.get("devEUI")  # v3
    if dev_eui is not None:
        if not isinstance(dev_eui, str):
            detail = f"devEui is {_kind(dev_eui)}; expected a hex string"
            out.rejections.append(Rejection(Reason.BAD_SHAPE, detail, 0))
            return
        if dev_eui.lower() != device.lower():
            detail = f"payload names DevEUI {_show(dev_eui)} but the topic names {_show(device)}"
            out.rejections.append(Rejection(Reason.DEVICE_MISMATCH, detail, 0))
            return
    event_id, bad = _label(doc.get("deduplicationId"), "deduplicationId", MAX_ID)
    if bad is not None:
        _reject(out, bad, 0)
        return
    ts, flags, has_time, bad = _entry_time(doc, ("time",), tz, received_at)
    if bad is not None:
        _reject(out, bad, 0)
        return
    before = len(out.rejections)
    readings: list[Reading] = []
    seen: set[str] = set()
    obj = doc.get("object")
    if obj is None:
        raw = doc.get("objectJSON")  # v3: the codec output as a JSON string
        if isinstance(raw, str) and raw.strip():
            obj, bad = _load(raw)
            if bad is not None:
                bad.detail = f"objectJSON: {bad.detail}"
                bad.metric = "objectJSON"
                _reject(out, bad, 0)
    if obj is not None:
        if type(obj) is dict:
            _flatten(obj, "", 1, ts, flags, None, 0, readings, out.rejections, seen)
        else:
            detail = f"object is {_kind(obj)}; expected an object of decoded fields"
            out.rejections.append(Rejection(Reason.BAD_SHAPE, detail, 0, "object"))
    rx_info = doc.get("rxInfo")
    for key in ("rssi", "snr"):
        best, some_bad = _radio_max(rx_info, key)
        if some_bad:
            detail = f"rxInfo[].{key}: a gateway sent a value that is not a finite number"
            out.rejections.append(Rejection(Reason.BAD_VALUE, detail, 0, key))
        if best is not None:
            _flatten({key: best}, "", 1, ts, flags, None, 0, readings, out.rejections, seen)
    empty = "uplink has no decoded object fields and no radio metadata"
    _finish(out, device, readings, before, 0, event_id, has_time, None, empty)


def _tele(
    doc: Any, device: str, tz: tzinfo, received_at: int, rest: tuple[str, ...], out: DecodeResult
) -> None:
    prefix = ".".join(rest)
    readings: list[Reading] = []
    seen: set[str] = set()
    if type(doc) is dict:
        # Tasmota's "Time" is naive local time: read in the device's zone and flagged as naive.
        ts, flags, has_time, bad = _entry_time(doc, ("Time",), tz, received_at)
        if bad is not None:
            _reject(out, bad, 0)
            return
        values = {k: v for k, v in doc.items() if k != "Time"}
        _flatten(
            values,
            prefix + "." if prefix else "",
            1,
            ts,
            flags,
            None,
            0,
            readings,
            out.rejections,
            seen,
        )
        _finish(out, device, readings, 0, 0, None, has_time, None, "message has no values")
    elif type(doc) is list:
        detail = "payload is an array; expected an object or a single value"
        out.rejections.append(Rejection(Reason.BAD_SHAPE, detail, 0))
    else:
        name = prefix or "value"
        _flatten({name: doc}, "", 1, received_at, _SERVER, None, 0, readings, out.rejections, seen)
        _finish(out, device, readings, 0, 0, None, False, None, "payload is null")


def _decode(
    fmt: str,
    device: str,
    payload: bytes,
    received_at: int,
    tz: tzinfo,
    rest: tuple[str, ...],
    max_bytes: int,
) -> DecodeResult:
    out = DecodeResult()
    if fmt not in ("native", "chirpstack", "tele"):
        detail = f"unknown payload format {_show(fmt)}; expected native, chirpstack or tele"
        out.rejections.append(Rejection(Reason.UNKNOWN_ROUTE, detail))
        return out
    if len(payload) > max_bytes:
        detail = f"payload is {len(payload)} bytes; the limit is {max_bytes}"
        out.rejections.append(Rejection(Reason.TOO_LARGE, detail))
        return out
    if payload[:3] == _BOM:
        payload = payload[3:]
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        detail = f"invalid UTF-8 at byte {exc.start}: {exc.reason}"
        out.rejections.append(Rejection(Reason.INVALID_UTF8, detail))
        return out
    if not text.strip():
        out.rejections.append(Rejection(Reason.NO_VALUES, "empty payload"))
        return out
    doc, bad = _load(text)
    if bad is not None:
        stripped = text.strip()
        # Tasmota sends some tele topics (LWT: Online/Offline) as bare text, not JSON.
        if fmt == "tele" and bad.reason is Reason.INVALID_JSON and stripped[0] not in '{["':
            doc = stripped
        else:
            out.rejections.append(bad)
            return out
    if fmt == "native":
        _native(doc, device, tz, received_at, out)
    elif fmt == "chirpstack":
        _chirpstack(doc, device, tz, received_at, out)
    else:
        _tele(doc, device, tz, received_at, rest, out)
    return out


def decode(
    fmt: str,
    device: str,
    payload: bytes,
    received_at: int,
    tz: tzinfo,
    rest: tuple[str, ...] = (),
    max_bytes: int = 262144,
) -> DecodeResult:
    """Decode one message of format fmt from device into entries and rejections; never raises.

    Entries without a device timestamp get ts=received_at, Flag.SERVER_TIME, has_device_time=False.
    """
    try:
        return _decode(fmt, device, payload, received_at, tz, rest, max_bytes)
    except Exception as exc:  # a decoder bug must cost one message, not the ingest worker
        return DecodeResult(
            rejections=[
                Rejection(Reason.BAD_SHAPE, f"internal decoder error ({type(exc).__name__})")
            ]
        )
