"""Browser fixtures: the gateway on a real port it knows as its public URL, a tiny shop on another
origin (where the payer returns), and Debian's Chromium through ``gateway.demo_browser``."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import Browser

from gateway import demo_browser
from gateway.settings import Settings
from tests.conftest import make_settings
from tests.integration.conftest import serving
from tests.integration.world import World


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def gateway_port() -> int:
    return _free_port()


@pytest.fixture
def settings(gateway_port: int) -> Settings:
    return make_settings(server={"public_url": f"http://127.0.0.1:{gateway_port}"})


@pytest.fixture
async def client(clean_db: str, settings: Settings, gateway_port: int) -> AsyncIterator[TestClient]:
    async with serving(clean_db, settings, port=gateway_port) as test_client:
        yield test_client


@pytest.fixture
async def world(client: TestClient) -> World:
    return await World.create(client)


@dataclass(frozen=True)
class Shop:
    url: str  # the shop's origin, e.g. http://127.0.0.1:41234

    @property
    def return_url(self) -> str:
        return f"{self.url}/done?order=42"

    @property
    def cancel_url(self) -> str:
        return f"{self.url}/cart"


async def _done(request: web.Request) -> web.Response:
    payment = request.query.get("payment", "")
    return web.Response(text=f"<!doctype html><title>Shop</title><h1>Order paid: {payment}</h1>",
                        content_type="text/html")


async def _cart(request: web.Request) -> web.Response:
    return web.Response(text="<!doctype html><title>Shop</title><h1>Your cart</h1>", content_type="text/html")


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    app = web.Application()
    app.router.add_get("/done", _done)
    app.router.add_get("/cart", _cart)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Shop(str(server.make_url("")).rstrip("/"))
    finally:
        await server.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with demo_browser.chromium() as running:
        yield running
