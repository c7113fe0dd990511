"""The naive baseline: what a simple hand-written ingester does.

paho subscriber (QoS1, acknowledged on receipt), and per message: parse JSON, one INSERT of all
its values (or, with --per-value, one INSERT per value), commit. Used by bench/ingest.py only.

    python bench/naive_ingest.py DATABASE_URL MQTT_PORT CLIENT_ID [--per-value] [--setup-only]
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import sys
from typing import Any

import asyncpg
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS naive_readings (device TEXT, metric TEXT, ts BIGINT, "
    "value DOUBLE PRECISION, PRIMARY KEY (device, metric, ts))",
]


def rows_of(topic: str, payload: bytes) -> list[tuple[str, str, int, float]]:
    body = json.loads(payload)
    device = topic.split("/")[1]
    values = body.get("values", body)
    return [
        (device, k, int(body["ts"]), float(v))
        for k, v in values.items()
        if isinstance(v, int | float) and k not in ("ts", "event_id")
    ]


def main() -> None:
    url, port, client_id = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    setup_only = "--setup-only" in sys.argv
    per_value = "--per-value" in sys.argv
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, m: inbox.put((m.topic, m.payload))
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.subscribe("devices/+/telemetry", qos=1)
    client.loop_start()

    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30, isolation_level=None)
        for ddl in SCHEMA:
            conn.execute(ddl)

        def store(rows: list[tuple[str, str, int, float]]) -> None:
            conn.execute("BEGIN")
            if per_value:
                for row in rows:
                    conn.execute("INSERT INTO naive_readings VALUES (?, ?, ?, ?)", row)
            else:
                conn.executemany("INSERT INTO naive_readings VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
    else:
        loop = asyncio.new_event_loop()
        pg = loop.run_until_complete(asyncpg.connect(url))
        for ddl in SCHEMA:
            loop.run_until_complete(pg.execute(ddl))

        async def insert(rows: list[tuple[str, str, int, float]]) -> None:
            if per_value:
                async with pg.transaction():
                    for row in rows:
                        await pg.execute("INSERT INTO naive_readings VALUES ($1, $2, $3, $4)", *row)
                return
            values = ", ".join(
                f"(${4 * i + 1}, ${4 * i + 2}, ${4 * i + 3}, ${4 * i + 4})"
                for i in range(len(rows))
            )
            await pg.execute(  # autocommit: one statement, one commit
                f"INSERT INTO naive_readings VALUES {values}", *[x for r in rows for x in r]
            )

        def store(rows: list[tuple[str, str, int, float]]) -> None:
            loop.run_until_complete(insert(rows))

    if setup_only:
        import time

        time.sleep(1.0)  # let the SUBACK arrive: the session must hold the subscription
        client.loop_stop()
        client.disconnect()
        return
    while True:
        topic, payload = inbox.get()
        store(rows_of(topic, payload))


if __name__ == "__main__":
    main()
