"""Review R35: a campaign's counter rows under contention (migration 0035, f64c0b2), attacked over real
PostgreSQL and HTTP: the batch's bounded wait and what it restores, the take's wait for one row, both
paths and the campaign's end racing. Each test marked FINDING failed on main at f64c0b2; the others are
attacks that held. The fixtures prove the ledger invariants after each test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from prometheus_client import REGISTRY

from gateway.api.routing import SERVICES
from gateway.domain.ids import Kind, decode
from tests.conftest import make_settings
from tests.integration.conftest import serving
from tests.integration.world import Holder, Merchant, World, batched


def _deadlocks() -> float:
    return REGISTRY.get_sample_value("gateway_db_transaction_retries_total", {"reason": "deadlock"}) or 0.0




async def _rows(db_url: str, campaign_id: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return list(await conn.fetch("SELECT shard, budget_minor, spent_minor, places_max, places_taken, closed"
                                     " FROM campaign_shards WHERE campaign_id = $1 ORDER BY shard", campaign_id))
    finally:
        await conn.close()


@asynccontextmanager
async def _held(db_url: str, sql: str, *args: Any) -> AsyncIterator[asyncpg.Connection[Any]]:
    """``sql`` (rows locked FOR UPDATE) in an open transaction of its own; commit it to release them."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("BEGIN")
        await conn.fetch(sql, *args)
        yield conn
    finally:
        await conn.close()  # rolls back what is still open


def _every_row(campaign_id: Any) -> tuple[str, Any]:
    return "SELECT shard FROM campaign_shards WHERE campaign_id = $1 ORDER BY shard FOR UPDATE", campaign_id


# Every balance row but the wallets': the merchant, fee, clearing and promotions shards a batch locks
# after its campaigns' rows, under the session's lock_timeout (database.lock_timeout_s, 2 s).
_HOUSE_BALANCES = ("SELECT b.account_id FROM balances b JOIN accounts a ON a.id = b.account_id"
                   " WHERE a.kind <> 'wallet' ORDER BY b.account_id, b.shard FOR UPDATE OF b")


async def _waits_for(db_url: str, fragment: str, blocker: int, timeout_s: float = 10.0) -> int:
    """Until a backend running a statement with ``fragment`` waits for a lock ``blocker`` holds; its pid."""
    probe = await asyncpg.connect(db_url)
    try:
        for _ in range(int(timeout_s / 0.005)):
            pid = await probe.fetchval("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                       " AND query LIKE '%' || $1 || '%' AND $2 = ANY (pg_blocking_pids(pid))",
                                       fragment, blocker)
            if pid is not None:
                return int(pid)
            await asyncio.sleep(0.005)
        raise AssertionError(f"no statement with {fragment!r} waited for backend {blocker}")
    finally:
        await probe.close()


async def _blockers_of(db_url: str, fragment: str, timeout_s: float = 10.0) -> list[int]:
    probe = await asyncpg.connect(db_url)
    try:
        for _ in range(int(timeout_s / 0.005)):
            found = await probe.fetchval("SELECT pg_blocking_pids(pid) FROM pg_stat_activity"
                                         " WHERE wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%'", fragment)
            if found:
                return list(found)
            await asyncio.sleep(0.005)
        raise AssertionError(f"no statement with {fragment!r} waited for a lock")
    finally:
        await probe.close()


