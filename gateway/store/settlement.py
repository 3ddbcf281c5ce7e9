"""Settlement persistence: runs, batches, payouts, merchants' settlement settings and payout accounts.

Invariants kept here (and proven after the fact by ``invariants.sql``):
- a capture or refund journal entry is settled by at most one batch: ``journal_entries.batch_id`` is
  set once (``WHERE batch_id IS NULL``), by the close, holding the merchant's settlement lock;
- closes of one merchant serialise on its receivable account rows (``FOR NO KEY UPDATE``, which does
  not conflict with the ``FOR KEY SHARE`` a capture's posting takes on them), taken in id order;
- a batch takes every unbatched entry of its merchant and currency older than its window end, so an
  entry whose transaction committed after an earlier close still lands in exactly one (the next) batch;
- ``wait_for_older_transactions`` lets the close start only once no transaction that began before the
  cutoff is still open: then every entry timestamped before the cutoff is visible to the close;
- one batch per (merchant, currency, business date); one payout per batch.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import date, datetime, time
import asyncpg

from gateway.store import pages
from gateway.store.db import Connection, one

_NIL = uuid.UUID(int=0)
_BATCH = (
    "id, run_id, merchant_id, currency, business_date, window_start, window_end, timezone, cutoff, status,"
    " capture_count, refund_count, captured_minor, refunded_minor, fee_minor, carry_in_minor, net_minor,"
    " payout_minor, carry_out_minor, closed_at, paid_at, reconciled_at, cashback_minor"
)
_PAYOUT = (
    "id, batch_id, merchant_id, amount_minor, currency, reference, status, execution_date, bank_account_id,"
    " created_at, paid_at, reconciled_at"
)


async def database_now(conn: Connection) -> datetime:
    value: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return value


async def wait_for_older_transactions(conn: Connection, before: datetime, timeout_s: float,
                                      poll_s: float = 0.01) -> bool:
    """Wait (outside any transaction) until no other session of this database has a transaction that
    began before ``before``; False if some still do after ``timeout_s``.

    A journal entry's ``created_at`` is its transaction's start, so once this returns True every entry
    timestamped before ``before`` is committed or gone. Sessions of the gateway's own role are always
    visible in ``pg_stat_activity``; other roles' need ``pg_read_all_stats`` to be seen.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        older = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend' AND xact_start < $1",
            before,
        )
        if older == 0:
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(poll_s)


async def merchants_to_settle(conn: Connection, merchant_id: uuid.UUID | None) -> list[asyncpg.Record]:
    """Merchants (id, timezone, cutoff) and the currencies of their receivable accounts, in id order."""
    return await conn.fetch(
        "SELECT m.id, m.timezone, m.settlement_cutoff, array_agg(a.currency::text ORDER BY a.currency) AS currencies"
        " FROM merchants m JOIN accounts a ON a.owner_id = m.id AND a.kind = 'merchant_receivable'"
        " WHERE $1::uuid IS NULL OR m.id = $1 GROUP BY m.id ORDER BY m.id",
        merchant_id,
    )


async def claim_run(conn: Connection, run_id: uuid.UUID, business_date: date,
                    merchant_id: uuid.UUID | None) -> asyncpg.Record:
    """The run of (date, merchant), created if new, locked until the commit (identical runs queue)."""
    await conn.execute(
        "INSERT INTO settlement_runs (id, business_date, merchant_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        run_id, business_date, merchant_id,
    )
    return await one(
        conn,
        "SELECT id, business_date, merchant_id, created_at FROM settlement_runs WHERE business_date = $1"
        " AND COALESCE(merchant_id, $3::uuid) = COALESCE($2::uuid, $3::uuid) FOR UPDATE",
        business_date, merchant_id, _NIL,
    )


async def allow_long_statements(conn: Connection, timeout_s: float) -> None:
    """Raise this transaction's statement timeout (a run's set-based statements scan a whole day)."""
    await conn.execute("SELECT set_config('statement_timeout', $1, true)", str(round(timeout_s * 1000)))


