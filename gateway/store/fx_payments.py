"""A payment's conversion, the quotes a payment's preview offers, and conversions given back.

Invariants kept here (and proven after the fact by ``invariants.sql``):
- a payment has at most one conversion (``conversions.payment_id`` is UNIQUE), written in the
  payment's transaction, from the quote taken by ``gateway.store.fx.use_quote`` in it;
- a conversion's ``returned_*`` totals only grow, in the transaction that posts the return's entry
  (a refund's, or the release of the payment's hold), with the conversion row locked first
  (``payment_conversions``), so concurrent refunds and releases of one payment add up (the payment
  row, locked before, serialises them already).
"""

from __future__ import annotations

import uuid

import asyncpg

from gateway.domain.fx_payments import Return
from gateway.store.db import Connection, one

_CONVERSION = ("c.id, c.holder_id, c.quote_id, c.from_currency, c.to_currency, c.sell_minor, c.receive_minor,"
               " c.fee_minor, c.payment_id, c.returned_minor, c.returned_source_minor, c.returned_fee_minor,"
               " c.created_at, q.customer_rate")


async def open_quote(conn: Connection, payment_id: uuid.UUID, holder_id: uuid.UUID, rate_id: uuid.UUID,
                     from_currency: str, sell_minor: int, receive_minor: int, left_min_s: int) -> asyncpg.Record | None:
    """The newest unused quote offered for the payment from this currency at this rate, for these amounts
    (what the wallet pays may have changed with a discount), still valid for ``left_min_s`` seconds at
    least: a preview shown again offers it again rather than a new one."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT id, holder_id, rate_id, from_currency, to_currency, mid_rate, spread_bps, customer_rate, fee_bps,"
        " sell_minor, receive_minor, fee_minor, expires_at, created_at, used_at, conversion_id FROM fx_quotes"
        " WHERE payment_id = $1 AND holder_id = $2 AND used_at IS NULL AND rate_id = $3 AND from_currency = $4"
        " AND sell_minor = $6 AND receive_minor = $7"
        " AND expires_at > now() + make_interval(secs => $5) ORDER BY expires_at DESC LIMIT 1",
        payment_id, holder_id, rate_id, from_currency, float(left_min_s), sell_minor, receive_minor,
    )
    return row


async def insert_payment_conversion(conn: Connection, conversion_id: uuid.UUID, q: asyncpg.Record,
                                    payment_id: uuid.UUID) -> None:
    await conn.execute(
        "INSERT INTO conversions (id, holder_id, quote_id, from_currency, to_currency, sell_minor, receive_minor,"
        " fee_minor, payment_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        conversion_id, q["holder_id"], q["id"], q["from_currency"], q["to_currency"], q["sell_minor"],
        q["receive_minor"], q["fee_minor"], payment_id,
    )


async def payment_conversion(conn: Connection, payment_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_CONVERSION} FROM conversions c JOIN fx_quotes q ON q.id = c.quote_id WHERE c.payment_id = $1",
        payment_id,
    )
    return row


async def payment_conversions(conn: Connection, payment_ids: list[uuid.UUID]) -> list[asyncpg.Record]:
    """The conversions of these payments (those paid from another currency), locked, in id order: the
    payments' rows are locked already, so nobody else waits for them."""
    return list(await conn.fetch(
        f"SELECT {_CONVERSION} FROM conversions c JOIN fx_quotes q ON q.id = c.quote_id"
        " WHERE c.payment_id = ANY($1::uuid[]) ORDER BY c.id FOR UPDATE OF c",
        payment_ids,
    ))


async def add_returned(conn: Connection, conversion_id: uuid.UUID, given: Return) -> None:
    await one(
        conn,
        "UPDATE conversions SET returned_minor = returned_minor + $2,"
        " returned_source_minor = returned_source_minor + $3, returned_fee_minor = returned_fee_minor + $4"
        " WHERE id = $1 RETURNING id",
        conversion_id, given.target_minor, given.source_minor, given.fee_minor,
    )
