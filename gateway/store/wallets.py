"""Wallet holders, linked bank accounts, transfers and wallet history."""

from __future__ import annotations

import uuid

import asyncpg

from gateway.store.db import Connection, one


async def insert_holder(conn: Connection, holder_id: uuid.UUID, phone: str, password_hash: str) -> asyncpg.Record | None:
    """None if the phone number is registered already."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "INSERT INTO wallet_holders (id, phone, password_hash) VALUES ($1, $2, $3)"
        " ON CONFLICT (phone) DO NOTHING RETURNING id, phone, tier, created_at",
        holder_id, phone, password_hash,
    )
    return row


async def holder_by_phone(conn: Connection, phone: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT id, phone, password_hash, tier, created_at FROM wallet_holders WHERE phone = $1", phone
    )
    return row


async def holder(conn: Connection, holder_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT id, phone, tier, created_at FROM wallet_holders WHERE id = $1", holder_id
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
    row = await one(conn, 
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


async def list_bank_accounts(conn: Connection, holder_id: uuid.UUID) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT id, holder_id, bank_name, number_masked, created_at FROM bank_accounts"
            " WHERE holder_id = $1 ORDER BY created_at DESC",
            holder_id,
        )
    )


async def insert_transfer(
    conn: Connection, transfer_id: uuid.UUID, holder_id: uuid.UUID, bank_account_id: uuid.UUID,
    kind: str, amount_minor: int, currency: str,
) -> asyncpg.Record:
    row = await one(conn, 
        "INSERT INTO transfers (id, holder_id, bank_account_id, kind, amount_minor, currency)"
        " VALUES ($1, $2, $3, $4, $5, $6)"
        " RETURNING id, holder_id, bank_account_id, kind, amount_minor, currency, created_at",
        transfer_id, holder_id, bank_account_id, kind, amount_minor, currency,
    )
    return row


async def history(
    conn: Connection, holder_id: uuid.UUID, currency: str | None, limit: int, after: int | None
) -> list[asyncpg.Record]:
    """The holder's wallet postings, newest first; ``after`` is the posting id of the previous page's last row."""
    return list(
        await conn.fetch(
            """
            SELECT p.id, p.amount_minor, p.currency, p.created_at, e.kind, e.payment_id, e.refund_id, e.transfer_id,
                   m.name AS merchant_name
              FROM accounts a
              JOIN postings p ON p.account_id = a.id
              JOIN journal_entries e ON e.id = p.entry_id
              LEFT JOIN payments pay ON pay.id = e.payment_id
              LEFT JOIN merchants m ON m.id = pay.merchant_id
             WHERE a.kind = 'wallet' AND a.owner_id = $1 AND ($2::text IS NULL OR a.currency = $2)
               AND ($4::int8 IS NULL OR p.id < $4)
             ORDER BY p.id DESC LIMIT $3
            """,
            holder_id, currency, limit + 1, after,
        )
    )
