"""One payment per counter sale: the sale's payment is created once, and its QR code, a tap or a
pay-code settles that same payment (``payment`` in the tap and the pay-code charge)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.integration.test_devices_taps import _device, _phone, _tap
from tests.integration.test_qr_paycode import _device_holder
from tests.integration.world import World, auth


async def _sale_payment(world: World, token: str, amount: int, reference: str = "C1-000001") -> Any:
    return await world.call("POST", "/v1/payments", 201, headers=auth(token),
                            json={"amount": amount, "currency": "CNY", "merchant_reference": reference})


def _tap_body(tap: dict[str, Any], amount: int, payment: str | None, txn: str | None = None) -> dict[str, Any]:
    return {"terminal_transaction_id": txn or uuid.uuid4().hex, "amount": amount, "currency": "CNY", "tap": tap,
            "payment": payment}


async def test_a_tap_settles_the_sales_payment_once(world: World) -> None:
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    device, _ = await _device(world, m)
    token = device["access_token"]
    sale = await _sale_payment(world, token, 3_800)
    card = await _phone(world, h)
    body = _tap_body(_tap(card, 3_800), 3_800, sale["id"], txn="T-1")
    paid = await world.call("POST", "/v1/tap_payments", 200, headers=auth(token), json=body)
    assert (paid["id"], paid["status"], paid["channel"]) == (sale["id"], "succeeded", "tap")
    assert paid["merchant_reference"] == "C1-000001"
    assert await world.call("POST", "/v1/tap_payments", 200, headers=auth(token), json=body) == paid  # replayed
    listed = await world.call("GET", "/v1/payments?merchant_reference=C1-000001", headers=auth(token))
    assert [p["id"] for p in listed["data"]] == [sale["id"]]
    assert await world.available(h) == 6_200
    # Settled: a second tap (a new cryptogram) on it is refused with the payment's state.
    again = await world.call("POST", "/v1/tap_payments", 409, headers=auth(token),
                             json=_tap_body(_tap(card, 3_800), 3_800, sale["id"]))
    assert (again["error"]["code"], again["error"].get("status_now")) == ("payment_not_payable", "succeeded")
    assert await world.available(h) == 6_200


async def test_a_tap_is_refused_on_a_payment_not_its_counters(world: World) -> None:
    m, other = await world.merchant("A"), await world.merchant("B")
    h = await world.holder(top_up=10_000)
    device, _ = await _device(world, m)
    second_counter, _ = await _device(world, m)
    theirs, _ = await _device(world, other)
    token = device["access_token"]
    card = await _phone(world, h)
    for foreign in (await _sale_payment(world, theirs["access_token"], 500),
                    await _sale_payment(world, second_counter["access_token"], 500)):
        refused = await world.call("POST", "/v1/tap_payments", 404, headers=auth(token),
                                   json=_tap_body(_tap(card, 500), 500, foreign["id"]))
        assert (refused["error"]["code"], refused["error"]["param"]) == ("resource_missing", "payment")
    ours = await _sale_payment(world, token, 500)
    mismatch = await world.call("POST", "/v1/tap_payments", 400, headers=auth(token),
                                json=_tap_body(_tap(card, 600), 600, ours["id"]))
    assert mismatch["error"]["code"] == "amount_mismatch"
    other_reference = {**_tap_body(_tap(card, 500), 500, ours["id"]), "merchant_reference": "C1-000099"}
    refused = await world.call("POST", "/v1/tap_payments", 400, headers=auth(token), json=other_reference)
    assert refused["error"]["code"] == "merchant_reference_mismatch"
    await world.call("POST", f"/v1/payments/{ours['id']}/reverse", headers=auth(token), json={})
    closed = await world.call("POST", "/v1/tap_payments", 409, headers=auth(token),
                              json=_tap_body(_tap(card, 500), 500, ours["id"]))
    assert (closed["error"]["code"], closed["error"].get("status_now")) == ("payment_not_payable", "canceled")
    assert await world.available(h) == 10_000


async def test_qr_and_tap_racing_for_one_payment_exactly_one_wins(world: World) -> None:
    m = await world.merchant(fee_bps=0)
    h = await _device_holder(world, 100_000)
    device, _ = await _device(world, m)
    token = device["access_token"]
    card = await _phone(world, h)
    winners: list[str] = []
    for round_index in range(6):
        sale = await _sale_payment(world, token, 1_000, reference=f"C1-{round_index:06d}")
        code = await world.call("POST", f"/v1/payments/{sale['id']}/qr_codes", 201, headers=auth(token), json={})
        tap = world.client.post("/v1/tap_payments", headers=auth(token), json=_tap_body(_tap(card, 1_000), 1_000,
                                                                                        sale["id"]))
        scan = world.client.post("/v1/wallet/qr/pay", headers=h.headers, json={"payload": code["payload"]})
        by_tap, by_qr = await asyncio.gather(tap, scan)
        answers = {"tap": (by_tap.status, await by_tap.json()), "qr": (by_qr.status, await by_qr.json())}
        won = [name for name, (status, _) in answers.items() if status == 200]
        assert len(won) == 1, answers
        lost = "qr" if won == ["tap"] else "tap"
        status, body = answers[lost]
        assert status == 409 and body["error"]["code"] == {"tap": "payment_not_payable", "qr": "qr_code_used"}[lost]
        final = await world.call("GET", f"/v1/payments/{sale['id']}", headers=auth(token))
        assert final["status"] == "succeeded" and final["channel"] == won[0]
        winners += won
    assert await world.available(h) == 100_000 - 6 * 1_000


async def test_a_pay_code_settles_the_sales_payment(world: World) -> None:
    m = await world.merchant(fee_bps=0)
    h = await _device_holder(world, 10_000)
    device, _ = await _device(world, m)
    token = device["access_token"]
    sale = await _sale_payment(world, token, 990)
    code = (await world.call("POST", "/v1/wallet/pay_codes", 201, headers=h.headers, json={}))["code"]
    body = {"pay_code": code, "amount": 990, "currency": "CNY", "payment": sale["id"]}
    charged = await world.call("POST", "/v1/pay_code_charges", 200, json=body,
                               headers={**auth(token), "Idempotency-Key": "charge-1"})
    assert (charged["id"], charged["status"], charged["channel"]) == (sale["id"], "succeeded", "pay_code")
    assert await world.call("POST", "/v1/pay_code_charges", 200, json=body,
                            headers={**auth(token), "Idempotency-Key": "charge-1"}) == charged
    assert await world.available(h) == 9_010
    # A fresh code on the settled payment: refused, and the code stays unused (it pays the next sale).
    fresh = (await world.call("POST", "/v1/wallet/pay_codes", 201, headers=h.headers, json={}))["code"]
    refused = await world.call("POST", "/v1/pay_code_charges", 409, headers=auth(token),
                               json={**body, "pay_code": fresh})
    assert refused["error"]["code"] == "payment_not_payable"
    following = await _sale_payment(world, token, 100, reference="C1-000002")
    paid = await world.call("POST", "/v1/pay_code_charges", 200, headers=auth(token),
                            json={"pay_code": fresh, "amount": 100, "currency": "CNY", "payment": following["id"]})
    assert paid["id"] == following["id"] and await world.available(h) == 8_910
    unexpected = await world.call("POST", "/v1/pay_code_charges", 400, headers=auth(token),
                                  json={**body, "description": "x"})
    assert unexpected["error"]["code"] == "parameter_unexpected"
    listed = await world.call("GET", "/v1/payments?merchant_reference=C1-000001", headers=auth(token))
    assert [p["id"] for p in listed["data"]] == [sale["id"]]


async def test_a_pay_code_charge_on_the_sales_payment_refuses_what_only_a_new_payment_takes(world: World) -> None:
    """The named payment keeps its own capture method and metadata: a charge that asks for others (a
    hold instead of a capture, pairs to store) is refused, never silently settled another way."""
    m = await world.merchant(fee_bps=0)
    h = await _device_holder(world, 10_000)
    device, _ = await _device(world, m)
    token = device["access_token"]
    sale = await _sale_payment(world, token, 400)
    code = (await world.call("POST", "/v1/wallet/pay_codes", 201, headers=h.headers, json={}))["code"]
    body = {"pay_code": code, "amount": 400, "currency": "CNY", "payment": sale["id"]}
    for name, value in (("capture_method", "manual"), ("capture_method", "automatic"), ("metadata", {"order": "7"})):
        refused = await world.call("POST", "/v1/pay_code_charges", 400, headers=auth(token),
                                   json={**body, name: value})
        assert (refused["error"]["code"], refused["error"]["param"]) == ("parameter_unexpected", name)
    assert (await world.call("GET", f"/v1/payments/{sale['id']}", headers=auth(token)))["status"] == (
        "requires_payment_method")
    assert await world.available(h) == 10_000
    paid = await world.call("POST", "/v1/pay_code_charges", 200, headers=auth(token), json=body)
    assert (paid["id"], paid["status"]) == (sale["id"], "succeeded")


async def test_a_terminal_transaction_id_its_terminal_used_before_is_a_409_not_a_500(world: World) -> None:
    """Agents enrolled again on one terminal (a re-enrolled counter whose journal still forwards), or a
    retry after its idempotency record was purged: the id names the terminal's earlier payment."""
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    first, terminal = await _device(world, m)

    async def another_agent() -> str:
        code = await world.call("POST", f"/v1/terminals/{terminal}/enrolment_codes", 201, headers=m.headers, json={})
        enrolled = await world.call("POST", "/v1/devices/enrolments", 201, json={"code": code["code"], "name": "agent"})
        return str(enrolled["access_token"])

    card = await _phone(world, h)
    await world.call("POST", "/v1/tap_payments", 201, headers=auth(first["access_token"]),
                     json=_tap_body(_tap(card, 100), 100, None, txn="TXN-1"))
    settling, creating = await another_agent(), await another_agent()
    sale = await _sale_payment(world, settling, 200)
    for token, body in ((settling, _tap_body(_tap(card, 200), 200, sale["id"], txn="TXN-1")),
                        (creating, _tap_body(_tap(card, 300), 300, None, txn="TXN-1"))):
        for _ in range(2):  # the refusal is the stored answer
            refused = await world.call("POST", "/v1/tap_payments", 409, headers=auth(token), json=body)
            assert (refused["error"]["code"], refused["error"]["param"]) == ("terminal_transaction_id_used",
                                                                             "terminal_transaction_id")
    assert (await world.call("GET", f"/v1/payments/{sale['id']}", headers=auth(settling)))["status"] == (
        "requires_payment_method")
    assert await world.available(h) == 9_900


