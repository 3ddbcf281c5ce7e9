"""Budgets, the holder's time zone, spending aggregates and the budget worker's cursor (migration 0016).

What counts as spending: a wallet account's postings of ``capture`` entries (money paid, positive
spend) and ``refund`` entries (money back, negative spend, with the cashback the refund took back:
``_SPENT``), in the month the posting happened in the
holder's time zone (``COALESCE(wallet_holders.time_zone, <default>)``), grouped by the paying
merchant's MCC group (``domain.mcc``, passed in as arrays: the one table, not a copy). Authorisations
not yet captured are no spending. Every aggregate is computed by the database.

Invariants:
- every budget read and change is scoped by holder: another holder's budget is simply not found;
- the cursor (``spending_cursor``): every journal entry created before ``horizon_at`` has been
  evaluated, and every entry created at or after it has an id above ``entry_id_floor``. It moves
  only forward, under its row lock, in the transaction that writes the reminders it implies, so an
  entry is evaluated exactly once whatever crashes or processes;
- a horizon is only taken once no transaction begun before it is still open (a journal entry's
  ``created_at`` is its transaction's start), so no entry can commit behind the cursor; the floor
  rests on journal ids being handed out in time order (``journal_entries_id_seq`` has CACHE 1, the
  ``bigserial`` default) and on the database server's clock not stepping back.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import asyncpg

from gateway.domain import mcc
from gateway.store import pages
from gateway.store.db import Connection, one

_BUDGET = "id, holder_id, category, currency, amount_minor, created_at, updated_at"
_SPEND_KINDS = "('capture', 'refund')"
# What a wallet posting of those entries (``p``, of entry ``e``) spent: the money that left the wallet, less
# what came back; a refund's part that took a bank-funded cashback back (kept by the promotions, not
# credited) comes back all the same, since the cashback credited it earlier, so a purchase refunded in full
# spent nothing.
# A merchant-funded cashback is paid inside its capture entry (already netted there): only a bank-funded one,
# credited by an entry of its own that spending does not count, is added back.
_SPENT = ("-p.amount_minor - CASE WHEN e.kind = 'refund' THEN COALESCE((SELECT r.cashback_clawed_back_minor"
          " FROM refunds r JOIN payments cp ON cp.id = r.payment_id"
          " WHERE r.id = e.refund_id AND cp.cashback_funded_by = 'bank'), 0) ELSE 0 END")
# The category of ``mer`` (merchants) through ``g``, the ranges of domain.mcc as $n, $n+1, $n+2.


def _category_join(first: int) -> str:
    return (f" LEFT JOIN unnest(${first}::int[], ${first + 1}::int[], ${first + 2}::text[]) AS g(lo, hi, grp)"
            f" ON (CASE WHEN mer.mcc ~ '^[0-9]{{4}}$' THEN mer.mcc::int END) BETWEEN g.lo AND g.hi")


# --- the holder's time zone ---------------------------------------------------------------------


async def time_zone(conn: Connection, holder_id: uuid.UUID) -> asyncpg.Record | None:
    """The holder's own zone (NULL until set)."""
    row: asyncpg.Record | None = await conn.fetchrow("SELECT time_zone FROM wallet_holders WHERE id = $1", holder_id)
    return row


class UnknownTimeZone(Exception):
    """PostgreSQL does not know the zone (its time zone database is the one months are counted in)."""


async def set_time_zone(conn: Connection, holder_id: uuid.UUID, zone: str) -> bool:
    """False if there is no such holder; ``UnknownTimeZone`` if the database cannot count in ``zone``."""
    try:
        status = await conn.execute(
            "UPDATE wallet_holders SET time_zone = $2 WHERE id = $1 AND (now() AT TIME ZONE $2) IS NOT NULL",
            holder_id, zone,
        )
    except asyncpg.InvalidParameterValueError:
        raise UnknownTimeZone(zone) from None
    return bool(status.endswith(" 1"))


# --- budgets ------------------------------------------------------------------------------------


async def put_budget(conn: Connection, budget_id: uuid.UUID, holder_id: uuid.UUID, category: str, currency: str,
                     amount_minor: int) -> tuple[asyncpg.Record, bool]:
    """Create the holder's budget of (category, currency), or replace its amount (same id); the row and
    whether it was created."""
    row = await one(
        conn,
        f"""
        INSERT INTO budgets AS b (id, holder_id, category, currency, amount_minor) VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (holder_id, category, currency)
        DO UPDATE SET amount_minor = EXCLUDED.amount_minor, updated_at = now()
        RETURNING {_BUDGET}, (xmax = 0) AS created
        """,
        budget_id, holder_id, category, currency, amount_minor,
    )
    return row, bool(row["created"])


