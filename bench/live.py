"""Live stream benchmark: ingest → WebSocket delivery latency, and the memory of many clients.

Not a test. Starts a real `telemetra serve` (SQLite in a temporary folder, 127.0.0.1, a free
port), once with the in-process bus and once through a private `redis-server` (free port, no
persistence), and in each:

1. connects ``--idle`` idle WebSocket clients (they follow a device that never publishes) and
   ``--followers`` clients following every reading of the tenant;
2. sends HTTP ingest requests (one reading each, ``--devices`` devices, ``--rate`` requests/s in
   all, for ``--seconds``), each carrying its send time as its value's sequence number;
3. reports, per mode: latency from sending the ingest request to a follower receiving the frame
   (p50/p99/max over every follower and reading — HTTP, batch wait, commit, bus, WebSocket), the
   ingest request's own latency for comparison, frames missing, and the server's RSS before any
   client, with the idle clients, and at the end (peak).

    .venv/bin/python bench/live.py                       # ~1 min
    .venv/bin/python bench/live.py --idle 1000 --followers 10 --rate 100 --seconds 10

Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

API = "/api/v1"
SECRET = "bench-only-signing-key-7c1e9a2f5b3d8046"
PASSWORD = "bench password, long enough"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int, field: str = "VmRSS:") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    return values[int(q * (len(values) - 1))] if values else float("nan")


def end(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def child() -> None:
    """`telemetra serve` as the CLI runs it (settings from the environment), plus a bench-only
    route that publishes probe frames on the app's live bus: each carries its publish time."""
    import uvicorn
    from fastapi import FastAPI

    from telemetra.api.app import create_app
    from telemetra.config import Settings

    settings = Settings()
    app: FastAPI = create_app(settings)

    async def publish(tenant: int, n: int, rate: float, devices: int) -> dict[str, int]:
        async def run() -> None:
            start = time.perf_counter()
            for i in range(n):
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
                frame = {"type": "readings", "device": f"probe-{i % devices}",
                         "points": [{"metric": "probe", "ts": "2026-11-22T10:00:00Z",
                                     "value": time.time()}]}  # fmt: skip
                app.state.live.publish(tenant, [frame])

        app.state.probe = asyncio.create_task(run())
        return {"n": n}

    app.add_api_route("/bench/publish", publish, methods=["POST"])
    uvicorn.run(app, host="127.0.0.1", port=settings.api_port, log_config=None)


async def prepare(db_url: str, devices: int) -> list[str]:
    """Schema, a viewer and devices (their tokens), written as the CLI would."""
    from telemetra.api.auth import hash_password
    from telemetra.store.catalog import create_device, create_user, default_tenant_id
    from telemetra.store.database import open_database
    from telemetra.store.tenancy import platform_wide

    engine = await open_database(db_url)
    tokens = []
    with platform_wide():
        async with engine.begin() as conn:
            tenant = await default_tenant_id(conn)
            await create_user(conn, tenant, "bench", hash_password(PASSWORD), "viewer")
            for i in range(devices):
                tokens.append(await create_device(conn, tenant, f"bench-{i}"))
    await engine.dispose()
    return tokens


