"""Adversarial review of the risk velocity windows (Redis and the PostgreSQL fallback): a payment the rules
allow is counted in every window of its velocity rules, the same whether Redis or PostgreSQL counts it."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.test_risk_decisions import PIN, _paid, _pay, _rule, redis_down_world  # noqa: F401
from tests.integration.test_qr_paycode import _device_holder
from tests.integration.test_risk_pay_code import _charge, _pay_code
from tests.integration.test_risk_pay_code import _rule as _code_rule
from tests.integration.world import Holder, World

pytestmark = pytest.mark.asyncio


async def _step_up_then_decline(world: World) -> None:
    """A velocity rule asking for the PIN past 1 payment, another declining past 3: every payment allowed
    (with the PIN past the first) counts towards the decline; the 4th is declined."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": PIN})
    await _rule(world, kind="velocity_wallet", window_s=3600, max_count=1, outcome="require_pin")
    await _rule(world, kind="velocity_wallet", window_s=3600, max_count=3, outcome="decline")
    assert (await _paid(world, m, h, 100))["status"] == "succeeded"
    pid = (await world.payment(m, 100))["id"]
    assert (await _pay(world, h, pid, 402))["error"]["code"] == "pin_required"
    assert (await _pay(world, h, pid, pin=PIN))["status"] == "succeeded"
    assert (await _paid(world, m, h, 100, pin=PIN))["status"] == "succeeded"
    fourth = await _paid(world, m, h, 100, 402, pin=PIN)
    assert fourth["error"]["code"] == "risk_declined"
    assert await world.available(h) == 9_700


async def test_a_payment_past_a_step_up_limit_still_counts_towards_a_decline_in_redis(world: World) -> None:
    await _step_up_then_decline(world)


async def test_a_payment_past_a_step_up_limit_still_counts_towards_a_decline_without_redis(
        redis_down_world: World) -> None:  # noqa: F811
    await _step_up_then_decline(redis_down_world)


