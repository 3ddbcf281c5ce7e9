"""Bank statements, expected bank movements, matches, exceptions and the reconciliation audit.

The expected movements come from ONE query (``_EXPECTED``), a ``UNION ALL`` of every source of
money the gateway's bank account should see; each branch yields the same columns (reference,
direction, amount_minor, currency, day, kind, object_id, reconciled). Marking a movement
reconciled (or not, on reopen) goes through ``_MARK``, one statement per kind. Sources: wallet
top-ups (CRDT) and withdrawals (DBIT) by their transfer id, and merchant payouts once paid (DBIT) by
their pain.001 EndToEndId; a reconciled payout reconciles its settlement batch (one payout a batch).
"""

from __future__ import annotations

import uuid
from datetime import date
import asyncpg

from gateway.bankfiles import Statement
from gateway.store import pages
from gateway.store.db import Connection

_BATCH_ROWS = 10_000
_SEP = "\x1f"  # joins an entry's references into one text for the unnest arrays

_EXPECTED = """
    SELECT 'tr_' || replace(t.id::text, '-', '') AS reference,
           CASE t.kind WHEN 'top_up' THEN 'CRDT' ELSE 'DBIT' END AS direction,
           t.amount_minor, t.currency, (t.created_at AT TIME ZONE 'UTC')::date AS day, t.kind, t.id AS object_id,
           t.reconciled_at IS NOT NULL AS reconciled
      FROM transfers t
     WHERE t.currency = $1 AND t.created_at >= $2::date AND t.created_at < $3::date + 1
    UNION ALL
    SELECT p.reference, 'DBIT', p.amount_minor, p.currency::text, p.execution_date, 'payout', p.id,
           p.status = 'reconciled'
      FROM payouts p
     WHERE p.currency = $1 AND p.execution_date BETWEEN $2::date AND $3::date AND p.status IN ('paid', 'reconciled')
"""

_MARK = {
    "top_up": "UPDATE transfers SET reconciled_at = CASE WHEN $2 THEN now() END WHERE id = ANY($1::uuid[])",
    "withdrawal": "UPDATE transfers SET reconciled_at = CASE WHEN $2 THEN now() END WHERE id = ANY($1::uuid[])",
    "payout": """
        WITH p AS (
            UPDATE payouts SET status = CASE WHEN $2 THEN 'reconciled' ELSE 'paid' END,
                               reconciled_at = CASE WHEN $2 THEN now() END
             WHERE id = ANY($1::uuid[]) AND status IN ('paid', 'reconciled')
            RETURNING batch_id
        )
        UPDATE settlement_batches b SET status = CASE WHEN $2 THEN 'reconciled' ELSE 'paid' END,
                                        reconciled_at = CASE WHEN $2 THEN now() END
          FROM p WHERE b.id = p.batch_id
    """,
}


async def expected_movements(conn: Connection, currency: str, date_from: date, date_to: date) -> list[asyncpg.Record]:
    """What the bank should show for ``currency`` between the dates (inclusive), reconciled or not."""
    rows: list[asyncpg.Record] = await conn.fetch(_EXPECTED, currency, date_from, date_to)
    return rows


async def expected_by_reference(conn: Connection, currency: str, references: list[str]) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT * FROM ({_EXPECTED}) x WHERE x.reference = ANY($4::text[])",
        currency, date(1970, 1, 1), date(9999, 12, 30), references,
    )
    return rows


async def mark_reconciled(conn: Connection, items: list[tuple[str, uuid.UUID]], reconciled: bool) -> None:
    """The hook for "this expected movement was matched" (``reconciled``) or reopened."""
    by_kind: dict[str, list[uuid.UUID]] = {}
    for kind, object_id in items:
        by_kind.setdefault(kind, []).append(object_id)
    for kind, ids in sorted(by_kind.items()):
        await conn.execute(_MARK[kind], sorted(ids), reconciled)


async def insert_statement(conn: Connection, statement_id: uuid.UUID, st: Statement, date_from: date, date_to: date,
                           operator_id: uuid.UUID | None) -> uuid.UUID:
    """The statement's id: the new one, or the one imported before under the same statement id."""
    found: uuid.UUID = await conn.fetchval(
        """
        WITH ins AS (
            INSERT INTO bank_statements (id, statement_ref, format, account, currency, opening_minor, closing_minor,
                                         date_from, date_to, entry_count, imported_by)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            ON CONFLICT (statement_ref) DO NOTHING RETURNING id
        )
        SELECT id FROM ins UNION ALL SELECT id FROM bank_statements WHERE statement_ref = $2 LIMIT 1
        """,
        statement_id, st.statement_ref, st.format, st.account, st.currency, st.opening_minor, st.closing_minor,
        date_from, date_to, len(st.entries), operator_id,
    )
    return found


