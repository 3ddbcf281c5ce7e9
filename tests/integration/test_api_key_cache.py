"""The per-process API key cache against the real database: revocation and suspension pushed by
NOTIFY, in the process that made the change and in another one, and the listener's connection lost.

How long another process takes to hear of a change is the notification's delivery latency, so no
test sleeps for it: ``ApiKeyCache.sync()`` is the barrier (after it, every change committed before
it was called has been handled), and a test that must not see a change yet holds the listener down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway.api.routing import SERVICES
from gateway.auth import api_keys
from gateway.domain.ids import Kind, decode
from gateway.services.context import Services
from gateway.services.key_cache import ApiKeyCache
from gateway.settings import Settings
from gateway.store import tenants as store
from tests.conftest import make_settings
from tests.integration.conftest import serving
from tests.integration.world import Merchant, World, auth


def _svc(client: TestClient) -> Services:
    svc: Services = client.server.app[SERVICES]
    return svc


def _hash(svc: Services, secret: str) -> bytes:
    return api_keys.keyed_hash(svc.settings.auth.api_key_pepper, secret)


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for something the event loop brings about; no timing is asserted."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never {what}")


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every database lookup of an API key, by keyed hash."""
    seen: list[bytes] = []
    real = store.api_key_by_hash

    async def counted(conn: Any, key_hash: bytes) -> Any:
        seen.append(key_hash)
        return await real(conn, key_hash)

    monkeypatch.setattr(store, "api_key_by_hash", counted)
    return seen


async def _key_id(world: World, m: Merchant, kind: str = "secret") -> str:
    keys = await world.call("GET", f"/v1/merchants/{m.id}/api_keys", headers=world.ops)
    return str(next(k["id"] for k in keys["data"] if k["kind"] == kind))


async def test_a_cache_hit_makes_no_database_lookup(world: World, client: TestClient, lookups: list[bytes]) -> None:
    m = await world.merchant()
    svc = _svc(client)
    assert svc.api_keys.listening
    for _ in range(3):
        await world.call("GET", "/v1/payments", headers=m.headers)
    assert lookups.count(_hash(svc, m.secret)) == 1
    # An unknown key is looked up every time: nothing of it is kept.
    for _ in range(2):
        await world.call("GET", "/v1/payments", 401, headers=auth(m.secret[:-4] + "zzzz"))
    assert lookups.count(_hash(svc, m.secret[:-4] + "zzzz")) == 2


