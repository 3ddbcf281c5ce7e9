"""Payments, refunds and the event rows written with them."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg
import msgspec

from gateway import metrics
from gateway.domain import ids
from gateway.domain.payments import CaptureMethod, Payment, Status
from gateway.domain.risk import Window
from gateway.store import pages
from gateway.store.db import Connection, one
from gateway.store.idempotency import AT_ONCE_REFUSED, Done
from gateway.store.ledger import Movement, is_overdraft

log = logging.getLogger(__name__)

_COLUMNS = (
    "id, merchant_id, amount_minor, currency, status, capture_method, expires_at, payer_id,"
    " authorized_minor, captured_minor, refunded_minor, fee_minor, authorization_expires_at, confirm_by"
)
_EXTRA = (
    "store_id, terminal_id, merchant_reference, description, fee_bps, fee_fixed_minor, wallet_account_id, channel, created_at,"
    " updated_at, spend_day, return_url, cancel_url, metadata::text AS metadata, campaign_id, discount_minor,"
    " discount_funded_by, discount_clawed_back_minor, cashback_campaign_id, cashback_minor, cashback_clawed_back_minor,"
    " cashback_funded_by, reserved_campaign_id, discount_reserved_minor, reserved_funded_by"
)
_REFUND = "id, payment_id, merchant_id, amount_minor, fee_back_minor, currency, reason, status, created_at," \
    " metadata::text AS metadata, discount_clawed_back_minor, cashback_clawed_back_minor"


class TerminalTransactionTaken(Exception):
    """Another payment of the terminal carries this terminal transaction id (``payments_terminal_txn``)."""


@contextlib.contextmanager
def _one_payment_per_terminal_transaction() -> Iterator[None]:
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        if getattr(exc, "constraint_name", None) == "payments_terminal_txn":
            raise TerminalTransactionTaken() from exc
        raise


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def to_domain(row: asyncpg.Record) -> Payment:
    return Payment(
        id=row["id"],
        merchant_id=row["merchant_id"],
        amount_minor=row["amount_minor"],
        currency=row["currency"],
        status=Status(row["status"]),
        capture_method=CaptureMethod(row["capture_method"]),
        expires_at=row["expires_at"],
        payer_id=row["payer_id"],
        authorized_minor=row["authorized_minor"],
        captured_minor=row["captured_minor"],
        refunded_minor=row["refunded_minor"],
        fee_minor=row["fee_minor"],
        authorization_expires_at=row["authorization_expires_at"],
        confirm_by=row["confirm_by"],
    )


async def insert(
    conn: Connection,
    payment: Payment,
    *,
    store_id: uuid.UUID | None,
    terminal_id: uuid.UUID | None,
    merchant_reference: str | None,
    description: str | None,
    fee_bps: int,
    channel: str | None = None,
    terminal_transaction_id: str | None = None,
    return_url: str | None = None,
    cancel_url: str | None = None,
    metadata: dict[str, str] | None = None,
) -> asyncpg.Record:
    """``TerminalTransactionTaken`` if the terminal's transaction id names another payment."""
    with _one_payment_per_terminal_transaction():
        row = await one(
            conn,
            f"""
        INSERT INTO payments (id, merchant_id, store_id, terminal_id, amount_minor, currency, status,
                              capture_method, merchant_reference, description, expires_at, fee_bps, channel,
                              terminal_transaction_id, return_url, cancel_url, metadata, fee_fixed_minor)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17::jsonb,
                (SELECT fee_fixed_minor FROM merchants WHERE id = $2))
        RETURNING {_COLUMNS}, {_EXTRA}
        """,
            payment.id, payment.merchant_id, store_id, terminal_id, payment.amount_minor, payment.currency,
            payment.status.value, payment.capture_method.value, merchant_reference, description,
            payment.expires_at, fee_bps, channel, terminal_transaction_id, return_url, cancel_url, _json(metadata or {}),
        )
    return row


async def _at_once(conn: Connection, sql: str, *args: Any, posts: str | None = None) -> bool:
    """Run a one-statement use case: True when it was applied, False when it changed nothing because a
    guard failed, funds were short, or it met another transaction (a deadlock, a unique key): the
    caller then runs the general path, which decides afresh. A lost connection or a timeout is raised
    (the outcome is then unknown, as for any statement: the client's retry with its key finds out).
    ``posts``: the kind of ledger entry the statement writes, timed as a posting (the whole statement)."""
    started_s = time.perf_counter()
    try:
        await conn.execute(sql, *args)
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == AT_ONCE_REFUSED or is_overdraft(exc) or isinstance(
                exc, (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError, asyncpg.SerializationError)):
            return False
        raise
    if posts is not None:
        metrics.LEDGER_POST_DURATION.labels(posts).observe(time.perf_counter() - started_s)
    return True


