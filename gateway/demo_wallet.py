"""The demo's wallet-holder extras (issue 13): a bank-funded discount shown in the QR preview, a currency
conversion at a quote honoured once, and a budget reminder. Each step goes through the public API only."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

Call = Callable[..., Awaitable[tuple[int, Any, dict[str, str]]]]
Money = Callable[[int], str]
REMINDER_WAIT_S = 15.0  # the budget worker polls every 0.25 s


def _window(hours: int) -> dict[str, str]:
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    return {"time_zone": "UTC", "starts_at": (now - timedelta(minutes=5)).isoformat(),
            "ends_at": (now + timedelta(hours=hours)).isoformat()}


async def discounted_qr_payment(call: Call, ops: str, secret: str, merchant_id: str, holder: str,
                                money: Money) -> None:
    """The bank pays 10% (at most 5.00) of one QR payment: the preview shows it, the merchant gets the full amount."""
    _, campaign, _ = await call("POST", "/v1/operator/campaigns", ops, {
        "name": "Noodle week", "currency": "CNY", "rule": "percent", "percent_bps": 1_000, "cap": 500,
        "funded_by": "bank", "budget": 100_000, "places": 1, "merchants": [merchant_id], **_window(24)},
        key=str(uuid.uuid4()), expect=201)
    print(f"   campaign {campaign['id']} ({campaign['name']}): 10% off, at most {money(500)} CNY, bank-funded,"
          f" {campaign['places']} place")
    _, payment, _ = await call("POST", "/v1/payments", secret, {"amount": 3_200, "currency": "CNY",
                               "merchant_reference": "T1-0007", "description": "Noodle week special"},
                               key="order-T1-0007", expect=201)
    _, qr, _ = await call("POST", f"/v1/payments/{payment['id']}/qr_codes", secret, {"ttl": 300},
                          key=str(uuid.uuid4()), expect=201)
    _, preview, _ = await call("POST", "/v1/wallet/qr/preview", holder, {"payload": qr["payload"]}, expect=200)
    offer = preview["discount_offer"]
    print(f"   Alice's wallet previews {money(preview['amount'])} CNY: discount {money(offer['amount'])},"
          f" she pays {money(offer['amount_to_pay'])}")
    _, paid, _ = await call("POST", "/v1/wallet/qr/pay", holder, {"payload": qr["payload"]},
                            key=str(uuid.uuid4()), expect=200)
    _, seen, _ = await call("GET", f"/v1/payments/{paid['id']}", secret, expect=200)
    print(f"   {paid['id']}: {paid['status']}, Alice paid {money(paid['discount']['amount_paid_by_holder'])};"
          f" the merchant received {money(seen['amount_received'])} (fee {money(seen['fee'])})")
    _, benefits, _ = await call("GET", "/v1/wallet/benefits", holder, expect=200)
    print("   Alice's benefits: " + ", ".join(f"{b['kind']} {money(b['amount'])} {b['currency']} from"
                                             f" {b['campaign_name']}" for b in benefits["data"]))


async def conversion(call: Call, ops: str, holder: str, money: Money) -> None:
    """Today's rates from a CSV file; Alice converts 100.00 CNY to USD at a quote, which a second use refuses."""
    csv = ("base,quote,rate,spread_bps,valid_from,valid_until\n"
           "USD,CNY,7.1234,50,,\nEUR,CNY,7.7021,50,,\n")
    _, imported, _ = await call("POST", "/v1/operator/fx_rates/import", ops, {"content": csv},
                                key=str(uuid.uuid4()), expect=201)
    print(f"   operator imported {imported['rates_created']} rates from CSV: USD/CNY 7.1234, EUR/CNY 7.7021 (spread 50 bp)")
    _, quote, _ = await call("POST", "/v1/wallet/fx_quotes", holder,
                             {"from_currency": "CNY", "to_currency": "USD", "sell_amount": 10_000}, expect=201)
    print(f"   quote {quote['id']}: sell {money(quote['sell_amount'])} CNY at {Decimal(quote['rate']):.6f} (exact: {quote['rate']}),"
          f" receive {money(quote['receive_amount'])} USD (fee {money(quote['fee'])}), valid until"
          f" {quote['expires_at'][11:19]} UTC")
    _, converted, _ = await call("POST", "/v1/wallet/conversions", holder, {"quote": quote["id"]},
                                 key=str(uuid.uuid4()), expect=201)
    balances = ", ".join(f"{money(b['available'])} {b['currency']}" for b in converted["balances"])
    print(f"   {converted['id']}: converted; balances now {balances}")
    status, again, _ = await call("POST", "/v1/wallet/conversions", holder, {"quote": quote["id"]},
                                  key=str(uuid.uuid4()))
    print(f"   the same quote once more: HTTP {status} {again['error']['code']}")


