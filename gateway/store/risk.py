"""Risk rules' rows, and the holder's recent payments a velocity rule counts."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import asyncpg

from gateway.domain.risk import Recent, Rule, RuleKind
from gateway.store import pages
from gateway.store.db import Connection

COLUMNS = ("id, kind, outcome, holder_id, currency, window_s, max_count, max_amount_minor, created_at, "
           "disabled_at")


def to_domain(row: asyncpg.Record) -> Rule:
    return Rule(id=row["id"], kind=RuleKind(row["kind"]), holder_id=row["holder_id"], currency=row["currency"],
                window_s=row["window_s"], max_count=row["max_count"], max_amount_minor=row["max_amount_minor"])


async def insert(conn: Connection, rule: Rule, now: datetime) -> asyncpg.Record:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"INSERT INTO risk_rules (id, kind, outcome, holder_id, currency, window_s, max_count, max_amount_minor,"
        f" created_at) VALUES ($1, $2, 'decline', $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}",
        rule.id, rule.kind.value, rule.holder_id, rule.currency, rule.window_s, rule.max_count,
        rule.max_amount_minor, now)
    assert row is not None
    return row


async def get(conn: Connection, rule_id: uuid.UUID, *, for_update: bool = False) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    row: asyncpg.Record | None = await conn.fetchrow(f"SELECT {COLUMNS} FROM risk_rules WHERE id = $1{lock}", rule_id)
    return row


async def disable(conn: Connection, rule_id: uuid.UUID, now: datetime) -> asyncpg.Record:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"UPDATE risk_rules SET disabled_at = coalesce(disabled_at, $2) WHERE id = $1 RETURNING {COLUMNS}",
        rule_id, now)
    assert row is not None
    return row


async def active(conn: Connection) -> list[asyncpg.Record]:
    return list(await conn.fetch(f"SELECT {COLUMNS} FROM risk_rules WHERE disabled_at IS NULL"))


async def holder_exists(conn: Connection, holder_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM wallet_holders WHERE id = $1)", holder_id))


def all_rules() -> pages.Query:
    """Newest first (served by risk_rules_created)."""
    return pages.Query(columns=COLUMNS, source="risk_rules", key=("created_at", "id"), scope=())


async def recent(conn: Connection, holder_id: uuid.UUID, currency: str, now: datetime, window_s: int) -> Recent:
    """The holder's payments authorised (held or captured) within the window (served by payments_payer).
    Call it after the holder's spend row is locked: the holder's payments are then counted one at a time."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, coalesce(sum(amount_minor) FILTER (WHERE currency = $2), 0) AS total FROM payments"
        " WHERE payer_id = $1 AND updated_at > $3"
        " AND status IN ('requires_capture', 'succeeded', 'requires_action')",
        holder_id, currency, now - timedelta(seconds=window_s))
    assert row is not None
    return Recent(count=int(row["n"]), amount_minor=int(row["total"]))