@dataclass(frozen=True, slots=True)
class CreatedAtOnce:
    """What creating a payment in one statement writes: the payment (its fee terms are copied from its
    merchant there), its ``payment.created`` event and the fields of the request."""

    payment: Payment
    now: datetime
    store_id: uuid.UUID | None
    terminal_id: uuid.UUID | None
    merchant_reference: str | None
    description: str | None
    return_url: str | None
    cancel_url: str | None
    metadata: dict[str, str]
    event_id: uuid.UUID
    event_data: bytes


_CREATE_BATCH = """
    WITH i AS (
        SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::bigint[], $6::text[], $7::text[],
                             $8::text[], $9::text[], $10::text[], $11::timestamptz[], $12::text[], $13::text[],
                             $14::text[], $15::timestamptz[], $16::uuid[], $17::text[], $18::text[], $19::text[],
                             $20::bytea[], $21::text[], $22::text[], $23::int[], $24::bytea[]) WITH ORDINALITY
               AS t(id, merchant, store, terminal, amount, currency, status, capture, reference, description,
                    expires, return_url, cancel_url, metadata, now_at, event_id, event_data, k_principal, k_key,
                    k_hash, k_method, k_path, k_status, k_body, item)
    ), ok AS (  -- the merchant's own store (or none); a key's first item only
        SELECT i.*, m.fee_bps, m.fee_fixed_minor,
               row_number() OVER (PARTITION BY i.k_principal, i.k_key ORDER BY i.item) AS nth
          FROM i JOIN merchants m ON m.id = i.merchant
         WHERE i.store IS NULL OR EXISTS (SELECT 1 FROM stores s WHERE s.id = i.store AND s.merchant_id = i.merchant)
    ), k AS (  -- an existing key (done, or its request in flight) inserts nothing: its item writes nothing
        INSERT INTO idempotency_keys (principal, key, request_hash, method, path, response_status, response_body)
        SELECT k_principal, k_key, k_hash, k_method, k_path, k_status, k_body FROM ok
         WHERE k_principal IS NOT NULL AND nth = 1
        ON CONFLICT (principal, key) DO NOTHING
        RETURNING principal, key
    ), w AS (
        SELECT ok.* FROM ok WHERE ok.k_principal IS NULL
        UNION ALL
        SELECT ok.* FROM ok JOIN k ON k.principal = ok.k_principal AND k.key = ok.k_key WHERE ok.nth = 1
    ), pay AS (
        INSERT INTO payments (id, merchant_id, store_id, terminal_id, amount_minor, currency, status, capture_method,
                              merchant_reference, description, expires_at, fee_bps, fee_fixed_minor, return_url,
                              cancel_url, metadata, created_at, updated_at)
        SELECT w.id, w.merchant, w.store, w.terminal, w.amount, w.currency, w.status, w.capture, w.reference,
               w.description, w.expires, w.fee_bps, w.fee_fixed_minor, w.return_url, w.cancel_url, w.metadata::jsonb,
               w.now_at, w.now_at
          FROM w
        RETURNING 1
    ), ev AS (
        INSERT INTO events (id, type, merchant_id, holder_id, object_id, data)
        SELECT w.event_id, 'payment.created', w.merchant, NULL, w.id, w.event_data::jsonb FROM w
        RETURNING 1
    )
    SELECT array_agg(w.item IS NOT NULL ORDER BY i.item) FROM i LEFT JOIN w ON w.item = i.item
"""


