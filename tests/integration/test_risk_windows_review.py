"""Adversarial review of the risk velocity windows (Redis and the PostgreSQL fallback): a payment the rules
allow is counted in every window of its velocity rules, the same whether Redis or PostgreSQL counts it."""

from __future__ import annotations

import pytest

from tests.integration.test_risk_decisions import PIN, _paid, _pay, _rule, redis_down_world  # noqa: F401
from tests.integration.world import World

pytestmark = pytest.mark.asyncio


async def _step_up_then_decline(world: World) -> None:
    """A velocity rule asking for the PIN past 1 payment, another declining past 3: every payment allowed
    (with the PIN past the first) counts towards the decline; the 4th is declined."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": PIN})
    await _rule(world, kind="velocity_wallet", window_s=3600, max_count=1, outcome="require_pin")
    await _rule(world, kind="velocity_wallet", window_s=3600, max_count=3, outcome="decline")
    assert (await _paid(world, m, h, 100))["status"] == "succeeded"
    pid = (await world.payment(m, 100))["id"]
    assert (await _pay(world, h, pid, 402))["error"]["code"] == "pin_required"
    assert (await _pay(world, h, pid, pin=PIN))["status"] == "succeeded"
    assert (await _paid(world, m, h, 100, pin=PIN))["status"] == "succeeded"
    fourth = await _paid(world, m, h, 100, 402, pin=PIN)
    assert fourth["error"]["code"] == "risk_declined"
    assert await world.available(h) == 9_700


async def test_a_payment_past_a_step_up_limit_still_counts_towards_a_decline_in_redis(world: World) -> None:
    await _step_up_then_decline(world)


async def test_a_payment_past_a_step_up_limit_still_counts_towards_a_decline_without_redis(
        redis_down_world: World) -> None:  # noqa: F811
    await _step_up_then_decline(redis_down_world)
