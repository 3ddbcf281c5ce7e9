"""A risk step-up on a pay-code charge, over real HTTP with real PostgreSQL and Redis: nobody at the counter
can answer a PIN or a one-time code, so the charge is held in requires_action (the amount reserved) and the
holder confirms it in the app with what the rules asked for; the counter sees requires_action, then the final
status. The decision and its answer are recorded, the holder alerted, retries move nothing twice, an
unconfirmed charge is reversed by the worker, and the fixtures prove the invariants after each test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from gateway.services.context import Services
from gateway.store import invariants
from gateway.workers.expiry import tick
from tests.conftest import make_settings, sms_gateway
from tests.integration.conftest import serving
from tests.integration.test_qr_paycode import _device_holder
from tests.integration.world import Holder, Merchant, World

PIN = "258036"


async def _rule(world: World, **body: Any) -> Any:
    return await world.call("POST", "/v1/operator/risk_rules", 201, headers=world.ops, json=body)


async def _pay_code(world: World, h: Holder) -> str:
    return str((await world.call("POST", "/v1/wallet/pay_codes", 201, headers=h.headers, json={}))["code"])


async def _charge(world: World, m: Merchant, code: str, amount: int, expect: int = 201, key: str | None = None) -> Any:
    return await world.call("POST", "/v1/pay_code_charges", expect,
                            headers={**m.headers, "Idempotency-Key": key or uuid.uuid4().hex},
                            json={"pay_code": code, "amount": amount, "currency": "CNY", "store": m.store})


async def _confirm(world: World, h: Holder, pid: str, expect: int = 200, key: str | None = None, **body: Any) -> Any:
    return await world.call("POST", f"/v1/wallet/payments/{pid}/confirm", expect,
                            headers={**h.headers, "Idempotency-Key": key or uuid.uuid4().hex}, json=body)


async def _decisions(world: World, h: Holder) -> list[dict[str, Any]]:
    found = await world.call("GET", f"/v1/operator/risk_decisions?limit=100&wallet={h.id}", headers=world.ops)
    return list(found["data"])


async def _alerts(world: World, h: Holder) -> list[dict[str, Any]]:
    notes = await world.call("GET", "/v1/wallet/notifications", headers=h.headers)
    return [n for n in notes["data"] if n["kind"] == "risk.alert"]


async def _held(world: World, h: Holder) -> int:
    wallet = await world.call("GET", "/v1/wallet", headers=h.headers)
    return int(wallet["balances"][0]["held"])


async def _fetch(db_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _broken(db_url: str) -> dict[str, list[dict[str, object]]]:
    conn = await asyncpg.connect(db_url)
    try:
        found = await invariants.check(conn)
    finally:
        await conn.close()
    return {name: rows for name, rows in found.items() if rows}


async def test_require_pin_holds_the_charge_until_the_holder_confirms_with_the_pin(world: World,
                                                                                   clean_db: str) -> None:
    m = await world.merchant(fee_bps=0)
    h = await _device_holder(world, 10_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": PIN})
    await _rule(world, kind="blocked_wallet", wallet=h.id, outcome="require_pin")
    code = await _pay_code(world, h)
    key = uuid.uuid4().hex
    charged = await _charge(world, m, code, 300, key=key)  # below the PIN threshold: the rule asks for it
    assert (charged["status"], charged["channel"]) == ("requires_action", "pay_code") and charged["confirm_by"]
    assert await _charge(world, m, code, 300, key=key) == charged  # the counter's retry: the same answer
    assert await _held(world, h) == 300 and await world.available(h) == 9_700
    polled = await world.call("GET", f"/v1/payments/{charged['id']}", headers=m.headers)
    assert polled["status"] == "requires_action"
    pending = await world.call("GET", "/v1/wallet/pending_payments", headers=h.headers)
    assert [p["id"] for p in pending["data"]] == [charged["id"]]
    asked = await _decisions(world, h)
    assert [(d["outcome"], d["passed"], d["channel"], d["payment"]) for d in asked] == [
        ("require_pin", [], "pay_code", charged["id"])]
    alerts = await _alerts(world, h)
    assert [(a["data"]["decision"], a["data"]["outcome"]) for a in alerts] == [(asked[0]["id"], "require_pin")]

    missing = await _confirm(world, h, charged["id"], 402)
    assert (missing["error"]["code"], missing["error"]["param"]) == ("pin_required", "pin")
    wrong = await _confirm(world, h, charged["id"], 402, pin="000001")
    assert wrong["error"]["code"] == "incorrect_pin" and wrong["error"]["attempts_remaining"] == 4
    stranger = await _device_holder(world, 1_000)
    await world.call("POST", "/v1/wallet/pin", headers=stranger.headers, json={"pin": PIN})
    other = await _confirm(world, stranger, charged["id"], 404, pin=PIN)
    assert other["error"]["code"] == "resource_missing"
    confirm_key = uuid.uuid4().hex
    ok = await _confirm(world, h, charged["id"], key=confirm_key, pin=PIN)
    assert ok["status"] == "succeeded"
    assert await _confirm(world, h, charged["id"], key=confirm_key, pin=PIN) == ok  # replayed: moved once
    again = await _confirm(world, h, charged["id"], 409, pin=PIN)
    assert again["error"]["code"] == "payment_not_confirmable"
    polled = await world.call("GET", f"/v1/payments/{charged['id']}", headers=m.headers)
    assert polled["status"] == "succeeded" and polled["amount_received"] == 300
    assert await world.available(h) == 9_700 and await _held(world, h) == 0
    assert await world.merchant_total(m) == 300
    decisions = await _decisions(world, h)
    assert [(d["outcome"], d["passed"]) for d in decisions] == [("allow", ["pin"]), ("require_pin", [])]
    assert decisions[0]["reasons"] == decisions[1]["reasons"] and len(await _alerts(world, h)) == 1

    # The invariant can fail: a confirmation without its step-up passed is named.
    await _fetch(clean_db, "UPDATE risk_decisions SET passed = '{}' WHERE outcome = 'allow'")
    assert "held_payment_differs_from_its_step_ups" in await _broken(clean_db)
    await _fetch(clean_db, "UPDATE risk_decisions SET passed = '{pin}' WHERE outcome = 'allow'")


async def test_require_otp_sends_the_code_and_the_confirmation_takes_it(world: World, clean_db: str) -> None:
    m = await world.merchant(fee_bps=0)
    h = await _device_holder(world, 10_000)  # no PIN set: the rule asks only for the code
    await _rule(world, kind="blocked_wallet", wallet=h.id, outcome="require_otp")
    code = await _pay_code(world, h)
    key = uuid.uuid4().hex
    charged = await _charge(world, m, code, 500, key=key)
    assert charged["status"] == "requires_action"
    assert await _charge(world, m, code, 500, key=key) == charged
    [asked] = await _decisions(world, h)
    assert asked["outcome"] == "require_otp" and asked["challenge"].startswith("chl_")
    [alert] = await _alerts(world, h)
    assert alert["data"]["challenge"] == asked["challenge"]  # the app learns which code to ask for
    sent = await _fetch(clean_db, "SELECT id FROM sign_in_challenges WHERE reason = 'payment'")
    assert len(sent) == 1  # the retried charge sent no second code
    otp = await sms_gateway().code(h.phone, asked["challenge"])

    missing = await _confirm(world, h, charged["id"], 402)
    error = missing["error"]
    assert (error["code"], error["param"], error["challenge"]) == ("otp_required", "otp", asked["challenge"])
    assert error["phone_masked"] != h.phone and error["phone_masked"][-2:] == h.phone[-2:]
    badly = await _confirm(world, h, charged["id"], 400, otp="12")
    assert (badly["error"]["code"], badly["error"]["param"]) == ("invalid_code_format", "otp")
    wrong_code = "0" * len(otp) if otp != "0" * len(otp) else "1" * len(otp)
    wrong = await _confirm(world, h, charged["id"], 403, otp=wrong_code)
    assert wrong["error"]["code"] == "incorrect_code" and wrong["error"]["attempts_remaining"] == 4
    stranger = await _device_holder(world, 1_000)
    await _confirm(world, stranger, charged["id"], 404, otp=otp)
    confirm_key = uuid.uuid4().hex
    ok = await _confirm(world, h, charged["id"], key=confirm_key, otp=otp)
    assert ok["status"] == "succeeded"
    assert await _confirm(world, h, charged["id"], key=confirm_key, otp=otp) == ok
    polled = await world.call("GET", f"/v1/payments/{charged['id']}", headers=m.headers)
    assert polled["status"] == "succeeded"
    assert await world.available(h) == 9_500 and await world.merchant_total(m) == 500
    decisions = await _decisions(world, h)
    assert [(d["outcome"], d["passed"]) for d in decisions] == [("allow", ["otp"]), ("require_otp", [])]

    # The held payment's code opened that payment only: paying another of the same amount asks again.
    p = await world.payment(m, 500)
    refused = await world.call("POST", f"/v1/wallet/payments/{p['id']}/pay", 402, headers=h.headers, json={})
    assert refused["error"]["code"] == "otp_required" and refused["error"]["challenge"] != asked["challenge"]


async def test_a_verified_challenge_and_the_pin_confirm_a_charge_held_for_both(world: World) -> None:
    m = await world.merchant(fee_bps=0)
    h = await _device_holder(world, 10_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": PIN})
    await _rule(world, kind="blocked_wallet", wallet=h.id, outcome="require_pin")
    await _rule(world, kind="blocked_wallet", wallet=h.id, outcome="require_otp")
    charged = await _charge(world, m, await _pay_code(world, h), 700)
    assert charged["status"] == "requires_action"
    [asked] = await _decisions(world, h)
    otp = await sms_gateway().code(h.phone, asked["challenge"])
    await world.call("POST", f"/v1/wallet/risk_challenges/{asked['challenge']}/verify", headers=h.headers,
                     json={"code": otp})
    # Verified, not yet confirmed: the code still opens no other payment of that amount at that merchant.
    other = await world.payment(m, 700)
    refused = await world.call("POST", f"/v1/wallet/payments/{other['id']}/pay", 402, headers=h.headers,
                               json={"pin": PIN})
    assert refused["error"]["code"] == "otp_required" and refused["error"]["challenge"] != asked["challenge"]
    without_pin = await _confirm(world, h, charged["id"], 402)  # the code was verified; the PIN is missing
    assert without_pin["error"]["code"] == "pin_required"
    ok = await _confirm(world, h, charged["id"], pin=PIN)
    assert ok["status"] == "succeeded" and await world.available(h) == 9_300
    outcomes = [(d["outcome"], d["passed"]) for d in await _decisions(world, h)]
    assert outcomes == [("allow", ["otp", "pin"]), ("require_otp", ["pin"]), ("require_otp", [])]


async def test_an_unconfirmed_held_charge_is_reversed_by_the_worker(world: World, clean_db: str) -> None:
    m = await world.merchant()
    h = await _device_holder(world, 10_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": PIN})
    await _rule(world, kind="blocked_wallet", wallet=h.id, outcome="require_pin")
    charged = await _charge(world, m, await _pay_code(world, h), 400)
    assert charged["status"] == "requires_action" and await world.available(h) == 9_600
    await _fetch(clean_db, "UPDATE payments SET confirm_by = now() - interval '1 second' WHERE status = 'requires_action'")
    late = await _confirm(world, h, charged["id"], 409, pin=PIN)
    assert late["error"]["code"] == "confirmation_expired"
    svc = await Services.start(make_settings())
    try:
        assert (await tick(svc))[0] == 1
    finally:
        await svc.stop()
    polled = await world.call("GET", f"/v1/payments/{charged['id']}", headers=m.headers)
    assert polled["status"] == "expired"
    assert await world.available(h) == 10_000 and await _held(world, h) == 0
    assert [(d["outcome"], d["passed"]) for d in await _decisions(world, h)] == [("require_pin", [])]


async def test_a_decline_stays_a_decline_and_a_held_charge_failing_leaves_nothing(world: World,
                                                                                  clean_db: str) -> None:
    m = await world.merchant()
    h = await _device_holder(world, 10_000)
    blocked = await _rule(world, kind="blocked_wallet", wallet=h.id, outcome="decline")
    refused = await _charge(world, m, await _pay_code(world, h), 300, 402)
    assert refused["error"]["code"] == "risk_declined"
    assert [(d["outcome"], d["channel"]) for d in await _decisions(world, h)] == [("decline", "pay_code")]
    await world.call("POST", f"/v1/operator/risk_rules/{blocked['id']}/disable", headers=world.ops, json={})
    # Held for a code, then refused on funds: the decision, its challenge and its alert roll back with it.
    await _rule(world, kind="blocked_wallet", wallet=h.id, outcome="require_otp")
    poor = await _charge(world, m, await _pay_code(world, h), 20_000, 402)
    assert poor["error"]["code"] == "insufficient_funds"
    assert [d["outcome"] for d in await _decisions(world, h)] == ["decline"]
    assert await _fetch(clean_db, "SELECT id FROM sign_in_challenges WHERE reason = 'payment'") == []
    assert len(await _alerts(world, h)) == 1 and await world.available(h) == 10_000


async def test_concurrent_confirmations_of_a_held_charge_confirm_it_once(world: World) -> None:
    m = await world.merchant(fee_bps=0)
    h = await _device_holder(world, 10_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": PIN})
    await _rule(world, kind="blocked_wallet", wallet=h.id, outcome="require_pin")
    charged = await _charge(world, m, await _pay_code(world, h), 800)

    async def attempt() -> int:
        resp = await world.client.post(f"/v1/wallet/payments/{charged['id']}/confirm", json={"pin": PIN},
                                       headers={**h.headers, "Idempotency-Key": uuid.uuid4().hex})
        return resp.status

    assert sorted(await asyncio.gather(*(attempt() for _ in range(4)))) == [200, 409, 409, 409]
    assert await world.available(h) == 9_200 and await world.merchant_total(m) == 800
    assert [d["outcome"] for d in await _decisions(world, h)] == ["allow", "require_pin"]


@pytest.fixture
async def few_codes_world(clean_db: str) -> AsyncIterator[World]:
    """The holder's codes run out after registering and signing in on its device (two challenges)."""
    settings = make_settings(sign_in={"challenges_per_holder_max": 2})
    async with serving(clean_db, settings) as client:
        yield await World.create(client)


async def test_a_code_that_cannot_be_sent_declines_the_charge(few_codes_world: World) -> None:
    world = few_codes_world
    m = await world.merchant()
    h = await _device_holder(world, 10_000)
    await _rule(world, kind="blocked_wallet", wallet=h.id, outcome="require_otp")
    refused = await _charge(world, m, await _pay_code(world, h), 300, 402)
    assert refused["error"]["code"] == "risk_declined"
    assert [(d["outcome"], d["challenge"]) for d in await _decisions(world, h)] == [("decline", None)]
    assert await world.available(h) == 10_000 and await _held(world, h) == 0
