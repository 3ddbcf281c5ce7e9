"""Review R15: campaign discounts on the one-statement path (migration 0025) and cross-currency
payments, attacked over real HTTP and PostgreSQL: two gateway processes' worth of apps racing one
campaign through both paths, the daily cap of merchant-funded discounts, replays and events of a
discounted payment, quotes raced and misused, refunds raced, odd input. The ledger invariants are
proven after each test (the ``serving`` fixture)."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import uuid
from collections import Counter
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from gateway.api.routing import SERVICES
from gateway.domain.ids import Kind, decode
from gateway.services import payments as payment_cases
from gateway.store import ledger as ledger_store
from gateway.store import payments as payment_store
from tests.conftest import make_settings
from tests.integration.conftest import serving
from tests.integration.world import Holder, World, campaign_window


async def _campaign(world: World, **terms: Any) -> Any:
    body = {"name": "R15", "currency": "CNY", "rule": "percent", "percent_bps": 1_000, "funded_by": "bank",
            "budget": 1_000_000, **campaign_window(), **terms}
    return await world.call("POST", "/v1/operator/campaigns", 201, headers=world.ops, json=body)


async def _status(client: Any, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    resp = await client.request(method, path, **kwargs)
    return resp.status, await resp.json()


# --- change 1: campaigns on the one-statement path -----------------------------------------------


async def _pay_retrying(client: Any, h: Holder, payment_id: str) -> Any:
    """Pay as a client does: a 503 (database busy) is retried with the same key, a few times."""
    headers = {**h.headers, "Idempotency-Key": str(uuid.uuid4())}
    for _ in range(5):
        status, body = await _status(client, "POST", f"/v1/wallet/payments/{payment_id}/pay", headers=headers, json={})
        if status != 503:
            assert status == 200, body
            return body
        await asyncio.sleep(0.2)
    raise AssertionError("still busy after 5 tries")


async def test_r15_two_processes_mixing_both_paths_never_over_grant(world: World, clean_db: str) -> None:
    """Process A decides from its cache (the one-statement path, group commit); process B cannot tell
    (its cache answers None: the general path). 120 payments of 12 holders race one campaign whose
    budget (23 full discounts and 50) binds before its places (30) and the holders' limits (3 each)."""
    m = await world.merchant()
    holders = list(await asyncio.gather(*(world.holder(top_up=20_000) for _ in range(12))))
    c = await _campaign(world, places=30, per_holder_limit=3, budget=2_350)
    async with serving(clean_db, make_settings()) as other:
        other.app[SERVICES].campaigns.current = lambda: None  # type: ignore[method-assign]
        payers = [h for h in holders for _ in range(10)]
        payments = [await world.payment(m, 1_000) for _ in payers]
        clients = [world.client if i % 2 else other for i in range(len(payers))]
        paid = await asyncio.gather(*(_pay_retrying(cl, h, p["id"])
                                      for cl, h, p in zip(clients, payers, payments, strict=True)))
    amounts = sorted(x["discount"]["amount"] for x in paid if x["discount"] is not None)
    assert amounts == [50] + [100] * 23, amounts
    per_holder = Counter(h.id for h, x in zip(payers, paid, strict=True) if x["discount"] is not None)
    assert max(per_holder.values()) <= 3
    got = await world.call("GET", f"/v1/operator/campaigns/{c['id']}", headers=world.ops)
    assert (got["spent"], got["places_taken"]) == (2_350, 24)
    conn = await asyncpg.connect(clean_db)
    try:
        uses = await conn.fetchval("SELECT sum(uses) FROM campaign_uses")
    finally:
        await conn.close()
    assert uses == 24


async def test_r15_merchant_funded_discount_counts_the_full_amount_in_the_daily_cap(clean_db: str) -> None:
    """A 3,000 CNY daily cap; 1,000 payments discounted by 300 (merchant-funded) on the one-statement
    path: the fourth is declined although the holder paid only 2,700 in all."""
    caps = {"CNY": {"balance_max_minor": 1_000_000, "payment_max_minor": 100_000, "daily_max_minor": 3_000}}
    settings = make_settings(tiers={f"tier{n}": caps for n in range(1, 5)})
    async with serving(clean_db, settings) as client:
        world = await World.create(client)
        m = await world.merchant()
        h = await world.holder(top_up=10_000)
        await _campaign(world, rule="fixed", percent_bps=0, fixed_amount=300, funded_by="merchant")
        for _ in range(3):
            p = await world.payment(m, 1_000)
            paid = await world.pay(h, p["id"])
            assert paid["discount"]["amount"] == 300
        p = await world.payment(m, 1_000)
        refused = await world.pay(h, p["id"], 402)
        assert refused["error"]["code"] == "limit_exceeded", refused
        assert await world.available(h) == 10_000 - 3 * 700


