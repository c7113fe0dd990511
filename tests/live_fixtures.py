"""Live stream clients for tests: a real uvicorn server, WebSocket and SSE clients that collect
frames in the background."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from conftest import free_port


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """``app`` (its lifespan already entered) under uvicorn on a free port: "127.0.0.1:port"."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_config=None,
        timeout_graceful_shutdown=1,
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        assert not task.done() and time.monotonic() < deadline, "uvicorn did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class Frames:
    """Frames one client received, in order, with a way to wait for one."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.comments: list[str] = []
        self._changed = asyncio.Event()
        self.task: asyncio.Task[Any] | None = None

    def add(self, frame: dict[str, Any]) -> None:
        self.items.append(frame)
        self._changed.set()

    async def wait_for(self, check: Any, timeout: float = 10.0) -> dict[str, Any]:
        """The first frame for which ``check(frame)`` holds (waiting for it)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for frame in self.items[seen:]:
                if check(frame):
                    return frame
            seen = len(self.items)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such frame within {timeout} s; got {self.items[-5:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def readings(self) -> list[tuple[str, str, Any]]:
        """(device, metric, value) of every reading received."""
        return [
            (f["device"], p["metric"], p["value"])
            for f in self.items
            if f["type"] == "readings"
            for p in f["points"]
        ]


@contextlib.asynccontextmanager
async def ws_client(
    address: str, token: str | None = None, *, first_message: bool = False, **params: str
) -> AsyncIterator[tuple[ClientConnection, Frames]]:
    """A WebSocket client reading frames in the background."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    headers = {"Authorization": f"Bearer {token}"} if token and not first_message else {}
    async with connect(
        f"ws://{address}/api/v1/live?{query}", additional_headers=headers, open_timeout=10
    ) as ws:
        if first_message:
            await ws.send(json.dumps({"token": token}))
        frames = Frames()

        async def read() -> None:
            async for message in ws:
                frames.add(json.loads(message))

        frames.task = asyncio.create_task(read())
        try:
            yield ws, frames
        finally:
            frames.task.cancel()


@contextlib.asynccontextmanager
async def sse_client(
    address: str, token: str, *, in_query: bool = False, **params: str
) -> AsyncIterator[Frames]:
    """An SSE client reading events in the background; returns once the stream is open."""
    headers = {} if in_query else {"Authorization": f"Bearer {token}"}
    if in_query:
        params = {**params, "token": token}
    frames = Frames()
    opened = asyncio.Event()
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=30) as client:

        async def read() -> None:
            async with client.stream("GET", "/api/v1/live", params=params, headers=headers) as r:
                assert r.status_code == 200, await r.aread()
                assert r.headers["content-type"].startswith("text/event-stream")
                event = None
                async for line in r.aiter_lines():
                    if line.startswith(":"):
                        frames.comments.append(line[1:].strip())
                        opened.set()
                    elif line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        frame = json.loads(line[6:])
                        assert frame["type"] == event
                        frames.add(frame)

        frames.task = asyncio.create_task(read())
        waiting = asyncio.create_task(opened.wait())
        await asyncio.wait({waiting, frames.task}, timeout=10, return_when="FIRST_COMPLETED")
        if frames.task.done():
            frames.task.result()  # raises what went wrong
        assert opened.is_set(), "the SSE stream did not open"
        try:
            yield frames
        finally:
            frames.task.cancel()
            waiting.cancel()
