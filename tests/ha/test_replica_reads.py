"""Stale reads on a real streaming replica; the money path on the primary only.

A private primary and a hot standby made from it by ``pg_basebackup -R``; one gateway with
``database.replica_url`` set. Shown: (1) with the replica's replay paused, payments, pays and refunds
all succeed and the gateway never even connects to the replica (its log lists every session); (2) the
merchant's payment list, the event list and a wallet's history then come from the replica, stale, while
a payment read by id (the primary) is fresh; after replay resumes they catch up; (3) with the replica
stopped, those lists fall back to the primary (fresh, 200) and payments go on.
"""

from __future__ import annotations

import asyncio

import aiohttp

from tests.e2e.harness import Api
from tests.fault import bank
from tests.fault.cluster import PG_BIN, REDIS_SERVER, PostgresCluster, RedisServer
from tests.ha.servers_r14 import DATABASE, Bank, Replica, caught_up, need, paid


async def _list(api: Api, path: str, token: str) -> list[dict[str, object]]:
    """A list read; a 503 from a read that was running on a replica just killed is retried once."""
    for _ in range(2):
        try:
            body = await api.call("GET", path, token, params={"limit": "100"})
        except AssertionError as exc:
            if " 503 " not in str(exc):
                raise
            await asyncio.sleep(0.2)
            continue
        return list(body["data"])
    raise AssertionError(f"{path}: 503 twice")


async def test_stale_reads_on_the_replica_and_never_the_money_path() -> None:
    need(PG_BIN / "initdb", PG_BIN / "pg_basebackup", REDIS_SERVER)
    cleanup = bank.Cleanup()
    try:
        pg, replica, redis = PostgresCluster(), Replica(), RedisServer()
        for server in (pg, replica, redis):
            cleanup.push(server.destroy)
        await asyncio.to_thread(pg.init)
        await asyncio.to_thread(pg.start)
        await asyncio.to_thread(replica.init_from, pg)
        await asyncio.to_thread(replica.start)
        await asyncio.to_thread(redis.start)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0)) as session:
            world = await Bank.start(cleanup, session, pg, redis.url, 1, env={
                "GATEWAY_DATABASE_REPLICA_URL": replica.url(DATABASE), "GATEWAY_DATABASE_REPLICA_BACKOFF_S": "1"})
            shop, holder = world.shops[0], world.holders[0]
            api = Api(session, world.gateways[0].url)
            await caught_up(pg, replica)
            await replica.execute("SELECT pg_wal_replay_pause()")

            # (1) The money path with the replica frozen in the past: all succeed, none touches it.
            ops, anomalies, _ = await world.run([world.gateways[0].url], 4.0)
            assert anomalies == []
            assert paid(ops) >= 5
            assert replica.connections_to(DATABASE) == 0, "the money path (or the setup) used the replica"

            # (2) Stale reads come from the replica: it holds none of those payments yet.
            payments = await _list(api, "/v1/payments", shop.secret)
            events = await _list(api, "/v1/events", shop.secret)
            history = await _list(api, "/v1/wallet/transactions", holder.token)
            assert payments == []
            assert not any(str(e["type"]).startswith("payment.") for e in events)
            assert {t["kind"] for t in history} <= {"top_up"}
            assert replica.connections_to(DATABASE) >= 1
            created = next(op for op in ops if op.kind == "create" and op.answer is not None)
            one = await api.call("GET", f"/v1/payments/{created.answer.json()['id']}", shop.secret)  # type: ignore[union-attr]
            assert one["status"] in ("succeeded", "requires_payment", "partially_refunded", "refunded")
            await replica.execute("SELECT pg_wal_replay_resume()")
            await caught_up(pg, replica)
            created_count = sum(1 for op in ops if op.kind == "create" and op.answer and op.answer.status == 201)
            assert len(await _list(api, "/v1/payments", shop.secret)) == min(created_count, 100)

            # (3) The replica down: the same reads fall back to the primary (fresh), payments go on.
            await asyncio.to_thread(replica.stop_immediate)
            assert len(await _list(api, "/v1/payments", shop.secret)) == min(created_count, 100)
            assert any(str(e["type"]).startswith("payment.") for e in await _list(api, "/v1/events", shop.secret))
            more, anomalies, _ = await world.run([world.gateways[0].url], 2.0, seed=15)
            assert anomalies == []
            assert paid(more) > paid(ops)  # the journal holds both runs
    finally:
        cleanup.run()