async def test_a_device_settles_only_its_terminals_payments_the_merchant_key_any_of_its_own(world: World) -> None:
    """A payment the merchant's secret key created has no terminal: no device settles it (404, as another
    terminal's); the secret key itself may charge a pay-code against a payment one of its counters opened."""
    m = await world.merchant(fee_bps=0)
    h = await _device_holder(world, 10_000)
    device, _ = await _device(world, m)
    token = device["access_token"]
    back_office = await world.payment(m, 300)
    card = await _phone(world, h)
    refused = await world.call("POST", "/v1/tap_payments", 404, headers=auth(token),
                               json=_tap_body(_tap(card, 300), 300, back_office["id"]))
    assert (refused["error"]["code"], refused["error"]["param"]) == ("resource_missing", "payment")
    code = (await world.call("POST", "/v1/wallet/pay_codes", 201, headers=h.headers, json={}))["code"]
    charge = {"pay_code": code, "amount": 300, "currency": "CNY", "payment": back_office["id"]}
    assert (await world.call("POST", "/v1/pay_code_charges", 404, headers=auth(token), json=charge))["error"][
        "param"] == "payment"
    sale = await _sale_payment(world, token, 300)
    paid = await world.call("POST", "/v1/pay_code_charges", 200, headers=m.headers, json={**charge, "payment": sale["id"]})
    assert (paid["id"], paid["status"], paid["terminal"]) == (sale["id"], "succeeded", sale["terminal"])
    assert await world.available(h) == 9_700


