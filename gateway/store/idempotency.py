"""Idempotency key rows (see ``services/idempotency.py`` for the protocol).

A row is either *started* (``locked_at`` set, no response) or *done* (response stored,
``locked_at`` NULL). Only the request holding the lock value it wrote may complete or release it.

Liveness: the request that owns a started row also holds a session-level advisory lock on the
key (``_KEY_LOCK``), taken in the claiming statement on the connection that does the work.
PostgreSQL drops it with the owner's connection, so a started row whose key lock is free belongs
to a dead request and is taken over at once; a row whose lock is still held (a stalled but
connected owner) only after ``lock_timeout_s``. The lock is a hint for liveness, never the guard
of correctness: that is the ``locked_at`` compare-and-set in ``complete``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.store.db import Connection

# One 64-bit advisory key per (principal, key); a collision only delays a take-over to the timeout.
_KEY_LOCK = "hashtextextended($1 || chr(31) || $2, 0)"


@dataclass(frozen=True, slots=True)
class KeyRow:
    request_hash: bytes
    locked_at: datetime | None
    response_status: int | None
    response_body: bytes | None
    claimed: bool  # True when this call created or took over the row
    key_locked: bool  # True when this connection now holds the key's liveness lock
    taken_over: bool = False  # True when this call took the row over from a request that died or stalled


async def claim(
    conn: Connection, principal: str, key: str, request_hash: bytes, method: str, path: str, lock_timeout_s: int
) -> KeyRow:
    """Insert the key as started, take over one whose owner is gone (its key lock is free) or that
    was abandoned longer than ``lock_timeout_s``, or return it as is."""
    row = await conn.fetchrow(
        f"""
        WITH lk AS MATERIALIZED (SELECT pg_try_advisory_lock({_KEY_LOCK}) AS got),
        ins AS (
            INSERT INTO idempotency_keys (principal, key, request_hash, method, path, locked_at)
            VALUES ($1, $2, $3, $4, $5, clock_timestamp())
            ON CONFLICT (principal, key) DO NOTHING
            RETURNING request_hash, locked_at, response_status, response_body, true AS claimed, false AS taken_over
        ), takeover AS (
            UPDATE idempotency_keys SET locked_at = clock_timestamp()
             WHERE principal = $1 AND key = $2 AND request_hash = $3 AND response_status IS NULL
               AND ((SELECT got FROM lk) OR locked_at < clock_timestamp() - make_interval(secs => $6))
               AND NOT EXISTS (SELECT 1 FROM ins)
            RETURNING request_hash, locked_at, response_status, response_body, true AS claimed, true AS taken_over
        ), found AS (
            SELECT * FROM ins
            UNION ALL SELECT * FROM takeover
            UNION ALL
            SELECT request_hash, locked_at, response_status, response_body, false, false FROM idempotency_keys
             WHERE principal = $1 AND key = $2 AND NOT EXISTS (SELECT 1 FROM ins)
               AND NOT EXISTS (SELECT 1 FROM takeover)
            LIMIT 1
        )
        SELECT lk.got AS key_locked, found.* FROM lk LEFT JOIN found ON true
        """,
        principal, key, request_hash, method, path, float(lock_timeout_s),
    )
    assert row is not None  # the LEFT JOIN always yields the lock row
    if row["request_hash"] is None:
        # The row vanished between the conflict and the read (reaped or released): claim again.
        if row["key_locked"]:
            await unlock(conn, principal, key)
        return await claim(conn, principal, key, request_hash, method, path, lock_timeout_s)
    return KeyRow(row["request_hash"], row["locked_at"], row["response_status"], row["response_body"],
                  row["claimed"], row["key_locked"], row["taken_over"])


async def complete(
    conn: Connection, principal: str, key: str, locked_at: datetime, status: int, body: bytes, unlock_key: bool
) -> bool:
    """Store the response (and free the key lock when ``unlock_key``); False if the row is no longer
    ours (another request took the key over). The lock is session-level, so it is free from this
    statement on even if the transaction around it is still open: a newcomer then waits on the
    row lock this UPDATE holds and, once it commits, finds the stored response."""
    done: int = await conn.fetchval(
        f"""
        WITH done AS (
            UPDATE idempotency_keys SET response_status = $4, response_body = $5, locked_at = NULL
             WHERE principal = $1 AND key = $2 AND locked_at = $3
            RETURNING 1
        ), freed AS MATERIALIZED (SELECT pg_advisory_unlock({_KEY_LOCK}) WHERE $6::boolean)
        SELECT (SELECT count(*) FROM done) + 0 * (SELECT count(*) FROM freed)
        """,
        principal, key, locked_at, status, body, unlock_key,
    )
    return done == 1


async def release(conn: Connection, principal: str, key: str, locked_at: datetime, unlock_key: bool) -> None:
    """Give the key up (nothing was done): a retry runs afresh."""
    await conn.execute(
        f"""
        WITH gone AS (DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2 AND locked_at = $3 RETURNING 1),
        freed AS MATERIALIZED (SELECT pg_advisory_unlock({_KEY_LOCK}) WHERE $4::boolean)
        SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM freed)
        """,
        principal, key, locked_at, unlock_key,
    )


async def unlock(conn: Connection, principal: str, key: str) -> None:
    await conn.execute(f"SELECT pg_advisory_unlock({_KEY_LOCK})", principal, key)


async def stored(conn: Connection, principal: str, key: str) -> KeyRow | None:
    """The key's row as it is now (to answer a request whose key another request took over)."""
    row = await conn.fetchrow(
        "SELECT request_hash, locked_at, response_status, response_body FROM idempotency_keys"
        " WHERE principal = $1 AND key = $2",
        principal, key,
    )
    if row is None:
        return None
    return KeyRow(row["request_hash"], row["locked_at"], row["response_status"], row["response_body"], False, False)


async def reap(conn: Connection, retention_s: int, limit: int) -> int:
    """Delete keys older than the retention (a key still started by then was abandoned); returns how many."""
    result = await conn.execute(
        """
        DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM idempotency_keys
             WHERE created_at < now() - make_interval(secs => $1)
             LIMIT $2 FOR UPDATE SKIP LOCKED))
        """,
        float(retention_s), limit,
    )
    return int(result.split()[-1])


@dataclass(frozen=True, slots=True)
class Done:
    """A key stored as done by the statement that does its request's work (a use case in one statement)."""

    principal: str
    key: str
    request_hash: bytes
    method: str
    path: str
    status: int
    body: bytes

    def args(self) -> tuple[object, ...]:
        """The statement arguments ``done_cte`` numbers, in its order."""
        return self.principal, self.key, self.request_hash, self.method, self.path, self.status, self.body


# Raised by gateway_at_once() (migration 0015) when a guard of a one-statement use case failed.
AT_ONCE_REFUSED = "GW001"


def done_cte(first: int, after: str) -> str:
    """CTE ``k``: the key row, inserted as done (arguments ``$first``..``$first+6`` in ``Done.args`` order)
    once CTE ``after`` has a row; an existing key (done, or started by a request in flight) inserts
    nothing, and the statement's guard then requires ``(SELECT count(*) FROM k) = 1``."""
    n = [f"${first + i}" for i in range(7)]
    return f"""
        k AS (
            INSERT INTO idempotency_keys (principal, key, request_hash, method, path, response_status, response_body)
            SELECT {", ".join(n)} FROM {after} LIMIT 1
            ON CONFLICT (principal, key) DO NOTHING
            RETURNING 1
        )"""
