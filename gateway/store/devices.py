"""Enrolment codes, POS devices (and their agents' heartbeats) and wallet tap tokens."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from gateway.store import pages
from gateway.store.db import Connection, one

_DEVICE = "id, merchant_id, store_id, terminal_id, name, status, created_at, revoked_at"
_TAP = "id, holder_id, phone_device, pan_last4, psn, expiry_yymm, last_atc, status, created_at"


async def insert_enrolment_code(
    conn: Connection, code_hash: bytes, terminal_id: uuid.UUID, merchant_id: uuid.UUID, expires_at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO enrolment_codes (code_hash, terminal_id, merchant_id, expires_at) VALUES ($1, $2, $3, $4)",
        code_hash, terminal_id, merchant_id, expires_at,
    )


async def take_enrolment_code(conn: Connection, code_hash: bytes, now: datetime) -> asyncpg.Record | None:
    """Use the code once: None if unknown, used or expired (the caller cannot tell which, on purpose)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        """
        UPDATE enrolment_codes e SET used_at = $2
          FROM terminals t
         WHERE e.code_hash = $1 AND e.used_at IS NULL AND e.expires_at > $2
           AND t.id = e.terminal_id AND t.status = 'active'
        RETURNING e.terminal_id, e.merchant_id, t.store_id
        """,
        code_hash, now,
    )
    return row


async def insert_device(
    conn: Connection, device_id: uuid.UUID, merchant_id: uuid.UUID, store_id: uuid.UUID, terminal_id: uuid.UUID,
    name: str, secret_hash: bytes,
) -> asyncpg.Record:
    return await one(
        conn,
        f"INSERT INTO devices (id, merchant_id, store_id, terminal_id, name, secret_hash)"
        f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_DEVICE}",
        device_id, merchant_id, store_id, terminal_id, name, secret_hash,
    )


async def device(conn: Connection, device_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_DEVICE}, secret_hash FROM devices WHERE id = $1", device_id
    )
    return row


@dataclass(frozen=True, slots=True)
class Standing:
    active: bool  # the device and its terminal are active
    merchant_active: bool  # its merchant is not suspended


async def device_standing(conn: Connection, device_id: uuid.UUID) -> Standing:
    row = await conn.fetchrow(
        "SELECT d.status = 'active' AND t.status = 'active' AS active, m.status = 'active' AS merchant_active"
        " FROM devices d JOIN terminals t ON t.id = d.terminal_id JOIN merchants m ON m.id = d.merchant_id"
        " WHERE d.id = $1",
        device_id,
    )
    return Standing(False, False) if row is None else Standing(row["active"], row["merchant_active"])


async def revoke_terminal(conn: Connection, terminal_id: uuid.UUID, merchant_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "UPDATE terminals SET status = 'revoked' WHERE id = $1 AND merchant_id = $2"
        " RETURNING id, merchant_id, store_id, label, status, created_at",
        terminal_id, merchant_id,
    )
    if row is not None:
        await conn.execute(
            "UPDATE devices SET status = 'revoked', revoked_at = now() WHERE terminal_id = $1 AND status = 'active'",
            terminal_id,
        )
    return row


async def record_heartbeat(
    conn: Connection, device_id: uuid.UUID, agent_version: str, backlog_count: int, backlog_oldest_age_s: int | None,
) -> datetime | None:
    """What the agent reports, in place: one UPDATE. None if the device is not active any more."""
    seen_at: datetime | None = await conn.fetchval(
        "UPDATE devices SET agent_version = $2, last_seen_at = now(), offline_backlog_count = $3,"
        " offline_backlog_oldest_at = now() - make_interval(secs => $4::double precision)"
        " WHERE id = $1 AND status = 'active' RETURNING last_seen_at",
        device_id, agent_version, backlog_count, backlog_oldest_age_s,
    )
    return seen_at


# A terminal with the health of its agent: an active device before a revoked one (a revoked
# terminal still shows what its agent last reported), then the one seen last, then enrolled last.
_TERMINAL_COLUMNS = """t.id, t.merchant_id, t.store_id, t.label, t.status, t.created_at,
           d.id AS device_id, d.agent_version, d.last_seen_at, d.offline_backlog_count, d.offline_backlog_oldest_at"""
_TERMINAL_SOURCE = """terminals t
    LEFT JOIN LATERAL (SELECT id, agent_version, last_seen_at, offline_backlog_count, offline_backlog_oldest_at
                       FROM devices WHERE terminal_id = t.id
                       ORDER BY status = 'active' DESC, last_seen_at DESC NULLS LAST, created_at DESC LIMIT 1) d ON true"""
