"""Attacks on the wallet holder's features (issue 13) from an adversarial review of 2026-12-03: money,
idempotency, tenancy and odd input. Each docstring states the behaviour held; those that say "Found by the
review" failed before their fix.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.integration.world import Holder, World, campaign_window


async def _rate(world: World, base: str = "USD", quote: str = "CNY", rate: str = "7.1", spread_bps: int = 0) -> Any:
    return await world.call("POST", "/v1/operator/fx_rates", 201, headers=world.ops,
                            json={"base": base, "quote": quote, "rate": rate, "spread_bps": spread_bps})


async def _quote(world: World, h: Holder, source: str = "CNY", target: str = "USD", expect: int = 201,
                 **amount: Any) -> Any:
    return await world.call("POST", "/v1/wallet/fx_quotes", expect, headers=h.headers,
                            json={"from_currency": source, "to_currency": target, **amount})


async def _post(world: World, path: str, headers: dict[str, str], body: Any, key: str | None = None
                ) -> tuple[int, Any]:
    hdrs = {**headers, **({"Idempotency-Key": key} if key else {})}
    resp = await world.client.post(path, headers=hdrs, json=body)
    return resp.status, await resp.json()


async def _balances(world: World, h: Holder) -> dict[str, int]:
    wallet = await world.call("GET", "/v1/wallet", headers=h.headers)
    return {b["currency"]: b["total"] for b in wallet["balances"]}


# --- attacks that failed -------------------------------------------------------------------------------


async def test_another_holders_quote_cannot_be_converted(world: World) -> None:
    """A quote is its holder's: another holder converting it gets a 4xx and nothing moves; the owner can
    still use it once."""
    await _rate(world)
    a, b = await world.holder(top_up=100_000), await world.holder(top_up=100_000)
    q = await _quote(world, a, sell_amount=10_000)
    status, body = await _post(world, "/v1/wallet/conversions", b.headers, {"quote": q["id"]}, str(uuid.uuid4()))
    assert 400 <= status < 500, (status, body)
    assert await _balances(world, b) == {"CNY": 100_000}
    status, body = await _post(world, "/v1/wallet/conversions", a.headers, {"quote": q["id"]}, str(uuid.uuid4()))
    assert status == 201, body


async def test_a_conversion_key_with_another_quote_is_an_idempotency_error(world: World) -> None:
    """One Idempotency-Key, two different quotes: the second is idempotency_key_reused (or its like), never a
    second conversion; a replay with the first body answers the first answer."""
    await _rate(world)
    a = await world.holder(top_up=100_000)
    q1, q2 = await _quote(world, a, sell_amount=10_000), await _quote(world, a, sell_amount=20_000)
    key = str(uuid.uuid4())
    s1, first = await _post(world, "/v1/wallet/conversions", a.headers, {"quote": q1["id"]}, key)
    assert s1 == 201, first
    s2, second = await _post(world, "/v1/wallet/conversions", a.headers, {"quote": q2["id"]}, key)
    assert 400 <= s2 < 500 and "idempotency" in second["error"]["code"], (s2, second)
    s3, third = await _post(world, "/v1/wallet/conversions", a.headers, {"quote": q1["id"]}, key)
    assert (s3, third) == (s1, first)
    assert (await _balances(world, a))["CNY"] == 90_000


async def test_one_quote_raced_by_many_keys_converts_once(world: World) -> None:
    """Ten conversions of one quote at once under ten keys: exactly one converts."""
    await _rate(world)
    a = await world.holder(top_up=100_000)
    q = await _quote(world, a, sell_amount=10_000)
    got = await asyncio.gather(*(_post(world, "/v1/wallet/conversions", a.headers, {"quote": q["id"]},
                                       str(uuid.uuid4())) for _ in range(10)))
    assert sorted(s for s, _ in got).count(201) == 1, got
    assert all(s == 201 or 400 <= s < 500 for s, _ in got), got
    assert (await _balances(world, a))["CNY"] == 90_000


async def test_concurrent_conversions_never_overdraw(world: World) -> None:
    """Two quotes each selling the whole balance, converted at once: one converts, the other is refused
    for funds; the balance is never negative."""
    await _rate(world)
    a = await world.holder(top_up=50_000)
    qs = [await _quote(world, a, sell_amount=50_000) for _ in range(4)]
    got = await asyncio.gather(*(_post(world, "/v1/wallet/conversions", a.headers, {"quote": q["id"]},
                                       str(uuid.uuid4())) for q in qs))
    assert [s for s, _ in got].count(201) == 1, got
    assert (await _balances(world, a))["CNY"] == 0


ODD_QUERIES = (
    "/v1/wallet/insights?month=2026-13", "/v1/wallet/insights?month=0000-01", "/v1/wallet/insights?month=9999-12",
    "/v1/wallet/insights?month=2026-1", "/v1/wallet/insights?currency=XXX", "/v1/wallet/insights?currency=cny",
    "/v1/wallet/insights?currency=", "/v1/wallet/insights?month=%00", "/v1/wallet/budgets?limit=0",
    "/v1/wallet/budgets?limit=100000", "/v1/wallet/budgets?limit=abc", "/v1/wallet/budgets?starting_after=zz",
    "/v1/wallet/notifications?unread=maybe", "/v1/wallet/notifications?starting_after=ntf_" + "0" * 40,
    "/v1/wallet/benefits?limit=-1", "/v1/wallet/benefits?starting_after=x", "/v1/wallet/devices?ending_before=x",
    "/v1/wallet/transactions?currency=ZZZ",
)


async def test_odd_wallet_queries_are_4xx(world: World) -> None:
    """Odd query strings on the holder's lists and insights: a 4xx naming the parameter, never a 500."""
    h = await world.holder()
    for path in ODD_QUERIES:
        resp = await world.client.get(path, headers=h.headers)
        body = await resp.json()
        assert resp.status < 500, (path, resp.status, body)


