"""A block stops money leaving the wallet, over real HTTP with real PostgreSQL and Redis: a withdrawal or a
conversion by a blocked wallet, or from a blocked device (the session's), is declined ``402 risk_declined``
with nothing moved; the refusal is a risk decision (channel ``withdrawal`` / ``conversion``, no payment, no
merchant) with the holder's ``risk.alert`` notification and the operator-level ``risk.alert`` event, recorded
once per Idempotency-Key; money in (a top-up, a refund) still arrives; disabling the rule lifts the block.
The ledger invariants are proven after each step here and by the fixtures after each test."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from gateway.domain.ids import Kind, decode
from gateway.store import invariants
from tests.integration.test_risk_pay_code import _alerts, _decisions
from tests.integration.world import Holder, World, auth


async def _rule(world: World, **body: Any) -> Any:
    return await world.call("POST", "/v1/operator/risk_rules", 201, headers=world.ops, json=body)


async def _disable(world: World, rule: Any) -> None:
    disabled = await world.call("POST", f"/v1/operator/risk_rules/{rule['id']}/disable", headers=world.ops, json={})
    assert disabled["status"] == "disabled"


async def _post(world: World, path: str, headers: dict[str, str], body: Any, key: str | None = None
                ) -> tuple[int, Any, bool]:
    resp = await world.client.post(path, headers={**headers, "Idempotency-Key": key or uuid.uuid4().hex}, json=body)
    return resp.status, await resp.json(), resp.headers.get("Idempotent-Replayed") == "true"


async def _withdraw(world: World, h: Holder, amount: int, headers: dict[str, str] | None = None,
                    key: str | None = None, currency: str = "CNY") -> tuple[int, Any, bool]:
    return await _post(world, "/v1/wallet/withdrawals", headers or h.headers,
                       {"bank_account": h.bank_account, "amount": amount, "currency": currency}, key)


async def _convert(world: World, h: Holder, sell: int, key: str | None = None) -> tuple[int, Any, bool, Any]:
    quote = await world.call("POST", "/v1/wallet/fx_quotes", 201, headers=h.headers,
                             json={"from_currency": "CNY", "to_currency": "USD", "sell_amount": sell})
    status, body, replayed = await _post(world, "/v1/wallet/conversions", h.headers, {"quote": quote["id"]}, key)
    return status, body, replayed, quote


async def _usd_rate(world: World) -> None:
    await world.call("POST", "/v1/operator/fx_rates", 201, headers=world.ops,
                     json={"base": "USD", "quote": "CNY", "rate": "7.1", "spread_bps": 0})


async def _balances(world: World, h: Holder) -> dict[str, int]:
    wallet = await world.call("GET", "/v1/wallet", headers=h.headers)
    return {b["currency"]: b["total"] for b in wallet["balances"] if b["total"]}


async def _risk_events(world: World) -> list[dict[str, Any]]:
    events = await world.call("GET", "/v1/operator/events?limit=100", headers=world.ops)
    return [e for e in events["data"] if e["type"] == "risk.alert"]


async def _wallet_events(world: World, h: Holder) -> list[str]:
    events = await world.call("GET", "/v1/operator/events?limit=100", headers=world.ops)
    return [e["type"] for e in events["data"] if e["type"] in ("wallet.withdrawal", "wallet.conversion")]


async def _sound(world: World) -> None:
    report = await world.call("GET", "/v1/operator/ledger/invariants", headers=world.ops)
    assert report["ok"], report


def _declined(status: int, body: Any, what: str) -> None:
    assert status == 402, body
    error = body["error"]
    assert error["code"] == "risk_declined" and error["decision"].startswith("rkd_"), error
    assert what in error["message"] and "rule" not in error["message"]


async def test_a_blocked_wallet_cannot_withdraw_and_its_refusal_is_recorded_and_alerted(world: World) -> None:
    h = await world.holder(top_up=10_000)
    rule = await _rule(world, kind="blocked_wallet", wallet=h.id)
    status, body, _ = await _withdraw(world, h, 4_000)
    _declined(status, body, "withdrawal")
    assert await _balances(world, h) == {"CNY": 10_000}
    history = await world.call("GET", "/v1/wallet/transactions", headers=h.headers)
    assert [t["kind"] for t in history["data"]] == ["top_up"]
    assert await _wallet_events(world, h) == []
    [d] = await _decisions(world, h)
    assert d["id"] == body["error"]["decision"]
    assert (d["outcome"], d["channel"], d["amount"], d["currency"], d["payment"], d["merchant"], d["wallet"]) == (
        "decline", "withdrawal", 4_000, "CNY", None, None, h.id)
    assert [(r["rule"], r["kind"]) for r in d["reasons"]] == [(rule["id"], "blocked_wallet")]
    alerts = await world.call("GET", "/v1/operator/risk_alerts", headers=world.ops)
    assert [a["id"] for a in alerts["data"]] == [d["id"]]
    [note] = await _alerts(world, h)
    assert note["data"]["decision"] == d["id"] and note["data"]["channel"] == "withdrawal"
    assert (note["data"]["amount"], note["data"]["payment"], note["data"]["outcome"]) == (4_000, None, "decline")
    assert "reasons" not in note["data"]  # the holder is not told which rule
    [event] = await _risk_events(world)
    assert event["data"]["object"]["id"] == d["id"] and event["data"]["object"]["channel"] == "withdrawal"
    await _sound(world)


async def test_a_blocked_device_cannot_withdraw_the_same_holder_on_another_device_can(world: World) -> None:
    stolen, own = f"stolen-{uuid.uuid4().hex[:8]}", f"phone-{uuid.uuid4().hex[:8]}"
    h = await world.holder(top_up=10_000, device_id=stolen)
    on_own = auth(await world.sign_in(h.phone, device_id=own))
    await _rule(world, kind="blocked_device", device_id=stolen)
    status, body, _ = await _withdraw(world, h, 1_000)
    _declined(status, body, "withdrawal")
    assert await _balances(world, h) == {"CNY": 10_000}
    [d] = await _decisions(world, h)
    assert (d["channel"], d["device_id"], d["reasons"][0]["kind"]) == ("withdrawal", stolen, "blocked_device")
    await _sound(world)
    status, done, _ = await _withdraw(world, h, 1_000, headers=on_own)
    assert status == 201, done
    assert done["balance_after"]["total"] == 9_000 and await _balances(world, h) == {"CNY": 9_000}
    assert len(await _decisions(world, h)) == 1  # no rule concerned the withdrawal from the holder's own phone
    await _sound(world)


async def test_a_blocked_wallet_cannot_convert(world: World) -> None:
    await _usd_rate(world)
    h = await world.holder(top_up=100_000)
    await _rule(world, kind="blocked_wallet", wallet=h.id)
    status, body, _, _ = await _convert(world, h, 10_000)
    _declined(status, body, "conversion")
    wallet = await world.call("GET", "/v1/wallet", headers=h.headers)
    assert [(b["currency"], b["total"]) for b in wallet["balances"]] == [("CNY", 100_000)]  # no USD wallet opened
    assert await _wallet_events(world, h) == []
    [d] = await _decisions(world, h)
    assert (d["outcome"], d["channel"], d["amount"], d["currency"], d["payment"], d["merchant"]) == (
        "decline", "conversion", 10_000, "CNY", None, None)
    [note] = await _alerts(world, h)
    assert note["data"]["channel"] == "conversion"
    await _sound(world)


async def test_a_blocked_device_cannot_convert(world: World) -> None:
    await _usd_rate(world)
    stolen = f"stolen-{uuid.uuid4().hex[:8]}"
    h = await world.holder(top_up=100_000, device_id=stolen)
    await _rule(world, kind="blocked_device", device_id=stolen)
    status, body, _, _ = await _convert(world, h, 10_000)
    _declined(status, body, "conversion")
    assert await _balances(world, h) == {"CNY": 100_000}
    await _sound(world)


async def test_money_in_still_arrives_while_blocked(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    paid = await world.pay(h, (await world.payment(m, 3_000))["id"])
    assert paid["status"] == "succeeded"
    await _rule(world, kind="blocked_wallet", wallet=h.id)
    await world.top_up(h, 5_000)
    refund = await world.call("POST", f"/v1/payments/{paid['id']}/refunds", 201, headers=m.headers,
                              json={"amount": 1_000})
    assert refund["amount"] == 1_000
    assert await _balances(world, h) == {"CNY": 13_000}
    assert await _decisions(world, h) == []  # money in is not checked: nothing recorded
    _declined(*(await _withdraw(world, h, 100))[:2], "withdrawal")
    await _sound(world)


async def test_disabling_the_rule_lets_the_money_out(world: World) -> None:
    await _usd_rate(world)
    h = await world.holder(top_up=100_000)
    rule = await _rule(world, kind="blocked_wallet", wallet=h.id)
    _declined(*(await _withdraw(world, h, 2_000))[:2], "withdrawal")
    status, body, _, quote = await _convert(world, h, 10_000)
    _declined(status, body, "conversion")
    await _disable(world, rule)
    status, done, _ = await _withdraw(world, h, 2_000)
    assert status == 201, done
    converted = await _post(world, "/v1/wallet/conversions", h.headers, {"quote": quote["id"]})  # left unused
    assert converted[0] == 201, converted
    assert (await _balances(world, h))["CNY"] == 100_000 - 2_000 - 10_000
    assert sorted(await _wallet_events(world, h)) == ["wallet.conversion", "wallet.withdrawal"]
    assert [d["channel"] for d in await _decisions(world, h)] == ["conversion", "withdrawal"]
    await _sound(world)


async def test_a_retried_refusal_is_the_same_answer_and_one_decision(world: World) -> None:
    await _usd_rate(world)
    h = await world.holder(top_up=100_000)
    await _rule(world, kind="blocked_wallet", wallet=h.id)
    key = uuid.uuid4().hex
    first = await _withdraw(world, h, 3_000, key=key)
    again = await _withdraw(world, h, 3_000, key=key)
    _declined(*first[:2], "withdrawal")
    assert (again[0], again[1]["error"], again[2]) == (402, first[1]["error"], True)
    key = uuid.uuid4().hex
    status, body, _, quote = await _convert(world, h, 10_000, key=key)
    _declined(status, body, "conversion")
    retried = await _post(world, "/v1/wallet/conversions", h.headers, {"quote": quote["id"]}, key)
    assert (retried[0], retried[1]["error"], retried[2]) == (402, body["error"], True)
    decisions = await _decisions(world, h)
    assert sorted(d["channel"] for d in decisions) == ["conversion", "withdrawal"]
    assert len(await _alerts(world, h)) == 2 and len(await _risk_events(world)) == 2
    # Without a key, each request is its own attempt: one decision each.
    resp = await world.client.post("/v1/wallet/withdrawals", headers=h.headers,
                                   json={"bank_account": h.bank_account, "amount": 3_000, "currency": "CNY"})
    assert resp.status == 402 and (await resp.json())["error"]["code"] == "risk_declined"
    assert len(await _decisions(world, h)) == 3
    assert await _balances(world, h) == {"CNY": 100_000}
    await _sound(world)


async def test_another_holder_is_unaffected(world: World) -> None:
    await _usd_rate(world)
    device = f"shared-{uuid.uuid4().hex[:8]}"
    blocked = await world.holder(top_up=100_000)
    other = await world.holder(top_up=100_000, device_id=device)
    await _rule(world, kind="blocked_wallet", wallet=blocked.id)
    await _rule(world, kind="blocked_device", device_id=f"stolen-{uuid.uuid4().hex[:8]}")
    status, done, _ = await _withdraw(world, other, 5_000)
    assert status == 201, done
    status, converted, _, _ = await _convert(world, other, 10_000)
    assert status == 201, converted
    assert (await _balances(world, other))["CNY"] == 100_000 - 5_000 - 10_000
    assert await _decisions(world, other) == [] and await _alerts(world, other) == []
    _declined(*(await _withdraw(world, blocked, 5_000))[:2], "withdrawal")
    await _sound(world)


async def test_a_block_asking_a_step_up_still_declines_money_out(world: World) -> None:
    """A withdrawal or a conversion asks no PIN or code: a block whose outcome is a step-up declines it."""
    h = await world.holder(top_up=10_000)
    await _rule(world, kind="blocked_wallet", wallet=h.id, outcome="require_pin")
    _declined(*(await _withdraw(world, h, 1_000))[:2], "withdrawal")
    [d] = await _decisions(world, h)
    assert (d["outcome"], d["reasons"][0]["outcome"]) == ("decline", "require_pin")
    assert await _balances(world, h) == {"CNY": 10_000}


async def test_other_kinds_of_rule_do_not_concern_money_out(world: World) -> None:
    """Velocity and amount rules count and judge payments: a withdrawal is none."""
    h = await world.holder(top_up=10_000)
    await _rule(world, kind="velocity_wallet", window_s=3600, max_count=1)
    await _rule(world, kind="new_device", currency="CNY", device_age_s=86_400, min_amount=1)
    for _ in range(2):
        status, done, _ = await _withdraw(world, h, 1_000)
        assert status == 201, done
    assert await _decisions(world, h) == []


async def test_a_money_out_decision_is_checked(world: World, clean_db: str) -> None:
    """Migration 0036: a money-out decision names no payment or merchant and is a decline (a CHECK); the
    invariant checker proves it was declined by a block that concerned it."""
    h, other = await world.holder(top_up=10_000), await world.holder()
    await _rule(world, kind="blocked_wallet", wallet=h.id)
    _declined(*(await _withdraw(world, h, 1_000))[:2], "withdrawal")
    [d] = await _decisions(world, h)
    decision_id = decode(Kind.RISK_DECISION, d["id"])
    conn = await asyncpg.connect(clean_db)
    try:
        for change in ("payment_id = gen_random_uuid()", "merchant_id = gen_random_uuid()", "outcome = 'allow'"):
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(f"UPDATE risk_decisions SET {change} WHERE id = $1", decision_id)
        with pytest.raises(asyncpg.CheckViolationError):  # a payment's decision names its payment
            await conn.execute("UPDATE risk_decisions SET channel = 'wallet' WHERE id = $1", decision_id)
        await conn.execute("UPDATE risk_decisions SET holder_id = $2 WHERE id = $1", decision_id,
                           decode(Kind.WALLET_HOLDER, other.id))
        found = {name for name, rows in (await invariants.check(conn)).items() if rows}
        assert found == {"money_out_decision_without_its_block"}, found
        await conn.execute("UPDATE risk_decisions SET holder_id = $2 WHERE id = $1", decision_id,
                           decode(Kind.WALLET_HOLDER, h.id))
        assert not any(rows for rows in (await invariants.check(conn)).values())
    finally:
        await conn.close()
