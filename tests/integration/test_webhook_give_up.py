"""The ends of the retry schedule, on a short clock: a delivery is failed once its retry window has
passed, and an endpoint whose deliveries keep failing is disabled with a ``webhook_endpoint.disabled``
event (3 and 5 days by default; seconds here)."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp.test_utils import TestClient

from gateway.settings import Settings
from tests.conftest import make_settings
from tests.integration.test_webhooks import FAST, Receiver, endpoint, live_client, receiver  # noqa: F401
from tests.integration.world import World

WINDOW_S = 1.5
DISABLE_AFTER_S = 2.5


@pytest.fixture
def settings() -> Settings:
    return make_settings(webhooks={**FAST, "retry_window_s": WINDOW_S, "disable_after_s": DISABLE_AFTER_S})


@pytest.fixture
async def world(live_client: TestClient) -> World:  # noqa: F811
    return await World.create(live_client)


async def _deliveries(world: World, headers: dict[str, str], endpoint_id: str) -> list[dict[str, object]]:
    body = await world.call("GET", f"/v1/webhook_endpoints/{endpoint_id}/deliveries", headers=headers,
                            params={"limit": "100"})
    return list(body["data"])


async def test_retries_stop_after_the_window_and_a_failing_endpoint_is_disabled(
    world: World, receiver: Receiver  # noqa: F811
) -> None:
    receiver.mode = "fail"
    m = await world.merchant()
    hook = await endpoint(world, m, receiver.url, ["payment.created"])
    await world.payment(m, 100)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = await _deliveries(world, m.headers, hook["id"])
        if found and found[0]["status"] == "failed":
            break
        await asyncio.sleep(0.2)
    [first] = await _deliveries(world, m.headers, hook["id"])
    assert first["status"] == "failed" and int(str(first["attempt_count"])) >= 2, first
    attempts = int(str(first["attempt_count"]))
    await asyncio.sleep(0.6)
    [still] = await _deliveries(world, m.headers, hook["id"])
    assert still["attempt_count"] == attempts  # no attempt after the delivery was failed

    while time.monotonic() < deadline:  # keep failing past disable_after_s: the endpoint is disabled
        await world.payment(m, 100)
        shown = await world.call("GET", f"/v1/webhook_endpoints/{hook['id']}", headers=m.headers)
        if shown["status"] == "disabled":
            break
        await asyncio.sleep(0.5)
    assert shown["status"] == "disabled" and shown["disabled_reason"], shown
    events = await world.call("GET", "/v1/events", headers=m.headers, params={"type": "webhook_endpoint.disabled"})
    assert [e["data"]["object"]["id"] for e in events["data"]] == [hook["id"]]