ODD_BODIES: tuple[tuple[str, Any], ...] = (
    ("/v1/wallet/budgets", {"category": "overall", "currency": "CNY", "amount": 10**30}),
    ("/v1/wallet/budgets", {"category": "overall", "currency": "CNY", "amount": -5}),
    ("/v1/wallet/budgets", {"category": "overall", "currency": "CNY", "amount": True}),
    ("/v1/wallet/budgets", {"category": "overall", "currency": "XXX", "amount": 100}),
    ("/v1/wallet/budgets", {"category": "OVERALL", "currency": "CNY", "amount": 100}),
    ("/v1/wallet/budgets", {"category": "overall", "currency": "CNY"}),
    ("/v1/wallet/fx_quotes", {"from_currency": "CNY", "to_currency": "USD", "sell_amount": 10**40}),
    ("/v1/wallet/fx_quotes", {"from_currency": "CNY", "to_currency": "USD", "receive_amount": 10**18}),
    ("/v1/wallet/fx_quotes", {"from_currency": "CNY", "to_currency": "ZZZ", "sell_amount": 100}),
    ("/v1/wallet/fx_quotes", {"from_currency": "CNY", "to_currency": "USD", "sell_amount": 100,
                              "receive_amount": 100}),
    ("/v1/wallet/fx_quotes", {"from_currency": "CNY", "to_currency": "USD"}),
    ("/v1/wallet/fx_quotes", {"from_currency": "CNY", "to_currency": "USD", "sell_amount": "100"}),
    ("/v1/wallet/fx_quotes", {"from_currency": "CNY", "to_currency": "JPY", "sell_amount": 100}),
    ("/v1/wallet/conversions", {"quote": "fxq_" + "z" * 30}),
    ("/v1/wallet/conversions", {"quote": 5}),
    ("/v1/wallet/conversions", {}),
    ("/v1/wallet/time_zone", {"time_zone": "Factory"}),
    ("/v1/wallet/time_zone", {"time_zone": "posixrules"}),
    ("/v1/wallet/time_zone", {"time_zone": "localtime"}),
    ("/v1/wallet/time_zone", {"time_zone": "../../etc/passwd"}),
    ("/v1/wallet/risk_challenges/chl_nope/verify", {"code": "123456"}),
    ("/v1/wallet/risk_challenges/chl_nope/verify", {"code": "12345678901234567890"}),
    ("/v1/wallet/challenges/x/verify", {"code": "123456"}),
    ("/v1/wallet/notifications/ntf_nope/read", {}),
)


async def test_odd_wallet_bodies_are_4xx_and_change_nothing(world: World) -> None:
    """Odd bodies on the holder's state-changing routes: a 4xx, never a 500; the wallet is unchanged."""
    await _rate(world)
    h = await world.holder(top_up=10_000)
    for path, body in ODD_BODIES:
        status, answer = await _post(world, path, h.headers, body, str(uuid.uuid4()))
        assert 400 <= status < 500 or path.endswith("time_zone"), (path, body, status, answer)
        assert status < 500, (path, body, status, answer)
    assert await _balances(world, h) == {"CNY": 10_000}


OPERATOR_ROUTES = (
    ("GET", "/v1/operator/risk_decisions"), ("GET", "/v1/operator/risk_alerts"), ("GET", "/v1/operator/campaigns"),
    ("POST", "/v1/operator/campaigns"), ("GET", "/v1/operator/fx_rates"), ("POST", "/v1/operator/fx_rates"),
    ("POST", "/v1/operator/fx_rates/import"), ("POST", "/v1/operator/risk_rules"),
    ("GET", "/v1/operator/events"), ("POST", "/v1/operator/wallet_holders/wh_x/verification"),
    ("POST", "/v1/operator/wallet_holders/wh_x/tier"), ("POST", "/v1/operator/lockouts/clear"),
    ("GET", "/v1/operator/ledger/invariants"),
)


async def test_operator_routes_refuse_merchant_and_wallet_tokens(world: World) -> None:
    """Every operator route refuses a merchant's secret key, its publishable key and a wallet token (401/403)."""
    m = await world.merchant()
    h = await world.holder()
    for method, path in OPERATOR_ROUTES:
        for headers in (m.headers, {"Authorization": f"Bearer {m.publishable}"}, h.headers):
            resp = await world.client.request(method, path, headers=headers, json={} if method == "POST" else None)
            assert resp.status in (401, 403), (method, path, resp.status, await resp.text())


# --- sign-in sessions and devices ----------------------------------------------------------------


async def _sessions(world: World, h: Holder) -> dict[str, Any]:
    return await world.call("GET", "/v1/wallet/devices", headers=h.headers)


async def test_a_revoked_device_is_signed_out_and_needs_a_code_again(world: World) -> None:
    """Revoking a device: its token answers 401 at once, the device leaves the list, its next sign-in is a
    challenge (202), not a token; the revoking device keeps working."""
    h = await world.holder(device_id="phone-a")
    other = await world.sign_in(h.phone, device_id="phone-b")
    listed = await _sessions(world, h)
    row = next(d for d in listed["data"] if d["device_id"] == "phone-b")
    await world.call("DELETE", f"/v1/wallet/devices/{row['id']}", headers=h.headers)
    assert (await world.client.get("/v1/wallet", headers={"Authorization": f"Bearer {other}"})).status == 401
    assert "phone-b" not in {d["device_id"] for d in (await _sessions(world, h))["data"]}
    resp = await world.client.post("/v1/wallet/sessions", json={"phone": h.phone, "password": "s3cret-pass",
                                                                "device_id": "phone-b"})
    assert resp.status == 202, await resp.json()
    assert (await world.client.get("/v1/wallet", headers=h.headers)).status == 200
    # Another holder cannot revoke (or see) this holder's devices.
    intruder = await world.holder(device_id="phone-x")
    mine = (await _sessions(world, h))["data"][0]
    resp = await world.client.delete(f"/v1/wallet/devices/{mine['id']}", headers=intruder.headers)
    assert resp.status == 404, await resp.json()


