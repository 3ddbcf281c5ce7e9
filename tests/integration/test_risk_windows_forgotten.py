"""A disabled velocity rule's windows leave Redis (``services.risk.disable``, ``Accelerator.forget``): a
rule is never enabled again, so its windows would only sit in memory until their TTL (an hour's window of
a busy merchant holds every payment of that hour). They go ``FORGET_AFTER_S`` after the disable, when no
process charges them any more; another rule's windows stay."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from gateway.accel import Accelerator
from gateway.domain.ids import Kind, decode
from gateway.services import risk_cache
from gateway.settings import RedisSettings
from tests.conftest import TEST_REDIS_URL
from tests.integration.test_risk_at_once import _by_batch, _window_size
from tests.integration.test_risk_decisions import _rule
from tests.integration.world import World, auth

pytestmark = pytest.mark.asyncio


async def _keys(rule: dict[str, object]) -> list[bytes]:
    rid = decode(Kind.RISK_RULE, str(rule["id"]))
    assert rid is not None
    r = aioredis.from_url(TEST_REDIS_URL)
    try:
        return [k async for k in r.scan_iter(match=f"risk:w:{rid.hex}:*")]
    finally:
        await r.aclose()


async def test_a_disabled_velocity_rule_leaves_no_window_and_the_others_stay(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # Long enough that a slow host's request and scan cannot outlast it (CI saw 0.2 s pass), short for a test.
    monkeypatch.setattr(risk_cache, "FORGET_AFTER_S", 2.0)
    m = await world.merchant()
    device = f"dev-{uuid.uuid4().hex[:8]}"
    holders = [await world.holder(top_up=10_000, device_id=device) for _ in range(3)]
    gone = await _rule(world, kind="velocity_wallet", window_s=3600, max_count=100)
    kept = await _rule(world, kind="velocity_device", window_s=3600, max_count=100)
    for h in holders:
        await _by_batch(world, m, h, 100)
    assert len(await _keys(gone)) == 3 and await _window_size(kept, device) == 3
    r = await world.client.post(f"/v1/operator/risk_rules/{gone['id']}/disable", json={},
                                headers={**auth(world.operator_token), "Idempotency-Key": str(uuid.uuid4())})
    assert r.status == 200
    assert len(await _keys(gone)) == 3  # not at once: another process may still charge them for a moment
    for _ in range(300):
        if not await _keys(gone):
            break
        await asyncio.sleep(0.05)
    assert await _keys(gone) == []
    assert await _window_size(kept, device) == 3
    await _by_batch(world, m, holders[0], 100)  # the disabled rule counts nothing any more
    assert await _keys(gone) == [] and await _window_size(kept, device) == 4


async def test_forget_removes_what_matches_in_batches_and_answers_none_without_redis(
        monkeypatch: pytest.MonkeyPatch) -> None:
    a = Accelerator(RedisSettings(url=TEST_REDIS_URL, timeout_s=5.0))
    prefix = f"risk:w:test-forget:{uuid.uuid4().hex}:"
    monkeypatch.setattr("gateway.accel.FORGET_BATCH", 7)
    try:
        for n in range(30):
            await a.set(f"{prefix}{n}", b"x", 60)
        await a.set(f"{prefix[:-1]}-other", b"y", 60)
        assert await a.forget(f"{prefix}*") == 30
        assert await a.get(f"{prefix}0") is None and await a.get(f"{prefix[:-1]}-other") == b"y"
        assert await a.forget(f"{prefix}*") == 0
    finally:
        await a.close()
    gone = Accelerator(RedisSettings(url="redis://127.0.0.1:9/0", timeout_s=0.2, backoff_s=30))
    try:
        assert await gone.forget("risk:w:*") is None
    finally:
        await gone.close()
