"""Adversarial review of issue 12 (one-statement payments, group commit): failing tests of what broke.

Each test names the promise of the fast path it checks against the general path's behaviour:
- a payment is never paid after it expired (the general path decides with the clock of the moment it
  holds the row; the batch decides earlier, and may run much later);
- a statement error of the batch is a decline (fall back) or a retryable 503, never a 500;
- one item's contention does not fail the other items of its batch.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from gateway.accel import Accelerator
from gateway.api.routing import SERVICES
from gateway.domain.ids import Kind, decode
from gateway.services import payments as payment_cases
from gateway.services.context import Services
from gateway.settings import RedisSettings
from gateway.store import payments as payment_store
from tests.conftest import make_settings
from tests.integration.conftest import serving
from tests.integration.world import Holder, Merchant, World

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def no_lock_timeout_world(clean_db: str) -> AsyncIterator[World]:
    # No lock_timeout: a batch that waits on a row waits until its holder lets go (or PostgreSQL's
    # deadlock detector ends the wait), so what the test sees is the wait itself.
    async with serving(clean_db, make_settings(database={"lock_timeout_s": 0.0})) as client:
        yield await World.create(client)


async def _decided(world: World, m: Merchant, h: Holder, amount: int, **extra: Any,
                   ) -> tuple[payment_store.PaidAtOnce, uuid.UUID]:
    """A new payment and what paying it in one statement writes, decided now, not yet applied."""
    svc: Services = world.client.app[SERVICES]
    pid = decode(Kind.PAYMENT, (await world.payment(m, amount, **extra))["id"])
    holder_id = decode(Kind.WALLET_HOLDER, h.id)
    assert pid is not None and holder_id is not None
    async with svc.db.connection() as conn:
        head = await payment_store.payable(conn, pid, holder_id)
    assert head is not None
    accounts = await payment_cases.payer_accounts(svc, holder_id, head["merchant_id"], head["currency"])
    decided = payment_cases.decide_payment(svc, head, holder_id, accounts, channel="wallet")
    assert decided is not None
    return decided[0], pid


async def _waiting_on_a_lock(conn: asyncpg.Connection[Any]) -> None:
    for _ in range(1000):
        if await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                               " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("nobody waited on a lock")


async def test_a_payment_decided_before_its_expiry_is_not_paid_after_it(world: World, clean_db: str) -> None:
    """The one statement checks expiry against the time the payment was *decided* (``now`` of the
    decision), not the time it runs. A batch that waited (in the queue behind another batch, or on a
    lock) pays a payment that expired meanwhile, which the general path (deciding with the clock of
    the moment it holds the row) refuses with payment_expired. Simulated without changing the row's
    ``updated_at``: the payment expires between the decision and the statement."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    paid, pid = await _decided(world, m, h, 700)
    decided_at = paid.now
    conn = await asyncpg.connect(clean_db)
    try:
        # The payment's expiry falls just after the decision; by the time the statement runs it is past.
        await conn.execute("UPDATE payments SET expires_at = $2 WHERE id = $1", pid,
                           decided_at + timedelta(milliseconds=1))
        while await conn.fetchval("SELECT clock_timestamp() <= $1::timestamptz",
                                  decided_at + timedelta(milliseconds=50)):
            await asyncio.sleep(0.01)
        assert datetime.now(UTC) > decided_at + timedelta(milliseconds=1)
        applied = await payment_store.pay_batch(conn, [(paid, None)])
        status = await conn.fetchval("SELECT status FROM payments WHERE id = $1", pid)
        assert (applied, status) == ([False], "requires_payment_method"), "paid after it expired"
    finally:
        await conn.close()


async def _payment_accounts(conn: asyncpg.Connection[Any], pid: uuid.UUID) -> list[int]:
    rows = await conn.fetch("SELECT DISTINCT p.account_id FROM postings p JOIN journal_entries e ON e.id = p.entry_id"
                            " WHERE e.payment_id = $1 ORDER BY 1", pid)
    return [r["account_id"] for r in rows]


