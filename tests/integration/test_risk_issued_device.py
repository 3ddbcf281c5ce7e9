"""The device of a pay-code or tap payment, in the risk rules, over real HTTP with real PostgreSQL and Redis:
the device the code or the tap token was issued to (the holder's phone, never the merchant's terminal) is the
payment's, so a blocklisted phone is refused by pay-code and by tap, a phone seen before is not new, velocity
per device counts a phone's QR, pay-code and tap payments together (in Redis, and in PostgreSQL while Redis is
down), and the recorded decision names the phone. The fixtures prove the ledger invariants after each test."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.api.routing import SERVICES
from hardware.nfc.card import WalletCard
from tests.integration.test_devices_taps import _device, _pay_tap, _phone, _tap
from tests.integration.test_qr_paycode import _device_holder, _qr, _scan_pay
from tests.integration.test_risk_at_once import _window_size
from tests.integration.test_risk_decisions import redis_down_world  # noqa: F401
from tests.integration.test_risk_pay_code import _broken, _charge, _decisions, _fetch, _pay_code, _rule
from tests.integration.world import Holder, Merchant, World

CHANNELS = ("pay_code", "tap")


@dataclass(frozen=True, slots=True)
class Phone:
    """A holder signed in on its phone (``device``), with a tap token on it, and a merchant's counter (an
    enrolled POS device) that takes the phone's pay-codes and taps."""

    world: World
    m: Merchant
    h: Holder
    device: str
    card: WalletCard
    pos_token: str

    async def pay(self, channel: str, amount: int, expect: int = 201) -> Any:
        if channel == "pay_code":
            return await _charge(self.world, self.m, await _pay_code(self.world, self.h), amount, expect)
        return await _pay_tap(self.world, self.pos_token, _tap(self.card, amount), amount, expect)


async def _phone_at_counter(world: World, top_up: int = 10_000) -> Phone:
    m = await world.merchant(fee_bps=0)
    device = f"phone-{uuid.uuid4().hex[:8]}"
    h = await _device_holder(world, top_up, device)
    card = await _phone(world, h, device)  # signed in again on the same phone: its tap token is bound to it
    pos, _ = await _device(world, m)
    return Phone(world, m, h, device, card, pos["access_token"])


@pytest.mark.parametrize("channel", CHANNELS)
async def test_a_blocklisted_phone_is_refused(world: World, channel: str) -> None:
    p = await _phone_at_counter(world)
    other = await _phone_at_counter(world)
    await _rule(world, kind="blocked_device", device_id=p.device)
    refused = await p.pay(channel, 300, 402)
    assert refused["error"]["code"] == "risk_declined"
    [decision] = await _decisions(world, p.h)
    assert (decision["outcome"], decision["channel"], decision["device_id"]) == ("decline", channel, p.device)
    assert [r["kind"] for r in decision["reasons"]] == ["blocked_device"]
    assert (await other.pay(channel, 300))["status"] == "succeeded"  # another phone pays
    assert await world.available(p.h) == 10_000 and await world.available(other.h) == 9_700


@pytest.mark.parametrize("channel", CHANNELS)
async def test_a_phone_seen_before_is_not_new(world: World, clean_db: str, channel: str) -> None:
    p = await _phone_at_counter(world)
    await _rule(world, kind="new_device", currency="CNY", device_age_s=86_400, min_amount=1_000, outcome="decline")
    assert (await p.pay(channel, 999))["status"] == "succeeded"  # below the amount
    young = await p.pay(channel, 2_000, 402)  # first seen minutes ago: new
    assert young["error"]["code"] == "risk_declined"
    [decision] = await _decisions(world, p.h)
    assert (decision["channel"], decision["device_id"], decision["reasons"][0]["kind"]) == (
        channel, p.device, "new_device")
    await _fetch(clean_db, "UPDATE wallet_devices SET created_at = now() - interval '2 days' WHERE device_id = $1",
                 p.device)
    world.client.app[SERVICES].risk_rules.sightings.clear()  # history moved back: forget what was read
    assert (await p.pay(channel, 2_000))["status"] == "succeeded"
    assert await world.available(p.h) == 10_000 - 999 - 2_000


async def _velocity_across_channels(world: World) -> Phone:
    """Three payments of one phone, by QR, pay-code and tap, fill its window of three: a fourth by any of
    them is refused; every decision names the phone."""
    p = await _phone_at_counter(world)
    await _rule(world, kind="velocity_device", window_s=3600, max_count=3)
    _, code = await _qr(world, p.m, 100)
    assert (await _scan_pay(world, p.h, code["payload"]))["status"] == "succeeded"
    for channel in CHANNELS:
        assert (await p.pay(channel, 100))["status"] == "succeeded"
    _, code = await _qr(world, p.m, 100)
    assert (await _scan_pay(world, p.h, code["payload"], 402))["error"]["code"] == "risk_declined"
    for channel in CHANNELS:
        assert (await p.pay(channel, 100, 402))["error"]["code"] == "risk_declined"
    decisions = await _decisions(world, p.h)
    assert sorted((d["outcome"], d["channel"]) for d in decisions) == [
        ("allow", "pay_code"), ("allow", "qr"), ("allow", "tap"),
        ("decline", "pay_code"), ("decline", "qr"), ("decline", "tap")]
    assert {d["device_id"] for d in decisions} == {p.device}
    declined = [d for d in decisions if d["outcome"] == "decline"]
    assert all([r["kind"] for r in d["reasons"]] == ["velocity_device"] for d in declined)
    assert await world.available(p.h) == 10_000 - 300
    return p


async def test_velocity_per_device_counts_qr_pay_code_and_tap_together_in_redis(world: World,
                                                                                 clean_db: str) -> None:
    p = await _velocity_across_channels(world)
    [rule] = (await world.call("GET", "/v1/operator/risk_rules", headers=world.ops))["data"]
    assert await _window_size(rule, p.device) == 3  # the refused ones given back

    # The invariant can fail: a pay-code payment's decision naming another device than its code's is named.
    moved = "UPDATE risk_decisions SET device_id = $1 WHERE channel = 'pay_code' AND outcome = 'allow'"
    await _fetch(clean_db, moved, "terminal-1")
    assert "pay_code_decision_names_another_device" in await _broken(clean_db)
    await _fetch(clean_db, moved, p.device)


async def test_velocity_per_device_counts_qr_pay_code_and_tap_together_without_redis(
        redis_down_world: World) -> None:  # noqa: F811
    await _velocity_across_channels(redis_down_world)
