"""SQL of the operator console: read models across merchants, each bounded by a ``LIMIT``.

Invariants: every query here only reads; every list takes its ``limit`` from the caller and never
returns more; a daily series covers ``[day_from, day_to]`` in UTC days, with no gaps (a day with
nothing is a row of zeros), so a chart's bars line up with its axis.
"""

from __future__ import annotations

import uuid
from datetime import date

import asyncpg

from gateway.store.db import Connection

_SERIES = """
WITH days AS (SELECT d::date AS day FROM generate_series($1::date, $2::date, interval '1 day') AS d),
pay AS (
    SELECT (created_at AT TIME ZONE 'UTC')::date AS day, sum(captured_minor) AS volume, sum(fee_minor) AS fees
    FROM payments
    WHERE created_at >= $1::date AT TIME ZONE 'UTC' AND created_at < ($2::date + 1) AT TIME ZONE 'UTC'
      AND currency = $3 AND captured_minor > 0
    GROUP BY 1),
pout AS (
    SELECT (created_at AT TIME ZONE 'UTC')::date AS day, sum(amount_minor) AS payouts
    FROM payouts
    WHERE created_at >= $1::date AT TIME ZONE 'UTC' AND created_at < ($2::date + 1) AT TIME ZONE 'UTC'
      AND currency = $3
    GROUP BY 1),
bank AS (
    SELECT booking_date AS day, count(*) AS entries, count(*) FILTER (WHERE matched) AS matched
    FROM bank_entries WHERE booking_date BETWEEN $1 AND $2 AND currency = $3
    GROUP BY 1),
exc AS (
    SELECT (detected_at AT TIME ZONE 'UTC')::date AS day, count(*) AS opened
    FROM recon_exceptions
    WHERE detected_at >= $1::date AT TIME ZONE 'UTC' AND detected_at < ($2::date + 1) AT TIME ZONE 'UTC'
      AND currency = $3
    GROUP BY 1)
SELECT days.day, COALESCE(pay.volume, 0)::bigint AS volume_minor, COALESCE(pay.fees, 0)::bigint AS fee_minor,
       COALESCE(pout.payouts, 0)::bigint AS payout_minor, COALESCE(bank.entries, 0)::bigint AS bank_entries,
       COALESCE(bank.matched, 0)::bigint AS bank_matched, COALESCE(exc.opened, 0)::bigint AS exceptions
FROM days
LEFT JOIN pay ON pay.day = days.day LEFT JOIN pout ON pout.day = days.day
LEFT JOIN bank ON bank.day = days.day LEFT JOIN exc ON exc.day = days.day
ORDER BY days.day
"""


async def daily_series(conn: Connection, day_from: date, day_to: date, code: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(_SERIES, day_from, day_to, code)
    return rows


async def open_exception_count(conn: Connection) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM recon_exceptions WHERE status = 'open'")
    return count


async def batches(conn: Connection, merchant_id: uuid.UUID | None, day_from: date | None, day_to: date | None,
                  limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT b.id, b.merchant_id, m.name AS merchant_name, b.currency, b.business_date, b.status,
               b.capture_count, b.refund_count, b.captured_minor, b.refunded_minor, b.fee_minor, b.cashback_minor,
               b.net_minor, b.payout_minor, b.carry_out_minor, b.closed_at
        FROM settlement_batches b JOIN merchants m ON m.id = b.merchant_id
        WHERE ($1::uuid IS NULL OR b.merchant_id = $1)
          AND ($2::date IS NULL OR b.business_date >= $2) AND ($3::date IS NULL OR b.business_date <= $3)
        ORDER BY b.business_date DESC, b.id DESC
        LIMIT $4
        """, merchant_id, day_from, day_to, limit)
    return rows


async def payouts(conn: Connection, merchant_id: uuid.UUID | None, day_from: date | None, day_to: date | None,
                  limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT p.id, p.merchant_id, m.name AS merchant_name, p.amount_minor, p.currency, p.reference, p.status,
               p.execution_date, b.business_date, p.created_at, p.paid_at, p.reconciled_at
        FROM payouts p JOIN merchants m ON m.id = p.merchant_id JOIN settlement_batches b ON b.id = p.batch_id
        WHERE ($1::uuid IS NULL OR p.merchant_id = $1)
          AND ($2::date IS NULL OR b.business_date >= $2) AND ($3::date IS NULL OR b.business_date <= $3)
        ORDER BY b.business_date DESC, p.id DESC
        LIMIT $4
        """, merchant_id, day_from, day_to, limit)
    return rows


async def search_payments(conn: Connection, *, payment_id: uuid.UUID | None, merchant_reference: str | None,
                          phone: str | None, amount_minor: int | None, day: date | None,
                          limit: int) -> list[asyncpg.Record]:
    """Payments matching every criterion given, newest first. The service refuses a search with no
    criterion at all; each one alone is served by an index (id, reference, payer, created_at)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT p.id, p.merchant_id, m.name AS merchant_name, p.amount_minor, p.currency, p.status,
               p.merchant_reference, p.captured_minor, p.refunded_minor, p.fee_minor, p.created_at, h.phone
        FROM payments p
        JOIN merchants m ON m.id = p.merchant_id
        LEFT JOIN wallet_holders h ON h.id = p.payer_id
        WHERE ($1::uuid IS NULL OR p.id = $1)
          AND ($2::text IS NULL OR p.merchant_reference = $2)
          AND ($3::text IS NULL OR p.payer_id = (SELECT id FROM wallet_holders WHERE phone = $3))
          AND ($4::bigint IS NULL OR p.amount_minor = $4)
          AND ($5::date IS NULL OR (p.created_at >= $5::date AT TIME ZONE 'UTC'
                                    AND p.created_at < ($5::date + 1) AT TIME ZONE 'UTC'))
        ORDER BY p.created_at DESC, p.id DESC
        LIMIT $6
        """, payment_id, merchant_reference, phone, amount_minor, day, limit)
    return rows


async def merchants(conn: Connection, limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT m.id, m.name, m.city, m.country, m.fee_bps, m.status, m.created_at,
               (SELECT count(*) FROM terminals t WHERE t.merchant_id = m.id) AS terminal_count
        FROM merchants m ORDER BY m.created_at DESC, m.id LIMIT $1
        """, limit)
    return rows


async def terminals(conn: Connection, merchant_ids: list[uuid.UUID], limit: int) -> list[asyncpg.Record]:
    """The terminals of these merchants with their latest device and what its agent last reported."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT t.id, t.merchant_id, t.label, t.status, t.created_at, s.name AS store_name,
               d.name AS device_name, d.status AS device_status, d.created_at AS enrolled_at,
               d.agent_version, d.last_seen_at
        FROM terminals t JOIN stores s ON s.id = t.store_id
        LEFT JOIN LATERAL (SELECT name, status, created_at, agent_version, last_seen_at FROM devices
                           WHERE terminal_id = t.id ORDER BY created_at DESC LIMIT 1) d ON true
        WHERE t.merchant_id = ANY($1::uuid[])
        ORDER BY t.merchant_id, t.created_at, t.id
        LIMIT $2
        """, merchant_ids, limit)
    return rows


async def audit(conn: Connection, limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT a.id, a.operator_id, o.email AS operator_email, a.action, a.exception_id, a.statement_id,
               a.reason, a.details::text AS details, a.created_at
        FROM recon_audit a LEFT JOIN operators o ON o.id = a.operator_id
        ORDER BY a.created_at DESC, a.id DESC
        LIMIT $1
        """, limit)
    return rows
