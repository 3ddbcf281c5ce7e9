"""Review r36 of 984a618 (a block stops money out) and 3379b4c (copies and scripts share round trips):
each test failed before its fix."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from redis.asyncio.client import Pipeline

from gateway.accel import PIPELINE_MAX, Accelerator
from gateway.domain.ids import Kind, decode
from tests.integration.test_qr_paycode import _device_holder
from tests.integration.test_risk_pay_code import PIN, _charge, _confirm, _decisions, _held, _pay_code, _rule
from tests.integration.world import World

pytestmark = pytest.mark.asyncio


# --- 3379b4c: the shared stream of round trips -----------------------------------------------------


async def test_an_unexpected_pipeline_error_answers_every_caller_and_never_leaves_one_waiting(
        accel: Accelerator, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error outside ``_FAILURES`` (a client bug, an EOFError from a torn connection) used to escape the
    sending task with the batch's futures never answered: every request of the moment hung forever. Now
    each gets a Redis failure (as Redis down: the fallback answers) and the next call works again."""
    real = Accelerator._evalsha_all
    calls = 0

    async def broken(self: Accelerator, batch: Any, copies: Any = None) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise EOFError("torn")
        return await real(self, batch, copies)

    monkeypatch.setattr(Accelerator, "_evalsha_all", broken)
    scope = f"r36-{uuid.uuid4()}"
    answers = await asyncio.wait_for(asyncio.gather(*(accel.preflight(scope, 5, None) for _ in range(3))), 3)
    assert all(not redis_answered for _, _, redis_answered in answers)  # the local fallback answered
    assert accel._sending is None and accel._takes == []


