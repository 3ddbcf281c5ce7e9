"""Failed sign-ins per account (``login_failures``): counted and locked in one statement.

Invariants: an attempt on an account that is not locked is counted, and its lockout set, by one
conditional upsert, so concurrent attempts from any number of processes serialise on the row and
none slips past a lockout another has just set; an attempt on a locked account changes nothing.
"""

from __future__ import annotations

from datetime import datetime

from gateway.store.db import Connection

# $3 now, $4 forget failures last seen before this, $5 lockout_s per failure count (the last repeats).
_FAILURES = "CASE WHEN f.updated_at < $4::timestamptz THEN 1 ELSE f.failures + 1 END"
_COUNT_ATTEMPT = f"""
INSERT INTO login_failures AS f (kind, subject_hash, failures, locked_until, updated_at)
VALUES ($1, $2, 1, CASE WHEN ($5::int[])[1] > 0 THEN $3::timestamptz + make_interval(secs => ($5::int[])[1]) END, $3)
ON CONFLICT (kind, subject_hash) DO UPDATE SET
    failures = {_FAILURES},
    locked_until = CASE WHEN ($5::int[])[LEAST({_FAILURES}, cardinality($5::int[]))] > 0
                        THEN $3::timestamptz + make_interval(secs => ($5::int[])[LEAST({_FAILURES}, cardinality($5::int[]))]) END,
    updated_at = $3
WHERE f.locked_until IS NULL OR f.locked_until <= $3
RETURNING failures
"""


async def count_attempt(
    conn: Connection, kind: str, subject_hash: bytes, now: datetime, forget_before: datetime, lockout_s: list[int]
) -> datetime | None:
    """Count an attempt as a failure unless the account is locked; returns the end of the lockout if it is."""
    counted = await conn.fetchval(_COUNT_ATTEMPT, kind, subject_hash, now, forget_before, lockout_s)
    if counted is not None:
        return None
    locked_until: datetime | None = await conn.fetchval(
        "SELECT locked_until FROM login_failures WHERE kind = $1 AND subject_hash = $2", kind, subject_hash
    )
    # A lockout that ended between the two statements still refuses this one attempt (for a second).
    return locked_until if locked_until is not None and locked_until > now else now


async def forget(conn: Connection, kind: str, subject_hash: bytes) -> bool:
    """Reset the account's failures and lockout (a success, or an operator); False if there were none."""
    deleted = await conn.fetchval(
        "DELETE FROM login_failures WHERE kind = $1 AND subject_hash = $2 RETURNING true", kind, subject_hash
    )
    return deleted is True


async def reap(conn: Connection, quiet_since: datetime, limit: int) -> int:
    """Forget accounts whose last failure is older than ``quiet_since`` and that are not locked (the
    count would restart at 1 anyway: see ``_FAILURES``); returns how many rows went."""
    result = await conn.execute(
        """
        DELETE FROM login_failures WHERE ctid = ANY(ARRAY(
            SELECT ctid FROM login_failures
             WHERE updated_at < $1 AND (locked_until IS NULL OR locked_until < $1)
             LIMIT $2 FOR UPDATE SKIP LOCKED))
        """,
        quiet_since, limit,
    )
    return int(result.split()[-1])