async def close_batches(conn: Connection, run_id: uuid.UUID, merchant_ids: list[uuid.UUID], currencies: list[str],
                        days: list[date], starts: list[datetime], ends: list[datetime], zones: list[str],
                        cutoffs: list[time], timeout_s: float) -> list[asyncpg.Record]:
    """Close the given business days (one window per merchant and currency), set-based: lock the
    merchants' receivable accounts, write one batch per merchant and currency that has unbatched
    entries before its window end or a carry-over, and mark those entries settled by it. Returns the
    new batches.

    A merchant and currency that already has a batch on or after the day is left alone (closing twice
    changes nothing; days close in order)."""
    await conn.execute(
        "SELECT 1 FROM accounts WHERE kind = 'merchant_receivable' AND owner_id = ANY($1::uuid[])"
        " ORDER BY id FOR NO KEY UPDATE",
        sorted(set(merchant_ids)), timeout=timeout_s,
    )
    return await conn.fetch(
        f"""
        WITH pairs AS (
            SELECT * FROM unnest($2::uuid[], $3::text[], $4::date[], $5::timestamptz[], $6::timestamptz[], $7::text[],
                                 $8::time[])
                AS w(merchant_id, currency, business_date, window_start, window_end, timezone, cutoff)
             WHERE NOT EXISTS (SELECT 1 FROM settlement_batches b WHERE b.merchant_id = w.merchant_id
                                  AND b.currency = w.currency AND b.business_date >= w.business_date)
        ), lines AS (
            SELECT l.entry_id, l.merchant_id, l.currency, l.kind, l.amount_minor, l.fee_minor, l.cashback_minor
              FROM settlement_lines l
              JOIN pairs pr ON pr.merchant_id = l.merchant_id AND pr.currency = l.currency
             WHERE l.batch_id IS NULL AND l.created_at < pr.window_end
        ), sums AS (
            SELECT merchant_id, currency,
                   count(*) FILTER (WHERE kind = 'capture')::int AS capture_count,
                   count(*) FILTER (WHERE kind = 'refund')::int AS refund_count,
                   COALESCE(sum(amount_minor) FILTER (WHERE kind = 'capture'), 0)::int8 AS captured_minor,
                   COALESCE(sum(amount_minor) FILTER (WHERE kind = 'refund'), 0)::int8 AS refunded_minor,
                   (COALESCE(sum(fee_minor) FILTER (WHERE kind = 'capture'), 0)
                    - COALESCE(sum(fee_minor) FILTER (WHERE kind = 'refund'), 0))::int8 AS fee_minor,
                   (COALESCE(sum(cashback_minor) FILTER (WHERE kind = 'capture'), 0)
                    - COALESCE(sum(cashback_minor) FILTER (WHERE kind = 'refund'), 0))::int8 AS cashback_minor
              FROM lines GROUP BY merchant_id, currency
        ), carry AS (
            SELECT DISTINCT ON (b.merchant_id, b.currency) b.merchant_id, b.currency, b.carry_out_minor
              FROM settlement_batches b JOIN pairs pr ON pr.merchant_id = b.merchant_id AND pr.currency = b.currency
             ORDER BY b.merchant_id, b.currency, b.business_date DESC
        ), figures AS (
            SELECT pr.*, COALESCE(s.capture_count, 0) AS capture_count, COALESCE(s.refund_count, 0) AS refund_count,
                   COALESCE(s.captured_minor, 0) AS captured_minor, COALESCE(s.refunded_minor, 0) AS refunded_minor,
                   COALESCE(s.fee_minor, 0) AS fee_minor, COALESCE(s.cashback_minor, 0) AS cashback_minor,
                   COALESCE(c.carry_out_minor, 0) AS carry_in_minor,
                   COALESCE(s.captured_minor, 0) - COALESCE(s.refunded_minor, 0) - COALESCE(s.fee_minor, 0)
                       - COALESCE(s.cashback_minor, 0) + COALESCE(c.carry_out_minor, 0) AS net_minor
              FROM pairs pr
              LEFT JOIN sums s ON s.merchant_id = pr.merchant_id AND s.currency = pr.currency
              LEFT JOIN carry c ON c.merchant_id = pr.merchant_id AND c.currency = pr.currency
             WHERE s.merchant_id IS NOT NULL OR COALESCE(c.carry_out_minor, 0) <> 0
        ), batches AS (
            INSERT INTO settlement_batches (id, run_id, merchant_id, currency, business_date, window_start, window_end,
                                            timezone, cutoff, status, capture_count, refund_count, captured_minor,
                                            refunded_minor, fee_minor, carry_in_minor, net_minor, payout_minor,
                                            carry_out_minor, cashback_minor)
            SELECT gen_random_uuid(), $1, merchant_id, currency, business_date, window_start, window_end, timezone,
                   cutoff, 'closed', capture_count, refund_count, captured_minor, refunded_minor, fee_minor,
                   carry_in_minor, net_minor, GREATEST(net_minor, 0), LEAST(net_minor, 0), cashback_minor
              FROM figures
            RETURNING {_BATCH}
        ), assigned AS (
            UPDATE journal_entries e SET batch_id = b.id
              FROM lines l JOIN batches b ON b.merchant_id = l.merchant_id AND b.currency = l.currency
             WHERE e.id = l.entry_id AND e.batch_id IS NULL
            RETURNING 1
        )
        SELECT b.*, (SELECT count(*) FROM assigned) AS assigned_total
          FROM batches b ORDER BY b.merchant_id, b.currency
        """,
        run_id, merchant_ids, currencies, days, starts, ends, zones, cutoffs, timeout=timeout_s,
    )


