"""API key lookups, cached in each process; every change to a key or its merchant pushed by PostgreSQL.

An entry maps the key's keyed hash (never the key itself) to what authentication needs: the key's
id, its merchant, its kind and the merchant's status. Unknown keys are never cached (anyone can
send those), at most ``auth.api_key_cache_entries_max`` entries are kept (the least recently used
goes first), and each lives at most ``auth.api_key_cache_ttl_s`` (0: no cache at all).

Changes are pushed, not polled: the triggers of migration 0014 NOTIFY ``api_key_changes`` with the
merchant's id when a key is revoked, changed or deleted or the merchant is suspended or reactivated;
the listener, one dedicated connection per process, evicts every entry of that merchant.

Invariants:
- the cache answers, and takes new entries, only while the listener's connection is up and
  LISTENing; before it first connects, once it is lost and while it reconnects, every lookup goes to
  the database; each (re)connection empties the cache first, so a change whose notification was
  missed while disconnected is never served from it;
- a lookup stores its answer only if no notification, clear or listener change was handled while
  it ran (``generation``): an answer read before a change committed is never stored after that
  change's notification was handled;
- a use case of this process that revokes a key or changes a merchant's status evicts the merchant
  itself once its transaction committed, before its response.

What that guarantees: after a revocation or suspension answered, the very next request to the
process that made it is refused. Another process refuses once its listener has handled the
notification, which PostgreSQL sends at commit: the change is honoured everywhere within the
notification's delivery latency after the commit (on loopback about a millisecond). ``sync()``
waits for that point: once it returns, every change committed before it was called is honoured
here. A listener connection lost without a word (a dead network path) is found by the ping within
``_PING_INTERVAL_S + _PING_TIMEOUT_S``; a connection the server ends is found at once. The TTL is
the last backstop: no entry is older than it whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from gateway import metrics
from gateway.tasks import cancel_and_wait
from gateway.settings import AuthSettings
from gateway.store import db as store_db
from gateway.store import tenants as store
from gateway.store.db import Database

log = logging.getLogger(__name__)
_CONNECT_TIMEOUT_S = 10.0
_PING_INTERVAL_S = 5.0
_PING_TIMEOUT_S = 5.0
_RETRY_S = 1.0


@dataclass(frozen=True)
class ApiKey:
    key_id: uuid.UUID
    merchant_id: uuid.UUID
    kind: str
    merchant_status: str


@dataclass(frozen=True)
class _Entry:
    key: ApiKey
    expires_at_s: float  # on the cache's monotonic clock


class ApiKeyCache:
    def __init__(self, db: Database, settings: AuthSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._db = db
        self._ttl_s = settings.api_key_cache_ttl_s
        self._entries_max = settings.api_key_cache_entries_max
        self._clock = clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._by_merchant: dict[uuid.UUID, set[bytes]] = {}
        self._generation = 0
        self._connection: Any = None  # the listener's, while it is up and LISTENing
        self._epoch = 0  # of the listener's current connection: a late callback of an older one is ignored
        self._lost = asyncio.Event()
        self._lock = asyncio.Lock()  # one statement at a time on the listener's connection
        self.notifications = 0  # handled since start

    @property
    def enabled(self) -> bool:
        return self._ttl_s > 0

    @property
    def listening(self) -> bool:
        """The listener's connection is up and LISTENing: only then does the cache answer."""
        return self._connection is not None

    @property
    def size(self) -> int:
        return len(self._entries)

    async def lookup(self, key_hash: bytes) -> ApiKey | None:
        """The live key with this keyed hash and its merchant's status; None for an unknown or revoked key."""
        if not (self.enabled and self.listening):
            metrics.API_KEY_CACHE_LOOKUPS.labels("bypass").inc()
            return await self._read(key_hash)
        hit = self.get(key_hash)
        if hit is not None:
            metrics.API_KEY_CACHE_LOOKUPS.labels("hit").inc()
            return hit
        metrics.API_KEY_CACHE_LOOKUPS.labels("miss").inc()
        generation = self._generation
        found = await self._read(key_hash)
        if found is not None:
            self.put(key_hash, found, generation)
        return found

    async def _read(self, key_hash: bytes) -> ApiKey | None:
        async with self._db.connection() as conn:
            row = await store.api_key_by_hash(conn, key_hash)
        if row is None:
            return None
        return ApiKey(row["id"], row["merchant_id"], row["kind"], row["merchant_status"])

    @property
    def generation(self) -> int:
        """Bumped by every eviction and clear: a lookup that saw it change stores nothing."""
        return self._generation

    def get(self, key_hash: bytes) -> ApiKey | None:
        if not (self.enabled and self.listening):
            return None
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        if entry.expires_at_s <= self._clock():
            self._drop(key_hash)
            return None
        self._entries.move_to_end(key_hash)
        return entry.key

    def put(self, key_hash: bytes, key: ApiKey, generation: int) -> bool:
        """Store what a lookup that began at ``generation`` found; False (nothing stored) if anything
        was evicted or cleared meanwhile, or the cache is not answering."""
        if not (self.enabled and self.listening) or generation != self._generation:
            return False
        self._drop(key_hash)
        self._entries[key_hash] = _Entry(key, self._clock() + self._ttl_s)
        self._by_merchant.setdefault(key.merchant_id, set()).add(key_hash)
        while len(self._entries) > self._entries_max:
            self._drop(next(iter(self._entries)))
        return True

    def evict(self, merchant_id: uuid.UUID | None) -> None:
        """Forget every key of the merchant (None: every key)."""
        self._generation += 1
        if merchant_id is None:
            self._entries.clear()
            self._by_merchant.clear()
            return
        for key_hash in self._by_merchant.pop(merchant_id, set()):
            self._entries.pop(key_hash, None)

    def _drop(self, key_hash: bytes) -> None:
        entry = self._entries.pop(key_hash, None)
        if entry is not None:
            hashes = self._by_merchant.get(entry.key.merchant_id)
            if hashes is not None:
                hashes.discard(key_hash)
                if not hashes:
                    del self._by_merchant[entry.key.merchant_id]

    def _notified(self, merchant_id: uuid.UUID | None) -> None:
        self.evict(merchant_id)
        self.notifications += 1

    def _up(self, connection: Any) -> None:
        self.evict(None)  # whatever changed while no one listened is forgotten
        self._connection = connection

    def _down(self, epoch: int) -> None:
        if epoch != self._epoch:
            return
        self._connection = None
        self.evict(None)
        self._lost.set()

    async def sync(self) -> None:
        """Return once every change committed before this call has been handled here (a round trip on
        the listener's connection: PostgreSQL sends the notifications before the answer)."""
        connection = self._connection
        if connection is None:
            raise ConnectionError("the API key listener is not connected")
        async with self._lock:
            await store_db.ping(connection, timeout_s=_PING_TIMEOUT_S)

    @contextlib.asynccontextmanager
    async def listening_while(self, url: str) -> AsyncIterator[None]:
        """Keep the listener for as long as the block runs (no listener when the cache is off); the
        first connection is tried before the block starts."""
        if not self.enabled:
            yield
            return
        tried = asyncio.Event()
        task = asyncio.create_task(self._listen(url, tried))
        try:
            await tried.wait()
            yield
        finally:
            await cancel_and_wait([task])

    async def _listen(self, url: str, tried: asyncio.Event) -> None:
        """One dedicated LISTEN connection, reconnected for as long as the process serves."""
        while True:
            self._epoch += 1
            epoch = self._epoch
            self._lost.clear()
            connection: Any = None
            try:
                connection = await store.listen_api_key_changes(
                    url, self._notified, partial(self._down, epoch), timeout_s=_CONNECT_TIMEOUT_S)
                self._up(connection)
                tried.set()
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._lost.wait(), _PING_INTERVAL_S)
                    if self._lost.is_set():
                        raise ConnectionError("the server closed the connection")
                    await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("API key listener down; looking every key up in the database until it is back",
                            extra={"error": type(exc).__name__})
            finally:
                self._down(epoch)
                tried.set()
                if connection is not None:
                    store_db.terminate(connection)
            await asyncio.sleep(_RETRY_S)
