"""Device timestamps to integer microseconds since the epoch, UTC.

Epochs are told apart by magnitude (seconds, milliseconds or microseconds); ISO-8601 strings with an
offset are exact, naive ones are read in the device's time zone and reported as naive.
"""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

__all__ = ["TimestampError", "format_us", "parse_timestamp"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_EXPECTED = "expected epoch seconds/milliseconds/microseconds or ISO-8601"
# Upper bounds (exclusive) of each epoch unit and its factor to microseconds: 1e11 s is year 5138,
# so any plausible device clock falls in exactly one band.
_SECONDS_BELOW = 10**11
_MILLIS_BELOW = 10**14
_MICROS_BELOW = 10**17
_MAX_TEXT = 64  # longer strings cannot be a timestamp; refuse them before any parsing work


class TimestampError(ValueError):
    """A value that cannot be read as a timestamp; the message says why."""


def _show(value: str) -> str:
    # repr escapes NUL and lone surrogates, so the message is always safe to log and store.
    return repr(value if len(value) <= 40 else value[:40] + "…")


def _scale_int(v: int) -> int:
    if v < 0:
        raise TimestampError(f"negative epoch {v}; {_EXPECTED}")
    if v < _SECONDS_BELOW:
        return v * 1_000_000
    if v < _MILLIS_BELOW:
        return v * 1_000
    if v < _MICROS_BELOW:
        return v
    raise TimestampError(f"epoch {v} is too large (not seconds, milliseconds or microseconds)")


def _scale_decimal(d: Decimal) -> int:
    # Decimal keeps the digits as written ("1732270000.123456"), so fractions are exact.
    if not d.is_finite():
        raise TimestampError(f"epoch is not a finite number; {_EXPECTED}")
    if d < 0:
        raise TimestampError(f"negative epoch {d}; {_EXPECTED}")
    if d < _SECONDS_BELOW:
        factor = 1_000_000
    elif d < _MILLIS_BELOW:
        factor = 1_000
    elif d < _MICROS_BELOW:
        factor = 1
    else:
        raise TimestampError(f"epoch {d} is too large (not seconds, milliseconds or microseconds)")
    return int((d * factor).to_integral_value(ROUND_HALF_EVEN))


def _is_epoch_text(s: str) -> bool:
    whole, dot, frac = s.partition(".")
    # isdigit alone accepts '²' and other non-ASCII digits; the ASCII check keeps to 0-9.
    return s.isascii() and whole.isdigit() and (not dot or frac.isdigit())


def _parse_iso(s: str, tz: tzinfo) -> tuple[int, bool]:
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise TimestampError(f"{_show(s)} is not a timestamp; {_EXPECTED}") from None
    naive = dt.tzinfo is None
    if naive:
        # fold=0: a nonexistent or ambiguous local time takes the offset zoneinfo gives first.
        dt = dt.replace(tzinfo=tz, fold=0)
    try:
        us = (dt - _EPOCH) // _ONE_US
    except (OverflowError, ValueError, TypeError, ArithmeticError):
        raise TimestampError(f"{_show(s)} cannot be placed in UTC") from None
    if us < 0:
        raise TimestampError(f"{_show(s)} is before 1970-01-01T00:00:00Z")
    return us, naive


def parse_timestamp(value: object, tz: tzinfo) -> tuple[int, bool]:
    """Read an epoch number or ISO-8601 string as (µs since epoch UTC, naive).

    Raises only TimestampError; ``naive`` is True when an ISO string without offset was read in tz.
    """
    if isinstance(value, bool):
        raise TimestampError(f"got a boolean; {_EXPECTED}")
    if isinstance(value, int):
        return _scale_int(value), False
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TimestampError(f"epoch {value} is not a finite number; {_EXPECTED}")
        # repr gives the shortest digits that round-trip, i.e. what the device wrote.
        return _scale_decimal(Decimal(repr(value))), False
    if isinstance(value, str):
        s = value.strip()
        if not s:
            raise TimestampError(f"empty string; {_EXPECTED}")
        if len(s) > _MAX_TEXT:
            raise TimestampError(f"{_show(s)} is too long for a timestamp; {_EXPECTED}")
        if _is_epoch_text(s):
            try:
                return _scale_decimal(Decimal(s)), False
            except InvalidOperation:
                raise TimestampError(f"{_show(s)} is not a number; {_EXPECTED}") from None
        return _parse_iso(s, tz)
    kind = "null" if value is None else type(value).__name__
    raise TimestampError(f"got {kind}; {_EXPECTED}")


def format_us(ts: int) -> str:
    """Format µs since epoch as ISO-8601 UTC with 'Z' (for messages; never raises)."""
    try:
        seconds, micros = divmod(ts, 1_000_000)
        second = _second_text(seconds)
    except (OverflowError, ValueError, TypeError):
        return f"{ts} µs since epoch"
    return f"{second}.{micros:06d}Z" if micros else f"{second}Z"


@functools.lru_cache(maxsize=4096)
def _second_text(seconds: int) -> str:
    # Exports and charts format many times within the same seconds: a cache beats datetime.
    return (_EPOCH + timedelta(seconds=seconds)).isoformat().removesuffix("+00:00")
