"""Operators, merchants, stores, terminals and API keys."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import asyncpg

from gateway.store import db, pages
from gateway.store.db import Connection, one


async def insert_operator(conn: Connection, op_id: uuid.UUID, email: str, password_hash: str, role: str) -> bool:
    """False if an operator with this email exists already."""
    status = await conn.execute(
        "INSERT INTO operators (id, email, password_hash, role) VALUES ($1, $2, $3, $4) ON CONFLICT (email) DO NOTHING",
        op_id, email, password_hash, role,
    )
    return bool(status.endswith(" 1"))


async def operator_by_email(conn: Connection, email: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT id, email, password_hash, role FROM operators WHERE email = $1", email
    )
    return row


API_KEY_CHANNEL = "api_key_changes"  # see migration 0014
API_KEY_LISTENER_NAME = "gateway-api-key-listener"  # the listener's application_name in pg_stat_activity
_MERCHANT = "id, name, mcc, country, city, fee_bps, status, created_at, name_local, city_local, language_local"


async def insert_merchant(
    conn: Connection, merchant_id: uuid.UUID, name: str, mcc: str, country: str, city: str, fee_bps: int,
    name_local: str | None = None, city_local: str | None = None, language_local: str | None = None,
) -> asyncpg.Record:
    row = await one(
        conn,
        f"INSERT INTO merchants (id, name, mcc, country, city, fee_bps, name_local, city_local, language_local)"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_MERCHANT}",
        merchant_id, name, mcc, country, city, fee_bps, name_local, city_local, language_local,
    )
    return row


async def merchant(conn: Connection, merchant_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(f"SELECT {_MERCHANT} FROM merchants WHERE id = $1", merchant_id)
    return row


async def set_merchant_status(conn: Connection, merchant_id: uuid.UUID, status: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"UPDATE merchants SET status = $2 WHERE id = $1 RETURNING {_MERCHANT}", merchant_id, status
    )
    return row


def all_merchants() -> pages.Query:
    """Newest first: the operator's list of every merchant (served by merchants_created)."""
    return pages.Query(columns=_MERCHANT, source="merchants", key=("created_at", "id"), scope=())


async def insert_store(conn: Connection, store_id: uuid.UUID, merchant_id: uuid.UUID, name: str, city: str) -> asyncpg.Record:
    row = await one(
        conn,
        "INSERT INTO stores (id, merchant_id, name, city) VALUES ($1, $2, $3, $4)"
        " RETURNING id, merchant_id, name, city, created_at",
        store_id, merchant_id, name, city,
    )
    return row


async def store(conn: Connection, store_id: uuid.UUID, merchant_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT id, merchant_id, name, city, created_at FROM stores WHERE id = $1 AND merchant_id = $2",
        store_id, merchant_id,
    )
    return row


async def insert_terminal(
    conn: Connection, terminal_id: uuid.UUID, merchant_id: uuid.UUID, store_id: uuid.UUID, label: str
) -> asyncpg.Record:
    row = await one(
        conn,
        "INSERT INTO terminals (id, merchant_id, store_id, label) VALUES ($1, $2, $3, $4)"
        " RETURNING id, merchant_id, store_id, label, status, created_at",
        terminal_id, merchant_id, store_id, label,
    )
    return row


async def insert_api_key(
    conn: Connection, key_id: uuid.UUID, merchant_id: uuid.UUID, kind: str, prefix: str, key_hash: bytes
) -> asyncpg.Record:
    row = await one(
        conn,
        "INSERT INTO api_keys (id, merchant_id, kind, prefix, key_hash) VALUES ($1, $2, $3, $4, $5)"
        " RETURNING id, merchant_id, kind, prefix, created_at, revoked_at",
        key_id, merchant_id, kind, prefix, key_hash,
    )
    return row


async def api_key_by_hash(conn: Connection, key_hash: bytes) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT k.id, k.merchant_id, k.kind, m.status AS merchant_status FROM api_keys k"
        " JOIN merchants m ON m.id = k.merchant_id WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
        key_hash,
    )
    return row


def api_key_change(payload: str) -> uuid.UUID | None:
    """The merchant an ``API_KEY_CHANNEL`` notification names; None: every key may have changed."""
    try:
        return uuid.UUID(payload)
    except ValueError:
        return None


async def listen_api_key_changes(
    url: str, on_change: Callable[[uuid.UUID | None], None], on_lost: Callable[[], None], timeout_s: float,
) -> asyncpg.Connection[asyncpg.Record]:
    """A dedicated connection LISTENing to the changes the triggers of migration 0014 announce:
    ``on_change(merchant id)`` (None: all) after each commit that revoked, changed or deleted a key or
    changed a merchant's status; ``on_lost()`` when the connection closes."""
    return await db.listen(url, API_KEY_CHANNEL, lambda payload: on_change(api_key_change(payload)), timeout_s,
                           on_lost=on_lost, application_name=API_KEY_LISTENER_NAME)


async def revoke_api_key(conn: Connection, key_id: uuid.UUID, merchant_id: uuid.UUID | None) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())"
        " WHERE id = $1 AND ($2::uuid IS NULL OR merchant_id = $2)"
        " RETURNING id, merchant_id, kind, prefix, key_hash, created_at, revoked_at",
        key_id, merchant_id,
    )
    return row


def merchant_api_keys(merchant_id: uuid.UUID) -> pages.Query:
    """Newest first (served by api_keys_merchant_created)."""
    return pages.Query(columns="id, merchant_id, kind, prefix, created_at, revoked_at", source="api_keys",
                       key=("created_at", "id"), scope=(pages.cond("merchant_id = {}", merchant_id),))
