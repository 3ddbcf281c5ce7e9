"""Shared fixtures: real PostgreSQL and Redis on this machine, a fresh schema per test session."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from gateway import settings as settings_mod
from gateway.settings import Settings
from gateway.store import db, ledger

# One database per test session (pid in the name), so parallel sessions never share state.
TEST_DB_URL = os.environ.get(
    "GATEWAY_TEST_DATABASE_URL", f"postgresql://postgres@127.0.0.1:5432/gateway_test_{os.getpid()}"
)
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


async def _drop(url: str) -> None:
    admin_url, name = db._admin_url(url)
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def _schema() -> Iterator[str]:
    asyncio.run(_drop(TEST_DB_URL))
    asyncio.run(db.migrate(TEST_DB_URL))
    yield TEST_DB_URL
    asyncio.run(_drop(TEST_DB_URL))


@pytest.fixture
async def clean_db(_schema: str) -> AsyncIterator[str]:
    conn = await asyncpg.connect(_schema)
    try:
        tables = [r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        wanted = ", ".join(f'"{t}"' for t in tables if t not in _TABLES_KEPT)
        await conn.execute(f"TRUNCATE {wanted} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
    # Redis needs no cleaning: every key is scoped by ids that are new in each test.
    ledger._accounts.clear()
    yield _schema