async def test_r15_a_discounted_payment_replayed_answers_the_same_and_its_event_is_its_row(world: World,
                                                                                          clean_db: str) -> None:
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=10_000)
    for funded in ("bank", "merchant"):
        c = await _campaign(world, funded_by=funded, places=10)
        p = await world.payment(m, 2_000)
        key = str(uuid.uuid4())
        first = await world.pay(h, p["id"], key=key)
        again = await world.pay(h, p["id"], key=key)
        assert first == again
        assert first["discount"]["amount"] == 200 and first["discount"]["funded_by"] == funded
        seen = await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers)
        assert {k: seen[k] for k in first} == first
        merchant_view = await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers)
        conn = await asyncpg.connect(clean_db)
        try:
            data = await conn.fetchval("SELECT data FROM events WHERE object_id = $1 AND type = 'payment.succeeded'",
                                       decode(Kind.PAYMENT, p["id"]))
        finally:
            await conn.close()
        event = json.loads(data)
        for name in ("amount", "amount_received", "fee", "discount", "status", "currency"):
            assert event[name] == merchant_view[name], (funded, name, event[name], merchant_view[name])
        expected_fee = 20 if funded == "bank" else 18
        assert merchant_view["fee"] == expected_fee
        await world.call("POST", f"/v1/operator/campaigns/{c['id']}/end", headers=world.ops, json={})


# --- change 2: cross-currency payments -----------------------------------------------------------


async def _rate(world: World, base: str, quote: str, rate: str) -> Any:
    return await world.call("POST", "/v1/operator/fx_rates", 201, headers=world.ops,
                            json={"base": base, "quote": quote, "rate": rate, "spread_bps": 0})


async def _offer(world: World, h: Holder, p: Any) -> Any:
    return (await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers))["fx_offer"]


async def test_r15_odd_fx_quote_input_is_refused_clearly(world: World) -> None:
    await _rate(world, "EUR", "CNY", "7.8")
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    other = await world.holder(top_up=100_000)
    p = await world.payment(m, 1_000, "EUR")
    theirs = await _offer(world, other, p)
    for bad in (12345, "", "x" * 10_000, p["id"], "fxq_" + "A" * 40, [theirs["quote"]], {"a": 1},
                theirs["quote"]):
        status, body = await _status(world.client, "POST", f"/v1/wallet/payments/{p['id']}/pay",
                                     headers={**h.headers, "Idempotency-Key": str(uuid.uuid4())},
                                     json={"fx_quote": bad})
        assert status in (400, 404, 409, 422), (bad if not isinstance(bad, str) else bad[:40], status, body)
    huge = await _status(world.client, "POST", "/v1/wallet/fx_quotes", headers=h.headers,
                         json={"from_currency": "CNY", "to_currency": "EUR", "receive_amount": 10**30})
    assert huge[0] in (400, 422), huge
    status, body = await _status(world.client, "GET", f"/v1/payments/{p['id']}", headers=m.headers)
    assert status == 200 and "fx_offer" not in body and "fx" not in body, body


async def test_r15_one_quote_raced_by_two_payments_and_a_conversion_is_honoured_once(world: World) -> None:
    await _rate(world, "EUR", "CNY", "7.8")
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    p1 = await world.payment(m, 1_000, "EUR")
    p2 = await world.payment(m, 1_000, "EUR")
    q = (await _offer(world, h, p1))["quote"]
    before = await world.available(h)
    calls = [
        _status(world.client, "POST", f"/v1/wallet/payments/{p1['id']}/pay",
                headers={**h.headers, "Idempotency-Key": "a"}, json={"fx_quote": q}),
        _status(world.client, "POST", f"/v1/wallet/payments/{p2['id']}/pay",
                headers={**h.headers, "Idempotency-Key": "b"}, json={"fx_quote": q}),
        _status(world.client, "POST", "/v1/wallet/conversions",
                headers={**h.headers, "Idempotency-Key": "c"}, json={"quote": q}),
    ]
    results = await asyncio.gather(*calls)
    ok = [r for r in results if r[0] in (200, 201)]
    assert len(ok) == 1, results
    assert all(r[0] in (200, 201, 402, 409) for r in results), results
    won = ok[0][1]
    sold = won["fx"]["from_amount"] if "fx" in won else won["sell_amount"]
    assert await world.available(h) == before - sold, won