async def test_a_session_signed_in_without_a_device_is_listed_and_revocable(world: World) -> None:
    """Every signed-in session is something the holder can see in its device list and sign out there (issue
    13: "Holders can see and revoke their signed-in devices"). A sign-in that names no device_id answers a
    challenge, and verifying it yields a working token whose session has no device row: it appears nowhere in
    GET /v1/wallet/devices, so the holder can neither see nor revoke it (only a password change ends it).

    Expected: its session is listed and revocable like any other (it is on an ``unnamed-...`` device)."""
    h = await world.holder(device_id="phone-a")
    resp = await world.client.post("/v1/wallet/sessions", json={"phone": h.phone, "password": "s3cret-pass"})
    answer = await resp.json()
    assert resp.status == 202, answer  # allowed, through a code, on a device named for it
    hidden = str(answer["token"]) if resp.status == 201 else await world.answer(h.phone, answer)
    assert (await world.client.get("/v1/wallet", headers={"Authorization": f"Bearer {hidden}"})).status == 200
    listed = (await _sessions(world, h))["data"]
    # The hidden session is signed in, so the list must show two entries (phone-a and the new one).
    assert len(listed) == 2, listed


# --- a discounted payment paid from another currency ------------------------------------------------


async def _campaign(world: World, **terms: Any) -> Any:
    body = {"name": "Review", "currency": "EUR", "rule": "percent", "percent_bps": 1_000, "funded_by": "bank",
            "budget": 1_000_000, **campaign_window(), **terms}
    return await world.call("POST", "/v1/operator/campaigns", 201, headers=world.ops, json=body)


async def test_a_discounted_cross_currency_payment_converts_what_the_holder_pays(world: World) -> None:
    """A EUR payment of 10.00 with a bank-funded 10% discount, paid from a CNY wallet through the preview's
    quote: the holder pays 9.00 EUR. The preview's fx_offer must convert what the holder pays (9.00, not the
    list price), and a full refund must give back every CNY unit the conversion sold for the payment, leaving
    no EUR behind that the holder never asked for.

    Found by the review (fixed since): the offer (services/fx_payments.py ``offer``: ``amount = payment["amount_minor"]``) quotes the list
    price 10.00: the holder is made to buy 1.00 EUR it does not need (paying spread and fee on it), keeps it in
    an EUR wallet after the payment, and after a full refund still holds it (CNY 99,217 + EUR 1.00 instead of
    CNY 100,000 at a 0 spread)."""
    await world.call("POST", "/v1/operator/fx_rates", 201, headers=world.ops,
                     json={"base": "EUR", "quote": "CNY", "rate": "7.8", "spread_bps": 0})
    await _campaign(world)
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    p = await world.payment(m, 1_000, "EUR")
    code = await world.call("POST", f"/v1/payments/{p['id']}/qr_codes", 201, headers=m.headers, json={})
    preview = await world.call("POST", "/v1/wallet/qr/preview", headers=h.headers, json={"payload": code["payload"]})
    offer, discount = preview["fx_offer"], preview["discount_offer"]
    assert discount is not None and discount["amount"] == 100, discount
    paid = await world.call("POST", "/v1/wallet/qr/pay", headers={**h.headers, "Idempotency-Key": "fx-disc"},
                            json={"payload": code["payload"], "fx_quote": offer["quote"]})
    assert paid["status"] == "succeeded", paid
    after_pay = await _balances(world, h)
    await world.call("POST", f"/v1/payments/{p['id']}/refunds", 201, headers=m.headers, json={})
    after_refund = await _balances(world, h)
    assert (offer, after_pay, after_refund) and offer["amount"] == 900, (offer, after_pay, after_refund)
    assert after_refund.get("EUR", 0) == 0 and after_refund["CNY"] == 100_000, (offer, after_pay, after_refund)


async def test_an_expired_quote_converts_nothing_and_pays_nothing(clean_db: str) -> None:
    """A quote past its validity (quote_ttl_s 1 s): a conversion and a payment with it are 4xx and move nothing."""
    from tests.conftest import make_settings
    from tests.integration.conftest import serving
    async with serving(clean_db, make_settings(fx={"quote_ttl_s": 1})) as client:
        world = await World.create(client)
        await _rate(world, "EUR", "CNY", "7.8")
        m = await world.merchant()
        h = await world.holder(top_up=100_000)
        q = await _quote(world, h, "CNY", "EUR", sell_amount=10_000)
        p = await world.payment(m, 500, "EUR")
        pay_quote = await _quote(world, h, "CNY", "EUR", receive_amount=500)
        await asyncio.sleep(1.6)
        status, body = await _post(world, "/v1/wallet/conversions", h.headers, {"quote": q["id"]}, "exp-1")
        assert 400 <= status < 500, (status, body)
        status, body = await _post(world, f"/v1/wallet/payments/{p['id']}/pay", h.headers,
                                   {"fx_quote": pay_quote["id"]}, "exp-2")
        assert 400 <= status < 500, (status, body)
        got = await _balances(world, h)
        assert (got["CNY"], got.get("EUR", 0)) == (100_000, 0), got
        looked = await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers)
        assert looked["status"] == "requires_payment_method"


async def test_a_holder_cannot_read_a_payment_another_holder_paid(world: World) -> None:
    """Once holder A paid a payment, holder B retrieving it by id gets 404 (no amount, merchant, fx or discount
    of A's)."""
    m = await world.merchant()
    a, b = await world.holder(top_up=10_000), await world.holder(top_up=10_000)
    p = await world.payment(m, 500)
    await world.pay(a, p["id"], key="a-pays")
    resp = await world.client.get(f"/v1/payments/{p['id']}", headers=b.headers)
    assert resp.status == 404, (resp.status, await resp.json())
    status, body = await _post(world, f"/v1/wallet/payments/{p['id']}/pay", b.headers, {}, "b-pays")
    assert 400 <= status < 500, (status, body)
    assert await _balances(world, b) == {"CNY": 10_000}


