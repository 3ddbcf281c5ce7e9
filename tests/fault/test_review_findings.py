"""Review findings: each test states the expected behaviour and FAILS on the current code.

Helpers come from the integration suite so the objects are built through the public API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import asyncpg
import pytest

from gateway.auth import passwords
from gateway.domain import emv_qr
from gateway.services import payments as payment_service
from tests.integration.test_devices_taps import _device, _phone, _tap
from tests.integration.test_qr_paycode import _charge, _device_holder, _qr
from tests.integration.world import Merchant, World, auth


async def _sql(db_url: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _second_store_device(world: World, m: Merchant) -> tuple[str, dict[str, Any]]:
    """A second store of merchant ``m`` with an enrolled POS device on a terminal there."""
    store = await world.call("POST", f"/v1/merchants/{m.id}/stores", 201, headers=world.ops,
                             json={"name": "Airport", "city": "Beijing"})
    terminal = await world.call("POST", f"/v1/merchants/{m.id}/terminals", 201, headers=world.ops,
                                json={"store": store["id"], "label": "Airport till"})
    code = await world.call("POST", f"/v1/terminals/{terminal['id']}/enrolment_codes", 201, headers=m.headers, json={})
    enrolled = await world.call("POST", "/v1/devices/enrolments", 201, json={"code": code["code"], "name": "agent-2"})
    return store["id"], enrolled


# --- 1. Money / state machine ------------------------------------------------------------------


async def test_capture_after_the_authorisation_expired_is_refused(world: World, clean_db: str) -> None:
    """domain/payments.py Payment.capture never looks at authorization_expires_at: until the worker
    runs, a lapsed authorisation is still captured (the hold it no longer has a right to is taken)."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    p = await world.payment(m, 1_000, capture_method="manual")
    await world.pay(h, p["id"])
    await _sql(clean_db, "UPDATE payments SET authorization_expires_at = now() - interval '1 second'"
                         " WHERE status = 'requires_capture'")
    resp = await world.client.post(f"/v1/payments/{p['id']}/capture", headers=m.headers, json={})
    body = await resp.json()
    assert resp.status == 409, (resp.status, body)
    assert await world.available(h) == 10_000


async def test_static_qr_payer_cannot_change_the_codes_currency(world: World) -> None:
    """services/qr.py pay() takes the currency of a static code from the payload the payer sends,
    not from the stored code: re-encoding the store's CNY code as JPY pays the merchant in JPY."""
    m = await world.merchant()
    h = await world.holder(top_up=5_000)
    await world.top_up(h, 5_000, "JPY")
    code = await world.call("GET", f"/v1/stores/{m.store}/qr_code?currency=CNY", headers=m.headers)
    tampered = emv_qr.encode(dataclasses.replace(emv_qr.parse(code["payload"]), currency_numeric="392"))
    resp = await world.client.post("/v1/wallet/qr/pay", headers=h.headers,
                                   json={"payload": tampered, "amount": 1_000})
    body = await resp.json()
    assert resp.status >= 400 or body["currency"] == "CNY", (resp.status, body["currency"], body)