async def test_r15_refunds_racing_on_a_converted_payment_never_give_back_more(clean_db: str) -> None:
    """A JPY payment paid from KWD (0 and 3 decimals), refunded by 150 racing refunds of 7 yen: they sum
    to at most the capture and the KWD given back is the running share, rounded down."""
    caps = {"balance_max_minor": 10_000_000, "payment_max_minor": 1_000_000, "daily_max_minor": 1_000_000}
    async with serving(clean_db, make_settings(tiers={"tier4": {"CNY": caps, "KWD": caps, "JPY": caps}})) as client:
        world = await World.create(client)
        await _rate(world, "KWD", "JPY", "480.125")
        m = await world.merchant()
        h = await world.holder(top_up=100_000, currency="KWD")
        p = await world.payment(m, 1_001, "JPY")
        q = (await _offer(world, h, p))["quote"]
        paid = await world.call("POST", f"/v1/wallet/payments/{p['id']}/pay",
                                headers={**h.headers, "Idempotency-Key": "pay"}, json={"fx_quote": q})
        sold, received = paid["fx"]["from_amount"], paid["fx"]["to_amount"]
        results = await asyncio.gather(*(
            _status(world.client, "POST", f"/v1/payments/{p['id']}/refunds",
                    headers={**m.headers, "Idempotency-Key": f"r{i}"}, json={"amount": 7})
            for i in range(150)))
        codes = Counter(s for s, _ in results)
        assert set(codes) <= {201, 400, 409}, codes
        refunded = sum(7 for s, _ in results if s == 201)
        assert refunded == 1_001 // 7 * 7
        wallet = await world.call("GET", "/v1/wallet", headers=h.headers)
        got = {b["currency"]: b["available"] for b in wallet["balances"]}
        assert got["KWD"] == 100_000 - sold + sold * refunded // received, (got, sold, received)
        assert got["JPY"] == received - refunded


def _deadlocks() -> float:
    return REGISTRY.get_sample_value("gateway_db_transaction_retries_total", {"reason": "deadlock"}) or 0.0


async def test_r15_cross_currency_pays_and_refunds_of_other_wallets_never_deadlock(
        world: World, monkeypatch: pytest.MonkeyPatch, clean_db: str) -> None:
    """A pay through a quote posts the conversion (FX position shards) before the capture (merchant
    shards); a refund of a converted payment posts the refund (merchant shards) before the return (FX
    position shards). Of different wallets they share only those hot shards: their order must be one.
    The EUR FX position and the merchant's EUR account take their shard 0 every time here (what their
    32 random shards do now and then); every other hot account takes its other shards in turn, so two
    entries seldom share two hot rows (whose order within one statement is the planner's)."""
    await _rate(world, "EUR", "CNY", "7.8")
    m = await world.merchant()
    holders = list(await asyncio.gather(*(world.holder(top_up=1_000_000) for _ in range(12))))
    payers, refunded = holders[:6], holders[6:]
    paid = []
    for h in refunded:
        for _ in range(3):
            p = await world.payment(m, 1_000, "EUR")
            await world.call("POST", f"/v1/wallet/payments/{p['id']}/pay", headers={**h.headers},
                             json={"fx_quote": (await _offer(world, h, p))["quote"]})
            paid.append(p)
    conn = await asyncpg.connect(clean_db)
    try:
        pinned = {r["id"] for r in await conn.fetch(
            "SELECT id FROM accounts WHERE currency = 'EUR' AND kind IN ('fx_position', 'merchant_receivable')")}
    finally:
        await conn.close()
    assert len(pinned) == 2
    turns = itertools.count()

    def randrange(n: int) -> int:
        account = sys._getframe(1).f_locals.get("account")
        return 0 if account is not None and account.id in pinned else 1 + next(turns) % (n - 1)

    monkeypatch.setattr(ledger_store.random, "randrange", randrange)
    fresh = [(h, await world.payment(m, 1_000, "EUR")) for h in payers for _ in range(3)]
    quotes = [(await _offer(world, h, p))["quote"] for h, p in fresh]
    before = _deadlocks()
    results = await asyncio.gather(
        *(_status(world.client, "POST", f"/v1/wallet/payments/{p['id']}/pay", headers=h.headers,
                  json={"fx_quote": q}) for (h, p), q in zip(fresh, quotes, strict=True)),
        *(_status(world.client, "POST", f"/v1/payments/{p['id']}/refunds", headers=m.headers, json={"amount": a})
          for p in paid for a in (300, 700)))
    failed = Counter(body["error"]["code"] for s, body in results if s not in (200, 201))
    assert not failed and _deadlocks() == before, (failed, f"{_deadlocks() - before:g} deadlocks")


