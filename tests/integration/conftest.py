"""Integration fixtures: the real app over real HTTP on loopback; the ledger proven after every test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.accel import Accelerator
from gateway.app import create_app
from gateway.settings import RedisSettings, Settings
from gateway.store import invariants
from tests.conftest import TEST_REDIS_URL, make_settings
from tests.fault.cluster import RedisServer
from tests.integration.world import World


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@asynccontextmanager
async def serving(db_url: str, settings: Settings, port: int | None = None,
                  workers: bool = False) -> AsyncIterator[TestClient]:
    """The app on a real loopback port (``port``, or any free one), with its background loops if
    ``workers``; the ledger is proven afterwards."""
    server = TestServer(create_app(settings, workers=workers), host="127.0.0.1", port=port)
    async with TestClient(server) as test_client:
        yield test_client
    conn = await asyncpg.connect(db_url)
    try:
        found = await invariants.check(conn)
    finally:
        await conn.close()
    broken = {name: rows for name, rows in found.items() if rows}
    assert not broken, f"ledger invariants broken after the test: {broken}"


@pytest.fixture
async def client(clean_db: str, settings: Settings) -> AsyncIterator[TestClient]:
    async with serving(clean_db, settings) as test_client:
        yield test_client


@pytest.fixture
async def world(client: TestClient) -> World:
    return await World.create(client)


@pytest.fixture
async def db(clean_db: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own to its database, for what the API does not show."""
    conn = await asyncpg.connect(clean_db)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def app_factory(clean_db: str) -> Callable[..., Any]:
    def build(settings: Settings) -> Any:
        return create_app(settings, workers=False)

    return build


@pytest.fixture
async def accel() -> Any:
    """An accelerator of its own on the tests' Redis, for the tests of what goes in its pipelines."""
    # A generous timeout: these tests are about what goes in a pipeline, and a loaded machine (a parallel
    # test run) must not turn a slow answer into "Redis unavailable" (its own test sets its own).
    a = Accelerator(RedisSettings(url=TEST_REDIS_URL, timeout_s=5.0))
    # Its scripts loaded first: a test counting round trips must not count the refusal of the first call
    # on a Redis that never ran them (the first test of a fresh server).
    for script in (a._take_script, a._windows_script, a._windows_back_script):
        await a.client.script_load(script.script)
    yield a
    await a.close()


@pytest.fixture
async def own_redis_accel() -> Any:
    """An accelerator on a Redis server of its own, for tests that flush its scripts: Redis keeps scripts
    per server, not per database, so a SCRIPT FLUSH on the shared server races the other test workers
    (one of them loads the script again between the flush and the call, or gets a refusal it counts)."""
    server = RedisServer()
    server.start()
    a = Accelerator(RedisSettings(url=server.url, timeout_s=5.0))
    try:
        yield a
    finally:
        await a.close()
        server.destroy()
