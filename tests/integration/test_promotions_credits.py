"""Promotions credited to the wallet over real HTTP: cashback with the capture (at once, manual,
partial), its clawback by refunds, registration and first-payment gifts, places and budget under
concurrency, idempotent retries. The fixtures prove the ledger invariants after each test (the
promotions account, each cashback's and gift's entry, each campaign's budget, places and uses)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from gateway.api.routing import SERVICES
from gateway.auth import passwords
from gateway.domain.ids import Kind, decode
from gateway.services import payments as payment_cases
from gateway.store import invariants
from gateway.store import payments as payment_store
from tests.integration.world import Holder, Merchant, World


def _window(hours: int = 2) -> dict[str, str]:
    now = datetime.now(UTC).replace(tzinfo=None)
    return {"time_zone": "UTC", "starts_at": (now - timedelta(hours=1)).isoformat(timespec="seconds"),
            "ends_at": (now + timedelta(hours=hours)).isoformat(timespec="seconds")}


async def _campaign(world: World, rule: str, expect: int = 201, **terms: Any) -> Any:
    body = {"name": f"A {rule}", "currency": "CNY", "rule": rule, "funded_by": "bank", "budget": 1_000_000,
            **_window(), **terms}
    return await world.call("POST", "/v1/operator/campaigns", expect, headers=world.ops, json=body)


async def _seen(world: World, c: Any) -> Any:
    return await world.call("GET", f"/v1/operator/campaigns/{c['id']}", headers=world.ops)


async def _paid(world: World, m: Merchant, h: Holder, amount: int, **extra: Any) -> tuple[Any, str]:
    p = await world.payment(m, amount, **extra)
    return await world.pay(h, p["id"]), p["id"]


async def _capture(world: World, m: Merchant, pid: str, amount: int | None, key: str, expect: int = 200) -> Any:
    body = {} if amount is None else {"amount_to_capture": amount}
    return await world.call("POST", f"/v1/payments/{pid}/capture", expect, json=body,
                            headers={**m.headers, "Idempotency-Key": key})


async def test_cashback_is_credited_with_an_automatic_capture(world: World) -> None:
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=10_000)
    c = await _campaign(world, "cashback", percent_bps=500, cap=80, merchants=[m.id])
    p = await world.payment(m, 1_000)
    preview = await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers)
    assert preview["cashback_offer"] == {"campaign": c["id"], "amount": 50, "funded_by": "bank"} and preview["discount_offer"] is None
    code = await world.call("POST", f"/v1/payments/{p['id']}/qr_codes", 201, headers=m.headers, json={})
    scanned = await world.call("POST", "/v1/wallet/qr/preview", headers=h.headers, json={"payload": code["payload"]})
    assert scanned["cashback_offer"] == {"campaign": c["id"], "amount": 50, "funded_by": "bank"}
    paid, pid = await world.pay(h, p["id"]), p["id"]
    assert paid["status"] == "succeeded" and paid["discount"] is None
    assert paid["cashback"] == {"campaign": c["id"], "amount": 50, "funded_by": "bank", "clawed_back": 0}
    assert await world.available(h) == 10_000 - 1_000 + 50
    assert await world.merchant_total(m) == 1_000 - 10  # the merchant is paid as for any capture
    seen = await world.call("GET", f"/v1/payments/{pid}", headers=m.headers)
    assert seen["cashback"] == {"campaign": c["id"], "amount": 50, "funded_by": "bank", "clawed_back": 0}
    second, pid2 = await _paid(world, m, h, 3_000)
    assert second["cashback"]["amount"] == 80  # 5 % is 150: the cap
    got = await _seen(world, c)
    assert (got["spent"], got["places_taken"], got["rule"]) == (130, 2, "cashback")
    mine = await world.call("GET", "/v1/wallet/benefits", headers=h.headers)
    assert [(b["kind"], b["payment"], b["amount"]) for b in mine["data"]] == [("cashback", pid2, 80),
                                                                             ("cashback", pid, 50)]
    history = await world.call("GET", "/v1/wallet/transactions", headers=h.headers)
    assert "cashback" in {t["kind"] for t in history["data"]}


async def test_the_cashback_never_pays_for_its_own_payment(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=990)
    c = await _campaign(world, "cashback", percent_bps=500)
    p = await world.payment(m, 1_000)
    refused = await world.pay(h, p["id"], 402)  # 990 + the 50 of cashback would cover it: it may not
    assert refused["error"]["code"] == "insufficient_funds"
    assert await world.available(h) == 990
    assert ((await _seen(world, c))["places_taken"], (await _seen(world, c))["spent"]) == (0, 0)
    await world.top_up(h, 10)
    assert (await world.pay(h, p["id"]))["cashback"]["amount"] == 50
    assert await world.available(h) == 50


async def test_a_retried_payment_credits_its_cashback_once(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    c = await _campaign(world, "cashback", percent_bps=1_000)
    p = await world.payment(m, 1_000)
    answers = await asyncio.gather(*(world.client.post(f"/v1/wallet/payments/{p['id']}/pay", json={},
                                                       headers={**h.headers, "Idempotency-Key": "pay-once"})
                                     for _ in range(5)))
    assert {a.status for a in answers} <= {200, 409}
    again = await world.pay(h, p["id"], key="pay-once")
    assert again["cashback"]["amount"] == 100
    assert await world.available(h) == 10_000 - 1_000 + 100
    assert ((await _seen(world, c))["places_taken"], (await _seen(world, c))["spent"]) == (1, 100)


async def test_cashback_of_a_partial_manual_capture_is_its_share_and_a_retry_credits_nothing(world: World) -> None:
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    c = await _campaign(world, "cashback", fixed_amount=300)
    p = await world.payment(m, 1_000, capture_method="manual")
    authorized = await world.pay(h, p["id"])
    assert authorized["status"] == "requires_capture" and authorized["cashback"] is None
    captured = await _capture(world, m, p["id"], 400, "cap-1")
    assert captured["amount_received"] == 400 and captured["cashback"]["amount"] == 120  # 300 * 400 / 1,000
    again = await _capture(world, m, p["id"], 400, "cap-1")  # the same key: the same answer, nothing more
    assert again == captured
    refused = await _capture(world, m, p["id"], None, "cap-2", expect=409)  # a new key: captured already
    assert refused["error"]["code"]
    assert await world.available(h) == 10_000 - 400 + 120
    assert ((await _seen(world, c))["spent"], (await _seen(world, c))["places_taken"]) == (120, 1)


async def test_refunds_take_the_cashback_back_in_proportion_even_when_it_was_spent(world: World) -> None:
    """The clawback is netted from what each refund gives the holder (as a bank-funded discount's is):
    a holder who spent its cashback is never overdrawn, and the parts sum to the cashback."""
    m = await world.merchant(fee_bps=100)
    elsewhere = await world.merchant("Elsewhere")
    h = await world.holder(top_up=1_000)
    c = await _campaign(world, "cashback", percent_bps=1_000, merchants=[m.id])
    paid, pid = await _paid(world, m, h, 1_000)
    assert paid["cashback"]["amount"] == 100 and await world.available(h) == 100
    spent, _ = await _paid(world, elsewhere, h, 100)  # the cashback is spent: the wallet is empty
    assert spent["cashback"] is None and await world.available(h) == 0
    backs = []
    for amount in (333, None):
        body = {} if amount is None else {"amount": amount}
        r = await world.call("POST", f"/v1/payments/{pid}/refunds", 201, headers=m.headers, json=body)
        backs.append((r["amount"], r["cashback_clawed_back"]))
    assert backs == [(333, 33), (667, 67)]
    assert await world.available(h) == 1_000 - 100  # what it paid for the payment, less the cashback it had
    seen = await world.call("GET", f"/v1/payments/{pid}", headers=m.headers)
    assert seen["cashback"] == {"campaign": c["id"], "amount": 100, "funded_by": "bank", "clawed_back": 100}
    got = await _seen(world, c)
    assert (got["spent"], got["clawed_back"]) == (100, 100)


async def test_a_discounted_payment_gets_no_cashback(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    await _campaign(world, "percent", percent_bps=1_000)
    cashback = await _campaign(world, "cashback", percent_bps=2_000)
    p = await world.payment(m, 1_000)
    preview = await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers)
    assert preview["discount_offer"]["amount"] == 100 and preview["cashback_offer"] is None
    paid = await world.pay(h, p["id"])
    assert paid["discount"]["amount"] == 100 and paid["cashback"] is None
    assert (await _seen(world, cashback))["places_taken"] == 0
    manual = await world.payment(m, 1_000, capture_method="manual")  # discounted as authorised: no cashback
    assert (await world.pay(h, manual["id"]))["discount"]["amount"] == 100
    captured = await _capture(world, m, manual["id"], None, "cap")
    assert captured["discount"]["amount"] == 100 and captured["cashback"] is None
    assert (await _seen(world, cashback))["places_taken"] == 0


async def test_registration_gift_once_and_a_repeated_registration_gives_nothing(world: World) -> None:
    c = await _campaign(world, "gift_registration", fixed_amount=888)
    h = await world.holder()
    assert await world.available(h) == 888
    again = await world.call("POST", "/v1/wallet/holders", 409, json={"phone": h.phone, "password": "s3cret-pass"})
    assert again["error"]["code"] == "phone_taken"
    got = await _seen(world, c)
    assert (got["spent"], got["places_taken"]) == (888, 1)
    mine = await world.call("GET", "/v1/wallet/benefits", headers=h.headers)
    assert [(b["kind"], b["amount"], b["payment"]) for b in mine["data"]] == [("gift_registration", 888, None)]
    assert mine["campaigns"] == []  # a registration gift is for holders to come
    gifts = await world.call("GET", f"/v1/operator/campaigns/{c['id']}/gifts", headers=world.ops)
    assert [(g["holder"], g["kind"], g["amount"]) for g in gifts["data"]] == [(h.id, "registration", 888)]
    page = await world.call("GET", "/v1/wallet/benefits", headers=h.headers,
                            params={"starting_after": mine["data"][0]["gift"]})
    assert page["data"] == []


async def test_first_payment_gift_once_per_holder_whatever_the_campaign(world: World) -> None:
    m = await world.merchant()
    veteran = await world.holder(top_up=10_000)
    await _paid(world, m, veteran, 100)  # paid before any gift campaign ran
    big = await _campaign(world, "gift_first_payment", fixed_amount=500)
    small = await _campaign(world, "gift_first_payment", fixed_amount=200)
    h = await world.holder(top_up=10_000)
    offered = await world.call("GET", "/v1/wallet/benefits", headers=h.headers)
    assert {(x["campaign"], x["uses_left"]) for x in offered["campaigns"]} == {(big["id"], 1), (small["id"], 1)}
    assert (await world.call("GET", "/v1/wallet/benefits", headers=veteran.headers))["campaigns"] == []
    first, pid = await _paid(world, m, h, 1_000)
    assert await world.available(h) == 10_000 - 1_000 + 500  # the larger gift
    second, _ = await _paid(world, m, h, 1_000)
    assert await world.available(h) == 10_000 - 2_000 + 500  # the other campaign does not give a second one
    await _paid(world, m, veteran, 100)
    assert await world.available(veteran) == 10_000 - 200
    assert [(await _seen(world, c))["places_taken"] for c in (big, small)] == [1, 0]
    mine = await world.call("GET", "/v1/wallet/benefits", headers=h.headers)
    assert [(b["kind"], b["payment"], b["amount"]) for b in mine["data"]] == [("gift_first_payment", pid, 500)]
    assert mine["campaigns"] == []  # it paid: neither campaign gives it anything more
    gifts = await world.call("GET", f"/v1/operator/campaigns/{big['id']}/gifts", headers=world.ops)
    assert [(g["holder"], g["payment"]) for g in gifts["data"]] == [(h.id, pid)]
    assert first["status"] == second["status"] == "succeeded"


async def test_a_holders_first_payments_racing_get_one_gift(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    c = await _campaign(world, "gift_first_payment", fixed_amount=300)
    payments = await asyncio.gather(*(world.payment(m, 100) for _ in range(8)))
    paid = await asyncio.gather(*(world.pay(h, p["id"]) for p in payments))
    assert all(p["status"] == "succeeded" for p in paid)
    assert await world.available(h) == 10_000 - 800 + 300
    assert (await _seen(world, c))["places_taken"] == 1


async def test_a_manual_first_payment_gets_its_gift_at_capture(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    await _campaign(world, "gift_first_payment", fixed_amount=300)
    p = await world.payment(m, 1_000, capture_method="manual")
    await world.pay(h, p["id"])
    assert await world.available(h) == 9_000  # held, not yet paid: no gift yet
    await _capture(world, m, p["id"], 600, "cap")
    assert await world.available(h) == 10_000 - 600 + 300


async def test_1000_registrations_race_for_100_gift_places(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """1,000 holders register at once for a gift with 100 places and a budget short of 100 full gifts:
    exactly 100 gifts, the budget's last 50 given once. (Each registration hashes its password with
    Argon2id, 64 MiB and ~50 ms each: one real hash, computed once, stands for all of them here, so the
    test measures the race and not the machine's hashing.)"""
    hashed = await passwords.hash_password("s3cret-pass")

    async def same_hash(password: str) -> str:
        return hashed

    monkeypatch.setattr(passwords, "hash_password", same_hash)
    c = await _campaign(world, "gift_registration", fixed_amount=100, places=100, budget=100 * 100 - 50)
    phones = [f"+8613{uuid.uuid4().int % 10**9:09d}" for _ in range(1_000)]

    async def register(phone: str) -> Any:
        resp = await world.client.post("/v1/wallet/holders", json={"phone": phone, "password": "s3cret-pass"})
        assert resp.status == 201, await resp.text()
        return await resp.json()

    holders = await asyncio.gather(*(register(p) for p in phones))
    assert len({h["id"] for h in holders}) == 1_000
    got = await _seen(world, c)
    assert (got["places_taken"], got["spent"]) == (100, 100 * 100 - 50)
    amounts: list[int] = []
    starting_after = None
    while True:
        params = {"limit": 100, **({"starting_after": starting_after} if starting_after else {})}
        page = await world.call("GET", f"/v1/operator/campaigns/{c['id']}/gifts", headers=world.ops, params=params)
        amounts += [g["amount"] for g in page["data"]]
        if not page["has_more"]:
            break
        starting_after = page["data"][-1]["id"]
    assert sorted(amounts) == [50] + [100] * 99


async def test_terms_of_cashback_and_gifts_are_refused_naming_the_field(world: World) -> None:
    m = await world.merchant()
    cases = [
        ({"rule": "gift_first_payment", "fixed_amount": 100, "funded_by": "merchant"}, "invalid_funded_by", "funded_by"),
        ({"rule": "gift_registration", "fixed_amount": 100, "funded_by": "merchant"}, "invalid_funded_by", "funded_by"),
        ({"rule": "cashback", "percent_bps": 500, "fixed_amount": 10}, "invalid_fixed_amount", "fixed_amount"),
        ({"rule": "cashback"}, "invalid_fixed_amount", "fixed_amount"),
        ({"rule": "gift_first_payment", "fixed_amount": 100, "cap": 50}, "invalid_cap", "cap"),
        ({"rule": "gift_first_payment", "fixed_amount": 100, "per_holder_limit": 2}, "invalid_per_holder_limit",
         "per_holder_limit"),
        ({"rule": "gift_registration", "fixed_amount": 100, "merchants": [m.id]}, "invalid_eligibility", "merchants"),
        ({"rule": "gift_registration", "fixed_amount": 100, "percent_bps": 100}, "invalid_percent_bps", "percent_bps"),
    ]
    for terms, code, param in cases:
        rule = terms.pop("rule")
        refused = await _campaign(world, rule, 400, **terms)
        assert (refused["error"]["code"], refused["error"]["param"]) == (code, param), terms
    unknown = await world.call("GET", "/v1/operator/campaigns/cmp_00000000000000000000000000000000/gifts", 404,
                               headers=world.ops)
    assert unknown["error"]["code"] == "resource_missing"


async def test_the_one_statement_path_is_left_only_while_a_credit_can_apply(world: World) -> None:
    svc = world.client.app[SERVICES]
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    created = await world.payment(m, 1_000)
    pid, holder_id = decode(Kind.PAYMENT, created["id"]), decode(Kind.WALLET_HOLDER, h.id)
    assert pid is not None and holder_id is not None
    async with svc.db.connection() as conn:
        head = await payment_store.payable(conn, pid, holder_id)
    assert head is not None
    accounts = await payment_cases.payer_accounts(svc, holder_id, head["merchant_id"], head["currency"])

    def at_once() -> bool:
        return payment_cases.decide_payment(svc, head, holder_id, accounts, channel="wallet") is not None

    assert at_once()
    await _campaign(world, "gift_registration", fixed_amount=100)  # not a payment's: still at once
    await _campaign(world, "cashback", percent_bps=100, currency="USD")  # another currency: still at once
    assert at_once()
    cashback = await _campaign(world, "cashback", percent_bps=100, merchants=[m.id])
    assert not at_once()
    await world.call("POST", f"/v1/operator/campaigns/{cashback['id']}/end", headers=world.ops, json={})
    assert at_once()
    gift = await _campaign(world, "gift_first_payment", fixed_amount=100)
    assert not at_once()  # whether this is the holder's first payment is the general path's question
    await world.call("POST", f"/v1/operator/campaigns/{gift['id']}/end", headers=world.ops, json={})
    assert at_once()


async def _broken(db_url: str, break_sql: str, mend_sql: str) -> set[str]:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(break_sql)
        broken = {name for name, rows in (await invariants.check(conn)).items() if rows}
        await conn.execute(mend_sql)
        assert not any(rows for rows in (await invariants.check(conn)).values())
    finally:
        await conn.close()
    return broken


async def test_the_invariants_catch_a_cashback_or_gift_that_does_not_match(world: World, clean_db: str) -> None:
    m = await world.merchant()
    await _campaign(world, "cashback", percent_bps=1_000)
    await _campaign(world, "gift_first_payment", fixed_amount=300)
    h = await world.holder(top_up=10_000)
    await _paid(world, m, h, 1_000)
    assert await _broken(clean_db, "UPDATE payments SET cashback_minor = cashback_minor + 1 WHERE cashback_minor > 0",
                         "UPDATE payments SET cashback_minor = cashback_minor - 1 WHERE cashback_minor > 0") == {
        "promotions_account_differs_from_benefits", "cashback_differs_from_its_entry",
        "campaign_over_budget_or_places"}
    assert await _broken(clean_db, "UPDATE promotion_gifts SET amount_minor = amount_minor + 1",
                         "UPDATE promotion_gifts SET amount_minor = amount_minor - 1") == {
        "promotions_account_differs_from_benefits", "gifts_differ_from_their_entries",
        "campaign_over_budget_or_places"}
    assert await _broken(clean_db, "UPDATE campaign_uses SET uses = uses + 1",
                         "UPDATE campaign_uses SET uses = uses - 1") == {"campaign_holder_over_limit"}


async def test_cashback_on_a_payment_paid_from_another_currency_and_its_refund(world: World) -> None:
    """A EUR payment paid from a CNY wallet through a quote: the cashback is credited in EUR (the
    payment's currency); the refund nets it, and what the wallet received goes back to CNY at the
    payment's own rate (the conversion-return invariants prove it)."""
    await world.call("POST", "/v1/operator/fx_rates", 201, headers=world.ops,
                     json={"base": "EUR", "quote": "CNY", "rate": "7.8", "spread_bps": 0})
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    c = await _campaign(world, "cashback", percent_bps=1_000, currency="EUR")
    p = await world.payment(m, 1_000, "EUR")
    code = await world.call("POST", f"/v1/payments/{p['id']}/qr_codes", 201, headers=m.headers, json={})
    preview = await world.call("POST", "/v1/wallet/qr/preview", headers=h.headers, json={"payload": code["payload"]})
    assert preview["cashback_offer"] == {"campaign": c["id"], "amount": 100, "funded_by": "bank"}
    assert preview["fx_offer"] is not None
    paid = await world.call("POST", "/v1/wallet/qr/pay", headers=h.headers,
                            json={"payload": code["payload"], "fx_quote": preview["fx_offer"]["quote"]})
    assert paid["cashback"]["amount"] == 100 and paid["fx"]["to_amount"] >= 1_000
    excess = paid["fx"]["to_amount"] - 1_000
    assert await world.available(h, "EUR") == excess + 100
    refund = await world.call("POST", f"/v1/payments/{p['id']}/refunds", 201, headers=m.headers, json={})
    assert (refund["amount"], refund["cashback_clawed_back"]) == (1_000, 100)
    assert await world.available(h, "EUR") == excess + 100  # the 900 credited went back to CNY
    assert 100_000 - paid["fx"]["from_amount"] < await world.available(h, "CNY") < 100_000
