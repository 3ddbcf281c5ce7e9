"""Cursor pagination: one page as a ``Page``, every page as an async iterator.

Invariants: the iterator asks for the next page with ``starting_after`` = the last id it was given,
stops on ``has_more`` false or an empty page (so a server bug cannot make it loop forever), and
yields at most ``max_items`` objects when that bound is given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

JSONObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list, newest first: ``data`` and whether more objects follow."""

    data: list[JSONObject]
    has_more: bool

    @classmethod
    def parse(cls, raw: JSONObject) -> Page:
        data = raw.get("data")
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise ValueError("a list answer needs a 'data' array of objects")
        return cls(data=data, has_more=bool(raw.get("has_more", False)))

    @property
    def last_id(self) -> str | None:
        """The cursor for the next page (``starting_after``), or ``None`` on an empty page."""
        if not self.data:
            return None
        last = self.data[-1].get("id")
        return last if isinstance(last, str) else None


async def iterate(
    fetch: Callable[[str | None], Awaitable[Page]], starting_after: str | None, max_items: int | None,
) -> AsyncIterator[JSONObject]:
    """Yield every object of every page that ``fetch(cursor)`` returns, following ``starting_after``."""
    if max_items is not None and max_items < 0:
        raise ValueError("max_items must be >= 0")
    yielded = 0
    cursor = starting_after
    while max_items is None or yielded < max_items:
        page = await fetch(cursor)
        for item in page.data:
            if max_items is not None and yielded >= max_items:
                return
            yield item
            yielded += 1
        cursor = page.last_id
        if not page.has_more or cursor is None:
            return
