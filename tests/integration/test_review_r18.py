"""Review R18 of manual-capture discounts (migration 0031, docs/promotions.md "Manual capture"): what an
adversarial review found, each as a test that failed first, and what it tried that held."""

from __future__ import annotations

import asyncio
import sys
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


async def test_settled_partial_captures_of_both_funders_pay_what_the_ledger_owes(world: World, clean_db: str) -> None:
    """Held: a merchant-funded partial capture settles c - d with the fee on c - d; a bank-funded one c with
    the fee on c (the promotions account paid d); a refund of each settles its own net
    (settlement_line_differs_from_its_merchant_postings, checked by _sound)."""
    import asyncpg

    from tests.integration.test_merchant_cashback import D0, _at, _backdate
    m = await world.merchant(fee_bps=100)
    await world.call("POST", f"/v1/operator/merchants/{m.id}/payout_account", 201, headers=world.ops,
                     json={"holder_name": "Best Noodles Ltd", "bank_name": "ICBC", "account_number": "6222020200998877"})
    h = await world.holder(top_up=100_000)
    mine = await _campaign(world, rule="fixed", percent_bps=0, fixed_amount=300, funded_by="merchant")
    p = await _authorized(world, m, h, 3_001)
    got = await _capture(world, m, p["id"], 1_000)  # keeps 99: sells for 901, fee 9
    assert (got["amount_received"], got["fee"]) == (901, 9)
    await world.call("POST", f"/v1/operator/campaigns/{mine['id']}/end", headers=world.ops, json={})
    await _campaign(world, percent_bps=1_000)
    q = await _authorized(world, m, h, 2_000)
    got = await _capture(world, m, q["id"], 1_500)  # keeps 150 of 200: the merchant receives 1,500, fee 15
    assert (got["amount_received"], got["fee"], got["discount"]["amount"]) == (1_500, 15, 150)
    r = await world.call("POST", f"/v1/payments/{q['id']}/refunds", 201, headers=m.headers, json={"amount": 500})
    assert r["discount_clawed_back"] == 50 and r["fee_returned"] == 5
    db = await asyncpg.connect(clean_db)
    try:
        for pay in (p["id"], q["id"]):
            await _backdate(db, _at(D0, 9), payment=pay)
        await _backdate(db, _at(D0, 10), refund=r["id"])
    finally:
        await db.close()
    await world.call("POST", "/v1/operator/settlement_runs", headers=world.ops, json={"date": D0.isoformat()})
    batches = (await world.call("GET", "/v1/settlement_batches", headers=m.headers))["data"]
    assert [(b["captured"], b["refunded"], b["fee"], b["net"]) for b in batches] == [
        (901 + 1_500, 500, 9 + 15 - 5, 901 + 1_500 - 500 - 19)]
    await _sound(clean_db)


async def test_captures_cancels_and_the_expiry_worker_racing_give_back_once(world: World, clean_db: str) -> None:
    """Held: a capture racing a cancel, and the expiry worker racing captures of lapsed authorisations,
    give back at most once (the payment row is locked first; the loser sees the new status)."""
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=100_000)
    c = await _campaign(world, percent_bps=1_000, places=20, per_holder_limit=20)
    ps = [await _authorized(world, m, h, 1_000) for _ in range(6)]
    answers = await asyncio.gather(*(x for i, p in enumerate(ps) for x in (
        _cap(world, m, p["id"], 301 + i),
        _raw(world, "POST", f"/v1/payments/{p['id']}/cancel", headers=m.headers, json={}))))
    assert all(status in (200, 409) for status, _ in answers)
    kept = sum(body["discount"]["amount"] for status, body in answers[0::2] if status == 200 and body["discount"])
    paid = sum(body["amount_received"] - body["discount"]["amount"] for status, body in answers[0::2]
               if status == 200)
    assert await _spent(world, c) == (kept, sum(1 for s, b in answers[0::2] if s == 200 and b["discount"]))
    assert await _held(world, h) == 0 and await world.available(h) == 100_000 - paid
    await _sound(clean_db)
    qs = [await _authorized(world, m, h, 1_000) for _ in range(6)]
    for q in qs:
        await _lapse(clean_db, q["id"])
    svc = await Services.start(make_settings())
    try:
        results = await asyncio.gather(tick(svc), *(_cap(world, m, q["id"]) for q in qs))
    finally:
        await svc.stop()
    assert all(status == 409 for status, _ in results[1:])
    assert await _spent(world, c) == (kept, sum(1 for s, b in answers[0::2] if s == 200 and b["discount"]))
    assert await _held(world, h) == 0 and await world.available(h) == 100_000 - paid
    await _sound(clean_db)