async def insert_entries(conn: Connection, statement_id: uuid.UUID, st: Statement) -> int:
    """Insert the entries not seen before (idempotent on statement id + entry reference); returns how many."""
    added = 0
    for start in range(0, len(st.entries), _BATCH_ROWS):
        chunk = st.entries[start:start + _BATCH_ROWS]
        added += await conn.fetchval(
            """
            WITH ins AS (
                INSERT INTO bank_entries (statement_id, statement_ref, entry_ref, direction, amount_minor, currency,
                                          booking_date, value_date, refs, ref_amounts, remittance)
                SELECT $1, $2, r, d, a, $3, b, v, string_to_array(f, E'\\x1f'), string_to_array(ra, ',')::bigint[], m
                  FROM unnest($4::text[], $5::text[], $6::int8[], $7::date[], $8::date[], $9::text[], $10::text[],
                              $11::text[]) AS t(r, d, a, b, v, f, ra, m)
                ON CONFLICT (statement_ref, entry_ref) DO NOTHING RETURNING 1
            )
            SELECT count(*) FROM ins
            """,
            statement_id, st.statement_ref, st.currency,
            [e.entry_ref for e in chunk], [e.direction for e in chunk], [e.amount_minor for e in chunk],
            [e.booking_date for e in chunk], [e.value_date for e in chunk], [_SEP.join(e.refs) for e in chunk],
            [",".join(map(str, e.ref_amounts)) if e.ref_amounts else None for e in chunk],
            [e.remittance for e in chunk],
        )
    return added


async def unmatched_lines(conn: Connection, currency: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, entry_ref, direction, amount_minor, currency, booking_date, refs, remittance"
        " FROM bank_entries WHERE currency = $1 AND NOT matched ORDER BY booking_date, entry_ref",
        currency,
    )
    return rows


async def lines_by_id(conn: Connection, ids: list[uuid.UUID]) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, entry_ref, direction, amount_minor, currency, booking_date, refs, remittance, matched"
        " FROM bank_entries WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE",
        ids,
    )
    return rows


async def insert_matches(
    conn: Connection, matches: list[tuple[uuid.UUID, str, str, uuid.UUID | None]],
    items: list[tuple[uuid.UUID, str, uuid.UUID | None, str | None, uuid.UUID | None, int]],
) -> None:
    """Matches ``(id, rule, currency, operator)`` and their items ``(match, side, bank entry, expected kind,
    expected id, signed amount)``; flags the bank entries matched (the expected side goes through
    ``mark_reconciled``) and clears the open exceptions of what is now matched."""
    for start in range(0, len(matches), _BATCH_ROWS):
        chunk = matches[start:start + _BATCH_ROWS]
        await conn.execute(
            "INSERT INTO recon_matches (id, rule, currency, created_by)"
            " SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[])",
            [m[0] for m in chunk], [m[1] for m in chunk], [m[2] for m in chunk], [m[3] for m in chunk],
        )
    for start in range(0, len(items), _BATCH_ROWS):
        part = items[start:start + _BATCH_ROWS]
        await conn.execute(
            "INSERT INTO recon_match_items (match_id, side, bank_entry_id, expected_kind, expected_id, amount_minor)"
            " SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::uuid[], $6::int8[])",
            [i[0] for i in part], [i[1] for i in part], [i[2] for i in part], [i[3] for i in part],
            [i[4] for i in part], [i[5] for i in part],
        )
    lines = sorted(i[2] for i in items if i[2] is not None)
    expected = sorted(i[4] for i in items if i[4] is not None)
    await conn.execute("UPDATE bank_entries SET matched = true WHERE id = ANY($1::uuid[])", lines)
    await conn.execute(
        "UPDATE recon_exceptions SET status = 'cleared', resolved_at = now()"
        " WHERE status = 'open' AND (bank_entry_id = ANY($1::uuid[]) OR expected_id = ANY($2::uuid[]))",
        lines, expected,
    )


async def insert_exceptions(conn: Connection, rows: list[tuple[str, str, uuid.UUID | None, str | None,
                                                               uuid.UUID | None, str | None, int | None, int | None]]
                            ) -> int:
    """Open exceptions ``(kind, currency, bank entry, expected kind, expected id, reference, bank amount,
    expected amount)``; one already open for the same thing is kept as it is. Returns how many are new."""
    added = 0
    for start in range(0, len(rows), _BATCH_ROWS):
        part = rows[start:start + _BATCH_ROWS]
        added += await conn.fetchval(
            """
            WITH ins AS (
                INSERT INTO recon_exceptions (kind, currency, bank_entry_id, expected_kind, expected_id, reference,
                                              bank_amount_minor, expected_amount_minor)
                SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::text[], $5::uuid[], $6::text[],
                                     $7::int8[], $8::int8[])
                ON CONFLICT (kind, COALESCE(bank_entry_id, '00000000-0000-0000-0000-000000000000'),
                             COALESCE(expected_id, '00000000-0000-0000-0000-000000000000'))
                   WHERE status = 'open' DO NOTHING
                RETURNING 1
            )
            SELECT count(*) FROM ins
            """,
            *([r[k] for r in part] for k in range(8)),
        )
    return added


