"""Group commit of wallet payments (``services/batching.py``, ``store.payments.pay_batch``).

Batches are made deterministic here: a blocker holds the rows of the merchant's receivable balance
shards, so the first request's batch (the only one a process with ``group_commit_in_flight_max = 1``
may run) waits in its first step (it locks the shared balance shards it will change before anything
else; a payer's own wallet balance it takes per item with NOWAIT, so blocking that would only send the
item to its general path), and every request that arrives meanwhile goes together into the next one.
The blocker is the ``blocker`` fixture's connection: closed at teardown even when a test fails, so
that a failure never leaves the requests behind it waiting for ever. The ledger invariants are
checked after every test (``serving``).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway.api.routing import SERVICES
from gateway.domain import ledger
from gateway.domain.ids import Kind, decode
from gateway.services.batching import Batcher
from gateway.services.context import Services
from gateway.store import ledger as ledger_store
from tests.conftest import make_settings
from tests.integration.conftest import serving
from tests.integration.world import Holder, Merchant, World

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def one_batch_world(clean_db: str) -> AsyncIterator[World]:
    # A lock wait ends only when its holder lets go (no lock_timeout): a batch that waited on a row
    # another transaction holds would be seen waiting, not rescued by the timeout.
    async with serving(clean_db, make_settings(payments={"group_commit_in_flight_max": 1},
                                               database={"lock_timeout_s": 0.0})) as client:
        yield await World.create(client)


@pytest.fixture
async def blocker(one_batch_world: World, clean_db: str) -> AsyncIterator[asyncpg.Connection]:
    # Depends on the world so that it is torn down first: its locks go before the server stops.
    conn = await asyncpg.connect(clean_db)
    try:
        yield conn
    finally:
        await conn.close()


def _batches(world: World) -> Batcher[Any, bool]:
    svc: Services = world.client.app[SERVICES]
    assert svc.pay_batches is not None
    return svc.pay_batches


async def _wait_until(condition: Any, what: str) -> None:
    for _ in range(500):
        if await condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def _wait_for_a_lock_wait(blocker: asyncpg.Connection, what: str) -> None:
    """Until a session of the test database waits for a lock (the batch behind ``blocker``'s row)."""
    async def waiting() -> bool:
        return bool(await blocker.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"))

    await _wait_until(waiting, what)


async def _kill_the_waiting_batch(blocker: asyncpg.Connection, tx: Any, first: Any) -> None:
    """Kill the session of the batch waiting on ``blocker``'s row: its request gets the retryable 503
    (never a 500); then let the row go."""
    await blocker.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock'")
    answer = await first
    assert answer.status == 503 and (await answer.json())["error"]["code"] == "database_unavailable"
    await tx.rollback()


async def _blocked_first(world: World, blocker: asyncpg.Connection, m: Merchant, h: Holder,
                         first: dict[str, Any]) -> tuple[Any, Any]:
    """Start paying ``first`` while ``blocker`` holds the merchant's receivable balance shards: returns
    (the blocker's transaction, the request)."""
    merchant_id = decode(Kind.MERCHANT, m.id)
    assert merchant_id is not None
    # Accounts are created at their first use: create the merchant's now, so that there is a row to hold.
    await ledger_store.resolve_accounts(blocker, [ledger.merchant(merchant_id, "CNY")])
    tx = blocker.transaction()
    await tx.start()
    held = await blocker.execute(
        "SELECT 1 FROM balances WHERE account_id ="
        " (SELECT id FROM accounts WHERE kind = 'merchant_receivable' AND owner_id = $1) FOR UPDATE", merchant_id)
    assert held != "SELECT 0"
    request = asyncio.create_task(world.client.post(
        f"/v1/wallet/payments/{first['id']}/pay", json={}, headers={**h.headers, "Idempotency-Key": "first"}))
    await _wait_for_a_lock_wait(blocker, "the first batch to wait on the blocked row")
    return tx, request


async def test_one_batch_mixes_payments_and_declines_and_each_answer_is_its_own(
        one_batch_world: World, blocker: asyncpg.Connection) -> None:
    """Ten payments of 300 from a wallet of 2,000 wait in one batch behind a blocked first one: six of
    all eleven are paid (2,000 / 300), the others are declined for funds by their general path (a 402,
    with its payment.failed event, stored under its key). Replays of every one give the same answer."""
    world = one_batch_world
    m = await world.merchant()
    h = await world.holder(top_up=2_000)
    created = [await world.payment(m, 300) for _ in range(11)]
    batches = _batches(world)
    batches.sizes.clear()
    tx, first = await _blocked_first(world, blocker, m, h, created[0])
    rest = [asyncio.create_task(world.client.post(
        f"/v1/wallet/payments/{p['id']}/pay", json={}, headers={**h.headers, "Idempotency-Key": f"k-{i}"}))
        for i, p in enumerate(created[1:], start=1)]

    async def all_queued() -> bool:
        return len(batches._waiting) == 10

    await _wait_until(all_queued, "ten payments waiting for the next batch")
    await tx.rollback()
    answers = [await first, *[await r for r in rest]]
    assert batches.sizes[:2] == [1, 10]
    statuses = [a.status for a in answers]
    assert statuses.count(200) == 6 and statuses.count(402) == 5, statuses
    bodies = [await a.json() for a in answers]
    assert await world.available(h) == 2_000 - 6 * 300
    for i, (p, status, body) in enumerate(zip(created, statuses, bodies, strict=True)):
        key = "first" if i == 0 else f"k-{i}"
        again = await world.client.post(f"/v1/wallet/payments/{p['id']}/pay", json={},
                                        headers={**h.headers, "Idempotency-Key": key})
        assert again.status == status and await again.json() == body
        assert again.headers.get("Idempotent-Replayed") == "true"
        view = await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers)
        events = await world.call("GET", "/v1/events", headers=m.headers, params={"payment": p["id"]})
        types = [e["type"] for e in events["data"]]
        if status == 200:
            assert view["status"] == "succeeded" and types.count("payment.succeeded") == 1
        else:
            assert body["error"]["code"] == "insufficient_funds"
            assert view["status"] == "requires_payment_method" and types.count("payment.failed") == 1
    assert await world.available(h) == 2_000 - 6 * 300  # replays moved nothing


async def test_a_request_whose_client_hangs_up_in_a_batch_is_paid_once_and_its_retry_learns_it(
        one_batch_world: World, blocker: asyncpg.Connection) -> None:
    """A client hangs up while its payment waits in a batch: the batch is written without it or with
    it, never twice; the retry with the same key answers 200 and the wallet is charged once."""
    world = one_batch_world
    m = await world.merchant()
    h = await world.holder(top_up=5_000)
    created = [await world.payment(m, 300) for _ in range(4)]
    batches = _batches(world)
    tx, first = await _blocked_first(world, blocker, m, h, created[0])
    url = str(world.client.make_url(f"/v1/wallet/payments/{created[1]['id']}/pay"))
    async with aiohttp.ClientSession() as session:
        gone = asyncio.create_task(session.post(url, json={}, headers={**h.headers, "Idempotency-Key": "gone"}))
        others = [asyncio.create_task(world.client.post(
            f"/v1/wallet/payments/{p['id']}/pay", json={}, headers={**h.headers, "Idempotency-Key": f"o-{i}"}))
            for i, p in enumerate(created[2:])]

        async def queued() -> bool:
            return len(batches._waiting) == 3

        await _wait_until(queued, "three payments waiting")
        gone.cancel()  # the client hangs up: its connection closes
    await tx.rollback()
    assert (await first).status == 200 and all(o.status == 200 for o in [await t for t in others])
    retry = await world.client.post(f"/v1/wallet/payments/{created[1]['id']}/pay", json={},
                                    headers={**h.headers, "Idempotency-Key": "gone"})
    assert retry.status == 200, await retry.text()
    assert await world.available(h) == 5_000 - 4 * 300
    view = await world.call("GET", f"/v1/payments/{created[1]['id']}", headers=m.headers)
    assert view["status"] == "succeeded"


async def test_a_batch_that_fails_whole_fails_each_request_retryably_and_writes_nothing(
        one_batch_world: World, blocker: asyncpg.Connection) -> None:
    """The batch's connection is killed while it waits: every request of it gets the retryable 503
    (never a 500), nothing of the batch is written, and the retries with the same keys pay each once."""
    world = one_batch_world
    m = await world.merchant()
    h = await world.holder(top_up=5_000)
    created = [await world.payment(m, 300) for _ in range(4)]
    batches = _batches(world)
    tx, first = await _blocked_first(world, blocker, m, h, created[0])
    rest = [asyncio.create_task(world.client.post(
        f"/v1/wallet/payments/{p['id']}/pay", json={}, headers={**h.headers, "Idempotency-Key": f"r-{i}"}))
        for i, p in enumerate(created[1:], start=1)]

    async def queued() -> bool:
        return len(batches._waiting) == 3

    await _wait_until(queued, "three payments waiting")
    # The next batch starts once the first ends: kill the first batch's session (it waits on the lock).
    await _kill_the_waiting_batch(blocker, tx, first)
    assert all(r.status == 200 for r in [await t for t in rest])  # the next batch, on a fresh connection
    assert await world.available(h) == 5_000 - 3 * 300
    retry = await world.client.post(f"/v1/wallet/payments/{created[0]['id']}/pay", json={},
                                    headers={**h.headers, "Idempotency-Key": "first"})
    assert retry.status == 200 and "Idempotent-Replayed" not in retry.headers  # nothing was stored: paid now
    assert await world.available(h) == 5_000 - 4 * 300


async def test_a_lone_payment_waits_for_nobody(world: World) -> None:
    """Sequential payments each go alone, at once: batches of one."""
    m = await world.merchant()
    h = await world.holder(top_up=5_000)
    batches = _batches(world)
    batches.sizes.clear()
    for _ in range(3):
        await world.pay(h, (await world.payment(m, 100))["id"], key=str(uuid.uuid4()))
    assert batches.sizes == [1, 1, 1]


async def test_in_one_batch_a_refused_item_undoes_nothing_of_the_others(world: World, clean_db: str) -> None:
    """The batch statement decides per item: of five payments of 300 from a wallet of 1,000 (the
    second changed after it was decided, the fifth beyond the funds) exactly the first, third and
    fourth are written, with their events and keys; the refused ones leave no trace."""
    from gateway.services import payments as payment_cases
    from gateway.store import idempotency as keys
    from gateway.store import payments as payment_store

    svc: Services = world.client.app[SERVICES]
    m = await world.merchant()
    h = await world.holder(top_up=1_000)
    holder_id = decode(Kind.WALLET_HOLDER, h.id)
    assert holder_id is not None
    items = []
    for n in range(5):
        pid = decode(Kind.PAYMENT, (await world.payment(m, 300))["id"])
        assert pid is not None
        async with svc.db.connection() as conn:
            head = await payment_store.payable(conn, pid, holder_id)
        assert head is not None
        accounts = await payment_cases.payer_accounts(svc, holder_id, head["merchant_id"], "CNY")
        decided = payment_cases.decide_payment(svc, head, holder_id, accounts, channel="wallet")
        assert decided is not None
        done = keys.Done(f"wallet:{holder_id}", f"batch-{n}", b"\1" * 32, "POST", "/p", 200, b"{}")
        items.append((decided[0], done, pid))
    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute("UPDATE payments SET updated_at = clock_timestamp() WHERE id = $1", items[1][2])
        applied = await payment_store.pay_batch(conn, [(paid, done) for paid, done, _ in items])
        assert applied == [True, False, True, True, False]
        statuses = [await conn.fetchval("SELECT status FROM payments WHERE id = $1", pid) for _, _, pid in items]
        assert statuses == ["succeeded", "requires_payment_method", "succeeded", "succeeded", "requires_payment_method"]
        written = {r["key"] for r in await conn.fetch("SELECT key FROM idempotency_keys WHERE key LIKE 'batch-%'")}
        assert written == {"batch-0", "batch-2", "batch-3"}
        events = await conn.fetch("SELECT object_id FROM events WHERE type = 'payment.succeeded'")
        assert {r["object_id"] for r in events} == {items[i][2] for i in (0, 2, 3)}
        assert await conn.fetchval("SELECT count(*) FROM journal_entries WHERE payment_id = ANY($1::uuid[])",
                                   [pid for _, _, pid in items]) == 3
    finally:
        await conn.close()
    assert await world.available(h) == 100


async def _decided(world: World, m: Merchant, h: Holder, amount: int, key: str,
                   pid: uuid.UUID | None = None) -> tuple[Any, Any, uuid.UUID]:
    """A payment of ``m`` (``pid``, or a new one of ``amount``) decided for ``h``'s wallet, as the pay use case
    hands it to the batch, with its key's stored answer."""
    from gateway.services import payments as payment_cases
    from gateway.store import idempotency as keys
    from gateway.store import payments as payment_store

    svc: Services = world.client.app[SERVICES]
    holder_id = decode(Kind.WALLET_HOLDER, h.id)
    assert holder_id is not None
    if pid is None:
        pid = decode(Kind.PAYMENT, (await world.payment(m, amount))["id"])
    assert pid is not None
    async with svc.db.connection() as conn:
        head = await payment_store.payable(conn, pid, holder_id)
    assert head is not None
    accounts = await payment_cases.payer_accounts(svc, holder_id, head["merchant_id"], "CNY")
    decided = payment_cases.decide_payment(svc, head, holder_id, accounts, channel="wallet")
    assert decided is not None
    return decided[0], keys.Done(f"wallet:{holder_id}", key, b"\1" * 32, "POST", "/p", 200, b"{}"), pid


async def test_one_payment_in_two_items_of_a_batch_is_paid_once(world: World, clean_db: str) -> None:
    """Two payers' requests for one payment in one batch (each decided on the same unpaid row): the first
    pays it, the second is refused with nothing of it written, so one wallet pays once (the batch writes
    its payments' rows after its items, migration 0034, so each item's guard alone cannot see this)."""
    from gateway.store import payments as payment_store

    m = await world.merchant()
    first, second = await world.holder(top_up=1_000), await world.holder(top_up=1_000)
    one = await _decided(world, m, first, 300, "twice-0")
    other = await _decided(world, m, second, 300, "twice-1", pid=one[2])
    conn = await asyncpg.connect(clean_db)
    try:
        applied = await payment_store.pay_batch(conn, [one[:2], other[:2]])
        assert applied == [True, False]
        row = await conn.fetchrow("SELECT status, payer_id, captured_minor FROM payments WHERE id = $1", one[2])
        assert (row["status"], row["payer_id"], row["captured_minor"]) == (
            "succeeded", decode(Kind.WALLET_HOLDER, first.id), 300)
        assert await conn.fetchval("SELECT count(*) FROM journal_entries WHERE payment_id = $1", one[2]) == 1
        assert {r["key"] for r in await conn.fetch("SELECT key FROM idempotency_keys WHERE key LIKE 'twice-%'")} == {
            "twice-0"}
    finally:
        await conn.close()
    assert (await world.available(first), await world.available(second)) == (700, 1_000)


async def test_a_payment_row_refusing_the_batch_update_refuses_the_whole_batch(world: World, clean_db: str) -> None:
    """An item whose payment's CHECK refuses what it writes (a fee above the captured amount: wrong
    arithmetic) makes the batch's one UPDATE of payments fail: every item is refused, nothing of the
    batch is written (not the good item's posting, event or key), and each goes to its general path."""
    import dataclasses

    from gateway.store import payments as payment_store

    m = await world.merchant()
    h = await world.holder(top_up=1_000)
    good = await _decided(world, m, h, 300, "whole-0")
    bad_paid, bad_done, bad_pid = await _decided(world, m, h, 200, "whole-1")
    bad_paid = dataclasses.replace(bad_paid, payment=dataclasses.replace(
        bad_paid.payment, fee_minor=bad_paid.payment.captured_minor + 1))
    conn = await asyncpg.connect(clean_db)
    try:
        assert await payment_store.pay_batch(conn, [good[:2], (bad_paid, bad_done)]) == [False, False]
        pids = [good[2], bad_pid]
        assert await conn.fetchval("SELECT count(*) FROM payments WHERE id = ANY($1::uuid[])"
                                   " AND status <> 'requires_payment_method'", pids) == 0
        assert await conn.fetchval("SELECT count(*) FROM journal_entries WHERE payment_id = ANY($1::uuid[])",
                                   pids) == 0
        assert await conn.fetchval("SELECT count(*) FROM events WHERE object_id = ANY($1::uuid[])"
                                   " AND type = 'payment.succeeded'", pids) == 0
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE key LIKE 'whole-%'") == 0
    finally:
        await conn.close()
    assert await world.available(h) == 1_000


async def test_a_payment_another_transaction_holds_never_holds_up_its_batch(
        one_batch_world: World, clean_db: str) -> None:
    """A merchant's transaction holds payment P1's row. Paying P1 falls back to its general path (which
    waits its turn) at once, and P2, paid meanwhile by the process's only batch, is answered while P1's
    row is still held."""
    world = one_batch_world
    m = await world.merchant()
    h = await world.holder(top_up=5_000)
    p1, p2 = await world.payment(m, 300), await world.payment(m, 300)
    blocker = await asyncpg.connect(clean_db)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM payments WHERE id = $1 FOR UPDATE", decode(Kind.PAYMENT, p1["id"]))
        first = asyncio.create_task(world.client.post(
            f"/v1/wallet/payments/{p1['id']}/pay", json={}, headers={**h.headers, "Idempotency-Key": "held"}))

        async def waiting() -> bool:
            return bool(await blocker.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"))

        await _wait_until(waiting, "the general path of P1 to wait on its row")
        # Bounded so that a batch stuck behind P1's row fails the test instead of hanging it (P1's row is
        # released only after P2's answer): a liveness check, not a measurement.
        second = await asyncio.wait_for(world.client.post(
            f"/v1/wallet/payments/{p2['id']}/pay", json={}, headers={**h.headers, "Idempotency-Key": "free"}), 30)
        assert second.status == 200 and not first.done()
        await tx.rollback()
        assert (await first).status == 200
    finally:
        await blocker.close()
    assert await world.available(h) == 5_000 - 600


def _create_batches(world: World) -> Batcher[Any, bool]:
    svc: Services = world.client.app[SERVICES]
    assert svc.create_batches is not None
    return svc.create_batches


async def _create_blocked_first(world: World, blocker: asyncpg.Connection, m: Merchant) -> tuple[Any, Any]:
    """Start creating a payment of ``m`` while ``blocker`` holds the merchant's row (the payment's foreign
    key waits for it): returns (the blocker's transaction, the request)."""
    tx = blocker.transaction()
    await tx.start()
    assert await blocker.execute("SELECT 1 FROM merchants WHERE id = $1 FOR UPDATE",
                                 decode(Kind.MERCHANT, m.id)) == "SELECT 1"
    request = asyncio.create_task(world.client.post("/v1/payments", json={"amount": 100, "currency": "CNY"},
                                                    headers={**m.headers, "Idempotency-Key": "create-first"}))
    await _wait_for_a_lock_wait(blocker, "the first create batch to wait on the merchant's row")
    return tx, request


async def test_creates_that_arrive_together_are_one_batch_and_each_answer_is_its_own(
        one_batch_world: World, blocker: asyncpg.Connection) -> None:
    """Seven creates wait behind a blocked first one and go in one statement: five of their own (each its
    payment, event and stored answer), one naming another merchant's store (its general path answers
    404, nothing written) and one sending the same key and body as another of the batch (one payment:
    the second request gets the first one's answer). Replays give every answer again."""
    world = one_batch_world
    m, other = await world.merchant(), await world.merchant("Other shop")
    batches = _create_batches(world)
    batches.sizes.clear()
    tx, first = await _create_blocked_first(world, blocker, m)
    bodies: list[dict[str, Any]] = [{"amount": 201 + i, "currency": "CNY", "merchant_reference": f"ref-{i}"}
                                    for i in range(5)]
    bodies += [{"amount": 300, "currency": "CNY", "store": other.store}, bodies[0]]
    keys = [f"c-{i}" for i in range(6)] + ["c-0"]
    rest = [asyncio.create_task(world.client.post("/v1/payments", json=body,
                                                  headers={**m.headers, "Idempotency-Key": key}))
            for body, key in zip(bodies, keys, strict=True)]

    async def all_queued() -> bool:
        return len(batches._waiting) == 7

    await _wait_until(all_queued, "seven creates waiting for the next batch")
    await tx.rollback()
    answers = [await first, *[await r for r in rest]]
    assert batches.sizes[:2] == [1, 7]
    assert [a.status for a in answers] == [201] * 6 + [404, 201]
    made = [await a.json() for a in answers]
    assert made[7] == made[1] and answers[7].headers.get("Idempotent-Replayed") == "true"
    assert len({p["id"] for p in made[:6]}) == 6
    assert [p["amount"] for p in made[1:6]] == [201, 202, 203, 204, 205]
    for p in made[:6]:
        view = await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers)
        assert view["status"] == "requires_payment_method" and view["amount"] == p["amount"]
        events = await world.call("GET", "/v1/events", headers=m.headers, params={"payment": p["id"]})
        assert [e["type"] for e in events["data"]] == ["payment.created"]
    listed = await world.call("GET", "/v1/payments", headers=m.headers, params={"limit": 100})
    assert len(listed["data"]) == 6  # the 404's payment was never written, the repeated key's only once
    for body, key, answer in zip(bodies, keys, made[1:], strict=True):
        again = await world.client.post("/v1/payments", json=body, headers={**m.headers, "Idempotency-Key": key})
        assert again.status == (404 if "store" in body else 201)
        if again.status == 201:
            assert await again.json() == answer and again.headers.get("Idempotent-Replayed") == "true"


async def test_a_create_batch_that_fails_whole_answers_503_and_the_retries_create_each_once(
        one_batch_world: World, blocker: asyncpg.Connection) -> None:
    """The create batch's connection is killed while it waits: its request gets the retryable 503 (never a
    500) and nothing of it is written; the next batch is unharmed, and the retry with the same key
    creates the payment once."""
    world = one_batch_world
    m = await world.merchant()
    batches = _create_batches(world)
    tx, first = await _create_blocked_first(world, blocker, m)
    rest = [asyncio.create_task(world.client.post("/v1/payments", json={"amount": 400 + i, "currency": "CNY"},
                                                  headers={**m.headers, "Idempotency-Key": f"w-{i}"}))
            for i in range(3)]

    async def queued() -> bool:
        return len(batches._waiting) == 3

    await _wait_until(queued, "three creates waiting")
    await _kill_the_waiting_batch(blocker, tx, first)
    assert [r.status for r in [await t for t in rest]] == [201, 201, 201]
    listed = await world.call("GET", "/v1/payments", headers=m.headers, params={"limit": 100})
    assert sorted(p["amount"] for p in listed["data"]) == [400, 401, 402]
    retry = await world.client.post("/v1/payments", json={"amount": 100, "currency": "CNY"},
                                    headers={**m.headers, "Idempotency-Key": "create-first"})
    assert retry.status == 201 and "Idempotent-Replayed" not in retry.headers  # nothing was stored: created now
    again = await world.client.post("/v1/payments", json={"amount": 100, "currency": "CNY"},
                                    headers={**m.headers, "Idempotency-Key": "create-first"})
    assert again.status == 201 and await again.json() == await retry.json()
    listed = await world.call("GET", "/v1/payments", headers=m.headers, params={"limit": 100})
    assert sorted(p["amount"] for p in listed["data"]) == [100, 400, 401, 402]


async def test_a_create_batch_writes_nothing_for_an_item_whose_key_exists(world: World, clean_db: str) -> None:
    """Store level: of four creates in one statement, the one whose key is already stored and the one
    naming another merchant's store are False with nothing written; the unkeyed one and the fresh one
    are written with their events, and the fresh one's key holds its answer."""
    from gateway.domain import ids
    from gateway.domain.payments import CaptureMethod, Payment, Status
    from gateway.store import idempotency as keys
    from gateway.store import payments as payment_store

    m, other = await world.merchant(), await world.merchant("Other shop")
    merchant_id = decode(Kind.MERCHANT, m.id)
    assert merchant_id is not None
    conn = await asyncpg.connect(clean_db)
    try:
        scope = f"merchant:{merchant_id}"
        await conn.execute("INSERT INTO idempotency_keys (principal, key, request_hash, method, path, response_status,"
                           " response_body) VALUES ($1, 'taken', '\\x00', 'POST', '/v1/payments', 201, '{}')", scope)
        now = Services.now()

        def item(store: str | None) -> payment_store.CreatedAtOnce:
            pay = Payment(id=ids.new(), merchant_id=merchant_id, amount_minor=250, currency="CNY",
                          status=Status.REQUIRES_PAYMENT_METHOD, capture_method=CaptureMethod.AUTOMATIC,
                          expires_at=now + timedelta(minutes=15))
            return payment_store.CreatedAtOnce(pay, now, store_id=decode(Kind.STORE, store) if store else None,
                                               terminal_id=None, merchant_reference=None, description=None,
                                               return_url=None, cancel_url=None, metadata={}, event_id=ids.new(),
                                               event_data=b'{"object": "payment"}')

        def done(principal: str, key: str) -> keys.Done:
            return keys.Done(principal, key, b"\2" * 32, "POST", "/v1/payments", 201, b"{}")

        items = [(item(None), done(scope, "taken")), (item(None), None),
                 (item(other.store), done(scope, "fresh-store")), (item(m.store), done(scope, "fresh"))]
        assert await payment_store.create_batch(conn, items) == [False, True, False, True]
        pids = [made.payment.id for made, _ in items]
        written = {r["id"] for r in await conn.fetch("SELECT id FROM payments WHERE id = ANY($1::uuid[])", pids)}
        assert written == {pids[1], pids[3]}
        evented = {r["object_id"] for r in await conn.fetch(
            "SELECT object_id FROM events WHERE type = 'payment.created' AND object_id = ANY($1::uuid[])", pids)}
        assert evented == {pids[1], pids[3]}
        stored = {r["key"] for r in await conn.fetch(
            "SELECT key FROM idempotency_keys WHERE key IN ('fresh', 'fresh-store')")}
        assert stored == {"fresh"}
        assert await conn.fetchval("SELECT store_id FROM payments WHERE id = $1", pids[3]) == decode(Kind.STORE, m.store)
    finally:
        await conn.close()
