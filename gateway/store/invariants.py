"""The SQL invariant checker: proves the ledger sound, or names what is broken; and the rows of the checks
run in the background (``invariant_checks``, migration 0037).

Run by the operator endpoints (at once, or as a background check), the demo, and after every integration
test. Invariants of a background check's rows:
- at most one check is queued or running (a unique index): asking again meanwhile is answered that one;
- a worker writes a running check (its lease, progress, outcome) only while the attempt it took is the
  check's last one (``attempts``, the fencing token): a worker whose lease lapsed and was taken over
  writes nothing;
- a check's outcome is written once: a finished check is never taken again.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from importlib import resources
from typing import Any

import asyncpg
import msgspec

from gateway.store import pages
from gateway.store.db import Connection

ROWS_MAX = 20  # rows shown of each violated invariant


@functools.cache  # the file ships with the code: read once per process (a worker's claim asks every poll)
def _queries() -> list[tuple[str, str]]:
    text = resources.files("gateway.store").joinpath("sql/invariants.sql").read_text(encoding="utf-8")
    found: list[tuple[str, str]] = []
    for block in text.split("-- name: ")[1:]:
        name, _, sql = block.partition("\n")
        found.append((name.strip(), sql.strip().rstrip(";")))
    return found


def names() -> list[str]:
    """The invariants a check runs, in its order."""
    return [name for name, _ in _queries()]


def count() -> int:
    return len(_queries())


async def check(conn: Connection, *, statement_timeout_s: float | None = None,
                progress: Callable[[int], None] | None = None) -> dict[str, list[dict[str, object]]]:
    """Every invariant's name mapped to the rows that break it (empty lists when sound), all read in one
    snapshot. ``statement_timeout_s`` replaces the session's limits for this check's statements and their
    lock waits (a read waits only for a table's exclusive lock: a migration, a partition dropped);
    ``progress`` is told how many invariants are done after each."""
    results: dict[str, list[dict[str, object]]] = {}
    # The client waits a little longer than the server's limit, so that the server's refusal is what ends it.
    timeout_s = None if statement_timeout_s is None else statement_timeout_s + 5
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        if statement_timeout_s is not None:
            limit_ms = str(max(1, round(statement_timeout_s * 1000)))
            await conn.execute("SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $1, true)",
                               limit_ms)
        for done, (name, sql) in enumerate(_queries(), 1):
            rows = await conn.fetch(f"{sql} LIMIT {ROWS_MAX}", timeout=timeout_s)
            results[name] = [dict(row) for row in rows]
            if progress is not None:
                progress(done)
    return results


def violated(found: dict[str, list[dict[str, object]]]) -> dict[str, list[dict[str, Any]]]:
    """The invariants ``check`` found broken, their rows as JSON-ready values (uuids, numerics and times as text)."""
    return {name: [msgspec.to_builtins(r, str_keys=True) for r in rows] for name, rows in found.items() if rows}


# --- background checks ------------------------------------------------------------------------------------

COLUMNS = ("id, status, requested_by, created_at, started_at, finished_at, attempts, invariants_total,"
           " invariants_done, violations::text AS violations, error")
_ACTIVE = "status IN ('queued', 'running')"


async def queue(conn: Connection, check_id: uuid.UUID, requested_by: str) -> tuple[asyncpg.Record, bool]:
    """A new queued check, or the one queued or running already; and whether it is new."""
    for _ in range(3):  # the active one may finish between the refused insert and its read
        row = await conn.fetchrow(
            f"INSERT INTO invariant_checks (id, requested_by, invariants_total) VALUES ($1, $2, $3)"
            f" ON CONFLICT ((true)) WHERE {_ACTIVE} DO NOTHING RETURNING {COLUMNS}",
            check_id, requested_by, count())
        if row is not None:
            return row, True
        row = await conn.fetchrow(f"SELECT {COLUMNS} FROM invariant_checks WHERE {_ACTIVE}")
        if row is not None:
            return row, False
    raise RuntimeError("no invariant check could be queued or found active")


async def get(conn: Connection, check_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(f"SELECT {COLUMNS} FROM invariant_checks WHERE id = $1",
                                                     check_id)
    return row


def all_checks() -> pages.Query:
    """Newest first (served by invariant_checks_created)."""
    return pages.Query(columns=COLUMNS, source="invariant_checks", key=("created_at", "id"), scope=())


async def claim(conn: Connection, lease_s: float) -> asyncpg.Record | None:
    """The check queued, or running with its lease lapsed, taken for a new attempt (None: nothing to run).
    Its total becomes the invariants this process runs: a check queued by another version of the gateway
    (a rolling deploy) shows, and counts its progress against, what is really checked (review R38)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""
        UPDATE invariant_checks c
           SET status = 'running', started_at = coalesce(c.started_at, now()), attempts = c.attempts + 1,
               lease_until = now() + make_interval(secs => $1), invariants_done = 0, invariants_total = $2
         WHERE c.id = (SELECT id FROM invariant_checks
                        WHERE status = 'queued' OR (status = 'running' AND lease_until < now())
                        ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
        RETURNING {COLUMNS}
        """,
        lease_s, count(),
    )
    return row


async def renew(conn: Connection, check_id: uuid.UUID, attempt: int, lease_s: float, done: int) -> bool:
    """The lease extended and the progress written; False: the attempt is no longer the check's."""
    status = await conn.execute(
        "UPDATE invariant_checks SET lease_until = now() + make_interval(secs => $3), invariants_done = $4"
        " WHERE id = $1 AND status = 'running' AND attempts = $2",
        check_id, attempt, lease_s, done)
    return bool(status == "UPDATE 1")


async def give_back(conn: Connection, check_id: uuid.UUID, attempt: int) -> bool:
    """The attempt ended without an outcome (the database failed it): queued again for the next worker."""
    status = await conn.execute(
        "UPDATE invariant_checks SET status = 'queued', lease_until = NULL, invariants_done = 0"
        " WHERE id = $1 AND status = 'running' AND attempts = $2",
        check_id, attempt)
    return bool(status == "UPDATE 1")


async def finish(conn: Connection, check_id: uuid.UUID, attempt: int, *, violations: str | None = None,
                 error: str | None = None) -> asyncpg.Record | None:
    """The outcome: ``violations`` (JSON: passed when ``{}``, else failed) or ``error``; None when the attempt
    is no longer the check's (nothing written)."""
    assert (violations is None) != (error is None)
    status = "error" if error is not None else ("passed" if violations == "{}" else "failed")
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""
        UPDATE invariant_checks
           SET status = $3, violations = $4::jsonb, error = $5, finished_at = now(), lease_until = NULL,
               invariants_done = CASE WHEN $5::text IS NULL THEN invariants_total ELSE invariants_done END
         WHERE id = $1 AND status = 'running' AND attempts = $2
        RETURNING {COLUMNS}
        """,
        check_id, attempt, status, violations, error)
    return row
