"""Two gateways behind HAProxy (deploy/haproxy/haproxy.cfg, health checks on /readyz); one is killed
(SIGKILL of its master and serving processes) under load. The other keeps serving through the same
address, HAProxy marks the dead one DOWN within about a second, and every payment the client retried
under its Idempotency-Key exists exactly once: no lost, no doubled payment, refund or balance, the
ledger invariants hold (the fault harness's checker)."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.fault import bank
from tests.fault.client import BankClient
from tests.fault.cluster import PG_BIN, REDIS_SERVER, PostgresCluster, RedisServer
from tests.ha.servers_r14 import HAPROXY, Bank, HAProxy, need, paid


async def _states(proxy: HAProxy, wanted: dict[str, str], timeout_s: float) -> float:
    """Seconds until HAProxy's servers are in the ``wanted`` states."""
    started = time.monotonic()
    while (states := proxy.server_states()) != wanted:
        assert time.monotonic() - started < timeout_s, f"servers {states}, wanted {wanted}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_a_gateway_killed_behind_haproxy_loses_no_payment() -> None:
    need(PG_BIN / "initdb", REDIS_SERVER, HAPROXY)
    cleanup = bank.Cleanup()
    try:
        pg, redis = PostgresCluster(), RedisServer()
        cleanup.push(pg.destroy)
        cleanup.push(redis.destroy)
        await asyncio.to_thread(pg.init)
        await asyncio.to_thread(pg.start)
        await asyncio.to_thread(redis.start)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0)) as session:
            world = await Bank.start(cleanup, session, pg, redis.url, 2)
            proxy = HAProxy([f"127.0.0.1:{g.port}" for g in world.gateways])
            cleanup.push(proxy.destroy)
            await asyncio.to_thread(proxy.start)
            await _states(proxy, {"gateway1": "UP", "gateway2": "UP"}, 10)
            killed_s: list[float] = []
            marked_down_s: list[float] = []

            async def kill_one(client: BankClient) -> None:
                await asyncio.sleep(3)
                await world.gateways[0].kill()
                killed_s.append(client.now_s())
                marked_down_s.append(await _states(proxy, {"gateway1": "DOWN", "gateway2": "UP"}, 5))

            ops, anomalies, stats = await world.run([proxy.url], 10.0, kill_one, workers=8)
        assert anomalies == []
        assert marked_down_s[0] < 3.0
        paid_after = [op for op in ops if op.kind == "pay" and op.answer is not None and op.answer.status == 200
                      and op.answer.received_s > killed_s[0] + marked_down_s[0]]
        assert len(paid_after) >= 5, "the surviving gateway did not keep serving"
        assert paid(ops) >= 10
        failed_attempts = sum(n for status, n in stats.statuses.items() if not status.startswith("2"))
        assert failed_attempts >= 1, "no request was cut by the kill: the retries were not exercised"
        print(f"paid {paid(ops)}, {len(paid_after)} after the kill; marked down in {marked_down_s[0]:.2f} s;"
              f" attempts by status {dict(stats.statuses)} ({failed_attempts} failed and retried)")
    finally:
        cleanup.run()
