"""Rate limits per device token and per user: token buckets, 429 with Retry-After.

Per process: behind a load balancer each `serve` process limits on its own (a shared limit
needs Redis, which comes with the live fan-out).
"""

from __future__ import annotations

import math
import time

from telemetra.api.errors import ApiError


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
