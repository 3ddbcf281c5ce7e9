"""Cursor pagination for every list (Stripe's convention): ``limit`` 1-100, ``starting_after`` (the page of
older rows after this object) or ``ending_before`` (the page of newer rows before it), ``has_more``.

A cursor is the public id of an object of the list, and of the caller's own tenant: anything else is
``invalid_cursor`` naming the parameter (another tenant's id is refused like garbage, so a cursor tells
nothing about other tenants).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from gateway.errors import InvalidRequest
from gateway.store import pages
from gateway.store.db import Connection


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int
    starting_after: str | None = None
    ending_before: str | None = None


def instant(seconds: int | None) -> datetime | None:
    """A ``created[gte]``/``created[lt]`` filter: Unix seconds, as every list takes them."""
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


async def read(conn: Connection, query: pages.Query, page: PageRequest,
               decode: Callable[[str], Any | None]) -> tuple[list[asyncpg.Record], bool]:
    """One page of ``query`` newest first, and whether there are more rows beyond it (in the direction
    walked). ``decode`` turns a cursor's text into the row id (None: not an id of this list)."""
    if page.starting_after is not None and page.ending_before is not None:
        raise InvalidRequest("give starting_after or ending_before, not both", code="invalid_cursor",
                             param="ending_before")
    keys: dict[str, tuple[Any, ...] | None] = {}
    for name, text in (("starting_after", page.starting_after), ("ending_before", page.ending_before)):
        keys[name] = None
        if text is None:
            continue
        row_id = decode(text)
        keys[name] = None if row_id is None else await pages.cursor_key(conn, query, row_id)
        if keys[name] is None:
            raise InvalidRequest(f"{name} names no object of this list of yours", code="invalid_cursor", param=name)
    rows = await pages.fetch(conn, query, page.limit, keys["starting_after"], keys["ending_before"])
    has_more = len(rows) > page.limit
    # Walking towards newer rows the extra one is the newest: drop it from the front.
    return (rows[-page.limit:] if page.ending_before is not None else rows[:page.limit]), has_more