async def test_a_give_back_to_an_ended_campaign_never_offers_it_again(world: World, clean_db: str) -> None:
    """Held: a cancel after the campaign's end gives its counters back (they stay the sums of what is
    granted) but the ended campaign offers nothing; a capture after the end keeps its share; a capture
    retried with the same key and another amount is refused, not captured again."""
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=10_000)
    other = await world.holder(top_up=10_000)
    c = await _campaign(world, percent_bps=1_000, places=2, per_holder_limit=1)
    p = await _authorized(world, m, h, 1_000)
    q = await _authorized(world, m, other, 1_000)
    await world.call("POST", f"/v1/operator/campaigns/{c['id']}/end", headers=world.ops, json={})
    await world.call("POST", f"/v1/payments/{p['id']}/cancel", headers=m.headers, json={})
    assert await _spent(world, c) == (100, 1)
    again = await _authorized(world, m, h, 1_000)
    assert again["discount"] is None
    key = uuid.uuid4().hex
    got = await _capture(world, m, q["id"], 401, key=key)
    assert got["discount"]["amount"] == 40 and await _spent(world, c) == (40, 1)
    status, body = await _cap(world, m, q["id"], 900, key=key)
    assert status == 422 and body["error"]["code"] == "idempotency_key_reused"
    assert await world.available(other) == 10_000 - 361
    await _sound(clean_db)


async def test_a_declined_manual_authorisation_reserves_nothing_and_the_hold_is_what_the_holder_pays(
        world: World, clean_db: str) -> None:
    """Held: a wallet lacking the discounted amount is declined and nothing of the campaign is taken; a
    wallet holding exactly amount - discount is authorised (its available funds are what it pays), and its
    full capture leaves it at zero, never negative."""
    m = await world.merchant(fee_bps=0)
    poor = await world.holder(top_up=899)
    c = await _campaign(world, percent_bps=1_000, places=1, per_holder_limit=1)
    p = await world.payment(m, 1_000, capture_method="manual")
    declined = await world.pay(poor, p["id"], expect=402)
    assert declined["error"]["code"] == "insufficient_funds"
    assert await _spent(world, c) == (0, 0) and await _held(world, poor) == 0
    exact = await world.holder(top_up=900)
    q = await _authorized(world, m, exact, 1_000)
    assert q["discount"]["amount"] == 100 and await world.available(exact) == 0
    await _capture(world, m, q["id"])
    assert await world.available(exact) == 0 and await _held(world, exact) == 0
    assert await _spent(world, c) == (100, 1)
    await _sound(clean_db)


async def test_a_fixed_discount_at_or_above_the_amount_reserves_below_it(world: World, clean_db: str) -> None:
    """Held: a fixed discount of the whole amount or more reserves less than the amount (the holder pays at
    least one unit; migration 0031's CHECK), and any capture of it keeps a share below what it captures."""
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    c = await _campaign(world, rule="fixed", percent_bps=0, fixed_amount=300, funded_by="merchant")
    for amount, capture in ((300, 1), (2, 1), (300, None), (1, None)):
        p = await world.payment(m, amount, capture_method="manual")
        paid = await world.pay(h, p["id"])
        reserved = 0 if paid["discount"] is None else paid["discount"]["amount"]
        assert reserved < amount
        got = await _capture(world, m, p["id"], capture)
        assert got["amount_received"] >= 1
        await _sound(clean_db)
    assert (await _spent(world, c))[0] >= 0