_TERMINAL_WITH_AGENT = f"SELECT {_TERMINAL_COLUMNS} FROM {_TERMINAL_SOURCE}"


async def terminal_with_agent(
    conn: Connection, terminal_id: uuid.UUID, merchant_id: uuid.UUID | None
) -> asyncpg.Record | None:
    """Scoped to ``merchant_id`` (None: any merchant's, for operators)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        _TERMINAL_WITH_AGENT + " WHERE t.id = $1 AND ($2::uuid IS NULL OR t.merchant_id = $2)",
        terminal_id, merchant_id,
    )
    return row


def terminals_query(merchant_id: uuid.UUID | None) -> pages.Query:
    """Terminals newest first on (created_at, id), each with its agent's last report; ``merchant_id=None``:
    every merchant's (operators)."""
    scope = (pages.cond("t.merchant_id = {}", merchant_id),) if merchant_id is not None else ()
    return pages.Query(columns=_TERMINAL_COLUMNS, source=_TERMINAL_SOURCE,
                       key=("t.created_at", "t.id"), scope=scope, id_column="t.id")


async def terminal(
    conn: Connection, terminal_id: uuid.UUID, merchant_id: uuid.UUID | None
) -> asyncpg.Record | None:
    """The terminal, scoped to ``merchant_id`` (None: any merchant's, for operators)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT id, merchant_id, store_id, label, status, created_at FROM terminals"
        " WHERE id = $1 AND ($2::uuid IS NULL OR merchant_id = $2)",
        terminal_id, merchant_id,
    )
    return row


async def insert_tap_token(
    conn: Connection, token_id: uuid.UUID, holder_id: uuid.UUID, phone_device: str, pan_hash: bytes, pan_last4: str,
    psn: int, expiry_yymm: str,
) -> asyncpg.Record | None:
    """None on a PAN collision (draw another)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"INSERT INTO tap_tokens (id, holder_id, phone_device, pan_hash, pan_last4, psn, expiry_yymm)"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (pan_hash) DO NOTHING RETURNING {_TAP}",
        token_id, holder_id, phone_device, pan_hash, pan_last4, psn, expiry_yymm,
    )
    return row


async def tap_token_by_pan(conn: Connection, pan_hash: bytes) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(f"SELECT {_TAP} FROM tap_tokens WHERE pan_hash = $1", pan_hash)
    return row


async def claim_atc(
    conn: Connection, token_id: uuid.UUID, atc: int, device_id: uuid.UUID, terminal_transaction_id: str
) -> bool:
    """Burn the tap's counter (committed on its own). True if it was above every counter seen, or if
    this very tap (same device and terminal transaction) burnt it before: a retry."""
    row = await one(
        conn,
        """
        WITH advanced AS (
            UPDATE tap_tokens SET last_atc = $2 WHERE id = $1 AND last_atc < $2 AND status = 'active' RETURNING id
        ), used AS (
            INSERT INTO tap_uses (token_id, atc, device_id, terminal_transaction_id)
            SELECT id, $2, $3, $4 FROM advanced RETURNING 1
        )
        SELECT EXISTS (SELECT 1 FROM used) AS fresh,
               EXISTS (SELECT 1 FROM tap_uses WHERE token_id = $1 AND atc = $2 AND device_id = $3
                        AND terminal_transaction_id = $4) AS retry
        """,
        token_id, atc, device_id, terminal_transaction_id,
    )
    return bool(row["fresh"] or row["retry"])


async def revoke_phone_tap_tokens(conn: Connection, holder_id: uuid.UUID, phone_device: str) -> int:
    """The holder's active tap tokens provisioned to a phone it revoked (served by tap_tokens_holder)."""
    done: str = await conn.execute(
        "UPDATE tap_tokens SET status = 'revoked' WHERE holder_id = $1 AND phone_device = $2 AND status = 'active'",
        holder_id, phone_device)
    return int(done.split()[-1])


async def revoke_other_phones_tap_tokens(conn: Connection, holder_id: uuid.UUID, keep_phone: str | None) -> int:
    """The holder's active tap tokens of every phone but ``keep_phone`` (a password change)."""
    done: str = await conn.execute(
        "UPDATE tap_tokens SET status = 'revoked' WHERE holder_id = $1 AND phone_device IS DISTINCT FROM $2"
        " AND status = 'active'", holder_id, keep_phone)
    return int(done.split()[-1])


async def revoke_tap_token(conn: Connection, token_id: uuid.UUID, holder_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"UPDATE tap_tokens SET status = 'revoked' WHERE id = $1 AND holder_id = $2 RETURNING {_TAP}",
        token_id, holder_id,
    )
    return row
