"""Reads that may be stale, served by a streaming replica when one is configured.

Invariants:
- only reads that a lag cannot make wrong come here: lists of events, payments, refunds, a wallet's
  history, reports and the operator console's charts. The money path (pay, capture, refund,
  conversions, idempotency, any balance a decision depends on) never does: it keeps ``Services.db``;
- without ``database.replica_url`` every read goes to the primary (one code path, no replica);
- a replica that cannot be reached is never a reason to fail: the read falls back to the primary
  and the replica is left alone for ``replica_backoff_s`` (a circuit breaker, as for Redis). A read
  that was already running on it when it died answers 503 (retryable), the next ones go to the primary;
- a read the replica cancels for a conflict with recovery answers 503 (retryable), never 500;
- the replica's pool opens no connection at start (``pool_min`` 0): the gateway starts without it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import asyncpg
import msgspec

from gateway import metrics
from gateway.errors import Unavailable
from gateway.settings import DatabaseSettings
from gateway.store.db import Connection, Database, address

log = logging.getLogger(__name__)
# What a hot standby raises when it cancels a query in the way of replay (SQLSTATE 40001, or 40P01 for a
# buffer pin deadlock): a retryable 503 here, not a bug (``Database.run`` retries these on the primary).
_CONFLICTS = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)


class StaleReads:
    def __init__(self, primary: Database, replica: Database | None, backoff_s: float) -> None:
        self.primary = primary
        self.replica = replica
        self.backoff_s = backoff_s
        self._down_until_s = 0.0

    @classmethod
    async def connect(cls, primary: Database, settings: DatabaseSettings) -> StaleReads:
        if not settings.replica_url:
            return cls(primary, None, settings.replica_backoff_s)
        replica = await Database.connect(msgspec.structs.replace(settings, url=settings.replica_url, pool_min=0))
        log.info("stale reads go to a replica", extra={"replica": address(settings.replica_url)})
        return cls(primary, replica, settings.replica_backoff_s)

    @property
    def replica_usable(self) -> bool:
        return self.replica is not None and time.monotonic() >= self._down_until_s

    def _failed(self, exc: Unavailable) -> None:
        if time.monotonic() >= self._down_until_s:
            log.warning("replica unavailable; stale reads go to the primary", extra={"error": exc.code})
        self._down_until_s = time.monotonic() + self.backoff_s
        metrics.DB_REPLICA_FALLBACKS.inc()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A connection for a read that may lag: the replica's while it answers, else the primary's."""
        async with AsyncExitStack() as stack:
            conn: Connection | None = None
            if self.replica is not None and self.replica_usable:
                try:
                    conn = await stack.enter_async_context(self.replica.connection())
                except Unavailable as exc:
                    self._failed(exc)
            if conn is None:
                conn = await stack.enter_async_context(self.primary.connection())
                yield conn
                return
            try:
                yield conn
            except Unavailable as exc:
                if exc.code == "database_unavailable":
                    self._failed(exc)
                raise
            except _CONFLICTS as exc:  # the replica cancelled the read to replay WAL that conflicts with it
                raise Unavailable("the read replica cancelled the read (a conflict with recovery); retry",
                                  code="database_busy") from exc

    async def close(self) -> None:
        if self.replica is not None:
            await self.replica.close()
