"""Monthly partitions of the time-partitioned tables (migration 0023): list, create ahead, drop expired.

A month is created as a plain table, then attached: ATTACH PARTITION takes only a SHARE UPDATE
EXCLUSIVE lock on the parent, so inserts (every payment writes an event) go on meanwhile, where
CREATE TABLE ... PARTITION OF would take an ACCESS EXCLUSIVE one. Dropping a month detaches it (a
short ACCESS EXCLUSIVE lock) after deleting the rows that reference it. Every DDL statement runs
with a short ``lock_timeout``: behind a long query it gives up (retried on the next tick) instead of
queueing every insert behind itself. The caller holds ``MAINTENANCE_LOCK`` so two hosts never race.
"""

from __future__ import annotations

from gateway.domain.partitions import Month, parse_name
from gateway.store.db import Connection

# The tables partitioned by month, each with the rows elsewhere that reference it (table, column of the
# referenced row's created_at): those go first, as a foreign key forbids detaching a referenced month.
PARTITIONED: dict[str, tuple[tuple[str, str], ...]] = {
    "events": (("webhook_deliveries", "event_created_at"),),  # their attempts go with them (ON DELETE CASCADE)
}
MAINTENANCE_LOCK = "hashtextextended('gateway partition maintenance', 0)"
LOCK_TIMEOUT = "2s"


async def months(conn: Connection, table: str) -> set[Month]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1::regclass",
        table,
    )
    found = (parse_name(table, row["relname"]) for row in rows)
    return {month for month in found if month is not None}


async def lock_maintenance(conn: Connection) -> bool:
    """Take the maintenance lock for this transaction; False if another host holds it."""
    got: bool = await conn.fetchval(f"SELECT pg_try_advisory_xact_lock({MAINTENANCE_LOCK})")
    return got


async def create(conn: Connection, table: str, month: Month) -> None:
    """Add the month (in a transaction: a failed attach leaves no stray table)."""
    name = month.name(table)
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    await conn.execute(f'CREATE TABLE "{name}" (LIKE "{table}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS)')
    await conn.execute(f"""ALTER TABLE "{table}" ATTACH PARTITION "{name}" FOR VALUES FROM ('{month.start.isoformat()}')"""
                       f" TO ('{month.end.isoformat()}')")


async def drop(conn: Connection, table: str, month: Month) -> int:
    """Delete what references the month, then the month itself (in a transaction); rows deleted."""
    name = month.name(table)
    await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    referencing = 0
    for other, column in PARTITIONED[table]:
        status = await conn.execute(f'DELETE FROM "{other}" WHERE "{column}" >= $1 AND "{column}" < $2',
                                    month.start, month.end)
        referencing += int(status.split()[-1])
    await conn.execute(f'ALTER TABLE "{table}" DETACH PARTITION "{name}"')
    await conn.execute(f'DROP TABLE "{name}"')
    return referencing