async def create_batch(conn: Connection, items: list[tuple[CreatedAtOnce, Done | None]]) -> list[bool]:
    """Create several payments in one statement (so one transaction and one commit), each with its event
    and its key's stored answer. Item i is False, with nothing of it written, when its store is not its
    merchant's, its key exists (done, or its request in flight), or an earlier item of the batch has the
    same key; the others are written. The statement failing on a row (a unique key met, a deadlock, a
    CHECK) writes nothing and makes every item False: each general path then decides its own. A lost
    connection or a timeout is raised (the outcome is unknown, as for any statement)."""
    cols: list[list[Any]] = [[] for _ in range(24)]
    for made, done in items:
        pay = made.payment
        row = (pay.id, pay.merchant_id, made.store_id, made.terminal_id, pay.amount_minor, pay.currency,
               pay.status.value, pay.capture_method.value, made.merchant_reference, made.description, pay.expires_at,
               made.return_url, made.cancel_url, _json(made.metadata), made.now, made.event_id,
               made.event_data.decode(), *(done.args() if done is not None else (None,) * 7))
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    try:
        applied: list[bool] = await conn.fetchval(_CREATE_BATCH, *cols)
    except asyncpg.PostgresError as exc:
        if isinstance(exc, (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError, asyncpg.SerializationError,
                            asyncpg.CheckViolationError)):
            return [False] * len(items)
        raise
    return applied


@dataclass(frozen=True, slots=True)
class RiskAllowed:
    """The risk rules' 'allow' of a payment paid in one statement, recorded as the general path records it
    (a ``risk_decisions`` row with no reasons, written in the statement when its item is applied); and the
    velocity windows the service charged it in before the statement (``services.context.pay_counted``)."""

    decision_id: uuid.UUID
    device_id: str | None
    windows: tuple[Window, ...] = ()


@dataclass(frozen=True, slots=True)
class PaidAtOnce:
    """What paying a payment in one statement writes, decided from the payment's row as read (``seen``)."""

    payment: Payment  # as paid
    seen_updated_at: datetime  # the row's updated_at when read: any change since makes the statement refuse
    now: datetime
    decided_until: datetime  # the decision holds until then (the payment's expiry, the end of the spend day)
    holder_id: uuid.UUID
    tier: int  # the holder's tier the caps were checked against (a change since makes it refuse)
    wallet_account_id: int
    channel: str
    spend_day: date
    daily_max_minor: int  # the day's total with this payment may not exceed it
    event_type: str
    event_id: uuid.UUID
    event_data: bytes
    capture: Movement | None  # the ledger entry of an automatic capture
    hold_minor: int  # else the amount held on the wallet (a manual capture)
    discount: Discount | None = None  # a campaign's discount (its full stated benefit), taken with the payment
    per_holder_max: int | None = None  # that campaign's per-holder limit (None: none)
    risk: RiskAllowed | None = None  # the risk decision recorded with it (None: no rule asks for one)


BATCH_REFUSED = "GW003"  # gateway_pay_batch: its one UPDATE of the applied items' payments was refused


