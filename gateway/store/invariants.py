"""The SQL invariant checker: proves the ledger sound, or names what is broken.

Run by the operator endpoint, the demo, and after every integration test.
"""

from __future__ import annotations

from importlib import resources

from gateway.store.db import Connection


def _queries() -> list[tuple[str, str]]:
    text = resources.files("gateway.store").joinpath("sql/invariants.sql").read_text(encoding="utf-8")
    found: list[tuple[str, str]] = []
    for block in text.split("-- name: ")[1:]:
        name, _, sql = block.partition("\n")
        found.append((name.strip(), sql.strip().rstrip(";")))
    return found


async def check(conn: Connection) -> dict[str, list[dict[str, object]]]:
    """Every invariant's name mapped to the rows that break it (empty lists when sound)."""
    results: dict[str, list[dict[str, object]]] = {}
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for name, sql in _queries():
            rows = await conn.fetch(sql + " LIMIT 20")
            results[name] = [dict(row) for row in rows]
    return results
