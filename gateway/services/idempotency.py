"""Idempotent execution of state-changing requests (api-conventions.md; Brandur Leach's design).

Protocol for a request carrying ``Idempotency-Key`` (scoped per merchant / holder / operator):
1. claim the key row (its own tiny transaction): new -> ours; done -> replay the stored response
   byte for byte (or ``idempotency_key_reused`` if the parameters differ); started by a live
   request -> ``idempotency_key_in_use`` (409, retryable); started but abandoned for longer than
   ``lock_timeout_s`` (its process died) -> taken over;
2. run the use case and store its response in the SAME transaction as the work: after a crash
   the key is either done with the money moved, or still started with nothing moved;
3. a client error the use case raises (a decline, a refused transition) is stored too, so a
   retry gets the same answer; an unexpected failure releases the key so a retry runs afresh.
Redis holds a copy of done responses for a fast replay; PostgreSQL remains the authority.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from gateway import metrics
from gateway.accel import Accelerator
from gateway.auth.principals import Principal
from gateway.errors import GatewayError, IdempotencyError, IdempotencyInUse, Unavailable
from gateway.settings import IdempotencySettings
from gateway.store import idempotency as keys
from gateway.store.db import Connection, Database, terminate

log = logging.getLogger(__name__)

KEY_LENGTH_MAX = 255
Work = Callable[[Connection], Awaitable[tuple[int, Any]]]
Check = Callable[[Connection], Awaitable[None]]  # runs on the request's connection, outside its transaction
# Records a refusal (e.g. a payment.failed event) in the transaction that stores the refused answer.
Refused = Callable[[Connection, GatewayError], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class AtOnce:
    """A use case's whole work as ONE statement that stores its answer too, decided before it runs from
    rows read just before: ``apply`` runs the statement with the key's done row (None without a key) and
    returns False when a guard found the state changed, having written nothing; the general path then
    runs. Nothing is claimed first: an existing key makes ``apply`` return False, and the general path
    replays or refuses it as usual."""

    status: int
    value: Any
    apply: Callable[[keys.Done | None], Awaitable[bool]]  # takes its own connection (or joins a batch)


@dataclass(frozen=True, slots=True)
class RequestIdentity:
    scope: str
    key: str | None
    method: str
    path: str
    fingerprint: bytes
    request_id: str
    cached: bytes | None = None  # the Redis copy of a stored answer, when the caller fetched it already
    prefetched: bool = False
    actor: Principal | None = None  # who sends it (None: anonymous, or the command line): audit events name it


def cache_key(scope: str, key: str) -> str:
    return f"idem:{scope}:{hashlib.sha256(key.encode()).hexdigest()}"


def fingerprint(method: str, path: str, params: Any) -> bytes:
    """Same method, path and parameters (whatever their JSON spacing or order) -> same fingerprint."""
    canonical = msgspec.json.encode(params, order="sorted")
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).digest()


def _encode(status: int, value: Any) -> bytes:
    return msgspec.json.encode(value)


def _pack(request_hash: bytes, status: int, body: bytes) -> bytes:
    return request_hash + status.to_bytes(2, "big") + body


def _unpack(blob: bytes) -> tuple[bytes, int, bytes]:
    return blob[:32], int.from_bytes(blob[32:34], "big"), blob[34:]


@dataclass(slots=True)
class _KeyLock:
    """Whether this request's connection may still hold the key's liveness lock. It is cleared only
    by a statement that freed the lock and returned; a connection that may still hold it when the
    request ends is closed, never pooled (asyncpg's reset is skipped, so nothing else would free it:
    a later request with the same key on that connection would re-enter the lock)."""

    held: bool = True


class _TakenOver(Exception):
    """Our key was taken over by a retry while our work ran: the work is rolled back."""


class _NotOurs(Exception):
    """Our key was taken over before our refusal was stored: what was written with it is rolled back."""


class Idempotency:
    def __init__(self, db: Database, accel: Accelerator, settings: IdempotencySettings) -> None:
        self.db = db
        self.accel = accel
        self.settings = settings

    def _replay(self, who: RequestIdentity, request_hash: bytes, status: int, body: bytes, source: str) -> Reply:
        if request_hash != who.fingerprint:
            raise IdempotencyError(
                "this Idempotency-Key was used with different parameters", param="Idempotency-Key"
            )
        metrics.IDEMPOTENCY_REPLAYS.labels(source).inc()
        return Reply(status, body, replayed=True)

    def _remember(self, who: RequestIdentity, status: int, body: bytes) -> None:
        """Copy the stored answer to Redis in the background: the reply does not wait for it."""
        self.accel.copy_later(cache_key(who.scope, who.key or ""), _pack(who.fingerprint, status, body),
                              self.settings.retention_s)

    async def run(self, who: RequestIdentity, work: Work, before: Check | None = None,
                  refused: Refused | None = None, at_once: AtOnce | None = None) -> Reply:
        """``before`` holds the checks that depend on the moment (PIN, code still usable, tap counter): it
        runs only when the request really executes, so a retry of a finished request gets its stored
        answer whatever changed since; a client error it raises is the stored answer too.

        ``refused`` runs when the work or ``before`` raises a client error, in the one transaction that
        stores that answer: what it writes exists once per key (a retry replays, it does not run again).

        ``at_once`` is tried first (a use case in one statement, with no ``before``); when its guards
        refuse, ``work`` runs as if it had not been tried."""
        assert at_once is None or before is None, "a one-statement use case has no checks of the moment"
        if who.key is None:
            if at_once is not None:
                body = _encode(at_once.status, at_once.value)
                if await at_once.apply(None):
                    return Reply(at_once.status, body)
            return await self._run_plain(who, work, before, refused)
        cached = who.cached if who.prefetched else await self.accel.get(cache_key(who.scope, who.key))
        if cached is not None:
            return self._replay(who, *_unpack(cached), source="redis")
        if at_once is not None:
            body = _encode(at_once.status, at_once.value)
            done = keys.Done(who.scope, who.key, who.fingerprint, who.method, who.path, at_once.status, body)
            if await at_once.apply(done):
                self._remember(who, at_once.status, body)
                return Reply(at_once.status, body)
        # One pooled connection for the claim, the work and the answer (it holds the key's liveness lock).
        async with self.db.connection() as conn:
            lock = _KeyLock()  # until the claim returns, whether it took the lock is unknown
            try:
                row = await keys.claim(
                    conn, who.scope, who.key, who.fingerprint, who.method, who.path, self.settings.lock_timeout_s
                )
                lock.held = row.key_locked
                if row.taken_over:
                    metrics.IDEMPOTENCY_TAKEOVERS.inc()
                if not row.claimed:
                    if lock.held:
                        await keys.unlock(conn, who.scope, who.key)
                        lock.held = False
                    return self._answer_of_other(who, row)
                reply = await self._own(conn, who, work, before, row, refused, lock)
            except BaseException:
                if lock.held:  # PostgreSQL drops the lock with the connection
                    terminate(conn)
                raise
        if not reply.replayed:
            self._remember(who, reply.status, reply.body)
        return reply

    async def _own(self, conn: Connection, who: RequestIdentity, work: Work, before: Check | None,
                   row: keys.KeyRow, refused: Refused | None, lock: _KeyLock) -> Reply:
        """Run a claimed key's request. Its answer is stored only while the key is still ours; a request
        that finds its key taken over (it stalled past ``lock_timeout_s`` and a retry ran) answers what
        the new owner stored, or a retryable 409, never an answer of its own."""
        assert row.locked_at is not None and who.key is not None
        locked_at, key = row.locked_at, who.key

        async def guarded(conn: Connection) -> Reply:
            status, value = await work(conn)
            body = _encode(status, value)
            ours = await keys.complete(conn, who.scope, key, locked_at, status, body, lock.held)
            lock.held = False  # session-level: freed even if this transaction is rolled back or retried
            if not ours:
                raise _TakenOver()  # rolls our work back
            return Reply(status, body)

        try:
            if before is not None:
                await before(conn)
            return await self.db.run(guarded, conn)
        except _TakenOver:
            return await self._answer_after_takeover(conn, who)
        except (IdempotencyInUse, Unavailable):
            await self._release(conn, who, locked_at, lock)
            raise
        except GatewayError as exc:
            body = msgspec.json.encode(exc.body(who.request_id))
            if refused is None:
                stored = await keys.complete(conn, who.scope, key, locked_at, exc.status, body, lock.held)
                lock.held = False
            else:
                failure, record = exc, refused
                try:
                    stored = await self.db.run(
                        lambda c: self._refuse(c, failure, record, who, key, locked_at, body, lock), conn)
                except _NotOurs:
                    stored = False
            if stored:
                return Reply(exc.status, body)
            return await self._answer_after_takeover(conn, who)
        except BaseException:
            await self._release(conn, who, locked_at, lock)
            raise

    @staticmethod
    async def _refuse(conn: Connection, exc: GatewayError, refused: Refused, who: RequestIdentity, key: str,
                      locked_at: Any, body: bytes, lock: _KeyLock) -> bool:
        await refused(conn, exc)
        ours = await keys.complete(conn, who.scope, key, locked_at, exc.status, body, lock.held)
        lock.held = False
        if not ours:
            raise _NotOurs()  # the key was taken over: what ``refused`` wrote is rolled back
        return True

    def _answer_of_other(self, who: RequestIdentity, row: keys.KeyRow) -> Reply:
        """The answer for a key another request owns: its stored response, or 409 while it runs."""
        if row.response_status is not None and row.response_body is not None:
            return self._replay(who, row.request_hash, row.response_status, row.response_body, source="database")
        if row.request_hash != who.fingerprint:
            raise IdempotencyError("this Idempotency-Key was used with different parameters", param="Idempotency-Key")
        raise IdempotencyInUse(
            "a request with this Idempotency-Key is still being processed; retry shortly", param="Idempotency-Key"
        )

    async def _answer_after_takeover(self, conn: Connection, who: RequestIdentity) -> Reply:
        assert who.key is not None
        log.warning("idempotency key taken over while its request ran; answering the new owner's answer")
        row = await keys.stored(conn, who.scope, who.key)
        if row is None:  # the new owner gave the key up (nothing done): the client retries afresh
            raise IdempotencyInUse("the Idempotency-Key was taken over by a retry; retry", param="Idempotency-Key")
        return self._answer_of_other(who, row)

    async def _release(self, conn: Connection, who: RequestIdentity, locked_at: Any, lock: _KeyLock) -> None:
        """Give the key up on the connection that holds its lock; if that fails, the caller closes the
        connection (PostgreSQL then drops the lock and a retry takes the key over at once)."""
        try:
            async with asyncio.timeout(self.db.settings.command_timeout_s):
                await keys.release(conn, who.scope, who.key or "", locked_at, lock.held)
            lock.held = False
        except Exception:
            log.warning("could not release idempotency key; its connection will be closed", exc_info=True)

    async def _run_plain(self, who: RequestIdentity, work: Work, before: Check | None,
                         refused: Refused | None) -> Reply:
        async def plain(conn: Connection) -> Reply:
            status, value = await work(conn)
            return Reply(status, _encode(status, value))

        async with self.db.connection() as conn:
            try:
                if before is not None:
                    await before(conn)
                return await self.db.run(plain, conn)
            except GatewayError as exc:
                if refused is not None and not isinstance(exc, (IdempotencyInUse, Unavailable)):
                    failure = exc
                    await self.db.run(lambda c: refused(c, failure), conn)
                raise
