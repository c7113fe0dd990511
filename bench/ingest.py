"""Ingest benchmark: simulator → real Mosquitto → `telemetra ingest` → PostgreSQL / SQLite.

Not a test. Prints, per database:
- sustained throughput of ONE ingest process: the broker is preloaded with a backlog while the
  worker is away (so the publisher can never be the bottleneck), then the worker drains it;
- publish → committed latency (the ack-topic message the worker sends after commit) at a fixed
  rate, p50 / p99;
- the ingest process's peak RSS;
- a naive baseline (one INSERT + commit per message, as a simple hand-written ingester does),
  draining the same kind of backlog, so the report is a ratio.

    .venv/bin/python bench/ingest.py                 # both databases, defaults
    .venv/bin/python bench/ingest.py --db postgresql --messages 200000

Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from telemetra import sim

PG_SERVER = os.environ.get("TELEMETRA_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 5000000\nmax_queued_bytes 0\nmax_inflight_messages 0\n"
    )
    proc = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def end(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Database:
    kind: str
    url: str

    def count(self, sql: str) -> int:
        if self.kind == "sqlite":
            with sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=30) as conn:
                row = conn.execute(sql).fetchone()
        else:

            async def go() -> Any:
                conn = await asyncpg.connect(self.url)
                try:
                    return await conn.fetchrow(sql)
                finally:
                    await conn.close()

            row = asyncio.run(go())
        return int(row[0] or 0)

    def execute(self, sql: str) -> None:
        if self.kind == "sqlite":
            with sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=30) as conn:
                conn.execute(sql)
            return

        async def go() -> None:
            conn = await asyncpg.connect(self.url)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(go())

    def messages_stored(self) -> int:
        return self.count("SELECT sum(count) FROM device_quality WHERE counter = 'messages'")

    def readings_stored(self) -> int:
        return self.count("SELECT sum(count) FROM device_quality WHERE counter = 'accepted'")


def make_database(kind: str, folder: Path) -> Database:
    if kind == "sqlite":
        return Database(kind, f"sqlite:///{folder / 'bench.db'}")
    name = f"telemetra_bench_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(PG_SERVER + "/postgres")
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()

    asyncio.run(create())
    url = f"{PG_SERVER}/{name}"
    env = {**os.environ, "TELEMETRA_DATABASE_URL": url}
    subprocess.run([sys.executable, "-m", "telemetra.cli", "migrate"], env=env, check=True)
    return Database(kind, url)


def drop_database(db: Database) -> None:
    if db.kind != "postgresql":
        return

    async def drop() -> None:
        conn = await asyncpg.connect(PG_SERVER + "/postgres")
        await conn.execute(f'DROP DATABASE IF EXISTS "{db.url.rsplit("/", 1)[1]}" WITH (FORCE)')
        await conn.close()

    asyncio.run(drop())


def start_ingest(db: Database, port: int, log: Path, client_id: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TELEMETRA_DATABASE_URL": db.url,
        "TELEMETRA_MQTT_URL": f"mqtt://127.0.0.1:{port}",
        "TELEMETRA_AUTO_REGISTER": "1",
        "TELEMETRA_MQTT_CLIENT_ID": client_id,
        "TELEMETRA_LOG_FORMAT": "json",
    }
    offset = log.stat().st_size if log.exists() else 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "telemetra.cli", "ingest"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while b"connected to broker" not in log.read_bytes()[offset:]:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ingest did not start: {log.read_text()[-2000:]}")
        time.sleep(0.02)
    return proc


def wait_until(check: Any, want: int, timeout: float, every: float = 0.2) -> float:
    """Poll ``check()`` until it reaches ``want``; return the time it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check() >= want:
            return time.monotonic()
        time.sleep(every)
    raise TimeoutError(f"only {check()} of {want} after {timeout:.0f} s")


def preload(
    port: int, messages: int, devices: int, metrics: int, publishers: int, tag: str
) -> None:
    report = sim.run(
        f"mqtt://127.0.0.1:{port}",
        devices=devices,
        count=messages,
        qos=1,
        processes=publishers,
        metrics_per_message=metrics,
        realtime_ts=True,
        prefix=tag,
    )
    if report.sent != messages or report.unacked or report.failed:
        raise RuntimeError(f"preload incomplete: {report}")