async def test_reverse_racing_a_pay_does_not_500(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """services/payments.py reverse() resolves accounts from a head read before the row lock; when the
    payer pays in between, the refund branch looks up a wallet account that was never resolved
    (KeyError -> 500). The counter's reversal of an unknown outcome is exactly this race."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    p = await world.payment(m, 1_000)
    original = payment_service._merchant_head
    paid = False

    async def head_then_payer_pays(svc: Any, who: Any, pid: Any) -> Any:
        nonlocal paid
        head = await original(svc, who, pid)
        if not paid:
            paid = True
            await world.pay(h, p["id"])  # the payer's request lands between the read and the lock
        return head

    monkeypatch.setattr(payment_service, "_merchant_head", head_then_payer_pays)
    resp = await world.client.post(f"/v1/payments/{p['id']}/reverse", headers=m.headers, json={})
    body = await resp.json()
    assert resp.status == 200, (resp.status, body)
    assert body["amount_refunded"] == 1_000 and await world.available(h) == 10_000


async def test_capture_racing_the_payers_authorisation_does_not_500(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same stale-head account resolution in capture(): head read unpaid, authorised before the lock."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    p = await world.payment(m, 1_000, capture_method="manual")
    original = payment_service._merchant_head
    paid = False

    async def head_then_payer_pays(svc: Any, who: Any, pid: Any) -> Any:
        nonlocal paid
        head = await original(svc, who, pid)
        if not paid:
            paid = True
            await world.pay(h, p["id"])
        return head

    monkeypatch.setattr(payment_service, "_merchant_head", head_then_payer_pays)
    resp = await world.client.post(f"/v1/payments/{p['id']}/capture", headers=m.headers, json={})
    body = await resp.json()
    assert resp.status in (200, 409), (resp.status, body)


# --- 2. Idempotency -----------------------------------------------------------------------------


async def test_tap_retry_with_a_new_idempotency_key_is_not_a_500(world: World) -> None:
    """api/payments.py tap(): an explicit Idempotency-Key replaces the terminal transaction id as the
    key. A retry of the same tap (same device, txn id, ATC) under a new key passes claim_atc as a
    retry, then INSERT hits payments_terminal_txn (UniqueViolation) -> 500."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    device, _ = await _device(world, m)
    card = await _phone(world, h)
    tap = _tap(card, 500)
    body = {"terminal_transaction_id": "T-77", "amount": 500, "currency": "CNY", "tap": tap}
    headers = {**auth(device["access_token"]), "Idempotency-Key": str(uuid.uuid4())}
    first = await world.client.post("/v1/tap_payments", headers=headers, json=body)
    assert first.status == 201
    headers["Idempotency-Key"] = str(uuid.uuid4())
    retry = await world.client.post("/v1/tap_payments", headers=headers, json=body)
    answer = await retry.json()
    assert retry.status < 500, (retry.status, answer)
    assert await world.available(h) == 9_500


# --- 3. Isolation inside a merchant -------------------------------------------------------------


async def test_device_cannot_reverse_another_stores_payment(world: World) -> None:
    """services/payments.py _locked/_merchant_head scope a DEVICE only by merchant_id, although
    services/devices.py promises a device acts only for its own store and terminal. A counter
    device can thereby fully refund (via /reverse) any captured payment of any store of its
    merchant, at any age, while /refunds itself is reserved to the secret key."""
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    _, far_device = await _second_store_device(world, m)
    here_device, _ = await _device(world, m)
    sale = await world.call("POST", "/v1/payments", 201, headers=auth(far_device["access_token"]),
                            json={"amount": 3_000, "currency": "CNY"})
    await world.pay(h, sale["id"])
    resp = await world.client.post(f"/v1/payments/{sale['id']}/reverse",
                                   headers=auth(here_device["access_token"]), json={})
    body = await resp.json()
    assert resp.status == 404, (resp.status, body)
    assert await world.available(h) == 7_000


# --- 4. PIN and limits --------------------------------------------------------------------------


async def test_concurrent_wrong_pins_cannot_exceed_the_failure_limit(
    world: World, clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """services/pins.py verify(): the lock is read, the PIN checked (slow Argon2, off the loop), and
    only then the failure counted. Every guess sent before the first failure commits is checked,
    so pin_failures_max (5) bounds nothing; confirm() then never re-checks payments_locked_at in
    its transaction, so the right guess confirms the payment of a wallet that is already locked.
    The sleep below only widens Argon2's own window to make the interleaving deterministic."""
    m = await world.merchant(fee_bps=0)
    h = await _device_holder(world, 500_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": "246810"})
    code = (await world.call("POST", "/v1/wallet/pay_codes", 201, headers=h.headers, json={}))["code"]
    charged = await _charge(world, m, code, 150_000)
    assert charged["status"] == "requires_action"
    real_verify = passwords.verify_password

    async def slow_verify(stored: str | None, password: str) -> bool:
        await asyncio.sleep(0.6 if password == "246810" else 0.2)
        return await real_verify(stored, password)

    monkeypatch.setattr(passwords, "verify_password", slow_verify)
    guesses = [f"{n:06d}" for n in range(100_001, 100_011)] + ["246810"]

    async def confirm(pin: str) -> int:
        resp = await world.client.post(f"/v1/wallet/payments/{charged['id']}/confirm", headers=h.headers,
                                       json={"pin": pin})
        return resp.status

    await asyncio.gather(*(confirm(pin) for pin in guesses))
    row = (await _sql(clean_db, "SELECT pin_failures, payments_locked_at FROM wallet_holders WHERE id = $1",
                      uuid.UUID(h.id.removeprefix("wh_"))))[0]
    status = (await world.call("GET", f"/v1/payments/{charged['id']}", headers=m.headers))["status"]
    assert row["pin_failures"] <= 5 and status != "succeeded", (dict(row), status)


async def test_locked_wallet_cannot_withdraw(world: World) -> None:
    """services/wallets.py transfer() reads the holder (FOR SHARE) but never its payments lock, and a
    withdrawal needs no PIN: a wallet locked after 5 wrong PINs still empties to a bank account."""
    h = await world.holder(top_up=10_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": "246810"})
    for n in range(5):
        await world.client.post("/v1/wallet/pin", headers=h.headers,
                                json={"pin": "135790", "current_pin": f"{111111 + n:06d}"})
    wallet = await world.call("GET", "/v1/wallet", headers=h.headers)
    assert wallet["holder"]["payments_locked"] is True
    resp = await world.client.post("/v1/wallet/withdrawals", headers=h.headers,
                                   json={"bank_account": h.bank_account, "amount": 10_000, "currency": "CNY"})
    assert resp.status == 403, (resp.status, await resp.json())


# --- 5. Client input -> 500 ---------------------------------------------------------------------


async def test_qr_terminal_label_with_a_control_character_is_a_400(world: World) -> None:
    """services/qr.py issue_dynamic(): the label goes into emv_qr unchecked; QrFormatError (a
    ValueError, not a GatewayError) escapes as a 500."""
    m = await world.merchant()
    p = await world.payment(m, 100)
    resp = await world.client.post(f"/v1/payments/{p['id']}/qr_codes", headers=m.headers,
                                   json={"terminal_label": "Counter\t1"})
    assert resp.status == 400, (resp.status, await resp.json())


async def test_qr_for_a_payment_whose_reference_has_a_newline_is_not_a_500(world: World) -> None:
    """The payment's merchant_reference is accepted at creation, then breaks every QR of it (500)."""
    m = await world.merchant()
    p = await world.payment(m, 100, merchant_reference="order\n42")
    resp = await world.client.post(f"/v1/payments/{p['id']}/qr_codes", headers=m.headers, json={})
    assert resp.status < 500, (resp.status, await resp.json())


async def test_static_qr_in_another_currency_is_not_the_first_currencys_code(world: World) -> None:
    """services/qr.py static_for_store(): one static code per store, whatever currency is asked for;
    asking for JPY after CNY silently returns the CNY code."""
    m = await world.merchant()
    await world.call("GET", f"/v1/stores/{m.store}/qr_code?currency=CNY", headers=m.headers)
    resp = await world.client.get(f"/v1/stores/{m.store}/qr_code?currency=JPY", headers=m.headers)
    body = await resp.json()
    assert resp.status >= 400 or emv_qr.parse(body["payload"]).currency_numeric == "392", body


async def test_pay_code_charge_by_a_device_is_booked_to_its_store_and_terminal(world: World) -> None:
    """services/pay_codes.py charge(): unlike create(), a device's store and terminal are dropped
    (terminal_id=None, store only from the body), so counter pay-code sales belong to no terminal."""
    m = await world.merchant()
    device, terminal = await _device(world, m)
    h = await _device_holder(world, 10_000)
    code = (await world.call("POST", "/v1/wallet/pay_codes", 201, headers=h.headers, json={}))["code"]
    sale = await world.call("POST", "/v1/pay_code_charges", 201, headers=auth(device["access_token"]),
                            json={"pay_code": code, "amount": 100, "currency": "CNY"})
    assert (sale["store"], sale["terminal"]) == (device["store"], terminal), sale


async def test_dynamic_qr_of_a_large_amount_is_a_400_not_a_500(world: World) -> None:
    """emv_qr.Amount allows 13 characters of text; CNY amounts from 10^12 minor ("10000000000.00",
    14) up to AMOUNT_MINOR_MAX are valid payments whose QR raises QrFormatError -> 500."""
    m = await world.merchant()
    p = await world.payment(m, 10**12)
    resp = await world.client.post(f"/v1/payments/{p['id']}/qr_codes", headers=m.headers, json={})
    assert resp.status < 500, (resp.status, await resp.json())


# --- 2b. Idempotent retries must replay, not re-decide ------------------------------------------


async def test_qr_pay_retry_with_the_same_key_replays_the_payment(world: World) -> None:
    """services/qr.py pay() runs _refuse_if_unusable before svc.idempotency.run: the retry of a
    successful scan (same Idempotency-Key, same body; e.g. the answer was lost) is told 409
    qr_code_used instead of getting the stored 200."""
    m = await world.merchant()
    h = await world.holder(top_up=5_000)
    _, code = await _qr(world, m, 1_000)
    headers = {**h.headers, "Idempotency-Key": "scan-1"}
    first = await world.client.post("/v1/wallet/qr/pay", headers=headers, json={"payload": code["payload"]})
    assert first.status == 200
    retry = await world.client.post("/v1/wallet/qr/pay", headers=headers, json={"payload": code["payload"]})
    assert retry.status == 200, (retry.status, await retry.json())
    assert await retry.read() == await first.read()


async def test_pay_retry_with_the_same_key_replays_even_after_the_wallet_locked(world: World) -> None:
    """services/payments.py pay() checks the PIN (and so the lock) before the idempotency replay: a
    stored 200 comes back as 403 wallet_locked once the wallet is locked, though the money moved."""
    m = await world.merchant()
    h = await world.holder(top_up=500_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": "246810"})
    p = await world.payment(m, 150_000)  # above the CNY PIN threshold
    headers = {**h.headers, "Idempotency-Key": "pay-1"}
    first = await world.client.post(f"/v1/wallet/payments/{p['id']}/pay", headers=headers, json={"pin": "246810"})
    assert first.status == 200
    for n in range(5):
        await world.client.post("/v1/wallet/pin", headers=h.headers,
                                json={"pin": "135790", "current_pin": f"{111111 + n:06d}"})
    retry = await world.client.post(f"/v1/wallet/payments/{p['id']}/pay", headers=headers, json={"pin": "246810"})
    assert retry.status == 200, (retry.status, await retry.json())


async def test_qr_image_with_a_nul_in_the_token_is_a_404(world: World) -> None:
    """services/qr.py image(): the path token goes straight into a text parameter; PostgreSQL
    cannot hold U+0000, so asyncpg raises and the client gets a 500 (routing only screens bodies)."""
    m = await world.merchant()
    resp = await world.client.get("/v1/qr_codes/ab%00cd/image.png", headers=m.headers)
    assert resp.status == 404, (resp.status, await resp.text())


async def test_a_burst_of_wrong_pins_is_not_all_evaluated(world: World, clean_db: str) -> None:
    """The same race as above with nothing patched: 30 concurrent wrong PINs are all checked
    (and counted) although the wallet locks after 5."""
    m = await world.merchant()
    h = await world.holder(top_up=500_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": "246810"})
    p = await world.payment(m, 150_000)

    async def guess(n: int) -> int:
        resp = await world.client.post(f"/v1/wallet/payments/{p['id']}/pay", headers=h.headers,
                                       json={"pin": f"{100_000 + n:06d}"})
        return resp.status

    await asyncio.gather(*(guess(n) for n in range(30)))
    row = (await _sql(clean_db, "SELECT pin_failures FROM wallet_holders WHERE id = $1",
                      uuid.UUID(h.id.removeprefix("wh_"))))[0]
    assert row["pin_failures"] <= 5, dict(row)
