"""The webhook-endpoint and event methods against the local fake (the server side is built in parallel;
the same calls are to run against the real gateway once it has them)."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

import pytest

from tests.client.conftest import FAKE_KEY, FAST
from tests.client.fake import FakeGateway
from wallet_client import NotFoundError, WalletClient

Fake = tuple[FakeGateway, str]


async def test_webhook_endpoint_lifecycle(fake: Fake) -> None:
    gw, url = fake
    async with WalletClient(FAKE_KEY, base_url=url, retry=FAST) as wallet:
        ep = await wallet.webhook_endpoints.create(url="https://shop.example/hooks", description="orders")
        assert ep["secret"].startswith("whsec_") and len(base64.b64decode(ep["secret"][6:])) >= 24
        post = gw.requests("POST", "/v1/webhook_endpoints")[0]
        assert post.body == {"url": "https://shop.example/hooks", "enabled_events": ["*"], "description": "orders"}
        assert post.headers["Idempotency-Key"] and post.headers["Content-Type"] == "application/json"

        got = await wallet.webhook_endpoints.retrieve(ep["id"])
        assert got["url"] == ep["url"] and "secret" not in got

        updated = await wallet.webhook_endpoints.update(ep["id"], enabled_events=["payment.succeeded"], disabled=True)
        assert updated["enabled_events"] == ["payment.succeeded"] and updated["status"] == "disabled"
        assert gw.requests("POST", f"/v1/webhook_endpoints/{ep['id']}")[0].body == {
            "enabled_events": ["payment.succeeded"], "disabled": True}

        rotated = await wallet.webhook_endpoints.rotate_secret(ep["id"])
        assert rotated["secret"].startswith("whsec_") and rotated["secret"] != ep["secret"]
        assert gw.requests("POST", f"/v1/webhook_endpoints/{ep['id']}/rotate_secret")[0].body == {}

        deleted = await wallet.webhook_endpoints.delete(ep["id"])
        assert deleted["deleted"] is True
        assert gw.requests("DELETE", f"/v1/webhook_endpoints/{ep['id']}")[0].headers["Idempotency-Key"]
        with pytest.raises(NotFoundError) as caught:
            await wallet.webhook_endpoints.retrieve(ep["id"])
        assert caught.value.code == "resource_missing" and caught.value.http_status == 404


async def test_endpoint_list_iterate_and_deliveries(fake: Fake) -> None:
    gw, url = fake
    async with WalletClient(FAKE_KEY, base_url=url, retry=FAST) as wallet:
        made = [await wallet.webhook_endpoints.create(url=f"https://shop.example/{n}") for n in range(5)]
        page = await wallet.webhook_endpoints.list(limit=2)
        assert [e["id"] for e in page.data] == [made[4]["id"], made[3]["id"]] and page.has_more
        everything = [e["id"] async for e in wallet.webhook_endpoints.iterate(page_size=2)]
        assert everything == [e["id"] for e in reversed(made)]
        assert [s.query for s in gw.requests("GET", "/v1/webhook_endpoints")][1:] == [
            {"limit": "2"}, {"limit": "2", "starting_after": made[3]["id"]},
            {"limit": "2", "starting_after": made[1]["id"]}]
        two = [e async for e in wallet.webhook_endpoints.iterate(page_size=2, max_items=3)]
        assert len(two) == 3

        deliveries = await wallet.webhook_endpoints.deliveries(made[0]["id"], limit=2)
        assert [d["id"] for d in deliveries.data] == ["whd_5", "whd_4"] and deliveries.has_more
        every = [d["id"] async for d in wallet.webhook_endpoints.iterate_deliveries(made[0]["id"], page_size=2)]
        assert every == ["whd_5", "whd_4", "whd_3", "whd_2", "whd_1"]
        with pytest.raises(NotFoundError):
            await wallet.webhook_endpoints.deliveries("we_missing")


async def test_events_filters_retrieve_and_redeliver(fake: Fake) -> None:
    gw, url = fake
    async with WalletClient(FAKE_KEY, base_url=url, retry=FAST) as wallet:
        page = await wallet.events.list(type="payment.succeeded", created_gte=1_700_000_003,
                                        created_lt=datetime.fromtimestamp(1_700_000_007, tz=timezone.utc))
        assert [e["id"] for e in page.data] == ["evt_5", "evt_3"]
        assert gw.requests("GET", "/v1/events")[0].query == {
            "type": "payment.succeeded", "created[gte]": "1700000003", "created[lt]": "1700000007"}
        with pytest.raises(ValueError):
            await wallet.events.list(created_gte=datetime(2024, 1, 1))  # naive: which zone?
        every = [e["id"] async for e in wallet.events.iterate(page_size=3)]
        assert every == [f"evt_{n}" for n in range(7, 0, -1)]

        assert (await wallet.events.retrieve("evt_4"))["type"] == "payment.created"
        again = await wallet.events.redeliver("evt_4", idempotency_key="redeliver-evt_4")
        assert again["id"] == "evt_4"
        assert gw.requests("POST", "/v1/events/evt_4/redeliver")[0].headers["Idempotency-Key"] == "redeliver-evt_4"
        with pytest.raises(NotFoundError):
            await wallet.events.retrieve("evt_404")


async def test_ids_cannot_escape_their_path(fake: Fake) -> None:
    gw, url = fake
    async with WalletClient(FAKE_KEY, base_url=url, retry=FAST) as wallet:
        # one path segment, routed to /v1/payments/{id}, not a walk up to /v1/events
        assert (await wallet.payments.retrieve("../events"))["id"] == "../events"
        with pytest.raises(ValueError):
            await wallet.payments.retrieve("")
    assert len(gw.seen) == 1
