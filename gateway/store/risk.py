"""Risk rules' rows, the decisions taken, and what the rules read: the payments counted per wallet, device
or merchant when Redis is down, the holder's usual amounts, the device's age."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg
import msgspec

from gateway.domain.risk import Baseline, Outcome, Recent, Rule, RuleKind
from gateway.store import pages
from gateway.store.db import Connection

COLUMNS = ("id, kind, outcome, holder_id, currency, window_s, max_count, max_amount_minor, created_at, "
           "disabled_at, device_id, merchant_id, multiplier_pct, baseline, history_min, device_age_s, min_amount_minor")
Scope = Literal["holder_id", "device_id", "merchant_id"]  # what a velocity rule counts by (risk_decisions)
DECISION_COLUMNS = ("id, created_at, holder_id, payment_id, merchant_id, channel, currency, amount_minor, device_id,"
                    " outcome, reasons, passed, challenge_id")


def to_domain(row: asyncpg.Record) -> Rule:
    return Rule(id=row["id"], kind=RuleKind(row["kind"]), holder_id=row["holder_id"], currency=row["currency"],
                window_s=row["window_s"], max_count=row["max_count"], max_amount_minor=row["max_amount_minor"],
                outcome=Outcome(row["outcome"]), device_id=row["device_id"], merchant_id=row["merchant_id"],
                multiplier_pct=row["multiplier_pct"],
                baseline=None if row["baseline"] is None else Baseline(row["baseline"]),
                history_min=row["history_min"], device_age_s=row["device_age_s"],
                min_amount_minor=row["min_amount_minor"])


async def insert(conn: Connection, rule: Rule, now: datetime) -> asyncpg.Record:
    row: asyncpg.Record | None = await conn.fetchrow(
        "INSERT INTO risk_rules (id, kind, outcome, holder_id, currency, window_s, max_count, max_amount_minor,"
        " created_at, device_id, merchant_id, multiplier_pct, baseline, history_min, device_age_s, min_amount_minor)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        f" RETURNING {COLUMNS}",
        rule.id, rule.kind.value, rule.outcome.value, rule.holder_id, rule.currency, rule.window_s, rule.max_count,
        rule.max_amount_minor, now, rule.device_id, rule.merchant_id, rule.multiplier_pct,
        None if rule.baseline is None else rule.baseline.value, rule.history_min, rule.device_age_s,
        rule.min_amount_minor)
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
    """By id: the PostgreSQL velocity fallback takes its advisory locks in this order (no deadlock)."""
    return list(await conn.fetch(f"SELECT {COLUMNS} FROM risk_rules WHERE disabled_at IS NULL ORDER BY id"))


_DEVICE_BLOCK_LOCK = "hashtextextended('risk block of device' || chr(31) || $1, 0)"


async def lock_holder_for_block(conn: Connection, holder_id: uuid.UUID) -> bool:
    """A blocked_wallet rule's creation: the holder's row, against the ``FOR SHARE`` of every use case that
    moves its money (``store.wallets.holder_for_payment``), taken before they read the rules; False: no
    such holder. ``FOR NO KEY UPDATE``: rows referencing the holder are not held up."""
    found = await conn.fetchval("SELECT id FROM wallet_holders WHERE id = $1 FOR NO KEY UPDATE", holder_id)
    return found is not None


async def lock_device_for_block(conn: Connection, device_id: str, *, shared: bool) -> None:
    """A device's block lock, to the transaction's end: exclusive for a blocked_device rule's creation,
    shared for money leaving from the device, taken before it reads the rules."""
    call = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    await conn.execute(f"SELECT {call}({_DEVICE_BLOCK_LOCK})", device_id)


async def holder_exists(conn: Connection, holder_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM wallet_holders WHERE id = $1)", holder_id))


async def merchant_exists(conn: Connection, merchant_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM merchants WHERE id = $1)", merchant_id))


def all_rules() -> pages.Query:
    """Newest first (served by risk_rules_created)."""
    return pages.Query(columns=COLUMNS, source="risk_rules", key=("created_at", "id"), scope=())


async def recent_allowed(conn: Connection, scope: Scope, value: Any, currency: str | None, now: datetime,
                         window_s: int, lock_key: str) -> Recent:
    """The payments allowed (or held for their step-ups) within the window of a holder, from a device or at a
    merchant, counted from the decisions (the fallback while Redis is down; served by risk_decisions_holder /
    _device / _merchant and _held_device / _held_merchant: the
    holder's reads its decisions of every outcome within the window). The transaction first
    takes an advisory lock on ``lock_key`` (the rule and the scope): the scope's payments are then counted
    one at a time until each commits its own decision."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", lock_key)
    # An allow decision, or a pay-code charge held for its step-ups and not answered yet (once confirmed
    # it is counted through its allow decision), as Redis counts it when it is held (migration 0033).
    row = await conn.fetchrow(
        "SELECT count(*) AS n, coalesce(sum(amount_minor) FILTER (WHERE currency = $2), 0) AS total FROM ("
        f" SELECT amount_minor, currency FROM risk_decisions WHERE {scope} = $1 AND outcome = 'allow'"
        " AND created_at > $3"
        f" UNION ALL SELECT amount_minor, currency FROM risk_decisions WHERE {scope} = $1 AND held"
        " AND step_up_used_at IS NULL AND created_at > $3) d",
        value, currency, now - timedelta(seconds=window_s))
    assert row is not None
    return Recent(count=int(row["n"]), amount_minor=int(row["total"]))