_EXCEPTION_COLUMNS = (
    "x.id, x.kind, x.status, x.currency, x.bank_entry_id, x.expected_kind, x.expected_id, x.reference,"
    " x.bank_amount_minor, x.expected_amount_minor, x.match_id, x.detected_at, x.resolved_at, x.seq,"
    " b.entry_ref, b.statement_ref, b.booking_date"
)


def exceptions(status: str | None, kind: str | None, currency: str | None) -> pages.Query:
    """Every exception (the operator's list), newest first by ``seq`` (served by recon_exceptions_list with a
    status, by the unique index on seq without)."""
    given = [(status, "x.status = {}"), (kind, "x.kind = {}"), (currency, "x.currency = {}")]
    return pages.Query(columns=_EXCEPTION_COLUMNS,
                       source="recon_exceptions x LEFT JOIN bank_entries b ON b.id = x.bank_entry_id",
                       key=("x.seq",), id_column="x.id", scope=(),
                       filters=tuple(pages.cond(template, value) for value, template in given if value is not None))


async def exception_for_update(conn: Connection, exception_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_EXCEPTION_COLUMNS} FROM recon_exceptions x LEFT JOIN bank_entries b ON b.id = x.bank_entry_id"
        " WHERE x.id = $1 FOR UPDATE OF x",
        exception_id,
    )
    return row


async def exception(conn: Connection, exception_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_EXCEPTION_COLUMNS} FROM recon_exceptions x LEFT JOIN bank_entries b ON b.id = x.bank_entry_id"
        " WHERE x.id = $1", exception_id,
    )
    return row


async def set_exception(conn: Connection, exception_ids: list[uuid.UUID], status: str,
                        match_id: uuid.UUID | None) -> None:
    await conn.execute(
        "UPDATE recon_exceptions SET status = $2, match_id = $3,"
        " resolved_at = CASE WHEN $2 = 'open' THEN NULL ELSE now() END WHERE id = ANY($1::uuid[])",
        sorted(exception_ids), status, match_id,
    )


async def open_exceptions_of(conn: Connection, lines: list[uuid.UUID], expected: list[uuid.UUID]) -> list[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT id FROM recon_exceptions WHERE status = 'open'"
        " AND (bank_entry_id = ANY($1::uuid[]) OR expected_id = ANY($2::uuid[])) ORDER BY id FOR UPDATE",
        lines, expected,
    )
    return [r["id"] for r in rows]


async def deactivate_match(conn: Connection, match_id: uuid.UUID) -> list[asyncpg.Record]:
    """Reopen a match: its items stop counting; returns them (the bank entries are flagged unmatched)."""
    await conn.execute("UPDATE recon_matches SET active = false, reopened_at = now() WHERE id = $1", match_id)
    items: list[asyncpg.Record] = await conn.fetch(
        "UPDATE recon_match_items SET active = false WHERE match_id = $1 AND active"
        " RETURNING side, bank_entry_id, expected_kind, expected_id, amount_minor",
        match_id,
    )
    lines = sorted(i["bank_entry_id"] for i in items if i["bank_entry_id"] is not None)
    await conn.execute("UPDATE bank_entries SET matched = false WHERE id = ANY($1::uuid[])", lines)
    return items


async def exceptions_of_match(conn: Connection, match_id: uuid.UUID) -> list[uuid.UUID]:
    rows = await conn.fetch("SELECT id FROM recon_exceptions WHERE match_id = $1 AND status = 'resolved'", match_id)
    return [r["id"] for r in rows]


async def audit(conn: Connection, operator_id: uuid.UUID | None, action: str, *, reason: str | None = None,
                exception_id: uuid.UUID | None = None, match_id: uuid.UUID | None = None,
                statement_id: uuid.UUID | None = None, details: str = "{}") -> None:
    await conn.execute(
        "INSERT INTO recon_audit (operator_id, action, exception_id, match_id, statement_id, reason, details)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
        operator_id, action, exception_id, match_id, statement_id, reason, details,
    )


async def audit_of(conn: Connection, exception_id: uuid.UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT operator_id, action, reason, match_id, details, created_at FROM recon_audit"
        " WHERE exception_id = $1 ORDER BY id", exception_id,
    )
    return rows
