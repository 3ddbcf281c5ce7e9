"""Redis through Sentinel, failing over under load: a master, its replica and three sentinels on free
ports; two gateways with ``redis.sentinels`` set run payments; the master is killed (SIGKILL). The
sentinels promote the replica; payments never stop (Redis only accelerates), the gateways' /readyz says
Redis is ok again, and the new master is the one they use: its command counters, reset at the
promotion, count the gateways' rate-limit scripts. No payment lost or doubled (the fault harness's checker)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import redis

from tests.fault import bank
from tests.fault.client import BankClient
from tests.fault.cluster import PG_BIN, REDIS_SERVER, PostgresCluster
from tests.ha.servers_r14 import REDIS_SENTINEL, Bank, SentinelGroup, need, paid


async def _until(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not await asyncio.to_thread(check):
        assert time.monotonic() - started < timeout_s, f"{what}: not after {timeout_s} s"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_payments_continue_through_a_sentinel_failover() -> None:
    need(PG_BIN / "initdb", REDIS_SERVER, REDIS_SENTINEL)
    cleanup = bank.Cleanup()
    try:
        pg, group = PostgresCluster(), SentinelGroup()
        cleanup.push(pg.destroy)
        cleanup.push(group.destroy)
        await asyncio.to_thread(pg.init)
        await asyncio.to_thread(pg.start)
        await asyncio.to_thread(group.start)
        sentinel = redis.Redis(port=group.ports[0], socket_timeout=2)
        new_master = redis.Redis(port=group.replica.port, socket_timeout=2)
        cleanup.push(sentinel.close)
        cleanup.push(new_master.close)

        def watched() -> bool:  # the sentinels know the replica and one another: a failover can happen
            state = sentinel.sentinel_master(group.SERVICE)
            assert isinstance(state, dict)
            return int(state["num-slaves"]) == 1 and int(state["num-other-sentinels"]) == 2

        await _until(watched, 20, "sentinels ready")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0)) as session:
            world = await Bank.start(cleanup, session, pg, "redis://127.0.0.1/0", 2, env={
                "GATEWAY_REDIS_SENTINELS": group.addresses, "GATEWAY_REDIS_SENTINEL_SERVICE": group.SERVICE,
                "GATEWAY_REDIS_BACKOFF_S": "1"})
            with redis.Redis(port=group.master.port, socket_timeout=2) as first:
                assert first.dbsize() > 0  # the gateways use the first master
            failover: list[float] = []

            async def kill_master(client: BankClient) -> None:
                await asyncio.sleep(3)
                await asyncio.to_thread(group.master.kill)
                killed_s = client.now_s()

                def promoted() -> bool:
                    return bool(new_master.info("replication")["role"] == "master")

                await _until(promoted, 30, "the replica promoted")
                new_master.config_resetstat()
                failover.extend([killed_s, client.now_s()])

            ops, anomalies, _ = await world.run([g.url for g in world.gateways], 14.0, kill_master)
            readiness = [await (await session.get(f"{g.url}/readyz")).json() for g in world.gateways]
        assert anomalies == []
        assert await group.master_port() == group.replica.port
        assert [r["redis"] for r in readiness] == ["ok", "ok"], readiness
        scripts = new_master.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        assert scripts > 0, "the gateways did not use the new master"
        killed_s, promoted_s = failover
        paid_during = [op for op in ops if op.kind == "pay" and op.answer and op.answer.status == 200
                       and killed_s < op.answer.received_s < promoted_s]
        paid_after = [op for op in ops if op.kind == "pay" and op.answer and op.answer.status == 200
                      and op.answer.received_s > promoted_s]
        assert paid_during and paid_after
        print(f"paid {paid(ops)}: {len(paid_during)} while Redis failed over ({promoted_s - killed_s:.1f} s),"
              f" {len(paid_after)} after; {scripts} rate-limit scripts on the new master")
    finally:
        cleanup.run()
