"""Rate limits per device token and per user: token buckets, 429 with Retry-After; and the
request body limit on every route, 413.

Per process: behind a load balancer each `serve` process limits on its own (a shared limit
needs Redis, which comes with the live fan-out).
"""

from __future__ import annotations

import math
import time

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from telemetra.api.errors import ApiError, error_body


class RateLimiter:
    """``rate`` requests per second on average per key, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def retry_after(self, key: str, now: float | None = None) -> float:
        """Take one token for ``key``: 0 when allowed, else seconds until one is free."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1:
            if len(self._buckets) >= self.max_keys and key not in self._buckets:
                self._buckets.clear()  # bounded memory; forgetting only makes limits laxer
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate

    def waiting(self, key: str, now: float | None = None) -> float:
        """Seconds until ``key`` has a token again (0: it has one), taking none."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def check(self, key: str, what: str) -> None:
        """Raise 429 (with Retry-After) when ``key`` is over its limit."""
        wait = self.retry_after(key)
        if wait > 0:
            raise ApiError(
                429,
                f"too many requests for this {what}; at most {self.rate:g}/s "
                f"(bursts of {self.burst:g})",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit (an HTTPException, so that
    FastAPI's body parsing passes it on instead of turning it into a 400)."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        size = f"body of {declared} bytes" if declared is not None else "body"
        super().__init__(413, f"{size} exceeds the limit of {limit} bytes")


class BodyLimit:
    """Pure ASGI middleware: refuse request bodies over ``limit`` bytes with 413 on every route,
    before authentication and before anything reads or parses the body. A declared
    Content-Length is checked up front; a chunked body is counted as it streams in, so at
    most ``limit`` bytes (plus one chunk) are ever held."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await _too_large(send, BodyTooLarge(self.limit, declared))
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as error:  # nothing inside answered it
            if started:
                raise
            await _too_large(send, error)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length itself
    return None


async def _too_large(send: Send, error: BodyTooLarge) -> None:
    body = orjson.dumps(error_body("payload_too_large", str(error.detail)))
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),  # the rest of the body is never read
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