def holder_budgets(holder_id: uuid.UUID) -> pages.Query:
    """Newest first (served by budgets_holder_list)."""
    return pages.Query(columns=_BUDGET, source="budgets", key=("created_at", "id"),
                       scope=(pages.cond("holder_id = {}", holder_id),))


async def delete_budget(conn: Connection, budget_id: uuid.UUID, holder_id: uuid.UUID) -> bool:
    """Its reminders go with it (a budget set again later starts afresh)."""
    status = await conn.execute("DELETE FROM budgets WHERE id = $1 AND holder_id = $2", budget_id, holder_id)
    return bool(status.endswith(" 1"))


# --- aggregates ---------------------------------------------------------------------------------


async def holder_month(conn: Connection, holder_id: uuid.UUID, default_zone: str) -> asyncpg.Record | None:
    """The holder's zone in effect, whether it is the default, and this month (its first day) there."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT COALESCE(time_zone, $2) AS tz, time_zone IS NULL AS is_default,"
        " date_trunc('month', now() AT TIME ZONE COALESCE(time_zone, $2))::date AS this_month"
        " FROM wallet_holders WHERE id = $1",
        holder_id, default_zone,
    )
    return row


async def month_spending(conn: Connection, holder_id: uuid.UUID, zone: str, month: date,
                         currency: str | None) -> list[asyncpg.Record]:
    """The month's spending of the holder in one aggregate: per currency (``level`` 'currency'), per
    currency and category ('category'), per currency and merchant ('merchant'); each with the net total
    and the number of payments captured in the month."""
    lo, hi, grp = mcc.sql_ranges()
    return list(await conn.fetch(
        f"""
        WITH bounds AS (
            SELECT ($3::date::timestamp AT TIME ZONE $2) AS start_at,
                   (($3::date + interval '1 month')::timestamp AT TIME ZONE $2) AS end_at
        ), moves AS (
            SELECT p.currency, {_SPENT} AS spent_minor, e.kind, e.payment_id, mer.id AS merchant_id,
                   mer.name AS merchant_name, COALESCE(g.grp, 'other') AS category
              FROM bounds, accounts a
              JOIN postings p ON p.account_id = a.id
              JOIN journal_entries e ON e.id = p.entry_id
              JOIN payments pay ON pay.id = e.payment_id
              JOIN merchants mer ON mer.id = pay.merchant_id
              {_category_join(5)}
             WHERE a.kind = 'wallet' AND a.owner_id = $1 AND ($4::text IS NULL OR a.currency = $4)
               AND e.kind IN {_SPEND_KINDS} AND p.created_at >= bounds.start_at AND p.created_at < bounds.end_at
        )
        SELECT currency::text AS currency, category, merchant_id, merchant_name,
               CASE WHEN GROUPING(category) = 0 THEN 'category'
                    WHEN GROUPING(merchant_id) = 0 THEN 'merchant' ELSE 'currency' END AS level,
               sum(spent_minor)::int8 AS total_minor,
               count(DISTINCT payment_id) FILTER (WHERE kind = 'capture') AS payment_count
          FROM moves
         GROUP BY GROUPING SETS ((currency), (currency, category), (currency, merchant_id, merchant_name))
         ORDER BY currency, level, total_minor DESC, category, merchant_name, merchant_id
        """,
        holder_id, zone, month, currency, lo, hi, grp,
    ))


# --- the budget worker --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """A possible horizon: ``entry_id_last`` was read before ``at`` (both from the database), so every
    journal entry of a transaction begun at or after ``at`` has an id above it."""

    at: datetime
    entry_id_last: int


async def sample(conn: Connection) -> Sample:
    last: int = await conn.fetchval(
        "SELECT COALESCE(pg_sequence_last_value(pg_get_serial_sequence('journal_entries', 'id')::regclass), 0)")
    at: datetime = await conn.fetchval("SELECT clock_timestamp()")  # after the id: the order is the point
    return Sample(at, last)


async def oldest_transaction_start(conn: Connection) -> datetime | None:
    """When the oldest transaction of another session of this database began (None: none is open).
    Call outside a transaction. Sessions of the gateway's role are always visible in pg_stat_activity."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    oldest: datetime | None = await conn.fetchval(
        "SELECT min(xact_start) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend'")
    return oldest


