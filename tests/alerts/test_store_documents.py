"""Write-only channel secrets (properties) and validation problems named by field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from telemetra.alerts.documents import keep_secrets, one_line, problems, shown_channels
from telemetra.alerts.rules import Rule

secrets = st.text(min_size=8, max_size=40).map(lambda s: f"secret:{s}")
hosts = st.sampled_from(["ops.example.org", "hooks.slack.com", "10.0.0.1:8443"])
paths = st.text(alphabet="abcdefXYZ0123456789/", max_size=30)

webhook = st.builds(
    lambda host, path, secret: {"kind": "webhook", "url": f"https://{host}/{path}"}
    | ({} if secret is None else {"secret": secret}),
    hosts, paths, st.none() | secrets,
)  # fmt: skip
slack = st.builds(
    lambda host, path: {"kind": "slack", "url": f"https://{host}/services/{path}"}, hosts, paths
)
email = st.builds(lambda n: {"kind": "email", "to": [f"ops{n}@example.org"]}, st.integers(0, 9))
mqtt = st.builds(lambda t: {"kind": "mqtt", "topic": f"alerts/{t}"}, st.integers(0, 9))
channels = st.lists(st.one_of(webhook, slack, email, mqtt), max_size=6)


def hidden(channel: dict[str, Any]) -> list[str]:
    """The secret values of a channel."""
    if channel["kind"] == "webhook":
        return [channel["secret"]] if "secret" in channel else []
    if channel["kind"] == "slack":
        return [channel["url"].split("/", 3)[3]]  # the path is the credential
    return []


@given(channels)
def test_shown_channels_hold_no_secret(stored: list[dict[str, Any]]) -> None:
    shown = shown_channels(stored)
    text = repr(shown)
    for channel in stored:
        for secret in hidden(channel):
            if len(secret) >= 8:  # a short path may occur by chance elsewhere
                assert secret not in text
    assert [c["kind"] for c in shown] == [c["kind"] for c in stored]
    for before, after in zip(stored, shown, strict=True):
        if before["kind"] == "webhook":
            assert after["secret_set"] is ("secret" in before) and "secret" not in after


@given(channels)
def test_channels_sent_back_as_shown_keep_their_secrets(stored: list[dict[str, Any]]) -> None:
    assert keep_secrets(stored, shown_channels(stored)) == stored


@given(channels, st.data())
def test_a_removed_or_replaced_secret_is_not_brought_back(
    stored: list[dict[str, Any]], data: st.DataObject
) -> None:
    shown = shown_channels(stored)
    sent = []
    for channel in shown:
        if channel["kind"] == "webhook":
            channel = {**channel, "secret": data.draw(st.none() | secrets)}
        elif channel["kind"] == "slack":
            channel = {**channel, "url": "https://hooks.example.org/services/NEW"}
        sent.append(channel)
    kept = keep_secrets(stored, sent)
    for given_channel, result in zip(sent, kept, strict=True):
        assert "secret_set" not in result
        if given_channel["kind"] == "webhook":
            assert result["secret"] == given_channel["secret"]
        elif given_channel["kind"] == "slack":
            assert result["url"] == "https://hooks.example.org/services/NEW"


def test_a_webhook_at_another_place_or_of_another_kind_gets_no_secret() -> None:
    stored = [{"kind": "webhook", "url": "https://a.example.org/", "secret": "s3cret-s3cret"}]
    sent = [{"kind": "email", "to": ["x@example.org"]},
            {"kind": "webhook", "url": "https://a.example.org/"}]  # fmt: skip
    moved = keep_secrets(stored, sent)
    assert moved[1] == {"kind": "webhook", "url": "https://a.example.org/"}


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({"condition": {"op": "~", "value": 1}}, "condition.op"),
        ({"channels": [{"kind": "webhook", "url": "ftp://x"}]}, "channels.0.url"),
        ({"channels": [{"kind": "pager"}]}, "channels.0"),
        ({"for": "soon"}, "for"),
        ({"severity": "fatal"}, "severity"),
    ],
)
def test_problems_name_the_field_as_written(rule: dict[str, Any], field: str) -> None:
    base = {"name": "r", "kind": "threshold", "metric": "t", "condition": {"op": ">", "value": 1}}
    with pytest.raises(ValidationError) as caught:
        Rule.model_validate(base | rule)
    assert problems(caught.value)[0][0] == field
    assert one_line(caught.value).startswith(f"{field}: ")
    assert "Value error" not in one_line(caught.value)