async def pay_batch(conn: Connection, items: list[tuple[PaidAtOnce, Done | None]]) -> list[bool]:
    """Pay several payments in one statement and one transaction (``gateway_pay_batch``, migrations
    0015, 0025, 0026 and 0034), each in its own subtransaction, in the use cases' lock order: the payment, the holder
    (share), the day's spend, the balance shards. Item i is False, with nothing of it written, when
    its payment changed since it was read, its holder's tier or lock changed, its merchant is not
    active, the day's cap would be crossed, its campaign can no longer give its whole discount (ended,
    out of places or budget, the holder's limit reached), funds are short, it met a deadlock or its
    key exists, or another item of the batch pays its payment; the others are written and committed
    together (all False, nothing written, if a CHECK of payments refuses their one UPDATE). The day's spend counts the full
    amount, whatever the discount. Velocity limits are not the statement's: the risk rules count every
    kind in their windows before it (``services.context.pay_counted``)."""
    cols: dict[str, list[Any]] = {name: [] for name in (
        "pid", "seen", "status", "holder", "authorized", "captured", "fee", "auth_exp", "now", "wallet", "channel",
        "day", "currency", "tier", "daily_max", "event_id", "event_type", "event_data", "hold", "kind",
        "p_item", "p_account", "p_currency", "p_amount", "s_item", "s_account", "s_shard", "s_delta", "s_released",
        "k_principal", "k_key", "k_hash", "k_method", "k_path", "k_status", "k_body", "until",
        "campaign", "discount", "funded", "holder_max", "spend")}
    for item, (paid, done) in enumerate(items, start=1):
        pay = paid.payment
        for name, value in (
            ("pid", pay.id), ("seen", paid.seen_updated_at), ("status", pay.status.value), ("holder", paid.holder_id),
            ("authorized", pay.authorized_minor), ("captured", pay.captured_minor), ("fee", pay.fee_minor),
            ("auth_exp", pay.authorization_expires_at), ("now", paid.now), ("wallet", paid.wallet_account_id),
            ("channel", paid.channel), ("day", paid.spend_day), ("currency", pay.currency), ("tier", paid.tier),
            ("daily_max", paid.daily_max_minor), ("event_id", paid.event_id), ("event_type", paid.event_type),
            ("event_data", paid.event_data.decode()), ("hold", paid.hold_minor),
            ("kind", paid.capture.kind if paid.capture is not None else None),
        ):
            cols[name].append(value)
        if paid.capture is not None:
            move = paid.capture
            cols["p_item"] += [item] * len(move.posting_accounts)
            cols["p_account"] += move.posting_accounts
            cols["p_currency"] += move.posting_currencies
            cols["p_amount"] += move.posting_amounts
            cols["s_item"] += [item] * len(move.shard_accounts)
            cols["s_account"] += move.shard_accounts
            cols["s_shard"] += move.shards
            cols["s_delta"] += move.deltas
            cols["s_released"] += move.released
        key: tuple[object, ...] = done.args() if done is not None else (None,) * 7
        for name, key_value in zip(("k_principal", "k_key", "k_hash", "k_method", "k_path", "k_status", "k_body"), key,
                               strict=True):
            cols[name].append(key_value)
        cols["until"].append(paid.decided_until)
        off = paid.discount
        cols["campaign"].append(off.campaign_id if off is not None else None)
        cols["discount"].append(off.amount_minor if off is not None else None)
        cols["funded"].append(off.funded_by if off is not None else None)
        cols["holder_max"].append(paid.per_holder_max)  # None: no limit (no use counted)
        cols["spend"].append(pay.amount_minor)
    call = "gateway_pay_batch(" + ", ".join(f"${n}" for n in range(1, len(cols) + 1)) + ")"
    args = list(cols.values())
    decided = [(item, paid, paid.risk) for item, (paid, _) in enumerate(items, start=1) if paid.risk is not None]
    if decided:  # the applied items' decisions, in the same statement (so the same transaction)
        first = len(args) + 1
        args += [[item for item, _, _ in decided], [r.decision_id for _, _, r in decided],
                 [p.now for _, p, _ in decided], [p.holder_id for _, p, _ in decided],
                 [p.payment.id for _, p, _ in decided], [p.payment.merchant_id for _, p, _ in decided],
                 [p.channel for _, p, _ in decided], [p.payment.currency for _, p, _ in decided],
                 [p.payment.amount_minor for _, p, _ in decided], [r.device_id for _, _, r in decided]]
        types = ("int", "uuid", "timestamptz", "uuid", "uuid", "uuid", "text", "text", "bigint", "text")
        arrays = ", ".join(f"${first + n}::{t}[]" for n, t in enumerate(types))
        sql = (f"WITH b AS (SELECT {call} AS applied), d AS ("
               " INSERT INTO risk_decisions (id, created_at, holder_id, payment_id, merchant_id, channel, currency,"
               " amount_minor, device_id, outcome, reasons, passed)"
               " SELECT r.id, r.at, r.holder, r.payment, r.merchant, r.channel, r.currency, r.amount, r.device,"
               " 'allow', '[]'::jsonb, '{}'::text[]"
               f" FROM b, unnest({arrays}) AS r(item, id, at, holder, payment, merchant, channel, currency, amount,"
               " device) WHERE b.applied[r.item])"
               " SELECT applied FROM b")
    else:
        sql = f"SELECT {call}"
    started_s = time.perf_counter()
    try:
        applied: list[bool] = await conn.fetchval(sql, *args)
    except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):  # in its first step (the balance locks)
        return [False] * len(items)  # nothing was written: each item's general path decides (and retries)
    except asyncpg.PostgresError as exc:
        if exc.sqlstate != BATCH_REFUSED:
            raise
        # A payment's CHECK refused the batch's one UPDATE of its payments (migration 0034): nothing was
        # written, and each item's general path decides it alone (where that CHECK answers that item).
        log.warning("a pay batch was refused whole; its %d items go to their general path: %s", len(items), exc)
        return [False] * len(items)
    elapsed_s = time.perf_counter() - started_s
    for (paid, _), ok in zip(items, applied, strict=True):
        if ok and paid.capture is not None:
            metrics.LEDGER_POST_DURATION.labels(paid.capture.kind).observe(elapsed_s)
    return applied


