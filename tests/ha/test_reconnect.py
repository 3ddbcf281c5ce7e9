"""What a failover looks like to the gateway's pool, on the machine's own PostgreSQL (no Patroni
needed): while no host of a multi-host URL with ``target_session_attrs`` accepts the session asked
for, and when a session opened on a primary finds it demoted (read-only), a call is a retryable 503
``database_unavailable`` (never a 500), the broken connection is not pooled again, and the next call
connects afresh. tests/ha/test_failover.py shows the same through a real Patroni failover."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from gateway.errors import Unavailable
from gateway.store import db
from tests.conftest import make_settings


def _two_hosts(url: str, attrs: str) -> str:
    """``url`` listed twice as libpq's failover list, asking for a session of kind ``attrs``."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    user = parts.netloc.rpartition("@")[0]
    return f"{parts.scheme}://{user}@{host},{host}{parts.path}?target_session_attrs={attrs}"


async def test_no_host_that_accepts_writes_is_a_retryable_503(_schema: str) -> None:
    # The machine's server is a primary: asking for a read-only one finds no host, exactly as asking
    # for read-write does while every node is a standby in the middle of a failover.
    settings = make_settings(database={"url": _two_hosts(_schema, "read-only"), "pool_min": 0})
    database = await db.Database.connect(settings.database)
    try:
        with pytest.raises(Unavailable) as raised:
            await database.fetchval("SELECT 1")
        assert raised.value.code == "database_unavailable"
    finally:
        await database.close()


async def test_the_pool_connects_through_a_failover_list(_schema: str) -> None:
    settings = make_settings(database={"url": _two_hosts(_schema, "read-write"), "pool_min": 0})
    database = await db.Database.connect(settings.database)
    try:
        assert await database.fetchval("SELECT NOT pg_is_in_recovery()") is True
    finally:
        await database.close()


async def test_waiting_for_a_primary_at_start_ends_as_unreachable(_schema: str) -> None:
    told: list[BaseException] = []
    with pytest.raises(db.DatabaseUnreachable, match="127.0.0.1"):
        await db.wait_until_reachable(_two_hosts(_schema, "read-only"), 0.5, lambda exc, _left: told.append(exc))
    assert told, "the wait was reported once, as for a server that is not up yet"


async def test_a_session_on_a_demoted_primary_is_dropped_and_replaced(_schema: str) -> None:
    settings = make_settings(database={"url": _schema, "pool_min": 1, "pool_max": 1})
    database = await db.Database.connect(settings.database)
    try:
        async with database.connection() as conn:
            first_pid = await conn.fetchval("SELECT pg_backend_pid()")
            # What a write meets on a server that became a standby under an open session.
            await conn.execute("SET default_transaction_read_only = on")

        async def write(conn: db.Connection) -> None:
            await conn.execute("CREATE TABLE ha_never_created (x int)")

        with pytest.raises(Unavailable) as raised:
            await database.run(write)
        assert raised.value.code == "database_unavailable"
        async with database.connection() as conn:  # a fresh session: the read-only one was terminated
            assert await conn.fetchval("SELECT pg_backend_pid()") != first_pid
            assert await conn.fetchval("SHOW default_transaction_read_only") == "off"
    finally:
        await database.close()
