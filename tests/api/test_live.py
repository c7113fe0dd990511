"""The live stream in one process: `serve`'s HTTP ingest commits, WebSocket and SSE clients of
the same app (under a real uvicorn) receive the committed readings, filtered, per tenant; a
client that does not read holds up neither ingest nor other clients."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from telemetra.store.catalog import create_user, tenant_id_by_name
from telemetra.store.database import open_database
from telemetra.store.tenancy import platform_wide

from api_fixtures import _HASH, PASSWORD, World, assert_error, make_world
from conftest import app_role_url
from live_fixtures import Frames, serving, sse_client, ws_client

API = "/api/v1"
NOW_MS = (int(time.time()) - 60) * 1000  # whole seconds: ISO times without a fraction


@pytest.fixture
async def live_world(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> AsyncIterator[tuple[World, str]]:
    """Two tenants' users (api_fixtures.World) and the app served on a free port."""
    url = await app_role_url(db_url) if db_url.startswith("postgresql") else db_url
    app_engine = await open_database(url, migrate_schema=False) if url != db_url else engine
    try:
        async for world in make_world(
            app_engine, url, tmp_path / "data", live_client_queue=10, rate_limit_user_per_s=0
        ):
            async with serving(world.app) as address:
                yield world, address
    finally:
        if app_engine is not engine:
            await app_engine.dispose()


async def device(world: World, who: str, name: str) -> tuple[str, str]:
    """A new device of ``who``'s tenant: (uid, device token)."""
    uid = f"{world.tenant_a if who.startswith('a') else world.tenant_b}-{name}"
    made = await world.client.post(f"{API}/devices", json={"uid": uid}, headers=world.auth(who))
    assert made.status_code == 201, made.text
    return uid, made.json()["token"]


async def ingest(world: World, token: str, body: Any) -> None:
    reply = await world.client.post(f"{API}/ingest", json=body, headers={"X-API-Key": token})
    assert reply.status_code == 200 and not reply.json()["rejected"], reply.text


async def test_ws_and_sse_clients_receive_committed_readings_filtered(
    live_world: tuple[World, str],
) -> None:
    world, address = live_world
    token = world.tokens["a-viewer"]
    d1, t1 = await device(world, "a-operator", "d1")
    d2, t2 = await device(world, "a-operator", "d2")
    async with (
        ws_client(address, token) as (_, everything),
        ws_client(address, token, first_message=True, devices=d1) as (_, only_d1),
        ws_client(address, token, types="status,alert") as (_, no_readings),
        sse_client(address, token, metrics="humidity") as humidity,
        sse_client(address, token, in_query=True, devices=f"{d2},elsewhere") as only_d2,
    ):
        # The first-message client is subscribed once it has sent its token: wait for that.
        await asyncio.sleep(0.3)
        await ingest(world, t1, [
            {"ts": NOW_MS, "temperature": 21.5, "humidity": 40},
            {"ts": NOW_MS + 1000, "temperature": 21.7, "door": "open"},
        ])  # fmt: skip
        await ingest(world, t2, {"ts": NOW_MS, "temperature": 5.0, "humidity": 80})

        frame = await everything.wait_for(lambda f: f.get("device") == d1)
        # One frame per device and commit, points in time order, text values too.
        assert frame == {"type": "readings", "device": d1, "points": [
            {"metric": "temperature", "ts": _iso(NOW_MS), "value": 21.5},
            {"metric": "humidity", "ts": _iso(NOW_MS), "value": 40.0},
            {"metric": "temperature", "ts": _iso(NOW_MS + 1000), "value": 21.7},
            {"metric": "door", "ts": _iso(NOW_MS + 1000), "value": "open"},
        ]}  # fmt: skip
        await everything.wait_for(lambda f: f.get("device") == d2)
        await only_d1.wait_for(lambda f: f.get("device") == d1)
        await only_d2.wait_for(lambda f: f.get("device") == d2)
        await humidity.wait_for(lambda f: f.get("device") == d2)
        await asyncio.sleep(0.3)  # anything that should not come would have come by now

    assert sorted(everything.readings()) == sorted([
        (d1, "temperature", 21.5), (d1, "humidity", 40.0), (d1, "temperature", 21.7),
        (d1, "door", "open"), (d2, "temperature", 5.0), (d2, "humidity", 80.0),
    ])  # fmt: skip
    assert {d for d, _, _ in only_d1.readings()} == {d1}
    assert {d for d, _, _ in only_d2.readings()} == {d2}
    assert sorted(humidity.readings()) == [(d1, "humidity", 40.0), (d2, "humidity", 80.0)]
    assert no_readings.items == []
    assert "connected" in humidity.comments


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + "Z"


