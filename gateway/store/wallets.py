"""Wallet holders, linked bank accounts, transfers and wallet history."""

from __future__ import annotations

import uuid
from datetime import date

import asyncpg

from gateway.store import pages
from gateway.store.db import Connection, one

# A holder as the API shows it, PIN and lock state included (read in the statement that changes it).
_HOLDER = "id, phone, tier, created_at, payments_locked_at, pin_hash IS NOT NULL AS pin_set"


async def insert_holder(
    conn: Connection, holder_id: uuid.UUID, phone: str, password_hash: str, tier: int
) -> asyncpg.Record | None:
    """None if the phone number is registered already."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "INSERT INTO wallet_holders (id, phone, password_hash, tier) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (phone) DO NOTHING RETURNING id, phone, tier, created_at",
        holder_id, phone, password_hash, tier,
    )
    return row


async def holder_by_phone(conn: Connection, phone: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT id, phone, password_hash, tier, created_at FROM wallet_holders WHERE phone = $1", phone
    )
    return row


async def holder(conn: Connection, holder_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_HOLDER} FROM wallet_holders WHERE id = $1",
        holder_id,
    )
    return row


async def wallet_accounts(conn: Connection, holder_id: uuid.UUID) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT a.id, a.currency, b.posted_minor, b.held_minor FROM accounts a"
            " JOIN balances b ON b.account_id = a.id AND b.shard = 0"
            " WHERE a.kind = 'wallet' AND a.owner_id = $1 ORDER BY a.currency",
            holder_id,
        )
    )


async def insert_bank_account(
    conn: Connection, account_id: uuid.UUID, holder_id: uuid.UUID, bank_name: str, masked: str, number_hash: bytes
) -> asyncpg.Record:
    row = await one(
        conn,
        """
        INSERT INTO bank_accounts (id, holder_id, bank_name, number_masked, number_hash) VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (holder_id, number_hash) DO UPDATE SET bank_name = EXCLUDED.bank_name
        RETURNING id, holder_id, bank_name, number_masked, created_at
        """,
        account_id, holder_id, bank_name, masked, number_hash,
    )
    return row


async def bank_account(conn: Connection, account_id: uuid.UUID, holder_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT id, holder_id, bank_name, number_masked, created_at FROM bank_accounts WHERE id = $1 AND holder_id = $2",
        account_id, holder_id,
    )
    return row


def holder_bank_accounts(holder_id: uuid.UUID) -> pages.Query:
    """Newest first (served by bank_accounts_holder)."""
    return pages.Query(columns="id, holder_id, bank_name, number_masked, created_at", source="bank_accounts",
                       key=("created_at", "id"), scope=(pages.cond("holder_id = {}", holder_id),))


async def insert_transfer(
    conn: Connection, transfer_id: uuid.UUID, holder_id: uuid.UUID, bank_account_id: uuid.UUID,
    kind: str, amount_minor: int, currency: str,
) -> asyncpg.Record:
    row = await one(
        conn,
        "INSERT INTO transfers (id, holder_id, bank_account_id, kind, amount_minor, currency)"
        " VALUES ($1, $2, $3, $4, $5, $6)"
        " RETURNING id, holder_id, bank_account_id, kind, amount_minor, currency, created_at",
        transfer_id, holder_id, bank_account_id, kind, amount_minor, currency,
    )
    return row


def history(holder_id: uuid.UUID, currency: str | None) -> pages.Query:
    """The holder's wallet postings, newest first by posting id (served by postings_account)."""
    return pages.Query(
        columns="p.id, p.amount_minor, p.currency, p.created_at, e.kind, e.payment_id, e.refund_id, e.transfer_id,"
                " e.conversion_id, m.name AS merchant_name",
        source="accounts a JOIN postings p ON p.account_id = a.id JOIN journal_entries e ON e.id = p.entry_id"
               " LEFT JOIN payments pay ON pay.id = e.payment_id LEFT JOIN merchants m ON m.id = pay.merchant_id",
        key=("p.id",), id_column="p.id",
        scope=(pages.cond("a.kind = 'wallet'"), pages.cond("a.owner_id = {}", holder_id)),
        filters=(pages.cond("a.currency = {}", currency),) if currency is not None else (),
    )


async def holder_for_payment(conn: Connection, holder_id: uuid.UUID) -> asyncpg.Record:
    """The holder's tier and lock, read with a share lock so an operator's change waits for the payment."""
    return await one(
        conn,
        "SELECT id, tier, payments_locked_at FROM wallet_holders WHERE id = $1 FOR SHARE",
        holder_id,
    )


