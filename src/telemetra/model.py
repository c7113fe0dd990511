"""The few core types every part of Telemetra shares.

Times are integers: microseconds since the Unix epoch, UTC. They are exact, sort and bucket with
integer arithmetic on SQLite and PostgreSQL alike, and cost nothing to copy into the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

US_PER_S = 1_000_000
US_PER_MS = 1_000
_BAD_UID = frozenset("/+#:")


class Flag:
    """Quality flags stored with each reading: every cleaning decision is visible.

    Plain ints, not an ``IntFlag``: they are or-ed per reading on the hot path.
    """

    LATE = 1  # arrived long after its event time
    OUT_OF_ORDER = 2  # older than a reading already seen for the same device and metric
    CLOCK_CORRECTED = 4  # event time shifted by the device's estimated clock offset
    COUNTER_RESET = 8  # a monotonic counter went down: reset or rollover
    SERVER_TIME = 16  # no device timestamp: the receive time was assigned
    UNIT_CONVERTED = 32  # value converted to the metric's canonical unit
    NAIVE_TIME = 64  # device timestamp had no offset and was read in a configured time zone


FlagName = Literal[
    "late", "out_of_order", "clock_corrected", "counter_reset", "server_time", "unit_converted",
    "naive_time",
]  # fmt: skip
# Each flag's name in API responses and exports, by bit, lowest first.
FLAG_NAMES: dict[int, FlagName] = {
    Flag.LATE: "late",
    Flag.OUT_OF_ORDER: "out_of_order",
    Flag.CLOCK_CORRECTED: "clock_corrected",
    Flag.COUNTER_RESET: "counter_reset",
    Flag.SERVER_TIME: "server_time",
    Flag.UNIT_CONVERTED: "unit_converted",
    Flag.NAIVE_TIME: "naive_time",
}


def flag_names(flags: int) -> list[FlagName]:
    """The names of the flags set in ``flags``, lowest bit first (65 → late, naive_time)."""
    return [name for bit, name in FLAG_NAMES.items() if flags & bit]


class Reason(StrEnum):
    """Machine-readable rejection reasons (dead letters, ack messages, counters)."""

    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NON_FINITE_NUMBER = "non_finite_number"  # NaN, Infinity, 1e400
    DUPLICATE_KEY = "duplicate_key"
    TOO_DEEP = "too_deep"
    TOO_LARGE = "too_large"
    BAD_SHAPE = "bad_shape"  # valid JSON, but not a form of the contract
    NO_VALUES = "no_values"
    BAD_METRIC_NAME = "bad_metric_name"
    BAD_TEXT = "bad_text"  # NUL byte, lone surrogate, or too long
    BAD_VALUE = "bad_value"  # a value that is neither number, bool, string nor null
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    OUT_OF_RANGE = "out_of_range"
    NOT_NUMERIC = "not_numeric"  # text for a metric whose rule wants numbers (range, unit, counter)
    UNKNOWN_DEVICE = "unknown_device"
    DEVICE_MISMATCH = "device_mismatch"  # payload names another device than the topic/credential
    UNKNOWN_ROUTE = "unknown_route"
    CONFLICT = "conflict"  # a different value already stored at the same device/metric/time


@dataclass(slots=True)
class Reading:
    """One value of one metric at one time.

    ``ts`` is the event time in µs (after clock correction); ``ts_device`` keeps the device's own
    time when a correction moved it.
    """

    metric: str
    ts: int
    value: float | None
    text: str | None = None
    flags: int = 0
    ts_device: int | None = None
    unit: str | None = None


@dataclass(slots=True)
class Rejection:
    """Why a message, or one value of it, was not stored."""

    reason: Reason
    detail: str
    index: int | None = None  # entry of an array payload
    metric: str | None = None


@dataclass(slots=True)
class Decoded:
    """One entry of a message after decoding: whose readings, with what idempotency key."""

    device_uid: str
    readings: list[Reading]
    event_id: str | None = None
    index: int = 0
    has_device_time: bool = True
    meta: dict[str, Any] | None = None


@dataclass(slots=True)
class DecodeResult:
    """Everything one message turned into: entries to clean and rejections to report."""

    entries: list[Decoded] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


@dataclass(slots=True)
class Device:
    """What the pipeline needs to know about a registered device."""

    id: int
    tenant_id: int
    uid: str
    type: str | None = None
    timezone: str | None = None
    clock_offset_us: int | None = None  # last trusted estimate, kept across restarts


def valid_device_uid(uid: str) -> bool:
    """Device ids name topics and broker users: no wildcards, separators or control chars."""
    return (
        0 < len(uid) <= 128
        and _BAD_UID.isdisjoint(uid)
        and uid.isprintable()
        and uid.strip() == uid
    )