async def get(
    conn: Connection, payment_id: uuid.UUID, *, merchant_id: uuid.UUID | None = None, for_update: bool = False
) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    scope = " AND merchant_id = $2" if merchant_id is not None else ""
    args: list[Any] = [payment_id] + ([merchant_id] if merchant_id is not None else [])
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_COLUMNS}, {_EXTRA} FROM payments WHERE id = $1{scope}{lock}", *args
    )
    return row


@dataclass(frozen=True, slots=True)
class HolderReads:
    """What ``payable`` also reads of the holder for the risk rules the one-statement path judges itself
    (``services.risk.holder_reads``): with ``usual_day``, its usual amounts in the payment's currency
    (``risk_usual``), whether its wallet there holds funds (``risk_held``) and its spend on that day
    (``risk_spent``, ``risk_spend_day``); with ``device``, when ``device_id`` (``risk_device_id``) was
    first seen for it (``risk_device_seen_at``, with ``risk_device_read``)."""

    usual_day: date | None = None
    device: bool = False
    device_id: str | None = None


_NIL = "00000000-0000-0000-0000-000000000000"


async def payable(conn: Connection, payment_id: uuid.UUID, holder_id: uuid.UUID,
                  reads: HolderReads | None = None) -> asyncpg.Record | None:
    """The payment with what paying it from ``holder_id``'s wallet is decided on: its merchant's name and
    status, the holder's tier and PIN lock (``holder_tier`` NULL: no such holder), and ``reads``. Read
    without locks, in one statement (one snapshot)."""
    more = ""
    args: list[Any] = [payment_id, holder_id]
    if reads is not None and reads.usual_day is not None:
        args.append(reads.usual_day)
        more += f""",
               ${len(args)}::date AS risk_spend_day,
               (SELECT amounts_minor FROM holder_amounts WHERE holder_id = $2 AND currency = p.currency) AS risk_usual,
               coalesce((SELECT b.held_minor FROM accounts a JOIN balances b ON b.account_id = a.id AND b.shard = 0
                          WHERE a.kind = 'wallet' AND COALESCE(a.owner_id, '{_NIL}'::uuid) = $2
                            AND a.currency = p.currency), 0) AS risk_held,
               coalesce((SELECT spent_minor FROM daily_spend
                          WHERE holder_id = $2 AND currency = p.currency AND day = ${len(args)}), 0) AS risk_spent"""
    if reads is not None and reads.device:
        args.append(reads.device_id)
        more += f""",
               TRUE AS risk_device_read, ${len(args)}::text AS risk_device_id,
               (SELECT created_at FROM wallet_devices WHERE holder_id = $2 AND device_id = ${len(args)})
                   AS risk_device_seen_at"""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""
        SELECT p.*, m.name AS merchant_name, m.status AS merchant_status,
               w.tier AS holder_tier, w.payments_locked_at IS NOT NULL AS holder_locked{more}
          FROM (SELECT {_COLUMNS}, {_EXTRA} FROM payments WHERE id = $1) p
          JOIN merchants m ON m.id = p.merchant_id
          LEFT JOIN wallet_holders w ON w.id = $2
        """,
        *args,
    )
    return row


@dataclass(frozen=True, slots=True)
class Discount:
    """A promotion's benefit recorded on the payment it discounted."""

    campaign_id: uuid.UUID
    amount_minor: int
    funded_by: str


