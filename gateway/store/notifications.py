"""Holder notifications and their push bookkeeping (migration 0016).

Invariants:
- every read and change is scoped by holder: another holder's notification is simply not found;
- marking read sets ``read_at`` once (``COALESCE``): a repeat changes nothing and answers the same;
- a push is claimed under ``FOR UPDATE SKIP LOCKED`` and leased by moving ``push_next_at`` past the
  attempt's timeout in one short transaction (no transaction stays open during HTTP); a worker that
  dies mid-attempt leaves it due again when the lease ends (at least once); an outcome is recorded
  only while the notification is still pending and only for the attempt that holds the lease
  (``push_attempts`` unchanged since the claim), so a late answer never overwrites a newer one.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from gateway.store import pages
from gateway.store.db import Connection, one

_NOTIFICATION = "id, holder_id, kind, data::text AS data, created_at, read_at"


async def insert(conn: Connection, notification_id: uuid.UUID, holder_id: uuid.UUID, kind: str, data: Any,
                 *, push: bool) -> asyncpg.Record:
    """``push``: a hook is configured, so the notification is due for pushing at once."""
    return await one(
        conn,
        f"INSERT INTO notifications (id, holder_id, kind, data, push_status, push_next_at)"
        f" VALUES ($1, $2, $3, $4::jsonb, CASE WHEN $5 THEN 'pending' ELSE 'none' END,"
        f"         CASE WHEN $5 THEN now() END)"
        f" RETURNING {_NOTIFICATION}",
        notification_id, holder_id, kind, msgspec.json.encode(data).decode(), push,
    )


def holder_notifications(holder_id: uuid.UUID, unread_only: bool) -> pages.Query:
    """Newest first (served by notifications_holder, or notifications_holder_unread)."""
    return pages.Query(columns=_NOTIFICATION, source="notifications", key=("created_at", "id"),
                       scope=(pages.cond("holder_id = {}", holder_id),),
                       filters=(pages.cond("read_at IS NULL"),) if unread_only else ())


async def mark_read(conn: Connection, notification_id: uuid.UUID, holder_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"UPDATE notifications SET read_at = COALESCE(read_at, now()) WHERE id = $1 AND holder_id = $2"
        f" RETURNING {_NOTIFICATION}",
        notification_id, holder_id,
    )
    return row


async def claim_pushes(conn: Connection, limit: int, lease_s: float) -> list[asyncpg.Record]:
    """Lease up to ``limit`` due pushes for one attempt each (one statement: lock, skip what another
    worker holds, move the lease, count the attempt)."""
    return list(await conn.fetch(
        """
        WITH due AS (
            SELECT id FROM notifications WHERE push_status = 'pending' AND push_next_at <= now()
             ORDER BY push_next_at LIMIT $1 FOR UPDATE SKIP LOCKED
        )
        UPDATE notifications n
           SET push_next_at = now() + make_interval(secs => $2), push_attempts = n.push_attempts + 1
          FROM due WHERE n.id = due.id
        RETURNING n.id, n.holder_id, n.kind, n.data::text AS data, n.created_at, n.read_at, n.push_attempts
        """,
        limit, lease_s,
    ))


async def record_push(conn: Connection, notification_id: uuid.UUID, attempts: int, *, pushed: bool,
                      next_at: datetime | None, error: str | None) -> bool:
    """The attempt's outcome: pushed, due again at ``next_at``, or failed for good (neither). False (nothing
    changed) when the notification is no longer in that attempt's hands."""
    status = await conn.execute(
        """
        UPDATE notifications
           SET push_status = CASE WHEN $3 THEN 'pushed' WHEN $4::timestamptz IS NULL THEN 'failed' ELSE 'pending' END,
               pushed_at = CASE WHEN $3 THEN now() END,
               push_next_at = CASE WHEN $3 THEN NULL ELSE $4 END,
               push_error = CASE WHEN $3 THEN NULL ELSE $5 END
         WHERE id = $1 AND push_status = 'pending' AND push_attempts = $2
        """,
        notification_id, attempts, pushed, next_at, error,
    )
    return bool(status.endswith(" 1"))


async def push_states(conn: Connection, notification_ids: Sequence[uuid.UUID]) -> list[asyncpg.Record]:
    """Push bookkeeping of some notifications (operations and tests)."""
    return list(await conn.fetch(
        "SELECT id, push_status, push_attempts, pushed_at, push_error FROM notifications WHERE id = ANY($1::uuid[])",
        list(notification_ids),
    ))