async def test_a_manual_cross_currency_payment_previews_no_discount_it_would_not_get(world: World) -> None:
    """The holder's view of a payment shows the discount that will apply (issue 13). A manual-capture EUR payment
    of 10.00 with a live bank-funded 10% campaign, seen by a holder with only CNY: GET /v1/payments/{id} shows
    discount_offer (1.00 off, amount_to_pay 9.00) next to an fx_offer converting 10.00. Paying with that
    fx_offer's quote reserves no discount at all (services/payments.py ``_authorize_locked``: "not through a
    quote, whose conversion is for the full amount"), so a capture of 5.00 takes the full 5.00.

    Expected: what the preview offers is what the payment gets: either the discount is reserved (and the quote
    converts what the holder pays), or no discount_offer is shown beside an fx_offer that excludes it."""
    await world.call("POST", "/v1/operator/fx_rates", 201, headers=world.ops,
                     json={"base": "EUR", "quote": "CNY", "rate": "7.8", "spread_bps": 0})
    await _campaign(world)
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    p = await world.payment(m, 1_000, "EUR", capture_method="manual")
    looked = await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers)
    offered, fx_offer = looked["discount_offer"], looked["fx_offer"]
    assert fx_offer is not None
    paid = await world.call("POST", f"/v1/wallet/payments/{p['id']}/pay", headers={**h.headers,
                            "Idempotency-Key": "m-fx"}, json={"fx_quote": fx_offer["quote"]})
    assert paid["status"] == "requires_capture", paid
    await world.call("POST", f"/v1/payments/{p['id']}/capture", headers=m.headers, json={"amount_to_capture": 500})
    seen = await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers)
    got = None if seen["discount"] is None else seen["discount"]["amount"]
    assert (offered is None) == (got is None), (offered, seen["discount"])


# --- risk across channels --------------------------------------------------------------------------


async def _rule(world: World, **body: Any) -> Any:
    return await world.call("POST", "/v1/operator/risk_rules", 201, headers=world.ops, json=body)


async def test_a_velocity_rule_counts_every_channel_the_holder_pays_by(world: World) -> None:
    """velocity_wallet max_count 2 per hour, decline: a payment by id, then a dynamic QR, then a static QR (one
    key each): the third is declined, whatever channel; a replay of the first answers the first answer."""
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    await _rule(world, kind="velocity_wallet", outcome="decline", window_s=3600, max_count=2, currency="CNY",
                wallet=h.id)
    p1 = await world.payment(m, 100)
    s1, first = await _post(world, f"/v1/wallet/payments/{p1['id']}/pay", h.headers, {}, "v-1")
    assert s1 == 200, first
    p2 = await world.payment(m, 100)
    code = await world.call("POST", f"/v1/payments/{p2['id']}/qr_codes", 201, headers=m.headers, json={})
    s2, second = await _post(world, "/v1/wallet/qr/pay", h.headers, {"payload": code["payload"]}, "v-2")
    assert s2 == 200, second
    static = await world.call("GET", f"/v1/stores/{m.store}/qr_code?currency=CNY", headers=m.headers)
    s3, third = await _post(world, "/v1/wallet/qr/pay", h.headers, {"payload": static["payload"], "amount": 100},
                            "v-3")
    assert (s3, third["error"]["code"]) == (402, "risk_declined"), (s3, third)
    assert await _post(world, f"/v1/wallet/payments/{p1['id']}/pay", h.headers, {}, "v-1") == (s1, first)
    assert (await _balances(world, h))["CNY"] == 100_000 - 200


async def test_a_blocked_wallet_cannot_convert_around_its_block(world: World) -> None:
    """blocked_wallet, decline: the holder's EUR payment paid from CNY through a quote is declined and
    converts nothing."""
    await world.call("POST", "/v1/operator/fx_rates", 201, headers=world.ops,
                     json={"base": "EUR", "quote": "CNY", "rate": "7.8", "spread_bps": 0})
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    await _rule(world, kind="blocked_wallet", outcome="decline", wallet=h.id)
    p = await world.payment(m, 1_000, "EUR")
    looked = await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers)
    status, body = await _post(world, f"/v1/wallet/payments/{p['id']}/pay", h.headers,
                               {"fx_quote": looked["fx_offer"]["quote"]}, "blocked-fx")
    assert (status, body["error"]["code"]) == (402, "risk_declined"), (status, body)
    got = await _balances(world, h)
    assert (got["CNY"], got.get("EUR", 0)) == (100_000, 0), got


async def test_a_payment_code_opens_one_payment_once_and_dies_after_its_wrong_tries(world: World) -> None:
    """blocked_wallet with require_otp: the code verified for one payment pays it once; a second payment of the
    same merchant and amount needs its own code; a challenge answered wrongly code_attempts_max times is dead even
    for the right code; another holder cannot answer (or burn) a holder's challenge."""
    from tests.conftest import sms_gateway
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    other = await world.holder(top_up=100_000)
    await _rule(world, kind="blocked_wallet", outcome="require_otp", wallet=h.id)
    p1, p2 = await world.payment(m, 300), await world.payment(m, 300)
    s, asked = await _post(world, f"/v1/wallet/payments/{p1['id']}/pay", h.headers, {}, "otp-1")
    assert (s, asked["error"]["code"]) == (402, "otp_required"), asked
    challenge = asked["error"]["challenge"]
    code = await sms_gateway().code(h.phone, challenge)
    s, body = await _post(world, f"/v1/wallet/risk_challenges/{challenge}/verify", other.headers, {"code": code})
    assert s == 404, body
    await world.call("POST", f"/v1/wallet/risk_challenges/{challenge}/verify", headers=h.headers, json={"code": code})
    s, body = await _post(world, f"/v1/wallet/payments/{p1['id']}/pay", h.headers, {}, "otp-2")
    assert s == 200, body
    s, body = await _post(world, f"/v1/wallet/payments/{p2['id']}/pay", h.headers, {}, "otp-3")
    assert (s, body["error"]["code"]) == (402, "otp_required"), body
    challenge2 = body["error"]["challenge"]
    right = await sms_gateway().code(h.phone, challenge2)
    wrong = "000000" if right != "000000" else "111111"
    for _ in range(5):
        s, body = await _post(world, f"/v1/wallet/risk_challenges/{challenge2}/verify", h.headers, {"code": wrong})
        assert s == 403, body
    s, body = await _post(world, f"/v1/wallet/risk_challenges/{challenge2}/verify", h.headers, {"code": right})
    assert (s, body["error"]["code"]) == (403, "challenge_dead"), body
    s, body = await _post(world, f"/v1/wallet/payments/{p2['id']}/pay", h.headers, {}, "otp-4")
    assert (s, body["error"]["code"]) == (402, "otp_required"), body
    assert (await _balances(world, h))["CNY"] == 100_000 - 300


