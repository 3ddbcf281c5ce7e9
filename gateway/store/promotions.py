"""Campaigns, their per-holder uses, and the guarded statements that take a place and budget.

Invariants (proven after the fact by ``invariants.sql``: ``campaign_over_budget_or_places``,
``campaign_shards_add_up``, ``campaign_holder_over_limit``):
- a campaign's budget and places are split over its counter rows (``campaign_shards``, migration
  0026) whose sums are the campaign's; what it spent and took is the sum of the rows' (``COLUMNS``);
- a row's ``spent_minor`` and ``places_taken`` grow only by a take, in the payment's own
  transaction: the general path's ``take`` (``gateway_campaign_take``) or the one-statement path's
  batch (``gateway_pay_batch``), each by guarded updates of locked rows that refuse (change nothing)
  when the campaign ended, is past its window, lacks the places or the budget; each row's CHECKs are
  the last line, so neither the places nor the budget is ever exceeded; a rolled-back payment gives
  its place and budget back with it;
- a holder's uses are taken the same way (``campaign_uses``) before the counter rows (lock order), where
  the campaign has a per-holder limit (gifts: one): without one nothing is counted;
- ``end`` closes every row in the commit that sets ``ended_at``: no take after it;
- a manual authorisation's take is a reservation (migration 0031): its capture, cancel or expiry gives back
  what it does not keep (``give_back``, ``give_back_use``), so a row's counts also go down, never below 0;
- ``clawed_back_minor`` grows only with refunds (``claw_back``), never above what was granted;
- cashback and gifts take a place, the budget and the holder's use by the same ``take``; a gift is
  recorded once per holder and campaign, and a first-payment gift once per holder whatever the
  campaign (``promotion_gifts``' unique indexes: a second one is refused and its take rolled back to
  the savepoint before it, ``services.promotions``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
import asyncpg

from gateway.domain.promotions import Campaign, Funder, Rule
from gateway.store import pages
from gateway.store.db import Connection, one

COLUMNS = (
    "id, name, currency, rule, percent_bps, fixed_minor, cap_minor, funded_by, time_zone, starts_at, ends_at,"
    " merchant_ids, store_ids, mccs, min_amount_minor, per_holder_max, budget_minor, clawed_back_minor,"
    " places_max, ended_at, created_at, updated_at,"
    # What was spent and taken: the sums over the campaign's counter rows (migration 0026).
    " (SELECT COALESCE(sum(s.spent_minor), 0)::int8 FROM campaign_shards s WHERE s.campaign_id = campaigns.id)"
    " AS spent_minor,"
    " (SELECT COALESCE(sum(s.places_taken), 0)::int4 FROM campaign_shards s WHERE s.campaign_id = campaigns.id)"
    " AS places_taken"
)


def to_domain(row: asyncpg.Record) -> Campaign:
    return Campaign(
        id=row["id"], currency=row["currency"].strip(), rule=Rule(row["rule"]), funded_by=Funder(row["funded_by"]),
        starts_at=row["starts_at"], ends_at=row["ends_at"], budget_minor=row["budget_minor"],
        percent_bps=row["percent_bps"], fixed_minor=row["fixed_minor"], cap_minor=row["cap_minor"],
        min_amount_minor=row["min_amount_minor"], per_holder_max=row["per_holder_max"], places_max=row["places_max"],
        merchant_ids=frozenset(row["merchant_ids"]), store_ids=frozenset(row["store_ids"]),
        mccs=frozenset(row["mccs"]), spent_minor=row["spent_minor"], places_taken=row["places_taken"],
        ended_at=row["ended_at"],
    )


async def insert(conn: Connection, c: Campaign, name: str, time_zone: str,
                 rows: list[tuple[int, int | None]]) -> asyncpg.Record:
    """The campaign, then its counter rows (``rows``: each one's budget and places, from
    ``domain.promotions.shard_split``); nothing spent or taken yet."""
    row = await one(
        conn,
        f"""
        INSERT INTO campaigns (id, name, currency, rule, percent_bps, fixed_minor, cap_minor, funded_by, time_zone,
                               starts_at, ends_at, merchant_ids, store_ids, mccs, min_amount_minor, per_holder_max,
                               budget_minor, places_max)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
        RETURNING {COLUMNS}
        """,
        c.id, name, c.currency, c.rule.value, c.percent_bps, c.fixed_minor, c.cap_minor, c.funded_by.value, time_zone,
        c.starts_at, c.ends_at, sorted(c.merchant_ids), sorted(c.store_ids), sorted(c.mccs), c.min_amount_minor,
        c.per_holder_max, c.budget_minor, c.places_max,
    )
    await conn.execute(
        "INSERT INTO campaign_shards (campaign_id, shard, budget_minor, places_max)"
        " SELECT $1, s.n - 1, s.budget, s.places"
        "   FROM unnest($2::int8[], $3::int4[]) WITH ORDINALITY AS s(budget, places, n)",
        c.id, [b for b, _ in rows], [p for _, p in rows])
    return row


async def get(conn: Connection, campaign_id: uuid.UUID, *, for_update: bool = False) -> asyncpg.Record | None:
    """``for_update``: locked FOR NO KEY UPDATE, which the foreign keys' share locks of payments and uses
    naming the campaign do not wait for: ``end`` holds it while it waits for the counter rows, which a
    payment that took from one holds while it then writes its row's ``campaign_id`` (review R16)."""
    lock = " FOR NO KEY UPDATE" if for_update else ""
    row: asyncpg.Record | None = await conn.fetchrow(f"SELECT {COLUMNS} FROM campaigns WHERE id = $1{lock}",
                                                     campaign_id)
    return row