async def _status(world: World, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    resp = await world.client.request(method, path, **kwargs)
    return resp.status, await resp.json()


# --- the batch's lock_timeout after its wait for a counter row -----------------------------------


async def test_r35_a_batch_that_got_its_row_by_waiting_locks_the_balances_under_the_sessions_timeout(
        world: World, clean_db: str) -> None:
    """Held. Every counter row held; the batch (its wait set to 1 s here) waits for one and gets it when
    it is released; the house balance rows it locks next are held 1.4 s (more than the row wait, less
    than the session's lock_timeout of 2 s): it waits for them and pays its payment with the discount.
    Had the wait's 1 s stayed in force, that lock would fail (LockNotAvailable out of the whole batch)."""
    c = await world.campaign()
    cid = decode(Kind.CAMPAIGN, c["id"])
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    p = await world.payment(m, 1_000)
    async with serving(clean_db, make_settings(database={"campaign_row_wait_s": 1.0})) as client:
        given, refused = batched()
        async with _held(clean_db, *_every_row(cid)) as rows, _held(clean_db, _HOUSE_BALANCES) as balances:
            paying = asyncio.ensure_future(client.post(f"/v1/wallet/payments/{p['id']}/pay", headers=h.headers,
                                                       json={}))
            await _waits_for(clean_db, "gateway_pay_batch", rows.get_server_pid())
            await rows.execute("COMMIT")  # within the batch's 1 s
            await _waits_for(clean_db, "gateway_pay_batch", balances.get_server_pid())
            started_s = time.perf_counter()
            await asyncio.sleep(1.4)
            assert not paying.done()
            await balances.execute("COMMIT")
            resp = await asyncio.wait_for(paying, 10)
            paid = await resp.json()
            assert time.perf_counter() - started_s >= 1.4
        assert resp.status == 200, paid
        assert paid["status"] == "succeeded" and paid["discount"]["amount"] == 100
        assert batched() == (given + 1, refused)  # paid by its batch, which waited for the balances


async def test_r35_a_batch_that_gave_up_its_wait_locks_the_balances_under_the_sessions_timeout(
        world: World, clean_db: str) -> None:
    """Held. Every counter row held for good; the batch gives up after 50 ms (its item falls back); the
    house balance rows it locks next, held 400 ms, are waited for under the session's 2 s, not 50 ms:
    the statement returns (its item refused, not the batch failed) and the general path pays."""
    c = await world.campaign()
    cid = decode(Kind.CAMPAIGN, c["id"])
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    p = await world.payment(m, 1_000)
    given, refused = batched()
    async with _held(clean_db, *_every_row(cid)) as rows:
        async with _held(clean_db, _HOUSE_BALANCES) as balances:
            paying = asyncio.ensure_future(world.pay(h, p["id"]))
            await _waits_for(clean_db, "gateway_pay_batch", rows.get_server_pid())
            await _waits_for(clean_db, "gateway_pay_batch", balances.get_server_pid())  # after its 50 ms
            await asyncio.sleep(0.4)
            assert not paying.done()
            await balances.execute("COMMIT")
            # the batch returned its item refused; its general path waits for the campaign's row
            await _waits_for(clean_db, "gateway_campaign_take", rows.get_server_pid())
        assert batched() == (given + 1, refused + 1)
        await rows.execute("COMMIT")
        paid = await asyncio.wait_for(paying, 10)
    assert paid["status"] == "succeeded" and paid["discount"]["amount"] == 100


async def test_r35_the_wait_leaves_the_sessions_lock_timeout_to_the_rest_of_the_statement(clean_db: str) -> None:
    """Held, at the SQL level: after gateway_pay_batch's wait (got, given up, nothing to wait for) the
    transaction's lock_timeout is the session's again (the statement ends by setting its own 5 ms for
    its items, so it is read from a probe function called in the same transaction right after)."""
    conn = await asyncpg.connect(clean_db, server_settings={"lock_timeout": "1234ms"})
    try:
        for mode in ("1", "0"):  # set_config in a committed and in a rolled-back subtransaction
            async with conn.transaction():
                got = await conn.fetchval(
                    "DO $$ DECLARE waits text := current_setting('lock_timeout'); BEGIN"
                    " BEGIN PERFORM set_config('lock_timeout', '50', true);"
                    f" IF {mode} = 0 THEN RAISE EXCEPTION USING ERRCODE = 'GW002'; END IF;"
                    " PERFORM set_config('lock_timeout', waits, true);"
                    " EXCEPTION WHEN SQLSTATE 'GW002' THEN NULL; END;"
                    " PERFORM set_config('r35.seen', current_setting('lock_timeout'), true); END $$")
                assert got is None
                assert await conn.fetchval("SELECT current_setting('r35.seen')") == "1234ms"
    finally:
        await conn.close()


# --- the take's wait for one row -----------------------------------------------------------------


async def test_r35_a_take_waiting_for_a_row_the_end_holds_is_refused_and_keeps_nothing(
        world: World, clean_db: str) -> None:
    """Held. A payment holds the last row; the end locks the others in shard order and waits for it; a
    take finds every row held and waits for its one row (the end's, or the payment's behind the end).
    The payment commits, the end closes every row and commits: the take is refused, its use given back,
    no row left locked by it; nothing was granted."""
    c = await world.campaign(per_holder_limit=3)
    cid = decode(Kind.CAMPAIGN, c["id"])
    rows = await _rows(clean_db, cid)
    h = await world.holder()
    holder_id = decode(Kind.WALLET_HOLDER, h.id)
    taker = await asyncpg.connect(clean_db)
    probe = await asyncpg.connect(clean_db)
    try:
        async with _held(clean_db, "SELECT 1 FROM campaign_shards WHERE campaign_id = $1 AND shard = $2 FOR UPDATE",
                         cid, len(rows) - 1) as held:
            ending = asyncio.ensure_future(_status(world, "POST", f"/v1/operator/campaigns/{c['id']}/end",
                                                   headers=world.ops, json={}))
            end_pid = await _waits_for(clean_db, "campaign_shards", held.get_server_pid())
            await taker.execute("BEGIN")
            taking = asyncio.ensure_future(taker.fetchval("SELECT gateway_campaign_take($1, $2, 100, now(), 3)",
                                                          cid, holder_id))
            blockers = await _blockers_of(clean_db, "gateway_campaign_take")
            assert set(blockers) <= {end_pid, held.get_server_pid()}, blockers
            await held.execute("COMMIT")
            status, ended = await asyncio.wait_for(ending, 10)
            assert status == 200, ended
            assert await asyncio.wait_for(taking, 10) is None
            assert len(await probe.fetch("SELECT shard FROM campaign_shards WHERE campaign_id = $1"
                                         " FOR UPDATE NOWAIT", cid)) == len(rows)
            assert await taker.fetchval("SELECT coalesce(sum(uses), 0) FROM campaign_uses WHERE holder_id = $1",
                                        holder_id) == 0
            await taker.execute("ROLLBACK")
    finally:
        await taker.close()
        await probe.close()
    assert all(r["closed"] and r["spent_minor"] == 0 for r in await _rows(clean_db, cid))


async def test_r35_a_take_whose_row_was_spent_while_it_waited_gathers_the_rest_and_keeps_it_in_order(
        world: World, clean_db: str) -> None:
    """Held. 16 rows; every row but one spent down to 60 units, that one (403 left) held; a take of 100
    finds no free row with room, waits for the held one, which its holder spends to 3 and commits: the
    take gathers 100 from the others (rows released by the sub-block, then all in shard order); a second
    take waiting the same way gathers behind it: both whole, no deadlock, 703 left."""
    c = await world.campaign(budget=12_850)
    cid = decode(Kind.CAMPAIGN, c["id"])
    assert len(await _rows(clean_db, cid)) == 16
    holders = [decode(Kind.WALLET_HOLDER, (await world.holder()).id) for _ in range(2)]
    setup = await asyncpg.connect(clean_db)
    conns = [await asyncpg.connect(clean_db) for _ in range(3)]
    try:
        # the rows as many payments would leave them (a direct write, undone below: no payment names them)
        await setup.execute("UPDATE campaign_shards SET spent_minor = budget_minor - CASE WHEN shard = 5 THEN 403"
                            " ELSE 60 END WHERE campaign_id = $1", cid)
        holder_tx, first, second = conns
        await holder_tx.execute("BEGIN")
        await holder_tx.fetch("SELECT 1 FROM campaign_shards WHERE campaign_id = $1 AND shard = 5 FOR UPDATE", cid)
        await first.execute("BEGIN")
        await second.execute("BEGIN")
        t1 = asyncio.ensure_future(first.fetchval("SELECT gateway_campaign_take($1, $2, 100, now(), NULL)",
                                                  cid, holders[0]))
        await _waits_for(clean_db, "gateway_campaign_take", holder_tx.get_server_pid())
        await holder_tx.execute("UPDATE campaign_shards SET spent_minor = spent_minor + 400"
                                " WHERE campaign_id = $1 AND shard = 5", cid)
        t2 = asyncio.ensure_future(second.fetchval("SELECT gateway_campaign_take($1, $2, 100, now(), NULL)",
                                                   cid, holders[1]))
        await asyncio.sleep(0.05)
        await holder_tx.execute("COMMIT")
        assert await asyncio.wait_for(t1, 10) == 100
        await first.execute("COMMIT")
        assert await asyncio.wait_for(t2, 10) == 100
        await second.execute("COMMIT")
        left = sum(r["budget_minor"] - r["spent_minor"] for r in await _rows(clean_db, cid))
        assert left == 15 * 60 + 3 - 200
    finally:
        for conn in conns:
            await conn.close()
        await setup.execute("UPDATE campaign_shards SET spent_minor = 0, places_taken = 0 WHERE campaign_id = $1", cid)
        await setup.close()


async def test_r35_a_batch_and_its_fallback_waiting_behind_an_end_never_deadlock(world: World, clean_db: str) -> None:
    """Held. A payment holds the last row; the end locks the others in shard order and waits for it; a
    payment then finds every row held: its batch waits for one (the end's, or the payment's behind it)
    for 50 ms and gives up, its general path waits for one row. The payment commits, the end commits:
    the payment succeeds without a discount, nothing was granted, no deadlock."""
    c = await world.campaign()
    cid = decode(Kind.CAMPAIGN, c["id"])
    rows = await _rows(clean_db, cid)
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    p = await world.payment(m, 1_000)
    before, (given, refused) = _deadlocks(), batched()
    async with _held(clean_db, "SELECT 1 FROM campaign_shards WHERE campaign_id = $1 AND shard = $2 FOR UPDATE",
                     cid, len(rows) - 1) as held:
        ending = asyncio.ensure_future(_status(world, "POST", f"/v1/operator/campaigns/{c['id']}/end",
                                               headers=world.ops, json={}))
        end_pid = await _waits_for(clean_db, "campaign_shards", held.get_server_pid())
        paying = asyncio.ensure_future(world.pay(h, p["id"]))
        blockers = await _blockers_of(clean_db, "gateway_campaign_take")  # after its batch gave up
        assert set(blockers) <= {end_pid, held.get_server_pid()}, blockers
        assert batched() == (given + 1, refused + 1)
        await held.execute("COMMIT")
        status, ended = await asyncio.wait_for(ending, 10)
        paid = await asyncio.wait_for(paying, 10)
    assert status == 200, ended
    assert paid["status"] == "succeeded" and paid["discount"] is None
    assert _deadlocks() == before
    assert all(r["closed"] and r["spent_minor"] == 0 for r in await _rows(clean_db, cid))


# --- both paths and the end racing ---------------------------------------------------------------


async def _pay_retrying(client: Any, h: Holder, payment_id: str) -> Any:
    headers = {**h.headers, "Idempotency-Key": f"r35-{payment_id}"}
    for _ in range(8):
        resp = await client.post(f"/v1/wallet/payments/{payment_id}/pay", headers=headers, json={})
        body = await resp.json()
        if resp.status != 503:
            assert resp.status == 200, body
            return body
        await asyncio.sleep(0.2)
    raise AssertionError("still busy after 8 tries")


async def test_r35_both_paths_racing_with_an_end_never_over_grant_nor_deadlock(world: World, clean_db: str) -> None:
    """Held. Process A pays from its cache (batches), process B cannot tell (the general path, waiting
    for one row). Campaign D (12,850 over 16 rows: 128 whole discounts and 50 units) binds on its
    budget; campaign P (40 places in 5 rows of a 500,000 budget) on its places, and is ended in the
    middle of the race. Nothing over budget or places, no discount refused while units are left, no
    deadlock, the books add up."""
    m1, m2 = await world.merchant(), await world.merchant(name="Cafe")
    holders = list(await asyncio.gather(*(world.holder(top_up=20_000) for _ in range(60))))
    d = await world.campaign(budget=12_850, merchants=[m1.id])
    pc = await world.campaign(name="P", budget=500_000, places=40, merchants=[m2.id])
    before = _deadlocks()
    async with serving(clean_db, make_settings()) as other:
        other.app[SERVICES].campaigns.current = lambda: None
        plan: list[tuple[Holder, Merchant]] = [(h, m) for h in holders for m in (m1, m1, m1, m2)]
        payments = [await world.payment(m, 1_000) for _, m in plan]
        racing = asyncio.ensure_future(asyncio.gather(*(
            _pay_retrying(world.client if i % 2 else other, h, p["id"])
            for i, ((h, _), p) in enumerate(zip(plan, payments, strict=True)))))
        await asyncio.sleep(0.3)
        status, ended = await _status(world, "POST", f"/v1/operator/campaigns/{pc['id']}/end", headers=world.ops,
                                      json={})
        assert status == 200, ended
        paid = await racing
    assert _deadlocks() == before
    of_d = sorted(x["discount"]["amount"] for (_, m), x in zip(plan, paid, strict=True)
                  if m is m1 and x["discount"] is not None)
    assert of_d == [50] + [100] * 128, of_d
    got = await world.call("GET", f"/v1/operator/campaigns/{d['id']}", headers=world.ops)
    assert (got["spent"], got["places_taken"]) == (12_850, 129)
    of_p = [x for (_, m), x in zip(plan, paid, strict=True) if m is m2 and x["discount"] is not None]
    got = await world.call("GET", f"/v1/operator/campaigns/{pc['id']}", headers=world.ops)
    assert got["places_taken"] == len(of_p) <= 40 and got["spent"] == 100 * len(of_p)
    assert (ended["spent"], ended["places_taken"]) == (got["spent"], got["places_taken"])
    assert all(r["closed"] for r in await _rows(clean_db, decode(Kind.CAMPAIGN, pc["id"])))


# --- a batch waiting for a row that cannot pay any of its items -----------------------------------


async def test_r35_finding_a_batch_does_not_wait_for_a_row_too_small_for_any_of_its_discounts(
        world: World, clean_db: str) -> None:
    """FINDING (low: latency, a lock wait for nothing). The batch chooses the row it waits for with
    ``gateway_campaign_row_to_wait(campaign, 1)``: any row with one unit left. A campaign's one row has
    30 units left (130, a discount of 100 given) and is held by a payment; this process's cache (as
    loaded before: up to its refresh period) still offers 100: the batch waits for the row (up to
    database.campaign_row_wait_s) though no item of 100 can be paid from 30, then sends its item to its
    general path anyway (which gives the 30)."""
    c = await world.campaign(budget=130)
    cid = decode(Kind.CAMPAIGN, c["id"])
    assert len(await _rows(clean_db, cid)) == 1
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    assert (await world.pay(h, (await world.payment(m, 1_000))["id"]))["discount"]["amount"] == 100
    p = await world.payment(m, 1_000)
    async with _held(clean_db, *_every_row(cid)) as held:
        paying = asyncio.ensure_future(world.pay(h, p["id"]))
        try:
            batch_waited = True
            try:
                await _waits_for(clean_db, "gateway_pay_batch", held.get_server_pid(), timeout_s=0.5)
            except AssertionError:
                batch_waited = False
        finally:
            await held.execute("COMMIT")
        paid = await asyncio.wait_for(paying, 10)
    assert paid["discount"]["amount"] == 30
    assert not batch_waited, "the batch waited for a row with 30 units for items of 100"