async def run_mode(args: argparse.Namespace, folder: Path, redis_url: str | None) -> dict[str, Any]:
    db = folder / f"{'redis' if redis_url else 'local'}.db"
    tokens = await prepare(f"sqlite:///{db}", args.devices)
    port = free_port()
    env = {
        **os.environ, "TELEMETRA_DATABASE_URL": f"sqlite:///{db}", "TELEMETRA_SECRET_KEY": SECRET,
        "TELEMETRA_DATA_DIR": str(folder), "TELEMETRA_API_PORT": str(port),
        "TELEMETRA_RATE_LIMIT_DEVICE_PER_S": "0", "TELEMETRA_RATE_LIMIT_USER_PER_S": "0",
        "TELEMETRA_LOG_LEVEL": "WARNING",
    }  # fmt: skip
    if redis_url:
        env["TELEMETRA_REDIS_URL"] = redis_url
    log = (folder / "serve.log").open("ab")
    server = subprocess.Popen(  # noqa: ASYNC220 - starts at once
        [sys.executable, __file__, "--child"], env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    clients: list[ClientConnection] = []
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            for _ in range(200):
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/health")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            login = await http.post(
                f"{API}/auth/token", data={"username": "bench", "password": PASSWORD}
            )
            token = login.json()["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            rss = {"start": rss_mb(server.pid)}
            ws_url = f"ws://127.0.0.1:{port}{API}/live"
            for i in range(args.idle):
                clients.append(
                    await connect(f"{ws_url}?devices=silent-{i}", additional_headers=auth)
                )
            await asyncio.sleep(1)
            rss["idle"] = rss_mb(server.pid)
            followers = [
                await connect(ws_url, additional_headers=auth, max_size=None)
                for _ in range(args.followers)
            ]
            clients += followers
            received: list[dict[int, float]] = [{} for _ in followers]
            probe_times: list[list[float]] = [[] for _ in followers]
            probing = asyncio.Event()
            gaps: list[int] = []  # frames dropped for followers too slow to keep up

            async def follow(ws: ClientConnection, got: dict[int, float], lag: list[float]) -> None:
                async for message in ws:
                    now, wall = time.perf_counter(), time.time()
                    frame = json.loads(message)
                    if frame["type"] == "gap":
                        gaps.append(int(frame["dropped"] or 0))
                    for point in frame.get("points", ()):
                        if point["metric"] == "probe":
                            lag.append(wall - point["value"])
                        elif not probing.is_set():
                            got.setdefault(int(point["value"]), now)

            readers = [
                asyncio.create_task(follow(ws, got, lag))
                for ws, got, lag in zip(followers, received, probe_times, strict=True)
            ]
            sent: dict[int, float] = {}
            answered: list[float] = []
            answered_at: dict[int, float] = {}
            interval = 1 / args.rate
            total = int(args.rate * args.seconds)
            start = time.perf_counter()

            async def one(seq: int) -> None:
                device = tokens[seq % len(tokens)]
                sent[seq] = time.perf_counter()
                reply = await http.post(
                    f"{API}/ingest", json={"level": seq}, headers={"X-API-Key": device}
                )
                answered_at[seq] = time.perf_counter()
                answered.append((answered_at[seq] - sent[seq]) * 1000)
                assert reply.status_code == 200 and reply.json()["accepted"] == 1, reply.text

            tasks = []
            for seq in range(total):
                await asyncio.sleep(max(0.0, start + seq * interval - time.perf_counter()))
                tasks.append(asyncio.create_task(one(seq)))
            await asyncio.gather(*tasks)
            await asyncio.sleep(2)  # the last frames

            # The bus alone: frames published in the server, stamped with their publish time.
            probes: list[float] = []
            probe_total = int(args.probe_rate * args.seconds)
            received_copy = [dict(got) for got in received]
            for got in received:
                got.clear()
            tenant = (await http.get(f"{API}/auth/me", headers=auth)).json()["tenant_id"]
            probing.set()
            await http.post("/bench/publish", params={"tenant": tenant, "n": probe_total,
                            "rate": args.probe_rate, "devices": args.devices})  # fmt: skip
            await asyncio.sleep(args.seconds)
            for _ in range(30):  # until the followers have everything that comes
                delivered = sum(map(len, probe_times))
                await asyncio.sleep(2)
                if sum(map(len, probe_times)) == delivered:
                    break
            for task in readers:
                task.cancel()
            for ws_probes in probe_times:
                probes += ws_probes
            probes = sorted(p * 1000 for p in probes)
            rss["end"] = rss_mb(server.pid)
            rss["peak"] = rss_mb(server.pid, "VmHWM:")
            latencies = sorted(
                (got[seq] - sent[seq]) * 1000
                for got in received_copy for seq in got if seq in sent
            )  # fmt: skip
            # What the bus and the WebSocket add: frame received − ingest answered (negative
            # when the frame overtakes the HTTP answer; both follow the same commit).
            after = sorted(
                (got[seq] - answered_at[seq]) * 1000
                for got in received_copy for seq in got if seq in answered_at
            )  # fmt: skip
            missing = sum(total - len(got) for got in received_copy)
            answered.sort()
            return {
                "mode": "redis" if redis_url else "in-process",
                "readings": total, "followers": len(followers), "idle": args.idle,
                "deliveries": len(latencies), "missing": missing,
                "latency_ms": {"p50": percentile(latencies, 0.5),
                               "p99": percentile(latencies, 0.99), "max": latencies[-1]},
                "publish_to_ws_ms": {"p50": percentile(probes, 0.5),
                                     "p99": percentile(probes, 0.99),
                                     "max": probes[-1] if probes else float("nan")},
                "probes": probe_total, "probe_deliveries": len(probes),
                "dropped_for_slow_followers": sum(gaps),
                "after_answer_ms": {"p50": percentile(after, 0.5),
                                    "p99": percentile(after, 0.99)},
                "ingest_ms": {"p50": percentile(answered, 0.5),
                              "p99": percentile(answered, 0.99)},
                "rss_mb": rss,
            }  # fmt: skip
    finally:
        for ws in clients:
            with contextlib.suppress(Exception):
                await ws.close()
        end(server)
        log.close()


def report(result: dict[str, Any]) -> None:
    lat, ing, rss = result["latency_ms"], result["ingest_ms"], result["rss_mb"]
    aft, pub = result["after_answer_ms"], result["publish_to_ws_ms"]
    print(
        f"{result['mode']:>10}: bus publish → WS p50 {pub['p50']:.1f} ms, p99 {pub['p99']:.1f} "
        f"ms, max {pub['max']:.1f} ms ({result['probe_deliveries']} deliveries of "
        f"{result['probes']} frames x {result['followers']} followers; "
        f"{result['dropped_for_slow_followers']} dropped with a gap frame)"
    )
    print(
        f"{result['mode']:>10}: {result['readings']} readings x {result['followers']} followers "
        f"(+{result['idle']} idle): ingest → WS p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, "
        f"max {lat['max']:.1f} ms; ingest request p50 {ing['p50']:.1f} ms, p99 {ing['p99']:.1f} "
        f"ms; frame after the ingest answer p50 {aft['p50']:+.1f} ms, p99 {aft['p99']:+.1f} ms; "
        f"missing {result['missing']}; serve RSS {rss['start']:.0f} MB → {rss['idle']:.0f} "
        f"MB with idle clients → {rss['end']:.0f} MB (peak {rss['peak']:.0f} MB)"
    )


async def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="telemetra-live-bench-") as tmp:
        folder = Path(tmp)
        if "local" in args.modes:
            (folder / "local").mkdir()
            results.append(await run_mode(args, folder / "local", None))
            report(results[-1])
        if "redis" in args.modes:
            exe = shutil.which("redis-server")
            if exe is None:
                sys.exit("redis-server not found: install it or run with --modes local")
            port = free_port()
            redis = subprocess.Popen(  # noqa: ASYNC220 - starts at once
                [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", tmp],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                (folder / "redis").mkdir()
                await asyncio.sleep(0.3)
                results.append(
                    await run_mode(args, folder / "redis", f"redis://127.0.0.1:{port}/0")
                )
                report(results[-1])
            finally:
                end(redis)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--idle", type=int, default=1000, help="idle WebSocket clients")
    parser.add_argument("--followers", type=int, default=10, help="clients following all")
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--rate", type=float, default=100, help="ingest requests per second")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--modes", default="local,redis", help="local, redis or both")
    parser.add_argument("--probe-rate", type=float, default=500, help="bus frames per second")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return
    results = asyncio.run(bench(args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
