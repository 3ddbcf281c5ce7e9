"""Review R18 of manual-capture discounts (migration 0031, docs/promotions.md "Manual capture"): what an
adversarial review found, each as a test that failed first, and what it tried that held."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from gateway.services.context import Services
from gateway.workers.expiry import tick
from tests.conftest import make_settings
from tests.integration.test_manual_capture_discounts import _authorized, _capture, _held, _lapse, _sound, _spent
from tests.integration.test_promotions import _campaign
from tests.integration.world import Merchant, World


async def _raw(world: World, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    resp = await world.client.request(method, path, **kw)
    return resp.status, await resp.json()


async def _cap(world: World, m: Merchant, pid: str, amount: int | None = None,
               key: str | None = None) -> tuple[int, Any]:
    body = {} if amount is None else {"amount_to_capture": amount}
    return await _raw(world, "POST", f"/v1/payments/{pid}/capture",
                      headers={**m.headers, "Idempotency-Key": key or uuid.uuid4().hex}, json=body)


async def test_a_partial_capture_shows_what_the_holder_paid(world: World, clean_db: str) -> None:
    """R18-1: a partial capture's discount view said the holder paid amount - kept share (950 of a 1,000
    authorisation captured 500 keeping 50) although the wallet paid 450; merchant-funded: 2,902 for 901."""
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=10_000)
    await _campaign(world, percent_bps=1_000, merchants=[m.id])
    p = await _authorized(world, m, h, 1_000)
    assert p["discount"]["amount_paid_by_holder"] == 900  # open: what the wallet holds
    got = await _capture(world, m, p["id"], 500)
    assert got["discount"]["amount"] == 50 and await world.available(h) == 10_000 - 450
    assert got["discount"]["amount_paid_by_holder"] == 450
    seen = await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers)
    assert seen["discount"]["amount_paid_by_holder"] == 450
    other = await world.merchant("Other shop", fee_bps=100)
    await _campaign(world, rule="fixed", percent_bps=0, fixed_amount=300, funded_by="merchant",
                    merchants=[other.id])
    q = await _authorized(world, other, h, 3_001)
    got = await _capture(world, other, q["id"], 1_000)
    assert got["amount_received"] == 901 and got["discount"]["amount_paid_by_holder"] == 901
    at_once = await world.payment(other, 2_000)  # at once, merchant-funded: unchanged, amount - discount
    paid = await world.pay(h, at_once["id"])
    assert paid["discount"]["amount_paid_by_holder"] == 2_000 - 300
    await _sound(clean_db)
