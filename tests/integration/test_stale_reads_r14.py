"""gateway.store.replica on the machine's PostgreSQL: two databases stand for the primary and the replica
(``current_database()`` tells which served), a closed port for a replica that is down."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from gateway.errors import Unavailable
from gateway.settings import DatabaseSettings
from gateway.store.db import Database
from gateway.store.replica import StaleReads
from tests.e2e.harness import free_tcp_port

SERVER = "postgresql://postgres@127.0.0.1:5432"


async def _reads(replica_url: str, backoff_s: float = 5.0) -> StaleReads:
    primary = await Database.connect(DatabaseSettings(url=f"{SERVER}/postgres", pool_min=0, pool_max=2))
    return await StaleReads.connect(primary, DatabaseSettings(url=primary.settings.url, pool_max=2,
                                                              replica_url=replica_url, replica_backoff_s=backoff_s))


async def _served_by(reads: StaleReads) -> str:
    async with reads.connection() as conn:
        return str(await conn.fetchval("SELECT current_database()"))


async def _close(reads: StaleReads) -> None:
    await reads.close()
    await reads.primary.close()


async def test_without_a_replica_url_the_primary_serves() -> None:
    reads = await _reads("")
    try:
        assert reads.replica is None
        assert await _served_by(reads) == "postgres"
    finally:
        await _close(reads)


async def test_the_replica_serves_while_it_answers() -> None:
    reads = await _reads(f"{SERVER}/template1")
    try:
        assert await _served_by(reads) == "template1"
    finally:
        await _close(reads)


async def test_a_replica_down_sends_the_reads_to_the_primary_until_the_backoff_ends() -> None:
    reads = await _reads(f"postgresql://postgres@127.0.0.1:{free_tcp_port()}/postgres", backoff_s=0.3)
    try:
        assert await _served_by(reads) == "postgres"
        assert not reads.replica_usable  # the breaker: no connection attempt per read
        await asyncio.sleep(0.35)
        assert reads.replica_usable
    finally:
        await _close(reads)


@pytest.mark.parametrize("conflict", [asyncpg.SerializationError, asyncpg.DeadlockDetectedError])
async def test_a_recovery_conflict_is_a_retryable_503(conflict: type[Exception]) -> None:
    reads = await _reads(f"{SERVER}/template1")
    try:
        with pytest.raises(Unavailable) as refused:
            async with reads.connection():
                raise conflict("canceling statement due to conflict with recovery")
        assert refused.value.code == "database_busy"
        assert reads.replica_usable  # the replica is fine: the next read goes to it again
    finally:
        await _close(reads)
