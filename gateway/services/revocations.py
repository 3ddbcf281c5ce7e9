"""Revoked wallet sessions, known to each process without a database round trip per request.

Every wallet token carries its session's id (``sid``). A revocation (a device revoked, a password
changed) sets ``wallet_sessions.revoked_at``; the trigger of migration 0017 NOTIFYs the session's id,
holder, token expiry and revocation time at commit, and this process's listener (one dedicated
connection) adds it to an in-memory set. ``check`` answers from that set: a dictionary lookup.

Invariants:
- the set answers only while the listener's connection is up and LISTENing and the set is within
  ``sign_in.revoked_sessions_max``; otherwise every check reads the database (fail safe, never open);
- on each (re)connection the listener LISTENs first, then loads every revocation whose tokens may
  still be alive, and only then answers: a revocation committed while it was away is never missed
  (one committed between the two steps is both notified and loaded: adding is idempotent);
- revocations never get undone, so the set only grows; an entry leaves it only once its session's
  token has expired (exp + the verifier's leeway), when the token is refused as expired anyway;
- a use case of this process that revokes adds the sessions itself once its transaction committed,
  before it answers: the very next request to this process with a revoked token is refused; other
  processes refuse it once the notification arrives (``sync`` waits for that point);
- tokens from before sessions existed (no ``sid``; issued by the previous version, alive at most
  ``auth.wallet_token_ttl_s`` after the upgrade) are refused once any session of their holder was
  revoked at or after their issue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import asyncpg

from gateway.tasks import cancel_and_wait
from gateway.auth.tokens import LEEWAY_S
from gateway.errors import Unauthenticated
from gateway.settings import Settings
from gateway.store import db as store_db
from gateway.store import sign_in as store
from gateway.store.db import Database

log = logging.getLogger(__name__)
_CONNECT_TIMEOUT_S = 10.0
_PING_INTERVAL_S = 5.0
_PING_TIMEOUT_S = 5.0
_RETRY_S = 1.0


def _refused() -> Unauthenticated:
    return Unauthenticated("this session was signed out (device revoked or password changed); sign in again",
                           code="session_revoked")


async def check_in_database(db: Database, holder_id: uuid.UUID, session_id: uuid.UUID | None, issued_at_s: int
                            ) -> None:
    async with db.connection() as conn:
        refused = await store.session_refused(conn, holder_id, session_id, datetime.fromtimestamp(issued_at_s, UTC))
    if refused:
        raise _refused()


class SessionRevocations:
    def __init__(self, db: Database, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._entries_max = settings.sign_in.revoked_sessions_max
        self._token_ttl_s = settings.auth.wallet_token_ttl_s
        self._clock = clock
        self._sessions: dict[uuid.UUID, float] = {}  # session id -> until when its tokens may live (Unix s)
        self._holders: dict[uuid.UUID, tuple[float, float]] = {}  # holder -> (latest revocation, kept until)
        self._connection: Any = None
        self._loaded = False
        self._epoch = 0
        self._lost = asyncio.Event()
        self._lock = asyncio.Lock()
        self.notifications = 0
        self.database_checks = 0

    @property
    def answering(self) -> bool:
        return self._loaded and self._connection is not None and len(self._sessions) <= self._entries_max

    @property
    def size(self) -> int:
        return len(self._sessions)

    async def check(self, holder_id: uuid.UUID, session_id: uuid.UUID | None, issued_at_s: int) -> None:
        """Raise ``session_revoked`` if the token's session (or, without one, its holder's sessions since
        its issue) was revoked."""
        if self.answering:
            if session_id is not None:
                if session_id in self._sessions:
                    raise _refused()
                return
            latest = self._holders.get(holder_id)
            if latest is not None and issued_at_s <= latest[0]:
                raise _refused()
            return
        self.database_checks += 1
        await check_in_database(self._db, holder_id, session_id, issued_at_s)

    def add(self, session_id: uuid.UUID, holder_id: uuid.UUID, expires_s: float, revoked_s: float) -> None:
        until_s = expires_s + LEEWAY_S
        self._sessions[session_id] = max(until_s, self._sessions.get(session_id, 0.0))
        latest, kept = self._holders.get(holder_id, (0.0, 0.0))
        # A token without sid was issued before its holder's first session: it lives at most a TTL past it.
        self._holders[holder_id] = (max(latest, revoked_s), max(kept, revoked_s + self._token_ttl_s + LEEWAY_S))
        if len(self._sessions) > self._entries_max:
            self.prune()

    def added(self, rows: list[asyncpg.Record]) -> None:
        """What a use case of this process revoked, once its transaction committed."""
        for r in rows:
            self.add(r["id"], r["holder_id"], r["expires_at"].timestamp(), r["revoked_at"].timestamp())

    def prune(self) -> None:
        now_s = self._clock()
        self._sessions = {sid: until for sid, until in self._sessions.items() if until > now_s}
        self._holders = {h: v for h, v in self._holders.items() if v[1] > now_s}

    def _notified(self, payload: str) -> None:
        parts = payload.split(":")
        try:
            self.add(uuid.UUID(parts[0]), uuid.UUID(parts[1]), float(parts[2]), float(parts[3]))
        except (ValueError, IndexError):
            log.warning("unreadable session revocation notification; checking the database until reconnected")
            self._down(self._epoch)
            return
        self.notifications += 1

    def _down(self, epoch: int) -> None:
        if epoch != self._epoch:
            return
        self._connection = None
        self._loaded = False
        self._lost.set()

    async def sync(self) -> None:
        """Return once every revocation committed before this call has been handled here."""
        connection = self._connection
        if connection is None:
            raise ConnectionError("the session revocation listener is not connected")
        async with self._lock:
            await store_db.ping(connection, timeout_s=_PING_TIMEOUT_S)

    @contextlib.asynccontextmanager
    async def listening_while(self, url: str) -> AsyncIterator[None]:
        tried = asyncio.Event()
        task = asyncio.create_task(self._listen(url, tried))
        try:
            await tried.wait()
            yield
        finally:
            await cancel_and_wait([task])

    async def _load(self) -> None:
        since = datetime.fromtimestamp(self._clock() - LEEWAY_S, UTC)
        async with self._db.connection() as conn:
            rows = await store.revoked_alive(conn, since, self._entries_max + 1)
        self.added(rows)

    async def _listen(self, url: str, tried: asyncio.Event) -> None:
        while True:
            self._epoch += 1
            epoch = self._epoch
            self._lost.clear()
            connection: Any = None
            try:
                connection = await store.listen_revocations(url, self._notified, partial(self._down, epoch),
                                                            timeout_s=_CONNECT_TIMEOUT_S)
                self._connection = connection
                await self._load()
                self._loaded = True
                self.prune()
                tried.set()
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._lost.wait(), _PING_INTERVAL_S)
                    if self._lost.is_set():
                        raise ConnectionError("the server closed the connection")
                    await self.sync()
                    self.prune()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("session revocation listener down; checking every wallet token in the database"
                            " until it is back", extra={"error": type(exc).__name__})
            finally:
                self._down(epoch)
                tried.set()
                if connection is not None:
                    store_db.terminate(connection)
            await asyncio.sleep(_RETRY_S)
