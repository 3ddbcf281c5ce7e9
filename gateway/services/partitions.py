"""Partition maintenance: keep each time-partitioned table's months ahead, drop the expired ones.

One month per transaction (a DDL statement that times out on a lock costs only its own month, and the
next tick tries again), each under the maintenance lock so that the workers of every host can run it:
the one that gets the lock does the work, the others skip. Retention comes from settings
(``partitions.events_retention_s``, never shorter than the webhook retry window: a delivery still being
retried keeps its event).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from gateway.domain import partitions as plans
from gateway.services.context import Services
from gateway.store import partitions as store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Maintained:
    created: tuple[str, ...]
    dropped: tuple[str, ...]
    skipped: bool = False  # another host holds the maintenance lock


async def maintain(svc: Services) -> Maintained:
    settings = svc.settings.partitions
    retention = {"events": timedelta(seconds=settings.events_retention_s)}
    created: list[str] = []
    dropped: list[str] = []
    for table in store.PARTITIONED:
        async with svc.db.connection() as conn:
            plan = plans.plan(await store.months(conn, table), svc.now(), retention[table], settings.ahead_months)
            for month, is_drop in [(m, False) for m in plan.create] + [(m, True) for m in plan.drop]:
                async with conn.transaction():
                    if not await store.lock_maintenance(conn):
                        return Maintained(tuple(created), tuple(dropped), skipped=True)
                    if (month in await store.months(conn, table)) != is_drop:
                        continue  # done meanwhile by another host (it held the lock between our plan and now)
                    if is_drop:
                        referencing = await store.drop(conn, table, month)
                        log.info("partition dropped", extra={"partition": month.name(table),
                                                             "referencing_rows_deleted": referencing})
                        dropped.append(month.name(table))
                    else:
                        await store.create(conn, table, month)
                        created.append(month.name(table))
    return Maintained(tuple(created), tuple(dropped))
