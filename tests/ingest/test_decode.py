"""Decoding: every format, every parsing trap, every rejection reason, and never raising."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetra.ingest.decode import MAX_MAGNITUDE, decode
from telemetra.model import DecodeResult, Flag, Reading, Reason

BERLIN = ZoneInfo("Europe/Berlin")
NOW = 1_800_000_000_000_000
T0 = 1_732_270_000


def us(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def native(payload: Any, device: str = "d1", tz: Any = UTC) -> DecodeResult:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return decode("native", device, raw, NOW, tz)


def values(result: DecodeResult, index: int = 0) -> dict[str, float | str | None]:
    entry = next(e for e in result.entries if e.index == index)
    return {r.metric: r.value if r.text is None else r.text for r in entry.readings}


def reasons(result: DecodeResult) -> list[tuple[Reason, int | None, str | None]]:
    return [(r.reason, r.index, r.metric) for r in result.rejections]


def only(result: DecodeResult) -> Reason:
    assert not result.entries, result
    assert len(result.rejections) == 1, result
    return result.rejections[0].reason


# --- native ---------------------------------------------------------------------------------


def test_flat_object() -> None:
    r = native({"temperature": 21.5, "humidity": 40, "status": "ok", "on": True, "off": False})
    assert values(r) == {
        "temperature": 21.5,
        "humidity": 40.0,
        "status": "ok",
        "on": 1.0,
        "off": 0.0,
    }
    assert not r.rejections
    e = r.entries[0]
    assert e.device_uid == "d1" and e.index == 0 and e.event_id is None
    # No device time: the receive time, flagged, and the entry says so.
    assert not e.has_device_time
    assert all(x.ts == NOW and x.flags == Flag.SERVER_TIME for x in e.readings)
    status = next(x for x in e.readings if x.metric == "status")
    assert status.value is None and status.text == "ok"


def test_numeric_strings_nulls_and_nesting() -> None:
    r = native(
        {
            "a": "21.5",
            "b": " 40 ",
            "c": "-.5",
            "d": "1e3",
            "n": None,
            "env": {"t": 1, "x": {"y": "v1.2"}},
        }
    )
    assert values(r) == {
        "a": 21.5,
        "b": 40.0,
        "c": -0.5,
        "d": 1000.0,
        "env.t": 1.0,
        "env.x.y": "v1.2",
    }


@pytest.mark.parametrize(
    "text", ["nan", "-inf", "Infinity", "1_000", "0x10", "١٢", "1.2.3", "-", "."]
)
def test_strings_that_are_not_finite_numbers_are_text(text: str) -> None:
    assert values(native({"s": text})) == {"s": text}


def test_flat_with_ts_and_event_id() -> None:
    r = native({"ts": T0 * 1000, "event_id": "e-9", "t": 1, "device_id": "d1", "schema": 1})
    e = r.entries[0]
    assert e.event_id == "e-9" and e.has_device_time
    assert e.readings == [Reading("t", T0 * 1_000_000, 1.0)]


def test_integer_event_id_is_kept_as_text() -> None:
    assert native({"event_id": 42, "t": 1}).entries[0].event_id == "42"


def test_thingsboard_form_and_array() -> None:
    r = native(
        [
            {"ts": 1451649600512, "values": {"temperature": 42, "env": {"h": 3}}},
            {"temperature": 43},
        ]
    )
    assert values(r, 0) == {"temperature": 42.0, "env.h": 3.0}
    assert r.entries[0].readings[0].ts == 1451649600512000
    assert values(r, 1) == {"temperature": 43.0}
    assert [e.index for e in r.entries] == [0, 1]


def test_values_key_beside_other_metrics_is_flattened() -> None:
    # Not the ThingsBoard shape (a non-reserved key beside it): "values" is an ordinary object.
    assert values(native({"values": {"a": 1}, "b": 2})) == {"values.a": 1.0, "b": 2.0}


def test_event_form() -> None:
    payload = {
        "schema": 1,
        "event_id": "e-1",
        "device_id": "d1",
        "event_type": "temperature",
        "value": 21.5,
        "unit": "C",
        "ts_device": "2026-11-22T10:00:00",
        "meta": {"fw": "1.2", "rssi": -60, "tags": ["a", None]},
    }
    r = native(payload, tz=BERLIN)
    [e] = r.entries
    assert e.event_id == "e-1" and e.meta == {"fw": "1.2", "rssi": -60, "tags": ["a", None]}
    assert e.readings == [
        Reading(
            "temperature",
            us(datetime(2026, 11, 22, 9, tzinfo=UTC)),
            21.5,
            None,
            Flag.NAIVE_TIME,
            None,
            "C",
        )
    ]
    assert not r.rejections


def test_event_form_batch_and_extras() -> None:
    r = native(
        [
            {"event_type": "door", "value": "open", "ts_device": T0, "battery": 3.1},
            {"event_type": "t", "value": None},
            {"event_type": "env", "value": {"t": 1}, "unit": "C"},
        ]
    )
    assert values(r, 0) == {"door": "open", "battery": 3.1}
    assert reasons(r) == [(Reason.NO_VALUES, 1, None)]
    assert "has no value" in r.rejections[0].detail
    assert r.entries[1].readings == [Reading("env.t", NOW, 1.0, None, Flag.SERVER_TIME, None, "C")]


def test_ts_with_offset_and_z() -> None:
    a = native({"ts": "2026-11-22T10:00:00Z", "t": 1}).entries[0].readings[0]
    b = native({"ts": "2026-11-22T11:00:00+01:00", "t": 1}).entries[0].readings[0]
    assert a.ts == b.ts == us(datetime(2026, 11, 22, 10, tzinfo=UTC))
    assert a.flags == b.flags == 0


def test_ts_and_ts_device_must_agree() -> None:
    ok = native({"ts": T0, "ts_device": T0 * 1000, "t": 1})
    assert ok.entries[0].readings[0].ts == T0 * 1_000_000
    assert reasons(native({"ts": T0, "ts_device": T0 + 1, "t": 1})) == [
        (Reason.BAD_TIMESTAMP, 0, None)
    ]


# --- rejections: message level --------------------------------------------------------------


def test_too_large() -> None:
    r = decode("native", "d1", b'{"a": 1}' + b" " * 100, NOW, UTC, max_bytes=50)
    assert only(r) == Reason.TOO_LARGE and "limit is 50" in r.rejections[0].detail


def test_invalid_utf8() -> None:
    r = native(b'{"a": "\xff\xfe"}')
    assert only(r) == Reason.INVALID_UTF8 and "byte 7" in r.rejections[0].detail
    assert only(native(b'{"a": "\xed\xa0\x80"}')) == Reason.INVALID_UTF8  # encoded surrogate


def test_bom_is_stripped() -> None:
    assert values(native(b'\xef\xbb\xbf{"a": 1}')) == {"a": 1.0}


def test_invalid_json_reports_position() -> None:
    r = native(b'{"a": 1,}')
    assert only(r) == Reason.INVALID_JSON
    assert "line 1 column 9 (char 8)" in r.rejections[0].detail
    assert only(native(b'{"a": 1} {"b": 2}')) == Reason.INVALID_JSON


def test_empty_payload() -> None:
    assert only(native(b"")) == Reason.NO_VALUES
    assert only(native(b"  \n")) == Reason.NO_VALUES


@pytest.mark.parametrize(
    "raw",
    [b'{"a": 1, "a": 2}', b'[{"x": {"b": 1, "b": 1}}]', b'{"meta": {"k": 1, "k": 2}, "a": 1}'],
)
def test_duplicate_keys(raw: bytes) -> None:
    r = native(raw)
    assert only(r) == Reason.DUPLICATE_KEY and "appears twice" in r.rejections[0].detail


def test_duplicate_name_after_flattening() -> None:
    r = native({"a.b": 1, "a": {"b": 2}})
    assert values(r) == {"a.b": 1.0}
    assert reasons(r) == [(Reason.DUPLICATE_KEY, 0, "a.b")]


def test_deep_json_is_too_deep_not_a_crash() -> None:
    assert only(native(b"[" * 100_000)) == Reason.TOO_DEEP
    assert only(native(b'{"a":' * 40_000)) == Reason.TOO_DEEP


@pytest.mark.parametrize("payload", [b"5", b'"x"', b"null", b"true"])
def test_native_needs_objects(payload: bytes) -> None:
    r = native(payload)
    assert only(r) == Reason.BAD_SHAPE and "expected a JSON object" in r.rejections[0].detail


def test_empty_array() -> None:
    assert only(native(b"[]")) == Reason.NO_VALUES


def test_unknown_format() -> None:
    assert only(decode("xml", "d1", b"{}", NOW, UTC)) == Reason.UNKNOWN_ROUTE


# --- rejections: value and entry level --------------------------------------------------------


def test_non_finite_numbers_reject_only_that_value() -> None:
    big = b"9" * 400
    huge = b"9" * 5000  # beyond Python's int digit limit
    r = native(
        b'{"ok": 1, "a": NaN, "b": Infinity, "c": -Infinity, "d": 1e400, "e": '
        + big
        + b', "f": '
        + huge
        + b', "g": "1e400"}'
    )
    assert values(r) == {"ok": 1.0}
    assert reasons(r) == [(Reason.NON_FINITE_NUMBER, 0, m) for m in "abcdefg"]
    assert "NaN" in r.rejections[0].detail


def test_finite_huge_integer_is_a_number() -> None:
    assert values(native(b'{"a": 1' + b"0" * 200 + b"}")) == {"a": 1e200}


def test_values_too_large_to_add_up_are_rejected_alone() -> None:
    # Two -1e308 in one minute overflowed the rollup sum, and PostgreSQL refused the whole
    # message: now only those values are rejected, with a reason that says why.
    r = native(
        b'[{"ts": 1732270000, "x": -1e308, "y": 1.5},'
        b' {"ts": 1732270001, "x": -1e308, "big": 1' + b"0" * 300 + b', "s": "2e300"},'
        b' {"ts": 1732270002, "x": -1e250, "z": 1e250}]'
    )
    assert values(r, 0) == {"y": 1.5}
    assert 1 not in {e.index for e in r.entries}
    assert values(r, 2) == {"x": -1e250, "z": 1e250}
    assert reasons(r) == [
        (Reason.OUT_OF_RANGE, 0, "x"), (Reason.OUT_OF_RANGE, 1, "x"),
        (Reason.OUT_OF_RANGE, 1, "big"), (Reason.OUT_OF_RANGE, 1, "s"),
    ]  # fmt: skip
    assert r.rejections[0].detail == (
        "'x': -1e+308 is beyond ±1e+250, the largest magnitude stored "
        "(larger values would overflow sums)"
    )


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_every_finite_number_is_stored_or_rejected_as_out_of_range(v: float) -> None:
    r = native(json.dumps({"ts": T0, "v": v}).encode())
    if abs(v) <= MAX_MAGNITUDE:
        assert values(r) == {"v": v}
    else:
        assert reasons(r) == [(Reason.OUT_OF_RANGE, 0, "v")]
    # What is stored can be summed without overflow, converted (×1000) and many times over.
    assert math.isfinite(MAX_MAGNITUDE * 1000 * 1e50)


def test_lists_are_bad_values() -> None:
    r = native({"a": [1, 2], "b": 2})
    assert values(r) == {"b": 2.0}
    assert reasons(r) == [(Reason.BAD_VALUE, 0, "a")]
    assert "array" in r.rejections[0].detail


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"t": "a\\u0000b"}', "NUL"),
        (b'{"t": "\\ud800"}', "surrogate"),
        (b'{"t": "' + b"x" * 1025 + b'"}', "1025 characters"),
    ],
)
def test_bad_text(raw: bytes, fragment: str) -> None:
    r = native(raw)
    assert only(r) == Reason.BAD_TEXT and fragment in r.rejections[0].detail
    assert r.rejections[0].metric == "t"


def test_text_at_limit_and_multiline_is_fine() -> None:
    assert values(native({"t": "x" * 1024, "u": "a\nb\tc", "v": "é😀"})) == {
        "t": "x" * 1024,
        "u": "a\nb\tc",
        "v": "é😀",
    }


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"": 1}', "empty"),
        (b'{"env": {"": 1}}', "empty"),
        (b'{"env": {"": {"x": 1}}}', "empty"),
        (b'{"a\\u0000": 1}', "NUL"),
        (b'{"\\ud800": 1}', "surrogate"),
        (b'{"a\\nb": 1}', "control"),
        (b'{"' + b"m" * 201 + b'": 1}', "201 characters"),
    ],
)
def test_bad_metric_names(raw: bytes, fragment: str) -> None:
    r = native(raw)
    assert only(r) == Reason.BAD_METRIC_NAME and fragment in r.rejections[0].detail
    # The stored rejection itself must be storable: no NUL, no lone surrogate.
    rej = r.rejections[0]
    for s in (rej.detail, rej.metric or ""):
        assert "\x00" not in s
        s.encode("utf-8")


def test_name_at_limit() -> None:
    assert values(native({"m" * 200: 1})) == {"m" * 200: 1.0}


def test_flattening_depth_limit() -> None:
    ok = {"l1": {"l2": {"l3": {"l4": {"l5": {"l6": {"l7": {"l8": 1}}}}}}}}
    assert values(native(ok)) == {"l1.l2.l3.l4.l5.l6.l7.l8": 1.0}
    deep = {"x": 1, "l1": {"l2": {"l3": {"l4": {"l5": {"l6": {"l7": {"l8": {"l9": 1}}}}}}}}}
    r = native(deep)
    assert values(r) == {"x": 1.0}
    assert reasons(r) == [(Reason.TOO_DEEP, 0, "l1.l2.l3.l4.l5.l6.l7.l8")]


def test_bad_timestamp_rejects_the_entry_not_the_message() -> None:
    r = native([{"ts": "yesterday", "t": 1}, {"ts": True, "t": 1}, {"ts": -5, "t": 1}, {"t": 2}])
    assert reasons(r) == [(Reason.BAD_TIMESTAMP, i, None) for i in range(3)]
    assert "epoch seconds/milliseconds/microseconds or ISO-8601" in r.rejections[0].detail
    assert [e.index for e in r.entries] == [3]


def test_device_mismatch() -> None:
    r = native([{"device_id": "d2", "t": 1}, {"device_id": "d1", "t": 1}])
    assert reasons(r) == [(Reason.DEVICE_MISMATCH, 0, None)]
    assert "'d2'" in r.rejections[0].detail and [e.index for e in r.entries] == [1]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"device_id": 5, "t": 1}, Reason.BAD_SHAPE),
        ({"schema": 2, "t": 1}, Reason.BAD_SHAPE),
        ({"schema": True, "t": 1}, Reason.BAD_SHAPE),
        ({"event_id": ["x"], "t": 1}, Reason.BAD_SHAPE),
        ({"event_id": "", "t": 1}, Reason.BAD_TEXT),
        ({"event_id": "a\x00", "t": 1}, Reason.BAD_TEXT),
        ({"event_id": "x" * 201, "t": 1}, Reason.BAD_TEXT),
        ({"event_type": 5, "value": 1}, Reason.BAD_METRIC_NAME),
        ({"event_type": "", "value": 1}, Reason.BAD_METRIC_NAME),
        ({"event_type": "a\x00", "value": 1}, Reason.BAD_METRIC_NAME),
        ({"event_type": "t", "value": 1, "unit": 5}, Reason.BAD_SHAPE),
        ({"event_type": "t", "value": 1, "unit": "C\x00"}, Reason.BAD_TEXT),
        ({"ts": T0}, Reason.NO_VALUES),
        ({"a": None}, Reason.NO_VALUES),
        ({}, Reason.NO_VALUES),
    ],
)
def test_entry_rejections(payload: dict[str, Any], reason: Reason) -> None:
    r = native([payload, {"ok": 1}])
    assert [x.reason for x in r.rejections] == [reason]
    assert r.rejections[0].index == 0
    assert [e.index for e in r.entries] == [1]


def test_non_object_array_element() -> None:
    r = native([{"a": 1}, 5, [1], None])
    assert reasons(r) == [(Reason.BAD_SHAPE, i, None) for i in (1, 2, 3)]


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        (5, Reason.BAD_SHAPE),
        ({"k": "a\x00"}, Reason.BAD_TEXT),
        ({"k\ud800": 1}, Reason.BAD_TEXT),
        ({"k": [float("nan")]}, Reason.NON_FINITE_NUMBER),
        ({"k": 2**70}, Reason.BAD_VALUE),
        ({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}}, Reason.TOO_DEEP),
    ],
)
def test_bad_meta_is_dropped_but_readings_kept(meta: object, reason: Reason) -> None:
    raw = json.dumps({"t": 1, "meta": meta}, allow_nan=True).encode()
    r = native(raw)
    assert reasons(r) == [(reason, 0, "meta")]
    assert r.entries[0].meta is None and values(r) == {"t": 1.0}


def test_meta_alone_is_no_values() -> None:
    r = native({"meta": 5})
    assert [x.reason for x in r.rejections] == [Reason.BAD_SHAPE, Reason.NO_VALUES]


# --- ChirpStack -----------------------------------------------------------------------------

EUI = "0102030405060708"


def uplink(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
        "time": "2026-11-22T10:00:00.123456+00:00",
        "deviceInfo": {"tenantId": "t", "applicationId": "a", "deviceName": "n", "devEui": EUI},
        "fCnt": 10,
        "fPort": 1,
        "data": "AQI=",
        "object": {"temperature": 21.5, "status": "ok", "gps": {"lat": 1.5}},
        "rxInfo": [
            {"gatewayId": "g1", "rssi": -80, "snr": 7.5},
            {"gatewayId": "g2", "rssi": -60, "snr": 2},
        ],
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def cs(doc: Any, device: str = EUI) -> DecodeResult:
    return decode("chirpstack", device, json.dumps(doc).encode(), NOW, UTC)


def test_chirpstack_v4() -> None:
    r = cs(uplink(), device=EUI.upper())
    assert not r.rejections
    [e] = r.entries
    assert e.event_id == "3ac7e3c4-4401-4b8d-9386-a5c902f9202d" and e.has_device_time
    assert e.device_uid == EUI.upper()
    assert values(r) == {
        "temperature": 21.5,
        "status": "ok",
        "gps.lat": 1.5,
        "rssi": -60.0,
        "snr": 7.5,
    }
    assert {x.ts for x in e.readings} == {us(datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC))}


def test_chirpstack_defaults_absent() -> None:
    # No codec (no object), no time, one gateway without snr.
    r = cs(uplink(object=None, time=None, rxInfo=[{"gatewayId": "g", "rssi": -90}]))
    [e] = r.entries
    assert values(r) == {"rssi": -90.0} and not e.has_device_time
    assert e.readings[0].flags == Flag.SERVER_TIME
    assert only(cs({"deviceInfo": {"devEui": EUI}})) == Reason.NO_VALUES


def test_chirpstack_v3() -> None:
    doc = {
        "devEUI": EUI,
        "objectJSON": json.dumps({"t": 2}),
        "rxInfo": [{"rssi": -70, "loRaSNR": 1}],
    }
    assert values(cs(doc)) == {"t": 2.0, "rssi": -70.0}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (uplink(deviceInfo={"devEui": "ffffffffffffffff"}), [(Reason.DEVICE_MISMATCH, 0, None)]),
        ({"devEUI": "ffffffffffffffff", "object": {"t": 1}}, [(Reason.DEVICE_MISMATCH, 0, None)]),
        (uplink(deviceInfo={"devEui": 5}), [(Reason.BAD_SHAPE, 0, None)]),
        (uplink(deviceInfo=[1]), [(Reason.BAD_SHAPE, 0, None)]),
        (uplink(time="soon"), [(Reason.BAD_TIMESTAMP, 0, None)]),
        (uplink(deduplicationId=7.5), [(Reason.BAD_SHAPE, 0, None)]),
        (uplink(object=[1]), [(Reason.BAD_SHAPE, 0, "object")]),
        (
            {"objectJSON": '{"a": 1, "a": 2}', "rxInfo": [{"rssi": -1}]},
            [(Reason.DUPLICATE_KEY, 0, "objectJSON")],
        ),
        (
            {"objectJSON": "{oops", "rxInfo": [{"rssi": -1}]},
            [(Reason.INVALID_JSON, 0, "objectJSON")],
        ),
        (
            {"rxInfo": [{"rssi": "loud"}, {"rssi": -5}], "object": {"t": 1}},
            [(Reason.BAD_VALUE, 0, "rssi")],
        ),
        (
            {"object": {"t": 1, "rssi": 1}, "rxInfo": [{"rssi": -5}]},
            [(Reason.DUPLICATE_KEY, 0, "rssi")],
        ),
    ],
)
def test_chirpstack_rejections(doc: dict[str, Any], expected: list[Any]) -> None:
    assert reasons(cs(doc)) == expected


def test_chirpstack_needs_an_object() -> None:
    assert only(cs([1])) == Reason.BAD_SHAPE


# --- tele -----------------------------------------------------------------------------------


def tele(raw: bytes, rest: tuple[str, ...] = ("SENSOR",), tz: Any = BERLIN) -> DecodeResult:
    return decode("tele", "plug1", raw, NOW, tz, rest)


def test_tasmota_sensor() -> None:
    r = tele(
        b'{"Time": "2026-07-01T12:00:00", "AM2301": {"Temperature": 22.1, "Humidity": 45},'
        b' "TempUnit": "C"}'
    )
    assert values(r) == {
        "SENSOR.AM2301.Temperature": 22.1,
        "SENSOR.AM2301.Humidity": 45.0,
        "SENSOR.TempUnit": "C",
    }
    [e] = r.entries
    assert e.has_device_time and e.event_id is None
    assert {x.ts for x in e.readings} == {us(datetime(2026, 7, 1, 10, tzinfo=UTC))}
    assert {x.flags for x in e.readings} == {Flag.NAIVE_TIME}


def test_tele_levels_and_bare_values() -> None:
    assert values(tele(b'{"a": 1}', rest=("x", "y"))) == {"x.y.a": 1.0}
    assert values(tele(b'{"a": 1}', rest=())) == {"a": 1.0}
    assert values(tele(b"21.5", rest=("TEMP",))) == {"TEMP": 21.5}
    assert values(tele(b'"on"', rest=("POWER",))) == {"POWER": "on"}
    assert values(tele(b"7", rest=())) == {"value": 7.0}
    # Tasmota's LWT is bare text, not JSON.
    r = tele(b"Online", rest=("LWT",))
    assert values(r) == {"LWT": "Online"} and not r.entries[0].has_device_time


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"null", Reason.NO_VALUES),
        (b"[1, 2]", Reason.BAD_SHAPE),
        (b'{"Time": "later", "a": 1}', Reason.BAD_TIMESTAMP),
        (b'{"Time": "2026-01-01T00:00:00"}', Reason.NO_VALUES),
        (b'{"a": 1,', Reason.INVALID_JSON),
        (b'{"a": 1, "a": 1}', Reason.DUPLICATE_KEY),
        (b"NaN", Reason.NON_FINITE_NUMBER),
        (b"bad\x00text", Reason.BAD_TEXT),
    ],
)
def test_tele_rejections(raw: bytes, reason: Reason) -> None:
    assert only(tele(raw)) == reason


# --- properties -----------------------------------------------------------------------------

# Any code point, lone surrogates and NUL included: json.dumps escapes them as \\uXXXX.
any_text = st.text(st.characters(blacklist_categories=()), max_size=20)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
    | st.sampled_from(["1e400", " 21.5 ", "-inf", "2026-01-01T00:00:00", "x" * 1025]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=30,
)
ROUTE_ARGS = [("native", ()), ("chirpstack", ()), ("tele", ("SENSOR",)), ("tele", ())]


def check_never_raises(payload: bytes) -> None:
    for fmt, rest in ROUTE_ARGS:
        r = decode(fmt, "d1", payload, NOW, BERLIN, rest)
        for rej in r.rejections:
            assert "internal decoder error" not in rej.detail, (fmt, payload, rej)
            for s in (rej.detail, rej.metric or ""):
                assert "\x00" not in s
                s.encode("utf-8")
        for e in r.entries:
            assert e.readings
            for x in e.readings:
                assert (x.value is None) != (x.text is None)
                assert x.value is None or abs(x.value) <= MAX_MAGNITUDE
                assert x.text is None or ("\x00" not in x.text and len(x.text) <= 1024)
                assert x.metric and "\x00" not in x.metric
                x.metric.encode("utf-8")


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_never_raises_on_bytes(payload: bytes) -> None:
    check_never_raises(payload)


@settings(max_examples=300)
@given(json_values | st.lists(json_values, max_size=3))
def test_never_raises_on_json(doc: Any) -> None:
    check_never_raises(json.dumps(doc, allow_nan=True).encode())
    check_never_raises(
        json.dumps({"deviceInfo": {"devEui": "d1"}, "object": doc, "rxInfo": doc}).encode()
    )
    check_never_raises(
        json.dumps({"event_type": "t", "value": doc, "meta": doc, "ts": doc}).encode()
    )


finite = st.floats(min_value=-MAX_MAGNITUDE, max_value=MAX_MAGNITUDE)
names = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Cf", "Co", "Cn", "Zl", "Zp", "Zs"))
    | st.just(" "),
    min_size=1,
    max_size=30,
).filter(
    lambda s: (
        "." not in s
        and s
        not in {
            "ts",
            "ts_device",
            "event_id",
            "device_id",
            "schema",
            "meta",
            "values",
            "event_type",
        }
    )
)


@given(st.dictionaries(names, finite, min_size=1, max_size=20))
def test_flat_floats_round_trip(doc: dict[str, float]) -> None:
    r = native(json.dumps(doc).encode())
    assert not r.rejections
    got = {x.metric: x.value for x in r.entries[0].readings}
    assert got == doc
