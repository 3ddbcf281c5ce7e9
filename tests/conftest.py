"""Shared fixtures: real PostgreSQL and Redis on this machine, a fresh schema per test session."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway import settings as settings_mod
from gateway.settings import Settings
from gateway.store import db, ledger

TEST_DB_URL = os.environ.get("GATEWAY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/gateway_test")
TEST_REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
_TABLES_KEPT = {"schema_migrations"}


def make_settings(**overrides: dict[str, object]) -> Settings:
    sections: dict[str, dict[str, object]] = {
        "database": {"url": TEST_DB_URL, "pool_min": 1, "pool_max": 10},
        "redis": {"url": TEST_REDIS_URL},
        "workers": {"interval_s": 3600.0},
    }
    for name, values in overrides.items():
        sections.setdefault(name, {}).update(values)
    return settings_mod.load(env={}, **sections)


@pytest.fixture(scope="session")
def _schema() -> str:
    import asyncio

    async def fresh() -> None:
        admin_url, name = db._admin_url(TEST_DB_URL)
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
        await db.migrate(TEST_DB_URL)

    asyncio.run(fresh())
    return TEST_DB_URL


@pytest.fixture
async def clean_db(_schema: str) -> AsyncIterator[str]:
    conn = await asyncpg.connect(_schema)
    try:
        tables = [r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        wanted = ", ".join(f'"{t}"' for t in tables if t not in _TABLES_KEPT)
        await conn.execute(f"TRUNCATE {wanted} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
    ledger._accounts.clear()
    client = aioredis.Redis.from_url(TEST_REDIS_URL)
    await client.flushdb()
    await client.aclose()
    yield _schema
