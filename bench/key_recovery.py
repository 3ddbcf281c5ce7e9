"""How long a client's retry is refused (409 ``idempotency_key_in_use``) after the process that owned
its Idempotency-Key died mid-request.

Two single-process gateways on one database. Each round: a payment, a pay request with key K sent
to gateway 1 while a row lock held by this script keeps the request in flight; gateway 1 is
SIGKILLed; the lock is released; the client then retries K on gateway 2 every 50 ms until a
definite answer. The figure is the time from the kill to that answer. Gateway 1 is restarted for
the next round. Bounded: ``--rounds`` rounds, each given up after ``--round-timeout-s``.

    .venv/bin/python bench/key_recovery.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.domain.ids import Kind, decode  # noqa: E402
from tests.e2e.harness import Api, GatewayProcess, Shop, free_tcp_port  # noqa: E402

POLL_S = 0.05


async def _wait_for_lock_waiter(watcher: asyncpg.Connection, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await watcher.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                  " AND datname = current_database()"):
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the pay request never reached the payment row")


async def one_round(g1: GatewayProcess, g2: GatewayProcess, shop: Shop, token: str, timeout_s: float) -> float:
    payment = await shop.api.call("POST", "/v1/payments", shop.secret, 201, json={"amount": 100, "currency": "CNY"})
    key = f"recovery-{uuid.uuid4()}"
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    path = f"/v1/wallet/payments/{payment['id']}/pay"
    blocker = await asyncpg.connect(g1.db_url)
    watcher = await asyncpg.connect(g1.db_url)
    async with aiohttp.ClientSession() as session:
        try:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("SELECT 1 FROM payments WHERE id = $1 FOR UPDATE", decode(Kind.PAYMENT, payment["id"]))
            in_flight = asyncio.create_task(session.post(g1.url + path, json={}, headers=headers))
            await _wait_for_lock_waiter(watcher)
            await g1.kill()
            killed_s = time.monotonic()
            await tx.rollback()
            in_flight.cancel()
            while time.monotonic() - killed_s < timeout_s:
                async with session.post(g2.url + path, json={}, headers=headers) as resp:
                    if resp.status != 409:
                        assert resp.status == 200, await resp.text()
                        return time.monotonic() - killed_s
                await asyncio.sleep(POLL_S)
            return float("inf")
        finally:
            await blocker.close()
            await watcher.close()
            await g1.start()


async def main(rounds: int, round_timeout_s: float) -> None:
    g1 = await GatewayProcess.create()
    g2 = GatewayProcess(free_tcp_port(), g1.database)
    try:
        await g2.start()
        async with aiohttp.ClientSession() as session:
            shop = await Shop.create(Api(session, g1.url))
            holder = await shop.holder(top_up=100_000)
            shop.api = Api(session, g2.url)
            figures = [await one_round(g1, g2, shop, holder.token, round_timeout_s) for _ in range(rounds)]
    finally:
        await g1.stop()
        await g2.stop()
        await g1.drop()
    print("recovery after the key owner's crash (kill -> definite answer on another process), s:")
    print("  rounds: " + ", ".join(f"{f:.2f}" for f in figures))
    print(f"  median {statistics.median(figures):.2f} s, max {max(figures):.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-timeout-s", type=float, default=60.0)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.round_timeout_s))
