"""Idempotency under stalls and crashes (issue 8): one key never gets two final answers, and a key
whose owner died is free again at once, not after ``lock_timeout_s``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from gateway.domain.ids import Kind, decode
from gateway.services import payments as payment_service
from gateway.services.idempotency import fingerprint
from gateway.settings import Settings
from tests.conftest import make_settings
from tests.integration.world import World

LOCK_TIMEOUT_S = 1


@pytest.fixture
def settings() -> Settings:
    return make_settings(idempotency={"lock_timeout_s": LOCK_TIMEOUT_S})


async def test_a_stalled_request_answers_what_its_taker_stored(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pay request claims its key, stalls past the lock timeout before it locks the payment; a
    retry takes the key over and pays (200, stored). The stalled one then finds the payment paid: it
    must answer the stored 200 (or a retryable 409 idempotency_key_in_use), not its own refusal."""
    m = await world.merchant()
    h = await world.holder(top_up=5_000)
    p = await world.payment(m, 1_000)
    real_get = payment_service.store.get
    stalled = False

    async def stall_first_lock(conn: Any, pid: Any, **kwargs: Any) -> Any:
        nonlocal stalled
        if kwargs.get("for_update") and not stalled:
            stalled = True
            await asyncio.sleep(LOCK_TIMEOUT_S + 0.8)  # a GC pause, CPU starvation, SIGSTOP...
        return await real_get(conn, pid, **kwargs)

    monkeypatch.setattr(payment_service.store, "get", stall_first_lock)
    path = f"/v1/wallet/payments/{p['id']}/pay"
    headers = {**h.headers, "Idempotency-Key": "stalled-pay-1"}

    async def retry_after_the_lock_timeout() -> tuple[int, bytes]:
        await asyncio.sleep(LOCK_TIMEOUT_S + 0.3)
        resp = await world.client.post(path, json={}, headers=headers)
        return resp.status, await resp.read()

    async def original() -> tuple[int, bytes]:
        resp = await world.client.post(path, json={}, headers=headers)
        return resp.status, await resp.read()

    (first_status, first_body), (retry_status, retry_body) = await asyncio.gather(
        original(), retry_after_the_lock_timeout()
    )
    assert retry_status == 200, retry_body
    if first_status == 409:
        assert b"idempotency_key_in_use" in first_body, first_body
    else:
        assert (first_status, first_body) == (retry_status, retry_body)
    replay = await world.client.post(path, json={}, headers=headers)
    assert (replay.status, await replay.read()) == (retry_status, retry_body)
    assert await world.available(h) == 4_000


async def _insert_started_key(db_url: str, principal: str, key: str, path: str, age_s: float) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO idempotency_keys (principal, key, request_hash, method, path, locked_at)"
            " VALUES ($1, $2, $3, 'POST', $4, now() - make_interval(secs => $5))",
            principal, key, fingerprint("POST", path, {}), path, age_s,
        )
    finally:
        await conn.close()


async def test_a_key_whose_owner_died_is_taken_over_at_once(world: World, clean_db: str) -> None:
    """A started key with no live owner (the process and its connection are gone) is free at once."""
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=5_000)
    p = await world.payment(m, 1_000)
    path, key = f"/v1/wallet/payments/{p['id']}/pay", "crashed-1"
    await _insert_started_key(clean_db, f"wallet:{decode(Kind.WALLET_HOLDER, h.id)}", key, path, age_s=0.0)
    started_s = time.monotonic()
    resp = await world.client.post(path, json={}, headers={**h.headers, "Idempotency-Key": key})
    assert resp.status == 200, await resp.text()
    assert time.monotonic() - started_s < LOCK_TIMEOUT_S
    assert await world.available(h) == 4_000


async def test_a_key_whose_owner_is_alive_waits_for_it(world: World, clean_db: str) -> None:
    """While the owner's connection holds the key lock (alive, even if stalled), a retry gets 409
    until the lock timeout passes; then it may take the key over."""
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=5_000)
    p = await world.payment(m, 1_000)
    path, key = f"/v1/wallet/payments/{p['id']}/pay", "alive-1"
    principal = f"wallet:{decode(Kind.WALLET_HOLDER, h.id)}"
    await _insert_started_key(clean_db, principal, key, path, age_s=0.0)
    owner = await asyncpg.connect(clean_db)  # stands for the owning request's connection
    try:
        assert await owner.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1 || chr(31) || $2, 0))",
                                    principal, key)
        busy = await world.client.post(path, json={}, headers={**h.headers, "Idempotency-Key": key})
        assert busy.status == 409 and (await busy.json())["error"]["code"] == "idempotency_key_in_use"
        await asyncio.sleep(LOCK_TIMEOUT_S + 0.2)
        resp = await world.client.post(path, json={}, headers={**h.headers, "Idempotency-Key": key})
        assert resp.status == 200, await resp.text()
    finally:
        await owner.close()
    assert await world.available(h) == 4_000


async def test_no_key_lock_outlives_its_request(world: World, clean_db: str) -> None:
    """Every path (success, refusal, replay, conflict) gives the key lock back to PostgreSQL."""
    m = await world.merchant()
    h = await world.holder(top_up=1_000)
    paid = await world.payment(m, 500)
    too_big = await world.payment(m, 5_000)
    await world.pay(h, paid["id"], key="k-ok")
    await world.pay(h, paid["id"], key="k-ok")  # replay
    await world.pay(h, too_big["id"], expect=402, key="k-declined")
    await world.pay(h, paid["id"], expect=409, key="k-refused")
    await world.call("POST", "/v1/payments", 201, headers={**m.headers, "Idempotency-Key": "k-create"},
                     json={"amount": 1, "currency": "CNY"})
    conn = await asyncpg.connect(clean_db)
    try:
        # This database's only: other servers on the machine (a benchmark, another run) hold their own.
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
    finally:
        await conn.close()
    assert held == 0


async def test_a_killed_owner_frees_its_key_within_a_second(world: World, clean_db: str) -> None:
    """The owner's backend is terminated mid-request (its process died): the retry runs at once."""
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=5_000)
    p = await world.payment(m, 1_000)
    path = f"/v1/wallet/payments/{p['id']}/pay"
    headers = {**h.headers, "Idempotency-Key": "killed-1"}
    blocker = await asyncpg.connect(clean_db)
    watcher = await asyncpg.connect(clean_db)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM payments WHERE id = $1 FOR UPDATE", decode(Kind.PAYMENT, p["id"]))
        first = asyncio.create_task(world.client.post(path, json={}, headers=headers))
        waiting = None
        for _ in range(100):
            waiting = await watcher.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            if waiting:
                break
            await asyncio.sleep(0.02)
        assert waiting, "the pay request never waited on the payment row"
        await watcher.execute("SELECT pg_terminate_backend($1)", waiting)
        dead = await first
        assert dead.status == 503 and dead.headers.get("Retry-After"), await dead.text()
        await tx.rollback()
        started_s = time.monotonic()
        resp = await world.client.post(path, json={}, headers=headers)
        assert resp.status == 200, await resp.text()
        assert time.monotonic() - started_s < LOCK_TIMEOUT_S
    finally:
        await blocker.close()
        await watcher.close()
    assert await world.available(h) == 4_000