async def test_a_tap_and_a_pay_code_racing_for_one_payment_move_money_once(world: World) -> None:
    m = await world.merchant(fee_bps=0)
    h = await _device_holder(world, 100_000)
    device, _ = await _device(world, m)
    token = device["access_token"]
    card = await _phone(world, h)
    for round_index in range(4):
        sale = await _sale_payment(world, token, 1_000, reference=f"C1-{round_index:06d}")
        code = (await world.call("POST", "/v1/wallet/pay_codes", 201, headers=h.headers, json={}))["code"]
        by_tap, by_code = await asyncio.gather(
            world.client.post("/v1/tap_payments", headers=auth(token),
                              json=_tap_body(_tap(card, 1_000), 1_000, sale["id"])),
            world.client.post("/v1/pay_code_charges", headers=auth(token),
                              json={"pay_code": code, "amount": 1_000, "currency": "CNY", "payment": sale["id"]}))
        answers = {"tap": (by_tap.status, await by_tap.json()), "pay_code": (by_code.status, await by_code.json())}
        won = [name for name, (status, _) in answers.items() if status == 200]
        assert len(won) == 1, answers
        [(status, body)] = [answer for name, answer in answers.items() if name not in won]
        assert (status, body["error"]["code"]) == (409, "payment_not_payable"), answers
        final = await world.call("GET", f"/v1/payments/{sale['id']}", headers=auth(token))
        assert (final["status"], final["channel"]) == ("succeeded", won[0])
        assert await world.available(h) == 100_000 - (round_index + 1) * 1_000
