"""Idempotency key rows (see ``services/idempotency.py`` for the protocol).

A row is either *started* (``locked_at`` set, no response) or *done* (response stored,
``locked_at`` NULL). Only the request holding the lock value it wrote may complete or release it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.store.db import Connection


@dataclass(frozen=True, slots=True)
class KeyRow:
    request_hash: bytes
    locked_at: datetime | None
    response_status: int | None
    response_body: bytes | None
    claimed: bool  # True when this call created or took over the row


async def claim(
    conn: Connection, principal: str, key: str, request_hash: bytes, method: str, path: str, lock_timeout_s: int
) -> KeyRow:
    """Insert the key as started, take over one abandoned longer than ``lock_timeout_s``, or return it as is."""
    row = await conn.fetchrow(
        """
        WITH ins AS (
            INSERT INTO idempotency_keys (principal, key, request_hash, method, path, locked_at)
            VALUES ($1, $2, $3, $4, $5, clock_timestamp())
            ON CONFLICT (principal, key) DO NOTHING
            RETURNING request_hash, locked_at, response_status, response_body, true AS claimed
        ), takeover AS (
            UPDATE idempotency_keys SET locked_at = clock_timestamp()
             WHERE principal = $1 AND key = $2 AND request_hash = $3 AND response_status IS NULL
               AND locked_at < clock_timestamp() - make_interval(secs => $6)
               AND NOT EXISTS (SELECT 1 FROM ins)
            RETURNING request_hash, locked_at, response_status, response_body, true AS claimed
        )
        SELECT * FROM ins
        UNION ALL SELECT * FROM takeover
        UNION ALL
        SELECT request_hash, locked_at, response_status, response_body, false FROM idempotency_keys
         WHERE principal = $1 AND key = $2 AND NOT EXISTS (SELECT 1 FROM ins) AND NOT EXISTS (SELECT 1 FROM takeover)
        LIMIT 1
        """,
        principal, key, request_hash, method, path, float(lock_timeout_s),
    )
    if row is None:
        # The row vanished between the conflict and the read (reaped or released): claim again.
        return await claim(conn, principal, key, request_hash, method, path, lock_timeout_s)
    return KeyRow(row["request_hash"], row["locked_at"], row["response_status"], row["response_body"], row["claimed"])


async def complete(
    conn: Connection, principal: str, key: str, locked_at: datetime, status: int, body: bytes
) -> bool:
    """Store the response; False if the lock is no longer ours (another request took the key over)."""
    result = await conn.execute(
        "UPDATE idempotency_keys SET response_status = $4, response_body = $5, locked_at = NULL"
        " WHERE principal = $1 AND key = $2 AND locked_at = $3",
        principal, key, locked_at, status, body,
    )
    return bool(result.endswith(" 1"))


async def release(conn: Connection, principal: str, key: str, locked_at: datetime) -> None:
    await conn.execute(
        "DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2 AND locked_at = $3", principal, key, locked_at
    )


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
