"""The API key cache object on its own: generations, bounds, TTL, answering only while listening.

The database is a stand-in (``store.api_key_by_hash`` patched); the listener's connection is
simulated by the cache's own up/down transitions.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from gateway.services.key_cache import ApiKey, ApiKeyCache
from gateway.settings import AuthSettings
from gateway.store import tenants as store

MERCHANT_A, MERCHANT_B = uuid.uuid4(), uuid.uuid4()


class _Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


class _FakeDatabase:
    @asynccontextmanager
    async def connection(self) -> AsyncIterator[object]:
        yield object()


def _key(merchant: uuid.UUID = MERCHANT_A, status: str = "active") -> ApiKey:
    return ApiKey(uuid.uuid4(), merchant, "secret", status)


def _cache(ttl_s: float = 60.0, entries_max: int = 100, clock: _Clock | None = None, *,
           listening: bool = True) -> ApiKeyCache:
    cache = ApiKeyCache(_FakeDatabase(), AuthSettings(api_key_cache_ttl_s=ttl_s, api_key_cache_entries_max=entries_max),  # type: ignore[arg-type]
                        clock=clock or _Clock())
    if listening:
        cache._up(object())
    return cache


def _row(key: ApiKey) -> dict[str, Any]:
    return {"id": key.key_id, "merchant_id": key.merchant_id, "kind": key.kind, "merchant_status": key.merchant_status}


async def test_a_lookup_overtaken_by_a_notification_stores_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _cache()
    key = _key()
    reading, answer = asyncio.Event(), asyncio.Event()

    async def slow_read(conn: object, key_hash: bytes) -> dict[str, Any]:
        reading.set()
        await answer.wait()
        return _row(key)  # what the database said before the revocation committed

    monkeypatch.setattr(store, "api_key_by_hash", slow_read)
    lookup = asyncio.create_task(cache.lookup(b"h1"))
    await reading.wait()
    cache._notified(MERCHANT_A)  # the revocation's notification is handled while the lookup is out
    answer.set()
    assert await lookup == key  # this request began before the revocation: it may pass
    assert cache.get(b"h1") is None and cache.size == 0  # but nothing stale is left for the next one


async def test_a_lookup_overtaken_by_a_reconnection_stores_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _cache()
    key = _key()
    reading, answer = asyncio.Event(), asyncio.Event()

    async def slow_read(conn: object, key_hash: bytes) -> dict[str, Any]:
        reading.set()
        await answer.wait()
        return _row(key)

    monkeypatch.setattr(store, "api_key_by_hash", slow_read)
    lookup = asyncio.create_task(cache.lookup(b"h1"))
    await reading.wait()
    cache._down(cache._epoch)
    cache._up(object())
    answer.set()
    await lookup
    assert cache.size == 0


async def test_an_undisturbed_lookup_is_stored_and_answers_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _cache()
    key = _key()
    reads: list[bytes] = []

    async def read(conn: object, key_hash: bytes) -> dict[str, Any]:
        reads.append(key_hash)
        return _row(key)

    monkeypatch.setattr(store, "api_key_by_hash", read)
    assert await cache.lookup(b"h1") == key
    assert await cache.lookup(b"h1") == key
    assert reads == [b"h1"]


async def test_unknown_keys_are_never_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _cache()
    reads: list[bytes] = []

    async def read(conn: object, key_hash: bytes) -> None:
        reads.append(key_hash)

    monkeypatch.setattr(store, "api_key_by_hash", read)
    for _ in range(3):
        assert await cache.lookup(b"unknown") is None
    assert reads == [b"unknown"] * 3 and cache.size == 0


async def test_not_listening_means_every_lookup_reads_the_database(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _cache(listening=False)
    key = _key()
    reads: list[bytes] = []

    async def read(conn: object, key_hash: bytes) -> dict[str, Any]:
        reads.append(key_hash)
        return _row(key)

    monkeypatch.setattr(store, "api_key_by_hash", read)
    await cache.lookup(b"h1")
    await cache.lookup(b"h1")
    assert reads == [b"h1", b"h1"] and cache.size == 0
    assert not cache.put(b"h1", key, cache.generation)


def test_losing_the_listener_empties_the_cache_and_stops_answering() -> None:
    cache = _cache()
    assert cache.put(b"h1", _key(), cache.generation)
    cache._down(cache._epoch)
    assert cache.get(b"h1") is None and cache.size == 0
    cache._up(object())
    assert cache.get(b"h1") is None


def test_a_late_loss_of_an_older_connection_is_ignored() -> None:
    cache = _cache()
    stale_epoch = cache._epoch
    cache._epoch += 1  # the listener reconnected since
    assert cache.put(b"h1", _key(), cache.generation)
    cache._down(stale_epoch)
    assert cache.listening and cache.get(b"h1") is not None


def test_a_notification_evicts_only_its_merchant_and_an_empty_one_everything() -> None:
    cache = _cache()
    a, b = _key(MERCHANT_A), _key(MERCHANT_B)
    cache.put(b"a", a, cache.generation)
    cache.put(b"b", b, cache.generation)
    cache._notified(MERCHANT_A)
    assert cache.get(b"a") is None and cache.get(b"b") == b
    cache._notified(None)
    assert cache.size == 0 and cache.notifications == 2


def test_the_payload_names_a_merchant_or_means_every_key() -> None:
    assert store.api_key_change(str(MERCHANT_A)) == MERCHANT_A
    assert store.api_key_change("") is None
    assert store.api_key_change("garbage") is None


def test_the_size_is_bounded_least_recently_used_first() -> None:
    cache = _cache(entries_max=2)
    keys = [_key(uuid.uuid4()) for _ in range(3)]
    cache.put(b"0", keys[0], cache.generation)
    cache.put(b"1", keys[1], cache.generation)
    assert cache.get(b"0") == keys[0]  # 1 is now the least recently used
    cache.put(b"2", keys[2], cache.generation)
    assert cache.size == 2 and cache.get(b"1") is None
    assert cache.get(b"0") == keys[0] and cache.get(b"2") == keys[2]
    assert keys[1].merchant_id not in cache._by_merchant  # the merchant index forgot the dropped entry


def test_an_entry_lives_at_most_the_ttl() -> None:
    clock = _Clock()
    cache = _cache(ttl_s=60.0, clock=clock)
    key = _key()
    cache.put(b"h1", key, cache.generation)
    clock.now_s += 59.9
    assert cache.get(b"h1") == key
    clock.now_s += 0.1
    assert cache.get(b"h1") is None and cache.size == 0


def test_ttl_zero_turns_the_cache_off() -> None:
    cache = _cache(ttl_s=0.0)
    assert not cache.enabled
    assert not cache.put(b"h1", _key(), cache.generation)
    assert cache.get(b"h1") is None
