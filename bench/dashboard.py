"""Dashboard benchmark: how fast the device page and the devices page are in a real browser.

Not a test. On a fresh PostgreSQL database (dropped at the end): one device with ``--days`` of
10-second data for 4 metrics and ``--devices`` other devices; a real `telemetra serve` (the built
dashboard, `make setup`), Debian's Chromium driven by Playwright. Reports:

- the device page: from navigation to all 4 charts drawn (the default last 24 hours), and from
  choosing "Last 30 days" to the charts redrawn — against the target of 1.5 s;
- the devices page with ``--devices`` devices: time to the first rows, and long tasks (> 50 ms
  on the main thread) while scrolling the table and paging through it;
- the bundle: gzip size of the first load and of each lazily loaded chunk.

    .venv/bin/python bench/dashboard.py                   # ~2 min (most of it loading history)
    .venv/bin/python bench/dashboard.py --days 7 --devices 2000

Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

PG_SERVER = os.environ.get("TELEMETRA_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
DIST = Path(__file__).parents[1] / "src" / "telemetra" / "web" / "dist"
PASSWORD = "bench password for the dashboard"
METRICS = ("temperature", "humidity", "co2", "battery")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bundle() -> dict[str, Any]:
    """gzip sizes (kB): what index.html loads first, and the other chunks."""
    index = (DIST / "index.html").read_text()
    sizes = {
        p.name: len(gzip.compress(p.read_bytes(), 9)) / 1000
        for p in (DIST / "assets").iterdir()
        if p.suffix in (".js", ".css")
    }
    first = {name: size for name, size in sizes.items() if name in index}
    # index.html names the entry and its modulepreloads; the rest load on demand.
    return {
        "first_load_kb": round(sum(first.values()), 1),
        "first_load": {k: round(v, 1) for k, v in sorted(first.items())},
        "lazy_kb": {k: round(v, 1) for k, v in sorted(sizes.items()) if k not in first},
    }


async def seed(url: str, args: argparse.Namespace) -> None:
    from sqlalchemy import insert

    from telemetra.api.auth import hash_password
    from telemetra.config import Settings
    from telemetra.ingest.pipeline import Message, Pipeline
    from telemetra.store.catalog import create_device, create_tenant, create_user
    from telemetra.store.database import open_database
    from telemetra.store.schema import devices
    from telemetra.store.tenancy import ALL_TENANTS

    db = await open_database(url, migrate_schema=True, tenant_scope=ALL_TENANTS)
    try:
        async with db.begin() as conn:
            tenant = await create_tenant(conn, "bench")
            await create_user(conn, tenant, "bench", hash_password(PASSWORD), "owner")
            await create_device(conn, tenant, "perf-1", type="sensor")
            now = time.time_ns() // 1000
            rows = [
                {"tenant_id": tenant, "uid": f"dev-{i:05d}", "name": f"Device {i}",
                 "type": ("freezer", "greenhouse", "plug")[i % 3], "metadata": {"tags": []},
                 "status": "active", "created_at": now, "last_seen": now - i * 1_000_000}
                for i in range(args.devices)
            ]  # fmt: skip
            for i in range(0, len(rows), 5000):
                await conn.execute(insert(devices), rows[i : i + 5000])
        pipeline = Pipeline(db, Settings(database_url="postgresql://unused"), feed_alerts=False)
        end = int(time.time()) - 60
        start = end - args.days * 86400
        batch: list[Message] = []
        total = (end - start) // 10
        started = time.monotonic()
        for n, t in enumerate(range(start, end, 10)):
            day = (t % 86400) / 86400
            battery = round(100 - 50 * (t - start) / (end - start), 2)
            body = {"ts": t, "temperature": round(20 + 5 * day, 2), "humidity": 40 + n % 9,
                    "co2": 400 + n % 300, "battery": battery}  # fmt: skip
            batch.append(Message("devices/perf-1/telemetry", orjson.dumps(body), now))
            if len(batch) == 4000:
                await pipeline.process(batch)
                batch = []
                done = n / total
                rate = n / (time.monotonic() - started)
                print(
                    f"\rloading history: {done:5.1%} ({rate:,.0f} messages/s)", end="", flush=True
                )
        await pipeline.process(batch)
        print()
    finally:
        await db.dispose()


async def measure(base: str, args: argparse.Namespace) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        context = await browser.new_context(base_url=base, viewport={"width": 1400, "height": 900})
        page = await context.new_page()
        await page.goto("/")
        await page.get_by_label("Username").fill("bench")
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("navigation", name="Main").wait_for()
        charts_drawn = (
            "() => { const c = [...document.querySelectorAll('[aria-label^=\"Chart of \"]')];"
            " return c.length === 4 && c.every(e => Number(e.dataset.points) > 0); }"
        )
        result: dict[str, Any] = {}
        loads = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            await page.goto("/devices/perf-1")
            try:
                await page.wait_for_function(charts_drawn, timeout=30_000)
            except Exception:
                await page.screenshot(path=str(Path(tempfile.gettempdir()) / "bench-device.png"))
                raise
            loads.append((time.perf_counter() - started) * 1000)
        result["device_page_24h_ms"] = [round(x) for x in loads]
        switches = []
        for _ in range(args.repeat):
            await page.get_by_label("Range").select_option(label="Last 24 hours")
            await page.wait_for_function(charts_drawn)
            await page.wait_for_timeout(300)
            marker = await page.evaluate(
                "() => Number(document.querySelector('[aria-label^=\"Chart of \"]').dataset.points)"
            )
            started = time.perf_counter()
            await page.get_by_label("Range").select_option(label="Last 30 days")
            await page.wait_for_function(
                "([m]) => { const c = [...document.querySelectorAll("
                "'[aria-label^=\"Chart of \"]')];"
                " return c.length === 4 && c.every(e => Number(e.dataset.points) > 1.5 * m); }",
                arg=[marker],
                timeout=30_000,
            )
            switches.append((time.perf_counter() - started) * 1000)
        # The first switch fetches 30 days; later ones may be served from the client's cache.
        result["device_page_30d_switch_ms"] = [round(x) for x in switches]
        # The devices page: first rows, then long tasks while scrolling and paging.
        started = time.perf_counter()
        await page.goto("/devices")
        await page.get_by_text("dev-00000").first.wait_for(timeout=30_000)
        result["devices_page_first_rows_ms"] = round((time.perf_counter() - started) * 1000)
        await page.evaluate(
            "() => { window.__long = []; new PerformanceObserver(l => window.__long.push("
            "...l.getEntries().map(e => e.duration)))"
            ".observe({type: 'longtask', buffered: false}); }"
        )
        for _ in range(args.pages):
            for _ in range(10):
                await page.mouse.wheel(0, 400)
                await page.wait_for_timeout(30)
            next_page = page.get_by_role("button", name="Next")
            if await next_page.is_disabled():
                break
            await next_page.click()
            await page.wait_for_timeout(150)
        long_tasks = await page.evaluate("() => window.__long")
        result["devices_page_long_tasks"] = {
            "pages": args.pages, "count": len(long_tasks),
            "longest_ms": round(max(long_tasks, default=0)), "total_ms": round(sum(long_tasks)),
        }  # fmt: skip
        await browser.close()
        return result


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    if not (DIST / "index.html").exists():
        sys.exit(f"no built dashboard in {DIST}: run `make setup`")
    name = f"telemetra_bench_dash_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(f"{PG_SERVER}/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_SERVER}/{name}"
    serve: asyncio.subprocess.Process | None = None
    try:
        await seed(url, args)
        port = free_port()
        log = Path(tempfile.gettempdir()) / f"{name}.log"
        env = {**os.environ, "TELEMETRA_DATABASE_URL": url, "TELEMETRA_API_PORT": str(port),
               "TELEMETRA_SECRET_KEY": "bench-dashboard-secret-key-0123456789abcdefghijkl",
               "TELEMETRA_LOG_LEVEL": "WARNING"}  # fmt: skip
        serve = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "telemetra.cli", "serve", env=env,
            stdout=log.open("wb"), stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base) as client:
            for _ in range(300):
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        result = {"bundle": bundle(), **(await measure(base, args))}
        result["setup"] = {"days": args.days, "readings": args.days * 8640 * 4,
                           "devices": args.devices + 1}  # fmt: skip
        return result
    finally:
        if serve is not None:
            serve.terminate()
            await asyncio.wait_for(serve.wait(), 15)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=30, help="days of 10-second data, 4 metrics")
    parser.add_argument("--devices", type=int, default=10_000, help="devices beside the one")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pages", type=int, default=20, help="devices pages to scroll through")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(bench(args)), indent=2))


if __name__ == "__main__":
    main()
