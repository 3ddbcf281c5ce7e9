"""Webhook deliveries per second while payments run, against the payment rate of the same run, and
the delay from commit to delivery at about half that load.

A real gateway process (its own database) delivers to a receiver on 127.0.0.1 that verifies every
signature (Standard Webhooks). Phase 1, full load: ``--loops`` concurrent create+pay loops for
``--seconds``; each payment makes two events (payment.created, payment.succeeded), both subscribed.
Phase 2, half load: the same loops paced to half the phase-1 payment rate; the delay of each event is
its receive time minus its ``created`` instant (the commit follows within a millisecond or so).
Figures are printed; nothing is asserted (ratios, not absolute numbers, compare across machines).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import standardwebhooks
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.e2e.harness import Api, GatewayProcess, Shop, free_tcp_port  # noqa: E402


class Receiver:
    def __init__(self) -> None:
        self.port = free_tcp_port()
        self.received: list[tuple[float, float]] = []  # (receive wall time, event created wall time)
        self.ids: set[str] = set()
        self.secret = ""
        self.bad = 0

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            standardwebhooks.Webhook(self.secret).verify(body, dict(request.headers))
        except Exception:
            self.bad += 1
            return web.Response(status=400)
        event = json.loads(body)
        if event["id"] not in self.ids:
            self.ids.add(event["id"])
            self.received.append((time.time(), datetime.fromisoformat(event["created_at"]).timestamp()))
        return web.Response(text="ok")


async def pay_loop(api: Api, shop: Shop, holder_token: str, until: float, pace_s: float, counts: list[int]) -> None:
    while time.monotonic() < until:
        started = time.monotonic()
        payment = await api.call("POST", "/v1/payments", shop.secret, 201, json={"amount": 1, "currency": "CNY"})
        await api.call("POST", f"/v1/wallet/payments/{payment['id']}/pay", holder_token, 200, json={})
        counts[0] += 1
        if pace_s:
            await asyncio.sleep(max(0.0, pace_s - (time.monotonic() - started)))


async def phase(api: Api, shop: Shop, holder_token: str, receiver: Receiver, loops: int, seconds: float,
                pace_s: float) -> tuple[float, float, list[float]]:
    first = len(receiver.received)
    counts = [0]
    started = time.monotonic()
    await asyncio.gather(*(pay_loop(api, shop, holder_token, started + seconds, pace_s, counts) for _ in range(loops)))
    expected = first + 2 * counts[0]
    deadline = time.monotonic() + 30
    while len(receiver.received) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    elapsed_pay = time.monotonic() - started
    batch = receiver.received[first:]
    span = (max(r for r, _ in batch) - min(c for _, c in batch)) if batch else 1.0
    delays = sorted(r - c for r, c in batch)
    return counts[0] / elapsed_pay, len(batch) / max(span, 1e-9), delays


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def main(loops: int, seconds: float) -> None:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", receiver.port).start()
    gateway = await GatewayProcess.create({"GATEWAY_DATABASE_POOL_MAX": "16", "GATEWAY_AUTH_RATE_LIMIT_PER_S": "100000"})
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
            api = Api(session, gateway.url)
            shop = await Shop.create(api)
            holder = await shop.holder(top_up=900_000)
            hook = await api.call("POST", "/v1/webhook_endpoints", shop.secret, 201, json={
                "url": f"http://127.0.0.1:{receiver.port}/hook", "enabled_events": ["payment.created",
                                                                                     "payment.succeeded"]})
            receiver.secret = hook["secret"]
            pay_rate, delivery_rate, delays = await phase(api, shop, holder.token, receiver, loops, seconds, 0.0)
            print(f"full load: {loops} loops x {seconds:.0f} s: payments {pay_rate:.1f}/s, deliveries "
                  f"{delivery_rate:.1f}/s, ratio {delivery_rate / pay_rate:.2f} (goal >= 2); "
                  f"delay p50 {pct(delays, 0.5) * 1000:.0f} ms p99 {pct(delays, 0.99) * 1000:.0f} ms")
            pace_s = loops / max(pay_rate / 2, 0.1)
            half_rate, half_deliveries, half_delays = await phase(api, shop, holder.token, receiver, loops, seconds,
                                                                  pace_s)
            print(f"half load: payments {half_rate:.1f}/s, deliveries {half_deliveries:.1f}/s; commit-to-delivery "
                  f"p50 {pct(half_delays, 0.5) * 1000:.0f} ms, p99 {pct(half_delays, 0.99) * 1000:.0f} ms, "
                  f"max {max(half_delays, default=0) * 1000:.0f} ms (goal p99 < 1000 ms); "
                  f"median {statistics.median(half_delays) * 1000 if half_delays else 0:.0f} ms; "
                  f"bad signatures {receiver.bad}")
    finally:
        await gateway.stop()
        await gateway.drop()
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loops", type=int, default=8, help="concurrent create+pay loops")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    args = parser.parse_args()
    asyncio.run(main(args.loops, args.seconds))