async def test_tenants_never_see_each_others_stream(live_world: tuple[World, str]) -> None:
    """Two tenants' clients (WS and SSE) while both publish: each gets its own tenant's readings
    only, even when it names the other tenant's device in its filter. A platform admin gets both."""
    world, address = live_world
    a_uid, a_token = await device(world, "a-operator", "sensor")
    b_uid, b_token = await device(world, "b-operator", "sensor")
    tag = world.tenant_a.split("-", 1)[1]
    with platform_wide():
        async with world.app.state.engine.begin() as conn:
            b_id = await tenant_id_by_name(conn, world.tenant_b)
            await create_user(conn, b_id, f"admin-{tag}", _HASH, "admin")
    login = await world.client.post(
        f"{API}/auth/token", data={"username": f"admin-{tag}", "password": PASSWORD}
    )
    admin = login.json()["access_token"]
    both = f"{a_uid},{b_uid}"
    async with (
        ws_client(address, world.tokens["a-viewer"]) as (_, a_ws),
        ws_client(address, world.tokens["b-viewer"], devices=both) as (_, b_ws),
        sse_client(address, world.tokens["a-owner"], devices=both) as a_sse,
        sse_client(address, world.tokens["b-operator"]) as b_sse,
        ws_client(address, admin) as (_, admin_ws),
    ):
        for i in range(5):
            await ingest(world, a_token, {"ts": NOW_MS + i, "level": 100 + i})
            await ingest(world, b_token, {"ts": NOW_MS + i, "level": 200 + i})
        for frames, uid in ((a_ws, a_uid), (a_sse, a_uid), (b_ws, b_uid), (b_sse, b_uid)):
            await frames.wait_for(lambda f, u=uid: any(p["value"] % 100 == 4 for p in f["points"]))
        for uid in (a_uid, b_uid):
            await admin_ws.wait_for(
                lambda f, u=uid: f["device"] == u and f["points"][-1]["value"] % 100 == 4
            )
        await asyncio.sleep(0.3)

    for frames, uid, base in ((a_ws, a_uid, 100), (a_sse, a_uid, 100),
                              (b_ws, b_uid, 200), (b_sse, b_uid, 200)):  # fmt: skip
        assert sorted(frames.readings()) == [(uid, "level", base + i) for i in range(5)]
    assert len(admin_ws.readings()) == 10


async def test_authentication_and_bad_filters(live_world: tuple[World, str]) -> None:
    world, address = live_world
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        assert_error(await client.get(f"{API}/live"), 401, "unauthorized")
        assert_error(await client.get(f"{API}/live", params={"token": "nope"}), 401, "unauthorized")
        bad = await client.get(
            f"{API}/live", params={"types": "readings,gossip"}, headers=world.auth("a-viewer")
        )
        assert_error(bad, 422, "invalid_request")
        assert "gossip" in bad.json()["error"]["message"]

    async def closed_with(url: str, send: str | None = None, **kwargs: Any) -> tuple[int, str]:
        async with connect(f"ws://{address}{API}/live{url}", **kwargs) as ws:
            if send is not None:
                await ws.send(send)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        return closed.value.rcvd.code, closed.value.rcvd.reason

    code, reason = await closed_with("?token=nope")
    assert code == 4401 and "invalid or expired token" in reason
    code, reason = await closed_with("", send='{"token": "nope"}')
    assert code == 4401
    code, reason = await closed_with("", send="hello")
    assert code == 4401 and "first message" in reason
    code, reason = await closed_with("?types=gossip", additional_headers=world.auth("a-viewer"))
    assert code == 4400 and "gossip" in reason


async def test_the_token_in_the_query_never_reaches_the_log(
    live_world: tuple[World, str], caplog: pytest.LogCaptureFixture
) -> None:
    """EventSource sends ?token=: uvicorn's access and WebSocket log lines show it redacted."""
    from telemetra.logs import configure

    configure()
    world, address = live_world
    token = world.tokens["a-viewer"]
    with caplog.at_level(logging.INFO):
        async with sse_client(address, token, in_query=True):
            pass
        async with ws_client(address, token) as (ws, _):
            pass
        async with connect(f"ws://{address}{API}/live?token={token}") as ws:
            await ws.close()
        await asyncio.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("uvicorn")]
    assert any("/api/v1/live?token=[redacted]" in line for line in lines), lines
    assert not [line for line in lines if token in line or token[:20] in line]