async def test_per_holder_limit_and_places_hold_under_concurrent_pays(world: World) -> None:
    """per_holder_limit 1 and places 3: one holder paying six payments at once gets one discount; six holders
    at once take the remaining two places; the campaign's counts agree with the payments."""
    await _campaign(world, currency="CNY", per_holder_limit=1, places=3)
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    ps = [await world.payment(m, 1_000) for _ in range(6)]
    got = await asyncio.gather(*(_post(world, f"/v1/wallet/payments/{p['id']}/pay", h.headers, {},
                                       str(uuid.uuid4())) for p in ps))
    assert all(s == 200 for s, _ in got), got
    assert sum(1 for _, b in got if b.get("discount")) == 1, got
    others = [await world.holder(top_up=10_000) for _ in range(6)]
    ps = [await world.payment(m, 1_000) for _ in others]
    got = await asyncio.gather(*(_post(world, f"/v1/wallet/payments/{p['id']}/pay", o.headers, {},
                                       str(uuid.uuid4())) for p, o in zip(ps, others, strict=True)))
    assert all(s == 200 for s, _ in got), got
    assert sum(1 for _, b in got if b.get("discount")) == 2, got


async def test_one_verified_payment_code_raced_by_two_payments_opens_one(world: World) -> None:
    """A verified code for (merchant, amount): two payments of that merchant and amount paid at once, several
    times each under different keys: exactly one is paid, the others need a code."""
    from tests.conftest import sms_gateway
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    await _rule(world, kind="blocked_wallet", outcome="require_otp", wallet=h.id)
    p1, p2 = await world.payment(m, 300), await world.payment(m, 300)
    s, asked = await _post(world, f"/v1/wallet/payments/{p1['id']}/pay", h.headers, {}, "race-otp-0")
    challenge = asked["error"]["challenge"]
    code = await sms_gateway().code(h.phone, challenge)
    await world.call("POST", f"/v1/wallet/risk_challenges/{challenge}/verify", headers=h.headers, json={"code": code})
    got = await asyncio.gather(*(_post(world, f"/v1/wallet/payments/{p['id']}/pay", h.headers, {},
                                       str(uuid.uuid4())) for p in (p1, p2, p1, p2, p1, p2)))
    paid = {b["id"] for s, b in got if s == 200}
    assert len(paid) == 1, got
    assert (await _balances(world, h))["CNY"] == 100_000 - 300


# --- spending ----------------------------------------------------------------------------------------


async def test_a_refunded_purchase_with_cashback_counts_no_spending(world: World) -> None:
    """Insights and budgets count spending net of refunds (issue 13). A 10.00 CNY purchase with a bank-funded
    5% cashback, then refunded in full: the holder got the 0.50 cashback, and the refund nets the claw-back
    (it credits 9.50), so the holder is exactly where it started. Its month's spending must be 0.

    Found by the review (fixed since): store/spending.py counts the wallet's ``capture`` (-10.00) and ``refund`` (+9.50) postings but not
    the ``cashback`` credit (+0.50) its claw-back is netted against: the month shows 0.50 spent at the merchant,
    for a purchase wholly refunded (and a budget would count it towards its reminders)."""
    await _campaign(world, currency="CNY", rule="cashback", percent_bps=500)
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    p = await world.payment(m, 1_000)
    paid = await world.pay(h, p["id"], key="cb-pay")
    assert paid["status"] == "succeeded", paid
    refund = await world.call("POST", f"/v1/payments/{p['id']}/refunds", 201, headers=m.headers, json={})
    assert refund["cashback_clawed_back"] == 50, refund
    assert (await _balances(world, h))["CNY"] == 10_000
    insights = await world.call("GET", "/v1/wallet/insights", headers=h.headers)
    totals = {c["currency"]: c["total"] for c in insights["currencies"]}
    assert totals.get("CNY", 0) == 0, insights


# --- odd operator input ------------------------------------------------------------------------------


