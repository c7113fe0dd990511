"""Topic routes: defaults, matching, subscriptions and the JSON route configuration."""

from __future__ import annotations

import pytest

from telemetra.ingest.routes import (
    DEFAULT_ROUTES,
    Route,
    match,
    parse_routes,
    subscription,
)


def test_default_subscriptions() -> None:
    assert [subscription(r) for r in DEFAULT_ROUTES] == [
        "devices/+/telemetry",
        "qs/v1/+/events",
        "application/+/device/+/event/up",
        "tele/+/#",
    ]


@pytest.mark.parametrize(
    ("topic", "fmt", "device", "rest", "ack"),
    [
        ("devices/d1/telemetry", "native", "d1", (), "devices/d1/acks"),
        ("qs/v1/esp-7/events", "native", "esp-7", (), "qs/v1/esp-7/acks"),
        (
            "application/app-1/device/0102030405060708/event/up",
            "chirpstack",
            "0102030405060708",
            (),
            None,
        ),
        ("tele/plug1/SENSOR", "tele", "plug1", ("SENSOR",), None),
        ("tele/plug1/a/b", "tele", "plug1", ("a", "b"), None),
        ("tele/plug1", "tele", "plug1", (), None),  # MQTT: '#' also matches the parent level
    ],
)
def test_match_defaults(
    topic: str, fmt: str, device: str, rest: tuple[str, ...], ack: str | None
) -> None:
    m = match(DEFAULT_ROUTES, topic)
    assert m is not None
    assert (m.route.format, m.device, m.rest, m.ack_topic) == (fmt, device, rest, ack)


@pytest.mark.parametrize(
    "topic",
    [
        "devices/d1/telemetry/extra",
        "devices/d1",
        "devices//telemetry",  # an empty level names no device
        "application/app/device/x/event/join",
        "v1/devices/me/telemetry",
        "",
        "tele",
    ],
)
def test_no_match(topic: str) -> None:
    assert match(DEFAULT_ROUTES, topic) is None


def test_first_route_wins() -> None:
    routes = [Route("a/{device}/x", "tele"), Route("a/+/{device}", "native")]
    m = match(routes, "a/d/x")
    assert m is not None and m.route.format == "tele" and m.device == "d"
    m = match(routes, "a/b/y")
    assert m is not None and m.route.format == "native" and m.device == "y"


def test_wildcard_first_level_skips_dollar_topics() -> None:
    routes = [Route("+/{device}/data", "native")]
    assert match(routes, "$SYS/d/data") is None
    assert match(routes, "site/d/data") is not None
    assert match([Route("{device}/data", "native")], "$x/data") is None


def test_route_equality_ignores_compiled_state() -> None:
    assert Route("a/{device}", "native") == Route("a/{device}", "native")
    assert hash(Route("a/{device}", "native")) == hash(Route("a/{device}", "native"))
    assert "_levels" not in repr(Route("a/{device}", "native"))


@pytest.mark.parametrize(
    ("pattern", "fmt", "ack", "message"),
    [
        ("a/{device}", "xml", None, "unknown format 'xml'"),
        ("a/b", "native", None, "no {device}"),
        ("a/#/{device}", "native", None, "'#' is allowed only as the last level"),
        ("a/{device}/{device}", "native", None, "more than once"),
        ("a/dev{device}", "native", None, "whole level"),
        ("a/x+/{device}", "native", None, "whole level"),
        ("a/{device}", "native", "acks/+", "plain topic"),
        ("a/{device}", "native", "", "plain topic"),
    ],
)
def test_invalid_route(pattern: str, fmt: str, ack: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Route(pattern, fmt, ack)


def test_parse_routes() -> None:
    routes = parse_routes(
        '[{"pattern": "site/+/{device}/up", "format": "native", "ack": "site/{device}/ack"},'
        ' {"pattern": "lora/{device}", "format": "chirpstack"}]'
    )
    assert routes == [
        Route("site/+/{device}/up", "native", "site/{device}/ack"),
        Route("lora/{device}", "chirpstack", None),
    ]
    m = match(routes, "site/north/d9/up")
    assert m is not None and m.ack_topic == "site/d9/ack"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not valid JSON"),
        ("{}", "non-empty JSON list"),
        ("[]", "non-empty JSON list"),
        ("[1]", "route 0: expected an object"),
        ('[{"pattern": "a/{device}", "format": "native", "acks": "x"}]', "unknown keys 'acks'"),
        ('[{"format": "native"}]', "'pattern' must be"),
        ('[{"pattern": "a/{device}"}]', "'format' must be one of"),
        ('[{"pattern": "a/{device}", "format": "native", "ack": 5}]', "'ack' must be"),
        ('[{"pattern": "a/{device}", "format": "csv"}]', "route 0: unknown format 'csv'"),
        (
            '[{"pattern": "a/{device}", "format": "tele"}, {"pattern": "b", "format": "tele"}]',
            "route 1: pattern 'b' has no {device}",
        ),
        ('[{"pattern": "#/{device}", "format": "tele"}]', "'#' is allowed only as the last"),
    ],
)
def test_parse_routes_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_routes(text)
