"""A hung gateway (it accepts every payment request and never answers, as one whose database is
locked does) must not hold the counter for the whole sale deadline with the status queries never
made: each call gets its share of what is left of the sale, so the queries after the unknown
outcome are made and the sale ends ``outcome_unknown`` (compensated) before its deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pos_agent.checkout import CheckoutDevices, CheckoutRunner
from pos_agent.credentials import Credentials
from pos_agent.errors import GatewayUnreachable, OutcomeUnknown
from pos_agent.gateway_client import GatewayClient
from pos_agent.journal import AsyncJournal, OpKind
from pos_agent.settings import GatewaySettings, SaleSettings, Settings

from tests.agent.test_checkout_driver import FakeReader
from tests.agent.test_checkout_states import make_tap

HANG_S = 60.0  # longer than the sale: an answer never comes while it runs


async def _serving(handle: Callable[[web.Request], Awaitable[web.Response]]) -> TestServer:
    """A real HTTP server on 127.0.0.1 answering every path with ``handle``."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def test_status_queries_fit_in_the_sale_deadline_of_a_hung_gateway(tmp_path: Path) -> None:
    seen: list[str] = []
    hung = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        if request.path == "/v1/devices/sessions":
            return web.json_response({"access_token": "t", "expires_in": 900}, status=201)
        await asyncio.wait_for(hung.wait(), HANG_S)
        return web.json_response({"error": {"code": "released"}}, status=503)

    server = await _serving(handle)
    # Without the shares, creating the payment alone takes 3 attempts x 2 s: the sale deadline
    # (6 s) ends the sale before the tap's status could be asked even once.
    settings = Settings(
        gateway=GatewaySettings(url=str(server.make_url("")).rstrip("/"), request_timeout_s=2.0, retry_count_max=3,
                                backoff_base_s=0.01, backoff_max_s=0.02),
        sale=SaleSettings(sale_timeout_s=6.0, resolve_query_count_max=3, resolve_query_interval_s=0.1,
                          status_poll_interval_s=5.0, cleanup_timeout_s=2.0),
    )
    journal = AsyncJournal.open(tmp_path / "journal.sqlite3")
    reader = FakeReader()
    reader.taps.put_nowait(make_tap())
    try:
        async with GatewayClient(settings.gateway, credentials=Credentials("x", "d", "s", "t", "s", "m")) as client:
            runner = CheckoutRunner(settings, client, journal, CheckoutDevices(reader=reader))
            outcome = await runner.sell(3_800)
        assert not outcome.approved and outcome.reason == "outcome_unknown"
        assert "POST /v1/tap_payments" in seen
        assert seen.count("GET /v1/payments") == settings.sale.resolve_query_count_max  # every query was made
        # Neither the payment's creation nor the tap is known: both are left to the forwarder to resolve.
        queued = await journal.call(lambda j: j.pending_operations((OpKind.RESOLVE,), created_before=1e12, limit=10))
        assert sorted(op.reference for op in queued) == [outcome.reference, f"{outcome.reference}-T1"]
    finally:
        hung.set()
        await server.close()
        await journal.close()


async def test_a_token_renewal_on_a_hung_gateway_stays_inside_the_calls_budget() -> None:
    """The device token is renewed inside the call that needs it: when the gateway hangs on the session
    too, the renewal gets what is left of the call's budget, not request_timeout_s per attempt."""
    sessions: list[str] = []
    hung = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        sessions.append(request.path)
        await asyncio.wait_for(hung.wait(), HANG_S)
        return web.json_response({"error": {"code": "released"}}, status=503)

    server = await _serving(handle)
    # Unbounded, the renewal alone is 3 attempts of 4 s: far beyond the guard below.
    gateway = GatewaySettings(url=str(server.make_url("")).rstrip("/"), request_timeout_s=4.0, retry_count_max=3,
                              backoff_base_s=0.01, backoff_max_s=0.02)
    budget_s = 1.0
    try:
        async with GatewayClient(gateway, credentials=Credentials("x", "d", "s", "t", "s", "m")) as client:
            async with asyncio.timeout(budget_s + 2.5):  # the budget plus the margins of one attempt, not 12 s
                with pytest.raises((OutcomeUnknown, GatewayUnreachable)):
                    await client.find_payments("S-1", timeout_s=budget_s)
        assert sessions and set(sessions) == {"/v1/devices/sessions"}
    finally:
        hung.set()
        await server.close()
