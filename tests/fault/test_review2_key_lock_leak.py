"""Review 2: a key lock that outlives its request on a pooled connection.

The pool skips asyncpg's reset (``reset=_no_session_state`` in ``store/db.py``: no
``pg_advisory_unlock_all()`` on release) on the promise that "the idempotency key lock is released
before the connection goes back". ``Idempotency._own`` keeps that promise on the claim (a failed
claim terminates its connection) and in ``_release`` (a failed release terminates it), but not
when it stores a client error: ``key_locked`` is set False *before* ``keys.complete`` runs, and if
that statement fails (lock_timeout, statement_timeout, a cancel) the exception leaves ``_own``
without ``_release`` and without ``terminate``. The connection goes back to the pool still holding
the session-level key lock.

Consequences: (1) every retry on another connection sees the key lock held, takes the owner for
alive and gets 409 ``idempotency_key_in_use`` for ``lock_timeout_s`` (30 s by default) instead of
running at once; (2) the lock is re-entrant, so a later request with the same key that happens to
get the leaking connection "wins" ``pg_try_advisory_lock`` although another request may own the
key; the lock count on that connection only ever grows, and the lock stays until the connection
is closed. Expected: no path leaves a key lock on a pooled connection (the same invariant
``tests/fault/test_idempotency_faults.py::test_no_key_lock_outlives_its_request`` pins for the
paths it covers).
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from gateway.domain.ids import Kind, decode
from gateway.services import idempotency as idem
from gateway.settings import Settings
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from tests.conftest import make_settings
from tests.integration.world import World

LOCK_TIMEOUT_S = 0.3  # the server-side lock_timeout of gateway sessions, short for the test


@pytest.fixture
def settings() -> Settings:
    return make_settings(database={"lock_timeout_s": LOCK_TIMEOUT_S})


async def _advisory_locks(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        # This database's only: other servers on the machine (a benchmark, another run) hold their own.
        return int(await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"))
    finally:
        await conn.close()


async def test_storing_a_decline_that_times_out_leaves_no_key_lock(
    world: World, clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: a pay that is declined (402, insufficient funds) while its key row is briefly locked by
    another session (here a plain ``SELECT ... FOR UPDATE``; in production the reaper or a racing
    claim), so storing the decline hits the server's ``lock_timeout``. The request answers 503
    (fine: retryable). Expected: the key lock is gone with the request (no advisory lock left in
    ``pg_locks``), and the client's retry runs at once and gets the decline (402), not a 409."""
    m = await world.merchant()
    h = await world.holder(top_up=100)
    p = await world.payment(m, 5_000)
    path, key = f"/v1/wallet/payments/{p['id']}/pay", "decline-lock-leak"
    principal = f"wallet:{decode(Kind.WALLET_HOLDER, h.id)}"
    blocker = await asyncpg.connect(clean_db)
    real_complete = idem.keys.complete
    blocked = False

    async def complete_while_row_locked(conn: Any, scope: str, k: str, locked_at: Any, status: int, *rest: Any) -> Any:
        nonlocal blocked
        if status == 402 and not blocked:
            blocked = True
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("SELECT 1 FROM idempotency_keys WHERE principal = $1 AND key = $2 FOR UPDATE",
                                  principal, key)
            try:
                return await real_complete(conn, scope, k, locked_at, status, *rest)
            finally:
                await tx.rollback()
        return await real_complete(conn, scope, k, locked_at, status, *rest)

    monkeypatch.setattr(idem.keys, "complete", complete_while_row_locked)
    headers = {**h.headers, "Idempotency-Key": key}
    try:
        first = await world.client.post(path, json={}, headers=headers)
        assert first.status == 503, await first.text()
        assert await _advisory_locks(clean_db) == 0, "a pooled connection kept the key lock"
        retry = await asyncio.wait_for(world.client.post(path, json={}, headers=headers), 10)
        assert retry.status == 402, await retry.text()
    finally:
        await blocker.close()


async def test_a_leaked_key_lock_makes_the_retry_on_another_process_wait_for_the_lock_timeout(
    world: World, clean_db: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same decline whose storing hit ``lock_timeout`` (503, retryable). The client retries with
    the same key through a second gateway process (another pool, as behind any load balancer).
    Expected: the first request is over, so its key is free: the retry runs and answers the decline
    (402) at once. Today the first process's pooled connection still holds the key lock, so the
    retry is told the key is in use (409) until ``idempotency.lock_timeout_s`` (30 s) has passed."""
    m = await world.merchant()
    h = await world.holder(top_up=100)
    p = await world.payment(m, 5_000)
    path, key = f"/v1/wallet/payments/{p['id']}/pay", "decline-lock-leak-2"
    principal = f"wallet:{decode(Kind.WALLET_HOLDER, h.id)}"
    blocker = await asyncpg.connect(clean_db)
    real_complete = idem.keys.complete

    async def complete_while_row_locked(conn: Any, scope: str, k: str, locked_at: Any, status: int, *rest: Any) -> Any:
        if status != 402 or k != key:
            return await real_complete(conn, scope, k, locked_at, status, *rest)
        async with blocker.transaction():
            await blocker.execute("SELECT 1 FROM idempotency_keys WHERE principal = $1 AND key = $2 FOR UPDATE",
                                  principal, key)
            return await real_complete(conn, scope, k, locked_at, status, *rest)

    headers = {**h.headers, "Idempotency-Key": key}
    try:
        with monkeypatch.context() as patch:
            patch.setattr(idem.keys, "complete", complete_while_row_locked)
            first = await world.client.post(path, json={}, headers=headers)
        assert first.status == 503, await first.text()
        async with TestClient(TestServer(create_app(settings, workers=False), host="127.0.0.1")) as other:
            retry = await other.post(path, json={}, headers=headers)
            assert retry.status == 402, (retry.status, await retry.text())
    finally:
        await blocker.close()
