"""FX rates, quotes and conversions.

Invariants kept here (and proven after the fact by ``invariants.sql``):
- the database's clock decides validity: a rate is valid at ``now()`` when ``valid_from <= now() <
  valid_until`` (open-ended when NULL), a quote until ``expires_at``; the rate of a pair is the valid
  row of either direction with the latest ``valid_from`` (then the latest stored);
- a quote is taken by ``use_quote`` at most once: the conditional UPDATE locks its row, so a second
  conversion of the same quote waits for the first and then finds it used (or, if the first rolled
  back, takes it); ``conversions.quote_id`` is UNIQUE besides.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import asyncpg

from gateway.domain.fx import Quote, RateRow
from gateway.store import pages
from gateway.store.db import Connection, one

_RATE = "id, base, quote, rate, spread_bps, valid_from, valid_until, source, created_at"
_QUOTE = ("id, holder_id, rate_id, from_currency, to_currency, mid_rate, spread_bps, customer_rate, fee_bps,"
          " sell_minor, receive_minor, fee_minor, expires_at, created_at, used_at, conversion_id")


async def insert_rates(conn: Connection, rows: list[RateRow], source: str, created_by: uuid.UUID | None
                       ) -> list[asyncpg.Record]:
    """Store the rates in one statement, in their order."""
    ids = [uuid.uuid4() for _ in rows]
    found = await conn.fetch(
        f"""
        INSERT INTO fx_rates (id, base, quote, rate, spread_bps, valid_from, valid_until, source, created_by)
        SELECT t.id, t.base, t.quote, t.rate, t.spread_bps, t.valid_from, t.valid_until, $8, $9
          FROM unnest($1::uuid[], $2::text[], $3::text[], $4::numeric[], $5::int4[], $6::timestamptz[],
                      $7::timestamptz[]) WITH ORDINALITY AS t(id, base, quote, rate, spread_bps, valid_from, valid_until, n)
         ORDER BY t.n
        RETURNING {_RATE}
        """,
        ids, [r.base for r in rows], [r.quote for r in rows], [r.rate for r in rows], [r.spread_bps for r in rows],
        [r.valid_from for r in rows], [r.valid_until for r in rows], source, created_by,
    )
    by_id = {row["id"]: row for row in found}
    return [by_id[i] for i in ids]


def rates(base: str | None, quote: str | None) -> pages.Query:
    """Rates, newest first."""
    filters = []
    if base is not None:
        filters.append(pages.cond("base = {}", base))
    if quote is not None:
        filters.append(pages.cond("quote = {}", quote))
    return pages.Query(columns=_RATE, source="fx_rates", key=("created_at", "id"), scope=(), filters=tuple(filters))


async def current_rate(conn: Connection, source: str, target: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""
        SELECT {_RATE} FROM fx_rates
         WHERE ((base = $1 AND quote = $2) OR (base = $2 AND quote = $1))
           AND valid_from <= now() AND (valid_until IS NULL OR valid_until > now())
         ORDER BY valid_from DESC, created_at DESC LIMIT 1
        """,
        source, target,
    )
    return row


async def insert_quote(conn: Connection, quote_id: uuid.UUID, holder_id: uuid.UUID, rate_id: uuid.UUID,
                       mid_rate: Decimal, spread_bps: int, quote: Quote, ttl_s: int,
                       payment_id: uuid.UUID | None = None) -> asyncpg.Record:
    """``payment_id``: the payment whose preview offers the quote (gateway/services/fx_payments.py)."""
    return await one(
        conn,
        f"""
        INSERT INTO fx_quotes (id, holder_id, rate_id, from_currency, to_currency, from_exponent, to_exponent,
                               mid_rate, spread_bps, customer_rate, fee_bps, sell_minor, receive_minor, fee_minor,
                               expires_at, payment_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, now() + make_interval(secs => $15), $16)
        RETURNING {_QUOTE}
        """,
        quote_id, holder_id, rate_id, quote.source.code, quote.target.code, quote.source.exponent,
        quote.target.exponent, mid_rate, spread_bps, quote.rate, quote.fee_bps, quote.sell_minor,
        quote.receive_minor, quote.fee_minor, float(ttl_s), payment_id,
    )


async def use_quote(conn: Connection, quote_id: uuid.UUID, holder_id: uuid.UUID, conversion_id: uuid.UUID
                    ) -> asyncpg.Record | None:
    """Take the holder's quote for this conversion; None if it is unknown, used or expired (``quote`` tells)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"UPDATE fx_quotes SET used_at = now(), conversion_id = $3"
        f" WHERE id = $1 AND holder_id = $2 AND used_at IS NULL AND expires_at > now() RETURNING {_QUOTE}",
        quote_id, holder_id, conversion_id,
    )
    return row


async def quote(conn: Connection, quote_id: uuid.UUID, holder_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_QUOTE} FROM fx_quotes WHERE id = $1 AND holder_id = $2",
        quote_id, holder_id,
    )
    return row


async def insert_conversion(conn: Connection, conversion_id: uuid.UUID, q: asyncpg.Record) -> asyncpg.Record:
    return await one(
        conn,
        "INSERT INTO conversions (id, holder_id, quote_id, from_currency, to_currency, sell_minor, receive_minor,"
        " fee_minor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id, created_at",
        conversion_id, q["holder_id"], q["id"], q["from_currency"], q["to_currency"], q["sell_minor"],
        q["receive_minor"], q["fee_minor"],
    )