async def end(conn: Connection, campaign_id: uuid.UUID) -> asyncpg.Record:
    """End it now (``ended_at`` is kept if it was ended already) and close its counter rows, waited for
    in shard order (a batch holding one finishes first; any take after this commit finds them closed);
    the caller locked the campaign's row. Two statements: the second, which answers what was spent and
    taken, reads the rows as committed after the waits of the first (one statement answered what its
    snapshot, taken before them, saw: review R16)."""
    await conn.execute(
        """
        WITH l AS (SELECT 1 FROM campaign_shards WHERE campaign_id = $1 ORDER BY shard FOR UPDATE)
        UPDATE campaign_shards SET closed = true WHERE campaign_id = $1 AND NOT closed AND (SELECT count(*) FROM l) >= 0
        """,
        campaign_id,
    )
    return await one(
        conn,
        f"UPDATE campaigns SET ended_at = COALESCE(ended_at, now()), updated_at = now() WHERE id = $1"
        f" RETURNING {COLUMNS}",
        campaign_id,
    )


def all_campaigns() -> pages.Query:
    """Newest first (served by campaigns_created)."""
    return pages.Query(columns=COLUMNS, source="campaigns", key=("created_at", "id"), scope=())


async def live(conn: Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
    """The campaigns not ended and not past their end (those starting later too), soonest end first."""
    return list(await conn.fetch(
        f"SELECT {COLUMNS} FROM campaigns WHERE ended_at IS NULL AND ends_at > $1 ORDER BY ends_at, id LIMIT $2",
        now, limit,
    ))


async def mcc(conn: Connection, merchant_id: uuid.UUID) -> str | None:
    value: str | None = await conn.fetchval("SELECT mcc FROM merchants WHERE id = $1", merchant_id)
    return value


async def take(conn: Connection, campaign_id: uuid.UUID, holder_id: uuid.UUID, stated_minor: int,
               now: datetime, per_holder_max: int | None) -> int | None:
    """Take one use of the holder, one place and ``stated_minor`` of the budget (or what is left of it),
    in the caller's transaction: the benefit granted; None (nothing taken) when the holder's limit, the
    places, the budget or the window refuse. One statement (``gateway_campaign_take``, migration 0026)."""
    granted: int | None = await conn.fetchval(
        "SELECT gateway_campaign_take($1, $2, $3, $4, $5)",
        campaign_id, holder_id, stated_minor, now, per_holder_max)  # None: no limit, no use counted
    return granted


async def give_back_use(conn: Connection, campaign_id: uuid.UUID, holder_id: uuid.UUID) -> None:
    """The holder's use of a reservation that kept nothing (counted only under a per-holder limit; migration
    0031). Before the counter rows (lock order)."""
    await conn.execute("SELECT gateway_campaign_give_back_use($1, $2)", campaign_id, holder_id)


async def give_back(conn: Connection, campaign_id: uuid.UUID, amount_minor: int, place: bool) -> None:
    """Budget (and a place) a manual authorisation reserved and its capture, cancel or expiry did not keep,
    back on the campaign's counter rows (in shard order; ``gateway_campaign_give_back``, migration 0031)."""
    await conn.execute("SELECT gateway_campaign_give_back($1, $2, $3)", campaign_id, amount_minor, place)


async def claw_back(conn: Connection, campaign_id: uuid.UUID, amount_minor: int) -> None:
    await conn.execute(
        "UPDATE campaigns SET clawed_back_minor = clawed_back_minor + $2, updated_at = now() WHERE id = $1",
        campaign_id, amount_minor,
    )


async def holder_uses(conn: Connection, holder_id: uuid.UUID) -> list[asyncpg.Record]:
    return list(await conn.fetch(
        "SELECT campaign_id, uses FROM campaign_uses WHERE holder_id = $1 AND uses > 0", holder_id))


_EXISTING = {"merchants": "SELECT id FROM merchants WHERE id = ANY($1::uuid[])",
             "stores": "SELECT id FROM stores WHERE id = ANY($1::uuid[])"}


async def existing(conn: Connection, table: str, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``ids`` exist in ``merchants`` or ``stores``."""
    return {r["id"] for r in await conn.fetch(_EXISTING[table], ids)}


async def record_cashback(conn: Connection, payment_id: uuid.UUID, campaign_id: uuid.UUID, amount_minor: int,
                          funded_by: str) -> None:
    """The cashback of the payment's capture and who funds it (``bank`` or ``merchant``), on its (locked)
    row, just before the capture's own update of it (whose answer then carries it)."""
    await conn.execute(
        "UPDATE payments SET cashback_campaign_id = $2, cashback_minor = $3, cashback_funded_by = $4 WHERE id = $1",
        payment_id, campaign_id, amount_minor, funded_by)


async def claw_back_cashback(conn: Connection, payment_id: uuid.UUID, campaign_id: uuid.UUID, amount_minor: int) -> None:
    await conn.execute("UPDATE payments SET cashback_clawed_back_minor = cashback_clawed_back_minor + $2 WHERE id = $1",
                       payment_id, amount_minor)
    await claw_back(conn, campaign_id, amount_minor)


async def holder_has_paid(conn: Connection, holder_id: uuid.UUID, payment_id: uuid.UUID) -> bool:
    """Whether the holder has a captured payment other than ``payment_id`` (committed, or of this
    transaction), or got a first-payment gift already."""
    paid: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM payments WHERE payer_id = $1 AND captured_minor > 0 AND id <> $2)"
        " OR EXISTS (SELECT 1 FROM promotion_gifts WHERE holder_id = $1 AND kind = 'first_payment')",
        holder_id, payment_id)
    return paid