async def update(
    conn: Connection, payment: Payment, *, wallet_account_id: int | None = None, channel: str | None = None,
    spend_day: date | None = None, terminal_transaction_id: str | None = None, discount: Discount | None = None,
    discount_clawed_back_minor: int | None = None, reserved: Discount | None = None,
) -> asyncpg.Record:
    """``TerminalTransactionTaken`` if the terminal's transaction id names another payment. ``discount``
    records a promotion's benefit (once, as the payment is captured); ``reserved`` the discount a manual
    authorisation reserved (migration 0031); ``discount_clawed_back_minor`` the new total a refund brought
    the clawback to."""
    with _one_payment_per_terminal_transaction():
        row = await one(
            conn,
            f"""
        UPDATE payments SET status = $2, payer_id = $3, authorized_minor = $4, captured_minor = $5,
               refunded_minor = $6, fee_minor = $7, authorization_expires_at = $8,
               wallet_account_id = COALESCE($9, wallet_account_id), confirm_by = $10,
               channel = COALESCE($11, channel), spend_day = COALESCE($12, spend_day),
               terminal_transaction_id = COALESCE($13, terminal_transaction_id),
               campaign_id = COALESCE($14, campaign_id), discount_minor = COALESCE($15, discount_minor),
               discount_funded_by = COALESCE($16, discount_funded_by),
               discount_clawed_back_minor = COALESCE($17, discount_clawed_back_minor),
               reserved_campaign_id = COALESCE($18, reserved_campaign_id),
               discount_reserved_minor = COALESCE($19, discount_reserved_minor),
               reserved_funded_by = COALESCE($20, reserved_funded_by), updated_at = now()
         WHERE id = $1
        RETURNING {_COLUMNS}, {_EXTRA}, (SELECT name FROM merchants m WHERE m.id = payments.merchant_id) AS merchant_name
        """,
            payment.id, payment.status.value, payment.payer_id, payment.authorized_minor, payment.captured_minor,
            payment.refunded_minor, payment.fee_minor, payment.authorization_expires_at, wallet_account_id,
            payment.confirm_by, channel, spend_day, terminal_transaction_id,
            discount.campaign_id if discount else None, discount.amount_minor if discount else None,
            discount.funded_by if discount else None, discount_clawed_back_minor,
            reserved.campaign_id if reserved else None, reserved.amount_minor if reserved else None,
            reserved.funded_by if reserved else None,
        )
    return row


async def set_metadata(conn: Connection, payment_id: uuid.UUID, metadata: dict[str, str]) -> asyncpg.Record:
    row = await one(
        conn,
        f"UPDATE payments SET metadata = $2::jsonb, updated_at = now() WHERE id = $1 RETURNING {_COLUMNS}, {_EXTRA}",
        payment_id, _json(metadata),
    )
    return row


def awaiting_confirmation(holder_id: uuid.UUID) -> pages.Query:
    """The holder's counter payments waiting for its PIN, newest first (served by payments_payer)."""
    return pages.Query(columns=f"{_COLUMNS}, {_EXTRA}", source="payments", key=("created_at", "id"),
                       scope=(pages.cond("payer_id = {}", holder_id),),
                       filters=(pages.cond("status = 'requires_action'"),))


@dataclass(frozen=True, slots=True)
class ListFilter:
    """The filters of the payment and refund lists; ``metadata``: every pair must be in the object's."""

    created_gte: datetime | None = None
    created_lt: datetime | None = None
    status: str | None = None
    metadata: dict[str, str] | None = None
    merchant_reference: str | None = None  # payments only
    payment_id: uuid.UUID | None = None  # refunds only


def _filters(match: ListFilter) -> tuple[pages.Condition, ...]:
    # Each filter is a condition only when given, so the plan for a list with no filters is the plain
    # index scan of (merchant_id, created_at, id).
    given = [
        (match.created_gte, "created_at >= {}"), (match.created_lt, "created_at < {}"), (match.status, "status = {}"),
        (match.merchant_reference, "merchant_reference = {}"), (match.payment_id, "payment_id = {}"),
    ]
    found = [pages.cond(template, value) for value, template in given if value is not None]
    if match.metadata:
        found.append(pages.cond("metadata @> {}::jsonb", _json(match.metadata)))
    return tuple(found)


def merchant_payments(merchant_id: uuid.UUID, match: ListFilter) -> pages.Query:
    """A merchant's payments, newest first (served by payments_merchant; metadata by payments_metadata)."""
    return pages.Query(columns=f"{_COLUMNS}, {_EXTRA}", source="payments", key=("created_at", "id"),
                       scope=(pages.cond("merchant_id = {}", merchant_id),), filters=_filters(match))


def merchant_refunds(merchant_id: uuid.UUID, match: ListFilter) -> pages.Query:
    """A merchant's refunds, newest first (served by refunds_merchant; metadata by refunds_metadata)."""
    return pages.Query(columns=_REFUND, source="refunds", key=("created_at", "id"),
                       scope=(pages.cond("merchant_id = {}", merchant_id),), filters=_filters(match))