async def test_a_deadlock_while_a_batch_locks_its_balances_is_not_a_500(
        no_lock_timeout_world: World, clean_db: str) -> None:
    """The batch's first step (locking the balance shards of all its items, outside the per-item
    subtransactions) can meet a deadlock: it is not caught there, so every request of the batch
    answers 500 (an unmapped DeadlockDetectedError), where the general path retries a deadlock and
    the one-statement create falls back on it. Expected: the request is paid (fallback) or gets a
    retryable 503; the retry with its key pays once."""
    world = no_lock_timeout_world
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    warm = await world.payment(m, 1_000)
    await world.pay(h, warm["id"])  # the three accounts of such a payment exist, with their ids
    p = await world.payment(m, 1_000)
    blocker = await asyncpg.connect(clean_db)
    try:
        accounts = await _payment_accounts(blocker, decode(Kind.PAYMENT, warm["id"]))  # type: ignore[arg-type]
        assert len(accounts) == 3
        # The blocker's own deadlock check comes late: the batch (which waits first) is the one ended.
        await blocker.execute("SET deadlock_timeout = '30s'")
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM balances WHERE account_id = $1 FOR UPDATE", accounts[-1])
        request = asyncio.create_task(world.client.post(
            f"/v1/wallet/payments/{p['id']}/pay", json={}, headers={**h.headers, "Idempotency-Key": "dl-1"}))
        await _waiting_on_a_lock(blocker)  # the batch holds the lower shards and waits on the highest
        await blocker.execute("SELECT 1 FROM balances WHERE account_id = $1 FOR UPDATE", accounts[0])
        await tx.rollback()
        answer = await request
        assert answer.status in (200, 503), (answer.status, await answer.text())
    finally:
        await blocker.close()
    retry = await world.client.post(f"/v1/wallet/payments/{p['id']}/pay", json={},
                                    headers={**h.headers, "Idempotency-Key": "dl-1"})
    assert retry.status == 200, await retry.text()
    assert await world.available(h) == 10_000 - 2_000


async def test_one_payers_held_wallet_does_not_fail_the_other_items_of_its_batch(world: World, clean_db: str) -> None:
    """Two payers' payments in one batch; another transaction holds payer A's wallet balance past the
    lock timeout. The batch locks every item's balances in its first step, outside the per-item
    subtransactions, so the lock timeout fails the whole batch: payer B's payment, which touches
    nothing A's holder holds, is rolled back with it (B's request answers 503). Expected: A's item
    falls back (its general path waits its turn), B's is written."""
    m = await world.merchant()
    a = await world.holder(top_up=10_000)
    b = await world.holder(top_up=10_000)
    paid_a, pid_a = await _decided(world, m, a, 700)
    paid_b, pid_b = await _decided(world, m, b, 700)
    blocker = await asyncpg.connect(clean_db)
    conn = await asyncpg.connect(clean_db)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM balances WHERE account_id = $1 FOR UPDATE", paid_a.wallet_account_id)
        await conn.execute("SET lock_timeout = '200ms'")  # the gateway's sessions have one (2 s by default)
        try:
            applied: Any = await payment_store.pay_batch(conn, [(paid_a, None), (paid_b, None)])
        except asyncpg.LockNotAvailableError as exc:
            applied = exc
        await tx.rollback()
        status_b = await conn.fetchval("SELECT status FROM payments WHERE id = $1", pid_b)
        assert (applied, status_b) == ([False, True], "succeeded"), "B failed with A's lock"
    finally:
        await blocker.close()
        await conn.close()


