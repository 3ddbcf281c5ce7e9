"""Events partitioned by month (migration 0023): maintenance creates months ahead, drops expired ones
with their webhook deliveries, and leaves the work to one host at a time."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from gateway.domain.partitions import Month
from gateway.services import partitions
from gateway.services.context import Services
from gateway.store import partitions as partition_store
from tests.conftest import make_settings

RETENTION_S = 40 * 86400


@pytest.fixture
async def conn(clean_db: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(clean_db)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def short_retention(clean_db: str) -> AsyncIterator[Services]:
    svc = await Services.start(make_settings(partitions={"events_retention_s": RETENTION_S, "ahead_months": 5}))
    try:
        yield svc
    finally:
        await svc.stop()
        # Put the default months back for the tests after this one (the plan recreates the past months).
        restore = await Services.start(make_settings())
        try:
            await partitions.maintain(restore)
        finally:
            await restore.stop()


async def _merchant_with_endpoint(conn: asyncpg.Connection) -> uuid.UUID:
    merchant_id = uuid.uuid4()
    await conn.execute("INSERT INTO merchants (id, name, mcc, country, city, fee_bps)"
                       " VALUES ($1, 'Shop', '5411', 'CN', 'Shanghai', 100)", merchant_id)
    await conn.execute("INSERT INTO webhook_endpoints (id, merchant_id, url, enabled_events, secret_sealed)"
                       " VALUES ($1, $2, 'https://example.test/hook', '{*}', '\\x00')", uuid.uuid4(), merchant_id)
    return merchant_id


async def _event(conn: asyncpg.Connection, merchant_id: uuid.UUID, age: timedelta) -> uuid.UUID:
    event_id = uuid.uuid4()
    await conn.execute("INSERT INTO events (id, type, merchant_id, object_id, data, created_at)"
                       " VALUES ($1, 'payment.succeeded', $2, $1, '{}', now() - $3::interval)", event_id, merchant_id, age)
    return event_id


async def test_expired_months_go_with_their_deliveries_and_months_ahead_are_made(
        conn: asyncpg.Connection, short_retention: Services) -> None:
    merchant_id = await _merchant_with_endpoint(conn)
    old = await _event(conn, merchant_id, timedelta(days=100))
    recent = await _event(conn, merchant_id, timedelta(days=1))
    # the fan-out trigger queued one delivery per event, each carrying its event's created_at
    assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries d JOIN events ev"
                               " ON ev.id = d.event_id AND ev.created_at = d.event_created_at") == 2
    now = short_retention.now()

    done = await partitions.maintain(short_retention)

    first, last = Month.of(now - timedelta(seconds=RETENTION_S)), Month.of(now).shifted(5)
    assert done.created == (Month.of(now).shifted(4).name("events"), last.name("events"))
    assert Month.of(now - timedelta(days=100)).name("events") in done.dropped
    kept = await partition_store.months(conn, "events")
    assert min(kept) == first and max(kept) == last and len(kept) == len(set(kept))
    assert await conn.fetchval("SELECT count(*) FROM events WHERE id = $1", old) == 0
    assert [r["event_id"] for r in await conn.fetch("SELECT event_id FROM webhook_deliveries")] == [recent]
    # a month made ahead takes rows, and its fan-out trigger (cloned at attach) queues their deliveries
    ahead = uuid.uuid4()
    await conn.execute("INSERT INTO events (id, type, merchant_id, object_id, data, created_at)"
                       " VALUES ($1, 'payment.succeeded', $2, $1, '{}', $3)", ahead, merchant_id,
                       last.start + timedelta(days=3))
    assert await conn.fetchval("SELECT event_created_at FROM webhook_deliveries WHERE event_id = $1",
                               ahead) == last.start + timedelta(days=3)
    assert await partitions.maintain(short_retention) == partitions.Maintained((), ())


async def test_one_host_at_a_time(conn: asyncpg.Connection, short_retention: Services) -> None:
    async with conn.transaction():
        assert await partition_store.lock_maintenance(conn)
        before = await partition_store.months(conn, "events")
        done = await partitions.maintain(short_retention)
    assert done == partitions.Maintained((), (), skipped=True)
    assert await partition_store.months(conn, "events") == before


async def test_a_month_still_referenced_cannot_be_detached_by_hand(conn: asyncpg.Connection) -> None:
    """Why drop() deletes the deliveries first: the foreign key guards the month."""
    merchant_id = await _merchant_with_endpoint(conn)
    await _event(conn, merchant_id, timedelta(0))
    month = Month.of(await conn.fetchval("SELECT now()"))
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await conn.execute(f'ALTER TABLE events DETACH PARTITION "{month.name("events")}"')
