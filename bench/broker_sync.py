"""How long keeping Mosquitto in step takes for a fleet: one sync of passwd, acl and the CRL.

    .venv/bin/python bench/broker_sync.py [--devices 1000,10000,50000]

Writes a broker-config folder in a temporary directory, starts Mosquitto on it (a free port on
127.0.0.1), then times ``sync_accounts`` (render, validate with a throwaway Mosquitto, replace,
SIGHUP and wait until Mosquitto took it) with 1 % of the fleet disabled (denied in the ACL,
their certificates in the CRL). Stops the
broker it started and removes the folder.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from telemetra.broker.mosquitto import sync_accounts, write_config
from telemetra.certs import DeviceCA
from telemetra.credentials import mosquitto_hash


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="1000,10000,50000")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="telemetra-sync-bench-"))
    ca = DeviceCA.load_or_create(base / "ca")
    port = free_port()
    out = base / "broker"
    write_config(out, [], ca, tls_port=port, ingest_password=secrets.token_hex(8), user="root")
    broker = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(out / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not (out / "run" / "mosquitto.pid").exists():
            if time.monotonic() > deadline:
                raise SystemExit("Mosquitto did not start")
            time.sleep(0.05)
        one_hash = mosquitto_hash("token")  # the hash's cost is paid at device creation
        print(f"{'devices':>8} {'sync s':>8} {'crl s':>7} {'passwd MB':>10} {'acl MB':>7}")
        for n in (int(x) for x in args.devices.split(",")):
            accounts = [(f"device-{i:07d}", one_hash) for i in range(n)]
            started = time.perf_counter()
            crl = ca.revocation_list(format(i + 1, "x") for i in range(n // 100))
            crl_s = time.perf_counter() - started
            blocked = [f"device-{i:07d}" for i in range(0, n, 100)]
            result = sync_accounts(out, accounts, blocked=blocked, crl=crl)
            took = time.perf_counter() - started - crl_s
            assert result.reloaded, result.reload
            size = lambda name: (out / name).stat().st_size / 1e6  # noqa: E731
            print(f"{n:>8} {took:>8.2f} {crl_s:>7.2f} {size('passwd'):>10.1f} {size('acl'):>7.1f}")
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