async def budget_reminder(call: Call, secret: str, holder: str, money: Money) -> None:
    """A dining budget set just above this month's spending: the next payment crosses 80% and a reminder arrives."""
    _, insights, _ = await call("GET", "/v1/wallet/insights", holder, expect=200)
    cny = next(c for c in insights["currencies"] if c["currency"] == "CNY")
    dining = next((c["total"] for c in cny["by_category"] if c["category"] == "dining"), 0)
    amount = dining * 5 // 4 + 125  # 80% of it is 1.00 above what she spent
    _, budget, _ = await call("POST", "/v1/wallet/budgets", holder, {"category": "dining", "currency": "CNY",
                              "amount": amount}, expect=201)
    print(f"   Alice spent {money(dining)} CNY on dining in {insights['month']} ({insights['time_zone']});"
          f" she sets a monthly dining budget of {money(amount)}")
    _, payment, _ = await call("POST", "/v1/payments", secret, {"amount": 300, "currency": "CNY",
                               "merchant_reference": "T1-0008", "description": "Tea"}, key="order-T1-0008", expect=201)
    await call("POST", f"/v1/wallet/payments/{payment['id']}/pay", holder, {}, key=str(uuid.uuid4()), expect=200)
    deadline = time.monotonic() + REMINDER_WAIT_S
    while True:
        _, page, _ = await call("GET", "/v1/wallet/notifications?limit=20", holder, expect=200)
        found = [n for n in page["data"] if n["kind"] == "budget.reminder" and n["data"].get("budget") == budget["id"]]
        if found or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    if not found:
        raise RuntimeError("no budget reminder arrived")
    data = found[0]["data"]
    print(f"   a {money(300)} CNY tea later: notification {found[0]['kind']} at {data['threshold_percent']}%"
          f" (spent {money(data['spent'])} of {money(data['amount'])})")


async def cross_currency_qr_payment(call: Call, secret: str, holder: str, money: Money) -> None:
    """A 12.50 EUR QR payment from Alice's CNY: the preview shows what it costs in CNY with its quote, the
    pay call carries the quote (honoured once), and a partial refund comes back in CNY at the payment's rate."""
    _, payment, _ = await call("POST", "/v1/payments", secret, {"amount": 1_250, "currency": "EUR",
                               "merchant_reference": "T1-0009", "description": "Museum ticket"},
                               key="order-T1-0009", expect=201)
    _, qr, _ = await call("POST", f"/v1/payments/{payment['id']}/qr_codes", secret, {"ttl": 300},
                          key=str(uuid.uuid4()), expect=201)
    _, preview, _ = await call("POST", "/v1/wallet/qr/preview", holder, {"payload": qr["payload"]}, expect=200)
    offer = preview["fx_offer"]
    print(f"   Alice has no EUR; her wallet previews {money(offer['amount'])} EUR = {money(offer['from_amount'])}"
          f" {offer['from_currency']} at {Decimal(offer['rate']):.6f}, fee {money(offer['fee'])} EUR"
          f" (quote {offer['quote']}, valid {offer['valid_for_s']} s)")
    _, paid, _ = await call("POST", "/v1/wallet/qr/pay", holder, {"payload": qr["payload"], "fx_quote": offer["quote"]},
                            key=str(uuid.uuid4()), expect=200)
    fx = paid["fx"]
    print(f"   {paid['id']}: {paid['status']}, {money(fx['from_amount'])} CNY through {fx['conversion']};"
          f" the merchant is paid in EUR")
    _, second, _ = await call("POST", "/v1/payments", secret, {"amount": 1_250, "currency": "EUR",
                              "merchant_reference": "T1-0010"}, key="order-T1-0010", expect=201)
    status, refused, _ = await call("POST", f"/v1/wallet/payments/{second['id']}/pay", holder,
                                    {"fx_quote": offer["quote"]}, key=str(uuid.uuid4()))
    print(f"   the same quote for another payment: HTTP {status} {refused['error']['code']}")
    _, refund, _ = await call("POST", f"/v1/payments/{paid['id']}/refunds", secret, {"amount": 500},
                              key=str(uuid.uuid4()), expect=201)
    _, history, _ = await call("GET", "/v1/wallet/transactions?currency=CNY&limit=5", holder, expect=200)
    back = next(t for t in history["data"] if t["kind"] == "conversion_return")
    print(f"   refund {refund['id']} of {money(500)} EUR: {money(back['amount'])} CNY back at the payment's own rate")


