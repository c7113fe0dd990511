"""MQTT topic routes: which topics carry which payload format, for which device, acked where.

A pattern is an MQTT topic filter in which one whole level is ``{device}`` (it matches one level and
names the device), ``+`` matches one level and a trailing ``#`` matches the rest. The first route in
the list that matches a topic wins.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_ROUTES",
    "FORMATS",
    "Route",
    "RouteMatch",
    "match",
    "parse_routes",
    "subscription",
]

FORMATS = ("native", "chirpstack", "tele")
DEVICE = "{device}"

# Compiled level kinds; a literal level is kept as its own string.
_PLUS = 0
_DEV = 1


@dataclass(frozen=True)
class Route:
    """One topic pattern, the payload format it carries and the optional ack topic."""

    pattern: str
    format: str  # "native" | "chirpstack" | "tele"
    ack: str | None = None
    # Compiled once here because match() runs for every message.
    _levels: tuple[str | int, ...] = field(init=False, repr=False, compare=False)
    _multi: bool = field(init=False, repr=False, compare=False)
    _device_at: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(
                f"unknown format {self.format!r} for {self.pattern!r}; "
                f"expected one of {', '.join(FORMATS)}"
            )
        levels = self.pattern.split("/")
        multi = levels[-1] == "#"
        if multi:
            levels.pop()
        compiled: list[str | int] = []
        device_at = -1
        for i, level in enumerate(levels):
            if level == DEVICE:
                if device_at >= 0:
                    raise ValueError(f"pattern {self.pattern!r} names {DEVICE} more than once")
                device_at = i
                compiled.append(_DEV)
            elif level == "+":
                compiled.append(_PLUS)
            elif level == "#":
                raise ValueError(f"pattern {self.pattern!r}: '#' is allowed only as the last level")
            elif "+" in level or "#" in level or "{" in level or "}" in level:
                raise ValueError(
                    f"pattern {self.pattern!r}: level {level!r} mixes a wildcard or placeholder "
                    "with text; wildcards and {device} must fill a whole level"
                )
            else:
                compiled.append(level)
        if device_at < 0:
            raise ValueError(f"pattern {self.pattern!r} has no {DEVICE} level")
        if self.ack is not None:
            rest = self.ack.replace(DEVICE, "")
            if not self.ack or "+" in rest or "#" in rest or "{" in rest or "}" in rest:
                raise ValueError(
                    f"ack topic {self.ack!r} must be a plain topic (only {DEVICE} may be inserted)"
                )
        object.__setattr__(self, "_levels", tuple(compiled))
        object.__setattr__(self, "_multi", multi)
        object.__setattr__(self, "_device_at", device_at)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """A topic matched to a route: the device it names and the levels caught by '#'."""

    route: Route
    device: str
    rest: tuple[str, ...]
    ack_topic: str | None


DEFAULT_ROUTES: tuple[Route, ...] = (
    Route("devices/{device}/telemetry", "native", "devices/{device}/acks"),
    Route("qs/v1/{device}/events", "native", "qs/v1/{device}/acks"),
    Route("application/+/device/{device}/event/up", "chirpstack"),
    Route("tele/{device}/#", "tele"),
)


def subscription(route: Route) -> str:
    """The MQTT subscription filter for a route ({device} becomes '+')."""
    return route.pattern.replace(DEVICE, "+")


def _match_one(route: Route, parts: list[str], topic: str) -> RouteMatch | None:
    levels = route._levels
    n = len(levels)
    # '#' also matches the parent level itself (MQTT: "a/#" matches "a").
    if (len(parts) < n) if route._multi else (len(parts) != n):
        return None
    for want, got in zip(levels, parts, strict=False):
        if want.__class__ is str and want != got:
            return None
    # MQTT: wildcards at the first level never match '$' topics such as $SYS.
    if topic[:1] == "$" and levels[0].__class__ is int:
        return None
    device = parts[route._device_at]
    if not device:
        return None
    ack = route.ack.replace(DEVICE, device) if route.ack is not None else None
    return RouteMatch(route, device, tuple(parts[n:]), ack)


def match(routes: Iterable[Route], topic: str) -> RouteMatch | None:
    """The first route matching a topic, with the device it names; None when none matches."""
    parts = topic.split("/")
    for route in routes:
        found = _match_one(route, parts, topic)
        if found is not None:
            return found
    return None


def parse_routes(text: str) -> list[Route]:
    """Parse a JSON list of {"pattern", "format", "ack"} objects; ValueError says what is wrong."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"routes are not valid JSON: {exc}") from None
    if not isinstance(data, list) or not data:
        raise ValueError('routes must be a non-empty JSON list of {"pattern", "format", "ack"}')
    routes: list[Route] = []
    for i, item in enumerate(data):
        where = f"route {i}"
        if not isinstance(item, dict):
            raise ValueError(f'{where}: expected an object {{"pattern", "format", "ack"}}')
        unknown = sorted(set(item) - {"pattern", "format", "ack"})
        if unknown:
            raise ValueError(f"{where}: unknown keys {', '.join(map(repr, unknown))}")
        pattern, fmt, ack = item.get("pattern"), item.get("format"), item.get("ack")
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"{where}: 'pattern' must be a non-empty string")
        if not isinstance(fmt, str):
            raise ValueError(f"{where}: 'format' must be one of {', '.join(FORMATS)}")
        if ack is not None and not isinstance(ack, str):
            raise ValueError(f"{where}: 'ack' must be a string or null")
        try:
            routes.append(Route(pattern, fmt, ack))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return routes
