"""QR codes and pay-codes."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from gateway.store.db import Connection, one

_QR = "token, kind, merchant_id, store_id, payment_id, payload, expires_at, used_at, created_at"


async def insert_qr(
    conn: Connection, token: str, kind: str, merchant_id: uuid.UUID, store_id: uuid.UUID | None,
    payment_id: uuid.UUID | None, payload: str, expires_at: datetime | None,
) -> asyncpg.Record:
    return await one(
        conn,
        f"INSERT INTO qr_codes (token, kind, merchant_id, store_id, payment_id, payload, expires_at)"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_QR}",
        token, kind, merchant_id, store_id, payment_id, payload, expires_at,
    )


async def static_qr(conn: Connection, store_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_QR} FROM qr_codes WHERE store_id = $1 AND kind = 'static'", store_id
    )
    return row


async def qr(conn: Connection, token: str, *, for_update: bool = False) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    row: asyncpg.Record | None = await conn.fetchrow(f"SELECT {_QR} FROM qr_codes WHERE token = $1{lock}", token)
    return row


async def use_qr(conn: Connection, token: str) -> None:
    await conn.execute("UPDATE qr_codes SET used_at = now() WHERE token = $1", token)


async def latest_qr_of(conn: Connection, payment_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_QR} FROM qr_codes WHERE payment_id = $1 ORDER BY created_at DESC LIMIT 1", payment_id
    )
    return row


async def insert_pay_code(
    conn: Connection, code_hash: bytes, holder_id: uuid.UUID, device_id: str, masked: str, expires_at: datetime
) -> bool:
    """False on the (astronomically rare) collision with a live code: draw again."""
    status = await conn.execute(
        "INSERT INTO pay_codes (code_hash, holder_id, device_id, code_masked, expires_at) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (code_hash) DO NOTHING",
        code_hash, holder_id, device_id, masked, expires_at,
    )
    return bool(status.endswith(" 1"))


async def take_pay_code(conn: Connection, code_hash: bytes, now: datetime) -> asyncpg.Record | None:
    """Lock the code row; the caller decides (unused and unexpired) and marks it used."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT code_hash, holder_id, device_id, code_masked, expires_at, used_at FROM pay_codes"
        " WHERE code_hash = $1 FOR UPDATE",
        code_hash,
    )
    return row


async def expire_device_pay_codes(conn: Connection, holder_id: uuid.UUID, device_id: str, now: datetime) -> int:
    """The holder's unused pay-codes issued to a device it revoked expire now (served by pay_codes_holder)."""
    done: str = await conn.execute(
        "UPDATE pay_codes SET expires_at = $3 WHERE holder_id = $1 AND device_id = $2 AND used_at IS NULL"
        " AND expires_at > $3", holder_id, device_id, now)
    return int(done.split()[-1])


async def expire_other_devices_pay_codes(conn: Connection, holder_id: uuid.UUID, keep_device: str | None,
                                         now: datetime) -> int:
    """The holder's unused pay-codes of every device but ``keep_device`` expire now (a password change)."""
    done: str = await conn.execute(
        "UPDATE pay_codes SET expires_at = $3 WHERE holder_id = $1 AND device_id IS DISTINCT FROM $2"
        " AND used_at IS NULL AND expires_at > $3", holder_id, keep_device, now)
    return int(done.split()[-1])


async def use_pay_code(conn: Connection, code_hash: bytes, payment_id: uuid.UUID) -> None:
    await conn.execute("UPDATE pay_codes SET used_at = now(), payment_id = $2 WHERE code_hash = $1", code_hash, payment_id)


async def reap_pay_codes(conn: Connection, older_than: datetime, limit: int) -> int:
    result = await conn.execute(
        "DELETE FROM pay_codes WHERE ctid = ANY(ARRAY(SELECT ctid FROM pay_codes WHERE expires_at < $1"
        " AND payment_id IS NULL LIMIT $2 FOR UPDATE SKIP LOCKED))",
        older_than, limit,
    )
    return int(result.split()[-1])
