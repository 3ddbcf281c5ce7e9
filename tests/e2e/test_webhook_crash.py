"""A gateway process killed (SIGKILL) while a webhook attempt is in flight: once it is back (or any
other process), the delivery's lease ends and the event is delivered, with the same webhook-id."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
import standardwebhooks
from aiohttp import web

from tests.e2e.harness import Api, GatewayProcess, Shop, free_tcp_port

FAST_ENV = {"GATEWAY_WEBHOOKS_TIMEOUT_S": "5", "GATEWAY_WEBHOOKS_LEASE_MARGIN_S": "1",
            "GATEWAY_WEBHOOKS_POLL_INTERVAL_S": "0.2", "GATEWAY_WEBHOOKS_BACKOFF_BASE_S": "0.1",
            "GATEWAY_WEBHOOKS_BACKOFF_MAX_S": "0.5"}


@pytest.fixture
async def gateway() -> AsyncIterator[GatewayProcess]:
    process = await GatewayProcess.create(FAST_ENV)
    try:
        yield process
    finally:
        await process.stop()
        await process.drop()


async def test_killed_mid_delivery_then_delivered(gateway: GatewayProcess) -> None:
    seen: list[tuple[dict[str, str], bytes]] = []
    first_arrived = asyncio.Event()
    delivered = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((dict(request.headers), body))
        if len(seen) == 1:
            first_arrived.set()
            await asyncio.sleep(30)  # the gateway dies while waiting for this answer
        delivered.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_tcp_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, gateway.url)
            shop = await Shop.create(api)
            hook_ep = await api.call("POST", "/v1/webhook_endpoints", shop.secret, 201,
                                     json={"url": f"http://127.0.0.1:{port}/hook", "enabled_events": ["payment.created"]})
            await api.call("POST", "/v1/payments", shop.secret, 201, json={"amount": 100, "currency": "CNY"})
            await asyncio.wait_for(first_arrived.wait(), 10)
            await gateway.kill()
            await gateway.start()
            await asyncio.wait_for(delivered.wait(), 20)
            assert len(seen) >= 2 and seen[0][0]["webhook-id"] == seen[-1][0]["webhook-id"]
            standardwebhooks.Webhook(hook_ep["secret"]).verify(seen[-1][1], seen[-1][0])
            assert json.loads(seen[-1][1])["type"] == "payment.created"
            await asyncio.sleep(0.5)
            deliveries = await api.call("GET", f"/v1/webhook_endpoints/{hook_ep['id']}/deliveries", shop.secret)
            assert [d["status"] for d in deliveries["data"]] == ["succeeded"]
    finally:
        await runner.cleanup()