async def test_a_scanned_manual_payment_previews_the_discount_its_authorisation_reserves(
        world: World, clean_db: str) -> None:
    """R18-2: a manual payment's QR preview showed no discount offer although paying it reserves one (the
    payment's own preview, GET /v1/payments/{id}, shows it whatever the capture method)."""
    from tests.integration.test_qr_paycode import _qr, _scan_pay
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    c = await _campaign(world, percent_bps=1_000)
    _, code = await _qr(world, m, 1_000, capture_method="manual")
    preview = await world.call("POST", "/v1/wallet/qr/preview", headers=h.headers, json={"payload": code["payload"]})
    assert preview["discount_offer"] == {"campaign": c["id"], "amount": 100, "funded_by": "bank", "amount_to_pay": 900}
    assert preview["cashback_offer"] is None
    paid = await _scan_pay(world, h, code["payload"])
    assert paid["status"] == "requires_capture" and paid["discount"]["amount"] == 100
    await _sound(clean_db)


async def test_a_capture_reloads_the_campaign_cache_only_for_what_it_gives_back_and_never_fails_for_it(
        world: World, clean_db: str) -> None:
    """R18-3: every capture of a reservation reloaded the process's campaign cache (a read of every live
    campaign), even a full capture giving nothing back, the common case; and a failing reload, after the
    commit, answered a 500 for a capture that was made. Now: only what gives back reloads, and a reload
    that fails is logged (the refresh loop catches up within cache_refresh_s)."""
    from gateway.api.routing import SERVICES
    svc: Services = world.client.app[SERVICES]
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    c = await _campaign(world, percent_bps=1_000)
    p = await _authorized(world, m, h, 1_000)
    q = await _authorized(world, m, h, 1_000)
    given_back: list[str] = []  # reloads asked by a give-back (the refresh loop's own, every second, aside)

    async def broken(*_: Any) -> None:
        if sys._getframe(1).f_code.co_name == "_offer_given_back":
            given_back.append("reload")
            raise OSError("the database went away after the commit")

    svc.campaigns.load = broken  # type: ignore[method-assign]
    try:
        await _capture(world, m, p["id"])  # keeps the whole discount: nothing to offer again
        assert given_back == []
        got = await _capture(world, m, q["id"], 500)  # gives 50 back: reloads, which fails
        assert given_back == ["reload"]
    finally:
        del svc.campaigns.load
    assert got["status"] == "succeeded" and got["discount"]["amount"] == 50
    assert await _spent(world, c) == (150, 2)
    await _sound(clean_db)


