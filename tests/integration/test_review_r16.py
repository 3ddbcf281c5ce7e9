"""Review R16: campaign counter rows (migration 0026), the payments_lifetime CHECK and the uses counted
only under a per-holder limit, attacked over real HTTP and PostgreSQL. Each test marked FINDING failed
on main at f7d0796; the others are attacks that held. The ledger invariants are proven after each test
(the ``client`` fixture)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from gateway.api.routing import SERVICES
from gateway.domain.ids import Kind, decode
from gateway.store import invariants
from gateway.store import promotions as promotion_store
from tests.conftest import make_settings
from tests.integration.conftest import serving
from tests.integration.world import Holder, Merchant, World, batched, campaign_window


def _deadlocks() -> float:
    return REGISTRY.get_sample_value("gateway_db_transaction_retries_total", {"reason": "deadlock"}) or 0.0


async def _campaign(world: World, **terms: Any) -> Any:
    body = {"name": "R16", "currency": "CNY", "rule": "fixed", "fixed_amount": 100, "funded_by": "bank",
            "budget": 1_000_000, **campaign_window(), **terms}
    return await world.call("POST", "/v1/operator/campaigns", 201, headers=world.ops, json=body)


async def _status(world: World, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    resp = await world.client.request(method, path, **kwargs)
    return resp.status, await resp.json()


async def _waiting_on_a_lock(db_url: str, fragment: str) -> None:
    """Until a backend runs a statement containing ``fragment`` and waits for a lock (at most 5 s)."""
    conn = await asyncpg.connect(db_url)
    try:
        for _ in range(500):
            if await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                   " AND query LIKE '%' || $1 || '%'", fragment):
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"no statement with {fragment!r} waited for a lock")
    finally:
        await conn.close()


def _paused_after_take(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """``store.promotions.take`` pauses after it took (its counter row locked) until ``go`` is set:
    the window, between the take and the payment's own update of its row, that any general-path
    payment has (a round trip or a few), made long enough to put an operator's end in it."""
    took, go = asyncio.Event(), asyncio.Event()
    real = promotion_store.take

    async def take(*args: Any, **kwargs: Any) -> int | None:
        granted = await real(*args, **kwargs)
        if granted is not None and not go.is_set():
            took.set()
            await go.wait()
        return granted

    monkeypatch.setattr(promotion_store, "take", take)
    return took, go


# --- FINDING 1: the end of a campaign deadlocks with a general-path take ------------------------


