"""Paying in a currency the wallet lacks, over real HTTP and PostgreSQL: the preview's offer, the quote
honoured once, holds, refunds converted back at the original rate, and the races.

Every test ends with the ledger invariant checker (the ``serving`` fixture): the conversion-return and
payment-conversion invariants included.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from gateway.domain import fees
from gateway.domain import fx as domain
from gateway.domain.fx_payments import share
from gateway.domain.money import currency
from gateway.services import fx_payments
from gateway.services import payments as payment_cases
from gateway.store import invariants
from tests.conftest import make_settings
from tests.integration.conftest import serving
from tests.integration.world import Holder, Merchant, World

FEE_BPS = make_settings().fx.fee_bps


async def _rate(world: World, base: str, quote: str, rate: str, spread_bps: int = 0) -> Any:
    return await world.call("POST", "/v1/operator/fx_rates", 201, headers=world.ops,
                            json={"base": base, "quote": quote, "rate": rate, "spread_bps": spread_bps})


def _expected(source: str, target: str, rate: str, base: str, spread_bps: int, amount_minor: int,
              fee_bps: int = FEE_BPS) -> domain.Quote:
    mid = domain.directional(Decimal(rate), base, source)
    return domain.Quote.receiving(currency(source), currency(target), domain.holder_rate(mid, spread_bps), fee_bps,
                                  amount_minor)


async def _balances(world: World, h: Holder) -> dict[str, tuple[int, int]]:
    """(total, held) by currency."""
    wallet = await world.call("GET", "/v1/wallet", headers=h.headers)
    return {b["currency"]: (b["total"], b["held"]) for b in wallet["balances"]}


async def _qr(world: World, m: Merchant, amount: int, cur: str = "EUR", **extra: Any) -> tuple[Any, str]:
    p = await world.payment(m, amount, cur, **extra)
    code = await world.call("POST", f"/v1/payments/{p['id']}/qr_codes", 201, headers=m.headers, json={})
    return p, code["payload"]


async def _pay(world: World, h: Holder, payment_id: str, fx_quote: str | None, expect: int = 200,
               key: str | None = None) -> Any:
    headers = {**h.headers, "Idempotency-Key": key or str(uuid.uuid4())}
    body = {} if fx_quote is None else {"fx_quote": fx_quote}
    return await world.call("POST", f"/v1/wallet/payments/{payment_id}/pay", expect, headers=headers, json=body)


async def _refund(world: World, m: Merchant, payment_id: str, amount: int | None = None) -> Any:
    body = {} if amount is None else {"amount": amount}
    return await world.call("POST", f"/v1/payments/{payment_id}/refunds", 201, headers=m.headers, json=body)


async def test_a_qr_payment_in_eur_from_a_cny_wallet(world: World) -> None:
    await _rate(world, "EUR", "CNY", "7.8", 30)  # entered as EUR/CNY: paying EUR from CNY uses its inverse
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    p, payload = await _qr(world, m, 1_250)  # 12.50 EUR
    want = _expected("CNY", "EUR", "7.8", "EUR", 30, 1_250)
    preview = await world.call("POST", "/v1/wallet/qr/preview", headers=h.headers, json={"payload": payload})
    offer = preview["fx_offer"]
    assert (offer["from_currency"], offer["from_amount"], offer["to_currency"], offer["to_amount"], offer["amount"],
            offer["fee"], offer["fee_currency"], offer["rate"]) == (
        "CNY", want.sell_minor, "EUR", want.receive_minor, 1_250, want.fee_minor, "EUR", domain.rate_text(want.rate))
    assert 0 < offer["valid_for_s"] <= make_settings().fx.quote_ttl_s and offer["conversion"] is None
    # Shown again, the same offer (no new quote for every look).
    again = await world.call("POST", "/v1/wallet/qr/preview", headers=h.headers, json={"payload": payload})
    assert again["fx_offer"]["quote"] == offer["quote"]
    looked = await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers)
    assert looked["fx_offer"]["quote"] == offer["quote"]

    paid = await world.call("POST", "/v1/wallet/qr/pay", headers={**h.headers, "Idempotency-Key": "qr-fx-1"},
                            json={"payload": payload, "fx_quote": offer["quote"]})
    assert paid["status"] == "succeeded" and paid["currency"] == "EUR" and paid["amount"] == 1_250
    fx = paid["fx"]
    assert (fx["quote"], fx["from_currency"], fx["from_amount"], fx["to_amount"], fx["fee"]) == (
        offer["quote"], "CNY", want.sell_minor, want.receive_minor, want.fee_minor)
    assert fx["conversion"].startswith("cnv_")
    excess = want.receive_minor - 1_250  # what the least sale bought beyond the amount: the holder's
    assert await _balances(world, h) == {"CNY": (100_000 - want.sell_minor, 0), "EUR": (excess, 0)}
    assert await world.merchant_total(m, "EUR") == 1_250 - fees.fee_minor(1_250, 100)  # fee_bps 100
    seen = await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers)
    assert seen["fx"] == fx and seen["fx_offer"] is None
    merchant_view = await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers)
    assert "fx" not in merchant_view  # the payer's other currencies are not the merchant's business
    # The quote is honoured once: a second payment cannot use it.
    p2, payload2 = await _qr(world, m, 1_250)
    used = await world.call("POST", "/v1/wallet/qr/pay", 409, headers=h.headers,
                            json={"payload": payload2, "fx_quote": offer["quote"]})
    assert (used["error"]["code"], used["error"]["param"]) == ("quote_used", "fx_quote")
    assert (await world.call("GET", f"/v1/payments/{p2['id']}", headers=m.headers))["status"] == "requires_payment_method"
    # The wallet's history shows the conversion's two legs and the payment.
    history = await world.call("GET", "/v1/wallet/transactions", headers=h.headers)
    kinds = Counter((t["kind"], t["currency"]) for t in history["data"])
    assert kinds[("conversion", "CNY")] == 1 and kinds[("conversion", "EUR")] == 1 and kinds[("capture", "EUR")] == 1


async def test_a_static_code_paid_from_another_currency_with_a_quote_the_payer_asked_for(world: World) -> None:
    await _rate(world, "EUR", "CNY", "7.8")
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    code = await world.call("GET", f"/v1/stores/{m.store}/qr_code?currency=EUR", headers=m.headers)
    preview = await world.call("POST", "/v1/wallet/qr/preview", headers=h.headers, json={"payload": code["payload"]})
    assert preview["amount"] is None and preview["fx_offer"] is None  # the payer types the amount in
    quote = await world.call("POST", "/v1/wallet/fx_quotes", 201, headers=h.headers,
                             json={"from_currency": "CNY", "to_currency": "EUR", "receive_amount": 480})
    paid = await world.call("POST", "/v1/wallet/qr/pay", headers=h.headers,
                            json={"payload": code["payload"], "amount": 480, "fx_quote": quote["id"]})
    assert (paid["status"], paid["currency"], paid["amount"]) == ("succeeded", "EUR", 480)
    assert (paid["fx"]["quote"], paid["fx"]["from_amount"]) == (quote["id"], quote["sell_amount"])
    assert (await _balances(world, h))["CNY"] == (100_000 - quote["sell_amount"], 0)
    # A static payment for more than the quote buys: refused before anything is created.
    more = await world.call("POST", "/v1/wallet/fx_quotes", 201, headers=h.headers,
                            json={"from_currency": "CNY", "to_currency": "EUR", "receive_amount": 480})
    body = await world.call("POST", "/v1/wallet/qr/pay", 400, headers=h.headers,
                            json={"payload": code["payload"], "amount": 481, "fx_quote": more["id"]})
    assert (body["error"]["code"], body["error"]["param"]) == ("quote_mismatch", "fx_quote")


async def test_no_offer_when_the_wallet_can_pay_in_the_currency(world: World) -> None:
    await _rate(world, "EUR", "CNY", "7.8")
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    await world.top_up(h, 5_000, "EUR")
    p, payload = await _qr(world, m, 1_000)
    preview = await world.call("POST", "/v1/wallet/qr/preview", headers=h.headers, json={"payload": payload})
    assert preview["fx_offer"] is None
    paid = await _pay(world, h, p["id"], None)  # the one-statement path, in the wallet's own currency
    assert paid["status"] == "succeeded" and paid["fx"] is None
    assert await _balances(world, h) == {"CNY": (100_000, 0), "EUR": (4_000, 0)}
    # No rate, no offer: a wallet short of the currency is declined as always.
    p_usd, payload_usd = await _qr(world, m, 1_000, "USD")
    assert (await world.call("POST", "/v1/wallet/qr/preview", headers=h.headers,
                             json={"payload": payload_usd}))["fx_offer"] is None
    declined = await _pay(world, h, p_usd["id"], None, 402)
    assert declined["error"]["code"] == "insufficient_funds"


async def test_refusals_are_clear_and_move_nothing(clean_db: str) -> None:
    async with serving(clean_db, make_settings(fx={"quote_ttl_s": 1})) as client:
        world = await World.create(client)
        await _rate(world, "EUR", "CNY", "7.8")
        await _rate(world, "USD", "CNY", "7.1")
        m = await world.merchant()
        h = await world.holder(top_up=20_000)
        other = await world.holder(top_up=20_000)
        p = await world.payment(m, 1_000, "EUR")
        # Without a quote nothing is converted: the payer must have accepted a rate.
        assert (await _pay(world, h, p["id"], None, 402))["error"]["code"] == "insufficient_funds"

        async def quote(holder: Holder, target: str, **amount: int) -> Any:
            return await world.call("POST", "/v1/wallet/fx_quotes", 201, headers=holder.headers,
                                    json={"from_currency": "CNY", "to_currency": target, **amount})

        usd = await quote(h, "USD", receive_amount=1_000)
        body = await _pay(world, h, p["id"], usd["id"], 400)
        assert (body["error"]["code"], body["error"]["param"]) == ("quote_mismatch", "fx_quote")
        short = await quote(h, "EUR", receive_amount=999)
        assert (await _pay(world, h, p["id"], short["id"], 400))["error"]["code"] == "quote_mismatch"
        theirs = await quote(other, "EUR", receive_amount=1_000)
        body = await _pay(world, h, p["id"], theirs["id"], 404)
        assert (body["error"]["code"], body["error"]["param"]) == ("resource_missing", "fx_quote")
        assert (await _pay(world, h, p["id"], "fxq_nonsense", 404))["error"]["param"] == "fx_quote"
        body = await world.call("POST", f"/v1/wallet/payments/{p['id']}/pay", 400, headers=h.headers,
                                json={"fx_quote": 12})
        assert body["error"]["param"] == "fx_quote"
        expiring = await quote(h, "EUR", receive_amount=1_000)
        await asyncio.sleep(1.2)
        body = await _pay(world, h, p["id"], expiring["id"], 409)
        assert (body["error"]["code"], body["error"]["param"]) == ("quote_expired", "fx_quote")
        # A quote selling more than the wallet holds: declined, and the payment's failure is an event.
        big = await world.payment(m, 2_600, "EUR")
        dear = await quote(h, "EUR", receive_amount=2_600)
        assert dear["sell_amount"] > 20_000
        body = await _pay(world, h, big["id"], dear["id"], 402)
        assert (body["error"]["code"], body["error"]["param"]) == ("insufficient_funds", "fx_quote")
        assert await _balances(world, h) == {"CNY": (20_000, 0), "EUR": (0, 0)}  # (paying opens the EUR wallet)
        for payment in (p, big):
            assert (await world.call("GET", f"/v1/payments/{payment['id']}", headers=m.headers))["status"] == (
                "requires_payment_method")
        # The same key again: the stored answer, not a second attempt.
        fresh = await quote(h, "EUR", receive_amount=1_000)
        first = await _pay(world, h, p["id"], fresh["id"], key="fx-pay-1")
        assert first["status"] == "succeeded"
        assert await _pay(world, h, p["id"], fresh["id"], key="fx-pay-1") == first
        assert (await _balances(world, h))["CNY"] == (20_000 - fresh["sell_amount"], 0)


async def test_refunds_convert_back_at_the_original_rate(world: World) -> None:
    await _rate(world, "EUR", "CNY", "7.8", 30)
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    p = await world.payment(m, 1_000, "EUR")
    offer = (await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers))["fx_offer"]
    paid = await _pay(world, h, p["id"], offer["quote"])
    sell, receive, fee = paid["fx"]["from_amount"], paid["fx"]["to_amount"], paid["fx"]["fee"]
    excess = receive - 1_000
    # The euro falls by half: the refunds still convert back at the payment's own rate.
    await _rate(world, "EUR", "CNY", "3.9", 0)
    await _refund(world, m, p["id"], 333)
    assert await _balances(world, h) == {"CNY": (100_000 - sell + share(sell, 333, receive), 0), "EUR": (excess, 0)}
    await _refund(world, m, p["id"], 333)
    assert (await _balances(world, h))["CNY"] == (100_000 - sell + share(sell, 666, receive), 0)
    await _refund(world, m, p["id"])  # the rest
    # Everything the payment took is back; the excess the quote bought stays the holder's in EUR, and its
    # share of the sale (the rounding, below one fen per refund) stays sold: nothing is made.
    assert await _balances(world, h) == {"CNY": (100_000 - sell + share(sell, 1_000, receive), 0),
                                         "EUR": (excess, 0)}
    assert share(sell, 1_000, receive) <= sell
    history = await world.call("GET", "/v1/wallet/transactions?currency=CNY", headers=h.headers)
    backs = [t["amount"] for t in history["data"] if t["kind"] == "conversion_return"]
    assert sorted(backs) == sorted([share(sell, 333, receive), share(sell, 666, receive) - share(sell, 333, receive),
                                    share(sell, 1_000, receive) - share(sell, 666, receive)])
    assert all(t["conversion"] == paid["fx"]["conversion"] for t in history["data"] if t["kind"] == "conversion_return")
    assert fee >= 0


async def test_kwd_wallet_pays_cny_and_gets_back_whole_fils(clean_db: str) -> None:
    kwd = {"balance_max_minor": 1_000_000, "payment_max_minor": 1_000_000, "daily_max_minor": 1_000_000}
    cny = {"balance_max_minor": 10_000_000, "payment_max_minor": 200_000, "daily_max_minor": 500_000}
    async with serving(clean_db, make_settings(tiers={"tier4": {"CNY": cny, "KWD": kwd}})) as client:
        world = await World.create(client)
        await _rate(world, "KWD", "CNY", "23.5")
        m = await world.merchant()
        h = await world.holder(top_up=10_000, currency="KWD")  # 10.000 KWD
        p = await world.payment(m, 10_000)  # 100.00 CNY
        offer = (await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers))["fx_offer"]
        # A fils buys 2.35 fen: the least sale (4.265 KWD) buys 100.01 CNY, fee 0.21 CNY (see the unit tests).
        assert (offer["from_amount"], offer["to_amount"], offer["fee"]) == (4_265, 10_001, 21)
        await _pay(world, h, p["id"], offer["quote"])
        assert await _balances(world, h) == {"KWD": (10_000 - 4_265, 0), "CNY": (1, 0)}
        await _refund(world, m, p["id"], 1)  # 1 fen: worth less than a fils, nothing back yet
        assert await _balances(world, h) == {"KWD": (10_000 - 4_265, 0), "CNY": (1, 0)}
        await _refund(world, m, p["id"], 2)  # 3 fen in all: 1 fils
        assert (await _balances(world, h))["KWD"] == (10_000 - 4_265 + 1, 0)
        await _refund(world, m, p["id"])  # 100.00 CNY in all: floor(4265 * 10000 / 10001) = 4264 fils
        assert await _balances(world, h) == {"KWD": (10_000 - 1, 0), "CNY": (1, 0)}


async def test_jpy_payment_from_cny_and_a_manual_capture_held_in_yen(world: World) -> None:
    await _rate(world, "CNY", "JPY", "21.05")
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    p = await world.payment(m, 10_000, "JPY", capture_method="manual")  # 10,000 yen, held first
    offer = (await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers))["fx_offer"]
    want = _expected("CNY", "JPY", "21.05", "CNY", 0, 10_000)
    assert (offer["from_amount"], offer["to_amount"]) == (want.sell_minor, want.receive_minor)
    authorised = await _pay(world, h, p["id"], offer["quote"])
    assert authorised["status"] == "requires_capture" and authorised["fx"]["from_amount"] == want.sell_minor
    excess = want.receive_minor - 10_000
    # Converted at authorisation, held in the payment's currency.
    assert await _balances(world, h) == {"CNY": (100_000 - want.sell_minor, 0), "JPY": (want.receive_minor, 10_000)}
    await world.call("POST", f"/v1/payments/{p['id']}/capture", headers=m.headers, json={"amount_to_capture": 6_000})
    # What was not captured is released and converted back to yuan at once, at the payment's own rate
    # (tests/integration/test_fx_releases.py has the other releases); the excess stays in yen.
    released_back = share(want.sell_minor, 4_000, want.receive_minor)
    assert await _balances(world, h) == {"CNY": (100_000 - want.sell_minor + released_back, 0), "JPY": (excess, 0)}
    await _refund(world, m, p["id"], 6_000)
    back = share(want.sell_minor, 10_000, want.receive_minor)
    assert await _balances(world, h) == {"CNY": (100_000 - want.sell_minor + back, 0), "JPY": (excess, 0)}


async def test_concurrent_cross_currency_payments_never_overdraw_one_wallet(world: World) -> None:
    await _rate(world, "EUR", "CNY", "7.8")
    m = await world.merchant()
    h = await world.holder(top_up=10_000)  # 100.00 CNY pays three of 3.50 EUR (about 27.4 CNY each), not four
    orders = [await world.payment(m, 350, "EUR") for _ in range(8)]
    offers = [(await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers))["fx_offer"] for p in orders]
    sell = offers[0]["from_amount"]
    assert 10_000 // sell == 3
    results = await asyncio.gather(*(
        world.client.post(f"/v1/wallet/payments/{p['id']}/pay", headers={**h.headers, "Idempotency-Key": str(i)},
                          json={"fx_quote": o["quote"]})
        for i, (p, o) in enumerate(zip(orders, offers, strict=True))))
    outcomes = Counter()
    for resp in results:
        body = await resp.json()
        outcomes[(resp.status, body.get("error", {}).get("code"))] += 1
    assert outcomes == Counter({(200, None): 3, (402, "insufficient_funds"): 5}), outcomes
    balances = await _balances(world, h)
    assert balances["CNY"] == (10_000 - 3 * sell, 0)
    assert await world.merchant_total(m, "EUR") == 3 * (350 - fees.fee_minor(350, 100, 0))


async def test_the_invariants_catch_a_return_that_does_not_match(world: World, clean_db: str) -> None:
    await _rate(world, "EUR", "CNY", "7.8")
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    p = await world.payment(m, 1_000, "EUR")
    offer = (await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers))["fx_offer"]
    await _pay(world, h, p["id"], offer["quote"])
    await _refund(world, m, p["id"], 500)
    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute("UPDATE conversions SET returned_source_minor = returned_source_minor + 1")
        broken = {name for name, rows in (await invariants.check(conn)).items() if rows}
        await conn.execute("UPDATE conversions SET returned_source_minor = returned_source_minor - 1")
        await conn.execute("UPDATE conversions SET returned_minor = returned_minor - 1")
        broken_too = {name for name, rows in (await invariants.check(conn)).items() if rows}
        await conn.execute("UPDATE conversions SET returned_minor = returned_minor + 1")
        assert not any(rows for rows in (await invariants.check(conn)).values())
    finally:
        await conn.close()
    assert broken == {"conversion_return_differs_from_its_entries", "fx_position_differs_from_conversions"}
    assert broken_too == {"conversion_return_differs_from_its_entries", "fx_position_differs_from_conversions",
                          "payment_conversion_differs_from_its_payment"}


async def test_own_currency_payments_keep_the_one_statement_path(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """With rates in the table and a wallet in several currencies, a payment the wallet can pay in its own
    currency never reaches the general path nor the FX code; only a pay call with ``fx_quote`` does."""
    await _rate(world, "EUR", "CNY", "7.8")
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    await world.top_up(h, 5_000, "EUR")
    general: list[str] = []
    fx_calls: list[str] = []
    authorize, prepare = payment_cases.authorize_locked, fx_payments.prepare

    async def spy_authorize(*args: Any, **kwargs: Any) -> Any:
        general.append(kwargs["channel"])
        return await authorize(*args, **kwargs)

    async def spy_prepare(*args: Any, **kwargs: Any) -> Any:
        fx_calls.append("prepare")
        return await prepare(*args, **kwargs)

    monkeypatch.setattr(payment_cases, "authorize_locked", spy_authorize)
    monkeypatch.setattr(fx_payments, "prepare", spy_prepare)
    for cur in ("EUR", "CNY"):
        p = await world.payment(m, 1_000, cur)
        assert (await _pay(world, h, p["id"], None))["status"] == "succeeded"
    assert (general, fx_calls) == ([], [])
    p = await world.payment(m, 5_000, "EUR")  # 1,000 cents short: paid from CNY through the preview's quote
    offer = (await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers))["fx_offer"]
    assert (await _pay(world, h, p["id"], offer["quote"]))["fx"]["from_currency"] == "CNY"
    assert (general, fx_calls) == (["wallet"], ["prepare"])


async def _campaign(world: World, funded_by: str) -> Any:
    from datetime import UTC, datetime, timedelta
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    return await world.call("POST", "/v1/operator/campaigns", 201, headers=world.ops, json={
        "name": "Abroad", "currency": "EUR", "rule": "percent", "percent_bps": 1_000, "funded_by": funded_by,
        "budget": 1_000_000, "time_zone": "UTC", "starts_at": (now - timedelta(hours=1)).isoformat(),
        "ends_at": (now + timedelta(hours=2)).isoformat()})


@pytest.mark.parametrize("funded_by", ["bank", "merchant"])
async def test_a_discounted_payment_from_another_currency_converts_what_the_wallet_pays(
        world: World, clean_db: str, funded_by: str) -> None:
    """10.00 EUR with 10% off, paid from CNY: the offer buys the 9.00 EUR the wallet pays (not the list
    price, which left the holder 1.00 EUR it never asked for, with its fee), and a full refund gives every
    CNY back; the checker catches a conversion buying less than the wallet paid."""
    await _rate(world, "EUR", "CNY", "7.8")
    await _campaign(world, funded_by)
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    p = await world.payment(m, 1_000, "EUR")
    looked = await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers)
    assert looked["discount_offer"]["amount_to_pay"] == 900
    want = _expected("CNY", "EUR", "7.8", "EUR", 0, 900)
    offer = looked["fx_offer"]
    assert (offer["amount"], offer["to_amount"], offer["from_amount"]) == (900, want.receive_minor, want.sell_minor)
    assert want.receive_minor == 900  # 9.00 EUR at 7.8 is a whole number of fen: nothing is bought beyond it
    paid = await _pay(world, h, p["id"], offer["quote"])
    assert paid["status"] == "succeeded" and paid["fx"]["amount"] == 900
    assert await _balances(world, h) == {"CNY": (100_000 - want.sell_minor, 0), "EUR": (0, 0)}
    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute("UPDATE conversions SET receive_minor = 899")
        broken = {name for name, rows in (await invariants.check(conn)).items() if rows}
        await conn.execute("UPDATE conversions SET receive_minor = 900")
    finally:
        await conn.close()
    assert "payment_conversion_differs_from_its_payment" in broken
    await _refund(world, m, p["id"])
    assert await _balances(world, h) == {"CNY": (100_000, 0), "EUR": (0, 0)}


async def test_a_quote_for_a_discount_that_ended_is_refused_and_moves_nothing(world: World) -> None:
    """The offer quoted the discounted 9.00; the campaign ends before the pay call: the wallet would pay
    10.00, which the quote does not buy, so the payment is refused (quote_mismatch), nothing moves and the
    quote stays unused."""
    await _rate(world, "EUR", "CNY", "7.8")
    campaign = await _campaign(world, "bank")
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    p = await world.payment(m, 1_000, "EUR")
    offer = (await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers))["fx_offer"]
    assert offer["amount"] == 900
    await world.call("POST", f"/v1/operator/campaigns/{campaign['id']}/end", 200, headers=world.ops, json={})
    refused = await _pay(world, h, p["id"], offer["quote"], expect=400)
    assert (refused["error"]["code"], refused["error"]["param"]) == ("quote_mismatch", "fx_quote")
    balances = await _balances(world, h)  # the EUR wallet may be open (the quote's accounts), and empty
    assert balances["CNY"] == (100_000, 0) and balances.get("EUR", (0, 0)) == (0, 0), balances
    assert (await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers))["status"] == "requires_payment_method"
    # A new look offers the whole amount now, and paying with it goes through.
    offer = (await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers))["fx_offer"]
    assert offer["amount"] == 1_000
    assert (await _pay(world, h, p["id"], offer["quote"]))["status"] == "succeeded"