async def test_a_held_charge_confirmed_after_its_campaign_ended_pays_the_full_amount(world: World,
                                                                                   clean_db: str) -> None:
    """Held: a manual pay-code charge held for its payer, confirmed after the campaign ended, reserves
    nothing (the hold stays the full amount) and its capture and a second one's cancel release it exactly."""
    from tests.integration.test_qr_paycode import _device_holder
    from tests.integration.test_risk_pay_code import PIN, _confirm, _pay_code, _rule
    m = await world.merchant(fee_bps=0)
    h = await _device_holder(world, 10_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": PIN})
    await _rule(world, kind="blocked_wallet", wallet=h.id, outcome="require_pin")
    c = await _campaign(world, percent_bps=1_000)
    charged = []
    for _ in range(2):
        charged.append(await world.call(
            "POST", "/v1/pay_code_charges", 201, headers={**m.headers, "Idempotency-Key": uuid.uuid4().hex},
            json={"pay_code": await _pay_code(world, h), "amount": 700, "currency": "CNY", "store": m.store,
                  "capture_method": "manual"}))
    assert await _held(world, h) == 1_400
    await world.call("POST", f"/v1/operator/campaigns/{c['id']}/end", headers=world.ops, json={})
    for x in charged:
        ok = await _confirm(world, h, x["id"], pin=PIN)
        assert ok["status"] == "requires_capture" and ok["discount"] is None
    assert await _held(world, h) == 1_400 and await _spent(world, c) == (0, 0)
    got = await _capture(world, m, charged[0]["id"], 300)
    assert got["amount_received"] == 300 and got["discount"] is None
    await world.call("POST", f"/v1/payments/{charged[1]['id']}/cancel", headers=m.headers, json={})
    assert await _held(world, h) == 0 and await world.available(h) == 10_000 - 300
    await _sound(clean_db)


async def test_kwd_and_jpy_reservations_and_the_daily_cap_on_the_list_price(clean_db: str) -> None:
    """Held: the share is the same integer formula for KWD (3 decimals) and JPY (0); the holder's daily cap
    counts the list price A at the authorisation (as at once) and a partial capture gives back A - c of it,
    never A - D or c - d."""
    from tests.integration.conftest import serving
    caps = {"balance_max_minor": 10_000_000, "payment_max_minor": 1_000_000, "daily_max_minor": 3_000}
    async with serving(clean_db, make_settings(tiers={f"tier{n}": {"CNY": caps, "KWD": caps, "JPY": caps}
                                                      for n in range(1, 5)})) as client:
        world = await World.create(client)
        for cur in ("KWD", "JPY"):
            m = await world.merchant(fee_bps=100)
            h = await world.holder(top_up=10_000, currency=cur)
            await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": "258036"})

            async def pay(pid: str, expect: int = 200, h: Any = h) -> Any:
                return await world.call("POST", f"/v1/wallet/payments/{pid}/pay", expect, headers=h.headers,
                                        json={"pin": "258036"})
            c = await _campaign(world, percent_bps=1_500, currency=cur, merchants=[m.id])
            p = await world.payment(m, 3_000, currency=cur, capture_method="manual")
            paid = await pay(p["id"])
            assert paid["discount"]["amount"] == 450  # the daily cap reached by the list price
            over = await world.payment(m, 1, currency=cur)
            assert (await pay(over["id"], 402))["error"]["code"] == "limit_exceeded"
            got = await _capture(world, m, p["id"], 1_001)  # floor(450 * 1,001 / 3,000) = 150
            assert (got["discount"]["amount"], got["amount_received"], got["fee"]) == (150, 1_001, 10)
            assert await world.available(h, cur) == 10_000 - 851
            assert await _spent(world, c) == (150, 1)
            more = await world.payment(m, 1_999, currency=cur)  # A - c = 1,999 of the day came back
            assert (await pay(more["id"]))["status"] == "succeeded"
            last = await world.payment(m, 1, currency=cur)
            assert (await pay(last["id"], 402))["error"]["code"] == "limit_exceeded"
            await _sound(clean_db)


async def test_the_one_statement_path_still_pays_automatic_discounts_and_leaves_manual_ones(
        world: World, clean_db: str) -> None:
    """Held: with a campaign in memory, an automatic payment is still decided for the one-statement path
    (discounted there); a manual one with an offer is not (the general path reserves its discount), and a
    manual one no campaign applies to still is (the full amount held)."""
    from gateway.api.routing import SERVICES
    from gateway.domain.ids import Kind, decode
    from gateway.services import payments as payment_cases
    from gateway.store import payments as payment_store
    svc: Services = world.client.app[SERVICES]
    m = await world.merchant(fee_bps=0)
    other = await world.merchant("Other shop", fee_bps=0)
    h = await world.holder(top_up=10_000)
    await _campaign(world, percent_bps=1_000, merchants=[m.id])
    await svc.campaigns.load(svc.db, svc.now())
    holder_id = decode(Kind.WALLET_HOLDER, h.id)
    assert holder_id is not None

    async def decided(shop: Merchant, **extra: Any) -> Any:
        created = await world.payment(shop, 1_000, **extra)
        pid = decode(Kind.PAYMENT, created["id"])
        assert pid is not None
        async with svc.db.connection() as conn:
            head = await payment_store.payable(conn, pid, holder_id)
        assert head is not None
        accounts = await payment_cases.payer_accounts(svc, holder_id, head["merchant_id"], head["currency"])
        return payment_cases._paid_at_once(svc, head, holder_id, accounts, channel="wallet")

    at_once = await decided(m)
    assert at_once is not None and at_once.value.discount is not None and at_once.value.discount.amount == 100
    assert await decided(m, capture_method="manual") is None
    assert await decided(other, capture_method="manual") is not None