async def test_a_day_total_another_transaction_is_inserting_does_not_hold_up_the_batch(
        world: World, clean_db: str) -> None:
    """Payer A's first payment of the day is being written by another transaction (its day total row
    inserted, not yet committed: a general-path payment, e.g. one that needed a PIN). The batch takes
    an existing day total with NOWAIT, but a row not yet committed is not seen by that step, and its
    INSERT .. ON CONFLICT then waits for the other transaction: the whole batch (payer B's item too)
    waits, up to lock_timeout per such item, forever without one. Expected, as for the payment row: A's
    item falls back at once and B's is written. (Bounded wait: a liveness check, not a measurement.)"""
    svc: Services = world.client.app[SERVICES]
    m = await world.merchant()
    a = await world.holder(top_up=10_000)
    b = await world.holder(top_up=10_000)
    paid_a, pid_a = await _decided(world, m, a, 700)
    paid_b, pid_b = await _decided(world, m, b, 700)
    blocker = await asyncpg.connect(clean_db)
    conn = await asyncpg.connect(clean_db)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("INSERT INTO daily_spend (holder_id, currency, day, spent_minor) VALUES ($1, 'CNY', $2, 1)",
                              paid_a.holder_id, svc.local_day(paid_a.now))
        await conn.execute("SET lock_timeout = 0")
        batch = asyncio.create_task(payment_store.pay_batch(conn, [(paid_a, None), (paid_b, None)]))
        done, _ = await asyncio.wait({batch}, timeout=10)
        await tx.rollback()
        applied = await batch
        assert done, "the batch waited on the other transaction's day total"
        assert applied == [False, True]
    finally:
        await blocker.close()
        await conn.close()


async def test_takes_queued_behind_a_redis_round_trip_that_timed_out_are_not_sent_again() -> None:
    """A Redis that accepts connections and never answers. The first take's pipeline waits its
    timeout; the takes that queued behind it meanwhile are then sent in a second pipeline (on a new
    connection) instead of taking the local bucket: they pay two timeouts, and the breaker's promise
    (a dead Redis costs one timeout, not one per round of requests) is broken. Counted in connections
    the silent server accepted: one expected."""
    accepted = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        try:
            while await reader.read(65536):
                pass
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    accel = Accelerator(RedisSettings(url=f"redis://127.0.0.1:{port}/0", timeout_s=0.3, backoff_s=30))
    try:
        first = asyncio.create_task(accel.preflight("silent", 100, None))
        for _ in range(500):
            if accepted:
                break
            await asyncio.sleep(0.01)
        queued = [asyncio.create_task(accel.preflight("silent", 100, None)) for _ in range(9)]
        answers = await asyncio.gather(first, *queued)
        assert all(not answered for _, _, answered in answers)
        assert accepted == 1, f"{accepted} connections: the queued takes went to the silent Redis again"
    finally:
        await accel.close()
        server.close()
        await server.wait_closed()


# Checked and held (kept as regression guards of the fast path).


async def test_creating_with_another_merchants_store_is_refused_and_writes_nothing(world: World) -> None:
    a = await world.merchant()
    b = await world.merchant("Other shop")
    for headers in (a.headers, {**a.headers, "Idempotency-Key": "other-store"}):
        refused = await world.call("POST", "/v1/payments", 404, headers=headers,
                                   json={"amount": 500, "currency": "CNY", "store": b.store})
        assert refused["error"]["param"] == "store"
    for m in (a, b):
        assert (await world.call("GET", "/v1/payments", headers=m.headers))["data"] == []


async def test_a_decision_held_past_the_end_of_its_spend_day_is_refused(world: World, clean_db: str) -> None:
    """A payment decided before local midnight counts in that day's total; run after midnight (by the
    database's clock) it would count against the day just ended: it falls back to its general path."""
    import dataclasses

    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    paid, pid = await _decided(world, m, h, 700)
    svc: Services = world.client.app[SERVICES]
    day_ends = datetime.combine(paid.spend_day + timedelta(days=1), datetime.min.time(), tzinfo=svc.limits_zone)
    assert paid.decided_until == min(paid.payment.expires_at, day_ends)
    conn = await asyncpg.connect(clean_db)
    try:
        late = dataclasses.replace(paid, decided_until=await conn.fetchval("SELECT clock_timestamp()"))
        assert await payment_store.pay_batch(conn, [(late, None)]) == [False]
        assert await conn.fetchval("SELECT status FROM payments WHERE id = $1", pid) == "requires_payment_method"
        assert await payment_store.pay_batch(conn, [(paid, None)]) == [True]
    finally:
        await conn.close()
