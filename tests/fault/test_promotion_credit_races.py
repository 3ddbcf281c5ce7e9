"""Captures that credit cashback and first-payment gifts (their entries posted with the capture's in
one statement), bank-funded discounts and refunds that claw cashback back, raced over several
wallets at once: no deadlock (the promotions account's shards and the campaign rows are taken in
one order by all of them), every request succeeds, and the ledger invariants hold afterwards."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.fault.test_lock_order import AMOUNT, Op, Scene, deadlocks
from tests.integration.world import World

PER_KIND = 3


async def _campaign(world: World, rule: str, **terms: Any) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    await world.call("POST", "/v1/operator/campaigns", 201, headers=world.ops, json={
        "name": rule, "currency": "CNY", "rule": rule, "funded_by": "bank", "budget": 10_000_000, "time_zone": "UTC",
        "starts_at": (now - timedelta(hours=1)).isoformat(timespec="seconds"),
        "ends_at": (now + timedelta(hours=1)).isoformat(timespec="seconds"), **terms})


async def test_credits_discounts_and_clawbacks_raced_over_several_wallets(world: World, clean_db: str) -> None:
    m = await world.merchant()
    other = await world.merchant("Discounting shop")
    await _campaign(world, "cashback", percent_bps=100, merchants=[m.id])
    await _campaign(world, "gift_first_payment", fixed_amount=50, merchants=[m.id])
    await _campaign(world, "percent", percent_bps=500, merchants=[other.id])
    ops: list[Op] = []
    for _ in range(4):
        h = await world.holder(top_up=100_000)
        s, o = Scene(world, m, h, clean_db), Scene(world, other, h, clean_db)
        for _ in range(PER_KIND):
            pid = await s.unpaid()
            ops.append(lambda pid=pid, s=s, h=h: s.post(f"/v1/wallet/payments/{pid}/pay", h.headers, {}))
            held = await s.authorised()
            ops.append(lambda held=held, s=s: s.post(f"/v1/payments/{held}/capture", s.m.headers,
                                                     {"amount_to_capture": AMOUNT // 2}))
            paid = await s.paid()
            ops.append(lambda paid=paid, s=s: s.post(f"/v1/payments/{paid}/refunds", s.m.headers,
                                                     {"amount": AMOUNT // 4}))
            discounted = await o.unpaid()
            ops.append(lambda d=discounted, o=o, h=h: o.post(f"/v1/wallet/payments/{d}/pay", h.headers, {}))
    before = deadlocks()
    results = await asyncio.gather(*(op() for op in ops))
    failed = [r for r in results if r[0] not in (200, 201)]
    assert not failed, failed
    assert deadlocks() == before
    assert sum(1 for _, body in results if body.get("cashback")) == 4 * PER_KIND * 2  # the pays and captures at m
