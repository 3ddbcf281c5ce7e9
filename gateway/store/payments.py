"""Payments, refunds and the event rows written with them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg
import msgspec

from gateway.domain.payments import CaptureMethod, Payment, Status
from gateway.store.db import Connection, one

_COLUMNS = (
    "id, merchant_id, amount_minor, currency, status, capture_method, expires_at, payer_id,"
    " authorized_minor, captured_minor, refunded_minor, fee_minor, authorization_expires_at, confirm_by"
)
_EXTRA = (
    "store_id, terminal_id, merchant_reference, description, fee_bps, fee_fixed_minor, wallet_account_id, channel, created_at,"
    " updated_at, spend_day, return_url, cancel_url"
)


def to_domain(row: asyncpg.Record) -> Payment:
    return Payment(
        id=row["id"],
        merchant_id=row["merchant_id"],
        amount_minor=row["amount_minor"],
        currency=row["currency"],
        status=Status(row["status"]),
        capture_method=CaptureMethod(row["capture_method"]),
        expires_at=row["expires_at"],
        payer_id=row["payer_id"],
        authorized_minor=row["authorized_minor"],
        captured_minor=row["captured_minor"],
        refunded_minor=row["refunded_minor"],
        fee_minor=row["fee_minor"],
        authorization_expires_at=row["authorization_expires_at"],
        confirm_by=row["confirm_by"],
    )


async def insert(
    conn: Connection,
    payment: Payment,
    *,
    store_id: uuid.UUID | None,
    terminal_id: uuid.UUID | None,
    merchant_reference: str | None,
    description: str | None,
    fee_bps: int,
    channel: str | None = None,
    terminal_transaction_id: str | None = None,
    return_url: str | None = None,
    cancel_url: str | None = None,
) -> asyncpg.Record:
    row = await one(
        conn,
        f"""
        INSERT INTO payments (id, merchant_id, store_id, terminal_id, amount_minor, currency, status,
                              capture_method, merchant_reference, description, expires_at, fee_bps, channel,
                              terminal_transaction_id, return_url, cancel_url, fee_fixed_minor)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                (SELECT fee_fixed_minor FROM merchants WHERE id = $2))
        RETURNING {_COLUMNS}, {_EXTRA}
        """,
        payment.id, payment.merchant_id, store_id, terminal_id, payment.amount_minor, payment.currency,
        payment.status.value, payment.capture_method.value, merchant_reference, description,
        payment.expires_at, fee_bps, channel, terminal_transaction_id, return_url, cancel_url,
    )
    return row


async def get(
    conn: Connection, payment_id: uuid.UUID, *, merchant_id: uuid.UUID | None = None, for_update: bool = False
) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    scope = " AND merchant_id = $2" if merchant_id is not None else ""
    args: list[Any] = [payment_id] + ([merchant_id] if merchant_id is not None else [])
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_COLUMNS}, {_EXTRA} FROM payments WHERE id = $1{scope}{lock}", *args
    )
    return row


async def update(
    conn: Connection, payment: Payment, *, wallet_account_id: int | None = None, channel: str | None = None,
    spend_day: date | None = None, terminal_transaction_id: str | None = None,
) -> asyncpg.Record:
    row = await one(
        conn,
        f"""
        UPDATE payments SET status = $2, payer_id = $3, authorized_minor = $4, captured_minor = $5,
               refunded_minor = $6, fee_minor = $7, authorization_expires_at = $8,
               wallet_account_id = COALESCE($9, wallet_account_id), confirm_by = $10,
               channel = COALESCE($11, channel), spend_day = COALESCE($12, spend_day),
               terminal_transaction_id = COALESCE($13, terminal_transaction_id), updated_at = now()
         WHERE id = $1
        RETURNING {_COLUMNS}, {_EXTRA}, (SELECT name FROM merchants m WHERE m.id = payments.merchant_id) AS merchant_name
        """,
        payment.id, payment.status.value, payment.payer_id, payment.authorized_minor, payment.captured_minor,
        payment.refunded_minor, payment.fee_minor, payment.authorization_expires_at, wallet_account_id,
        payment.confirm_by, channel, spend_day, terminal_transaction_id,
    )
    return row


async def awaiting_confirmation(conn: Connection, holder_id: uuid.UUID) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            f"SELECT {_COLUMNS}, {_EXTRA} FROM payments WHERE payer_id = $1 AND status = 'requires_action'"
            " ORDER BY created_at DESC LIMIT 20",
            holder_id,
        )
    )


async def list_for_merchant(
    conn: Connection, merchant_id: uuid.UUID, limit: int, after: uuid.UUID | None, before: uuid.UUID | None,
    merchant_reference: str | None = None,
) -> list[asyncpg.Record]:
    """Newest first; ``after``/``before`` are cursors (ids of payments of the same merchant)."""
    if after is not None:
        cond, order = "(created_at, id) < (SELECT created_at, id FROM payments WHERE id = $3 AND merchant_id = $1)", "DESC"
        cursor: uuid.UUID | None = after
    elif before is not None:
        cond, order = "(created_at, id) > (SELECT created_at, id FROM payments WHERE id = $3 AND merchant_id = $1)", "ASC"
        cursor = before
    else:
        cond, order, cursor = "$3::uuid IS NULL", "DESC", None
    rows = await conn.fetch(
        f"SELECT {_COLUMNS}, {_EXTRA} FROM payments WHERE merchant_id = $1 AND {cond}"
        f" AND ($4::text IS NULL OR merchant_reference = $4)"
        f" ORDER BY created_at {order}, id {order} LIMIT $2",
        merchant_id, limit + 1, cursor, merchant_reference,
    )
    return list(rows) if order == "DESC" else list(reversed(rows))


async def exists_for_merchant(conn: Connection, payment_id: uuid.UUID, merchant_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM payments WHERE id = $1 AND merchant_id = $2", payment_id, merchant_id))


async def insert_refund(
    conn: Connection, refund_id: uuid.UUID, payment: Payment, amount_minor: int, fee_back_minor: int, reason: str | None
) -> asyncpg.Record:
    row = await one(
        conn,
        """
        INSERT INTO refunds (id, payment_id, merchant_id, amount_minor, fee_back_minor, currency, reason)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        RETURNING id, payment_id, merchant_id, amount_minor, fee_back_minor, currency, reason, status, created_at
        """,
        refund_id, payment.id, payment.merchant_id, amount_minor, fee_back_minor, payment.currency, reason,
    )
    return row


async def refunds_of(conn: Connection, payment_id: uuid.UUID) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT id, payment_id, merchant_id, amount_minor, fee_back_minor, currency, reason, status, created_at"
            " FROM refunds WHERE payment_id = $1 ORDER BY created_at DESC, id DESC",
            payment_id,
        )
    )


async def due_for_expiry(conn: Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
    """Open payments past their expiry and authorisations past theirs, locked, skipping rows others hold."""
    return list(
        await conn.fetch(
            f"""
            SELECT {_COLUMNS}, {_EXTRA} FROM payments
             WHERE (status = 'requires_payment_method' AND expires_at <= $1)
                OR (status = 'requires_capture' AND authorization_expires_at <= $1)
                OR (status = 'requires_action' AND confirm_by <= $1)
             ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
            """,
            now, limit,
        )
    )


async def oldest_overdue(conn: Connection, now: datetime) -> datetime | None:
    """The earliest due time among the payments ``due_for_expiry`` would pick now (None: none is due);
    each part is one probe of its partial index."""
    oldest: datetime | None = await conn.fetchval(
        """
        SELECT least(
            (SELECT min(expires_at) FROM payments WHERE status = 'requires_payment_method' AND expires_at <= $1),
            (SELECT min(authorization_expires_at) FROM payments
              WHERE status = 'requires_capture' AND authorization_expires_at <= $1),
            (SELECT min(confirm_by) FROM payments WHERE status = 'requires_action' AND confirm_by <= $1))
        """,
        now,
    )
    return oldest


async def insert_event(
    conn: Connection,
    event_type: str,
    object_id: uuid.UUID,
    data: Any,
    *,
    merchant_id: uuid.UUID | None,
    holder_id: uuid.UUID | None,
    actor: Actor | None = None,
    request_id: str | None = None,
    deliverable: bool = True,
) -> uuid.UUID:
    """``actor`` and ``request_id`` make it an audit event; ``deliverable=False`` keeps it from webhooks."""
    event_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO events (id, type, merchant_id, holder_id, object_id, data, actor_type, actor_id, request_id,"
        " deliverable) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10)",
        event_id, event_type, merchant_id, holder_id, object_id, msgspec.json.encode(data).decode(),
        actor.type if actor else None, actor.id if actor else None, request_id, deliverable,
    )
    return event_id


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it: ``operator``, ``api_key``, ``device``, ``wallet_holder`` (with its id) or ``cli`` (no id)."""

    type: str
    id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class EventFilter:
    object_id: uuid.UUID | None = None
    type: str | None = None  # exact, or "payment.*" for a family
    created_gte: datetime | None = None
    created_lt: datetime | None = None