async def test_odd_risk_rules_and_campaigns_are_4xx(world: World) -> None:
    """Huge, negative or mistyped numbers, unknown currencies and zones, impossible dates in risk rules and
    campaigns: a 4xx naming the field, never a 500, and nothing created.

    Found (risk rules only; every campaign case is refused cleanly): max_count >= 2**31 (an int4 column),
    max_amount >= 2**63 and a new_device min_amount >= 2**63 reach asyncpg and answer 500 (OverflowError /
    DataError): services/risk.py ``_velocity_terms`` bounds max_count and max_amount only from below, and
    ``_terms`` min_amount the same."""
    h = await world.holder()
    big = 2**63
    rules: list[dict[str, Any]] = [
        {"kind": "velocity_wallet", "outcome": "decline", "window_s": 10**12, "max_count": 1},
        {"kind": "velocity_wallet", "outcome": "decline", "window_s": 60, "max_count": big},
        {"kind": "velocity_wallet", "outcome": "decline", "window_s": 60, "max_count": 2**31},
        {"kind": "velocity_wallet", "outcome": "decline", "window_s": 60, "max_amount": big, "currency": "CNY"},
        {"kind": "velocity_wallet", "outcome": "decline", "window_s": 60, "max_amount": 2**62, "currency": "CNY"},
        {"kind": "velocity_wallet", "outcome": "decline", "window_s": -1, "max_count": 1},
        {"kind": "velocity_wallet", "outcome": "decline", "window_s": 0, "max_count": 1},
        {"kind": "velocity_wallet", "outcome": "decline", "window_s": 2**31, "max_count": 1},
        {"kind": "amount_unusual", "outcome": "decline", "currency": "CNY", "multiplier_pct": big,
         "baseline": "median", "history_min": 1},
        {"kind": "amount_unusual", "outcome": "decline", "currency": "CNY", "multiplier_pct": 300,
         "baseline": "median", "history_min": 2**31},
        {"kind": "amount_unusual", "outcome": "decline", "currency": "XXX", "multiplier_pct": 300,
         "baseline": "median", "history_min": 3},
        {"kind": "new_device", "outcome": "decline", "currency": "CNY", "device_age_s": 2**31, "min_amount": 1},
        {"kind": "new_device", "outcome": "decline", "currency": "CNY", "device_age_s": 10**15, "min_amount": 1},
        {"kind": "new_device", "outcome": "decline", "currency": "CNY", "device_age_s": 60, "min_amount": big},
        {"kind": "blocked_wallet", "outcome": "decline", "wallet": h.id + "0"},
        {"kind": "blocked_device", "outcome": "decline", "device_id": ""},
        {"kind": "velocity_merchant", "outcome": "decline", "window_s": 60, "max_count": 1, "merchant": "mer_zz"},
    ]
    failed = []
    for body in rules:
        status, answer = await _post(world, "/v1/operator/risk_rules", world.ops, body, str(uuid.uuid4()))
        if status >= 500:
            failed.append(("risk_rules", body))
    base = {"name": "Odd", "currency": "CNY", "rule": "percent", "percent_bps": 1_000, "funded_by": "bank",
            "budget": 1_000, **campaign_window()}
    campaigns: list[dict[str, Any]] = [
        {**base, "budget": big}, {**base, "budget": 2**62}, {**base, "cap": big}, {**base, "min_amount": big},
        {**base, "time_zone": "Mars/Olympus"}, {**base, "time_zone": "Factory"}, {**base, "starts_at": "2026-02-30T00:00:00"},
        {**base, "starts_at": "2026-03-29T02:30:00", "time_zone": "Europe/Paris"}, {**base, "mccs": ["58a2"]},
        {**base, "mccs": ["5812", "5812"]}, {**base, "merchants": ["mer_" + "0" * 32]}, {**base, "stores": ["x"]},
        {**base, "currency": "XXX"}, {**base, "currency": "XTS"}, {**base, "rule": "fixed", "percent_bps": 0,
                                                                    "fixed_amount": big},
        {**base, "rule": "cashback", "percent_bps": 0, "fixed_amount": 2**62},
        {**base, "rule": "gift_registration", "percent_bps": 0, "fixed_amount": 2**62},
    ]
    for body in campaigns:
        status, answer = await _post(world, "/v1/operator/campaigns", world.ops, body, str(uuid.uuid4()))
        if status >= 500:
            failed.append(("campaigns", body))
    assert not failed, '\n'.join(map(repr, failed))


