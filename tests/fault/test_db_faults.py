"""A stalled process, a lost connection, a client that hangs up (issue 8): retryable answers, no 500s,
and no process able to hold the others up for long."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
import pytest

from gateway.api.routing import SERVICES
from gateway.domain.ids import Kind, decode
from gateway.settings import Settings
from gateway.store.db import session_settings
from tests.conftest import make_settings
from tests.integration.world import World

LOCK_TIMEOUT_S = 0.5
IDLE_TIMEOUT_S = 1.0


@pytest.fixture
def settings() -> Settings:
    return make_settings(database={"lock_timeout_s": LOCK_TIMEOUT_S, "idle_in_transaction_timeout_s": IDLE_TIMEOUT_S,
                                   "statement_timeout_s": 3.0})


async def test_every_gateway_session_carries_the_timeouts(world: World) -> None:
    svc = world.client.server.app[SERVICES]
    async with svc.db.connection() as conn:
        shown = {name: await conn.fetchval(f"SHOW {name}") for name in (
            "lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout",
            "client_connection_check_interval")}
    assert shown == {"lock_timeout": "500ms", "statement_timeout": "3s",
                     "idle_in_transaction_session_timeout": "1s", "client_connection_check_interval": "1s"}


async def test_a_stalled_process_holds_a_wallet_only_until_the_server_ends_its_session(
    world: World, settings: Settings
) -> None:
    """Another gateway process locks a wallet's balance row in a transaction and stalls (SIGSTOP, GC):
    requests for that wallet answer a retryable 503 within the lock timeout instead of hanging, and the
    server ends the stalled session after the idle timeout, so the wallet is usable again."""
    m = await world.merchant()
    h = await world.holder(top_up=5_000)
    p = await world.payment(m, 1_000)
    # The other process's session, with the settings every gateway session has.
    stalled = await asyncpg.connect(settings.database.url, server_settings=session_settings(settings.database))
    try:
        wallet = await stalled.fetchval("SELECT id FROM accounts WHERE kind = 'wallet' AND owner_id = $1",
                                        decode(Kind.WALLET_HOLDER, h.id))
        tx = stalled.transaction()
        await tx.start()
        await stalled.execute("SELECT 1 FROM balances WHERE account_id = $1 FOR UPDATE", wallet)
        started_s = time.monotonic()
        busy = await world.client.post(f"/v1/wallet/payments/{p['id']}/pay", json={},
                                       headers={**h.headers, "Idempotency-Key": "stalled-wallet"})
        waited_s = time.monotonic() - started_s
        assert busy.status == 503, await busy.text()
        assert busy.headers["Retry-After"] and (await busy.json())["error"]["code"] == "database_busy"
        assert waited_s < LOCK_TIMEOUT_S + 1.0
        await asyncio.sleep(IDLE_TIMEOUT_S + 0.5)  # the stalled process is still paused...
        paid = await world.client.post(f"/v1/wallet/payments/{p['id']}/pay", json={},
                                       headers={**h.headers, "Idempotency-Key": "stalled-wallet"})
        assert paid.status == 200, await paid.text()
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
            await stalled.execute("SELECT 1")  # ...and finds its session ended when it wakes
    finally:
        stalled.terminate()
    assert await world.available(h) == 4_000


async def test_a_client_hanging_up_mid_body_is_not_an_error(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """Logged at info and counted as 499, not an "unhandled error" 500; nothing is created."""
    m = await world.merchant()
    host, port = world.client.server.host, world.client.server.port
    caplog.set_level(logging.INFO)
    framings = [b"Content-Length: 1000\r\n\r\n{\"amount\": 1", b"Transfer-Encoding: chunked\r\n\r\n40\r\n{\"amount\": 1",
                b"Transfer-Encoding: chunked\r\n\r\n4"]
    for path in (b"/v1/payments", b"/v1/wallet/sessions"):
        for framing in framings:
            _, writer = await asyncio.open_connection(host, port)
            writer.write(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Authorization: Bearer " + m.secret.encode() + b"\r\n" + framing)
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()
            await writer.wait_closed()
    await asyncio.sleep(0.2)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors
    statuses = [getattr(r, "status", None) for r in caplog.records if r.getMessage() == "request"]
    assert 500 not in statuses, statuses
    assert (await world.call("GET", "/v1/payments", headers=m.headers))["data"] == []
