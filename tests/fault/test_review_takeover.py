"""The take-over of a key whose original request is slow (alive, past lock_timeout_s): checked sound."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from gateway.services import payments as payment_service
from gateway.settings import Settings
from tests.conftest import make_settings
from tests.integration.world import World


@pytest.fixture
def settings() -> Settings:
    return make_settings(idempotency={"lock_timeout_s": 1})


async def test_slow_original_and_its_take_over_create_one_payment(
    world: World, clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = await world.merchant()
    real = payment_service.tenants.merchant
    calls = 0

    async def slow_first(conn: Any, merchant_id: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(1.6)  # the original stalls inside its transaction past the lock timeout
        return await real(conn, merchant_id)

    monkeypatch.setattr(payment_service.tenants, "merchant", slow_first)
    headers = {**m.headers, "Idempotency-Key": "slow-1"}
    body = {"amount": 100, "currency": "CNY"}

    async def retry_later() -> Any:
        await asyncio.sleep(1.2)
        return await world.client.post("/v1/payments", headers=headers, json=body)

    original, retry = await asyncio.gather(world.client.post("/v1/payments", headers=headers, json=body), retry_later())
    conn = await asyncpg.connect(clean_db)
    try:
        count = await conn.fetchval("SELECT count(*) FROM payments")
    finally:
        await conn.close()
    assert count == 1 and retry.status == 201, (original.status, retry.status, count)
    # The original lost its key to the retry: it answers the retry's stored answer, or a retryable 409.
    if original.status == 409:
        assert (await original.json())["error"]["code"] == "idempotency_key_in_use"
    else:
        assert (original.status, await original.read()) == (retry.status, await retry.read())
    replay = await world.client.post("/v1/payments", headers=headers, json=body)
    assert replay.status == 201 and replay.headers.get("Idempotent-Replayed") == "true"
