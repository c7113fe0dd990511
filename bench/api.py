"""HTTP API benchmark: a real `telemetra serve` on PostgreSQL with 30 days of seeded history.

Not a test. Creates a fresh PostgreSQL database and an ordinary role for the server (both
dropped at the end), migrates, creates a tenant, an admin and an owner with the CLI, starts
`telemetra serve` on a free 127.0.0.1 port, registers the devices through the API as the
owner, seeds the history through the project's own bulk writer
(``telemetra.store.write.write_readings``: COPY, 1m/1h rollups, latest values), then measures
with a few concurrent httpx clients, per endpoint, p50/p95/p99 latency and throughput:

- (0) the floor: ``GET /health`` (no auth, no database) and ``GET /auth/me`` (token + account);
- (a) device ingest: ``POST /ingest/batch`` (100 messages x 5 values) and ``POST /ingest``;
- (b) raw history: ``GET /devices/{uid}/telemetry``, a page of 1000 of the last 24 h;
- (c) aggregates over 30 days: ``bucket=auto&max_points=500`` and ``bucket=1d&tz=Europe/Berlin``;
- (d) ``GET /telemetry/latest`` of all devices;
- (e) ``GET /devices/{uid}/export?format=csv`` of 30 days, streamed (MB/s, rows/s);
- (f) login ``POST /auth/token`` (argon2);

plus, per phase, the server's CPU, its PostgreSQL backends' CPU, the server's peak RSS and its
own view of request time and ingest commits (from its /metrics).

    .venv/bin/python bench/api.py                  # defaults: 20 devices, ~2.6M readings, ~2.5 min
    .venv/bin/python bench/api.py --quick          # ~1 min
    .venv/bin/python bench/api.py --scale 2 --json api.json

The server connects as an ordinary role (NOSUPERUSER NOBYPASSRLS, as production should, so
Row-Level Security applies) and the queries are made as a tenant owner; ``--superuser`` runs
the server as the superuser instead. Rate limits are off. Everything runs on 127.0.0.1 and
stops by itself: every phase is bounded in requests and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import psutil

PG_SERVER = os.environ.get("TELEMETRA_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
API = "/api/v1"
METRICS = ("temperature", "humidity", "pressure")  # seeded series per device
INGEST_METRICS = ("temperature", "humidity", "pressure", "co2", "battery")  # 5 values
MINUTE_US = 60_000_000
DAY_US = 24 * 60 * MINUTE_US
MAX_ROWS = 50_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def end(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    """Nearest rank below (as bench/ingest.py); ``values`` sorted."""
    return values[int(q * (len(values) - 1))] if values else float("nan")


# --- database, role, server ---------------------------------------------------------------------


@dataclass
class Setup:
    """What this run created, so that it can be removed again."""

    database: str = ""
    role: str = ""
    server: subprocess.Popen[bytes] | None = None

    @property
    def admin_url(self) -> str:
        return f"{PG_SERVER}/{self.database}"

    @property
    def app_url(self) -> str:
        if not self.role:
            return self.admin_url
        host = PG_SERVER.split("//", 1)[1].split("@")[-1]
        return f"postgresql://{self.role}@{host}/{self.database}"


async def _pg(sql: str, database: str = "postgres") -> None:
    conn = await asyncpg.connect(f"{PG_SERVER}/{database}", timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def clean_env(**values: str) -> dict[str, str]:
    """This process's environment without any TELEMETRA_* of the caller, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRA_")}
    return {**env, **values}


