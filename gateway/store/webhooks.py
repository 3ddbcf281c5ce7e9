"""Webhook endpoints, deliveries and their attempts (the outbox the fan-out trigger of 0006 fills).

Invariants:
- every lookup is scoped by merchant: another merchant's endpoint or delivery is simply not found;
- a delivery is claimed under ``FOR UPDATE SKIP LOCKED`` and leased by moving ``next_attempt_at``
  past the attempt's timeout, in one short transaction: no transaction stays open during HTTP, and a
  worker that dies mid-attempt leaves the delivery due again when its lease ends (at least once);
- an attempt's result is recorded only while the delivery is still pending.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime

import asyncpg

from gateway.store import db, pages
from gateway.store.db import Connection, one
from gateway.store.db import ping as ping

CHANNEL = "webhook_deliveries"
_ENDPOINT = (
    "id, merchant_id, url, description, enabled_events, status, disabled_reason, secret_sealed,"
    " previous_secret_sealed, previous_secret_expires_at, failing_since, created_at, updated_at"
)
_DELIVERY = (
    "d.id, d.event_id, d.endpoint_id, d.status, d.attempt_count, d.next_attempt_at, d.delivered_at, d.created_at,"
    " ev.type AS event_type"
)
_ATTEMPTS_SHOWN = 10


async def insert_endpoint(
    conn: Connection, endpoint_id: uuid.UUID, merchant_id: uuid.UUID, url: str, description: str | None,
    enabled_events: Sequence[str], secret_sealed: bytes,
) -> asyncpg.Record:
    return await one(
        conn,
        f"INSERT INTO webhook_endpoints (id, merchant_id, url, description, enabled_events, secret_sealed)"
        f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_ENDPOINT}",
        endpoint_id, merchant_id, url, description, list(enabled_events), secret_sealed,
    )


async def lock_merchant_endpoints(conn: Connection, merchant_id: uuid.UUID) -> int:
    """How many endpoints the merchant has, with the merchant row locked (concurrent creations queue)."""
    await conn.execute("SELECT 1 FROM merchants WHERE id = $1 FOR UPDATE", merchant_id)
    count: int = await conn.fetchval("SELECT count(*) FROM webhook_endpoints WHERE merchant_id = $1", merchant_id)
    return count


async def endpoint(
    conn: Connection, endpoint_id: uuid.UUID, merchant_id: uuid.UUID, *, for_update: bool = False
) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE id = $1 AND merchant_id = $2{lock}", endpoint_id, merchant_id
    )
    return row


def merchant_endpoints(merchant_id: uuid.UUID) -> pages.Query:
    """Newest first (served by webhook_endpoints_merchant)."""
    return pages.Query(columns=_ENDPOINT, source="webhook_endpoints", key=("created_at", "id"),
                       scope=(pages.cond("merchant_id = {}", merchant_id),))


async def update_endpoint(
    conn: Connection, endpoint_id: uuid.UUID, merchant_id: uuid.UUID, *, url: str | None,
    description: str | None, enabled_events: Sequence[str] | None, status: str | None, reason: str | None,
) -> asyncpg.Record | None:
    """Change what is given (None keeps it). Enabling clears the failure history and the reason."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""
        UPDATE webhook_endpoints
           SET url = COALESCE($3, url), description = COALESCE($4, description),
               enabled_events = COALESCE($5, enabled_events), status = COALESCE($6, status),
               disabled_reason = CASE WHEN $6 IS NULL THEN disabled_reason WHEN $6 = 'enabled' THEN NULL ELSE $7 END,
               failing_since = CASE WHEN $6 = 'enabled' THEN NULL ELSE failing_since END,
               updated_at = now()
         WHERE id = $1 AND merchant_id = $2
        RETURNING {_ENDPOINT}
        """,
        endpoint_id, merchant_id, url, description, list(enabled_events) if enabled_events is not None else None,
        status, reason,
    )
    return row


async def rotate_secret(
    conn: Connection, endpoint_id: uuid.UUID, merchant_id: uuid.UUID, secret_sealed: bytes,
    previous_sealed: bytes | None, previous_expires_at: datetime | None,
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""
        UPDATE webhook_endpoints SET secret_sealed = $3, previous_secret_sealed = $4,
               previous_secret_expires_at = $5, updated_at = now()
         WHERE id = $1 AND merchant_id = $2
        RETURNING {_ENDPOINT}
        """,
        endpoint_id, merchant_id, secret_sealed, previous_sealed, previous_expires_at,
    )
    return row


async def delete_endpoint(conn: Connection, endpoint_id: uuid.UUID, merchant_id: uuid.UUID) -> bool:
    """Deleting an endpoint drops its deliveries and their attempts with it."""
    status = await conn.execute("DELETE FROM webhook_endpoints WHERE id = $1 AND merchant_id = $2",
                                endpoint_id, merchant_id)
    return bool(status.endswith(" 1"))


def endpoint_deliveries(endpoint_id: uuid.UUID, merchant_id: uuid.UUID, status: str | None) -> pages.Query:
    """Newest first, each with its latest attempts (as JSON text, newest first); served by
    webhook_deliveries_endpoint."""
    columns = f"""{_DELIVERY},
               (SELECT COALESCE(json_agg(a ORDER BY a.id DESC), '[]')::text FROM (
                    SELECT id, attempted_at, status_code, latency_ms, error, response_excerpt
                      FROM webhook_attempts WHERE delivery_id = d.id ORDER BY id DESC LIMIT {_ATTEMPTS_SHOWN}) a
               ) AS attempts"""
    return pages.Query(
        columns=columns,
        source="webhook_deliveries d JOIN events ev ON ev.id = d.event_id AND ev.created_at = d.event_created_at",
        key=("d.created_at", "d.id"), id_column="d.id",
        scope=(pages.cond("d.endpoint_id = {}", endpoint_id), pages.cond("d.merchant_id = {}", merchant_id)),
        filters=(pages.cond("d.status = {}", status),) if status is not None else (),
    )


