"""Redis as an accelerator the gateway survives without.

Invariants:
- nothing here is the source of truth: every value is a copy of something PostgreSQL holds, or
  a rate-limit counter whose loss only loosens a limit for a second;
- every call is bounded by ``timeout_s``; after a failure Redis is not tried again for
  ``backoff_s`` (a circuit breaker), so a dead Redis costs one timeout, not one per request;
- a failure never propagates: callers get "no answer" and take the PostgreSQL path.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.settings import RedisSettings

log = logging.getLogger(__name__)


class Accelerator:
    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            settings.url,
            socket_timeout=settings.timeout_s,
            socket_connect_timeout=settings.timeout_s,
            retry_on_timeout=False,
            health_check_interval=0,
            max_connections=64,
        )
        self._down_until_s = 0.0
        self.last_error: str | None = None

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until_s

    def _failed(self, exc: BaseException) -> None:
        if self.available:
            log.warning("redis unavailable; continuing without it", extra={"error": type(exc).__name__})
        self._down_until_s = time.monotonic() + self.settings.backoff_s
        self.last_error = type(exc).__name__

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if not self.available:
            return None
        try:
            result = await getattr(self.client, name)(*args, **kwargs)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return None
        self.last_error = None
        return result

    async def ping(self) -> bool:
        """Checked by /readyz: tries even while the breaker is open, so recovery is noticed."""
        try:
            ok = bool(await self.client.ping())
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return False
        self._down_until_s = 0.0
        self.last_error = None
        return ok

    async def get(self, key: str) -> bytes | None:
        value = await self._call("get", key)
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        await self._call("set", key, value, ex=ttl_s)

    async def delete(self, key: str) -> None:
        await self._call("delete", key)

    async def preflight(self, scope: str, limit_per_s: int, key: str | None) -> tuple[bool, bytes | None, bool]:
        """Rate check and (with ``key``) the cached idempotent answer in one round trip.

        Returns (allowed, cached answer, whether Redis answered).
        """
        if not self.available:
            return True, None, False
        window = int(time.time())
        counter = f"rl:{scope}:{window}"
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.incr(counter)
                pipe.expire(counter, 2)
                if key is not None:
                    pipe.get(key)
                results = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return True, None, False
        cached = results[2] if key is not None and isinstance(results[2], bytes) else None
        return int(results[0]) <= limit_per_s, cached, True

    async def within_rate(self, scope: str, limit_per_s: int) -> bool:
        """Fixed one-second window; True (allowed) when Redis cannot tell."""
        window = int(time.time())
        key = f"rl:{scope}:{window}"
        if not self.available:
            return True
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.incr(key)
                pipe.expire(key, 2)
                count, _ = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return True
        return int(count) <= limit_per_s

    async def close(self) -> None:
        await self.client.aclose()