def telemetra(args: list[str], env: dict[str, str], cwd: Path, stdin: str | None = None) -> None:
    """Run the ``telemetra`` CLI; raise with its output when it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "telemetra.cli", *args],
        env=env, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"telemetra {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


async def create_database(setup: Setup, superuser: bool) -> None:
    setup.database = f"telemetra_bench_{uuid.uuid4().hex[:8]}"
    await _pg(f'CREATE DATABASE "{setup.database}"')
    if not superuser:
        setup.role = f"telemetra_bench_{uuid.uuid4().hex[:8]}"
        await _pg(f'CREATE ROLE "{setup.role}" LOGIN NOSUPERUSER NOBYPASSRLS')


async def grant_app_role(setup: Setup) -> None:
    """The privileges README asks for: SELECT/INSERT/UPDATE/DELETE on the tables."""
    if setup.role:
        for sql in (
            f'GRANT USAGE ON SCHEMA public TO "{setup.role}"',
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public "
            f'TO "{setup.role}"',
            f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "{setup.role}"',
        ):
            await _pg(sql, setup.database)


async def drop_everything(setup: Setup) -> None:
    if setup.database:
        await _pg(f'DROP DATABASE IF EXISTS "{setup.database}" WITH (FORCE)')
    if setup.role:
        await _pg(f'DROP ROLE IF EXISTS "{setup.role}"')


def start_server(setup: Setup, folder: Path, secret: str, profile: Path | None) -> int:
    port = free_port()
    env = clean_env(
        TELEMETRA_DATABASE_URL=setup.app_url,
        TELEMETRA_SECRET_KEY=secret,
        TELEMETRA_DATA_DIR=str(folder / "data"),
        TELEMETRA_RATE_LIMIT_DEVICE_PER_S="0",
        TELEMETRA_RATE_LIMIT_USER_PER_S="0",
    )
    log = folder / "serve.log"
    profiling = ["-m", "cProfile", "-o", str(profile.absolute())] if profile else []
    with log.open("wb") as out:
        setup.server = subprocess.Popen(
            [sys.executable, *profiling, "-m", "telemetra.cli", "serve", "--host", "127.0.0.1",
             "--port", str(port)],
            env=env, cwd=folder, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if setup.server.poll() is not None:
            break
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return port
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"telemetra serve did not start:\n{log.read_text()[-3000:]}")


# --- measuring ----------------------------------------------------------------------------------


class Watch:
    """Server CPU, CPU of the database's backends and of this process, server peak RSS.

    The peak RSS of a phase is the kernel's high-water mark (VmHWM), reset at the start of the
    phase through ``/proc/PID/clear_refs``; where that cannot be reset, RSS sampled every 50 ms.
    """

    def __init__(self, server_pid: int, database: str) -> None:
        self.server = psutil.Process(server_pid)
        self.me = psutil.Process()
        self.database = database
        self.overall_mb = peak_rss_mb(server_pid)
        self.sampled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.sampled = max(self.sampled, self.server.memory_info().rss)
            except psutil.Error:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _backends(self) -> dict[int, float]:
        found = {}
        for proc in psutil.process_iter(["name", "cmdline"]):
            cmd = proc.info["cmdline"] or []
            if proc.info["name"] == "postgres" and cmd and f" {self.database} " in cmd[0]:
                try:
                    times = proc.cpu_times()
                    found[proc.pid] = times.user + times.system
                except psutil.Error:
                    pass
        return found

    def _cpu(self) -> dict[str, Any]:
        server, me = self.server.cpu_times(), self.me.cpu_times()
        return {
            "t": time.monotonic(),
            "server": server.user + server.system,
            "me": me.user + me.system,
            "pg": self._backends(),
        }

    def snapshot(self) -> dict[str, Any]:
        """The start of a phase."""
        self.overall_mb = max(self.overall_mb, peak_rss_mb(self.server.pid))
        try:
            Path(f"/proc/{self.server.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
            reset = True
        except OSError:
            reset = False
        self.sampled = self.server.memory_info().rss
        return self._cpu() | {"reset": reset}

    def since(self, before: dict[str, Any]) -> dict[str, float]:
        now = self._cpu()
        hwm = peak_rss_mb(self.server.pid)
        peak = hwm if before["reset"] else max(self.sampled / 2**20, hwm)
        self.overall_mb = max(self.overall_mb, hwm)
        seconds = now["t"] - before["t"]
        pg = sum(t - before["pg"].get(pid, 0.0) for pid, t in now["pg"].items())
        return {
            "server_cpu_pct": 100 * (now["server"] - before["server"]) / seconds,
            "pg_cpu_pct": 100 * pg / seconds,
            "client_cpu_pct": 100 * (now["me"] - before["me"]) / seconds,
            "server_rss_peak_mb": peak,
        }


class RequestFailed(Exception):
    pass


Units = dict[str, float]
Call = Callable[[int], Awaitable[Units]]


@dataclass
class Phase:
    name: str
    label: str
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    units: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)
    first_error: str | None = None

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        out: dict[str, Any] = {
            "label": self.label,
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "requests_per_s": self.requests / self.seconds if self.seconds else 0.0,
            "p50_ms": percentile(lat, 0.50),
            "p95_ms": percentile(lat, 0.95),
            "p99_ms": percentile(lat, 0.99),
            "max_ms": lat[-1] if lat else float("nan"),
        }
        for unit, total in self.units.items():
            out[unit] = total
            out[f"{unit}_per_s"] = total / self.seconds if self.seconds else 0.0
        return out | self.notes | self.resources | {"first_error": self.first_error}


async def drive(
    phase: Phase,
    call: Call,
    watch: Watch,
    *,
    clients: int,
    seconds: float,
    max_requests: int,
    warmup: int = 0,
    probe: Callable[[], Awaitable[dict[str, float]]] | None = None,
) -> Phase:
    """``clients`` concurrent loops calling ``call(i)`` until ``seconds`` or ``max_requests``."""
    for i in range(warmup):
        with contextlib.suppress(RequestFailed):
            await call(-1 - i)
    counter = itertools.count()
    counted = await probe() if probe else {}
    before = watch.snapshot()
    started = time.perf_counter()
    deadline = started + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            i = next(counter)
            if i >= max_requests:
                return
            t0 = time.perf_counter()
            try:
                units = await call(i)
            except (RequestFailed, httpx.HTTPError) as error:
                phase.errors += 1
                phase.first_error = phase.first_error or f"{type(error).__name__}: {error}"[:300]
                await asyncio.sleep(0.01)
                continue
            phase.latencies_ms.append((time.perf_counter() - t0) * 1000)
            phase.requests += 1
            for unit, n in units.items():
                phase.units[unit] = phase.units.get(unit, 0.0) + n

    await asyncio.gather(*(client() for _ in range(clients)))
    phase.seconds = time.perf_counter() - started
    phase.resources = watch.since(before)
    if probe:
        phase.resources |= server_view(counted, await probe())
    return phase


def checked(response: httpx.Response, status: int = 200) -> Any:
    if response.status_code != status:
        raise RequestFailed(f"{response.request.url.path}: {response.status_code} "
                            f"{response.text[:200]}")  # fmt: skip
    return orjson.loads(response.content) if response.content else None


SCRAPED = (
    "telemetra_http_request_seconds_sum",
    "telemetra_http_request_seconds_count",
    "telemetra_ingest_batch_commit_seconds_sum",
    "telemetra_ingest_batch_commit_seconds_count",
    "telemetra_ingest_messages_total",
)


async def server_metrics(client: httpx.AsyncClient) -> dict[str, float]:
    """The server's own Prometheus counters (its view of request time; ingest batches)."""
    totals = dict.fromkeys(SCRAPED, 0.0)
    for line in (await client.get("/metrics")).text.splitlines():
        key, _, value = line.rpartition(" ")
        name = key.split("{", 1)[0]
        if name in totals and 'route="/metrics"' not in key:
            totals[name] += float(value)
    return totals