async def spend_for_payment(
    conn: Connection, holder_id: uuid.UUID, currency: str, day: date, amount_minor: int, merchant_id: uuid.UUID
) -> asyncpg.Record:
    """One round trip for what an authorisation needs of the holder: its tier and lock (share-locked,
    so an operator's change waits for the payment) and the day's total with this payment added."""
    return await one(
        conn,
        """
        WITH h AS (SELECT tier, payments_locked_at FROM wallet_holders WHERE id = $1 FOR SHARE),
        s AS (
            INSERT INTO daily_spend (holder_id, currency, day, spent_minor) VALUES ($1, $2, $3, $4)
            ON CONFLICT (holder_id, currency, day)
            DO UPDATE SET spent_minor = daily_spend.spent_minor + EXCLUDED.spent_minor
            RETURNING spent_minor
        )
        SELECT h.tier, h.payments_locked_at, s.spent_minor,
               (SELECT status FROM merchants WHERE id = $5) AS merchant_status
          FROM h, s
        """,
        holder_id, currency, day, amount_minor, merchant_id,
    )


async def give_back_spend(conn: Connection, holder_id: uuid.UUID, currency: str, day: date, amount_minor: int) -> None:
    await conn.execute(
        "UPDATE daily_spend SET spent_minor = GREATEST(spent_minor - $4, 0)"
        " WHERE holder_id = $1 AND currency = $2 AND day = $3",
        holder_id, currency, day, amount_minor,
    )


async def add_daily_spend(conn: Connection, holder_id: uuid.UUID, currency: str, day: date, amount_minor: int) -> int:
    """Add to the day's total and return the new total; the row lock serialises the holder's payments."""
    spent: int = await conn.fetchval(
        """
        INSERT INTO daily_spend (holder_id, currency, day, spent_minor) VALUES ($1, $2, $3, $4)
        ON CONFLICT (holder_id, currency, day) DO UPDATE SET spent_minor = daily_spend.spent_minor + EXCLUDED.spent_minor
        RETURNING spent_minor
        """,
        holder_id, currency, day, amount_minor,
    )
    return spent


async def pin_state(conn: Connection, holder_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT pin_hash, pin_failures, payments_locked_at FROM wallet_holders WHERE id = $1", holder_id
    )
    return row


async def reserve_pin_attempt(conn: Connection, holder_id: uuid.UUID, failures_max: int) -> asyncpg.Record | None:
    """Count an attempt BEFORE its PIN is checked, so a burst of guesses cannot outrun the limit.
    None when the wallet is locked or every allowed attempt is already taken."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "UPDATE wallet_holders SET pin_failures = pin_failures + 1"
        " WHERE id = $1 AND payments_locked_at IS NULL AND pin_failures < $2 RETURNING pin_hash, pin_failures",
        holder_id, failures_max,
    )
    return row


async def pin_attempt_failed(conn: Connection, holder_id: uuid.UUID, failures_max: int) -> asyncpg.Record:
    """The attempt stays counted; reaching ``failures_max`` locks payments."""
    return await one(
        conn,
        """
        UPDATE wallet_holders
           SET payments_locked_at = CASE WHEN pin_failures >= $2 THEN COALESCE(payments_locked_at, now())
                                         ELSE payments_locked_at END
         WHERE id = $1 RETURNING pin_failures, payments_locked_at
        """,
        holder_id, failures_max,
    )


async def pin_attempt_succeeded(conn: Connection, holder_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE wallet_holders SET pin_failures = 0 WHERE id = $1 AND payments_locked_at IS NULL", holder_id
    )


async def set_pin(conn: Connection, holder_id: uuid.UUID, pin_hash: str) -> None:
    await conn.execute("UPDATE wallet_holders SET pin_hash = $2, pin_failures = 0 WHERE id = $1", holder_id, pin_hash)


async def unlock(conn: Connection, holder_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"UPDATE wallet_holders SET pin_failures = 0, payments_locked_at = NULL WHERE id = $1 RETURNING {_HOLDER}",
        holder_id,
    )
    return row


async def set_tier(conn: Connection, holder_id: uuid.UUID, tier: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"UPDATE wallet_holders SET tier = $2 WHERE id = $1 RETURNING {_HOLDER}", holder_id, tier
    )
    return row
