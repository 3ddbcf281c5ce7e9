"""POS devices (enrolment, tokens, revocation) and NFC tap authorisation with real EMV cryptograms.

The wallet phone's card applet (hardware.nfc.card) answers the terminal's EMV fast path
(hardware.nfc.emv) in memory here; the over-the-air path is covered in tests/integration/hardware_nfc
and tests/e2e.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import uuid
from typing import Any

from hardware.nfc import emv
from hardware.nfc.card import WalletCard, WalletProvisioning
from hardware.nfc.emv import Tag, TerminalData
from tests.integration.world import Holder, Merchant, World, auth

WALLET_AID = bytes.fromhex("F057414C4C455401")
TAGS = {"9F02": Tag.AMOUNT_AUTHORISED, "9F03": Tag.AMOUNT_OTHER, "9F1A": Tag.TERMINAL_COUNTRY, "95": Tag.TVR,
        "5F2A": Tag.TRANSACTION_CURRENCY, "9A": Tag.TRANSACTION_DATE, "9C": Tag.TRANSACTION_TYPE,
        "9F37": Tag.UNPREDICTABLE_NUMBER}


async def _device(world: World, m: Merchant) -> tuple[dict[str, Any], str]:
    terminal = await world.call("POST", f"/v1/merchants/{m.id}/terminals", 201, headers=world.ops,
                                json={"store": m.store, "label": "Counter 1"})
    code = await world.call("POST", f"/v1/terminals/{terminal['id']}/enrolment_codes", 201, headers=m.headers, json={})
    enrolled = await world.call("POST", "/v1/devices/enrolments", 201, json={"code": code["code"], "name": "agent"})
    again = await world.call("POST", "/v1/devices/enrolments", 401, json={"code": code["code"], "name": "agent"})
    assert again["error"]["code"] == "invalid_enrolment_code"
    return enrolled, terminal["id"]


async def _phone(world: World, h: Holder, device_id: str = "phone-7") -> WalletCard:
    session = {"token": await world.sign_in(h.phone, device_id=device_id)}
    token = await world.call("POST", "/v1/wallet/tap_tokens", 201, headers=auth(session["token"]), json={})
    assert token["token_pan"].startswith("999001") and len(token["token_pan"]) == 16
    provisioning = WalletProvisioning(token_pan=token["token_pan"], psn=token["psn"],
                                      icc_mk_ac=bytes.fromhex(token["icc_master_key"]))
    return WalletCard(provisioning, atc=token["atc"])


def _tap(card: WalletCard, amount: int, currency_numeric: int = 156) -> dict[str, Any]:
    card.reset()
    terminal = TerminalData(amount_minor=amount, currency_numeric=currency_numeric, country_numeric=156,
                            transaction_date=datetime.date(2026, 11, 23), unpredictable_number=os.urandom(4))
    result = emv.run_fast_path(card.handle_apdu, terminal, [WALLET_AID])
    return {"token_pan": result.token_pan, "psn": result.psn, "atc": result.atc, "arqc": result.arqc.hex(),
            "aip": result.aip.hex(), "iad": result.iad.hex(), "cid": "80",
            "terminal": {name: result.terminal_value(tag).hex() for name, tag in TAGS.items()}}


async def _pay_tap(world: World, token: str, tap: dict[str, Any], amount: int, expect: int = 201,
                   txn: str | None = None) -> Any:
    body = {"terminal_transaction_id": txn or uuid.uuid4().hex, "amount": amount, "currency": "CNY", "tap": tap}
    return await world.call("POST", "/v1/tap_payments", expect, headers=auth(token), json=body)


async def test_enrolled_device_sells_by_tap_and_replays_are_refused(world: World) -> None:
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    device, _ = await _device(world, m)
    card = await _phone(world, h)
    tap = _tap(card, 3_800)
    paid = await _pay_tap(world, device["access_token"], tap, 3_800, txn="T-1")
    assert (paid["status"], paid["channel"], paid["terminal"] is not None) == ("succeeded", "tap", True)
    # The same terminal transaction again: the stored answer, not a second charge.
    same = await _pay_tap(world, device["access_token"], tap, 3_800, txn="T-1")
    assert same == paid
    # The same cryptogram as a new transaction: a replay.
    replay = await _pay_tap(world, device["access_token"], tap, 3_800, expect=402)
    assert replay["error"]["code"] == "atc_replayed"
    assert await world.available(h) == 6_200
    second = await _pay_tap(world, device["access_token"], _tap(card, 200), 200)
    assert second["status"] == "succeeded" and await world.available(h) == 6_000


async def test_altered_amount_or_forged_cryptogram_is_declined(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    device, _ = await _device(world, m)
    card = await _phone(world, h)
    tap = _tap(card, 1_000)
    mismatch = await _pay_tap(world, device["access_token"], tap, 10, expect=402)
    assert mismatch["error"]["code"] == "amount_mismatch"
    forged = {**tap, "terminal": {**tap["terminal"], "9F02": "000000000010"}}
    bad = await _pay_tap(world, device["access_token"], forged, 10, expect=402)
    assert bad["error"]["code"] == "cryptogram_invalid"
    other_un = {**tap, "terminal": {**tap["terminal"], "9F37": "DEADBEEF"}}
    assert (await _pay_tap(world, device["access_token"], other_un, 1_000, 402))["error"]["code"] == "cryptogram_invalid"
    unknown = {**tap, "token_pan": "9990010000000009"}
    assert (await _pay_tap(world, device["access_token"], unknown, 1_000, 402))["error"]["code"] == "tap_token_unknown"
    malformed = {**tap, "arqc": "zz"}
    err = await _pay_tap(world, device["access_token"], malformed, 1_000, 400)
    assert (err["error"]["code"], err["error"]["param"]) == ("invalid_tap_data", "tap.arqc")
    assert await world.available(h) == 10_000
    # The genuine tap still works: nothing above burnt its counter.
    assert (await _pay_tap(world, device["access_token"], tap, 1_000))["status"] == "succeeded"


async def test_declined_tap_burns_its_counter(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=100)
    device, _ = await _device(world, m)
    card = await _phone(world, h)
    tap = _tap(card, 500)
    assert (await _pay_tap(world, device["access_token"], tap, 500, 402))["error"]["code"] == "insufficient_funds"
    await world.top_up(h, 1_000)
    replay = await _pay_tap(world, device["access_token"], tap, 500, 402)
    assert replay["error"]["code"] == "atc_replayed"
    assert await world.available(h) == 1_100


async def test_concurrent_taps_with_one_cryptogram_pay_once(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    device, _ = await _device(world, m)
    card = await _phone(world, h)
    tap = _tap(card, 700)
    body = lambda: {"terminal_transaction_id": uuid.uuid4().hex, "amount": 700, "currency": "CNY", "tap": tap}  # noqa: E731
    responses = await asyncio.gather(*(world.client.post("/v1/tap_payments", json=body(),
                                                         headers=auth(device["access_token"])) for _ in range(8)))
    assert sorted(r.status for r in responses) == [201] + [402] * 7
    assert await world.available(h) == 9_300


async def test_device_token_renewal_scope_and_revocation(world: World) -> None:
    m, other = await world.merchant("A"), await world.merchant("B")
    device, terminal = await _device(world, m)
    renewed = await world.call("POST", "/v1/devices/sessions", 201,
                               json={"device": device["device"], "device_secret": device["device_secret"]})
    token = renewed["access_token"]
    p = await world.call("POST", "/v1/payments", 201, headers=auth(token), json={"amount": 100, "currency": "CNY"})
    assert p["store"] == device["store"] and p["terminal"] == device["terminal"]
    theirs = await world.payment(other, 100)
    await world.call("GET", f"/v1/payments/{theirs['id']}", 404, headers=auth(token))
    by_ref = await world.call("POST", "/v1/payments", 201, headers=auth(token),
                              json={"amount": 100, "currency": "CNY", "merchant_reference": "R-42"})
    found = await world.call("GET", "/v1/payments?merchant_reference=R-42", headers=auth(token))
    assert [x["id"] for x in found["data"]] == [by_ref["id"]]
    wrong = await world.call("POST", "/v1/devices/sessions", 401,
                             json={"device": device["device"], "device_secret": "ds_wrong"})
    assert wrong["error"]["code"] == "invalid_device_credentials"
    await world.call("POST", f"/v1/terminals/{terminal}/revoke", headers=m.headers, json={})
    revoked = await world.call("GET", f"/v1/payments/{p['id']}", 401, headers=auth(token))
    assert revoked["error"]["code"] == "device_revoked"
    await world.call("POST", "/v1/devices/sessions", 401,
                     json={"device": device["device"], "device_secret": device["device_secret"]})


async def test_reverse_cancels_or_refunds(world: World) -> None:
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    device, _ = await _device(world, m)
    token = device["access_token"]
    open_payment = await world.call("POST", "/v1/payments", 201, headers=auth(token),
                                    json={"amount": 100, "currency": "CNY"})
    reversed_open = await world.call("POST", f"/v1/payments/{open_payment['id']}/reverse", headers=auth(token), json={})
    assert reversed_open["status"] == "canceled"
    card = await _phone(world, h)
    paid = await _pay_tap(world, token, _tap(card, 2_000), 2_000)
    reversed_paid = await world.call("POST", f"/v1/payments/{paid['id']}/reverse", headers=auth(token), json={})
    assert reversed_paid["amount_refunded"] == 2_000
    again = await world.call("POST", f"/v1/payments/{paid['id']}/reverse", headers=auth(token), json={})
    assert again["amount_refunded"] == 2_000
    assert await world.available(h) == 10_000


async def test_revoked_tap_token_is_declined_and_keys_never_logged(world: World, caplog: Any) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    device, _ = await _device(world, m)
    session = {"token": await world.sign_in(h.phone, device_id="phone-9")}
    with caplog.at_level("DEBUG"):
        token = await world.call("POST", "/v1/wallet/tap_tokens", 201, headers=auth(session["token"]), json={})
    assert token["icc_master_key"] not in caplog.text and token["token_pan"] not in caplog.text
    card = WalletCard(WalletProvisioning(token_pan=token["token_pan"], psn=token["psn"],
                                         icc_mk_ac=bytes.fromhex(token["icc_master_key"])), atc=token["atc"])
    revoked = await world.call("POST", f"/v1/wallet/tap_tokens/{token['token']}/revoke", headers=auth(session["token"]),
                               json={})
    assert revoked["status"] == "revoked" and revoked["pan_last4"] == token["token_pan"][-4:]
    err = await _pay_tap(world, device["access_token"], _tap(card, 100), 100, 402)
    assert err["error"]["code"] == "tap_token_revoked"
    assert await world.available(h) == 10_000



async def test_a_password_change_ends_the_other_phones_tap_tokens(world: World) -> None:
    """The holder lost phone-9 and changes its password from phone-1: phone-9's tap token is revoked with
    its session (as revoking the device does), so a tap from it is declined and nothing moves; phone-1's
    own token still pays (found by review: a password change left the other phones' tap tokens working)."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000, device_id="phone-1")
    device, _ = await _device(world, m)
    lost = await world.sign_in(h.phone, device_id="phone-9")
    cards = []
    for token_of in (lost, h.token):
        token = await world.call("POST", "/v1/wallet/tap_tokens", 201, headers=auth(token_of), json={})
        cards.append(WalletCard(WalletProvisioning(token_pan=token["token_pan"], psn=token["psn"],
                                                   icc_mk_ac=bytes.fromhex(token["icc_master_key"])), atc=token["atc"]))
    await world.call("POST", "/v1/wallet/password", headers=h.headers,
                     json={"current_password": "s3cret-pass", "new_password": "another-pass-42"})
    err = await _pay_tap(world, device["access_token"], _tap(cards[0], 100), 100, 402)
    assert err["error"]["code"] == "tap_token_revoked"
    assert await world.available(h) == 10_000
    await _pay_tap(world, device["access_token"], _tap(cards[1], 100), 100)
    assert await world.available(h) == 9_900

async def test_a_suspended_merchants_devices_are_refused_like_its_keys(world: World) -> None:
    """Suspension is "no API access" for every credential of the merchant: its counters can neither
    refund (money out of the suspended merchant) nor sell, and cannot renew their tokens."""
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    device, _ = await _device(world, m)
    token = device["access_token"]
    paid = await _pay_tap(world, token, _tap(await _phone(world, h), 1_000), 1_000)
    await world.call("POST", f"/v1/merchants/{m.id}/suspend", headers=world.ops, json={})
    for method, path, body in (("POST", f"/v1/payments/{paid['id']}/refunds", {}),
                               ("POST", f"/v1/payments/{paid['id']}/reverse", {}),
                               ("POST", "/v1/payments", {"amount": 100, "currency": "CNY"}),
                               ("GET", "/v1/payments", None)):
        refused = await world.call(method, path, 403, headers=auth(token), json=body)
        assert refused["error"]["code"] == "merchant_suspended", (method, path)
    renewal = {"device": device["device"], "device_secret": device["device_secret"]}
    assert (await world.call("POST", "/v1/devices/sessions", 403, json=renewal))["error"]["code"] == (
        "merchant_suspended")
    assert await world.available(h) == 9_000
    await world.call("POST", f"/v1/merchants/{m.id}/reactivate", headers=world.ops, json={})
    await world.call("POST", f"/v1/payments/{paid['id']}/refunds", 201, headers=auth(token), json={})
    assert await world.available(h) == 10_000


async def test_a_device_refunds_only_its_terminals_payments_and_never_more_than_was_paid(world: World) -> None:
    m, other = await world.merchant("A", fee_bps=0), await world.merchant("B", fee_bps=0)
    h = await world.holder(top_up=10_000)
    card = await _phone(world, h)
    device, terminal = await _device(world, m)
    neighbour, _ = await _device(world, m)
    stranger, _ = await _device(world, other)
    token = device["access_token"]
    ours = await _pay_tap(world, token, _tap(card, 1_000), 1_000)
    next_counter = await _pay_tap(world, neighbour["access_token"], _tap(card, 500), 500)
    elsewhere = await _pay_tap(world, stranger["access_token"], _tap(card, 700), 700)
    for foreign in (next_counter, elsewhere):
        refused = await world.call("POST", f"/v1/payments/{foreign['id']}/refunds", 404, headers=auth(token), json={})
        assert (refused["error"]["code"], refused["error"]["param"]) == ("resource_missing", "id")
    # Three full refunds racing, each under its own key: one refunds, the others find nothing left.
    answers = await asyncio.gather(*[
        world.client.post(f"/v1/payments/{ours['id']}/refunds", headers={**auth(token), "Idempotency-Key": f"r-{i}"},
                          json={"amount": 1_000}) for i in range(3)])
    assert sorted(a.status for a in answers) == [201, 409, 409]
    assert await world.available(h) == 10_000 - 500 - 700
    await world.call("POST", f"/v1/terminals/{terminal}/revoke", headers=m.headers, json={})
    revoked = await world.call("POST", f"/v1/payments/{ours['id']}/refunds", 401, headers=auth(token), json={})
    assert revoked["error"]["code"] == "device_revoked"
