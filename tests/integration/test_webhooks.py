"""Events and webhooks over real HTTP: the gateway's own worker delivering to a receiver on 127.0.0.1,
signatures checked by the standardwebhooks and stripe libraries, unchanged."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
import standardwebhooks
import stripe
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.settings import Settings
from gateway.workers.webhooks import PolicyResolver
from tests.conftest import make_settings
from tests.integration.conftest import serving
from tests.integration.world import Merchant, World

FAST = {"timeout_s": 1.0, "lease_margin_s": 1.0, "poll_interval_s": 0.2, "backoff_base_s": 0.1,
        "backoff_max_s": 0.4, "endpoint_concurrency_max": 2}


@dataclass
class Receiver:
    """An aiohttp server on 127.0.0.1 that records what it gets; ``mode`` says how it answers."""

    port: int
    mode: str = "ok"  # ok | fail | hang
    got: list[tuple[dict[str, str], bytes, float]] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            body = await request.read()
            if self.mode == "hang":
                await asyncio.sleep(60)
            if self.mode == "fail":
                return web.Response(status=503, text="down for maintenance")
            async with self.changed:
                self.got.append((dict(request.headers), body, time.monotonic()))
                self.changed.notify_all()
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def types(self) -> list[str]:
        return [standardwebhooks.Webhook.__name__ and _json(b)["type"] for _, b, _ in self.got]

    async def wait_for(self, check: Callable[[Receiver], bool], timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s), self.changed:
            await self.changed.wait_for(lambda: check(self))


def _json(body: bytes) -> Any:
    import json
    return json.loads(body)


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def settings() -> Settings:
    return make_settings(webhooks=FAST)


@pytest.fixture
async def live_client(clean_db: str, settings: Settings) -> AsyncIterator[TestClient]:
    """The app WITH its background workers (the delivery loop), over real HTTP."""
    async with serving(clean_db, settings, workers=True) as test_client:
        yield test_client


@pytest.fixture
async def world(live_client: TestClient) -> World:
    return await World.create(live_client)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(_port())
    await r.start()
    yield r
    await r.stop()


async def endpoint(world: World, m: Merchant, url: str, events: list[str] | None = None, **extra: Any) -> Any:
    return await world.call("POST", "/v1/webhook_endpoints", 201, headers=m.headers,
                            json={"url": url, "enabled_events": events or ["*"], **extra})


async def paid_payment(world: World, m: Merchant, amount: int = 1200) -> str:
    holder = await world.holder(top_up=amount)
    payment = await world.payment(m, amount)
    await world.pay(holder, payment["id"])
    return str(payment["id"])


def verify_both(headers: dict[str, str], body: bytes, secret: str) -> None:
    standardwebhooks.Webhook(secret).verify(body, headers)
    stripe.Webhook.construct_event(body.decode(), headers["Wallet-Signature"], secret)


async def test_events_are_delivered_and_verified_by_both_libraries(world: World, receiver: Receiver) -> None:
    m = await world.merchant()
    created = await endpoint(world, m, receiver.url, ["payment.created", "payment.succeeded"], description="shop")
    secret = created["secret"]
    assert secret.startswith("whsec_") and created["enabled_events"] == ["payment.created", "payment.succeeded"]
    assert (await world.call("GET", f"/v1/webhook_endpoints/{created['id']}", headers=m.headers))["secret"] is None
    payment_id = await paid_payment(world, m)
    await receiver.wait_for(lambda r: len(r.got) >= 2)
    for headers, body, _ in receiver.got:
        verify_both(headers, body, secret)
        event = _json(body)
        assert headers["webhook-id"] == event["id"] and event["object"] == "event"
        assert event["data"]["object"]["id"] == payment_id and isinstance(event["created"], int)
    assert sorted(receiver.types()) == ["payment.created", "payment.succeeded"]
    await asyncio.sleep(0.3)
    deliveries = await world.call("GET", f"/v1/webhook_endpoints/{created['id']}/deliveries", headers=m.headers)
    assert {d["status"] for d in deliveries["data"]} == {"succeeded"}
    attempt = deliveries["data"][0]["attempts"][0]
    assert attempt["status_code"] == 200 and attempt["response_excerpt"] == "ok" and attempt["latency_ms"] >= 0


async def test_the_secret_is_never_stored_in_clear_and_a_replay_omits_it(world: World, receiver: Receiver,
                                                                         clean_db: str) -> None:
    m = await world.merchant()
    headers = {**m.headers, "Idempotency-Key": "create-hook-1"}
    body = {"url": receiver.url, "enabled_events": ["*"]}
    first = await world.call("POST", "/v1/webhook_endpoints", 201, headers=headers, json=body)
    again = await world.call("POST", "/v1/webhook_endpoints", 201, headers=headers, json=body)
    assert again["id"] == first["id"] and again["secret"] is None and first["secret"]
    rotated = await world.call("POST", f"/v1/webhook_endpoints/{first['id']}/rotate_secret", headers=m.headers,
                               json={})
    conn = await asyncpg.connect(clean_db)
    try:
        for table in ("webhook_endpoints", "idempotency_keys"):
            dump = await conn.fetchval(f"SELECT string_agg(t::text, ' ') FROM {table} t")
            for secret in (first["secret"], rotated["secret"]):
                assert secret not in (dump or "") and secret.removeprefix("whsec_") not in (dump or "")
    finally:
        await conn.close()


async def test_receiver_down_then_up_gets_everything(world: World) -> None:
    down = Receiver(_port())
    m = await world.merchant()
    hook = await endpoint(world, m, down.url)
    ids = [await paid_payment(world, m) for _ in range(3)]
    await asyncio.sleep(1.0)  # several attempts fail: nothing listens
    await down.start()
    try:
        await down.wait_for(lambda r: len({h["webhook-id"] for h, _, _ in r.got}) >= 6, timeout_s=15)
        objects = {_json(b)["data"]["object"]["id"] for _, b, _ in down.got}
        assert objects == set(ids)
        for headers, body, _ in down.got:
            verify_both(headers, body, hook["secret"])
        await asyncio.sleep(0.3)
        deliveries = await world.call("GET", f"/v1/webhook_endpoints/{hook['id']}/deliveries", headers=m.headers,
                                      params={"limit": "100"})
        assert all(d["status"] == "succeeded" for d in deliveries["data"])
        assert any(d["attempt_count"] > 1 and d["attempts"][-1]["status_code"] is None for d in deliveries["data"])
    finally:
        await down.stop()


async def test_a_failing_receiver_is_retried_with_its_answers_recorded(world: World, receiver: Receiver) -> None:
    receiver.mode = "fail"
    m = await world.merchant()
    hook = await endpoint(world, m, receiver.url, ["payment.created"])
    await world.payment(m, 100)
    await asyncio.sleep(1.2)
    receiver.mode = "ok"
    await receiver.wait_for(lambda r: len(r.got) == 1)
    await asyncio.sleep(0.3)
    [delivery] = (await world.call("GET", f"/v1/webhook_endpoints/{hook['id']}/deliveries", headers=m.headers))["data"]
    assert delivery["status"] == "succeeded" and delivery["attempt_count"] >= 2
    assert delivery["attempts"][-1]["status_code"] == 503
    assert delivery["attempts"][-1]["response_excerpt"] == "down for maintenance"


async def test_a_hanging_receiver_does_not_delay_another_endpoint(world: World, receiver: Receiver) -> None:
    hanging = Receiver(_port(), mode="hang")
    await hanging.start()
    try:
        m = await world.merchant()
        await endpoint(world, m, hanging.url)
        await endpoint(world, m, receiver.url)
        started = time.monotonic()
        for _ in range(4):
            await world.payment(m, 100)
        await receiver.wait_for(lambda r: len(r.got) >= 4, timeout_s=5)
        assert time.monotonic() - started < 3.0, "the healthy endpoint waited for the hanging one"
    finally:
        await hanging.stop()


async def test_a_redelivery_carries_the_same_webhook_id(world: World, receiver: Receiver) -> None:
    m = await world.merchant()
    hook = await endpoint(world, m, receiver.url, ["payment.created"])
    await world.payment(m, 100)
    await receiver.wait_for(lambda r: len(r.got) == 1)
    event_id = receiver.got[0][0]["webhook-id"]
    await world.call("POST", f"/v1/events/{event_id}/redeliver", headers=m.headers, json={"endpoint": hook["id"]})
    await receiver.wait_for(lambda r: len(r.got) == 2)
    assert receiver.got[1][0]["webhook-id"] == event_id  # a receiver dedupes on it
    verify_both(receiver.got[1][0], receiver.got[1][1], hook["secret"])


async def test_rotation_both_secrets_sign_during_the_overlap_then_only_the_new(world: World,
                                                                              receiver: Receiver) -> None:
    m = await world.merchant()
    hook = await endpoint(world, m, receiver.url, ["payment.created"])
    old = hook["secret"]
    rotated = await world.call("POST", f"/v1/webhook_endpoints/{hook['id']}/rotate_secret", headers=m.headers,
                               json={"expires_in": 2})
    new = rotated["secret"]
    assert new != old and rotated["previous_secret_expires_at"]
    await world.payment(m, 100)
    await receiver.wait_for(lambda r: len(r.got) == 1)
    headers, body, _ = receiver.got[0]
    verify_both(headers, body, old)
    verify_both(headers, body, new)
    await asyncio.sleep(2.2)
    await world.payment(m, 100)
    await receiver.wait_for(lambda r: len(r.got) == 2)
    headers, body, _ = receiver.got[1]
    verify_both(headers, body, new)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(old).verify(body, headers)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.decode(), headers["Wallet-Signature"], old)


async def test_endpoint_crud_and_disable(world: World, receiver: Receiver) -> None:
    m = await world.merchant()
    hook = await endpoint(world, m, receiver.url, ["payment.created"])
    path = f"/v1/webhook_endpoints/{hook['id']}"
    updated = await world.call("POST", path, headers=m.headers, json={"disabled": True, "description": "paused"})
    assert updated["status"] == "disabled" and updated["description"] == "paused"
    await world.payment(m, 100)
    await asyncio.sleep(0.5)
    assert receiver.got == []
    listed = await world.call("GET", "/v1/webhook_endpoints", headers=m.headers)
    assert [e["id"] for e in listed["data"]] == [hook["id"]]
    await world.call("POST", path, headers=m.headers, json={"enabled_events": ["bogus.event"]}, expect=400)
    assert (await world.call("DELETE", path, headers=m.headers))["deleted"] is True
    await world.call("GET", path, headers=m.headers, expect=404)


async def test_another_merchants_endpoint_event_and_deliveries_are_404(world: World, receiver: Receiver) -> None:
    a, b = await world.merchant("A"), await world.merchant("B")
    hook = await endpoint(world, a, receiver.url, ["payment.created"])
    await world.payment(a, 100)
    await receiver.wait_for(lambda r: len(r.got) == 1)
    event_id = receiver.got[0][0]["webhook-id"]
    for method, path, body in (
        ("GET", f"/v1/webhook_endpoints/{hook['id']}", None),
        ("GET", f"/v1/webhook_endpoints/{hook['id']}/deliveries", None),
        ("POST", f"/v1/webhook_endpoints/{hook['id']}", {"description": "x"}),
        ("POST", f"/v1/webhook_endpoints/{hook['id']}/rotate_secret", {}),
        ("DELETE", f"/v1/webhook_endpoints/{hook['id']}", None),
        ("GET", f"/v1/events/{event_id}", None),
        ("POST", f"/v1/events/{event_id}/redeliver", {}),
    ):
        await world.call(method, path, 404, headers=b.headers, **({"json": body} if body is not None else {}))
    b_events = (await world.call("GET", "/v1/events", headers=b.headers))["data"]
    assert {e["type"] for e in b_events} == {"merchant.created", "store.created", "api_key.created"}  # B's own only


async def test_a_declined_pay_is_one_payment_failed_event_even_when_retried(world: World) -> None:
    m = await world.merchant()
    holder = await world.holder(top_up=100)
    payment = await world.payment(m, 5000)
    for _ in range(2):
        await world.pay(holder, payment["id"], expect=402, key="pay-once")
    await world.pay(holder, payment["id"], expect=402)  # no key: its own event
    failed = await world.call("GET", "/v1/events", headers=m.headers, params={"type": "payment.failed"})
    assert len(failed["data"]) == 2
    obj = failed["data"][0]["data"]["object"]
    assert obj["id"] == payment["id"] and obj["last_payment_error"]["code"] == "insufficient_funds"
    assert obj["status"] == "requires_payment_method"


async def test_event_filters_and_pagination(world: World) -> None:
    m = await world.merchant()
    for _ in range(3):
        await world.payment(m, 100)
    created = await world.call("GET", "/v1/events", headers=m.headers, params={"type": "payment.created", "limit": "2"})
    assert len(created["data"]) == 2 and created["has_more"]
    rest = await world.call("GET", "/v1/events", headers=m.headers,
                            params={"type": "payment.*", "starting_after": created["data"][1]["id"]})
    assert len(rest["data"]) == 1 and not rest["has_more"]
    back = await world.call("GET", "/v1/events", headers=m.headers,
                            params={"type": "payment.created", "ending_before": rest["data"][0]["id"]})
    assert [e["id"] for e in back["data"]] == [e["id"] for e in created["data"]]
    one = await world.call("GET", f"/v1/events/{rest['data'][0]['id']}", headers=m.headers)
    assert one == rest["data"][0]
    t = one["created"]
    assert len((await world.call("GET", "/v1/events", headers=m.headers,
                                 params={"created[gte]": str(t + 3600)}))["data"]) == 0
    assert len((await world.call("GET", "/v1/events", headers=m.headers,
                                 params={"created[lt]": str(t + 3600), "limit": "100"}))["data"]) == 7  # 3 + 4 audit
    spec = await world.call("GET", "/openapi.json")
    names = {p["name"] for p in spec["paths"]["/v1/events"]["get"]["parameters"]}
    assert {"created[gte]", "created[lt]", "type"} <= names


def _live_settings() -> Settings:
    return make_settings(
        webhooks=FAST, issuer={"imk_hex": ""},
        auth={"key_mode": "live", "jwt_keys": f"k1:{secrets.token_hex(32)}", "jwt_active_kid": "k1",
              "api_key_pepper": secrets.token_hex(24)},
        settlement={"debtor_name": "Example Wallet Payments Co", "debtor_account": "CN1201020000001234567890",
                    "debtor_bic": "ICBKCNBJ"},
    )


@pytest.mark.parametrize("settings", [_live_settings()])
async def test_live_mode_refuses_non_public_urls(world: World, settings: Settings) -> None:
    m = await world.merchant()
    for url in ("http://shop.example/hook", "https://127.0.0.1/hook", "https://169.254.169.254/latest/meta-data",
                "https://10.0.0.8/hook", "https://[fd00::1]/hook", "https://[fe80::1]/hook", "https://localhost/hook",
                "https://0.0.0.0/hook"):
        body = await world.call("POST", "/v1/webhook_endpoints", 400, headers=m.headers,
                                json={"url": url, "enabled_events": ["*"]})
        assert body["error"]["code"] == "url_not_allowed", url
    await endpoint(world, m, "https://shop.example/hook")


async def test_delivery_time_resolution_drops_non_public_addresses() -> None:
    with pytest.raises(OSError):
        await PolicyResolver(live=True).resolve("localhost", 443)
    assert await PolicyResolver(live=False).resolve("localhost", 443)