async def lock_cursor(conn: Connection) -> asyncpg.Record | None:
    """The cursor, locked until the commit; None when another worker holds it (or it was removed: it is put
    back at the very beginning, the Unix epoch, so that nothing is skipped)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT horizon_at, entry_id_floor FROM spending_cursor FOR UPDATE SKIP LOCKED")
    if row is None:
        await conn.execute("INSERT INTO spending_cursor (horizon_at, entry_id_floor) VALUES ('epoch', 0)"
                           " ON CONFLICT DO NOTHING")
    return row


async def advance_cursor(conn: Connection, to: Sample) -> None:
    await conn.execute("UPDATE spending_cursor SET horizon_at = $1, entry_id_floor = $2, updated_at = now()",
                       to.at, to.entry_id_last)


async def budget_steps(conn: Connection, floor: int, since: datetime, until: datetime,
                       default_zone: str) -> list[asyncpg.Record]:
    """For every budget whose holder and currency had a payment or refund in [since, until): its month
    (of the movement, in the holder's zone) and the month's spending of the budget's category (or all,
    for 'overall') before ``since`` and before ``until``."""
    lo, hi, grp = mcc.sql_ranges()
    return list(await conn.fetch(
        f"""
        WITH moved AS (
            SELECT DISTINCT a.id AS account_id, a.owner_id AS holder_id, a.currency,
                   COALESCE(h.time_zone, $4) AS tz,
                   date_trunc('month', e.created_at AT TIME ZONE COALESCE(h.time_zone, $4))::date AS month
              FROM journal_entries e
              JOIN postings p ON p.entry_id = e.id
              JOIN accounts a ON a.id = p.account_id AND a.kind = 'wallet'
              JOIN wallet_holders h ON h.id = a.owner_id
             WHERE e.id > $1 AND e.created_at >= $2 AND e.created_at < $3 AND e.kind IN {_SPEND_KINDS}
               AND EXISTS (SELECT 1 FROM budgets b WHERE b.holder_id = a.owner_id AND b.currency = a.currency)
        ), moves AS (
            SELECT m.holder_id, m.currency, m.month, COALESCE(g.grp, 'other') AS category,
                   {_SPENT} AS spent_minor, p.created_at < $2 AS before
              FROM moved m
              JOIN postings p ON p.account_id = m.account_id
              JOIN journal_entries e ON e.id = p.entry_id
              JOIN payments pay ON pay.id = e.payment_id
              JOIN merchants mer ON mer.id = pay.merchant_id
              {_category_join(5)}
             WHERE e.kind IN {_SPEND_KINDS}
               AND p.created_at >= (m.month::timestamp AT TIME ZONE m.tz)
               AND p.created_at < LEAST($3, ((m.month + interval '1 month')::timestamp AT TIME ZONE m.tz))
        ), spent AS (
            SELECT holder_id, currency, month, COALESCE(category, 'overall') AS category,
                   COALESCE(sum(spent_minor) FILTER (WHERE before), 0)::int8 AS before_minor,
                   sum(spent_minor)::int8 AS after_minor
              FROM moves
             GROUP BY GROUPING SETS ((holder_id, currency, month, category), (holder_id, currency, month))
        )
        SELECT b.id, b.holder_id, b.category, b.currency::text AS currency, b.amount_minor, s.month,
               s.before_minor, s.after_minor
          FROM spent s JOIN budgets b ON b.holder_id = s.holder_id AND b.currency = s.currency
               AND b.category = s.category
         ORDER BY b.id, s.month
        """,
        floor, since, until, default_zone, lo, hi, grp,
    ))


async def insert_reminders(conn: Connection, budget_ids: Sequence[uuid.UUID], months: Sequence[date],
                           thresholds_percent: Sequence[int],
                           notification_ids: Sequence[uuid.UUID]) -> list[asyncpg.Record]:
    """Record the reminders not recorded yet (the primary key keeps one per budget, month and threshold);
    the ones recorded now."""
    return list(await conn.fetch(
        """
        INSERT INTO budget_reminders (budget_id, month, threshold_percent, notification_id)
        SELECT * FROM unnest($1::uuid[], $2::date[], $3::int2[], $4::uuid[])
        ON CONFLICT DO NOTHING
        RETURNING budget_id, month, threshold_percent, notification_id
        """,
        list(budget_ids), list(months), list(thresholds_percent), list(notification_ids),
    ))