_EVENT = ("seq, id, type, object_id, data::text AS data, created_at, merchant_id, actor_type, actor_id, request_id,"
          " deliverable")


def _scope(merchant_id: uuid.UUID | None, every_merchant: bool) -> str:
    """The tenancy condition on ``$1``: the merchant's own events, or (operators only) every event."""
    if merchant_id is not None:
        return "merchant_id = $1"
    assert every_merchant, "no merchant scope given: only an operator listing sees every merchant's events"
    return "$1::uuid IS NULL"


async def list_events(
    conn: Connection, merchant_id: uuid.UUID | None, limit: int, after_seq: int | None, before_seq: int | None,
    match: EventFilter, *, every_merchant: bool = False,
) -> list[asyncpg.Record]:
    """Newest first (by commit-ordered ``seq``); ``after_seq``/``before_seq`` are cursors. One row more
    than ``limit`` tells there are more. ``merchant_id=None`` needs ``every_merchant`` (operators)."""
    family = match.type[:-1] if match.type is not None and match.type.endswith(".*") else None
    exact = None if family is not None else match.type
    order = "ASC" if before_seq is not None else "DESC"
    rows = await conn.fetch(
        f"""
        SELECT {_EVENT} FROM events
         WHERE {_scope(merchant_id, every_merchant)} AND ($3::int8 IS NULL OR seq < $3)
           AND ($4::int8 IS NULL OR seq > $4)
           AND ($5::uuid IS NULL OR object_id = $5) AND ($6::text IS NULL OR type = $6)
           AND ($7::text IS NULL OR starts_with(type, $7))
           AND ($8::timestamptz IS NULL OR created_at >= $8) AND ($9::timestamptz IS NULL OR created_at < $9)
         ORDER BY seq {order} LIMIT $2
        """,
        merchant_id, limit + 1, after_seq, before_seq, match.object_id, exact, family, match.created_gte,
        match.created_lt,
    )
    return list(rows) if order == "DESC" else list(reversed(rows))


async def event(conn: Connection, event_id: uuid.UUID, merchant_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_EVENT} FROM events WHERE id = $1 AND merchant_id = $2", event_id, merchant_id,
    )
    return row


async def event_seq(conn: Connection, event_id: uuid.UUID, merchant_id: uuid.UUID | None, *,
                    every_merchant: bool = False) -> int | None:
    seq: int | None = await conn.fetchval(
        f"SELECT seq FROM events WHERE {_scope(merchant_id, every_merchant)} AND id = $2", merchant_id, event_id)
    return seq