async def insert_gift(conn: Connection, gift_id: uuid.UUID, kind: str, campaign_id: uuid.UUID, holder_id: uuid.UUID,
                      payment_id: uuid.UUID | None, currency: str, amount_minor: int) -> bool:
    """False when the holder has this campaign's gift, or (``first_payment``) any first-payment gift,
    already: a concurrent transaction that inserted one first is waited for, then wins."""
    row = await conn.fetchval(
        "INSERT INTO promotion_gifts (id, kind, campaign_id, holder_id, payment_id, currency, amount_minor)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING id",
        gift_id, kind, campaign_id, holder_id, payment_id, currency, amount_minor)
    return row is not None


# A holder's benefits: discounts and cashback (one row per payment: a payment gets one or the other)
# and gifts, in one keyset-ordered list.
_BENEFITS = """(
    SELECT 'discount' AS kind, id, id AS payment_id, payer_id AS holder_id, created_at, campaign_id,
           discount_minor AS amount_minor, currency, discount_funded_by AS funded_by,
           discount_clawed_back_minor AS clawed_back_minor
      FROM payments WHERE campaign_id IS NOT NULL
    UNION ALL
    SELECT 'cashback', id, id, payer_id, created_at, cashback_campaign_id, cashback_minor, currency,
           cashback_funded_by, cashback_clawed_back_minor
      FROM payments WHERE cashback_campaign_id IS NOT NULL
    UNION ALL
    SELECT 'gift_' || kind, id, payment_id, holder_id, created_at, campaign_id, amount_minor, currency, 'bank', 0
      FROM promotion_gifts
) b JOIN campaigns c ON c.id = b.campaign_id"""


def holder_benefits(holder_id: uuid.UUID) -> pages.Query:
    """The holder's discounts, cashback and gifts with their campaign, newest first (served by
    payments_payer and promotion_gifts_holder)."""
    return pages.Query(
        columns="b.kind, b.id, b.payment_id, b.created_at, b.amount_minor, b.currency, b.funded_by,"
                " b.clawed_back_minor, b.campaign_id, c.name AS campaign_name",
        source=_BENEFITS, key=("b.created_at", "b.id"), scope=(pages.cond("b.holder_id = {}", holder_id),),
        id_column="b.id",
    )


def campaign_gifts(campaign_id: uuid.UUID) -> pages.Query:
    """A campaign's gifts, newest first."""
    return pages.Query(
        columns="id, kind, campaign_id, holder_id, payment_id, currency, amount_minor, created_at",
        source="promotion_gifts", key=("created_at", "id"), scope=(pages.cond("campaign_id = {}", campaign_id),),
    )
