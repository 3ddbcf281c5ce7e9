"""A campaign's counter rows (migration 0026) under contention (migration 0035): when every row is held by
other transactions, a general-path take waits for ONE row with room and a batch waits a bounded time for
one, instead of the take gathering every row (which held them all, in turn, for whole transactions) and
the batch sending its items to their general path at once. Together they made a burst of general-path
payments self-sustaining (bench 2026-12-04: a new campaign's first phase at 0.28x, 952 of 1,102
payments refused by their batches, backends waiting on the rows' locks 61% of the time).

Over real PostgreSQL and HTTP; the fixtures prove the ledger invariants after each test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from gateway.api.routing import SERVICES
from gateway.domain import ledger
from gateway.domain.ids import Kind, decode
from gateway.settings import Settings
from gateway.store import ledger as ledger_store
from tests.conftest import make_settings
from tests.integration.conftest import serving
from tests.integration.world import World, batched

ROWS = 16  # a campaign of 1,000,000 with a fixed benefit of 100: 16 counter rows (domain.promotions.shard_split)




@asynccontextmanager
async def _every_row_held(db_url: str, campaign_id: Any) -> AsyncIterator[dict[int, asyncpg.Connection[Any]]]:
    """Each counter row locked by its own open transaction, as general-path payments between their take
    and their commit hold them; yields {backend pid: its connection}. Commit one to release its row."""
    held: dict[int, asyncpg.Connection[Any]] = {}
    try:
        for shard in range(ROWS):
            conn = await asyncpg.connect(db_url)
            held[conn.get_server_pid()] = conn
            await conn.execute("BEGIN")
            assert await conn.fetchval("SELECT shard FROM campaign_shards WHERE campaign_id = $1 AND shard = $2"
                                       " FOR UPDATE", campaign_id, shard) == shard
        yield held
    finally:
        for conn in held.values():
            if not conn.is_closed():
                await conn.close()  # rolls back what is still open


async def _waiter(db_url: str, fragment: str, timeout_s: float = 10.0) -> tuple[int, list[int]]:
    """The backend running a statement with ``fragment`` while waiting for a lock, and the pids it waits for."""
    probe = await asyncpg.connect(db_url)
    try:
        for _ in range(int(timeout_s / 0.005)):
            row = await probe.fetchrow("SELECT pid, pg_blocking_pids(pid) AS blockers FROM pg_stat_activity"
                                       " WHERE wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%'", fragment)
            if row is not None and row["blockers"]:
                return row["pid"], list(row["blockers"])
            await asyncio.sleep(0.005)
        raise AssertionError(f"no statement with {fragment!r} waited for a lock")
    finally:
        await probe.close()


async def _lockable(db_url: str, campaign_id: Any) -> int:
    probe = await asyncpg.connect(db_url)
    try:
        async with probe.transaction():
            return len(await probe.fetch("SELECT shard FROM campaign_shards WHERE campaign_id = $1"
                                         " FOR UPDATE SKIP LOCKED", campaign_id))
    finally:
        await probe.close()


async def test_a_take_finding_every_row_held_waits_for_one_row_not_for_all(world: World, clean_db: str) -> None:
    """The general path's take, every row held: it waits for one row (spread by backend), and takes the
    whole benefit from it as soon as that row is released, holding no other."""
    c = await world.campaign()
    h = await world.holder()
    cid, holder_id = decode(Kind.CAMPAIGN, c["id"]), decode(Kind.WALLET_HOLDER, h.id)
    taker = await asyncpg.connect(clean_db)
    try:
        async with _every_row_held(clean_db, cid) as held:
            await taker.execute("BEGIN")
            taking = asyncio.ensure_future(taker.fetchval("SELECT gateway_campaign_take($1, $2, 100, now(), NULL)",
                                                          cid, holder_id))
            waiter, blockers = await _waiter(clean_db, "gateway_campaign_take")
            assert waiter == taker.get_server_pid() and len(blockers) == 1, blockers
            await held[blockers[0]].execute("COMMIT")  # that row only: the 15 others stay held
            assert await asyncio.wait_for(taking, 10) == 100
            spent = await taker.fetch("SELECT shard FROM campaign_shards WHERE campaign_id = $1 AND spent_minor = 100",
                                      cid)
            assert len(spent) == 1
            for conn in held.values():
                await conn.close()
            assert await _lockable(clean_db, cid) == ROWS - 1  # the taker holds its one row, no other
            await taker.execute("ROLLBACK")
    finally:
        await taker.close()


@pytest.fixture
def settings() -> Settings:
    # A batch waits long for a campaign's row here, so that the test sees it wait.
    return make_settings(database={"campaign_row_wait_s": 2.0})


async def _pay_with_every_row_held(world: World, db_url: str, waiting: str) -> tuple[Any, tuple[float, float]]:
    """A discounted payment paid over HTTP while every counter row is held: once a statement with
    ``waiting`` waits for one row, that row alone is released. Its answer, and ``batched()`` before it."""
    c = await world.campaign()
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    p = await world.payment(m, 1_000)
    before = batched()
    async with _every_row_held(db_url, decode(Kind.CAMPAIGN, c["id"])) as held:
        paying = asyncio.ensure_future(world.pay(h, p["id"]))
        try:
            _, blockers = await _waiter(db_url, waiting)
            assert len(blockers) == 1, blockers
            await held[blockers[0]].execute("COMMIT")
            paid = await asyncio.wait_for(paying, 10)
        finally:
            if not paying.done():
                for conn in held.values():
                    await conn.close()
                await asyncio.wait([paying], timeout=10)
    assert paid["status"] == "succeeded" and paid["discount"]["amount"] == 100
    return paid, before


async def test_a_batch_finding_every_row_held_waits_for_one_row(world: World, clean_db: str) -> None:
    """The one-statement path, every row held: its batch waits (``database.campaign_row_wait_s``) for one
    row and pays the payment with its discount when that row is released, instead of sending it to its
    general path at once."""
    _, (given, refused) = await _pay_with_every_row_held(world, clean_db, "gateway_pay_batch")
    assert batched() == (given + 1, refused)  # paid by its batch, not refused by it


async def test_a_batch_waits_no_longer_than_its_bound(clean_db: str) -> None:
    """With the default bound (50 ms) a batch that finds every row held for longer gives up and the
    payment goes to its general path, which waits for one row and pays with the discount."""
    async with serving(clean_db, make_settings()) as client:
        world = await World.create(client)
        _, (given, refused) = await _pay_with_every_row_held(world, clean_db, "gateway_campaign_take")
        assert batched() == (given + 1, refused + 1)  # its batch gave up on it


async def test_a_process_that_did_not_create_a_campaign_pays_its_first_payments_in_batches(
        world: World) -> None:
    """What set off the burst: a process that had not read the promotions account sent every payment of
    a new bank-funded campaign to the general path (which reads it). The campaign cache's load reads it."""
    c = await world.campaign()
    svc = world.client.app[SERVICES]
    promotions = ledger.promotions("CNY")
    ledger_store._accounts.pop(promotions, None)  # as in a process that did not create the campaign
    await svc.campaigns.load(svc.db, svc.now())
    assert ledger_store.cached([promotions]) is not None
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    p = await world.payment(m, 1_000)
    given, refused = batched()
    paid = await world.pay(h, p["id"])
    assert paid["discount"]["amount"] == 100 and c["id"]
    assert batched() == (given + 1, refused)