async def test_many_copies_never_make_a_pipeline_longer_than_pipeline_max(
        accel: Accelerator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Copies used to go all at once (up to COPIES_PENDING_MAX, each a stored response) ahead of the
    scripts of the requests waiting: one round trip of 1000+ commands, its socket timeout shared by them.
    Now a pipeline carries at most PIPELINE_MAX commands, copies and scripts together, and every copy
    still arrives, the latest of a key winning."""
    sizes: list[int] = []
    real = Pipeline.execute

    async def counting(self: Pipeline, raise_on_error: bool = True) -> Any:
        sizes.append(len(self.command_stack))
        return await real(self, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", counting)
    prefix = f"r36-copy-{uuid.uuid4().hex}"
    for n in range(900):
        accel.copy_later(f"{prefix}-{n}", b"old", 60)
    accel.copy_later(f"{prefix}-7", b"new", 60)  # a later copy of a key waiting: it wins
    scope = f"r36-{uuid.uuid4()}"
    await asyncio.gather(*(accel.preflight(scope, 500, None) for _ in range(300)))
    await accel.copies_sent()
    assert sizes and max(sizes) <= PIPELINE_MAX, sizes
    assert await accel.get(f"{prefix}-899") == b"old" and await accel.get(f"{prefix}-7") == b"new"


# --- 984a618: a block stops money out ------------------------------------------------------------


async def test_a_held_pay_code_charge_is_not_confirmed_once_the_wallet_is_blocked(world: World) -> None:
    """A pay-code charge held for the PIN, then a block of the wallet, then the holder confirms with the
    PIN: the money used to leave the blocked wallet (its 'allow' decision written). Now the confirmation
    is declined risk_declined with its decision, nothing captured (the amount stays held until the
    worker reverses the charge), once per key; lifting the block lets a new confirmation through."""
    m = await world.merchant(fee_bps=0)
    h = await _device_holder(world, 10_000)
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": PIN})
    await _rule(world, kind="blocked_wallet", wallet=h.id, outcome="require_pin")
    charged = await _charge(world, m, await _pay_code(world, h), 300)
    assert charged["status"] == "requires_action"
    block = await _rule(world, kind="blocked_wallet", wallet=h.id)
    key = uuid.uuid4().hex
    refused = await _confirm(world, h, charged["id"], 402, key=key, pin=PIN)
    assert refused["error"]["code"] == "risk_declined", refused
    assert await _held(world, h) == 300 and await world.available(h) == 9_700
    polled = await world.call("GET", f"/v1/payments/{charged['id']}", headers=m.headers)
    assert polled["status"] == "requires_action"
    declined = [d for d in await _decisions(world, h) if d["outcome"] == "decline"]
    assert [(d["id"], d["payment"], d["channel"]) for d in declined] == [
        (refused["error"]["decision"], charged["id"], "pay_code")]
    await world.call("POST", f"/v1/operator/risk_rules/{block['id']}/disable", headers=world.ops, json={})
    assert await _confirm(world, h, charged["id"], 402, key=key, pin=PIN) == refused  # one key, one answer
    assert len([d for d in await _decisions(world, h) if d["outcome"] == "decline"]) == 1
    ok = await _confirm(world, h, charged["id"], pin=PIN)
    assert ok["status"] == "succeeded"
    report = await world.call("GET", "/v1/operator/ledger/invariants", headers=world.ops)
    assert report["ok"], report


async def test_a_block_waits_for_the_money_out_in_flight_so_none_commits_after_it_unseen(
        world: World, clean_db: str) -> None:
    """The race: a withdrawal in flight read the rules (no block yet), then the block commits and is
    answered, then the withdrawal commits: money left a wallet already blocked. Now a block's creation
    takes the holder's row (a device's lock) exclusively, against the FOR SHARE (the shared lock) every
    money out holds before its rules read: the block waits for the withdrawal in flight, so any withdrawal
    committing after the block read the rules after it. Here a transaction holding what a withdrawal
    holds stands for the one in flight."""
    h = await _device_holder(world, 1_000)
    conn = await asyncpg.connect(clean_db)
    try:
        hid = decode(Kind.WALLET_HOLDER, h.id)
        for body, hold in (
                ({"kind": "blocked_wallet", "wallet": h.id},
                 ("SELECT id FROM wallet_holders WHERE id = $1 FOR SHARE", hid)),
                ({"kind": "blocked_device", "device_id": "r36-phone"},
                 ("SELECT pg_advisory_xact_lock_shared(hashtextextended('risk block of device' || chr(31) || $1, 0))",
                  "r36-phone"))):
            tx = conn.transaction()
            await tx.start()
            await conn.execute(*hold)
            creating = asyncio.ensure_future(_rule(world, **body))
            await asyncio.sleep(0.3)
            assert not creating.done(), body  # it waits for the money out in flight
            await tx.commit()
            created = await asyncio.wait_for(creating, 5)
            assert created["status"] == "active"
    finally:
        await conn.close()


async def test_a_block_lifted_between_the_hint_and_the_conversion_is_retryable_not_insufficient_funds(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The conversion's hint (before its transaction) saw a block, so no account was opened; the block was
    lifted before its transaction read the rules. It used to answer (and store for the key) 402
    insufficient_funds with the funds there. Now: a retryable 503 (the key released), and the retry with
    the same key converts."""
    from gateway.services import risk as risk_service
    from tests.integration.test_risk_money_out import _post, _usd_rate

    await _usd_rate(world)
    h = await world.holder(top_up=100_000)
    quote = await world.call("POST", "/v1/wallet/fx_quotes", 201, headers=h.headers,
                             json={"from_currency": "CNY", "to_currency": "USD", "sell_amount": 10_000})
    real = risk_service.money_out_blocked

    async def stale(*args: Any, **kwargs: Any) -> bool:
        return True  # the block the hint saw, disabled since

    monkeypatch.setattr(risk_service, "money_out_blocked", stale)
    key = uuid.uuid4().hex
    status, body, _ = await _post(world, "/v1/wallet/conversions", h.headers, {"quote": quote["id"]}, key)
    assert (status, body["error"]["code"]) == (503, "service_unavailable"), body
    monkeypatch.setattr(risk_service, "money_out_blocked", real)
    status, body, replayed = await _post(world, "/v1/wallet/conversions", h.headers, {"quote": quote["id"]}, key)
    assert (status, replayed) == (201, False), body