async def test_odd_operator_queries_and_pay_bodies_are_4xx(world: World) -> None:
    """Odd operator list filters and odd payment bodies (static QR amounts, quotes of the wrong type): 4xx, never
    500, nothing paid."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    failed = []
    for path in ("/v1/operator/risk_decisions?wallet=wh_zz", "/v1/operator/risk_decisions?wallet=" + "a" * 64,
                 "/v1/operator/risk_decisions?outcome=maybe", "/v1/operator/risk_alerts?wallet=mer_x",
                 "/v1/operator/risk_decisions?limit=101", "/v1/operator/campaigns?starting_after=cmp_zz",
                 "/v1/operator/fx_rates?base=ZZZ", "/v1/operator/fx_rates?base=usd&quote=CNY",
                 "/v1/operator/campaigns/cmp_nope/gifts", "/v1/operator/campaigns/" + "x" * 300,
                 "/v1/operator/risk_rules/rsk_" + "f" * 32, "/v1/operator/events?type=" + "x" * 500):
        resp = await world.client.get(path, headers=world.ops)
        if resp.status >= 500:
            failed.append((path, resp.status))
    static = await world.call("GET", f"/v1/stores/{m.store}/qr_code?currency=CNY", headers=m.headers)
    p = await world.payment(m, 100)
    for path, body in (("/v1/wallet/qr/pay", {"payload": static["payload"], "amount": 10**30}),
                       ("/v1/wallet/qr/pay", {"payload": static["payload"], "amount": 2**63}),
                       ("/v1/wallet/qr/pay", {"payload": static["payload"], "amount": 0}),
                       ("/v1/wallet/qr/pay", {"payload": static["payload"], "amount": 100, "fx_quote": "fxq_x"}),
                       ("/v1/wallet/qr/pay", {"payload": static["payload"], "amount": 100, "fx_quote": 7}),
                       ("/v1/wallet/qr/pay", {"payload": static["payload"], "amount": 100, "pin": 1234}),
                       ("/v1/wallet/qr/pay", {"payload": "0" * 5000}),
                       ("/v1/wallet/qr/preview", {"payload": static["payload"] + "x"}),
                       (f"/v1/wallet/payments/{p['id']}/pay", {"fx_quote": "fxq_" + "0" * 32}),
                       (f"/v1/wallet/payments/{p['id']}/pay", {"fx_quote": ""}),
                       (f"/v1/wallet/payments/{p['id']}/confirm", {"otp": "12"}),
                       ("/v1/wallet/pay_codes", {}),
                       ("/v1/wallet/top_ups", {"bank_account": h.bank_account, "amount": 2**63, "currency": "CNY"}),
                       ("/v1/wallet/withdrawals", {"bank_account": h.bank_account, "amount": 2**62, "currency": "CNY"})):
        status, answer = await _post(world, path, h.headers, body, str(uuid.uuid4()))
        if status >= 500:
            failed.append((path, body, status))
    assert not failed, "\n".join(map(repr, failed))
    assert (await _balances(world, h))["CNY"] == 10_000


async def test_another_holders_quote_cannot_fund_a_payment_and_a_foreign_pay_code_charge_is_4xx(
        world: World) -> None:
    """Holder B paying with holder A's quote: 4xx, nothing moves, A can still pay with it. A pay-code charge in
    EUR on a CNY-only wallet (nobody at the counter can pick a quote): a clean 4xx decline, nothing moves."""
    await world.call("POST", "/v1/operator/fx_rates", 201, headers=world.ops,
                     json={"base": "EUR", "quote": "CNY", "rate": "7.8", "spread_bps": 0})
    m = await world.merchant()
    a, b = await world.holder(top_up=100_000), await world.holder(top_up=100_000)
    p = await world.payment(m, 1_000, "EUR")
    offer = (await world.call("GET", f"/v1/payments/{p['id']}", headers=a.headers))["fx_offer"]
    status, body = await _post(world, f"/v1/wallet/payments/{p['id']}/pay", b.headers, {"fx_quote": offer["quote"]},
                               "b-uses-a")
    assert 400 <= status < 500, (status, body)
    got = await _balances(world, b)
    assert (got["CNY"], got.get("EUR", 0)) == (100_000, 0), got
    status, body = await _post(world, f"/v1/wallet/payments/{p['id']}/pay", a.headers, {"fx_quote": offer["quote"]},
                               "a-uses-a")
    assert status == 200, body
    c = await world.holder(top_up=100_000)
    token = await world.sign_in(c.phone, device_id="phone-c")
    issued = await world.call("POST", "/v1/wallet/pay_codes", 201, headers={"Authorization": f"Bearer {token}"},
                              json={})
    resp = await world.client.post("/v1/pay_code_charges", headers=m.headers,
                                   json={"pay_code": issued["code"], "amount": 500, "currency": "EUR",
                                         "store": m.store})
    assert 400 <= resp.status < 500, (resp.status, await resp.json())
    got = await _balances(world, c)
    assert (got["CNY"], got.get("EUR", 0)) == (100_000, 0), got


async def test_a_sign_in_started_with_the_old_password_dies_with_a_password_change(world: World) -> None:
    """A password change signs out every other session and device (issue 13). A sign-in started with the old
    password before the change (an attacker who knew it: a challenge for a new device, its code on the way to
    the phone) must die with the change: verifying its code afterwards must not give a token.

    Found by the review (fixed since): change_password (services/sign_in.py) revokes sessions and device trust but leaves the holder's live
    sign-in challenges alone, so the old password's challenge still exchanges its code for a working token."""
    h = await world.holder(device_id="phone-a")
    resp = await world.client.post("/v1/wallet/sessions", json={"phone": h.phone, "password": "s3cret-pass",
                                                                "device_id": "attacker"})
    challenge = await resp.json()
    assert resp.status == 202, challenge
    await world.call("POST", "/v1/wallet/password", headers=h.headers,
                     json={"current_password": "s3cret-pass", "new_password": "another-pass-42"})
    from tests.conftest import sms_gateway
    code = await sms_gateway().code(h.phone, challenge["id"])
    resp = await world.client.post(f"/v1/wallet/challenges/{challenge['id']}/verify", json={"code": code})
    body = await resp.json()
    assert resp.status in (401, 403, 409), (resp.status, body)


async def test_a_revoked_devices_pay_code_cannot_be_charged(world: World) -> None:
    """A pay-code issued on a device, then the device revoked from another: charging the code is refused and
    nothing moves."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000, device_id="phone-a")
    token_b = await world.sign_in(h.phone, device_id="phone-b")
    issued = await world.call("POST", "/v1/wallet/pay_codes", 201, headers={"Authorization": f"Bearer {token_b}"},
                              json={})
    row = next(d for d in (await _sessions(world, h))["data"] if d["device_id"] == "phone-b")
    await world.call("DELETE", f"/v1/wallet/devices/{row['id']}", headers=h.headers)
    resp = await world.client.post("/v1/pay_code_charges", headers=m.headers,
                                   json={"pay_code": issued["code"], "amount": 500, "currency": "CNY",
                                         "store": m.store})
    assert 400 <= resp.status < 500, (resp.status, await resp.json())
    assert (await _balances(world, h))["CNY"] == 10_000


async def test_a_password_change_ends_the_other_devices_pay_codes(
        world: World) -> None:
    """A password change signs out every other device (issue 13), as revoking each would: revoking a device
    also kills its unused pay-codes and tap tokens (services/sign_in.py ``revoke_device``). After a password
    change (the holder lost its phone), a pay-code the other device issued must no longer be charged.

    Found by the review (fixed since): ``change_password`` revokes the other sessions and device trust only
    (store.sign_in.revoke_other_sessions); it never calls ``expire_device_pay_codes`` nor
    ``revoke_phone_tap_tokens``, so the lost phone's pay-code is charged, and its tap tokens keep paying."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000, device_id="phone-a")
    token_b = await world.sign_in(h.phone, device_id="phone-b")
    issued = await world.call("POST", "/v1/wallet/pay_codes", 201, headers={"Authorization": f"Bearer {token_b}"},
                              json={})
    await world.call("POST", "/v1/wallet/password", headers=h.headers,
                     json={"current_password": "s3cret-pass", "new_password": "another-pass-42"})
    assert (await world.client.get("/v1/wallet", headers={"Authorization": f"Bearer {token_b}"})).status == 401
    resp = await world.client.post("/v1/pay_code_charges", headers=m.headers,
                                   json={"pay_code": issued["code"], "amount": 500, "currency": "CNY",
                                         "store": m.store})
    body = await resp.json()
    assert 400 <= resp.status < 500, (resp.status, body)
    assert (await _balances(world, h))["CNY"] == 10_000