async def test_a_client_that_does_not_read_holds_up_nothing(live_world: tuple[World, str]) -> None:
    """Its queue (TELEMETRA_LIVE_CLIENT_QUEUE=10 here) drops the oldest frames; ingest and other
    clients go on at full speed; when it reads again it gets a gap saying how many it missed,
    then the newest frames."""
    world, address = live_world
    uid, token = await device(world, "a-operator", "fast")
    me = await world.client.get(f"{API}/auth/me", headers=world.auth("a-viewer"))
    tenant_id = me.json()["tenant_id"]
    bus = world.app.state.live
    big = "x" * 100_000  # 100 kB frames fill the socket buffers quickly
    async with (
        RawWebSocket(address, f"{API}/live", world.auth("a-viewer")) as slow,
        ws_client(address, world.tokens["a-viewer"], devices=uid) as (_, fast),
    ):
        published = 400
        for i in range(published):
            bus.publish(tenant_id, [{"type": "readings", "device": f"bulk-{i}",
                                     "points": [{"metric": "blob", "ts": _iso(NOW_MS),
                                                 "value": big}]}])  # fmt: skip
            await asyncio.sleep(0.002)
        started = time.monotonic()
        await ingest(world, token, {"ts": NOW_MS, "temperature": 1.5})
        assert time.monotonic() - started < 2.0
        await fast.wait_for(lambda f: f.get("device") == uid, timeout=5)

        received = Frames()
        while True:  # now the slow client reads
            frame = json.loads(await asyncio.wait_for(slow.recv(), 10))
            received.add(frame)
            if frame.get("device") == uid:
                break
    kinds = [f["type"] for f in received.items]
    assert kinds.count("gap") == 1, kinds
    gap = received.items[kinds.index("gap")]
    assert gap["reason"] == "slow_client" and gap["dropped"] > 0
    bulk = [int(f["device"].split("-")[1]) for f in received.items if f["type"] == "readings"
            and f["device"].startswith("bulk-")]  # fmt: skip
    assert bulk == sorted(bulk)  # in order, the oldest given up
    assert len(bulk) + gap["dropped"] == published  # every frame either came or was counted
    after = received.items[kinds.index("gap") + 1 :]
    assert len(after) <= 10 and after[-1]["device"] == uid  # the newest, within the queue's size


class RawWebSocket:
    """A WebSocket client that reads only when asked, through a 64 kB receive buffer: the
    server's sends block once a few frames are in flight (client libraries read ahead)."""

    def __init__(self, address: str, path: str, headers: dict[str, str]) -> None:
        self.address, self.path, self.headers = address, path, headers

    async def __aenter__(self) -> RawWebSocket:
        host, port = self.address.split(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=65536)
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        self.writer.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.address}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n".encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return self

    async def recv(self) -> bytes:
        """The next text message (server frames are unmasked; pings are skipped)."""
        while True:
            first, second = await self.reader.readexactly(2)
            size = second & 0x7F
            if size == 126:
                size = int.from_bytes(await self.reader.readexactly(2))
            elif size == 127:
                size = int.from_bytes(await self.reader.readexactly(8))
            payload = await self.reader.readexactly(size)
            if first & 0x0F == 0x1:
                return payload

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()


async def test_streams_end_when_the_account_is_disabled(
    live_world: tuple[World, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The account is checked again while a stream runs (here at every heartbeat): disabling
    it ends its WebSocket (close code 4401) and its SSE stream. Heartbeats keep SSE open."""
    import telemetra.api.live

    monkeypatch.setattr(telemetra.api.live, "HEARTBEAT_S", 0.1)
    monkeypatch.setattr(telemetra.api.live, "RECHECK_S", 0.0)
    world, address = live_world
    token = world.tokens["a-viewer"]
    async with (
        connect(f"ws://{address}{API}/live", additional_headers=world.auth("a-viewer")) as ws,
        sse_client(address, token) as sse,
    ):
        await asyncio.sleep(0.5)
        assert "heartbeat" in sse.comments
        me = await world.client.get(f"{API}/auth/me", headers=world.auth("a-viewer"))
        users = await world.client.get(f"{API}/users", headers=world.auth("a-owner"))
        [user] = [u for u in users.json()["items"] if u["id"] == me.json()["id"]]
        disabled = await world.client.patch(
            f"{API}/users/{user['id']}", json={"disabled": True}, headers=world.auth("a-owner")
        )
        assert disabled.status_code == 200, disabled.text
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert "disabled" in closed.value.rcvd.reason
        assert sse.task is not None
        await asyncio.wait_for(sse.task, 5)  # the stream ended
