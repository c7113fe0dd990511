"""Logs: one JSON object per line with a structured traceback, or a plain console traceback —
never the local variables of the failing frames (slow to render, and they hold secrets)."""

from __future__ import annotations

import json

import pytest
import structlog

from telemetra import logs


def _fail_with_a_secret() -> None:
    password = "hunter2-secret"
    raise RuntimeError(f"failed ({len(password)})")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_errors_are_logged_with_their_traceback_and_without_locals(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure(fmt)
    try:
        try:
            _fail_with_a_secret()
        except RuntimeError:
            structlog.get_logger("test").exception("unexpected error", path="/x")
        err = capsys.readouterr().err
    finally:
        logs.configure("console")
    assert "hunter2-secret" not in err
    if fmt == "json":
        line = json.loads(err.strip().splitlines()[-1])
        assert line["event"] == "unexpected error" and line["level"] == "error"
        frames = line["exception"][0]["frames"]
        assert frames[-1]["name"] == "_fail_with_a_secret"
        assert line["exception"][0]["exc_value"] == "failed (14)"
    else:
        assert "Traceback (most recent call last)" in err and "_fail_with_a_secret" in err
