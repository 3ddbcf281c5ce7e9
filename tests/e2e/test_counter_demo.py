"""``pos_agent.counter_demo`` against a real gateway process: the counter sale ``gateway demo``
plays, with its own agent, register, phone, display and printer.

The ``counter`` fixture provides the gateway, a merchant with a terminal and a funded wallet
holder, and checks the ledger invariants at teardown. Its own agent stays idle: the demo enrols a
second device on the same terminal, as a second checkout lane would.
"""

from __future__ import annotations

import asyncio
import time

from pos_agent.counter_demo import PHONE_DEVICE_ID, run
from tests.e2e.conftest import Counter

HOLDER_PASSWORD = "s3cret-pass"  # tests.e2e.harness.Shop.holder's
DEMO_BOUND_S = 25.0


async def test_counter_demo_sells_by_tap_and_prints_the_receipt(counter: Counter) -> None:
    before = await counter.shop.available(counter.holder)
    await counter.shop.sign_in(counter.holder.phone, PHONE_DEVICE_ID)  # the demo's phone proven with a code first
    started = time.monotonic()
    result = await asyncio.wait_for(run(counter.gateway.url, counter.shop.secret, counter.shop.terminal,
                                        counter.holder.phone, HOLDER_PASSWORD, 2_600, "CNY"), DEMO_BOUND_S)
    assert time.monotonic() - started < DEMO_BOUND_S

    register = result.register
    assert register.succeeded and register.amount_minor == 2_600 and register.currency_numeric == "156"
    assert register.report == f"tap {result.payment_id}" and result.payment_id.startswith("pay_")

    receipt = "\n".join(result.receipt_lines)
    assert "CNY 26.00" in receipt and result.payment_id in receipt and "Tap" in receipt
    assert "Best Noodles" in receipt
    assert result.display_screens[-1] == ("APPROVED".ljust(20), "CNY 26.00".rjust(20))

    assert result.payment_status == "succeeded"
    payment = await counter.api.call("GET", f"/v1/payments/{result.payment_id}", counter.shop.secret)
    assert (payment["status"], payment["amount"], payment["channel"], payment["terminal"]) == (
        "succeeded", 2_600, "tap", counter.shop.terminal)
    assert await counter.shop.available(counter.holder) == before - 2_600
    assert (result.wallet_available_before_minor, result.wallet_available_after_minor) == (before, before - 2_600)