async def current_bank_accounts(conn: Connection, merchant_ids: list[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    rows = await conn.fetch(
        "SELECT merchant_id, id FROM merchant_bank_accounts WHERE merchant_id = ANY($1::uuid[]) AND replaced_at IS NULL",
        merchant_ids,
    )
    return {row["merchant_id"]: row["id"] for row in rows}


async def insert_payouts(conn: Connection, ids: list[uuid.UUID], batch_ids: list[uuid.UUID],
                         merchant_ids: list[uuid.UUID], amounts: list[int], currencies: list[str],
                         references: list[str], execution_dates: list[date],
                         bank_account_ids: list[uuid.UUID | None]) -> None:
    await conn.execute(
        "INSERT INTO payouts (id, batch_id, merchant_id, amount_minor, currency, reference, status, execution_date,"
        " bank_account_id) SELECT id, b, m, a, c, r, 'pending', d, k FROM unnest($1::uuid[], $2::uuid[], $3::uuid[],"
        " $4::int8[], $5::text[], $6::text[], $7::date[], $8::uuid[]) AS t(id, b, m, a, c, r, d, k)",
        ids, batch_ids, merchant_ids, amounts, currencies, references, execution_dates, bank_account_ids,
    )


async def run(conn: Connection, run_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT id, business_date, created_at FROM settlement_runs WHERE id = $1", run_id)
    return row


async def run_batches(conn: Connection, run_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(f"SELECT {_BATCH} FROM settlement_batches WHERE run_id = $1"
                            " ORDER BY merchant_id, currency", run_id)


async def run_payouts(conn: Connection, run_id: uuid.UUID) -> list[asyncpg.Record]:
    """The run's payouts with what the payout file needs: merchant name, payout account (sealed number)."""
    return await conn.fetch(
        "SELECT p.id, p.reference, p.amount_minor, p.currency, p.execution_date, p.status, p.merchant_id,"
        " b.business_date, m.name AS merchant_name, k.id AS account_id, k.holder_name, k.bank_name, k.bic,"
        " k.number_masked, k.number_sealed"
        " FROM payouts p JOIN settlement_batches b ON b.id = p.batch_id JOIN merchants m ON m.id = p.merchant_id"
        " LEFT JOIN merchant_bank_accounts k ON k.id = p.bank_account_id"
        " WHERE b.run_id = $1 ORDER BY p.currency, p.execution_date, p.reference",
        run_id,
    )


async def batch_lines(conn: Connection, batch_id: uuid.UUID, chunk_rows: int = 5000) -> AsyncIterator[asyncpg.Record]:
    """The batch's captures and refunds in time order, streamed in chunks (a cursor needs a transaction)."""
    last_at: datetime | None = None
    last_id = 0
    while True:
        rows = await conn.fetch(
            "SELECT entry_id, kind, created_at, payment_id, refund_id, merchant_reference, amount_minor, fee_minor,"
            " cashback_minor"
            " FROM settlement_lines WHERE batch_id = $1"
            " AND ($2::timestamptz IS NULL OR (created_at, entry_id) > ($2, $3))"
            " ORDER BY created_at, entry_id LIMIT $4",
            batch_id, last_at, last_id, chunk_rows,
        )
        for row in rows:
            yield row
        if len(rows) < chunk_rows:
            return
        last_at, last_id = rows[-1]["created_at"], rows[-1]["entry_id"]


async def batch(conn: Connection, batch_id: uuid.UUID, merchant_id: uuid.UUID | None) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_BATCH} FROM settlement_batches WHERE id = $1 AND ($2::uuid IS NULL OR merchant_id = $2)",
        batch_id, merchant_id,
    )


def merchant_batches(merchant_id: uuid.UUID) -> pages.Query:
    """Newest business day first (served by settlement_batches_merchant)."""
    return pages.Query(columns=_BATCH, source="settlement_batches", key=("business_date", "id"),
                       scope=(pages.cond("merchant_id = {}", merchant_id),))


def merchant_payouts(merchant_id: uuid.UUID) -> pages.Query:
    """Newest first (served by payouts_merchant)."""
    return pages.Query(columns=_PAYOUT, source="payouts", key=("created_at", "id"),
                       scope=(pages.cond("merchant_id = {}", merchant_id),))


async def payout(conn: Connection, payout_id: uuid.UUID, *, for_update: bool = False) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(f"SELECT {_PAYOUT} FROM payouts WHERE id = $1{lock}", payout_id)


async def mark_payout_paid(conn: Connection, payout_id: uuid.UUID) -> asyncpg.Record:
    """Set the payout paid, and its batch paid (its only payout)."""
    row = await one(conn, f"UPDATE payouts SET status = 'paid', paid_at = now() WHERE id = $1 RETURNING {_PAYOUT}",
                    payout_id)
    await conn.execute("UPDATE settlement_batches SET status = 'paid', paid_at = now() WHERE id = $1", row["batch_id"])
    return row


async def set_merchant_settlement(conn: Connection, merchant_id: uuid.UUID, timezone: str | None,
                                  cut: time | None, fee_fixed_minor: int | None) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "UPDATE merchants SET timezone = COALESCE($2, timezone), settlement_cutoff = COALESCE($3, settlement_cutoff),"
        " fee_fixed_minor = COALESCE($4, fee_fixed_minor) WHERE id = $1"
        " RETURNING id, timezone, settlement_cutoff, fee_bps, fee_fixed_minor",
        merchant_id, timezone, cut, fee_fixed_minor,
    )


async def merchant_settlement(conn: Connection, merchant_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, timezone, settlement_cutoff, fee_bps, fee_fixed_minor FROM merchants WHERE id = $1", merchant_id)


async def replace_bank_account(conn: Connection, account_id: uuid.UUID, merchant_id: uuid.UUID, holder_name: str,
                               bank_name: str, bic: str | None, masked: str, digest: bytes,
                               sealed: bytes) -> asyncpg.Record:
    """The merchant's new payout account; the previous one (if any) is kept, marked replaced."""
    await conn.execute("SELECT 1 FROM merchants WHERE id = $1 FOR UPDATE", merchant_id)
    await conn.execute("UPDATE merchant_bank_accounts SET replaced_at = now() WHERE merchant_id = $1"
                       " AND replaced_at IS NULL", merchant_id)
    return await one(
        conn,
        "INSERT INTO merchant_bank_accounts (id, merchant_id, holder_name, bank_name, bic, number_masked, number_hash,"
        " number_sealed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " RETURNING id, merchant_id, holder_name, bank_name, bic, number_masked, created_at",
        account_id, merchant_id, holder_name, bank_name, bic, masked, digest, sealed,
    )


async def insert_events(conn: Connection, event_type: str, object_ids: list[uuid.UUID],
                        merchant_ids: list[uuid.UUID], data: list[str]) -> None:
    """Many events of one type in one statement (``data``: JSON texts)."""
    await conn.execute(
        "INSERT INTO events (id, type, merchant_id, object_id, data)"
        " SELECT gen_random_uuid(), $1, m, o, d::jsonb FROM unnest($2::uuid[], $3::uuid[], $4::text[]) AS t(o, m, d)",
        event_type, object_ids, merchant_ids, data,
    )