async def insert_refund(
    conn: Connection, refund_id: uuid.UUID, payment: Payment, amount_minor: int, fee_back_minor: int, reason: str | None,
    metadata: dict[str, str], discount_clawed_back_minor: int = 0, cashback_clawed_back_minor: int = 0,
) -> asyncpg.Record:
    row = await one(
        conn,
        f"""
        INSERT INTO refunds (id, payment_id, merchant_id, amount_minor, fee_back_minor, currency, reason, metadata,
                             discount_clawed_back_minor, cashback_clawed_back_minor)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10)
        RETURNING {_REFUND}
        """,
        refund_id, payment.id, payment.merchant_id, amount_minor, fee_back_minor, payment.currency, reason,
        _json(metadata), discount_clawed_back_minor, cashback_clawed_back_minor,
    )
    return row


async def due_for_expiry(conn: Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
    """Open payments past their expiry and authorisations past theirs, locked, skipping rows others hold."""
    return list(
        await conn.fetch(
            f"""
            SELECT {_COLUMNS}, {_EXTRA} FROM payments
             WHERE (status = 'requires_payment_method' AND expires_at <= $1)
                OR (status = 'requires_capture' AND authorization_expires_at <= $1)
                OR (status = 'requires_action' AND confirm_by <= $1)
             ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
            """,
            now, limit,
        )
    )


async def oldest_overdue(conn: Connection, now: datetime) -> datetime | None:
    """The earliest due time among the payments ``due_for_expiry`` would pick now (None: none is due);
    each part is one probe of its partial index."""
    oldest: datetime | None = await conn.fetchval(
        """
        SELECT least(
            (SELECT min(expires_at) FROM payments WHERE status = 'requires_payment_method' AND expires_at <= $1),
            (SELECT min(authorization_expires_at) FROM payments
              WHERE status = 'requires_capture' AND authorization_expires_at <= $1),
            (SELECT min(confirm_by) FROM payments WHERE status = 'requires_action' AND confirm_by <= $1))
        """,
        now,
    )
    return oldest


async def insert_event(
    conn: Connection,
    event_type: str,
    object_id: uuid.UUID,
    data: Any,
    *,
    merchant_id: uuid.UUID | None,
    holder_id: uuid.UUID | None,
    actor: Actor | None = None,
    request_id: str | None = None,
    deliverable: bool = True,
) -> uuid.UUID:
    """``actor`` and ``request_id`` make it an audit event; ``deliverable=False`` keeps it from webhooks."""
    event_id = ids.new()
    await conn.execute(
        "INSERT INTO events (id, type, merchant_id, holder_id, object_id, data, actor_type, actor_id, request_id,"
        " deliverable) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10)",
        event_id, event_type, merchant_id, holder_id, object_id, msgspec.json.encode(data).decode(),
        actor.type if actor else None, actor.id if actor else None, request_id, deliverable,
    )
    return event_id


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it: ``operator``, ``api_key``, ``device``, ``wallet_holder`` (with its id) or ``cli`` (no id)."""

    type: str
    id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class EventFilter:
    object_id: uuid.UUID | None = None
    type: str | None = None  # exact, or "payment.*" for a family
    created_gte: datetime | None = None
    created_lt: datetime | None = None


_EVENT = ("seq, id, type, object_id, data::text AS data, created_at, merchant_id, actor_type, actor_id, request_id,"
          " deliverable")


def events_query(merchant_id: uuid.UUID | None, match: EventFilter, *, every_merchant: bool = False) -> pages.Query:
    """A merchant's events, newest first by commit-ordered ``seq`` (served by events_merchant, or
    events_merchant_created with a created filter); ``merchant_id=None`` (every merchant's and the
    gateway's own) needs ``every_merchant``: operators only."""
    assert merchant_id is not None or every_merchant, "no merchant scope: only an operator listing sees every event"
    family = match.type is not None and match.type.endswith(".*")
    given = [
        (match.object_id, "object_id = {}"), (match.created_gte, "created_at >= {}"),
        (match.created_lt, "created_at < {}"),
        (match.type[:-1] if family and match.type else match.type, "starts_with(type, {})" if family else "type = {}"),
    ]
    scope = (pages.cond("merchant_id = {}", merchant_id),) if merchant_id is not None else ()
    return pages.Query(columns=_EVENT, source="events", key=("seq",), scope=scope,
                       filters=tuple(pages.cond(template, value) for value, template in given if value is not None))


async def event(conn: Connection, event_id: uuid.UUID, merchant_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_EVENT} FROM events WHERE id = $1 AND merchant_id = $2", event_id, merchant_id,
    )
    return row
