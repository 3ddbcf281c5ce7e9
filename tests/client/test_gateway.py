"""The client against the REAL gateway over TCP: payments, refunds, events, balance, errors, idempotency."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient

from tests.client.conftest import FAST
from tests.integration.world import Merchant, World
from wallet_client import (
    AuthenticationError,
    ConflictError,
    IdempotencyError,
    InvalidRequestError,
    NotFoundError,
    WalletClient,
)


@pytest.fixture
async def merchant(world: World) -> Merchant:
    return await world.merchant(fee_bps=100)


@pytest.fixture
async def wallet(client: TestClient, merchant: Merchant) -> AsyncIterator[WalletClient]:
    async with WalletClient(merchant.secret, base_url=str(client.server.make_url("/")), retry=FAST) as w:
        yield w


async def test_payment_paid_refunded_listed_and_balance(world: World, wallet: WalletClient) -> None:
    holder = await world.holder(top_up=10_000)
    p = await wallet.payments.create(amount=1_000, currency="CNY", merchant_reference="order-1",
                                     description="noodles")
    assert (p["status"], p["amount"], p["currency"], p["merchant_reference"]) == (
        "requires_payment_method", 1_000, "CNY", "order-1")
    await world.pay(holder, p["id"])
    assert (await wallet.payments.retrieve(p["id"]))["status"] == "succeeded"
    assert (await wallet.balance.retrieve())["balances"][0]["total"] == 990

    r1 = await wallet.refunds.create(p["id"], amount=300, reason="one bowl cold")
    assert (r1["object"], r1["amount"], r1["fee_returned"], r1["payment"]) == ("refund", 300, 3, p["id"])
    with pytest.raises(InvalidRequestError) as too_much:
        await wallet.refunds.create(p["id"], amount=701)
    assert too_much.value.code == "amount_too_large" and too_much.value.http_status == 400
    assert too_much.value.request_id and too_much.value.attempt_count == 1
    await wallet.refunds.create(p["id"])
    with pytest.raises(ConflictError) as done:
        await wallet.refunds.create(p["id"], amount=1)
    assert done.value.code == "payment_fully_refunded"
    refunds = await wallet.refunds.list(p["id"])
    assert sorted(r["amount"] for r in refunds.data) == [300, 700] and not refunds.has_more
    assert (await wallet.balance.retrieve())["balances"][0]["total"] == 0

    events = await wallet.events.list(payment=p["id"])
    types = [e["type"] for e in events.data]
    assert types[-1] == "payment.created" and "payment.succeeded" in types
    assert [e["id"] async for e in wallet.events.iterate(payment=p["id"], page_size=1)] == [
        e["id"] for e in events.data]


async def test_manual_capture_and_cancel(world: World, wallet: WalletClient) -> None:
    holder = await world.holder(top_up=10_000)
    p = await wallet.payments.create(amount=4_000, currency="CNY", capture_method="manual")
    await world.pay(holder, p["id"])
    captured = await wallet.payments.capture(p["id"], amount_to_capture=3_000)
    assert captured["status"] == "succeeded" and captured["amount_received"] == 3_000
    with pytest.raises(ConflictError) as again:
        await wallet.payments.capture(p["id"])
    assert again.value.code == "payment_not_capturable" and again.value.attempt_count == 1

    q = await wallet.payments.create(amount=800, currency="CNY", capture_method="manual")
    await world.pay(holder, q["id"])
    assert (await wallet.payments.cancel(q["id"], reason="out of stock"))["status"] == "canceled"
    assert await world.available(holder) == 10_000 - 3_000


async def test_list_pages_and_iterates_newest_first(wallet: WalletClient) -> None:
    made = [await wallet.payments.create(amount=100 + n, currency="CNY") for n in range(5)]
    newest_first = [p["id"] for p in reversed(made)]
    page = await wallet.payments.list(limit=2)
    assert [p["id"] for p in page.data] == newest_first[:2] and page.has_more
    nxt = await wallet.payments.list(limit=2, starting_after=page.last_id)
    assert [p["id"] for p in nxt.data] == newest_first[2:4]
    assert [p["id"] async for p in wallet.payments.iterate(page_size=2)] == newest_first
    assert [p["id"] async for p in wallet.payments.iterate(page_size=2, max_items=3)] == newest_first[:3]


async def test_idempotency_keys_replay_and_refuse_different_parameters(wallet: WalletClient) -> None:
    first = await wallet.payments.create(amount=500, currency="CNY", idempotency_key="order-77")
    replay = await wallet.payments.create(amount=500, currency="CNY", idempotency_key="order-77")
    assert replay == first
    with pytest.raises(IdempotencyError) as caught:
        await wallet.payments.create(amount=501, currency="CNY", idempotency_key="order-77")
    assert caught.value.http_status == 422 and caught.value.type == "idempotency_error"
    # without a key of the caller's, each call is new
    a = await wallet.payments.create(amount=500, currency="CNY")
    b = await wallet.payments.create(amount=500, currency="CNY")
    assert len({first["id"], a["id"], b["id"]}) == 3


async def test_errors_from_the_real_gateway(client: TestClient, wallet: WalletClient, world: World) -> None:
    with pytest.raises(NotFoundError) as missing:
        await wallet.payments.retrieve("pay_doesnotexist")
    assert missing.value.http_status == 404 and missing.value.request_id
    with pytest.raises(InvalidRequestError) as bad:
        await wallet.payments.create(amount=-5, currency="CNY")
    assert bad.value.param == "amount" and bad.value.attempt_count == 1
    other = await world.merchant(name="Other shop")
    theirs = await world.payment(other, 100)
    with pytest.raises(NotFoundError):
        await wallet.payments.retrieve(theirs["id"])
    async with WalletClient("sk_test_not_a_key", base_url=str(client.server.make_url("/")), retry=FAST) as bad_key:
        with pytest.raises(AuthenticationError) as unauth:
            await bad_key.balance.retrieve()
    assert unauth.value.http_status == 401 and unauth.value.attempt_count == 1
