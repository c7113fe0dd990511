"""Logs: one JSON object per line with a structured traceback, or a plain console traceback —
never the local variables of the failing frames (slow to render, and they hold secrets); and no
credential in any line, uvicorn's access log of a real `serve` included."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
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


# --- credentials never reach a log line --------------------------------------------------------

TOKEN = "hMFZF4jt5k0IlwFGLaX75UnejoIOiRS9LolsWRiDFtg"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI3IiwicHdkIjoic0hhNkJwVzc1VV82WmxTbyJ9."
    "agcr-ytpg_DLClLJ_F3HpKxlx0bVq3LHZ_ha2TF_-Xs"
)


@pytest.mark.parametrize(
    "line",
    [
        f'127.0.0.1:5 - "POST /api/v1/{TOKEN}/telemetry HTTP/1.1" 200',
        f"GET /api/v1/devices?token={TOKEN}&limit=5",
        f"GET /x?access_token={JWT}",
        f"Authorization: Bearer {TOKEN}",
        f"{{'x-api-key': '{TOKEN}', 'accept': '*/*'}}",
        f"headers={{'authorization': 'Bearer {JWT}'}}",
        f"invalid token {JWT} refused",
    ],
)
def test_redact_removes_every_credential(line: str) -> None:
    redacted = logs.redact(line)
    assert TOKEN not in redacted and JWT not in redacted and "[redacted]" in redacted


def test_redact_keeps_what_is_not_a_credential() -> None:
    line = '127.0.0.1:5 - "GET /api/v1/devices/greenhouse-1/telemetry?from=-1h HTTP/1.1" 200'
    assert logs.redact(line) == line


def test_standard_library_records_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    logs.configure("console")
    access = logging.getLogger("uvicorn.access")
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "POST",
                    f"/api/v1/{TOKEN}/telemetry", "1.1", 200)  # fmt: skip
    assert TOKEN not in caplog.text and "/api/v1/[redacted]/telemetry" in caplog.text


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str, Path, int]]:
    """A real `telemetra serve` (uvicorn, embedded SQLite) with one device: (port, token, log
    file, pid)."""
    from conftest import free_port, stop, wait_for_port

    folder = tmp_path_factory.mktemp("serve")
    exe = str(Path(sys.executable).parent / "telemetra")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRA_")}
    env |= {"TELEMETRA_DATA_DIR": str(folder / "data"), "TELEMETRA_MQTT_URL": "mqtt://127.0.0.1:1",
            "TELEMETRA_SECRET_KEY": "tests-only-signing-key-4f9c2a7e1b8d6053"}  # fmt: skip
    made = subprocess.run(
        [exe, "device", "create", "tb-1"], env=env, capture_output=True, text=True, check=True
    )
    token = made.stdout.strip().splitlines()[-1]
    port = free_port()
    log = folder / "serve.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [exe, "serve", "--port", str(port)], env=env, stdout=err, stderr=subprocess.STDOUT
        )
    try:
        wait_for_port(port, 30)
        yield port, token, log, proc.pid
    finally:
        stop(proc)


def test_a_served_api_logs_no_device_token(served: tuple[int, str, Path, int]) -> None:
    port, token, log, _pid = served
    base = f"http://127.0.0.1:{port}/api/v1"
    with httpx.Client(timeout=10) as client:
        assert client.post(f"{base}/{token}/telemetry", json={"t": 1}).status_code == 200
        client.get(f"{base}/devices", params={"token": token})
        client.get(f"{base}/devices", headers={"Authorization": f"Bearer {token}"})
        client.post(f"{base}/ingest", json={"t": 1}, headers={"X-API-Key": token})
    text = log.read_text()
    assert "/api/v1/[redacted]/telemetry" in text, text
    assert token not in text


def test_a_huge_body_does_not_grow_the_server(served: tuple[int, str, Path, int]) -> None:
    """100 MB sent without a token, chunked (no Content-Length): refused at the limit, and the
    server's memory does not grow by the body's size (it grew 280–300 MB before)."""
    import psutil

    port, _token, _log, pid = served
    server = psutil.Process(pid)
    before = server.memory_info().rss
    frame = b"10000\r\n" + b"1" * 0x10000 + b"\r\n"  # 64 KiB chunks
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /api/v1/devices HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        try:
            while sent < 100 * 1024 * 1024:
                s.sendall(frame)
                sent += 0x10000
        except OSError:  # the server answered 413 and closed the connection
            pass
        try:
            answer = s.recv(4096)
        except OSError:
            answer = b""
    grown = server.memory_info().rss - before
    assert grown < 30 * 1024 * 1024, f"serve grew {grown / 2**20:.0f} MB for {sent / 2**20:.0f} MB"
    if answer:
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # A declared Content-Length over the limit is refused before a byte of the body is sent.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /api/v1/users HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 104857600\r\n\r\n"
        )
        assert s.recv(4096).startswith(b"HTTP/1.1 413")
