"""A tier lists caps for CNY only, so every other currency is uncapped (limits.py: "a currency a tier
does not list is uncapped"): a phone-only (tier 4) wallet tops up HKD without bound until the
wallet's int8 balance overflows, which surfaces as a 500. Slow-ish (~9.3k top-ups)."""

from __future__ import annotations

import asyncio

from gateway.domain.money import AMOUNT_MINOR_MAX
from tests.integration.world import World


async def test_uncapped_currency_top_ups_end_in_a_clean_refusal_not_a_500(world: World) -> None:
    h = await world.holder()
    body = {"bank_account": h.bank_account, "amount": AMOUNT_MINOR_MAX, "currency": "HKD"}
    statuses: list[int] = []
    while statuses.count(201) <= 2 ** 63 // AMOUNT_MINOR_MAX and set(statuses) <= {201, 429}:
        batch = await asyncio.gather(*(world.client.post("/v1/wallet/top_ups", headers=h.headers, json=body)
                                       for _ in range(50)))
        statuses += [r.status for r in batch]
        if 429 in statuses[-50:]:
            await asyncio.sleep(1)  # the per-principal rate limit (1000/s), not what is tested
    assert 500 not in statuses, sorted(set(statuses))