async def first_payment_gift(call: Call, ops: str, money: Money) -> str:
    """A bank-funded gift of 8.88 CNY with each holder's first payment (100 places): returns the campaign id."""
    _, campaign, _ = await call("POST", "/v1/operator/campaigns", ops, {
        "name": "Welcome gift", "currency": "CNY", "rule": "gift_first_payment", "fixed_amount": 888,
        "funded_by": "bank", "budget": 88_800, "places": 100, **_window(24)}, key=str(uuid.uuid4()), expect=201)
    print(f"   campaign {campaign['id']}: {money(888)} CNY with a holder's first payment, {campaign['places']} places")
    return str(campaign["id"])


async def show_gift(call: Call, ops: str, holder: str, campaign_id: str, money: Money) -> None:
    """After the holder's first sale: the gift in its benefits and the campaign's places taken."""
    _, benefits, _ = await call("GET", "/v1/wallet/benefits", holder, expect=200)
    gift = next(b for b in benefits["data"] if b["kind"] == "gift_first_payment")
    print(f"   Alice's first payment {gift['payment']} brought a gift of {money(gift['amount'])} CNY"
          f" ({gift['campaign_name']})")
    _, seen, _ = await call("GET", f"/v1/operator/campaigns/{campaign_id}", ops, expect=200)
    print(f"   campaign: {seen['places_taken']} of {seen['places']} places taken, {money(seen['spent'])} spent")


async def risk_step_up(call: Call, answer: Callable[[str, dict[str, Any]], Awaitable[str]],
                       sms_code: Callable[[str, str], Awaitable[str]], ops: str, secret: str, phone: str,
                       password: str, money: Money) -> None:
    """A rule asks a one-time code of a large payment from a device the holder signed in on minutes ago; the
    holder answers it and pays, is alerted, and the operators see the decision with its reasons."""
    _, rule, _ = await call("POST", "/v1/operator/risk_rules", ops, {
        "kind": "new_device", "currency": "CNY", "device_age_s": 86_400, "min_amount": 3_000,
        "outcome": "require_otp"}, key=str(uuid.uuid4()), expect=201)
    print(f"   rule {rule['id']}: a device first seen less than a day ago paying {money(3_000)} CNY or more"
          " needs a one-time code")
    _, challenge, _ = await call("POST", "/v1/wallet/sessions", body={"phone": phone, "password": password,
                                 "device_id": "alice-new-tablet"}, expect=202)
    tablet = await answer(phone, challenge)
    print("   Alice signs in on a new tablet (a code proves it is her)")
    _, payment, _ = await call("POST", "/v1/payments", secret, {"amount": 3_300, "currency": "CNY",
                               "merchant_reference": "T1-0011", "description": "Banquet deposit"},
                               key="order-T1-0011", expect=201)
    _, asked, _ = await call("POST", f"/v1/wallet/payments/{payment['id']}/pay", tablet, {},
                             key=str(uuid.uuid4()), expect=402)
    error = asked["error"]
    print(f"   paying {money(3_300)} CNY from the tablet: HTTP 402 {error['code']}, a code texted to"
          f" {error['phone_masked']}")
    code = await sms_code(phone, error["challenge"])
    await call("POST", f"/v1/wallet/risk_challenges/{error['challenge']}/verify", tablet, {"code": code},
               expect=200)
    _, paid, _ = await call("POST", f"/v1/wallet/payments/{payment['id']}/pay", tablet, {},
                            key=str(uuid.uuid4()), expect=200)
    print(f"   code entered, paid again: {paid['status']}")
    _, notes, _ = await call("GET", "/v1/wallet/notifications", tablet, expect=200)
    alert = next(n for n in notes["data"] if n["kind"] == "risk.alert")
    print(f"   Alice's notification: {alert['kind']} ({', '.join(f'{k} {v}' for k, v in alert['data'].items())})")
    _, alerts, _ = await call("GET", "/v1/operator/risk_alerts?limit=5", ops, expect=200)
    seen = alerts["data"][0]
    print(f"   operators' alert list: {seen['outcome']} for {seen['wallet']}, reasons"
          f" {', '.join(r['kind'] for r in seen['reasons'])}")
    await call("POST", f"/v1/operator/risk_rules/{rule['id']}/disable", ops, {}, key=str(uuid.uuid4()), expect=200)