@pytest.mark.parametrize("terms, earlier", [
    ({}, 0),                                                       # a discount, no per-holder limit
    ({"rule": "cashback", "fixed_amount": 100}, 0),                # a cashback at capture, no limit
    ({"per_holder_limit": 5}, 1),                                  # a limit, the holder's use row exists
], ids=["discount", "cashback", "limited-second-use"])
async def test_r16_finding_ending_a_campaign_never_deadlocks_with_a_general_path_take(
        world: World, clean_db: str, monkeypatch: pytest.MonkeyPatch, terms: dict[str, Any], earlier: int) -> None:
    """FINDING 1 (deadlock). ``end`` locks the campaign row FOR UPDATE, then waits for the counter
    rows. A general-path payment holds a counter row from its take and then writes its payment row's
    ``campaign_id`` (or ``cashback_campaign_id``), whose foreign key takes FOR KEY SHARE of the
    campaign row: it waits for the end, which waits for it. Before 0026 the take itself updated the
    campaign row (after the end, in order); and the use row's insert took the key share first, which
    the uncounted uses (f7d0796) and an existing use row no longer do."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    c = await _campaign(world, **terms)
    for _ in range(earlier):
        await world.pay(h, (await world.payment(m, 1_000))["id"])
    world.client.app[SERVICES].campaigns.current = lambda: None  # the general path (as a process that cannot tell)
    took, go = _paused_after_take(monkeypatch)
    p = await world.payment(m, 1_000)
    before = _deadlocks()
    paying = asyncio.ensure_future(_status(world, "POST", f"/v1/wallet/payments/{p['id']}/pay", headers=h.headers,
                                           json={}))
    await asyncio.wait_for(took.wait(), 10)
    ending = asyncio.ensure_future(_status(world, "POST", f"/v1/operator/campaigns/{c['id']}/end",
                                           headers=world.ops, json={}))
    await _waiting_on_a_lock(clean_db, "campaign_shards")  # the end waits for the counter row the take holds
    go.set()
    (paid_status, paid), (ended_status, ended) = await asyncio.gather(paying, ending)
    assert (paid_status, ended_status) == (200, 200), (paid, ended)
    assert _deadlocks() == before, "the end and the payment deadlocked (PostgreSQL broke it; the gateway retried)"
    benefit = paid["discount"] if "discount" in paid and paid["discount"] else paid.get("cashback")
    assert benefit is not None and benefit["amount"] == 100  # taken before the end: it committed first


# --- FINDING 2: a take refused after gathering keeps every counter row locked --------------------


def _frozen_cache(world: World) -> None:
    """This process's cache keeps the campaigns as they were loaded now (as every process's does for up
    to its refresh period after a campaign ran out): it keeps offering what the database will refuse."""
    svc = world.client.app[SERVICES]
    seen = svc.campaigns.current()
    assert seen
    svc.campaigns.current = lambda: seen


def _paused_after_refusals(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """The first ``count`` takes refused wait for one another (then none waits): the interleaving a
    busy gateway gets by chance, made certain."""
    real = promotion_store.take
    refused: list[None] = []
    all_refused = asyncio.Event()

    async def take(*args: Any, **kwargs: Any) -> int | None:
        granted = await real(*args, **kwargs)
        if granted is None and not all_refused.is_set():
            refused.append(None)
            if len(refused) >= count:
                all_refused.set()
            await asyncio.wait_for(all_refused.wait(), 10)
        return granted

    monkeypatch.setattr(promotion_store, "take", take)


async def test_r16_finding_takes_refused_by_exhausted_campaigns_never_deadlock(
        world: World, clean_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """FINDING 2 (deadlock; and every payment offered an exhausted campaign waits for all its rows).
    When no row it may skip to has room, ``gateway_campaign_take`` locks every counter row and keeps
    them locked (until the payment's commit) even when it then refuses: the campaign is spent, or out
    of places. A payment's next offer is then taken with those rows held. Two campaigns run out while
    caches still offer them (for up to their refresh period): a payment of 1,000 tries A (10%: 100)
    then B (50), one of 100 tries B (50) then A (10): each holds the rows of the one it was refused and
    waits for the other's. Before 0026 a refused take was an UPDATE whose guard failed: it locked
    nothing."""
    m = await world.merchant()
    holders = list(await asyncio.gather(*(world.holder(top_up=10_000) for _ in range(2))))
    a = await _campaign(world, name="A", rule="percent", percent_bps=1_000, fixed_amount=0, budget=100)
    b = await _campaign(world, name="B", fixed_amount=50, budget=50)
    _frozen_cache(world)
    spent_a = await world.pay(holders[0], (await world.payment(m, 1_000))["id"])
    spent_b = await world.pay(holders[1], (await world.payment(m, 100))["id"])
    assert (spent_a["discount"]["amount"], spent_b["discount"]["amount"]) == (100, 50)
    _paused_after_refusals(monkeypatch, 2)
    payments = [await world.payment(m, 1_000), await world.payment(m, 100)]
    before = _deadlocks()
    paid = await asyncio.gather(*(_status(world, "POST", f"/v1/wallet/payments/{p['id']}/pay", headers=h.headers,
                                          json={}) for h, p in zip(holders, payments, strict=True)))
    assert [status for status, _ in paid] == [200, 200], paid
    assert all(body["discount"] is None for _, body in paid)
    assert _deadlocks() == before, "two refused takes deadlocked (PostgreSQL broke it; the gateway retried)"
    for c in (a, b):
        got = await world.call("GET", f"/v1/operator/campaigns/{c['id']}", headers=world.ops)
        assert got["spent"] == got["budget"]


async def test_r16_finding_a_take_refused_after_waiting_for_the_rows_keeps_none_locked(
        world: World, clean_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """FINDING 2, its race: a take that saw the budget left as committed, waited for the rows, and found
    them spent by the payment it waited for, is refused and leaves no row locked in its transaction."""
    m = await world.merchant()
    h, other = await asyncio.gather(world.holder(top_up=10_000), world.holder())
    c = await _campaign(world, budget=100)  # one row, one discount
    world.client.app[SERVICES].campaigns.current = lambda: None  # the general path
    took, go = _paused_after_take(monkeypatch)
    p = await world.payment(m, 1_000)
    paying = asyncio.ensure_future(world.pay(h, p["id"]))
    await asyncio.wait_for(took.wait(), 10)  # it holds the row, the budget's last units taken, not committed
    cid, holder_id = decode(Kind.CAMPAIGN, c["id"]), decode(Kind.WALLET_HOLDER, other.id)
    conn, probe = await asyncpg.connect(clean_db), await asyncpg.connect(clean_db)
    try:
        tx = conn.transaction()
        await tx.start()
        taking = asyncio.ensure_future(conn.fetchval("SELECT gateway_campaign_take($1, $2, 100, now(), 5)",
                                                     cid, holder_id))
        await _waiting_on_a_lock(clean_db, "gateway_campaign_take")
        go.set()
        assert (await paying)["discount"]["amount"] == 100
        assert await taking is None
        locked = await probe.fetch("SELECT shard FROM campaign_shards WHERE campaign_id = $1 FOR UPDATE NOWAIT", cid)
        assert len(locked) == 1  # no row left locked by the refused take's transaction
        assert await conn.fetchval("SELECT coalesce(sum(uses), 0) FROM campaign_uses WHERE holder_id = $1",
                                   holder_id) == 0  # and its use given back
        await tx.rollback()
    finally:
        await conn.close()
        await probe.close()


# --- FINDING 3: a per-holder limit of COUNT_MAX is counted by nobody but checked as a limit -------


async def test_r16_finding_a_limit_of_count_max_keeps_the_invariants(world: World, clean_db: str) -> None:
    """FINDING 3 (low: the invariant checker alarms on correct books). A campaign may be created with
    ``per_holder_limit`` 2147483647 (``COUNT_MAX``, the largest accepted); the take functions read that
    value as "no limit" and count no use, but ``campaign_holder_over_limit`` holds a campaign with a
    limit to uses = payments."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    await _campaign(world, per_holder_limit=2**31 - 1)
    for _ in range(2):  # the one-statement path, then the general path
        paid = await world.pay(h, (await world.payment(m, 1_000))["id"])
        assert paid["discount"]["amount"] == 100
        world.client.app[SERVICES].campaigns.current = lambda: None
    conn = await asyncpg.connect(clean_db)
    try:
        broken = {name: rows for name, rows in (await invariants.check(conn)).items() if rows}
    finally:
        await conn.close()
    assert not broken, broken
    benefits = await world.call("GET", "/v1/wallet/benefits", headers=h.headers)
    assert [c["uses_left"] for c in benefits["campaigns"]] in ([None], [2**31 - 1 - 2])


# --- attacks that held --------------------------------------------------------------------------


async def _pay_retrying(client: Any, h: Holder, payment_id: str) -> Any:
    """Pay as a client does: a 503 (database busy) is retried with the same key, a few times."""
    headers = {**h.headers, "Idempotency-Key": str(uuid.uuid4())}
    for _ in range(8):
        resp = await client.post(f"/v1/wallet/payments/{payment_id}/pay", headers=headers, json={})
        body = await resp.json()
        if resp.status != 503:
            assert resp.status == 200, body
            return body
        await asyncio.sleep(0.2)
    raise AssertionError("still busy after 8 tries")


async def test_r16_two_processes_both_paths_cashback_gifts_refunds_and_an_end_never_over_grant(
        world: World, clean_db: str) -> None:
    """Held with fix 1 (on main it fails: the end, or a refund queued behind it for the campaign row,
    answers 503 after LockNotAvailable: the deadlock of finding 1 under load). Process A decides from
    its cache (batches), process B cannot tell (the general path). At
    merchant 1 a discount of 100 whose budget (4,550 over 5 rows: 45 whole discounts and 50 units left
    over, 10 in each row) binds before its places (50) and the holders' limits (3 each), every
    discounted payment then half refunded (its claw-back on the campaign row); at merchant 2 a cashback
    campaign (3 rows) ended in the middle of the race, and a first-payment gift. No deadlock, nothing
    granted twice nor refused while units remain, the books add up (the fixtures' invariants)."""
    m1, m2 = await world.merchant(), await world.merchant(name="Cafe")
    holders = list(await asyncio.gather(*(world.holder(top_up=20_000) for _ in range(24))))
    d = await _campaign(world, budget=4_550, places=50, per_holder_limit=3, merchants=[m1.id])
    cb = await _campaign(world, name="CB", rule="cashback", fixed_amount=80, budget=2_000, merchants=[m2.id])
    await _campaign(world, name="Gift", rule="gift_first_payment", fixed_amount=30, budget=300, merchants=[m2.id])
    conn = await asyncpg.connect(clean_db)
    try:
        rows = dict(await conn.fetch("SELECT campaign_id, count(*) FROM campaign_shards GROUP BY campaign_id"))
    finally:
        await conn.close()
    assert (rows[decode(Kind.CAMPAIGN, d["id"])], rows[decode(Kind.CAMPAIGN, cb["id"])]) == (5, 3)
    before, (written, _) = _deadlocks(), batched()
    async with serving(clean_db, make_settings()) as other:
        other.app[SERVICES].campaigns.current = lambda: None  # type: ignore[method-assign]
        plan = [(h, m) for _ in range(4) for h in holders for m in (m1,)] + [(h, m2) for h in holders for _ in range(2)]
        payments = [await world.payment(m, 1_000 if m is m1 else 500) for _, m in plan]

        async def one(i: int, h: Holder, m: Merchant, p: Any) -> Any:
            client = world.client if i % 2 else other
            paid = await _pay_retrying(client, h, p["id"])
            if paid["discount"] is not None:
                status, body = await _status(world, "POST", f"/v1/payments/{p['id']}/refunds",
                                             headers={**m.headers, "Idempotency-Key": f"r-{p['id']}"},
                                             json={"amount": 450})
                assert status == 201, body
            return paid

        racing = asyncio.ensure_future(asyncio.gather(*(one(i, h, m, p) for i, ((h, m), p)
                                                        in enumerate(zip(plan, payments, strict=True)))))
        await asyncio.sleep(0.3)
        status, ended = await _status(world, "POST", f"/v1/operator/campaigns/{cb['id']}/end", headers=world.ops,
                                      json={})
        assert status == 200, ended
        paid = await racing
    assert _deadlocks() == before
    assert batched()[0] > written  # the one-statement path took part
    discounts = sorted(x["discount"]["amount"] for x in paid if x["discount"] is not None)
    assert discounts == [50] + [100] * 45, discounts
    per_holder: dict[str, int] = {}
    for (h, _), x in zip(plan, paid, strict=True):
        if x["discount"] is not None:
            per_holder[h.id] = per_holder.get(h.id, 0) + 1
    assert max(per_holder.values()) <= 3
    got = await world.call("GET", f"/v1/operator/campaigns/{d['id']}", headers=world.ops)
    assert (got["spent"], got["places_taken"]) == (4_550, 46)
    got = await world.call("GET", f"/v1/operator/campaigns/{cb['id']}", headers=world.ops)
    cashback = sum(x["cashback"]["amount"] for x in paid if x.get("cashback"))
    assert got["spent"] == cashback <= 2_000


async def test_r16_a_batch_item_rolled_back_after_its_campaign_check_counts_nothing(world: World) -> None:
    """Held. Items whose discount the batch's row allowed and which then fail (funds short: the wallet's
    balance CHECK, after the campaign check) count nothing of the row: the row's spent and places are
    those of the payments discounted (campaign_over_budget_or_places after the test), and the budget
    they did not use is given to the next payments."""
    m = await world.merchant()
    poor = list(await asyncio.gather(*(world.holder(top_up=500) for _ in range(6))))
    rich = list(await asyncio.gather(*(world.holder(top_up=10_000) for _ in range(6))))
    c = await _campaign(world, budget=600)  # one row, six discounts
    written, refused = batched()
    payments = [await world.payment(m, 1_000) for _ in range(12)]
    results = await asyncio.gather(*(_status(world, "POST", f"/v1/wallet/payments/{p['id']}/pay",
                                             headers=h.headers, json={})
                                     for h, p in zip(poor + rich, payments, strict=True)))
    assert [s for s, _ in results] == [402] * 6 + [200] * 6, results
    assert all(body["discount"]["amount"] == 100 for _, body in results[6:])
    assert batched()[0] > written and batched()[1] > refused  # batches took some, and refused the poor
    got = await world.call("GET", f"/v1/operator/campaigns/{c['id']}", headers=world.ops)
    assert (got["spent"], got["places_taken"]) == (600, 6)


async def test_r16_concurrent_first_captures_give_one_first_payment_gift(world: World) -> None:
    """Held. A holder's authorised payments captured at once by its merchant: every capture sees no
    captured payment yet and takes a first-payment gift; the second insert waits for the first and is
    refused, its take rolled back to the savepoint (the take's rows with it). One gift per holder, the
    counter rows say so (the invariants after the test)."""
    m = await world.merchant()
    holders = list(await asyncio.gather(*(world.holder(top_up=10_000) for _ in range(6))))
    await _campaign(world, name="G30", rule="gift_first_payment", fixed_amount=30, budget=3_000)
    await _campaign(world, name="G20", rule="gift_first_payment", fixed_amount=20, budget=3_000)
    pids = []
    for h in holders:
        for _ in range(3):
            p = await world.payment(m, 1_000, capture_method="manual")
            assert (await world.pay(h, p["id"]))["status"] == "requires_capture"
            pids.append(p["id"])
    captured = await asyncio.gather(*(_status(world, "POST", f"/v1/payments/{pid}/capture",
                                              headers={**m.headers, "Idempotency-Key": f"c-{pid}"}, json={})
                                      for pid in pids))
    assert [s for s, _ in captured] == [200] * len(pids), captured
    for h in holders:
        mine = await world.call("GET", "/v1/wallet/benefits", headers=h.headers)
        assert [(b["kind"], b["amount"]) for b in mine["data"]] == [("gift_first_payment", 30)], mine["data"]
    assert sum(await asyncio.gather(*(world.available(h) for h in holders))) == 6 * (10_000 - 3_000 + 30)


# --- FINDING 4 (a CHECK payments_lifetime that a database which once allowed a longer expiry could never
# validate) is resolved by dropping the CHECK: its only reader, a count of the holder's payments, is gone
# (velocity per wallet is counted in Redis windows, tests/integration/test_risk_at_once.py).


@pytest.mark.parametrize("general", [False, True], ids=["batch", "general"])
async def test_r16_a_payment_paid_at_the_end_of_its_longest_life_is_counted_by_the_velocity(
        world: World, clean_db: str, general: bool) -> None:
    """Held. A payment created 7 days 23 hours ago and paid now was authorised within the hour: the
    velocity count finds it."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    await world.call("POST", "/v1/operator/risk_rules", 201, headers=world.ops,
                     json={"kind": "velocity_wallet", "window_s": 3600, "max_count": 1})
    if general:
        world.client.app[SERVICES].campaigns.current = lambda: None
    old = await world.payment(m, 100)
    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute("UPDATE payments SET created_at = now() - interval '7 days 23 hours',"
                           " updated_at = now() - interval '7 days 23 hours' WHERE id = $1",
                           decode(Kind.PAYMENT, old["id"]))
    finally:
        await conn.close()
    assert (await world.pay(h, old["id"]))["status"] == "succeeded"
    refused = await world.pay(h, (await world.payment(m, 100))["id"], 402)
    assert refused["error"]["code"] == "risk_declined"


# --- FINDING 5: the end's answer (and audit record) misses what was taken while it waited --------


async def test_r16_finding_the_end_answers_what_was_taken_before_its_commit(
        world: World, clean_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """FINDING 5 (low: an answer and an audit record). ``end`` waits for the counter rows, then answers
    the campaign's spent and places summed from the snapshot its statement began with: a discount
    taken by a payment that held a row and committed while the end waited is in the books, before the
    end's commit, but not in the end's answer nor in its ``campaign.ended`` audit record."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    c = await _campaign(world)
    world.client.app[SERVICES].campaigns.current = lambda: None  # the general path
    took, go = _paused_after_take(monkeypatch)
    p = await world.payment(m, 1_000)
    paying = asyncio.ensure_future(world.pay(h, p["id"]))
    await asyncio.wait_for(took.wait(), 10)
    ending = asyncio.ensure_future(world.call("POST", f"/v1/operator/campaigns/{c['id']}/end", headers=world.ops,
                                              json={}))
    await _waiting_on_a_lock(clean_db, "campaign_shards")
    go.set()
    assert (await paying)["discount"]["amount"] == 100
    ended = await ending
    got = await world.call("GET", f"/v1/operator/campaigns/{c['id']}", headers=world.ops)
    assert (got["spent"], got["places_taken"]) == (100, 1)
    assert (ended["spent"], ended["places_taken"]) == (100, 1), ended
