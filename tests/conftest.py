"""Shared fixtures: real PostgreSQL and Redis on this machine, a fresh schema per test session.

Also the secret canary's plugin (``tests/canary.py``): a session log of every record, aiohttp's
client taught to remember the secrets it carries, the test database read before each truncation,
and the canary's module run last.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import pytest

from gateway import settings as settings_mod
from gateway.logs import SERVICE, JsonFormatter
from gateway.settings import Settings
from gateway.smssim import SmsGatewaySim
from gateway.store import db, ledger
from tests import canary

# One database per test session (pid in the name), so parallel sessions never share state.
TEST_DB_URL = os.environ.get(
    "GATEWAY_TEST_DATABASE_URL", f"postgresql://postgres@127.0.0.1:5432/gateway_test_{os.getpid()}"
)
TEST_REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
_TABLES_KEPT = {"schema_migrations"}
# Every table emptied and the sequences their columns own restarted, as TRUNCATE ... RESTART IDENTITY
# CASCADE would, but by DELETE: the tables hold a test's few rows, and TRUNCATE gives each of the ~75
# tables and their indexes new files (330-570 ms per test, measured, against 30-50 ms). Foreign keys
# and triggers are off for it (session_replication_role), so the order does not matter.
_EMPTY_TABLES = f"""
DO $$
DECLARE name text;
BEGIN
    SET LOCAL session_replication_role = replica;
    FOR name IN SELECT format('%I.%I', schemaname, tablename) FROM pg_tables
                 WHERE schemaname = 'public' AND tablename <> ALL ('{{{",".join(sorted(_TABLES_KEPT))}}}'::text[]) LOOP
        EXECUTE 'DELETE FROM ' || name;
    END LOOP;
    FOR name IN SELECT format('%I.%I', n.nspname, c.relname)
                  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  JOIN pg_depend d ON d.objid = c.oid AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0
                 WHERE c.relkind = 'S' AND n.nspname = 'public' LOOP
        EXECUTE 'ALTER SEQUENCE ' || name || ' RESTART';
    END LOOP;
END $$"""


# The SMS gateway every test gateway sends its sign-in codes to: a real HTTP server on loopback, in a
# thread of its own (started once, at the first settings built), read by tests.integration.world.
SMS_HOOK_SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
_sms: list[tuple[SmsGatewaySim, contextlib.AbstractContextManager[SmsGatewaySim]]] = []


def sms_gateway() -> SmsGatewaySim:
    if not _sms:
        sim = SmsGatewaySim(SMS_HOOK_SECRET)
        serving = sim.in_thread()
        serving.__enter__()  # a daemon thread for the whole session (kept referenced: its exit would stop it)
        _sms.append((sim, serving))
    return _sms[0][0]


def make_settings(**overrides: dict[str, object]) -> Settings:
    sections: dict[str, dict[str, object]] = {
        "sign_in": {"sms_hook_url": sms_gateway().url, "sms_hook_secret": SMS_HOOK_SECRET,
                    "sender_poll_interval_s": 0.5},
        "database": {"url": TEST_DB_URL, "pool_min": 1, "pool_max": 10},
        "redis": {"url": TEST_REDIS_URL},
        "workers": {"interval_s": 3600.0},
        # Argon2's production cost (~0.2 s a hash here) made sign-ups and sign-ins a large share of the
        # suite's time; tests of the hashing itself set their own.
        "auth": {"password_hash_profile": "test_only_cheapest"},
        # Every client of the suite signs in from loopback: no per-address limit for it (tests of that
        # limit set their own addresses or settings).
        "throttle": {"address_exempt": "127.0.0.1,::1"},
    }
    for name, values in overrides.items():
        sections.setdefault(name, {}).update(values)
    if sections["auth"].get("key_mode") == "live" and "password_hash_profile" not in overrides.get("auth", {}):
        del sections["auth"]["password_hash_profile"]  # live keys refuse the cheap profile: the real one
    return settings_mod.load(env={}, **sections)


@pytest.fixture(scope="session")
def _schema() -> Iterator[str]:
    asyncio.run(db.drop_database(TEST_DB_URL))
    asyncio.run(db.migrate(TEST_DB_URL))
    yield TEST_DB_URL
    asyncio.run(db.drop_database(TEST_DB_URL))


@pytest.fixture
async def clean_db(_schema: str) -> AsyncIterator[str]:
    conn = await asyncpg.connect(_schema)
    try:
        await conn.execute(_EMPTY_TABLES)
    finally:
        await conn.close()
    # Redis needs no cleaning: every key is scoped by ids that are new in each test.
    ledger._accounts.clear()
    yield _schema


CANARY_MODULE = Path(__file__).parent / "security" / "test_secret_canary.py"
CANARY_LOGGERS = ("gateway", "pos_agent", "hardware")
R = TypeVar("R")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The canary checks what every other test left behind, so it runs after all of them.
    items.sort(key=lambda item: item.path == CANARY_MODULE)


def _learning_client(found: canary.Canary) -> Callable[[], None]:
    """Teach the canary every JSON body aiohttp's client sends or receives; returns the undo."""
    request, read = aiohttp.ClientSession._request, aiohttp.ClientResponse.read

    async def learning_request(self: aiohttp.ClientSession, method: str, url: Any, **kwargs: Any) -> Any:
        found.learn(kwargs.get("json"))
        if isinstance(kwargs.get("data"), (str, bytes)):
            found.learn_text(kwargs["data"])
        return await request(self, method, url, **kwargs)

    async def learning_read(self: aiohttp.ClientResponse) -> bytes:
        body = await read(self)
        if self.content_type == "application/json":
            found.learn_text(body)
        return body

    aiohttp.ClientSession._request = learning_request  # type: ignore[method-assign]
    aiohttp.ClientResponse.read = learning_read  # type: ignore[method-assign]

    def undo() -> None:
        aiohttp.ClientSession._request = request  # type: ignore[method-assign]
        aiohttp.ClientResponse.read = read  # type: ignore[method-assign]

    return undo


@pytest.fixture(scope="session", autouse=True)
def secret_canary() -> Iterator[canary.Canary]:
    found = canary.start()
    handler = logging.FileHandler(found.session_log, encoding="utf-8")
    handler.setFormatter(JsonFormatter(SERVICE))
    root = logging.getLogger()
    root.addHandler(handler)
    # What a serving gateway or agent logs (INFO), without the libraries' chatter.
    ours = [logging.getLogger(name) for name in CANARY_LOGGERS]
    levels = [logger.level for logger in ours]
    for logger in ours:
        logger.setLevel(logging.INFO)
    undo = _learning_client(found)
    try:
        yield found
    finally:
        undo()
        root.removeHandler(handler)
        handler.close()
        for logger, level in zip(ours, levels, strict=True):
            logger.setLevel(level)
        canary.stop()
        found.close(keep=bool(found.findings))


def _in_thread(work: Coroutine[Any, Any, R]) -> R:
    # Its own thread and loop: the test's event loop (pytest-asyncio) is not touched.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


async def _rows(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return await canary.rows_as_text(conn)
    finally:
        await conn.close()


@pytest.fixture(autouse=True)
def _canary_reads_the_database(request: pytest.FixtureRequest, secret_canary: canary.Canary) -> None:
    """Before ``clean_db`` truncates, the canary reads what the previous test left: every test's data, once."""
    if "clean_db" not in request.fixturenames:
        return
    url: str = request.getfixturevalue("_schema")
    secret_canary.scan(_in_thread(_rows(url)), f"database rows left by {secret_canary.last_db_test}")
    secret_canary.last_db_test = request.node.nodeid