def server_view(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    d = {k: after[k] - before[k] for k in SCRAPED}
    out = {}
    if d["telemetra_http_request_seconds_count"]:
        out["server_mean_ms"] = (
            1000
            * d["telemetra_http_request_seconds_sum"]
            / d["telemetra_http_request_seconds_count"]
        )
    batches = d["telemetra_ingest_batch_commit_seconds_count"]
    if batches:
        out["ingest_batches"] = batches
        out["messages_per_batch"] = d["telemetra_ingest_messages_total"] / batches
        commit_s = d["telemetra_ingest_batch_commit_seconds_sum"]
        out["batch_commit_mean_ms"] = 1000 * commit_s / batches
    return out


# --- setup through the API and seeding ----------------------------------------------------------


@dataclass
class Fleet:
    tenant_id: int
    devices: list[tuple[int, str, str]]  # (id, uid, token)
    owner: str
    password: str
    bearer: dict[str, str]


async def login(client: httpx.AsyncClient, username: str, password: str) -> str:
    body = checked(
        await client.post(f"{API}/auth/token", data={"username": username, "password": password})
    )
    return str(body["access_token"])


async def make_fleet(
    client: httpx.AsyncClient, setup: Setup, password: str, n_devices: int
) -> Fleet:
    """As the owner (made by the CLI): the devices, through the API (tokens shown once)."""
    owner = "bench-owner"
    bearer = {"Authorization": f"Bearer {await login(client, owner, password)}"}
    tokens = {}
    for i in range(n_devices):
        uid = f"bench-{i:04d}"
        body = {"uid": uid, "type": "climate", "timezone": "Europe/Berlin"}
        created = checked(await client.post(f"{API}/devices", json=body, headers=bearer), 201)
        tokens[uid] = created["token"]
    conn = await asyncpg.connect(setup.admin_url)
    try:
        rows = await conn.fetch(
            "SELECT d.id, d.uid, d.tenant_id FROM devices d JOIN tenants t ON t.id = d.tenant_id "
            "WHERE t.name = 'bench' ORDER BY d.uid"
        )
    finally:
        await conn.close()
    devices = [(int(r["id"]), str(r["uid"]), tokens[r["uid"]]) for r in rows]
    return Fleet(int(rows[0]["tenant_id"]), devices, owner, password, bearer)


async def admin_check(client: httpx.AsyncClient, password: str) -> str:
    """Whether a platform admin (scope '*') can list devices: the RLS policies' cast of the
    scope to bigint fails for '*' as an ordinary role (see the README benchmark notes)."""
    admin = {"Authorization": f"Bearer {await login(client, 'bench-admin', password)}"}
    started = time.perf_counter()
    response = await client.get(f"{API}/devices", params={"limit": 1}, headers=admin)
    if response.status_code == 200:
        return "ok"
    return f"HTTP {response.status_code} after {time.perf_counter() - started:.1f} s"


def series(
    tenant_id: int, device_id: int, metric_id: int, which: int, start: int, stop: int, step: int
) -> list[tuple[Any, ...]]:
    """One series as writer rows (the ``Row`` column order), a daily cycle plus noise."""
    rnd = random.Random(device_id * 31 + which)
    base, amplitude, noise = ((20.0, 5.0, 0.3), (55.0, 15.0, 2.0), (1013.0, 8.0, 0.5))[which]
    phase = rnd.random() * 2 * math.pi
    day = 2 * math.pi / DAY_US
    return [
        (tenant_id, device_id, metric_id, ts,
         round(base + amplitude * math.sin(ts * day + phase) + rnd.gauss(0, noise), 2),
         None, ts + 1_500_000, 0, None)
        for ts in range(start, stop, step)
    ]  # fmt: skip


async def seed(
    setup: Setup, fleet: Fleet, start: int, stop: int, step: int, writers: int, chunk: int
) -> dict[str, float]:
    """History through ``write_readings``: the writer the ingest pipeline and importer use."""
    from telemetra.store.catalog import MetricIds
    from telemetra.store.database import create_engine
    from telemetra.store.write import write_readings

    engine = create_engine(setup.admin_url)
    try:
        ids = await MetricIds().resolve(engine, METRICS)
        per_series = len(range(start, stop, step))
        span = chunk * step  # each job: ``chunk`` readings of one series
        jobs = [
            (device_id, which, t, min(stop, t + span))
            for device_id, _, _ in fleet.devices
            for which in range(len(METRICS))
            for t in range(start, stop, span)
        ]
        queue = iter(jobs)
        total = len(fleet.devices) * len(METRICS) * per_series
        written = 0
        started = time.perf_counter()
        last_report = started

        async def writer() -> None:
            nonlocal written, last_report
            for device_id, which, t0, t1 in queue:
                rows = series(fleet.tenant_id, device_id, ids[METRICS[which]], which, t0, t1, step)
                async with engine.begin() as conn:
                    result = await write_readings(conn, rows)
                written += result.inserted
                now = time.perf_counter()
                if now - last_report > 10:
                    last_report = now
                    print(f"  … {written:,} of {total:,} rows ({written / (now - started):,.0f} "
                          "rows/s)", flush=True)  # fmt: skip

        await asyncio.gather(*(writer() for _ in range(writers)))
        seconds = time.perf_counter() - started
    finally:
        await engine.dispose()
    conn = await asyncpg.connect(setup.admin_url)
    try:
        stored = int(await conn.fetchval("SELECT count(*) FROM readings"))
        r1m = int(await conn.fetchval("SELECT count(*) FROM rollup_1m"))
        r1h = int(await conn.fetchval("SELECT count(*) FROM rollup_1h"))
        t0 = time.perf_counter()
        # Steady state for the measurements: statistics, visibility map, nothing left for
        # autovacuum to do while the requests run (which it would otherwise, after 2.5M inserts).
        await conn.execute("VACUUM (ANALYZE) readings, rollup_1m, rollup_1h, latest")
        await conn.execute("CHECKPOINT")
        vacuum = time.perf_counter() - t0
        size = int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()
    if stored != total:
        raise RuntimeError(f"seeded {stored} rows, expected {total}")
    return {
        "rows": stored,
        "seconds": seconds,
        "rows_per_s": stored / seconds,
        "rollup_1m_rows": r1m,
        "rollup_1h_rows": r1h,
        "writers": writers,
        "rows_per_transaction": chunk,
        "vacuum_analyze_checkpoint_s": vacuum,
        "database_mb": size / 2**20,
    }


# --- the phases ---------------------------------------------------------------------------------


class Clock:
    """Unique, increasing event times (µs) per device, never ahead of the wall clock."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def next(self, uid: str) -> int:
        ts = max(self.last.get(uid, 0) + 1, time.time_ns() // 1000)
        self.last[uid] = ts
        return ts


def reading_values(rnd: random.Random) -> dict[str, float]:
    return {
        "temperature": round(rnd.uniform(15, 25), 2),
        "humidity": round(rnd.uniform(30, 70), 1),
        "pressure": round(rnd.uniform(990, 1030), 1),
        "co2": float(rnd.randint(400, 1200)),
        "battery": round(rnd.uniform(20, 100), 1),
    }


async def measure(client: httpx.AsyncClient, fleet: Fleet, watch: Watch, args: Any) -> list[Phase]:
    devices = fleet.devices
    n = len(devices)
    auth = fleet.bearer
    clock = Clock()
    rnd = random.Random(7)
    metric_q = "&".join(f"metric={m}" for m in METRICS)
    phases: list[Phase] = []
    secs, cap, clients = args.seconds, args.max_requests, args.clients

    def uid(i: int) -> str:
        return devices[i % n][1]

    async def run(name: str, label: str, call: Call, **kw: Any) -> Phase:
        phase = Phase(name, label)
        if name not in args.phases:
            return phase
        print(f"  {label} …", flush=True)
        options = {
            "clients": clients, "seconds": secs, "max_requests": cap,
            "probe": lambda: server_metrics(client),
        } | kw  # fmt: skip
        await drive(phase, call, watch, **options)
        phases.append(phase)
        return phase

    # (0) the floor: no auth, no database; then a bearer token and the account lookup
    async def health(i: int) -> Units:
        checked(await client.get("/health"))
        return {}

    async def me(i: int) -> Units:
        checked(await client.get(f"{API}/auth/me", headers=auth))
        return {}

    await run("health", "GET /health (floor)", health, warmup=clients)
    await run("me", "GET auth/me (token + 1 query)", me, warmup=clients)

    # (b) raw history: the first page of 1000 of the last 24 h
    async def history(i: int) -> Units:
        r = await client.get(
            f"{API}/devices/{uid(i)}/telemetry", params={"from": "-24h", "limit": 1000},
            headers=auth,
        )  # fmt: skip
        items = len(checked(r)["items"])
        if not items:
            raise RequestFailed("an empty history page")
        return {"rows": items}

    await run("history", "GET telemetry, 1000 of 24h", history, warmup=clients)

    # (c) aggregates over 30 days
    sources: dict[str, set[str]] = {}

    def aggregate(name: str, query: str) -> Call:
        async def call(i: int) -> Units:
            r = await client.get(
                f"{API}/devices/{uid(i)}/aggregate?{metric_q}&from=-30d&{query}", headers=auth
            )
            body = checked(r)
            sources.setdefault(name, set()).add(f"{body['bucket']} from {body['source']}")
            return {"points": sum(len(s["points"]) for s in body["series"])}

        return call

    for name, label, query in (
        ("aggregate_auto", "GET aggregate 30d auto/500", "bucket=auto&max_points=500"),
        ("aggregate_1d_tz", "GET aggregate 30d 1d Berlin", "bucket=1d&tz=Europe/Berlin"),
    ):
        phase = await run(name, label, aggregate(name, query), warmup=clients)
        phase.notes["served"] = sorted(sources.get(name, ()))
        phase.notes["metrics"] = len(METRICS)

    # (d) latest of every device
    async def latest(i: int) -> Units:
        items = len(checked(await client.get(f"{API}/telemetry/latest", headers=auth))["items"])
        if items < n * len(METRICS):
            raise RequestFailed(f"latest: {items} values, expected {n * len(METRICS)}")
        return {"values": items}

    await run("latest", f"GET telemetry/latest ({n} dev)", latest, warmup=clients)

    # (e) CSV export of 30 days, one stream at a time
    first_bytes: list[float] = []

    async def export(i: int) -> Units:
        t0 = time.perf_counter()
        size = lines = 0
        url = f"{API}/devices/{uid(i)}/export"
        params = {"format": "csv", "from": "-30d"}
        async with client.stream("GET", url, params=params, headers=auth) as r:
            if r.status_code != 200:
                await r.aread()
                checked(r)
            async for chunk in r.aiter_raw():
                if not size:
                    first_bytes.append((time.perf_counter() - t0) * 1000)
                size += len(chunk)
                lines += chunk.count(b"\n")
        return {"bytes": size, "rows": lines - 1}

    phase = await run(
        "export_csv", "GET export csv 30d", export, clients=1, seconds=args.export_seconds,
        max_requests=args.exports,
    )  # fmt: skip
    phase.notes["first_byte_p50_ms"] = percentile(sorted(first_bytes), 0.5)

    # (a) device ingest, through the same pipeline as MQTT
    rejected = {"batch": 0, "single": 0}

    async def ingest_batch(i: int) -> Units:
        device = devices[i % n]
        body = [
            {"ts": clock.next(device[1]), "values": reading_values(rnd)} for _ in range(args.batch)
        ]
        r = await client.post(
            f"{API}/ingest/batch", content=orjson.dumps(body),
            headers={"X-API-Key": device[2], "Content-Type": "application/json"},
        )  # fmt: skip
        results = checked(r)["results"]
        accepted = sum(x["accepted"] for x in results)
        rejected["batch"] += sum(len(x["rejected"]) for x in results)
        return {"readings": accepted, "messages": len(results)}

    phase = await run(
        "ingest_batch", f"POST ingest/batch {args.batch}x5", ingest_batch, warmup=clients
    )
    phase.notes["rejected"] = rejected["batch"]

    async def ingest_one(i: int) -> Units:
        device = devices[i % n]
        body = {"ts": clock.next(device[1]), "values": reading_values(rnd)}
        r = await client.post(
            f"{API}/ingest", content=orjson.dumps(body),
            headers={"X-API-Key": device[2], "Content-Type": "application/json"},
        )  # fmt: skip
        result = checked(r)
        rejected["single"] += len(result["rejected"])
        return {"readings": result["accepted"], "messages": 1}

    phase = await run(
        "ingest_single", "POST ingest 1x5", ingest_one, clients=args.ingest_clients,
        warmup=args.ingest_clients,
    )  # fmt: skip
    phase.notes["rejected"] = rejected["single"]
    phase.notes["clients"] = args.ingest_clients

    # (f) login: argon2 on purpose (~100 ms of CPU), in a worker thread
    async def log_in(i: int) -> Units:
        await login(client, fleet.owner, fleet.password)
        return {}

    await run(
        "login", "POST auth/token (argon2)", log_in, clients=args.login_clients,
        max_requests=args.logins, warmup=1,
    )  # fmt: skip
    return phases


# --- report -------------------------------------------------------------------------------------


def throughput(name: str, s: dict[str, Any]) -> str:
    if not s["requests"]:
        return "—"
    if name.startswith("ingest"):
        text = f"{s['readings_per_s']:,.0f} readings/s ({s['messages_per_s']:,.0f} msg/s)"
        if s.get("ingest_batches"):
            text += (
                f"; {s['messages_per_batch']:,.1f} msg/commit, commit "
                f"{s['batch_commit_mean_ms']:.1f} ms"
            )
        return text
    if name == "history":
        return f"{s['rows_per_s']:,.0f} rows/s ({s['rows'] / s['requests']:,.0f} rows/page)"
    if name.startswith("aggregate"):
        return f"{s['points'] / max(1, s['requests']):,.0f} points/req; {', '.join(s['served'])}"
    if name == "latest":
        return f"{s['values'] / max(1, s['requests']):,.0f} values/req"
    if name == "export_csv":
        rows, size = s["rows"] / max(1, s["requests"]), s["bytes"] / max(1, s["requests"])
        return (
            f"{s['bytes_per_s'] / 1e6:,.2f} MB/s, {s['rows_per_s']:,.0f} rows/s "
            f"({rows:,.0f} rows, {size / 1e6:.1f} MB each; first byte "
            f"{s['first_byte_p50_ms']:.0f} ms)"
        )
    return ""


ORDER = (
    "health", "me", "ingest_batch", "ingest_single", "history", "aggregate_auto",
    "aggregate_1d_tz", "latest", "export_csv", "login",
)  # fmt: skip


def report(results: dict[str, Any]) -> None:
    cfg, seed_ = results["config"], results["seed"]
    print()
    print(
        f"Telemetra HTTP API — PostgreSQL {results['postgres']}, {cfg['devices']} devices, "
        f"{seed_['rows']:,} seeded readings ({cfg['days']} d x {cfg['step_s']:g} s x "
        f"{len(METRICS)} metrics), {cfg['clients']} clients, server as "
        f"{'superuser' if cfg['superuser'] else 'ordinary role (RLS applies)'}"
    )
    print(
        f"seeding: {seed_['rows']:,} rows in {seed_['seconds']:.1f} s = "
        f"{seed_['rows_per_s']:,.0f} rows/s (write_readings: COPY + 1m/1h rollups + latest; "
        f"{seed_['writers']} writers, {seed_['rows_per_transaction']:,} rows/transaction); "
        f"VACUUM ANALYZE + CHECKPOINT {seed_['vacuum_analyze_checkpoint_s']:.1f} s; "
        f"database {seed_['database_mb']:,.0f} MB"
    )
    print()
    head = (
        f"{'endpoint':<29} {'reqs':>6} {'err':>4} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'app ms':>7} {'srv CPU':>7} {'pg CPU':>6} {'RSS MB':>6}  throughput"
    )
    print(head)
    print("-" * len(head))
    for name in ORDER:
        s = results["phases"].get(name)
        if s is None:
            continue
        print(
            f"{s['label']:<29} {s['requests']:>6} {s['errors']:>4} {s['requests_per_s']:>8,.1f} "
            f"{s['p50_ms']:>8.1f} {s['p95_ms']:>8.1f} {s['p99_ms']:>8.1f} "
            f"{s.get('server_mean_ms', math.nan):>7.1f} "
            f"{s['server_cpu_pct']:>6.0f}% {s['pg_cpu_pct']:>5.0f}% "
            f"{s['server_rss_peak_mb']:>6.0f}  {throughput(name, s)}"
        )
    print()
    print(
        f"server peak RSS over the run: {results['server_peak_rss_mb']:.0f} MB (per phase: VmHWM). "
        "Latencies as the client sees them; app ms = the server's own mean (its Prometheus "
        "histogram: routing to response start, so an export's is its first byte).\n"
        f"CPU in % of one core ({results['config']['cpus']} cores here): srv = the uvicorn "
        "process, pg = its PostgreSQL backends; the load generator shares the machine."
    )
    if results["admin_list_devices"] != "ok":
        why = "" if cfg["superuser"] else " (RLS: the admin scope '*' is cast to bigint)"
        print(f"note: a platform admin's GET /api/v1/devices: {results['admin_list_devices']}{why}")
    for name in ORDER:
        s = results["phases"].get(name)
        if s and s["errors"]:
            print(f"{name}: {s['errors']} errors, first: {s['first_error']}")
        if s and s.get("rejected"):
            print(f"{name}: {s['rejected']} rejected entries")


# --- main ---------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, setup: Setup, folder: Path) -> dict[str, Any]:
    step = round(60_000_000 / args.scale)
    now = time.time_ns() // 1000
    stop = now - now % MINUTE_US  # history up to this minute; live ingest lands after it
    start = stop - args.days * DAY_US
    total = args.devices * len(METRICS) * len(range(start, stop, step))
    if total > MAX_ROWS:
        raise SystemExit(f"{total:,} rows is more than this benchmark allows ({MAX_ROWS:,})")

    await create_database(setup, args.superuser)
    print(f"database {setup.database}: migrate; tenant, admin and owner (CLI) …", flush=True)
    cli_env = clean_env(TELEMETRA_DATABASE_URL=setup.admin_url, TELEMETRA_DATA_DIR=str(folder))
    telemetra(["migrate"], cli_env, folder)
    await grant_app_role(setup)
    password = secrets.token_urlsafe(18)
    telemetra(["tenant", "create", "bench"], cli_env, folder)
    users = (("bench-admin", "admin", "default"), ("bench-owner", "owner", "bench"))
    for user, role, tenant in users:
        telemetra(
            ["user", "create", user, "--role", role, "--tenant", tenant, "--password-stdin"],
            cli_env, folder, stdin=password + "\n",
        )  # fmt: skip
    port = start_server(setup, folder, secrets.token_urlsafe(36), args.server_profile)
    assert setup.server is not None
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=120, limits=limits
    ) as client:
        print(f"server pid {setup.server.pid} on 127.0.0.1:{port}: "
              f"{args.devices} devices (API, as the owner) …", flush=True)  # fmt: skip
        fleet = await make_fleet(client, setup, password, args.devices)
        admin = await admin_check(client, password)
        print(f"seeding {total:,} readings ({args.days} d, every {step / 1e6:g} s, "
              f"{len(METRICS)} metrics, {args.devices} devices) …", flush=True)  # fmt: skip
        seeded = await seed(setup, fleet, start, stop, step, args.writers, args.chunk)
        print(f"  {seeded['rows']:,} rows in {seeded['seconds']:.1f} s "
              f"({seeded['rows_per_s']:,.0f} rows/s)", flush=True)  # fmt: skip
        print("measuring …", flush=True)
        watch = Watch(setup.server.pid, setup.database)
        try:
            phases = await measure(client, fleet, watch, args)
        finally:
            watch.close()
    conn = await asyncpg.connect(setup.admin_url)
    try:
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    config = {
        "devices": args.devices, "days": args.days, "step_s": step / 1e6,
        "clients": args.clients, "ingest_clients": args.ingest_clients,
        "batch_messages": args.batch, "values_per_message": len(INGEST_METRICS),
        "seconds_per_phase": args.seconds, "superuser": args.superuser,
        "quick": args.quick, "cpus": os.cpu_count(),
    }  # fmt: skip
    return {
        "postgres": str(version).split()[0],
        "config": config,
        "seed": seeded,
        "admin_list_devices": admin,
        "phases": {p.name: p.summary() for p in phases},
        "server_peak_rss_mb": max(watch.overall_mb, peak_rss_mb(setup.server.pid)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--days", type=int, default=30, help="days of seeded history")
    parser.add_argument(
        "--scale", type=float, help="readings per minute per series (default 1; --quick 0.2)"
    )
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--ingest-clients", type=int, default=8, help="for POST /ingest")
    parser.add_argument("--login-clients", type=int, default=2)
    parser.add_argument("--seconds", type=float, help="per phase (default 8; --quick 3)")
    parser.add_argument("--max-requests", type=int, default=50_000, help="per phase at most")
    parser.add_argument("--batch", type=int, default=100, help="messages per ingest batch")
    parser.add_argument("--exports", type=int, help="CSV exports at most (default 8; quick 3)")
    parser.add_argument("--export-seconds", type=float, help="default 20; --quick 6")
    parser.add_argument("--logins", type=int, help="logins at most (default 30; --quick 10)")
    parser.add_argument("--writers", type=int, default=2, help="concurrent seeding transactions")
    parser.add_argument("--chunk", type=int, default=20_000, help="seeded rows per transaction")
    parser.add_argument("--superuser", action="store_true", help="serve as the superuser (no RLS)")
    parser.add_argument("--quick", action="store_true", help="~1 minute: less data, shorter")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument(
        "--phases", default=",".join(ORDER), help=f"comma-separated, of: {', '.join(ORDER)}"
    )
    parser.add_argument("--server-profile", type=Path, help="cProfile the server into this file")
    args = parser.parse_args()
    args.phases = set(args.phases.split(","))
    if args.phases - set(ORDER):
        parser.error(f"unknown phases: {', '.join(sorted(args.phases - set(ORDER)))}")
    quick = args.quick
    for name, normal, short in (
        ("scale", 1.0, 0.2), ("seconds", 8.0, 3.0), ("exports", 8, 3),
        ("export_seconds", 20.0, 6.0), ("logins", 30, 10),
    ):  # fmt: skip
        if getattr(args, name) is None:
            setattr(args, name, short if quick else normal)

    setup = Setup()
    with tempfile.TemporaryDirectory(prefix="telemetra-bench-api-") as tmp:
        try:
            results = asyncio.run(bench(args, setup, Path(tmp)))
        except BaseException:
            log = Path(tmp) / "serve.log"
            if log.exists():
                print(f"--- end of the server's log:\n{log.read_text()[-4000:]}", file=sys.stderr)
            raise
        finally:
            if setup.server is not None:  # uvicorn re-raises the signal; cProfile needs SIGINT
                end(setup.server, signal.SIGINT if args.server_profile else signal.SIGTERM)
            asyncio.run(drop_everything(setup))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float) + "\n")
    report(results)
    if args.json:
        print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