async def usual_amounts(conn: Connection, holder_id: uuid.UUID, currency: str) -> tuple[int, ...]:
    """The holder's last captured amounts in the currency, oldest first (one row: holder_amounts)."""
    found = await conn.fetchval("SELECT amounts_minor FROM holder_amounts WHERE holder_id = $1 AND currency = $2",
                                holder_id, currency)
    return () if found is None else tuple(int(a) for a in found)


async def device_first_seen(conn: Connection, holder_id: uuid.UUID, device_id: str) -> datetime | None:
    """When the holder's device was first seen (signed in or proven); None: never."""
    found: datetime | None = await conn.fetchval(
        "SELECT created_at FROM wallet_devices WHERE holder_id = $1 AND device_id = $2", holder_id, device_id)
    return found


async def insert_decision(conn: Connection, *, decision_id: uuid.UUID, now: datetime, holder_id: uuid.UUID,
                          payment_id: uuid.UUID | None, merchant_id: uuid.UUID | None, channel: str, currency: str,
                          amount_minor: int, device_id: str | None, outcome: str, reasons: list[dict[str, Any]],
                          passed: list[str], challenge_id: uuid.UUID | None, held: bool = False) -> asyncpg.Record:
    """``held``: the decision holds its payment for the holder's step-ups (migration 0029). No payment and
    no merchant: money leaving the wallet otherwise, a decline (migration 0036)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "INSERT INTO risk_decisions (id, created_at, holder_id, payment_id, merchant_id, channel, currency,"
        " amount_minor, device_id, outcome, reasons, passed, challenge_id, held)"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12, $13, $14) RETURNING {DECISION_COLUMNS}",
        decision_id, now, holder_id, payment_id, merchant_id, channel, currency, amount_minor, device_id, outcome,
        msgspec.json.encode(reasons).decode(), passed, challenge_id, held)
    assert row is not None
    return row


async def use_code(conn: Connection, holder_id: uuid.UUID, merchant_id: uuid.UUID, currency: str, amount_minor: int,
                   now: datetime, valid_s: int) -> uuid.UUID | None:
    """Take one code verified for this payment (the holder, merchant, currency and amount of a require_otp
    decision whose challenge was answered less than ``valid_s`` ago and not used yet): the decision's id,
    or None. Used in the payment's transaction, so a payment that fails leaves the code usable. A held
    decision's code opens its own payment only (``held_decision``)."""
    found: uuid.UUID | None = await conn.fetchval(
        "UPDATE risk_decisions SET step_up_used_at = $5 WHERE id = ("
        " SELECT d.id FROM risk_decisions d JOIN sign_in_challenges c ON c.id = d.challenge_id"
        " WHERE d.holder_id = $1 AND d.merchant_id = $2 AND d.amount_minor = $4 AND d.currency = $3"
        " AND d.outcome = 'require_otp' AND d.step_up_used_at IS NULL AND NOT d.held AND c.reason = 'payment'"
        " AND c.consumed_at > $5::timestamptz - make_interval(secs => $6)"
        " ORDER BY d.created_at LIMIT 1 FOR UPDATE OF d SKIP LOCKED) RETURNING id",
        holder_id, merchant_id, currency, amount_minor, now, float(valid_s))
    return found


async def held_decision(conn: Connection, payment_id: uuid.UUID, holder_id: uuid.UUID) -> asyncpg.Record | None:
    """The decision that holds the holder's payment for its step-ups, if one does (risk_decisions_held_payment)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {DECISION_COLUMNS}, step_up_used_at FROM risk_decisions"
        " WHERE payment_id = $1 AND holder_id = $2 AND held", payment_id, holder_id)
    return row


async def answer_held(conn: Connection, decision_id: uuid.UUID, now: datetime) -> bool:
    """Mark a held decision answered (its payment confirmed); False if it was already."""
    done = await conn.execute("UPDATE risk_decisions SET step_up_used_at = $2 WHERE id = $1 AND held"
                              " AND step_up_used_at IS NULL", decision_id, now)
    return bool(done == "UPDATE 1")


def decisions(holder_id: uuid.UUID | None, outcome: str | None, *, alerts_only: bool) -> pages.Query:
    """Newest first (served by risk_decisions_created, _holder, _alerts)."""
    filters = []
    if holder_id is not None:
        filters.append(pages.cond("holder_id = {}", holder_id))
    if outcome is not None:
        filters.append(pages.cond("outcome = {}", outcome))
    if alerts_only:
        filters.append(pages.cond("outcome <> 'allow'"))
    return pages.Query(columns=DECISION_COLUMNS, source="risk_decisions", key=("created_at", "id"), scope=(),
                       filters=tuple(filters))
