"""Risk rules, second slice, over real HTTP with real PostgreSQL and Redis: each new kind triggers; the PIN
and the one-time code outcomes ask, then pass on the retry; every decision is recorded with its reasons
(a refusal's survives its payment's rollback, once per key); alerts reach the holder's notifications, the
operator's list and the events; with Redis down, velocity is still enforced from PostgreSQL. The fixtures
prove the ledger invariants after each test."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.api.routing import SERVICES
from gateway.domain.ids import Kind, decode
from gateway.services import payments as payment_cases
from gateway.store import invariants
from tests.conftest import TEST_REDIS_URL, make_settings, sms_gateway
from tests.integration.conftest import serving
from tests.integration.world import Holder, Merchant, World

PIN = "258036"


async def _rule(world: World, expect: int = 201, **body: Any) -> Any:
    return await world.call("POST", "/v1/operator/risk_rules", expect, headers=world.ops, json=body)


async def _pay(world: World, h: Holder, pid: str, expect: int = 200, **body: Any) -> Any:
    headers = {**h.headers, "Idempotency-Key": uuid.uuid4().hex}
    return await world.call("POST", f"/v1/wallet/payments/{pid}/pay", expect, headers=headers, json=body)


async def _paid(world: World, m: Merchant, h: Holder, amount: int, expect: int = 200, **body: Any) -> Any:
    return await _pay(world, h, (await world.payment(m, amount))["id"], expect, **body)


async def _decisions(world: World, query: str = "") -> list[dict[str, Any]]:
    found = await world.call("GET", f"/v1/operator/risk_decisions?limit=100{query}", headers=world.ops)
    return list(found["data"])


async def test_device_velocity_counts_every_holder_of_the_device_in_redis(world: World) -> None:
    m = await world.merchant()
    device = f"dev-{uuid.uuid4().hex[:8]}"
    a = await world.holder(top_up=10_000, device_id=device)
    b = await world.holder(top_up=10_000, device_id=device)
    elsewhere = await world.holder(top_up=10_000, device_id=f"dev-{uuid.uuid4().hex[:8]}")
    rule = await _rule(world, kind="velocity_device", window_s=3600, max_count=2)
    assert (await _paid(world, m, a, 100))["status"] == "succeeded"
    assert (await _paid(world, m, b, 100))["status"] == "succeeded"
    refused = await _paid(world, m, a, 100, 402)
    assert refused["error"]["code"] == "risk_declined" and refused["error"]["decision"].startswith("rkd_")
    assert (await _paid(world, m, elsewhere, 100))["status"] == "succeeded"
    assert await world.available(a) == 9_900 and await world.available(b) == 9_900
    # Counted in Redis: the two payments allowed, the refused one given back.
    rid = decode(Kind.RISK_RULE, rule["id"])
    assert rid is not None
    r = aioredis.from_url(TEST_REDIS_URL)
    try:
        assert await r.zcard(f"risk:w:{rid.hex}:{device}") == 2
    finally:
        await r.aclose()
    declined = await _decisions(world, "&outcome=decline")
    assert [d["reasons"][0]["kind"] for d in declined] == ["velocity_device"]
    assert declined[0]["reasons"][0]["detail"]["count"] == 3 and declined[0]["device_id"] == device


async def test_blocked_device_declines_only_that_device(world: World) -> None:
    m = await world.merchant()
    stolen = f"stolen-{uuid.uuid4().hex[:8]}"
    h = await world.holder(top_up=10_000, device_id=stolen)
    fine = await world.holder(top_up=10_000, device_id=f"dev-{uuid.uuid4().hex[:8]}")
    await _rule(world, kind="blocked_device", device_id=stolen)
    assert (await _paid(world, m, h, 100, 402))["error"]["code"] == "risk_declined"
    assert (await _paid(world, m, fine, 100))["status"] == "succeeded"
    assert await world.available(h) == 10_000


async def test_merchant_velocity_by_amount(world: World) -> None:
    m, other = await world.merchant(), await world.merchant("Other Shop")
    h1, h2 = await world.holder(top_up=10_000), await world.holder(top_up=10_000)
    await _rule(world, kind="velocity_merchant", merchant=m.id, window_s=3600, max_amount=1_000, currency="CNY",
                outcome="decline")
    assert (await _paid(world, m, h1, 600))["status"] == "succeeded"
    assert (await _paid(world, m, h2, 500, 402))["error"]["code"] == "risk_declined"
    assert (await _paid(world, m, h2, 400))["status"] == "succeeded"  # exactly the limit
    assert (await _paid(world, other, h2, 5_000))["status"] == "succeeded"  # another merchant: not counted
    assert await world.merchant_total(m) > 0


async def test_unusual_amount_requires_the_pin_then_passes_with_it(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": PIN})
    for amount in (100, 120, 90):
        assert (await _paid(world, m, h, amount))["status"] == "succeeded"
    await _rule(world, kind="amount_unusual", currency="CNY", multiplier_pct=500, baseline="median", history_min=3,
                outcome="require_pin")
    assert (await _paid(world, m, h, 500))["status"] == "succeeded"  # 5 x 100 is not above
    p = await world.payment(m, 2_000)
    asked = await _pay(world, h, p["id"], 402)
    assert (asked["error"]["code"], asked["error"]["param"]) == ("pin_required", "pin")
    assert (await _pay(world, h, p["id"], 402, pin="000000"))["error"]["code"] == "incorrect_pin"
    paid = await _pay(world, h, p["id"], pin=PIN)
    assert paid["status"] == "succeeded"
    decisions = await _decisions(world, f"&wallet={h.id}")
    outcomes = [(d["outcome"], d["passed"]) for d in decisions]
    assert ("require_pin", []) in outcomes and ("allow", ["pin"]) in outcomes
    asked_row = next(d for d in decisions if d["outcome"] == "require_pin")
    assert asked_row["id"] == asked["error"]["decision"]
    assert asked_row["reasons"][0]["detail"]["usual"] == 100
    assert await world.available(h) == 100_000 - 310 - 500 - 2_000


async def test_new_device_requires_a_code_then_passes_with_it_once(world: World, clean_db: str) -> None:
    m = await world.merchant()
    device = f"new-{uuid.uuid4().hex[:8]}"
    h = await world.holder(top_up=100_000, device_id=device)
    await _rule(world, kind="new_device", currency="CNY", device_age_s=86_400, min_amount=5_000,
                outcome="require_otp")
    assert (await _paid(world, m, h, 4_999))["status"] == "succeeded"  # below the amount
    p = await world.payment(m, 6_000)
    asked = await _pay(world, h, p["id"], 402)
    error = asked["error"]
    assert (error["code"], error["param"]) == ("otp_required", "otp") and error["challenge"].startswith("chl_")
    assert (await _pay(world, h, p["id"], 402))["error"]["code"] == "otp_required"  # not verified yet: asked again
    code = await sms_gateway().code(h.phone, error["challenge"])
    wrong = "0" * len(code) if code != "0" * len(code) else "1" * len(code)
    bad = await world.call("POST", f"/v1/wallet/risk_challenges/{error['challenge']}/verify", 403,
                           headers=h.headers, json={"code": wrong})
    assert bad["error"]["code"] == "incorrect_code"
    # Another holder cannot answer it; the sign-in's verification does not take a payment's code.
    stranger = await world.holder()
    await world.call("POST", f"/v1/wallet/risk_challenges/{error['challenge']}/verify", 404,
                     headers=stranger.headers, json={"code": code})
    signed = await world.client.post(f"/v1/wallet/challenges/{error['challenge']}/verify", json={"code": code})
    assert signed.status in (404, 409) and "token" not in await signed.json()
    ok = await world.call("POST", f"/v1/wallet/risk_challenges/{error['challenge']}/verify", 200,
                          headers=h.headers, json={"code": code})
    assert ok["status"] == "verified"
    assert (await _pay(world, h, p["id"]))["status"] == "succeeded"
    # The code opened that payment once: the next large one asks again.
    again = await _paid(world, m, h, 6_000, 402)
    assert again["error"]["code"] == "otp_required" and again["error"]["challenge"] != error["challenge"]
    # A device known for longer is not new.
    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute("UPDATE wallet_devices SET created_at = now() - interval '2 days' WHERE device_id = $1",
                           device)
    finally:
        await conn.close()
    world.client.app[SERVICES].risk_rules.sightings.clear()  # history moved back: forget what was read
    assert (await _paid(world, m, h, 6_000))["status"] == "succeeded"
    allowed = [d for d in await _decisions(world, f"&wallet={h.id}&outcome=allow") if d["passed"] == ["otp"]]
    assert len(allowed) == 1


async def test_decline_is_recorded_once_and_alerts_the_holder_and_operators(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    await _rule(world, kind="blocked_wallet", wallet=h.id)
    p = await world.payment(m, 700)
    key = uuid.uuid4().hex
    for _ in range(2):  # the retry replays the stored refusal: one decision, one alert
        refused = await world.pay(h, p["id"], 402, key=key)
        assert refused["error"]["code"] == "risk_declined"
    decisions = await _decisions(world)
    assert len(decisions) == 1
    d = decisions[0]
    assert (d["outcome"], d["wallet"], d["payment"], d["amount"], d["currency"]) == (
        "decline", h.id, p["id"], 700, "CNY")
    assert d["reasons"][0]["kind"] == "blocked_wallet" and d["reasons"][0]["rule"].startswith("rsk_")
    alerts = await world.call("GET", "/v1/operator/risk_alerts", headers=world.ops)
    assert [a["id"] for a in alerts["data"]] == [d["id"]]
    notes = await world.call("GET", "/v1/wallet/notifications", headers=h.headers)
    risk_notes = [n for n in notes["data"] if n["kind"] == "risk.alert"]
    assert len(risk_notes) == 1 and risk_notes[0]["data"]["decision"] == d["id"]
    assert "reasons" not in risk_notes[0]["data"]  # the holder is not told which rule
    events = await world.call("GET", "/v1/operator/events?limit=100", headers=world.ops)
    assert [e["type"] for e in events["data"]].count("risk.alert") == 1
    # No risk alert for an allowed payment; the lists are cursor paginated and filtered.
    other = await world.holder(top_up=10_000)
    assert (await world.pay(other, (await world.payment(m, 100))["id"]))["status"] == "succeeded"
    assert (await world.pay(h, (await world.payment(m, 100))["id"], 402))["error"]["code"] == "risk_declined"
    first = await world.call("GET", "/v1/operator/risk_alerts?limit=1", headers=world.ops)
    assert first["has_more"] is True
    rest = await world.call("GET", f"/v1/operator/risk_alerts?limit=1&starting_after={first['data'][0]['id']}",
                            headers=world.ops)
    assert rest["data"][0]["id"] == d["id"] and rest["has_more"] is False
    assert await _decisions(world, f"&wallet={other.id}") == []
    bad = await world.call("GET", "/v1/operator/risk_decisions?wallet=nope", 400, headers=world.ops)
    assert bad["error"]["code"] == "invalid_wallet"
    await world.call("GET", "/v1/operator/risk_decisions", 401)


async def test_rule_validation_errors_are_clear(world: World) -> None:
    cases = [
        ({"kind": "blocked_device"}, "invalid_device"),
        ({"kind": "velocity_device", "max_count": 2}, "invalid_window"),
        ({"kind": "velocity_merchant", "window_s": 60, "max_count": 1, "merchant": "mer_x"}, "invalid_merchant"),
        ({"kind": "amount_unusual", "currency": "CNY", "multiplier_pct": 100, "history_min": 3}, "invalid_multiplier"),
        ({"kind": "amount_unusual", "currency": "CNY", "multiplier_pct": 300, "history_min": 51},
         "invalid_history_min"),
        ({"kind": "amount_unusual", "multiplier_pct": 300, "history_min": 3}, "invalid_currency"),
        ({"kind": "new_device", "currency": "CNY", "min_amount": 1}, "invalid_device_age"),
        ({"kind": "new_device", "currency": "CNY", "device_age_s": 60}, "invalid_min_amount"),
    ]
    for body, code in cases:
        assert (await _rule(world, 400, **body))["error"]["code"] == code, body
    refused = await _rule(world, 400, kind="blocked_device", device_id="x", outcome="allow")
    assert (refused["error"]["code"], refused["error"]["param"]) == ("invalid_parameter", "outcome")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def redis_down_world(clean_db: str) -> AsyncIterator[World]:
    settings = make_settings(redis={"url": f"redis://127.0.0.1:{_closed_port()}/15", "timeout_s": 0.2})
    async with serving(clean_db, settings) as client:
        yield await World.create(client)


async def test_redis_down_velocity_is_enforced_from_postgres(redis_down_world: World) -> None:
    world = redis_down_world
    m = await world.merchant()
    device = f"dev-{uuid.uuid4().hex[:8]}"
    a = await world.holder(top_up=10_000, device_id=device)
    b = await world.holder(top_up=10_000, device_id=device)
    await _rule(world, kind="velocity_device", window_s=3600, max_count=2)
    await _rule(world, kind="velocity_merchant", merchant=m.id, window_s=3600, max_count=3)
    assert (await _paid(world, m, a, 100))["status"] == "succeeded"
    assert (await _paid(world, m, b, 100))["status"] == "succeeded"
    assert (await _paid(world, m, b, 100, 402))["error"]["code"] == "risk_declined"  # the device's third
    c = await world.holder(top_up=10_000, device_id=f"dev-{uuid.uuid4().hex[:8]}")
    assert (await _paid(world, m, c, 100))["status"] == "succeeded"  # the merchant's third
    refused = await _paid(world, m, c, 100, 402)  # the merchant's fourth
    assert refused["error"]["code"] == "risk_declined"
    kinds = [r["kind"] for d in await _decisions(world, "&outcome=decline") for r in d["reasons"]]
    assert sorted(kinds) == ["velocity_device", "velocity_merchant"]
    assert await world.available(b) == 9_900 and await world.available(c) == 9_900


async def _merchant_race(world: World, limit: int, racers: int) -> list[int]:
    m = await world.merchant()
    holders = [await world.holder(top_up=1_000) for _ in range(racers)]
    await _rule(world, kind="velocity_merchant", merchant=m.id, window_s=3600, max_count=limit)
    ids = [(await world.payment(m, 100))["id"] for _ in holders]

    async def attempt(h: Holder, pid: str) -> int:
        resp = await world.client.post(f"/v1/wallet/payments/{pid}/pay", headers=h.headers, json={})
        return resp.status

    return sorted(await asyncio.gather(*(attempt(h, pid) for h, pid in zip(holders, ids, strict=True))))


async def test_merchant_velocity_holds_under_concurrency_in_redis(world: World) -> None:
    assert await _merchant_race(world, 3, 8) == [200] * 3 + [402] * 5


async def test_merchant_velocity_holds_under_concurrency_without_redis(redis_down_world: World) -> None:
    assert await _merchant_race(redis_down_world, 3, 8) == [200] * 3 + [402] * 5


async def test_a_payment_no_rule_concerns_keeps_the_one_statement_path(world: World,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    m = await world.merchant()
    blocked, free = await world.holder(top_up=10_000), await world.holder(top_up=10_000)
    await _rule(world, kind="blocked_wallet", wallet=blocked.id)
    general: list[str] = []
    authorize = payment_cases.authorize_locked

    async def spy_authorize(*args: Any, **kwargs: Any) -> Any:
        general.append(kwargs["channel"])
        return await authorize(*args, **kwargs)

    monkeypatch.setattr(payment_cases, "authorize_locked", spy_authorize)
    assert (await _paid(world, m, free, 100))["status"] == "succeeded"
    assert general == []  # another holder's block: decided from memory, one statement
    assert (await _paid(world, m, blocked, 100, 402))["error"]["code"] == "risk_declined"
    assert general == ["wallet"]


async def test_the_invariants_catch_a_decision_without_its_holder_or_payment(world: World, clean_db: str) -> None:
    """risk_decisions has no foreign key to wallet_holders (migration 0032): the checker keeps the guarantee."""
    m, other = await world.merchant(), await world.merchant()
    h = await world.holder(top_up=10_000)
    await _rule(world, kind="velocity_wallet", window_s=3600, max_count=100)
    pid = (await world.payment(m, 100))["id"]
    assert (await _pay(world, h, pid))["status"] == "succeeded"
    payment_id = decode(Kind.PAYMENT, pid)
    conn = await asyncpg.connect(clean_db)
    try:
        decision = await conn.fetchrow("SELECT id, holder_id, merchant_id FROM risk_decisions WHERE payment_id = $1"
                                       " AND outcome = 'allow'", payment_id)
        assert decision is not None
        for broken, mended, args in (
                ("UPDATE risk_decisions SET holder_id = $2 WHERE id = $1",
                 "UPDATE risk_decisions SET holder_id = $2 WHERE id = $1", (uuid.uuid4(), decision["holder_id"])),
                ("UPDATE risk_decisions SET merchant_id = $2 WHERE id = $1",
                 "UPDATE risk_decisions SET merchant_id = $2 WHERE id = $1",
                 (decode(Kind.MERCHANT, other.id), decision["merchant_id"])),
                ("UPDATE risk_decisions SET payment_id = $2 WHERE id = $1",
                 "UPDATE risk_decisions SET payment_id = $2 WHERE id = $1", (uuid.uuid4(), payment_id))):
            await conn.execute(broken, decision["id"], args[0])
            found = {name for name, rows in (await invariants.check(conn)).items() if rows}
            assert found == {"allow_decision_differs_from_its_payment"}, found
            await conn.execute(mended, decision["id"], args[1])
        assert not any(rows for rows in (await invariants.check(conn)).values())
    finally:
        await conn.close()