async def redeliver(
    conn: Connection, event_id: uuid.UUID, event_type: str, merchant_id: uuid.UUID, endpoint_id: uuid.UUID | None
) -> list[asyncpg.Record]:
    """Queue the event again (now) for the merchant's matching enabled endpoints, or for one endpoint
    whatever its events; a delivery that exists is reset (same id: receivers dedupe on it)."""
    rows = list(await conn.fetch(
        f"""
        WITH queued AS (
            INSERT INTO webhook_deliveries AS d (id, event_id, event_created_at, endpoint_id, merchant_id)
            SELECT gen_random_uuid(), $1, ev.created_at, e.id, $3 FROM webhook_endpoints e, events ev
             WHERE ev.id = $1 AND e.merchant_id = $3 AND e.status = 'enabled'
               AND (CASE WHEN $4::uuid IS NULL THEN '*' = ANY (e.enabled_events) OR $2 = ANY (e.enabled_events)
                         ELSE e.id = $4 END)
            ON CONFLICT (event_id, endpoint_id) DO UPDATE
               SET status = 'pending', next_attempt_at = now(), window_start_at = now(), delivered_at = NULL
            RETURNING d.*
        )
        SELECT {_DELIVERY}, '[]' AS attempts FROM queued d
          JOIN events ev ON ev.id = d.event_id AND ev.created_at = d.event_created_at
        """,
        event_id, event_type, merchant_id, endpoint_id,
    ))
    if rows:
        await conn.execute("SELECT pg_notify($1, '')", CHANNEL)
    return rows


async def due(
    conn: Connection, limit: int, busy_endpoints: Sequence[uuid.UUID]
) -> list[asyncpg.Record]:
    """Due deliveries of enabled endpoints, locked, skipping rows another worker holds and the
    endpoints this worker has no room for. Call inside a transaction, then ``lease`` the ones taken."""
    return list(await conn.fetch(
        """
        SELECT d.id, d.endpoint_id FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
         WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND e.status = 'enabled'
           AND NOT (d.endpoint_id = ANY ($2::uuid[]))
         ORDER BY d.next_attempt_at LIMIT $1
           FOR UPDATE OF d SKIP LOCKED
        """,
        limit, list(busy_endpoints),
    ))


async def lease(conn: Connection, delivery_ids: Sequence[uuid.UUID], lease_s: float) -> list[asyncpg.Record]:
    """Take the deliveries for one attempt each: what the attempt needs (event, endpoint, secrets)."""
    return list(await conn.fetch(
        """
        UPDATE webhook_deliveries d
           SET next_attempt_at = now() + make_interval(secs => $2), attempt_count = d.attempt_count + 1
          FROM events ev, webhook_endpoints e
         WHERE d.id = ANY ($1::uuid[]) AND ev.id = d.event_id AND ev.created_at = d.event_created_at
           AND e.id = d.endpoint_id
        RETURNING d.id, d.endpoint_id, d.merchant_id, d.attempt_count, d.window_start_at, ev.id AS event_id,
                  ev.type, ev.data::text AS data, ev.created_at, ev.actor_type, ev.actor_id, ev.request_id, e.url,
                  e.secret_sealed, e.previous_secret_sealed, e.previous_secret_expires_at, now() AS leased_at
        """,
        list(delivery_ids), lease_s,
    ))


async def record_attempt(
    conn: Connection, delivery_id: uuid.UUID, attempted_at: datetime, status_code: int | None, latency_ms: int,
    error: str | None, excerpt: str | None, outcome: str, next_attempt_at: datetime | None,
) -> bool:
    """Store an attempt and its outcome ('succeeded', 'failed', or 'pending' with the next attempt's
    time); False (nothing stored) if the delivery is no longer pending (redelivered meanwhile, deleted)."""
    done: int = await conn.fetchval(
        """
        WITH moved AS (
            UPDATE webhook_deliveries
               SET status = $7, next_attempt_at = COALESCE($8, next_attempt_at),
                   delivered_at = CASE WHEN $7 = 'succeeded' THEN $2 ELSE delivered_at END
             WHERE id = $1 AND status = 'pending'
            RETURNING id
        ), kept AS (
            INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, latency_ms, error, response_excerpt)
            SELECT id, $2, $3, $4, $5, $6 FROM moved
            RETURNING 1
        )
        SELECT count(*) FROM kept
        """,
        delivery_id, attempted_at, status_code, latency_ms, error, excerpt, outcome, next_attempt_at,
    )
    return done == 1


async def endpoint_succeeded(conn: Connection, endpoint_id: uuid.UUID) -> None:
    await conn.execute("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL",
                       endpoint_id)


async def endpoint_failed(conn: Connection, endpoint_id: uuid.UUID, now: datetime) -> asyncpg.Record | None:
    """Mark the endpoint failing since now (unless it already was); the row, locked."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, $2) WHERE id = $1 RETURNING {_ENDPOINT}",
        endpoint_id, now,
    )
    return row


async def listen(url: str, on_notify: Callable[[], None], timeout_s: float) -> asyncpg.Connection[asyncpg.Record]:
    """A dedicated connection LISTENing on the delivery channel; ``on_notify`` runs at each notification."""
    return await db.listen(url, CHANNEL, lambda _payload: on_notify(), timeout_s)