async def _held_charges_count(world: World) -> None:
    """Pay-code charges held for the holder's PIN are counted in the velocity windows (docs/risk.md: "a
    payment is counted when it is authorised, or held for its step-ups"): past max_count=2, the third is
    declined, whether Redis or PostgreSQL counts."""
    m = await world.merchant(fee_bps=0)
    h = await _device_holder(world, 10_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": PIN})
    await _code_rule(world, kind="blocked_wallet", wallet=h.id, outcome="require_pin")
    await _code_rule(world, kind="velocity_wallet", window_s=3600, max_count=2)
    for _ in range(2):
        assert (await _charge(world, m, await _pay_code(world, h), 300))["status"] == "requires_action"
    third = await _charge(world, m, await _pay_code(world, h), 300, 402)
    assert third["error"]["code"] == "risk_declined"
    assert await world.available(h) == 9_400


async def test_held_pay_code_charges_count_towards_velocity_in_redis(world: World) -> None:
    await _held_charges_count(world)


async def test_held_pay_code_charges_count_towards_velocity_without_redis(
        redis_down_world: World) -> None:  # noqa: F811
    await _held_charges_count(redis_down_world)


async def test_a_revoked_phone_s_pay_code_and_tap_token_stop_working(world: World) -> None:
    """The holder revokes its phone from another device (lost or stolen: "its tokens stop working at once"):
    a pay-code the phone showed and the phone's tap token pay no more."""
    from tests.integration.test_devices_taps import _pay_tap, _tap
    from tests.integration.test_risk_issued_device import _phone_at_counter
    from tests.integration.world import auth

    p = await _phone_at_counter(world)
    code = await _pay_code(world, p.h)  # on the phone, before it is lost
    token_b = await world.sign_in(p.h.phone, device_id=f"phone-b-{uuid.uuid4().hex[:6]}")
    devices = (await world.call("GET", "/v1/wallet/devices", headers=auth(token_b)))["data"]
    lost = next(d for d in devices if d["device_id"] == p.device)
    assert (await world.call("DELETE", f"/v1/wallet/devices/{lost['id']}", headers=auth(token_b)))["revoked"] is True
    resp = await world.client.post("/v1/pay_code_charges", headers={**p.m.headers, "Idempotency-Key": uuid.uuid4().hex},
                                   json={"pay_code": code, "amount": 300, "currency": "CNY", "store": p.m.store})
    assert resp.status in (402, 404, 409), (resp.status, await resp.json())
    tapped = await _pay_tap(world, p.pos_token, _tap(p.card, 300), 300, 402)
    assert tapped["error"]["code"] == "tap_token_revoked"
    assert await world.available(Holder(p.h.id, p.h.phone, token_b, p.h.bank_account)) == 10_000


async def test_count_only_windows_edge_cases_hold() -> None:
    """The windows script (one JSON argument): a count-only window's member present before survives a refusal
    by another window; a window named twice counts the payment once and is given back once; a batch sharing
    a window stops exactly at its limit (a payment repeated in it counted once); amounts up to 2**53 exact;
    a refusing window's payment is in none; a non-refusing window answers its counts and is charged."""
    from gateway.accel import Accelerator, Windows
    from gateway.domain.risk import Window
    from gateway.settings import RedisSettings
    from tests.conftest import TEST_REDIS_URL

    accel = Accelerator(RedisSettings(url=TEST_REDIS_URL, timeout_s=5.0))
    try:
        def key() -> str:
            return f"risk:w:test:{uuid.uuid4().hex}"

        count, amounts, p = key(), key(), uuid.uuid4().hex
        assert await accel.windows_take([Window(count, 60, 5, None, 100)], 1_000.0, p) == Windows(True, ((0, 0),))
        refused = await accel.windows_take([Window(count, 60, 5, None, 100), Window(amounts, 60, None, 50, 100)],
                                           1_001.0, p)
        assert refused == Windows(False, ((0, 0), (0, 0)))
        assert await accel.client.zrange(count, 0, -1) == [f"{p}:100".encode()]  # still there
        twice, other = key(), key()
        assert (await accel.windows_take([Window(twice, 60, 1, None, 7)] * 2, 1_000.0, "a")).taken
        assert not (await accel.windows_take([Window(twice, 60, 1, None, 7)] * 2, 1_000.0, "b")).taken
        assert not (await accel.windows_take([Window(other, 60, 1, None, 7)] * 2 + [Window(amounts, 60, None, 50, 100)],
                                             1_000.0, "c")).taken
        assert await accel.client.zcard(twice) == 1 and not await accel.client.exists(other)
        shared = key()
        batch = [([Window(shared, 60, 3, None, 1)], 1_000.0 + n / 1000, f"q{n}") for n in range(6)]
        found = await accel.windows_take_all([*batch, ([Window(shared, 60, 3, None, 1)], 1_000.01, "q0")])
        assert found is not None and [f.taken for f in found] == [True] * 3 + [False] * 3 + [True]
        big, large = key(), 2**52
        for n in range(2):
            assert await accel.windows_take([Window(big, 60, None, 2**53, large)], 1_000.5, f"b{n}") == Windows(
                True, ((n, n * large),))
        assert int(await accel.client.get(big + ":sum")) == 2**53
        soft, hard = key(), key()
        assert (await accel.windows_take([Window(soft, 60, 1, None, 1), Window(hard, 60, 2, None, 1)], 1.0, "s1")).taken
        second = await accel.windows_take([Window(soft, 60, 1, None, 1, refuses=False), Window(hard, 60, 2, None, 1)],
                                          1.0, "s2")
        assert second == Windows(True, ((1, 0), (1, 0)))  # over the soft window's count: it says so, charged
        third = await accel.windows_take([Window(soft, 60, 1, None, 1, refuses=False), Window(hard, 60, 2, None, 1)],
                                         1.0, "s3")
        assert not third.taken and await accel.client.zcard(soft) == 2 and await accel.client.zcard(hard) == 2
    finally:
        await accel.close()