def drain(db: Database, port: int, args: argparse.Namespace, log: Path) -> dict[str, float]:
    """Sustained throughput of one ingest process draining a backlog."""
    client_id = f"bench-{uuid.uuid4().hex[:6]}"
    worker = start_ingest(db, port, log, client_id)  # creates the persistent session
    end(worker)
    preload(port, args.messages, args.devices, args.metrics, args.publishers, "drain")
    worker = start_ingest(db, port, log, client_id)
    started = time.monotonic()
    cpu_before = cpu_seconds(worker.pid)
    spy = None
    if args.profile:  # py-spy (pip install py-spy) samples the worker while it drains
        spy = subprocess.Popen(
            ["py-spy", "record", "--pid", str(worker.pid), "--format", "raw", "--rate", "200",
             "--gil", "-o", args.profile], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    done = wait_until(db.messages_stored, args.messages, timeout=600)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    rss = peak_rss_mb(worker.pid)
    cpu = cpu_seconds(worker.pid) - cpu_before
    readings = db.readings_stored()
    seconds = done - started
    return {
        "messages_per_s": args.messages / seconds,
        "readings_per_s": readings / seconds,
        "readings": readings,
        "seconds": seconds,
        "peak_rss_mb": rss,
        "ingest_cpu_pct": 100 * cpu / (done - started),
        # CPU time per reading: far steadier than throughput on a shared, busy machine.
        "ingest_cpu_us_per_reading": 1e6 * cpu / max(1, readings),
        "_worker": worker,  # type: ignore[dict-item]
    }


class AckWatch:
    """Publish time (the payload's ts) and ack arrival time per event id.

    Observed by a ``mosquitto_sub`` process (C, light) that stamps each message on arrival,
    so the observer itself does not compete with the ingest worker for a Python core.
    """

    def __init__(self, port: int, folder: Path) -> None:
        self.out = folder / "watch.txt"
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-p", str(port), "-t", "devices/+/acks", "-t",
             "devices/+/telemetry", "-F", "%U %t %p"],
            stdout=self.out.open("wb"), stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def latencies_ms(self) -> list[float]:
        end(self.proc)
        sent: dict[str, float] = {}
        acked: dict[str, float] = {}
        for line in self.out.read_bytes().splitlines():
            stamp, topic, payload = line.split(b" ", 2)
            body = json.loads(payload)
            if topic.endswith(b"/acks"):
                for event_id in body.get("event_ids", []):
                    acked.setdefault(event_id, float(stamp))
            elif isinstance(body, dict) and "event_id" in body:
                sent[body["event_id"]] = body["ts"] / 1000
        return sorted((acked[e] - t) * 1000 for e, t in sent.items() if e in acked)