async def test_a_revoked_key_is_refused_by_the_next_request_even_before_the_notification(
    world: World, clean_db: str, settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The process that revoked evicts on its own once committed: no wait for its listener."""
    heard: list[object] = []
    monkeypatch.setattr(ApiKeyCache, "_notified", lambda self, merchant: heard.append(merchant))  # a deaf listener
    m = await world.merchant()
    payment = f"/v1/payments/{(await world.payment(m, 100))['id']}"
    async with serving(clean_db, settings) as deaf:
        svc = _svc(deaf)
        assert svc.api_keys.listening
        await World.json(deaf, "GET", "/v1/payments", headers=m.headers)
        assert svc.api_keys.get(_hash(svc, m.secret)) is not None  # warm
        await World.json(deaf, "POST", f"/v1/api_keys/{await _key_id(world, m)}/revoke", headers=world.ops, json={})
        err = await World.json(deaf, "GET", "/v1/payments", 401, headers=m.headers)
        assert err["error"]["code"] == "invalid_api_key"
        await svc.api_keys.sync()
        assert heard == [decode(Kind.MERCHANT, m.id)]  # notified all the same, and ignored here
        await World.json(deaf, "GET", payment, headers=auth(m.publishable))
        await World.json(deaf, "POST", f"/v1/merchants/{m.id}/suspend", headers=world.ops, json={})
        err = await World.json(deaf, "GET", payment, 403, headers=auth(m.publishable))
        assert err["error"]["code"] == "merchant_suspended"


async def _kill_listener(svc: Services) -> None:
    conn = await asyncpg.connect(svc.settings.database.url)
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1 AND datname = current_database()", store.API_KEY_LISTENER_NAME)
    finally:
        await conn.close()
    assert killed == 1


async def test_revocation_through_one_process_is_refused_by_another(
    world: World, client: TestClient, clean_db: str, settings: Settings,
) -> None:
    m = await world.merchant()
    payment = f"/v1/payments/{(await world.payment(m, 100))['id']}"
    async with serving(clean_db, settings) as other:
        svc = _svc(other)
        await _until(lambda: svc.api_keys.listening, "listening")
        for _ in range(2):
            await World.json(other, "GET", "/v1/payments", headers=m.headers)
        assert svc.api_keys.get(_hash(svc, m.secret)) is not None  # warm
        await world.call("POST", f"/v1/api_keys/{await _key_id(world, m)}/revoke", headers=world.ops, json={})
        # Committed: the other process honours it once its listener has had the notification.
        await svc.api_keys.sync()
        err = await World.json(other, "GET", "/v1/payments", 401, headers=m.headers)
        assert err["error"]["code"] == "invalid_api_key"
        await World.json(other, "GET", payment, headers=auth(m.publishable))  # the merchant's other key lives


async def test_suspension_and_reactivation_are_honoured_by_every_process(
    world: World, client: TestClient, clean_db: str, settings: Settings,
) -> None:
    m = await world.merchant()
    async with serving(clean_db, settings) as other:
        svc = _svc(other)
        await _until(lambda: svc.api_keys.listening, "listening")
        await World.json(other, "GET", "/v1/payments", headers=m.headers)
        await world.call("POST", f"/v1/merchants/{m.id}/suspend", headers=world.ops, json={})
        err = await world.call("GET", "/v1/payments", 403, headers=m.headers)  # at once where it was made
        assert err["error"]["code"] == "merchant_suspended"
        await svc.api_keys.sync()
        err = await World.json(other, "GET", "/v1/payments", 403, headers=m.headers)
        assert err["error"]["code"] == "merchant_suspended"
        assert svc.api_keys.get(_hash(svc, m.secret)) is not None  # the suspended status is cached too
        await world.call("POST", f"/v1/merchants/{m.id}/reactivate", headers=world.ops, json={})
        await world.call("GET", "/v1/payments", headers=m.headers)
        await svc.api_keys.sync()
        await World.json(other, "GET", "/v1/payments", headers=m.headers)


async def test_while_the_listener_is_down_every_lookup_reads_the_database(
    world: World, client: TestClient, clean_db: str, lookups: list[bytes], monkeypatch: pytest.MonkeyPatch,
) -> None:
    m = await world.merchant()
    payment = f"/v1/payments/{(await world.payment(m, 100))['id']}"
    svc = _svc(client)
    secret, publishable = _hash(svc, m.secret), _hash(svc, m.publishable)
    for _ in range(2):
        await world.call("GET", "/v1/payments", headers=m.headers)
    assert lookups.count(secret) == 1  # warm

    # Hold the listener down once its connection is gone: it reconnects only when the gate opens.
    gate = asyncio.Event()
    real_listen = store.listen_api_key_changes

    async def gated(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await real_listen(*args, **kwargs)

    monkeypatch.setattr(store, "listen_api_key_changes", gated)
    await _kill_listener(svc)
    await _until(lambda: not svc.api_keys.listening, "noticed the lost connection")

    await world.call("GET", "/v1/payments", headers=m.headers)
    await world.call("GET", "/v1/payments", headers=m.headers)
    assert lookups.count(secret) == 3  # each from the database
    # Revoked behind the gateway's back: the notification reaches no listener of this process.
    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1",
                           decode(Kind.API_KEY, await _key_id(world, m)))
    finally:
        await conn.close()
    assert (await world.call("GET", "/v1/payments", 401, headers=m.headers))["error"]["code"] == "invalid_api_key"

    gate.set()
    await _until(lambda: svc.api_keys.listening, "reconnected")
    before = lookups.count(publishable)
    for _ in range(3):
        await world.call("GET", payment, headers=auth(m.publishable))
    assert lookups.count(publishable) == before + 1  # cached again


async def test_ttl_zero_turns_the_cache_and_its_listener_off(
    world: World, clean_db: str, lookups: list[bytes],
) -> None:
    m = await world.merchant()
    async with serving(clean_db, make_settings(auth={"api_key_cache_ttl_s": 0.0})) as uncached:
        svc = _svc(uncached)
        for _ in range(2):
            await World.json(uncached, "GET", "/v1/payments", headers=m.headers)
        assert lookups.count(_hash(svc, m.secret)) == 2 and not svc.api_keys.listening
        conn = await asyncpg.connect(clean_db)
        try:
            listeners = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
                store.API_KEY_LISTENER_NAME)
        finally:
            await conn.close()
        assert listeners == 1  # the world's own server's, none of this one