async def test_a_withdrawal_refused_keeps_its_answer_after_the_block_is_lifted_and_a_reused_key_is_refused(
        world: World) -> None:
    """One key, one final answer: the refusal replayed after the rule is disabled (no second decision), and
    the key with another body is idempotency_key_reused; a new key withdraws."""
    from tests.integration.test_risk_money_out import _withdraw

    h = await world.holder(top_up=10_000)
    rule = await _rule(world, kind="blocked_wallet", wallet=h.id)
    key = uuid.uuid4().hex
    first = await _withdraw(world, h, 1_000, key=key)
    assert first[0] == 402 and first[1]["error"]["code"] == "risk_declined"
    await world.call("POST", f"/v1/operator/risk_rules/{rule['id']}/disable", headers=world.ops, json={})
    again = await _withdraw(world, h, 1_000, key=key)
    assert (again[0], again[1]["error"], again[2]) == (402, first[1]["error"], True)
    other = await _withdraw(world, h, 2_000, key=key)
    assert other[1]["error"]["code"] == "idempotency_key_reused", other
    assert len(await _decisions(world, h)) == 1
    assert (await _withdraw(world, h, 1_000))[0] == 201


async def test_a_large_pay_code_charge_waiting_for_the_pin_is_not_confirmed_from_a_device_blocked_since(
        world: World, clean_db: str) -> None:
    """No rule held it (the PIN threshold did): a block of the phone after the charge used to let the
    confirmation capture it. Now declined risk_declined (device of the session); its decision passes the
    invariants; the invariants also hold after the expiry reversal would run."""
    m = await world.merchant(fee_bps=0)
    h = await _device_holder(world, 500_000, device_id="r36-lost-phone")
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": "246810"})
    charged = await _charge(world, m, await _pay_code(world, h), 150_000)
    assert charged["status"] == "requires_action"
    await _rule(world, kind="blocked_device", device_id="r36-lost-phone")
    refused = await _confirm(world, h, charged["id"], 402, pin="246810")
    assert refused["error"]["code"] == "risk_declined", refused
    [d] = await _decisions(world, h)
    assert (d["channel"], d["device_id"], d["reasons"][0]["kind"]) == ("pay_code", "r36-lost-phone", "blocked_device")
    assert await _held(world, h) == 150_000
    report = await world.call("GET", "/v1/operator/ledger/invariants", headers=world.ops)
    assert report["ok"], report


async def test_a_script_reload_resends_the_scripts_only_never_the_copies(
        own_redis_accel: Accelerator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a bug (a guard): Redis lost its scripts (SCRIPT FLUSH) while copies ride in the same pipeline:
    the copies went once, only the scripts are sent again (a copy sent twice would be harmless anyway:
    a key's stored answer never changes once done)."""
    sent: list[list[bytes]] = []
    real = Pipeline.execute

    async def recording(self: Pipeline, raise_on_error: bool = True) -> Any:
        sent.append([c[0][0] if isinstance(c[0][0], bytes) else str(c[0][0]).encode() for c in self.command_stack])
        return await real(self, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", recording)
    await own_redis_accel.client.script_flush()
    key = f"r36-copy-{uuid.uuid4().hex}"
    own_redis_accel.copy_later(key, b"done", 60)
    answers = await asyncio.gather(*(own_redis_accel.preflight(f"s-{uuid.uuid4()}", 5, None) for _ in range(3)))
    await own_redis_accel.copies_sent()
    assert all(answered for _, _, answered in answers)
    assert sum(cmds.count(b"SET") for cmds in sent) == 1, sent
    assert await own_redis_accel.get(key) == b"done"


async def test_a_caller_cancelled_mid_round_trip_leaves_the_others_answered_and_the_sender_done(
        accel: Accelerator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a bug (a guard): a request cancelled while its script is in flight: its answer is dropped, the
    others of the pipeline get theirs, and the sending task ends."""
    real = Accelerator._evalsha_all
    started = asyncio.Event()

    async def slow(self: Accelerator, batch: Any, copies: Any = None) -> Any:
        started.set()
        await asyncio.sleep(0.1)
        return await real(self, batch, copies)

    monkeypatch.setattr(Accelerator, "_evalsha_all", slow)
    scope = f"r36-{uuid.uuid4()}"
    cancelled = asyncio.ensure_future(accel.preflight(scope, 5, None))
    kept = asyncio.ensure_future(accel.preflight(scope, 5, None))
    await started.wait()
    cancelled.cancel()
    assert (await asyncio.wait_for(kept, 3))[2]
    await accel.copies_sent()
    assert accel._sending is None and accel._takes == [] and cancelled.cancelled()