def latency(port: int, rate: float, args: argparse.Namespace, folder: Path) -> dict[str, float]:
    """publish → committed (ack-topic message) latency at a fixed message rate.

    The simulator costs about 0.3 ms of CPU per message; on a 2-core machine that would
    measure the load generator. Here one light C publisher (``mosquitto_pub -l``, QoS1)
    per device is fed pre-shaped lines, each stamped with its publish time.
    """
    watch = AckWatch(port, folder)
    devices = min(args.devices, 40)
    publishers = [
        subprocess.Popen(
            [
                "mosquitto_pub",
                "-p",
                str(port),
                "-q",
                "1",
                "-l",
                "-t",
                f"devices/lat-{i:05d}/telemetry",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(devices)
    ]
    time.sleep(0.5)
    metrics = [f"m{j}" for j in range(args.metrics)]
    total = int(rate * args.latency_seconds)
    started = time.monotonic()
    sent = 0
    while sent < total:
        due = min(total, int((time.monotonic() - started) * rate) + 1)
        for k in range(sent, due):
            body = {
                "ts": time.time_ns() // 1_000_000,
                "event_id": f"lat-{k}",
                "values": {
                    m: round(20 + (k * (j + 1)) % 7 * 0.5, 2) for j, m in enumerate(metrics)
                },
            }
            pipe = publishers[k % devices].stdin
            assert pipe is not None
            pipe.write(json.dumps(body).encode() + b"\n")
            pipe.flush()
        sent = due
        time.sleep(0.002)
    elapsed = time.monotonic() - started
    time.sleep(3.0)  # input stays open until the acks are in: mosquitto_pub -l drops the rest
    for proc in publishers:
        assert proc.stdin is not None
        proc.stdin.close()
        end(proc)
    values = watch.latencies_ms()
    if not values:
        raise RuntimeError("no acks observed")
    return {
        "rate_msgs": sent / elapsed,
        "p50_ms": statistics.median(values),
        "p99_ms": values[int(0.99 * (len(values) - 1))],
        "acked": len(values),
        "sent": sent,
    }


def baseline(
    db: Database, port: int, args: argparse.Namespace, per_value: bool
) -> dict[str, float]:
    """The naive ingester draining a (smaller) backlog."""
    messages = max(2000, args.messages // 10)
    client_id = f"naive-{uuid.uuid4().hex[:6]}"
    cmd = [sys.executable, str(HERE / "naive_ingest.py"), db.url, str(port), client_id]
    if per_value:
        cmd.append("--per-value")
    db.execute("DROP TABLE IF EXISTS naive_readings")
    proc = subprocess.Popen([*cmd, "--setup-only"])
    proc.wait(60)
    preload(port, messages, args.devices, args.metrics, args.publishers, "naive")
    proc = subprocess.Popen(cmd)
    started = time.monotonic()
    try:
        done = wait_until(  # it stores the numeric values: metrics per message
            lambda: db.count("SELECT count(*) FROM naive_readings"),
            messages * args.metrics,
            timeout=900,
            every=0.5,
        )
    finally:
        end(proc)
    seconds = done - started
    return {
        "messages_per_s": messages / seconds,
        "readings_per_s": messages * args.metrics / seconds,
        "messages": messages,
    }


def bench(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="telemetra-bench-") as tmp:
        folder = Path(tmp)
        broker, port = start_broker(folder)
        db = make_database(kind, folder)
        worker = None
        try:
            log = folder / "ingest.log"
            print(f"[{kind}] draining a backlog of {args.messages} messages …", flush=True)
            result: dict[str, Any] = {"drain": drain(db, port, args, log)}
            worker = result["drain"].pop("_worker")
            # Half the 50k readings/s target, or half of what this database drained.
            readings_per_message = result["drain"]["readings"] / args.messages
            rate = args.rate or min(
                25_000 / readings_per_message, result["drain"]["messages_per_s"] / 2
            )
            print(
                f"[{kind}] latency at {rate:.0f} msg/s for {args.latency_seconds} s …", flush=True
            )
            result["latency"] = latency(port, rate, args, folder)
            result["drain"]["peak_rss_mb"] = peak_rss_mb(worker.pid)
            end(worker)
            worker = None
            if not args.skip_baseline:
                print(f"[{kind}] naive baselines …", flush=True)
                result["baseline"] = baseline(db, port, args, per_value=False)
                result["baseline_per_value"] = baseline(db, port, args, per_value=True)
            return result
        finally:
            if worker is not None:
                end(worker)
            end(broker)
            drop_database(db)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["postgresql", "sqlite", "both"], default="both")
    parser.add_argument("--messages", type=int, default=100_000, help="backlog size to drain")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--metrics", type=int, default=10, help="readings per message")
    parser.add_argument("--publishers", type=int, default=2, help="simulator processes")
    parser.add_argument(
        "--rate",
        type=float,
        default=0,
        help="latency phase msg/s (default: 25k readings/s or half the drain rate)",
    )
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--profile", help="write py-spy collapsed stacks of the drain here")
    args = parser.parse_args()
    kinds = ["postgresql", "sqlite"] if args.db == "both" else [args.db]
    results = {kind: bench(kind, args) for kind in kinds}
    print()
    print(
        f"{'database':<11} {'readings/s':>11} {'msgs/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'@ msg/s':>8} {'CPU µs/r':>8} {'RSS MB':>7} {'naive A r/s':>12} {'ratio':>6} "
        f"{'naive B r/s':>12} {'ratio':>6}"
    )
    nothing = {"readings_per_s": float("nan")}
    for kind, r in results.items():
        d, lat = r["drain"], r["latency"]
        a = r.get("baseline", nothing)["readings_per_s"]
        b = r.get("baseline_per_value", nothing)["readings_per_s"]
        print(
            f"{kind:<11} {d['readings_per_s']:>11,.0f} {d['messages_per_s']:>8,.0f} "
            f"{lat['p50_ms']:>7.1f} {lat['p99_ms']:>7.1f} {lat['rate_msgs']:>8,.0f} "
            f"{d['ingest_cpu_us_per_reading']:>8.1f} {d['peak_rss_mb']:>7.0f} "
            f"{a:>12,.0f} {d['readings_per_s'] / a:>6.1f} "
            f"{b:>12,.0f} {d['readings_per_s'] / b:>6.1f}"
        )
    print(
        "naive A: one INSERT of all a message's values + commit per message; "
        "naive B: one INSERT per value + commit per message"
    )
    print("\n" + json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