async def test_a_sign_in_without_a_device_meets_the_device_rules(world: World) -> None:
    """velocity_device (max 1 payment an hour per device, decline) must limit a holder's payments whatever it
    signs in with. A session signed in without device_id (it is allowed, with one code)
    pays with no device, and domain/risk.py ``applies`` makes every device rule skip such a payment: two
    payments in a row both succeed, so signing in without a device_id escapes velocity_device and
    blocked_device alike.

    Expected: the second payment is declined (a device-less payment counts as one unknown device, or a
    sign-in without device_id is refused)."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000, device_id="phone-a")
    await _rule(world, kind="velocity_device", outcome="decline", window_s=3600, max_count=1)
    # Control: from phone-a the rule holds.
    c1, c2 = await world.payment(m, 100), await world.payment(m, 100)
    assert (await _post(world, f"/v1/wallet/payments/{c1['id']}/pay", h.headers, {}, "dev-1"))[0] == 200
    assert (await _post(world, f"/v1/wallet/payments/{c2['id']}/pay", h.headers, {}, "dev-2"))[0] == 402
    resp = await world.client.post("/v1/wallet/sessions", json={"phone": h.phone, "password": "s3cret-pass"})
    answer = await resp.json()
    assert resp.status == 202, answer
    token = str(answer["token"]) if resp.status == 201 else await world.answer(h.phone, answer)
    bare = Holder(h.id, h.phone, token, h.bank_account)
    p1, p2 = await world.payment(m, 100), await world.payment(m, 100)
    s1, b1 = await _post(world, f"/v1/wallet/payments/{p1['id']}/pay", bare.headers, {}, "nodev-1")
    assert s1 == 200, b1
    s2, b2 = await _post(world, f"/v1/wallet/payments/{p2['id']}/pay", bare.headers, {}, "nodev-2")
    assert (s2, b2.get("error", {}).get("code")) == (402, "risk_declined"), (s2, b2)


# --- a second review of the fixes (2026-12-03 night) ------------------------------------------------

async def test_a_refunded_purchase_with_merchant_cashback_counts_no_spending(world: World) -> None:
    """A 10.00 CNY purchase with a merchant-funded 5% cashback (its legs are in the capture entry: the wallet's
    capture postings are -10.00 and +0.50), refunded in full (the wallet gets 9.50, 0.50 clawed back to the
    merchant): the holder is where it started, the month's spending must be 0. _SPENT now adds the claw-back
    to the refund although the capture entry already netted the cashback: -0.50."""
    m = await world.merchant()
    await _campaign(world, currency="CNY", rule="cashback", percent_bps=500, funded_by="merchant",
                    merchants=[m.id])
    h = await world.holder(top_up=10_000)
    p = await world.payment(m, 1_000)
    paid = await world.pay(h, p["id"], key="mcb-pay")
    assert paid["status"] == "succeeded" and paid["cashback"]["funded_by"] == "merchant", paid
    refund = await world.call("POST", f"/v1/payments/{p['id']}/refunds", 201, headers=m.headers, json={})
    assert refund["cashback_clawed_back"] == 50, refund
    assert (await _balances(world, h))["CNY"] == 10_000
    insights = await world.call("GET", "/v1/wallet/insights", headers=h.headers)
    totals = {c["currency"]: c["total"] for c in insights["currencies"]}
    assert totals.get("CNY", 0) == 0, insights


async def test_a_manual_payment_the_wallet_can_pay_discounted_keeps_its_discount_offer(world: World) -> None:
    """A manual-capture EUR 10.00 payment, bank-funded 10% campaign; the holder has EUR 9.50 (enough for the
    discounted hold of 9.00) and CNY. Paying without a quote reserves the 1.00 discount; the preview must show
    that discount_offer. fx_payments.offers quotes the full 10.00 (pays_through_quote ignores the discount for a
    manual capture), finds EUR short, offers a quote and drops the discount_offer."""
    await world.call("POST", "/v1/operator/fx_rates", 201, headers=world.ops,
                     json={"base": "EUR", "quote": "CNY", "rate": "7.8", "spread_bps": 0})
    await _campaign(world)
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    q = await world.call("POST", "/v1/wallet/fx_quotes", 201, headers=h.headers,
                         json={"from_currency": "CNY", "to_currency": "EUR", "receive_amount": 950})
    await world.call("POST", "/v1/wallet/conversions", 201, headers={**h.headers, "Idempotency-Key": "to-eur"},
                     json={"quote": q["id"]})
    assert (await _balances(world, h)).get("EUR") == 950
    p = await world.payment(m, 1_000, "EUR", capture_method="manual")
    looked = await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers)
    paid = await world.call("POST", f"/v1/wallet/payments/{p['id']}/pay",
                            headers={**h.headers, "Idempotency-Key": "m-eur"}, json={})
    assert paid["status"] == "requires_capture", paid
    assert looked["discount_offer"] is not None, (looked["discount_offer"], looked["fx_offer"], paid.get("discount"))


async def test_a_merchant_funded_discount_paid_through_a_quote_then_refunded_in_parts_holds(world: World) -> None:
    """Held: EUR 10.00 automatic, merchant-funded 10% discount, paid through the preview's quote (for 9.00),
    refunded 4.00 then the rest: the wallet ends with its CNY and no EUR; the invariants (teardown) pass."""
    await world.call("POST", "/v1/operator/fx_rates", 201, headers=world.ops,
                     json={"base": "EUR", "quote": "CNY", "rate": "7.8", "spread_bps": 0})
    m = await world.merchant()
    await _campaign(world, funded_by="merchant", merchants=[m.id])
    h = await world.holder(top_up=100_000)
    p = await world.payment(m, 1_000, "EUR")
    looked = await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers)
    assert looked["fx_offer"]["amount"] == 900, looked
    paid = await world.call("POST", f"/v1/wallet/payments/{p['id']}/pay",
                            headers={**h.headers, "Idempotency-Key": "mf-fx"}, json={"fx_quote": looked["fx_offer"]["quote"]})
    assert paid["status"] == "succeeded", paid
    await world.call("POST", f"/v1/payments/{p['id']}/refunds", 201, headers=m.headers, json={"amount": 400})
    await world.call("POST", f"/v1/payments/{p['id']}/refunds", 201, headers=m.headers, json={})
    got = await _balances(world, h)
    assert got.get("EUR", 0) == 0 and got["CNY"] == 100_000, got
