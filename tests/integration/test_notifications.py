"""Holder notifications over real HTTP: listing, cursors, unread, marking read, isolation; and the push
worker delivering to a real aiohttp receiver on 127.0.0.1 (one that fails first, one that always fails,
one that hangs while the gateway stops), at least once with the same id."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from gateway.domain.ids import Kind, decode
from gateway.services import notifications
from gateway.services.context import Services
from gateway.settings import Settings
from tests.conftest import make_settings
from tests.integration.conftest import serving
from tests.integration.world import Holder, World


@dataclass
class Receiver:
    """A push service on 127.0.0.1: answers each POST with the next status of ``script`` (then 200),
    ``hang`` = never answers; records every request it got."""

    port: int
    script: list[int | str] = field(default_factory=list)
    got: list[tuple[dict[str, str], dict[str, Any], float]] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/push"

    async def start(self) -> None:
        async def push(request: web.Request) -> web.Response:
            self.got.append((dict(request.headers), json.loads(await request.read()), time.monotonic()))
            answer = self.script.pop(0) if self.script else 200
            if answer == "hang":
                await asyncio.sleep(60)
            return web.Response(status=int(answer), text="ok" if answer == 200 else "no")

        app = web.Application()
        app.router.add_post("/push", push)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def ids(self) -> list[str]:
        return [headers["Notification-Id"] for headers, _, _ in self.got]

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.got) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.02)


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(_port())
    await r.start()
    yield r
    await r.stop()


def push_settings(url: str, **extra: object) -> Settings:
    return make_settings(notifications={
        "push_url": url, "push_timeout_s": 1.0, "push_lease_margin_s": 0.3, "push_poll_interval_s": 0.05,
        "push_backoff_base_s": 0.05, "push_backoff_max_s": 0.2, "push_attempts_max": 5, **extra})


@pytest.fixture
async def svc(settings: Settings, clean_db: str) -> AsyncIterator[Services]:
    """The same services a use case of the app gets, for writing notifications as other use cases do."""
    services = await Services.start(settings)
    yield services
    await services.stop()


async def notify(svc: Services, h: Holder, kind: str = "risk.alert", **data: Any) -> str:
    holder_id = decode(Kind.WALLET_HOLDER, h.id)
    assert holder_id is not None
    async with svc.db.connection() as conn, conn.transaction():
        notification_id = await notifications.notify(svc, conn, holder_id, kind, data)
    return f"ntf_{notification_id.hex}"


async def push_state(url: str, public_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT push_status, push_attempts, pushed_at, push_error FROM notifications WHERE id = $1",
            uuid.UUID(public_id.removeprefix("ntf_")))
        assert row is not None
        return row
    finally:
        await conn.close()


async def wait_state(url: str, public_id: str, status: str, timeout_s: float = 10.0) -> asyncpg.Record:
    deadline = time.monotonic() + timeout_s
    while True:
        row = await push_state(url, public_id)
        if row["push_status"] == status or time.monotonic() > deadline:
            return row
        await asyncio.sleep(0.02)


async def test_listing_is_newest_first_paginated_and_filters_unread(world: World, svc: Services) -> None:
    h = await world.holder()
    made = [await notify(svc, h, n=i) for i in range(5)]
    page = await world.call("GET", "/v1/wallet/notifications", headers=h.headers)
    assert [n["id"] for n in page["data"]] == made[::-1] and not page["has_more"]
    first = page["data"][0]
    assert first["object"] == "notification" and first["kind"] == "risk.alert" and first["data"] == {"n": 4}
    assert first["read_at"] is None
    one = await world.call("GET", "/v1/wallet/notifications?limit=2", headers=h.headers)
    assert [n["id"] for n in one["data"]] == [made[4], made[3]] and one["has_more"]
    two = await world.call("GET", f"/v1/wallet/notifications?limit=2&starting_after={made[3]}", headers=h.headers)
    assert [n["id"] for n in two["data"]] == [made[2], made[1]] and two["has_more"]
    back = await world.call("GET", f"/v1/wallet/notifications?limit=2&ending_before={made[2]}", headers=h.headers)
    assert [n["id"] for n in back["data"]] == [made[4], made[3]]
    read = await world.call("POST", f"/v1/wallet/notifications/{made[3]}/read", headers=h.headers)
    assert read["id"] == made[3] and read["read_at"] is not None
    await world.call("POST", f"/v1/wallet/notifications/{made[1]}/read", headers=h.headers)
    unread = await world.call("GET", "/v1/wallet/notifications?unread=true", headers=h.headers)
    assert [n["id"] for n in unread["data"]] == [made[4], made[2], made[0]]
    every = await world.call("GET", "/v1/wallet/notifications?unread=false", headers=h.headers)
    assert len(every["data"]) == 5


async def test_marking_read_is_idempotent(world: World, svc: Services) -> None:
    h = await world.holder()
    made = await notify(svc, h)
    first = await world.call("POST", f"/v1/wallet/notifications/{made}/read", headers=h.headers)
    await asyncio.sleep(0.01)
    again = await world.call("POST", f"/v1/wallet/notifications/{made}/read", headers=h.headers)
    assert again == first  # the first read_at is kept
    keyed = {**h.headers, "Idempotency-Key": str(uuid.uuid4())}
    resp = await world.client.post(f"/v1/wallet/notifications/{made}/read", headers=keyed)
    replay = await world.client.post(f"/v1/wallet/notifications/{made}/read", headers=keyed)
    assert await replay.read() == await resp.read() and replay.headers.get("Idempotent-Replayed") == "true"


async def test_another_holder_gets_404_and_sees_nothing(world: World, svc: Services) -> None:
    a, b = await world.holder(), await world.holder()
    mine = await notify(svc, a)
    error = await world.call("POST", f"/v1/wallet/notifications/{mine}/read", 404, headers=b.headers)
    assert (error["error"]["code"], error["error"]["param"]) == ("resource_missing", "id")
    await world.call("POST", "/v1/wallet/notifications/ntf_nonsense/read", 404, headers=b.headers)
    assert (await world.call("GET", "/v1/wallet/notifications", headers=b.headers))["data"] == []
    bad = await world.call("GET", f"/v1/wallet/notifications?starting_after={mine}", 400, headers=b.headers)
    assert (bad["error"]["code"], bad["error"]["param"]) == ("invalid_cursor", "starting_after")
    still = (await world.call("GET", "/v1/wallet/notifications", headers=a.headers))["data"]
    assert [(n["id"], n["read_at"]) for n in still] == [(mine, None)]


async def test_without_a_push_hook_notifications_are_only_listed(clean_db: str) -> None:
    settings = make_settings()
    assert settings.notifications.push_url == ""
    async with serving(clean_db, settings, workers=True) as client:
        world = await World.create(client)
        h = await world.holder()
        services = await Services.start(settings)
        try:
            made = await notify(services, h)
        finally:
            await services.stop()
        await asyncio.sleep(0.2)
        row = await push_state(clean_db, made)
        assert (row["push_status"], row["push_attempts"], row["pushed_at"]) == ("none", 0, None)
        assert len((await world.call("GET", "/v1/wallet/notifications", headers=h.headers))["data"]) == 1


async def test_each_notification_is_pushed_with_its_id(clean_db: str, receiver: Receiver) -> None:
    settings = push_settings(receiver.url)
    async with serving(clean_db, settings, workers=True) as client:
        world = await World.create(client)
        h = await world.holder()
        services = await Services.start(settings)
        try:
            started = time.monotonic()
            made = [await notify(services, h, "risk.alert", amount=120_000, currency="CNY"), await notify(services, h)]
            await receiver.wait_for(2)
        finally:
            await services.stop()
        assert sorted(receiver.ids()) == sorted(made)
        for headers, body, at in receiver.got:
            assert headers["Notification-Id"] == body["id"] == headers["Idempotency-Key"]
            assert body["holder"] == h.id and body["object"] == "notification" and body["kind"] == "risk.alert"
            assert headers["Content-Type"] == "application/json"
            assert at - started < 1.5
        assert receiver.got[[b["id"] for _, b, _ in receiver.got].index(made[0])][1]["data"] == {
            "amount": 120_000, "currency": "CNY"}
        for public_id in made:
            row = await wait_state(clean_db, public_id, "pushed")
            assert (row["push_status"], row["push_attempts"], row["push_error"]) == ("pushed", 1, None)
            assert row["pushed_at"] is not None
        await asyncio.sleep(0.3)
        assert len(receiver.got) == 2  # nothing pushed twice


async def test_a_receiver_that_fails_first_gets_it_again_with_the_same_id(clean_db: str, receiver: Receiver) -> None:
    receiver.script = [503, 500]
    settings = push_settings(receiver.url)
    async with serving(clean_db, settings, workers=True) as client:
        world = await World.create(client)
        h = await world.holder()
        services = await Services.start(settings)
        try:
            made = await notify(services, h)
        finally:
            await services.stop()
        row = await wait_state(clean_db, made, "pushed")
        assert (row["push_status"], row["push_attempts"]) == ("pushed", 3)
        assert receiver.ids() == [made, made, made]
        assert [h_["Notification-Attempt"] for h_, _, _ in receiver.got] == ["1", "2", "3"]


async def test_attempts_are_bounded(clean_db: str, receiver: Receiver) -> None:
    receiver.script = [503] * 10
    settings = push_settings(receiver.url, push_attempts_max=3)
    async with serving(clean_db, settings, workers=True) as client:
        world = await World.create(client)
        h = await world.holder()
        services = await Services.start(settings)
        try:
            made = await notify(services, h)
        finally:
            await services.stop()
        row = await wait_state(clean_db, made, "failed")
        assert (row["push_status"], row["push_attempts"], row["push_error"]) == ("failed", 3, "HTTP 503")
        await asyncio.sleep(0.4)
        assert receiver.ids() == [made] * 3


async def test_a_restart_loses_nothing_and_repeats_only_an_unanswered_attempt(clean_db: str,
                                                                                receiver: Receiver) -> None:
    """Written while no worker runs: pushed once one does. A push whose attempt was under way when the
    gateway stopped is pushed again after its lease (at least once), with the same id."""
    receiver.script = ["hang"]
    settings = push_settings(receiver.url)
    async with serving(clean_db, settings, workers=False) as client:
        world = await World.create(client)
        h = await world.holder()
        services = await Services.start(settings)
        try:
            made = [await notify(services, h, n=i) for i in range(3)]
        finally:
            await services.stop()
        await asyncio.sleep(0.2)
        assert receiver.got == []
    async with serving(clean_db, settings, workers=True):
        await receiver.wait_for(3)  # the first answered hangs; the gateway stops mid-attempt
        await asyncio.sleep(0.1)
    states = {m: await push_state(clean_db, m) for m in made}
    hung = receiver.got[0][0]["Notification-Id"]
    assert {m: s["push_status"] for m, s in states.items()} == {m: "pending" if m == hung else "pushed" for m in made}
    async with serving(clean_db, settings, workers=True):
        row = await wait_state(clean_db, hung, "pushed")
    assert (row["push_status"], row["push_attempts"]) == ("pushed", 2)
    assert sorted(receiver.ids()) == sorted([*made, hung])  # each once, the unanswered one twice


async def test_a_budget_reminder_is_pushed(clean_db: str, receiver: Receiver) -> None:
    settings = push_settings(receiver.url)
    async with serving(clean_db, settings, workers=True) as client:
        world = await World.create(client)
        m = await world.merchant(mcc="5411")
        h = await world.holder(top_up=20_000)
        await world.call("POST", "/v1/wallet/budgets", 201, headers=h.headers,
                         json={"category": "groceries", "currency": "CNY", "amount": 10_000})
        payment = await world.payment(m, 8_000)
        started = time.monotonic()
        await world.pay(h, payment["id"])
        await receiver.wait_for(1)
        latency_s = time.monotonic() - started
        assert [body["kind"] for _, body, _ in receiver.got] == ["budget.reminder"]
        assert receiver.got[0][1]["data"]["threshold_percent"] == 80 and receiver.got[0][1]["holder"] == h.id
        assert latency_s < 2.0, latency_s
