"""The aiohttp application: ``create_app(settings)``; pools and workers live in ``cleanup_ctx``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import metadata

from aiohttp import web

from gateway import metrics
from gateway.api import (  # noqa: F401  (registers endpoints)
    admin, checkout, cors, devices, fx, payments, promotions, reconciliation, risk, settlement, sign_in, spending, system,
    wallet, webhooks,
)
from gateway.api.middlewares import observe
from gateway.api.routing import SERVICES, api
from gateway.services.context import Services
from gateway.settings import Settings
from gateway.web import checkout as web_checkout
from gateway.web import console as web_console
from gateway.workers import running, sending_codes


def create_app(settings: Settings, *, workers: bool = True) -> web.Application:
    app = web.Application(middlewares=[observe], client_max_size=settings.server.body_max_bytes)
    api.install(app)
    cors.install(app, cors.browser_paths(api, also=[checkout.STATUS_PATH]))
    web_checkout.install(app)
    web_console.install(app)

    async def services(app: web.Application) -> AsyncIterator[None]:
        # At start-up, in the process that serves (not in a parent that forks it).
        metrics.announce_build(metadata.version("wallet-gateway"), settings.auth.key_mode)
        svc = await Services.start(settings)
        app[SERVICES] = svc
        async with (svc.api_keys.listening_while(settings.database.url),  # the API key cache's push channel
                    svc.campaigns.refreshing(svc.db, svc.now),  # the live promotion campaigns
                    svc.risk_rules.refreshing(svc.db)):  # whether any risk rule is active
            assert svc.revocations is not None
            async with svc.revocations.listening_while(settings.database.url):  # revoked wallet sessions, pushed
                yield
        await svc.stop()

    app.cleanup_ctx.append(services)
    if workers:
        async def background(app: web.Application) -> AsyncIterator[None]:
            async with running(app[SERVICES]):  # the loops get the services, not the app
                yield

        app.cleanup_ctx.append(background)
    else:
        async def codes(app: web.Application) -> AsyncIterator[None]:
            async with sending_codes(app[SERVICES]):
                yield

        app.cleanup_ctx.append(codes)
    return app