async def test_r15_a_payments_conversion_is_seen_by_its_payer_only(world: World) -> None:
    await _rate(world, "EUR", "CNY", "7.8")
    m = await world.merchant()
    other_m = await world.merchant("Other shop")
    a = await world.holder(top_up=100_000)
    b = await world.holder(top_up=100_000)
    p = await world.payment(m, 1_000, "EUR")
    b_offer = await _offer(world, b, p)
    status, body = await _status(world.client, "POST", f"/v1/wallet/payments/{p['id']}/pay", headers=a.headers,
                                 json={"fx_quote": b_offer["quote"]})
    assert (status, body["error"]["code"]) == (404, "resource_missing"), body
    paid = await world.call("POST", f"/v1/wallet/payments/{p['id']}/pay", headers=a.headers,
                            json={"fx_quote": (await _offer(world, a, p))["quote"]})
    assert paid["fx"]["from_currency"] == "CNY"
    mine = await world.call("GET", f"/v1/payments/{p['id']}", headers=a.headers)
    assert mine["fx"] == paid["fx"]
    status, theirs = await _status(world.client, "GET", f"/v1/payments/{p['id']}", headers=b.headers)
    assert status == 404 or (theirs.get("fx") is None and theirs.get("fx_offer") is None), theirs
    seen = await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers)
    assert "fx" not in seen and "fx_offer" not in seen and "CNY" not in json.dumps(seen), seen
    status, _ = await _status(world.client, "GET", f"/v1/payments/{p['id']}", headers=other_m.headers)
    assert status == 404


async def test_r15_a_campaign_ended_between_decision_and_commit_gives_nothing(world: World) -> None:
    """The one-statement path decides a discount from memory; the campaign ends before the batch runs:
    the item falls back (nothing written) and the general path pays the full amount."""
    svc = world.client.app[SERVICES]
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    await world.pay(h, (await world.payment(m, 100))["id"])  # this process now knows the accounts
    c = await _campaign(world, funded_by="merchant")
    p = await world.payment(m, 1_000)
    pid, holder_id = decode(Kind.PAYMENT, p["id"]), decode(Kind.WALLET_HOLDER, h.id)
    assert pid is not None and holder_id is not None
    async with svc.db.connection() as conn:
        head = await payment_store.payable(conn, pid, holder_id)
    assert head is not None
    accounts = await payment_cases.payer_accounts(svc, holder_id, head["merchant_id"], head["currency"])
    decided = payment_cases.decide_payment(svc, head, holder_id, accounts, channel="wallet")
    assert decided is not None and decided[0].discount is not None
    await world.call("POST", f"/v1/operator/campaigns/{c['id']}/end", headers=world.ops, json={})
    async with svc.db.connection() as conn:
        assert await payment_store.pay_batch(conn, [(decided[0], None)]) == [False]
    paid = await world.pay(h, p["id"])
    assert paid["discount"] is None and await world.available(h) == 10_000 - 100 - 1_000
    got = await world.call("GET", f"/v1/operator/campaigns/{c['id']}", headers=world.ops)
    assert (got["spent"], got["places_taken"]) == (0, 0)


async def test_r15_refunds_of_one_merchant_sharing_two_hot_shards_never_deadlock(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refunds of different wallets' payments to one merchant share its receivable and fee accounts. When
    both land on the same shards (here: shard 0 every time), one statement's two updates must follow the
    lock order, or two refunds take them crosswise."""
    m = await world.merchant()
    holders = list(await asyncio.gather(*(world.holder(top_up=100_000) for _ in range(6))))
    paid = []
    for h in holders:
        for _ in range(4):
            p = await world.payment(m, 1_000)
            await world.pay(h, p["id"])
            paid.append(p)
    monkeypatch.setattr(ledger_store.random, "randrange", lambda n: 0)
    before = _deadlocks()
    results = await asyncio.gather(*(
        _status(world.client, "POST", f"/v1/payments/{p['id']}/refunds", headers=m.headers, json={"amount": a})
        for p in paid for a in (300, 700)))
    failed = Counter(body["error"]["code"] for s, body in results if s != 201)
    assert not failed and _deadlocks() == before, (failed, f"{_deadlocks() - before:g} deadlocks")
