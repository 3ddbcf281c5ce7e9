"""Risk rules on the one-statement path (issue 13: risk runs on the hot path and stays cheap), over real
HTTP with real PostgreSQL and Redis. A payment every concerning rule allows is written by the batch
statement, whatever the rule's kind (the group-commit metrics say which path paid); a payment a rule might
refuse or step up takes the general path and gets its answer and its recorded decision; N concurrent
payments against a limit of K per wallet, device or merchant get exactly K allowed, the K by the batch; with
Redis down the general path counts in PostgreSQL, the batch's allow decisions included. The fixtures prove the
ledger invariants after each test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.accel import Accelerator
from gateway.api.routing import SERVICES
from gateway.domain.ids import Kind, decode
from gateway.services import payments as payment_cases
from gateway.services import risk as risk_cases
from gateway.store import payments as payment_store
from tests.conftest import TEST_REDIS_URL, make_settings
from tests.integration.conftest import serving
from tests.integration.test_risk_decisions import _decisions, _paid, _rule, redis_down_world  # noqa: F401
from tests.integration.world import Holder, Merchant, World, batched

pytestmark = pytest.mark.asyncio


async def _by_batch(world: World, m: Merchant, h: Holder, amount: int) -> dict[str, Any]:
    """Pay, proving the batch statement wrote it (one more item given, none refused)."""
    written, refused = batched()
    paid = await _paid(world, m, h, amount)
    assert paid["status"] == "succeeded"
    assert batched() == (written + 1, refused)
    return dict(paid)


async def _by_general_path(world: World, m: Merchant, h: Holder, amount: int, expect: int,
                           tried: bool = False) -> dict[str, Any]:
    """Pay, proving no batch wrote it: the rules sent it to the general path before any batch, or (``tried``)
    its batch refused it (a velocity window in Redis full)."""
    written, refused = batched()
    answer = await _paid(world, m, h, amount, expect)
    assert batched() == ((written + 1, refused + 1) if tried else (written, refused))
    return dict(answer)


async def _window_size(rule: dict[str, Any], scope: str) -> int:
    rid = decode(Kind.RISK_RULE, rule["id"])
    assert rid is not None
    r = aioredis.from_url(TEST_REDIS_URL)
    try:
        return int(await r.zcard(f"risk:w:{rid.hex}:{scope}"))
    finally:
        await r.aclose()


def _merchant_scope(m: Merchant) -> str:
    mid = decode(Kind.MERCHANT, m.id)
    assert mid is not None
    return mid.hex


async def test_velocity_per_device_and_merchant_allowing_is_paid_by_the_batch_and_recorded(world: World) -> None:
    m = await world.merchant()
    device = f"dev-{uuid.uuid4().hex[:8]}"
    a, b = await world.holder(top_up=10_000, device_id=device), await world.holder(top_up=10_000, device_id=device)
    per_device = await _rule(world, kind="velocity_device", window_s=3600, max_count=3)
    per_merchant = await _rule(world, kind="velocity_merchant", merchant=m.id, window_s=3600, max_amount=1_000,
                               currency="CNY")
    await _by_batch(world, m, a, 300)
    await _by_batch(world, m, b, 300)
    assert await _window_size(per_device, device) == 2 and await _window_size(per_merchant, _merchant_scope(m)) == 2
    # Over the merchant's amount: refused in Redis by its batch, declined and recorded by the general path.
    refused = await _by_general_path(world, m, a, 500, 402, tried=True)
    assert refused["error"]["code"] == "risk_declined"
    await _by_batch(world, m, a, 400)  # exactly the amount limit
    over_count = await _by_general_path(world, m, b, 1, 402, tried=True)  # the device's fourth, over the amount too
    assert over_count["error"]["code"] == "risk_declined"
    assert await _window_size(per_device, device) == 3 and await _window_size(per_merchant, _merchant_scope(m)) == 3
    # Each allowed payment has its allow decision (written by the batch), each refusal its decline.
    decisions = await _decisions(world)
    allowed = [d for d in decisions if d["outcome"] == "allow"]
    assert len(allowed) == 3 and all(d["reasons"] == [] and d["device_id"] == device for d in allowed)
    declined = sorted(r["kind"] for d in decisions if d["outcome"] == "decline" for r in d["reasons"])
    assert declined == ["velocity_device", "velocity_merchant", "velocity_merchant"]
    assert await world.available(a) == 9_300 and await world.available(b) == 9_700


async def test_amount_unusual_is_judged_from_the_head_read(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": "258036"})
    await _rule(world, kind="amount_unusual", currency="CNY", multiplier_pct=500, baseline="median", history_min=3,
                outcome="require_pin")
    for amount in (100, 120, 90):  # too short a history to judge: no match, paid by the batch
        await _by_batch(world, m, h, amount)
    await _by_batch(world, m, h, 500)  # 5 x the median (100) is not above
    asked = await _by_general_path(world, m, h, 2_000, 402)
    assert asked["error"]["code"] == "pin_required"
    decision = (await _decisions(world, f"&wallet={h.id}"))[0]
    assert (decision["outcome"], decision["reasons"][0]["detail"]["usual"]) == ("require_pin", 100)
    # Funds held on the wallet (an authorisation a capture may add to the usual amounts): the general path.
    held = await world.payment(m, 50, capture_method="manual")
    assert (await world.pay(h, held["id"]))["status"] == "requires_capture"
    assert (await _by_general_path(world, m, h, 100, 200))["status"] == "succeeded"
    await world.call("POST", f"/v1/payments/{held['id']}/capture", headers=m.headers, json={})
    await _by_batch(world, m, h, 100)
    assert await _decisions(world, "&outcome=allow") == []  # nothing matched, nothing counted: nothing recorded


async def test_a_capture_after_the_head_read_makes_the_statement_fall_back(world: World, clean_db: str) -> None:
    """The holder's usual amounts read with the head may be stale by the statement: any payment of the
    holder in the currency authorised since (it adds to the day's spend first) makes the item fall back."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    for _ in range(3):
        await _by_batch(world, m, h, 100)
    await _rule(world, kind="amount_unusual", currency="CNY", multiplier_pct=300, baseline="median", history_min=3)
    svc = world.client.app[SERVICES]
    created = await world.payment(m, 300)
    pid, holder_id = decode(Kind.PAYMENT, created["id"]), decode(Kind.WALLET_HOLDER, h.id)
    assert pid is not None and holder_id is not None
    async with svc.db.connection() as conn:
        head = await payment_store.payable(conn, pid, holder_id, risk_cases.holder_reads(svc, holder_id, None))
    assert head is not None and list(head["risk_usual"]) == [100, 100, 100]
    accounts = await payment_cases.payer_accounts(svc, holder_id, head["merchant_id"], head["currency"])
    at_once = payment_cases._paid_at_once(svc, head, holder_id, accounts, channel="wallet")
    assert at_once is not None  # 300 is not above 3 x 100
    await _by_batch(world, m, h, 1)  # captured since the read: the median may have moved
    written, refused = batched()
    assert await at_once.apply(None) is False
    assert batched() == (written + 1, refused + 1)
    paid = await world.pay(h, created["id"])  # decided afresh (median 100 still: allowed)
    assert paid["status"] == "succeeded"
    conn = await asyncpg.connect(clean_db)
    try:
        assert list(await conn.fetchval("SELECT amounts_minor FROM holder_amounts WHERE holder_id = $1",
                                        holder_id)) == [100, 100, 100, 1, 300]
    finally:
        await conn.close()


async def test_new_device_and_blocked_device_keep_the_batch_unless_they_match(world: World, clean_db: str) -> None:
    m = await world.merchant()
    device = f"new-{uuid.uuid4().hex[:8]}"
    h = await world.holder(top_up=100_000, device_id=device)
    await _rule(world, kind="new_device", currency="CNY", device_age_s=3_600, min_amount=5_000, outcome="require_otp")
    await _rule(world, kind="blocked_device", device_id=f"stolen-{uuid.uuid4().hex[:8]}")
    await _by_batch(world, m, h, 4_999)  # below the rule's amount; another device's block
    asked = await _by_general_path(world, m, h, 6_000, 402)  # a device first seen just now
    assert asked["error"]["code"] == "otp_required"
    assert [d["outcome"] for d in await _decisions(world, f"&wallet={h.id}")] == ["require_otp"]
    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute("UPDATE wallet_devices SET created_at = now() - interval '2 hours' WHERE device_id = $1",
                           device)
    finally:
        await conn.close()
    world.client.app[SERVICES].risk_rules.sightings.clear()  # history moved back: forget what was read
    await _by_batch(world, m, h, 6_000)
    await _rule(world, kind="blocked_device", device_id=device)
    refused = await _by_general_path(world, m, h, 100, 402)
    assert refused["error"]["code"] == "risk_declined"
    assert await world.available(h) == 100_000 - 4_999 - 6_000


async def test_a_device_sighting_is_read_once_and_its_age_grows_from_it(world: World) -> None:
    """The head read reads a device's first sighting once per process (``risk_cache.Sightings``); the
    device stays new while younger than the rule's age, then is old, with no read of it again."""
    m = await world.merchant()
    device = f"new-{uuid.uuid4().hex[:8]}"
    h = await world.holder(top_up=100_000, device_id=device)
    await _rule(world, kind="new_device", currency="CNY", device_age_s=3, min_amount=5_000, outcome="require_otp")
    svc = world.client.app[SERVICES]
    hid = decode(Kind.WALLET_HOLDER, h.id)
    assert hid is not None
    assert risk_cases.holder_reads(svc, hid, device) == payment_store.HolderReads(None, True, device)
    asked = await _by_general_path(world, m, h, 6_000, 402)  # first seen just now: new
    assert asked["error"]["code"] == "otp_required"
    assert risk_cases.holder_reads(svc, hid, device) is None  # known now: not read again
    assert risk_cases.holder_reads(svc, hid, "another-phone") == payment_store.HolderReads(None, True, "another-phone")
    await asyncio.sleep(3.1)
    await _by_batch(world, m, h, 6_000)  # the same sighting, older than the rule's age now
    assert await world.available(h) == 100_000 - 6_000


def _holder_scope(h: Holder) -> str:
    hid = decode(Kind.WALLET_HOLDER, h.id)
    assert hid is not None
    return hid.hex


async def _race(world: World, kind: str, limit: int, racers: int) -> tuple[list[int], int]:
    """``racers`` payments at once against a limit of ``limit`` per wallet (one holder), per device (one
    device, a holder each) or per merchant: their statuses, and how many a batch wrote."""
    m = await world.merchant()
    device = f"dev-{uuid.uuid4().hex[:8]}"
    if kind == "velocity_wallet":
        holders = [await world.holder(top_up=100 * racers, device_id=device)] * racers
    else:
        holders = [await world.holder(top_up=1_000, device_id=device) for _ in range(racers)]
    terms = {"merchant": m.id} if kind == "velocity_merchant" else {}
    rule = await _rule(world, kind=kind, window_s=3600, max_count=limit, **terms)
    ids = [(await world.payment(m, 100))["id"] for _ in holders]

    async def attempt(h: Holder, pid: str) -> int:
        resp = await world.client.post(f"/v1/wallet/payments/{pid}/pay", headers=h.headers, json={})
        return resp.status

    written, refused = batched()
    statuses = sorted(await asyncio.gather(*(attempt(h, pid) for h, pid in zip(holders, ids, strict=True))))
    applied = (batched()[0] - written) - (batched()[1] - refused)
    scope = {"velocity_device": device, "velocity_wallet": _holder_scope(holders[0])}.get(kind, _merchant_scope(m))
    assert await _window_size(rule, scope) == limit  # counted once each, the refused ones in none
    allowed = await _decisions(world, "&outcome=allow")
    assert len(allowed) == limit
    return statuses, applied


@pytest.mark.parametrize("kind", ["velocity_device", "velocity_merchant"])
async def test_velocity_holds_under_concurrency_on_the_one_statement_path(world: World, kind: str) -> None:
    statuses, applied = await _race(world, kind, 3, 10)
    assert statuses == [200] * 3 + [402] * 7
    assert applied == 3  # the three allowed were written by a batch


@pytest.fixture
async def serial_batches_world(clean_db: str) -> AsyncIterator[World]:
    async with serving(clean_db, make_settings(payments={"group_commit_in_flight_max": 1})) as client:
        yield await World.create(client)


async def test_wallet_velocity_holds_under_concurrency_on_the_one_statement_path(
        serial_batches_world: World) -> None:
    """One holder's racing payments. With two batches in flight one holder's items may meet each other's
    row locks and fall back, rules or not (then their general path counts them once, exactly as well):
    one batch at a time, every allowed payment is written by a batch."""
    statuses, applied = await _race(serial_batches_world, "velocity_wallet", 3, 10)
    assert statuses == [200] * 3 + [402] * 7
    assert applied == 3


async def test_redis_down_sends_counted_payments_to_the_general_path(
        redis_down_world: World) -> None:  # noqa: F811 (the imported fixture)
    world = redis_down_world
    m = await world.merchant()
    device = f"dev-{uuid.uuid4().hex[:8]}"
    h = await world.holder(top_up=10_000, device_id=device)
    await _rule(world, kind="velocity_device", window_s=3600, max_count=2)
    for _ in range(2):
        assert (await _by_general_path(world, m, h, 100, 200))["status"] == "succeeded"
    assert (await _by_general_path(world, m, h, 100, 402))["error"]["code"] == "risk_declined"
    other = await world.holder(top_up=10_000, device_id=f"dev-{uuid.uuid4().hex[:8]}")
    assert (await _by_general_path(world, m, other, 100, 200))["status"] == "succeeded"


async def test_redis_down_wallet_velocity_holds_under_concurrency_on_the_general_path(
        redis_down_world: World) -> None:  # noqa: F811 (the imported fixture)
    """Counted in PostgreSQL from the holder's allow decisions, under the rule's and holder's advisory lock."""
    world = redis_down_world
    m = await world.merchant()
    h = await world.holder(top_up=1_000)
    await _rule(world, kind="velocity_wallet", window_s=3600, max_count=3)
    ids = [(await world.payment(m, 100))["id"] for _ in range(10)]

    async def attempt(pid: str) -> int:
        resp = await world.client.post(f"/v1/wallet/payments/{pid}/pay", headers=h.headers, json={})
        return resp.status

    written, refused = batched()
    assert sorted(await asyncio.gather(*(attempt(pid) for pid in ids))) == [200] * 3 + [402] * 7
    assert batched() == (written, refused)  # no batch tried any: the general path counted each
    decisions = await _decisions(world, f"&wallet={h.id}")
    assert sorted(d["outcome"] for d in decisions) == ["allow"] * 3 + ["decline"] * 7
    assert await world.available(h) == 700


@pytest.mark.parametrize("kind", ["velocity_wallet", "velocity_device"])
async def test_redis_lost_after_batch_payments_counts_their_decisions_in_postgres(
        world: World, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """The allow decisions the batch wrote are what PostgreSQL counts while Redis is down."""
    m = await world.merchant()
    device = f"dev-{uuid.uuid4().hex[:8]}"
    h = await world.holder(top_up=10_000, device_id=device)
    await _rule(world, kind=kind, window_s=3600, max_count=2)
    await _by_batch(world, m, h, 100)
    await _by_batch(world, m, h, 100)
    monkeypatch.setattr(Accelerator, "available", property(lambda self: False))  # the breaker open
    refused = await _by_general_path(world, m, h, 100, 402)  # counted in PostgreSQL: no batch tries it
    assert refused["error"]["code"] == "risk_declined"
    assert refused["error"]["decision"].startswith("rkd_")
    assert await world.available(h) == 9_800


@pytest.fixture
async def unbatched_world(clean_db: str) -> AsyncIterator[World]:
    async with serving(clean_db, make_settings(payments={"group_commit_items_max": 0})) as client:
        yield await World.create(client)


async def test_without_group_commit_each_statement_is_counted_the_same(unbatched_world: World,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    world = unbatched_world
    assert world.client.app[SERVICES].pay_batches is None
    m = await world.merchant()
    device = f"dev-{uuid.uuid4().hex[:8]}"
    h = await world.holder(top_up=10_000, device_id=device)
    rule = await _rule(world, kind="velocity_device", window_s=3600, max_count=2)
    general: list[str] = []
    authorize = payment_cases.authorize_locked

    async def spy_authorize(*args: Any, **kwargs: Any) -> Any:
        general.append(kwargs["channel"])
        return await authorize(*args, **kwargs)

    monkeypatch.setattr(payment_cases, "authorize_locked", spy_authorize)
    for _ in range(2):
        assert (await _paid(world, m, h, 100))["status"] == "succeeded"
    assert general == []  # each paid by its own one statement
    assert (await _paid(world, m, h, 100, 402))["error"]["code"] == "risk_declined"
    assert general == ["wallet"]
    assert await _window_size(rule, device) == 2
    assert [d["outcome"] for d in await _decisions(world)] == ["decline", "allow", "allow"]
