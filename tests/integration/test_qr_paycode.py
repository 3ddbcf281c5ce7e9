"""Scan-to-pay (dynamic and static EMV QR), pay-codes, verification tiers and the payment PIN."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import asyncpg
import zxingcpp
from PIL import Image

from gateway.domain import emv_qr
from gateway.services.context import Services
from gateway.workers.expiry import tick
from tests.conftest import make_settings
from tests.integration.world import Holder, Merchant, World, auth


async def _sql(db_url: str, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def _qr(world: World, m: Merchant, amount: int, **extra: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    p = await world.payment(m, amount, merchant_reference="T9-0001", **extra)
    code = await world.call("POST", f"/v1/payments/{p['id']}/qr_codes", 201, headers=m.headers,
                            json={"terminal_label": "Counter 1"})
    return p, code


async def _scan_pay(world: World, h: Holder, payload: str, expect: int = 200, **extra: Any) -> Any:
    return await world.call("POST", "/v1/wallet/qr/pay", expect, headers=h.headers, json={"payload": payload, **extra})


async def test_dynamic_qr_preview_pay_once(world: World) -> None:
    m = await world.merchant(fee_bps=60)
    h = await world.holder(top_up=10_000)
    p, code = await _qr(world, m, 3_800)
    parsed = emv_qr.parse(code["payload"])
    assert parsed.initiation is emv_qr.Initiation.DYNAMIC
    assert parsed.amount == emv_qr.Amount(3_800, 2) and parsed.currency_numeric == "156"
    assert parsed.additional_data is not None and parsed.additional_data.reference_label == "T9-0001"
    png = await world.client.get(code["image_png"], headers=m.headers)
    assert png.status == 200 and png.content_type == "image/png"
    decoded = zxingcpp.read_barcodes(Image.open(io.BytesIO(await png.read())))
    assert [d.text for d in decoded] == [code["payload"]]
    svg = await world.client.get(code["image_svg"], headers=auth(m.publishable))
    assert svg.status == 200 and (await svg.read()).startswith(b"<?xml")

    preview = await world.call("POST", "/v1/wallet/qr/preview", headers=h.headers, json={"payload": code["payload"]})
    assert (preview["merchant_name"], preview["amount"], preview["currency"], preview["payment"]) == (
        "Best Noodles", 3_800, "CNY", p["id"])
    paid = await _scan_pay(world, h, code["payload"])
    assert paid["status"] == "succeeded"
    assert await world.available(h) == 6_200
    again = await _scan_pay(world, h, code["payload"], 409)
    assert again["error"]["code"] == "qr_code_used"
    got = await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers)
    assert got["channel"] == "qr" and got["fee"] == 23


async def test_two_wallets_racing_for_one_dynamic_code_exactly_one_pays(world: World) -> None:
    m = await world.merchant()
    payers = [await world.holder(top_up=5_000) for _ in range(4)]
    _, code = await _qr(world, m, 1_000)

    async def attempt(h: Holder) -> int:
        resp = await world.client.post("/v1/wallet/qr/pay", json={"payload": code["payload"]}, headers=h.headers)
        return resp.status

    statuses = sorted(await asyncio.gather(*(attempt(h) for h in payers)))
    assert statuses == [200, 409, 409, 409]
    assert sum([await world.available(h) for h in payers]) == 4 * 5_000 - 1_000


async def test_expired_and_canceled_codes_are_refused_with_their_reason(world: World, clean_db: str) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=5_000)
    _, expiring = await _qr(world, m, 100)
    await _sql(clean_db, "UPDATE qr_codes SET expires_at = now() - interval '1 second'")
    err = await _scan_pay(world, h, expiring["payload"], 409)
    assert err["error"]["code"] == "qr_code_expired"
    p, canceled = await _qr(world, m, 100)
    await world.call("POST", f"/v1/payments/{p['id']}/cancel", headers=m.headers, json={})
    err = await world.call("POST", "/v1/wallet/qr/preview", 409, headers=h.headers, json={"payload": canceled["payload"]})
    assert err["error"]["code"] == "payment_canceled"
    assert await world.available(h) == 5_000


async def test_qr_ttl_never_outlives_its_payment(world: World) -> None:
    m = await world.merchant()
    p = await world.payment(m, 100, expires_in=120)
    code = await world.call("POST", f"/v1/payments/{p['id']}/qr_codes", 201, headers=m.headers, json={"ttl": 3600})
    assert code["expires_at"] == p["expires_at"]


async def test_garbage_and_foreign_payloads(world: World) -> None:
    h = await world.holder()
    bad = await world.call("POST", "/v1/wallet/qr/preview", 400, headers=h.headers, json={"payload": "hello"})
    assert bad["error"]["code"] == "invalid_qr_payload" and bad["error"]["param"] == "payload"
    vector = ("0002010102121313JCB12345678900416MASTER12345678905204531153033925407999.1235802JP5906DONGRI"
              "6005TOKYO62240104hoge0504fuga0704piyo6304C343")
    foreign = await world.call("POST", "/v1/wallet/qr/preview", 400, headers=h.headers, json={"payload": vector})
    assert foreign["error"]["code"] == "qr_code_foreign"
    tampered = vector[:-1] + ("0" if vector[-1] != "0" else "1")
    crc = await world.call("POST", "/v1/wallet/qr/preview", 400, headers=h.headers, json={"payload": tampered})
    assert crc["error"]["qr_error"] == "crc_mismatch"


async def test_static_store_code_payer_enters_amount(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=5_000)
    code = await world.call("GET", f"/v1/stores/{m.store}/qr_code?currency=CNY", headers=m.headers)
    same = await world.call("GET", f"/v1/stores/{m.store}/qr_code?currency=CNY", headers=m.headers)
    assert code["payload"] == same["payload"] and code["kind"] == "static"
    assert emv_qr.parse(code["payload"]).amount is None
    missing = await _scan_pay(world, h, code["payload"], 400)
    assert missing["error"]["code"] == "amount_required"
    first = await _scan_pay(world, h, code["payload"], amount=1_250)
    second = await _scan_pay(world, h, code["payload"], amount=750)
    assert first["id"] != second["id"] and await world.available(h) == 3_000
    assert await world.merchant_total(m) == 2_000 - 13 - 8  # 1 % each, rounded half up


async def _device_holder(world: World, top_up: int, device_id: str = "phone-A1") -> Holder:
    h = await world.holder(top_up=top_up)
    session = {"token": await world.sign_in(h.phone, device_id=device_id)}
    return Holder(h.id, h.phone, session["token"], h.bank_account)


async def _charge(world: World, m: Merchant, code: str, amount: int, expect: int = 201) -> Any:
    return await world.call("POST", "/v1/pay_code_charges", expect, headers=m.headers,
                            json={"pay_code": code, "amount": amount, "currency": "CNY", "store": m.store})


async def test_pay_code_is_charged_once(world: World, clean_db: str) -> None:
    m = await world.merchant(fee_bps=0)
    h = await _device_holder(world, 10_000)
    issued = await world.call("POST", "/v1/wallet/pay_codes", 201, headers=h.headers, json={})
    code = issued["code"]
    assert len(code) == 18 and code.startswith("19") and code.isdigit()
    assert issued["device_id"] == "phone-A1" and issued["qr_svg"].startswith("<?xml")
    charged = await _charge(world, m, code, 4_500)
    assert charged["status"] == "succeeded" and charged["channel"] == "pay_code"
    assert await world.available(h) == 5_500
    assert (await _charge(world, m, code, 100, 409))["error"]["code"] == "pay_code_used"
    unknown = "19" + "0" * 16
    assert (await _charge(world, m, unknown, 100, 404))["error"]["code"] == "pay_code_unknown"
    assert (await _charge(world, m, "13" + "0" * 16, 100, 400))["error"]["code"] == "pay_code_foreign"
    late = (await world.call("POST", "/v1/wallet/pay_codes", 201, headers=h.headers, json={}))["code"]
    await _sql(clean_db, "UPDATE pay_codes SET expires_at = now() - interval '1 second' WHERE used_at IS NULL")
    assert (await _charge(world, m, late, 100, 409))["error"]["code"] == "pay_code_expired"
    conn = await asyncpg.connect(clean_db)
    try:
        stored = await conn.fetch("SELECT code_hash, code_masked FROM pay_codes")
    finally:
        await conn.close()
    assert all(code not in row["code_masked"] and code.encode() not in row["code_hash"] for row in stored)


async def test_pay_code_is_bound_to_the_device_even_one_signed_in_unnamed(world: World) -> None:
    """A holder signed in without a device_id is on a device named for it (services.sign_in.verify): its
    pay-code is bound to that device, and signing the device out ends the code with it."""
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    code = (await world.call("POST", "/v1/wallet/pay_codes", 201, headers=h.headers, json={}))["code"]
    other = await world.sign_in(h.phone, device_id="phone-z")
    devices = (await world.call("GET", "/v1/wallet/devices", headers={"Authorization": f"Bearer {other}"}))["data"]
    unnamed = next(d for d in devices if d["device_id"].startswith("unnamed-"))
    await world.call("DELETE", f"/v1/wallet/devices/{unnamed['id']}", headers={"Authorization": f"Bearer {other}"})
    err = await _charge(world, m, code, 500, expect=409)
    assert (err["error"]["code"], err["error"]["param"]) == ("pay_code_expired", "pay_code"), err


async def test_large_pay_code_charge_waits_for_the_pin(world: World) -> None:
    m = await world.merchant(fee_bps=0)
    h = await _device_holder(world, 500_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": "246810"})
    code = (await world.call("POST", "/v1/wallet/pay_codes", 201, headers=h.headers, json={}))["code"]
    charged = await _charge(world, m, code, 150_000)
    assert charged["status"] == "requires_action" and charged["confirm_by"]
    wallet = await world.call("GET", "/v1/wallet", headers=h.headers)
    assert wallet["balances"][0]["held"] == 150_000
    pending = await world.call("GET", "/v1/wallet/pending_payments", headers=h.headers)
    assert [p["id"] for p in pending["data"]] == [charged["id"]]
    wrong = await world.call("POST", f"/v1/wallet/payments/{charged['id']}/confirm", 402, headers=h.headers,
                             json={"pin": "111222"})
    assert wrong["error"]["code"] == "incorrect_pin" and wrong["error"]["attempts_remaining"] == 4
    ok = await world.call("POST", f"/v1/wallet/payments/{charged['id']}/confirm", headers=h.headers,
                          json={"pin": "246810"})
    assert ok["status"] == "succeeded"
    polled = await world.call("GET", f"/v1/payments/{charged['id']}", headers=m.headers)
    assert polled["status"] == "succeeded" and polled["amount_received"] == 150_000
    assert await world.available(h) == 350_000


async def test_unconfirmed_counter_payment_is_reversed_in_time(world: World, clean_db: str) -> None:
    m = await world.merchant()
    h = await _device_holder(world, 500_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": "246810"})
    code = (await world.call("POST", "/v1/wallet/pay_codes", 201, headers=h.headers, json={}))["code"]
    charged = await _charge(world, m, code, 120_000)
    await _sql(clean_db, "UPDATE payments SET confirm_by = now() - interval '1 second' WHERE status = 'requires_action'")
    late = await world.call("POST", f"/v1/wallet/payments/{charged['id']}/confirm", 409, headers=h.headers,
                            json={"pin": "246810"})
    assert late["error"]["code"] == "confirmation_expired"
    svc = await Services.start(make_settings())
    try:
        assert (await tick(svc))[0] == 1
    finally:
        await svc.stop()
    polled = await world.call("GET", f"/v1/payments/{charged['id']}", headers=m.headers)
    assert polled["status"] == "expired"
    assert await world.available(h) == 500_000


async def test_pin_required_above_threshold_and_lockout(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=500_000)
    p = await world.payment(m, 100_001)
    no_pin_yet = await world.call("POST", f"/v1/wallet/payments/{p['id']}/pay", 402, headers=h.headers,
                                  json={"pin": "135790"})
    assert no_pin_yet["error"]["code"] == "pin_not_set"
    body_missing = await world.call("POST", f"/v1/wallet/payments/{p['id']}/pay", 402, headers=h.headers, json={})
    assert body_missing["error"]["code"] == "pin_required"
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": "135790"})
    bad_pin = await world.call("POST", "/v1/wallet/pin", 400, headers=h.headers, json={"pin": "111111"})
    assert bad_pin["error"]["code"] == "invalid_pin"
    for remaining in (4, 3, 2, 1):
        err = await world.call("POST", f"/v1/wallet/payments/{p['id']}/pay", 402, headers=h.headers,
                               json={"pin": "000001"})
        assert err["error"]["attempts_remaining"] == remaining
    locked = await world.call("POST", f"/v1/wallet/payments/{p['id']}/pay", 403, headers=h.headers,
                              json={"pin": "000001"})
    assert locked["error"]["code"] == "wallet_locked"
    still = await world.call("POST", f"/v1/wallet/payments/{p['id']}/pay", 403, headers=h.headers,
                             json={"pin": "135790"})
    assert still["error"]["code"] == "wallet_locked"
    small = await world.payment(m, 100)
    assert (await world.pay(h, small["id"], expect=403))["error"]["code"] == "wallet_locked"
    await world.call("POST", f"/v1/operator/wallet_holders/{h.id}/unlock", headers=world.ops, json={})
    paid = await world.call("POST", f"/v1/wallet/payments/{p['id']}/pay", headers=h.headers, json={"pin": "135790"})
    assert paid["status"] == "succeeded"


async def test_tier_caps_name_the_cap(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=1_000_000)  # tier 4 holds at most 10,000.00 CNY
    over = await world.call("POST", "/v1/wallet/top_ups", 402, headers=h.headers,
                            json={"bank_account": h.bank_account, "amount": 1, "currency": "CNY"})
    assert (over["error"]["code"], over["error"]["limit"]) == ("limit_exceeded", "balance_max")
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": "135790"})
    big = await world.payment(m, 200_001)
    err = await world.call("POST", f"/v1/wallet/payments/{big['id']}/pay", 402, headers=h.headers,
                           json={"pin": "135790"})
    assert (err["error"]["limit"], err["error"]["limit_amount"]) == ("payment_max", 200_000)
    for _ in range(2):
        ok = await world.payment(m, 200_000)
        await world.call("POST", f"/v1/wallet/payments/{ok['id']}/pay", headers=h.headers, json={"pin": "135790"})
    third = await world.payment(m, 100_001)
    daily = await world.call("POST", f"/v1/wallet/payments/{third['id']}/pay", 402, headers=h.headers,
                             json={"pin": "135790"})
    assert daily["error"]["limit"] == "daily_max"
    assert await world.available(h) == 600_000
    await world.call("POST", f"/v1/operator/wallet_holders/{h.id}/tier", headers=world.ops, json={"tier": 2})
    paid = await world.call("POST", f"/v1/wallet/payments/{third['id']}/pay", headers=h.headers,
                            json={"pin": "135790"})
    assert paid["status"] == "succeeded"


async def test_released_holds_give_the_daily_allowance_back(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=1_000_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": "135790"})
    held = await world.payment(m, 200_000, capture_method="manual")
    await world.call("POST", f"/v1/wallet/payments/{held['id']}/pay", headers=h.headers, json={"pin": "135790"})
    partial = await world.payment(m, 200_000, capture_method="manual")
    await world.call("POST", f"/v1/wallet/payments/{partial['id']}/pay", headers=h.headers, json={"pin": "135790"})
    await world.call("POST", f"/v1/payments/{held['id']}/cancel", headers=m.headers, json={})
    await world.call("POST", f"/v1/payments/{partial['id']}/capture", headers=m.headers, json={"amount_to_capture": 50_000})
    # Spent today: 50,000 captured; the 350,000 released is allowed again (daily cap 500,000).
    again = await world.payment(m, 200_000)
    await world.call("POST", f"/v1/wallet/payments/{again['id']}/pay", headers=h.headers, json={"pin": "135790"})
    another = await world.payment(m, 200_000)
    await world.call("POST", f"/v1/wallet/payments/{another['id']}/pay", headers=h.headers, json={"pin": "135790"})
    over = await world.payment(m, 50_001)
    err = await world.call("POST", f"/v1/wallet/payments/{over['id']}/pay", 402, headers=h.headers, json={"pin": "135790"})
    assert err["error"]["limit"] == "daily_max"
