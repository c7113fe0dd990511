"""Fixtures of the browser tests (tests/browser): Debian's Chromium driven by Playwright against
a real `telemetra serve` and `telemetra worker` on a fresh PostgreSQL database of their own, one
server for the whole session.

The seeded world: tenant `acme` (owner `olivia`, viewer `victor`) with a freezer that has 30 days
of 10-minute history, a reading rejected as out of range, a device whose name is an HTML
injection attempt, and an alert rule the freezer's live readings cross; tenant `globex` (owner
`gina`) with a device of its own. Needs /usr/bin/chromium and the built dashboard
(`make setup`): missing either skips locally and fails in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from conftest import PG_SERVER, _admin, app_role_url, free_port, missing, stop

CHROMIUM = Path("/usr/bin/chromium")
DIST = Path(__file__).parents[1] / "src" / "telemetra" / "web" / "dist"
SECRET = "browser-tests-secret-key-0123456789abcdefghij"
PASSWORD = "correct horse battery staple"
XSS = "<img src=x onerror=alert(1)>"
S = 1_000_000


@dataclass
class Dashboard:
    url: str
    api: str
    engine: Any
    tokens: dict[str, str] = field(default_factory=dict)  # device uid -> token
    logs: list[Path] = field(default_factory=list)


async def _seed(db_url: str) -> tuple[Any, dict[str, str]]:
    from telemetra.alerts import store
    from telemetra.api.auth import hash_password
    from telemetra.config import Settings
    from telemetra.ingest.pipeline import Message, Pipeline
    from telemetra.store.catalog import create_device, create_tenant, create_user
    from telemetra.store.database import open_database
    from telemetra.store.tenancy import ALL_TENANTS

    engine = await open_database(db_url, migrate_schema=False, tenant_scope=ALL_TENANTS)
    hashed = hash_password(PASSWORD)
    tokens: dict[str, str] = {}
    async with engine.begin() as conn:
        acme = await create_tenant(conn, "acme", "Europe/Vienna")
        globex = await create_tenant(conn, "globex")
        await create_user(conn, acme, "olivia", hashed, "owner")
        await create_user(conn, acme, "victor", hashed, "viewer")
        await create_user(conn, globex, "gina", hashed, "owner")
        tokens["freezer-1"] = await create_device(
            conn, acme, "freezer-1", name="Cold room 1", type="freezer",
            metadata={"location": {"lat": 48.21, "lon": 16.37}, "tags": ["cold-room"],
                      "expected_interval": 10},
        )  # fmt: skip
        tokens["evil-1"] = await create_device(conn, acme, "evil-1", name=XSS, type="freezer")
        tokens["globex-1"] = await create_device(conn, globex, "globex-1", name="Globex secret")
        await store.create_rule(conn, acme, {
            "name": "freezer too warm", "kind": "threshold", "metric": "temperature",
            "condition": {"op": ">", "value": -10}, "clear": {"op": "<=", "value": -15},
            "scope": {"type": "freezer"}, "severity": "critical",
        })  # fmt: skip
    # 30 days of 10-minute history (no alerts: history is not evaluated), and one rejection.
    pipeline = Pipeline(engine, Settings(database_url="postgresql://unused"), feed_alerts=False)
    now_s = int(time.time())
    start_s = now_s - 30 * 86400
    batch: list[Message] = []
    for i, t in enumerate(range(start_s, now_s - 600, 600)):
        value = -18.0 + 2.5 * ((i % 144) / 144)
        body = orjson.dumps({"ts": t, "temperature": round(value, 2), "humidity": 40 + i % 7})
        batch.append(Message("devices/freezer-1/telemetry", body, time.time_ns() // 1000))
        if len(batch) == 500:
            await pipeline.process(batch)
            batch = []
    bad = orjson.dumps({"ts": now_s - 300, "temperature": 6000})
    await pipeline.process([*batch, Message("devices/freezer-1/telemetry", bad, now_s * S)])
    return engine, tokens


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "telemetra.cli", *command],
        env={**os.environ, **env}, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def running_dashboard(folder: Path) -> AsyncIterator[Dashboard]:
    """Seed a fresh database, start serve and worker on it; stop and drop them after."""
    if not CHROMIUM.exists():
        missing("Chromium at /usr/bin/chromium (apt-get install chromium; make setup does)")
    if not (DIST / "index.html").exists():
        missing(f"the built dashboard in {DIST} (make setup builds it)")
    name = f"telemetra_browser_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        await _admin(f'CREATE DATABASE "{name}"')
    except (TimeoutError, OSError) as exc:
        missing(f"PostgreSQL at {PG_SERVER} ({exc})")
    url = f"{PG_SERVER}/{name}"
    from telemetra.store.database import open_database

    await (await open_database(url, migrate_schema=True)).dispose()
    engine, tokens = await _seed(url)
    port = free_port()
    env = {
        "TELEMETRA_DATABASE_URL": await app_role_url(url),
        "TELEMETRA_SECRET_KEY": SECRET, "TELEMETRA_DATA_DIR": str(folder / "data"),
        "TELEMETRA_API_PORT": str(port), "TELEMETRA_LOG_FORMAT": "json",
    }  # fmt: skip
    logs = [folder / "serve.log", folder / "worker.log"]
    serve = _start(["serve"], env, logs[0])
    worker = _start(["worker"], {**env, "TELEMETRA_DATABASE_URL": url}, logs[1])
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as client:
            deadline = time.monotonic() + 30
            while True:
                assert serve.poll() is None, logs[0].read_text()[-3000:]
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, logs[0].read_text()[-3000:]
                await asyncio.sleep(0.1)
        yield Dashboard(base, f"{base}/api/v1", engine, tokens, logs)
    finally:
        stop(serve)
        stop(worker)
        await engine.dispose()
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """Debian's Chromium, headless, for the whole session."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        await browser.close()


@contextlib.asynccontextmanager
async def fresh_page(
    browser: Any, dashboard: Dashboard, dark: bool = False, bypass_csp: bool = False
) -> AsyncIterator[Any]:
    """A fresh browser context (no cookies) per test; fails the test on any dialog (an
    injected script would open one) or uncaught page error."""
    context = await browser.new_context(
        base_url=dashboard.url, viewport={"width": 1280, "height": 800},
        color_scheme="dark" if dark else "light", bypass_csp=bypass_csp,
    )  # fmt: skip
    page = await context.new_page()
    problems: list[str] = []
    page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    yield page
    await context.close()
    assert not problems, problems


async def sign_in(page: Any, username: str, password: str = PASSWORD) -> None:
    await page.goto("/")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("navigation", name="Main").wait_for()


async def send(dashboard: Dashboard, uid: str, **values: Any) -> None:
    """A device's reading over HTTP ingest, with its token."""
    async with httpx.AsyncClient() as client:
        r = await client.post(
            f"{dashboard.api}/ingest", json=values, headers={"X-API-Key": dashboard.tokens[uid]}
        )
        assert r.status_code < 300, r.text
