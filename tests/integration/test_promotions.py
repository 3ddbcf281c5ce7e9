"""Promotions over real HTTP: campaigns, discounts at payment (bank- and merchant-funded), previews,
places and budget under concurrency, ending, per-holder limits, clawbacks on refunds. The fixtures
prove the ledger invariants (promotions account, campaign budget and places included) after each test."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from gateway.api.routing import SERVICES
from gateway.domain import ledger
from gateway.domain.ids import Kind, decode
from gateway.domain.ledger import AccountKind
from gateway.services import payments as payment_cases
from gateway.store import ledger as ledger_store
from gateway.store import payments as payment_store
from tests.integration.world import Holder, Merchant, World, batched


def _window(hours: int = 2) -> dict[str, str]:
    now = datetime.now(UTC).replace(tzinfo=None)
    return {"time_zone": "UTC", "starts_at": (now - timedelta(hours=1)).isoformat(timespec="seconds"),
            "ends_at": (now + timedelta(hours=hours)).isoformat(timespec="seconds")}


async def _campaign(world: World, expect: int = 201, **terms: Any) -> Any:
    body = {"name": "Winter treat", "currency": "CNY", "rule": "percent", "percent_bps": 1_000, "funded_by": "bank",
            "budget": 1_000_000, **_window(), **terms}
    return await world.call("POST", "/v1/operator/campaigns", expect, headers=world.ops, json=body)


async def _paid(world: World, m: Merchant, h: Holder, amount: int) -> Any:
    p = await world.payment(m, amount)
    return await world.pay(h, p["id"]), p["id"]


async def test_bank_funded_discount_previewed_paid_and_seen_by_merchant(world: World) -> None:
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=10_000)
    c = await _campaign(world, cap=150, merchants=[m.id])
    assert c["status"] == "active" and c["spent"] == 0
    p = await world.payment(m, 2_000)
    preview = await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers)
    assert preview["discount_offer"] == {"campaign": c["id"], "amount": 150, "funded_by": "bank", "amount_to_pay": 1_850}
    paid = await world.pay(h, p["id"])
    assert paid["status"] == "succeeded"
    assert paid["discount"] == {"campaign": c["id"], "amount": 150, "funded_by": "bank",
                                "amount_paid_by_holder": 1_850, "clawed_back": 0}
    assert await world.available(h) == 10_000 - 1_850
    assert await world.merchant_total(m) == 2_000 - 20  # the full amount, less the fee on it
    seen = await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers)
    assert (seen["amount_received"], seen["fee"], seen["discount"]["funded_by"]) == (2_000, 20, "bank")
    got = await world.call("GET", f"/v1/operator/campaigns/{c['id']}", headers=world.ops)
    assert (got["spent"], got["places_taken"]) == (150, 1)
    other = await world.merchant("Other shop")  # not eligible: pays the full amount
    paid, _ = await _paid(world, other, h, 1_000)
    assert paid["discount"] is None and await world.available(h) == 10_000 - 1_850 - 1_000


async def test_merchant_funded_fixed_discount_on_a_qr_payment(world: World) -> None:
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=10_000)
    c = await _campaign(world, rule="fixed", percent_bps=0, fixed_amount=300, funded_by="merchant", mccs=["5812"],
                        min_amount=1_000)
    p = await world.payment(m, 3_000)
    code = await world.call("POST", f"/v1/payments/{p['id']}/qr_codes", 201, headers=m.headers, json={})
    preview = await world.call("POST", "/v1/wallet/qr/preview", headers=h.headers, json={"payload": code["payload"]})
    assert preview["discount_offer"] == {"campaign": c["id"], "amount": 300, "funded_by": "merchant",
                                         "amount_to_pay": 2_700}
    paid = await world.call("POST", "/v1/wallet/qr/pay", headers=h.headers, json={"payload": code["payload"]})
    assert paid["discount"]["amount"] == 300 and paid["discount"]["funded_by"] == "merchant"
    assert await world.available(h) == 7_300
    seen = await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers)
    assert (seen["amount"], seen["amount_received"], seen["fee"]) == (3_000, 2_700, 27)
    assert await world.merchant_total(m) == 2_700 - 27
    small, _ = await _paid(world, m, h, 999)  # below min_amount
    assert small["discount"] is None
    refund = await world.call("POST", f"/v1/payments/{p['id']}/refunds", 201, headers=m.headers, json={})
    assert (refund["amount"], refund["discount_clawed_back"]) == (2_700, 0)  # the holder gets back what it paid
    assert await world.available(h) == 10_000 - 999


async def test_refunds_claw_back_in_proportion_summing_to_the_discount(world: World) -> None:
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=10_000)
    c = await _campaign(world, percent_bps=3_333)
    paid, pid = await _paid(world, m, h, 1_000)
    assert paid["discount"]["amount"] == 333
    backs = []
    for amount in (1, 333, 500):
        r = await world.call("POST", f"/v1/payments/{pid}/refunds", 201, headers=m.headers, json={"amount": amount})
        backs.append(r["discount_clawed_back"])
    r = await world.call("POST", f"/v1/payments/{pid}/refunds", 201, headers=m.headers, json={})  # the rest: 166
    backs.append(r["discount_clawed_back"])
    assert backs == [0, 111, 166, 56] and sum(backs) == 333
    assert await world.available(h) == 10_000  # everything the holder paid came back, no more
    got = await world.call("GET", f"/v1/operator/campaigns/{c['id']}", headers=world.ops)
    assert (got["spent"], got["clawed_back"]) == (333, 333)
    seen = await world.call("GET", f"/v1/payments/{pid}", headers=m.headers)
    assert seen["discount"]["clawed_back"] == 333
    report = await world.call("GET", "/v1/operator/ledger/invariants", headers=world.ops)
    assert report["ok"] is True


async def _race(world: World, m: Merchant, holders: list[Holder], per_holder: int) -> list[Any]:
    """Every holder pays ``per_holder`` payments, all of them at once over HTTP."""
    payers = [h for h in holders for _ in range(per_holder)]
    payments = await asyncio.gather(*(world.payment(m, 1_000) for _ in payers))
    return list(await asyncio.gather(*(world.pay(h, p["id"]) for h, p in zip(payers, payments, strict=True))))


async def test_places_are_taken_exactly_once_by_payments_racing(world: World) -> None:
    """1,000 payments of 40 holders race for 100 places (registering a holder hashes a password: fewer
    holders keep the test fast; each payment still races every other for the campaign row)."""
    m = await world.merchant()
    holders = list(await asyncio.gather(*(world.holder(top_up=25_000) for _ in range(40))))
    c = await _campaign(world, places=100)
    started_s = time.perf_counter()
    paid = await _race(world, m, holders, 25)
    elapsed_s = time.perf_counter() - started_s
    discounted = [x for x in paid if x["discount"] is not None]
    assert len(paid) == 1_000 and all(x["status"] == "succeeded" for x in paid)
    assert len(discounted) == 100
    got = await world.call("GET", f"/v1/operator/campaigns/{c['id']}", headers=world.ops)
    assert (got["places_taken"], got["spent"]) == (100, 100 * 100)
    assert elapsed_s < 30


async def test_the_per_holder_limit_holds_when_a_holders_payments_race(world: World) -> None:
    m = await world.merchant()
    holders = list(await asyncio.gather(*(world.holder(top_up=10_000) for _ in range(5))))
    await _campaign(world, per_holder_limit=2)
    paid = await _race(world, m, holders, 6)
    per_holder = [sum(x["discount"] is not None for x in paid[i * 6:(i + 1) * 6]) for i in range(5)]
    assert per_holder == [2] * 5


async def test_the_budgets_last_unit_is_spent_once(world: World) -> None:
    m = await world.merchant()
    holders = list(await asyncio.gather(*(world.holder(top_up=10_000) for _ in range(10))))
    c = await _campaign(world, budget=1_050)  # 10 % of 1,000: ten full discounts and one of 50
    paid = await _race(world, m, holders, 3)
    amounts = sorted(x["discount"]["amount"] for x in paid if x["discount"] is not None)
    assert amounts == [50] + [100] * 10
    got = await world.call("GET", f"/v1/operator/campaigns/{c['id']}", headers=world.ops)
    assert got["spent"] == got["budget"] == 1_050


async def test_a_payment_that_fails_gives_its_place_back(world: World) -> None:
    m = await world.merchant()
    poor = await world.holder(top_up=500)
    rich = await world.holder(top_up=5_000)
    c = await _campaign(world, places=1)
    p = await world.payment(m, 1_000)
    refused = await world.pay(poor, p["id"], 402)  # 900 after the discount: still more than the wallet holds
    assert refused["error"]["code"] == "insufficient_funds"
    got = await world.call("GET", f"/v1/operator/campaigns/{c['id']}", headers=world.ops)
    assert (got["places_taken"], got["spent"]) == (0, 0)
    assert (await world.pay(rich, p["id"]))["discount"]["amount"] == 100


async def test_an_ended_or_expired_campaign_gives_nothing_at_once(world: World, clean_db: str) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    c = await _campaign(world)
    ended = await world.call("POST", f"/v1/operator/campaigns/{c['id']}/end", headers=world.ops, json={})
    assert ended["status"] == "ended" and ended["ended_at"] is not None
    paid, _ = await _paid(world, m, h, 1_000)
    assert paid["discount"] is None
    again = await world.call("POST", f"/v1/operator/campaigns/{c['id']}/end", headers=world.ops, json={})
    assert again["ended_at"] == ended["ended_at"]
    live = await _campaign(world)
    conn = await asyncpg.connect(clean_db)  # its end passes while this process's cache still holds it
    try:
        await conn.execute("UPDATE campaigns SET ends_at = now(), starts_at = now() - interval '1 hour' WHERE id = $1",
                           _uuid(live["id"]))
    finally:
        await conn.close()
    paid, _ = await _paid(world, m, h, 1_000)
    assert paid["discount"] is None
    events = await world.call("GET", "/v1/operator/events", headers=world.ops, params={"type": "campaign.*"})
    assert sorted(e["type"] for e in events["data"]) == ["campaign.created", "campaign.created", "campaign.ended"]


def _uuid(text_id: str) -> Any:
    return decode(Kind.CAMPAIGN, text_id)


async def test_a_holder_gets_the_discount_only_as_often_as_the_limit_says(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    other = await world.holder(top_up=10_000)
    await _campaign(world, per_holder_limit=2)
    got = [(await _paid(world, m, h, 1_000))[0]["discount"] is not None for _ in range(3)]
    assert got == [True, True, False]
    p = await world.payment(m, 1_000)
    assert (await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers))["discount_offer"] is None
    assert (await world.call("GET", f"/v1/payments/{p['id']}", headers=other.headers))["discount_offer"] is not None
    assert (await world.pay(other, p["id"]))["discount"] is not None


async def test_a_manual_capture_reserves_the_discount_as_it_is_authorised(world: World) -> None:
    """(test_manual_capture_discounts.py covers captures, cancels, expiry and races.)"""
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    await _campaign(world)
    p = await world.payment(m, 1_000, capture_method="manual")
    authorized = await world.pay(h, p["id"])
    assert authorized["status"] == "requires_capture" and authorized["discount"]["amount"] == 100
    assert await world.available(h) == 9_100


async def test_campaign_terms_are_refused_naming_the_field(world: World) -> None:
    m = await world.merchant()
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"time_zone": "Mars/Olympus"}, "invalid_time_zone", "time_zone"),
        ({"starts_at": "tomorrow"}, "invalid_starts_at", "starts_at"),
        ({"ends_at": "2000-01-01T00:00:00"}, "invalid_ends_at", "ends_at"),
        ({"percent_bps": 0}, "invalid_percent_bps", "percent_bps"),
        ({"rule": "fixed", "percent_bps": 0}, "invalid_fixed_amount", "fixed_amount"),
        ({"budget": 0}, "invalid_budget", "budget"),
        ({"places": 0}, "invalid_places", "places"),
        ({"per_holder_limit": 0}, "invalid_per_holder_limit", "per_holder_limit"),
        ({"mccs": ["58"]}, "invalid_mcc", "mccs[0]"),
        ({"currency": "XXX"}, "invalid_currency", "currency"),
    ]
    for terms, code, param in cases:
        body = await _campaign(world, 400, **terms)
        assert (body["error"]["code"], body["error"]["param"]) == (code, param), terms
    missing = await _campaign(world, 404, merchants=[m.id, "mer_" + "0" * 32])
    assert missing["error"]["param"] == "merchants[1]"
    refused = await world.call("POST", "/v1/operator/campaigns", 401, headers=m.headers, json={})
    assert refused["error"]["code"]
    listed = await world.call("GET", "/v1/operator/campaigns", headers=world.ops)
    assert listed["data"] == []


async def test_campaigns_are_listed_newest_first_and_replayed_by_key(world: World) -> None:
    headers = {**world.ops, "Idempotency-Key": "campaign-key-1"}
    body = {"name": "Once", "currency": "CNY", "rule": "percent", "percent_bps": 500, "funded_by": "merchant",
            "budget": 10_000, **_window()}
    first = await world.call("POST", "/v1/operator/campaigns", 201, headers=headers, json=body)
    second = await world.call("POST", "/v1/operator/campaigns", 201, headers=headers, json=body)
    assert first["id"] == second["id"]
    later = await _campaign(world)
    listed = await world.call("GET", "/v1/operator/campaigns", headers=world.ops)
    assert [c["id"] for c in listed["data"]] == [later["id"], first["id"]]


async def test_the_one_statement_path_decides_campaigns_from_memory(world: World) -> None:
    """Which campaign discounts a payment is looked up in the process's cache (a plain function: no
    round trip), and the one-statement path takes a discount whole; it leaves to the general path what
    memory cannot tell: a campaign's MCCs before the merchant's MCC was read, a budget left below the
    discount (its last units), the promotions account before it was read once."""
    svc = world.client.app[SERVICES]
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    created = await world.payment(m, 1_000)
    pid, holder_id = decode(Kind.PAYMENT, created["id"]), decode(Kind.WALLET_HOLDER, h.id)
    assert pid is not None and holder_id is not None
    async with svc.db.connection() as conn:
        head = await payment_store.payable(conn, pid, holder_id)
        await ledger_store.resolve_accounts(conn, [ledger.promotions("CNY")])  # known to this process
    assert head is not None
    accounts = await payment_cases.payer_accounts(svc, holder_id, head["merchant_id"], head["currency"])

    def at_once() -> Any:
        decided = payment_cases.decide_payment(svc, head, holder_id, accounts, channel="wallet")
        return None if decided is None else decided[0]

    assert svc.campaigns.current() == () and at_once().discount is None
    await _campaign(world, currency="USD")  # another currency: at once, no discount
    assert at_once().discount is None
    svc.campaigns._mccs.pop(head["merchant_id"], None)
    by_mcc = await _campaign(world, merchants=[m.id], mccs=["5812"])
    assert at_once() is None  # the merchant's MCC is not known to this process yet
    await world.call("POST", f"/v1/operator/campaigns/{by_mcc['id']}/end", headers=world.ops, json={})
    c = await _campaign(world, merchants=[m.id], budget=150)
    decided = at_once()
    assert decided.discount == payment_store.Discount(_uuid(c["id"]), 100, "bank")
    assert decided.capture is not None and decided.decided_until <= datetime.fromisoformat(c["ends_at"])
    written, refused = batched()
    paid = await world.pay(h, created["id"])  # the one-statement path takes it
    assert paid["discount"]["amount"] == 100 and await world.available(h) == 9_100
    assert batched() == (written + 1, refused)
    second = await world.payment(m, 1_000)
    async with svc.db.connection() as conn:
        head = await payment_store.payable(conn, decode(Kind.PAYMENT, second["id"]), holder_id)
    assert head is not None
    await svc.campaigns.load(svc.db, svc.now())
    assert at_once() is None  # 50 of the budget left, below the 100 it would give: the general path gives it
    assert (await world.pay(h, second["id"]))["discount"]["amount"] == 50
    await world.call("POST", f"/v1/operator/campaigns/{c['id']}/end", headers=world.ops, json={})
    assert at_once() is None or at_once().discount is None
    got = await world.call("GET", f"/v1/operator/campaigns/{c['id']}", headers=world.ops)
    assert (got["spent"], got["places_taken"]) == (150, 2)


async def test_a_holder_sees_its_own_benefits_and_the_campaigns_it_can_use(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    other = await world.holder(top_up=10_000)
    once = await _campaign(world, name="Once each", per_holder_limit=1, rule="fixed", percent_bps=0, fixed_amount=200)
    many = await _campaign(world, name="Always", percent_bps=500)
    first, pid = await _paid(world, m, h, 1_000)
    assert first["discount"]["campaign"] == once["id"]  # 200 off beats 5 % (50)
    second, pid2 = await _paid(world, m, h, 1_000)
    assert second["discount"]["campaign"] == many["id"]
    mine = await world.call("GET", "/v1/wallet/benefits", headers=h.headers)
    assert [(b["payment"], b["amount"], b["funded_by"]) for b in mine["data"]] == [(pid2, 50, "bank"),
                                                                                 (pid, 200, "bank")]
    assert [(c["campaign"], c["uses_left"]) for c in mine["campaigns"]] == [(many["id"], None)]
    page = await world.call("GET", "/v1/wallet/benefits", headers=h.headers, params={"limit": 1, "starting_after": pid2})
    assert [b["payment"] for b in page["data"]] == [pid] and page["has_more"] is False
    theirs = await world.call("GET", "/v1/wallet/benefits", headers=other.headers)
    assert theirs["data"] == [] and {c["campaign"] for c in theirs["campaigns"]} == {once["id"], many["id"]}
    assert (await world.call("GET", f"/v1/payments/{pid}", 404, headers=other.headers))["error"]["code"]


async def test_counter_pay_code_and_static_qr_payments_of_the_store_are_discounted(world: World) -> None:
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    token = await world.sign_in(h.phone, device_id="phone-P13")  # a new device: through the code challenge
    device_holder = Holder(h.id, h.phone, token, h.bank_account)
    c = await _campaign(world, stores=[m.store])
    code = (await world.call("POST", "/v1/wallet/pay_codes", 201, headers=device_holder.headers, json={}))["code"]
    charged = await world.call("POST", "/v1/pay_code_charges", 201, headers=m.headers,
                               json={"pay_code": code, "amount": 2_000, "currency": "CNY", "store": m.store})
    assert charged["status"] == "succeeded" and charged["discount"]["amount"] == 200
    static = await world.call("GET", f"/v1/stores/{m.store}/qr_code?currency=CNY", headers=m.headers)
    paid = await world.call("POST", "/v1/wallet/qr/pay", headers=h.headers,
                            json={"payload": static["payload"], "amount": 1_000})
    assert paid["discount"]["campaign"] == c["id"] and paid["discount"]["amount"] == 100
    assert await world.available(h) == 10_000 - 1_800 - 900
    assert await world.merchant_total(m) == 3_000
    off_store, _ = await _paid(world, m, h, 1_000)  # a payment made without the store
    assert off_store["discount"] is None


async def test_the_accounts_kind_check_allows_every_kind_the_ledger_names(clean_db: str) -> None:
    """Migrations that add account kinds rewrite the CHECK from what it allows: none is lost."""
    conn = await asyncpg.connect(clean_db)
    try:
        definition = await conn.fetchval("SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                                         " WHERE conname = 'accounts_kind_check'")
    finally:
        await conn.close()
    assert {k.value for k in AccountKind} <= set(re.findall(r"[a-z_]+", definition))
