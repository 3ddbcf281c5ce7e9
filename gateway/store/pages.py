"""Keyset pagination, the one way every list endpoint reads a page.

A list is ordered newest first by a key that is unique and never changes (``(created_at, id)``, or a
commit-ordered ``seq``). A page starts strictly after its ``starting_after`` row's key (or ends strictly
before its ``ending_before`` row's key), so rows inserted while a client walks the list never shift a
page: no row is shown twice and none that existed when the walk began is skipped. Each read fetches
``limit + 1`` rows; the extra one tells that there are more.

Conditions are SQL templates with ``{}`` for each value; values always travel as parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from gateway.store.db import Connection

Condition = tuple[str, tuple[Any, ...]]


def cond(template: str, *values: Any) -> Condition:
    """``cond("merchant_id = {}", merchant_id)``: one condition, its values as parameters."""
    return template, values


def _render(conditions: Sequence[Condition], args: list[Any]) -> list[str]:
    parts = []
    for template, values in conditions:
        marks = []
        for value in values:
            args.append(value)
            marks.append(f"${len(args)}")
        parts.append(template.format(*marks))
    return parts


@dataclass(frozen=True, slots=True)
class Query:
    """One list: what it selects, from where, ordered by which key, for which tenant, filtered how.

    ``scope`` is the tenant (a merchant's rows, a holder's): a cursor must name a row inside it.
    ``filters`` narrow the list further; they are not asked of the cursor's row.
    """

    columns: str
    source: str  # the FROM clause (joins included)
    key: tuple[str, ...]  # the sort key, newest first; unique
    scope: tuple[Condition, ...]
    filters: tuple[Condition, ...] = field(default_factory=tuple)
    id_column: str = "id"


async def cursor_key(conn: Connection, query: Query, row_id: Any) -> tuple[Any, ...] | None:
    """The sort key of the row ``row_id``, or None when no such row is in the query's scope."""
    args: list[Any] = []
    where = " AND ".join(_render([cond(f"{query.id_column} = {{}}", row_id), *query.scope], args))
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {', '.join(query.key)} FROM {query.source} WHERE {where}", *args)
    return None if row is None else tuple(row.values())


async def fetch(conn: Connection, query: Query, limit: int, after: tuple[Any, ...] | None,
                before: tuple[Any, ...] | None) -> list[asyncpg.Record]:
    """Up to ``limit + 1`` rows newest first: after ``after`` (older rows), or just before ``before``
    (newer rows, the ones nearest to it: read oldest first, then turned round)."""
    args: list[Any] = []
    parts = _render([*query.scope, *query.filters], args)
    order = "DESC"
    boundary, comparison = (after, "<") if after is not None else (before, ">")
    if boundary is not None:
        marks = _render([cond(", ".join(["{}"] * len(boundary)), *boundary)], args)[0]
        parts.append(f"({', '.join(query.key)}) {comparison} ({marks})")
        order = "DESC" if after is not None else "ASC"
    args.append(limit + 1)
    rows = await conn.fetch(
        f"SELECT {query.columns} FROM {query.source} WHERE {' AND '.join(parts) or 'true'}"
        f" ORDER BY {', '.join(f'{column} {order}' for column in query.key)} LIMIT ${len(args)}",
        *args,
    )
    return list(rows) if order == "DESC" else list(reversed(rows))
