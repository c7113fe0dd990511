"""Alert engine benchmark: what 100 rules cost ingest, how fast the worker evaluates, and how
long a threshold crossing takes to reach a webhook.

Not a test. In one process, on a fresh PostgreSQL database (dropped at the end):

1. **Ingest with 0 vs 100 rules**: the real pipeline commits batches of messages (``--devices``
   devices, ``--metrics`` readings each); rounds alternate between the tenant's 100 threshold
   rules disabled and enabled (every reading watched: the worst case, each batch also writes its
   feed row). Reported: messages/s of each, and the ratio (median of paired rounds).
2. **Worker evaluation**: the feed written by the enabled rounds, drained by the engine:
   readings/s and rule evaluations/s.
3. **Threshold → webhook**: ``telemetra worker`` runs as its own process while this one commits
   ``--load`` readings/s of another tenant, each watched by one rule (a threshold per metric);
   a webhook rule gets one reading over its threshold per device, and the time from that
   commit to the webhook's arrival at a local receiver is recorded: p50 / p99 / max.

    .venv/bin/python bench/worker.py                    # ~1 min
    .venv/bin/python bench/worker.py --rounds 6 --latency-samples 100

Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.alerts import store
from telemetra.alerts.engine import BACKLOG_READINGS, Engine
from telemetra.config import Settings
from telemetra.ingest.pipeline import Message, Pipeline
from telemetra.store.catalog import create_device, create_tenant
from telemetra.store.database import open_database
from telemetra.store.schema import alert_rules
from telemetra.store.tenancy import ALL_TENANTS

PG_SERVER = os.environ.get("TELEMETRA_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def set_rules(db: AsyncEngine, pipeline: Pipeline, tenant_id: int, enabled: bool) -> None:
    async with db.begin() as conn:
        await conn.execute(
            update(alert_rules).where(alert_rules.c.tenant_id == tenant_id).values(enabled=enabled)
        )
    assert pipeline.alert_feed is not None
    async with db.connect() as conn:
        await pipeline.alert_feed.refresh(conn, force=True)


def messages(uids: list[str], metrics: int, t_ms: int) -> list[Message]:
    now = time.time_ns() // 1000
    return [
        Message(
            f"devices/{uid}/telemetry",
            orjson.dumps({"ts": t_ms, **{f"m{k}": float(k + i % 7) for k in range(metrics)}}),
            now,
            handle=(0, 0),
        )
        for i, uid in enumerate(uids)
    ]


async def ingest_rounds(
    db: AsyncEngine, args: argparse.Namespace, tenant_id: int, uids: list[str]
) -> dict[str, Any]:
    pipeline = Pipeline(db, Settings(database_url="postgresql://unused"))
    t_ms = (int(time.time()) - 3 * 3600) * 1000
    rates: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.rounds * 2):
        enabled = r % 2 == 1
        await set_rules(db, pipeline, tenant_id, enabled)
        started = time.perf_counter()
        sent = 0
        for _ in range(args.batches):
            t_ms += 1000
            batch = messages(uids, args.metrics, t_ms)
            await pipeline.process(batch)
            sent += len(batch)
        rates[enabled].append(sent / (time.perf_counter() - started))
    ratios = [b / a for a, b in zip(rates[False], rates[True], strict=True)]
    return {
        "msgs_per_s_0_rules": statistics.median(rates[False]),
        "msgs_per_s_100_rules": statistics.median(rates[True]),
        "ratio_100_to_0": statistics.median(ratios),
        "readings_per_message": args.metrics,
    }


async def evaluation(db: AsyncEngine, rules_per_reading: int) -> dict[str, float]:
    engine = Engine(db, settle_us=0)
    readings = 0
    started = time.perf_counter()
    while True:
        outcome = await engine.evaluate_feed(most=BACKLOG_READINGS)  # as the worker, behind
        readings += outcome.readings
        if not outcome.rows:
            break
    seconds = time.perf_counter() - started
    return {
        "readings_evaluated": readings,
        "readings_per_s": readings / seconds if seconds else 0.0,
        "rule_evaluations_per_s": readings * rules_per_reading / seconds if seconds else 0.0,
    }


async def load(
    db: AsyncEngine, uids: list[str], metrics: int, rate: int, stop: asyncio.Event
) -> int:
    """Commit ``rate`` readings/s (every 100 ms) of readings the 100 rules watch, until stop."""
    pipeline = Pipeline(db, Settings(database_url="postgresql://unused"))
    per_tick = max(1, rate // 10 // metrics)
    t_ms = (int(time.time()) - 3600) * 1000
    sent = i = 0
    while not stop.is_set():
        started = time.perf_counter()
        t_ms += 1
        chosen = [uids[(i + k) % len(uids)] for k in range(per_tick)]
        i += per_tick
        await pipeline.process(messages(chosen, metrics, t_ms))
        sent += per_tick * metrics
        await asyncio.sleep(max(0.0, 0.1 - (time.perf_counter() - started)))
    return sent


async def webhook_latency(
    db: AsyncEngine, url: str, args: argparse.Namespace, load_uids: list[str]
) -> dict[str, float]:
    arrived: dict[str, float] = {}
    every = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        body = json.loads(await reader.readexactly(length))
        if body.get("event") == "fired":
            arrived.setdefault(body["device"], time.perf_counter())
            if len(arrived) == args.latency_samples:
                every.set()
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tag = uuid.uuid4().hex[:6]
    uids = [f"lat-{tag}-{i}" for i in range(args.latency_samples)]
    async with db.begin() as conn:
        tenant_id = await create_tenant(conn, f"lat-{tag}")
        for uid in uids:
            await create_device(conn, tenant_id, uid)
        await store.create_rule(conn, tenant_id, {
            "name": "hot", "kind": "threshold", "metric": "heat",
            "condition": {"op": ">", "value": 100}, "scope": {},
            "channels": [{"kind": "webhook", "url": f"http://127.0.0.1:{port}/hook",
                          "secret": "bench-secret"}],
        })  # fmt: skip
    log = Path(tempfile.gettempdir()) / f"bench-worker-{tag}.log"
    env = {**os.environ, "TELEMETRA_DATABASE_URL": url, "TELEMETRA_NOTIFY_ALLOW": "127.0.0.1",
           "TELEMETRA_LOG_FORMAT": "json", "TELEMETRA_LOG_LEVEL": "WARNING"}  # fmt: skip
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "telemetra.cli", "worker", env=env,
        stdout=log.open("wb"), stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    pipeline = Pipeline(db, Settings(database_url="postgresql://unused"))
    stop = asyncio.Event()
    background = asyncio.create_task(load(db, load_uids, args.metrics, args.load, stop))
    try:
        await asyncio.sleep(3.0)  # the worker starts, takes its lock, catches up
        committed: dict[str, float] = {}
        started = time.perf_counter()
        for uid in uids:
            body = orjson.dumps({"heat": 150.0})
            await pipeline.process(
                [Message(f"devices/{uid}/telemetry", body, time.time_ns() // 1000, handle=(0, 0))]
            )
            committed[uid] = time.perf_counter()
            await asyncio.sleep(args.latency_gap)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(every.wait(), 30)
        stop.set()
        loaded = await background
        seconds = time.perf_counter() - started + 3.0
    finally:
        stop.set()
        worker.send_signal(signal.SIGTERM)
        await asyncio.wait_for(worker.wait(), 15)
        server.close()
    lags = [(arrived[u] - committed[u]) * 1000 for u in uids if u in arrived]
    return {
        "background_readings_per_s": loaded / seconds,
        "samples": len(lags),
        "missing": len(uids) - len(lags),
        "p50_ms": percentile(lags, 0.5),
        "p99_ms": percentile(lags, 0.99),
        "max_ms": max(lags),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    name = f"telemetra_bench_worker_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(f"{PG_SERVER}/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_SERVER.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    db = await open_database(url, migrate_schema=True, tenant_scope=ALL_TENANTS)
    try:
        tag = uuid.uuid4().hex[:6]
        uids = [f"b-{tag}-{i}" for i in range(args.devices)]
        async with db.begin() as conn:
            tenant_id = await create_tenant(conn, f"bench-{tag}")
            for uid in uids:
                await create_device(conn, tenant_id, uid)
            for i in range(100):
                await store.create_rule(conn, tenant_id, {
                    "name": f"r{i}", "kind": "threshold", "metric": f"m{i % args.metrics}",
                    "condition": {"op": ">", "value": 1000 + i}, "scope": {},
                })  # fmt: skip
        result: dict[str, Any] = {"ingest": await ingest_rounds(db, args, tenant_id, uids)}
        result["evaluation"] = await evaluation(db, 100 // args.metrics)
        async with db.begin() as conn:  # the latency run's load: a tenant with a rule a metric
            await conn.execute(update(alert_rules).values(enabled=False))
            load_tenant = await create_tenant(conn, f"load-{tag}")
            load_uids = [f"l-{tag}-{i}" for i in range(args.devices)]
            for uid in load_uids:
                await create_device(conn, load_tenant, uid)
            for i in range(args.metrics):
                await store.create_rule(conn, load_tenant, {
                    "name": f"m{i} high", "kind": "threshold", "metric": f"m{i}",
                    "condition": {"op": ">", "value": 1000}, "scope": {},
                })  # fmt: skip
        plain_url = f"{PG_SERVER}/{name}"
        result["threshold_to_webhook"] = await webhook_latency(db, plain_url, args, load_uids)
        return result
    finally:
        await db.dispose()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=500, help="messages per batch")
    parser.add_argument("--metrics", type=int, default=10, help="readings per message")
    parser.add_argument("--batches", type=int, default=10, help="batches per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of each (0 and 100 rules)")
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument("--latency-gap", type=float, default=0.2, help="seconds between them")
    parser.add_argument(
        "--load", type=int, default=10_000, help="background readings/s during the latency run"
    )
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
