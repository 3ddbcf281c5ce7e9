"""Use cases done in one statement (issue 12): creating and paying a payment.

The answer, the event and the stored idempotent answer are built before the statement runs, from
the rows read just before; the statement applies them only while the state they rest on still holds,
and otherwise writes nothing and the general path decides. These tests pin both halves: what is
built beforehand reads exactly as what the database gives back afterwards, and every guard, when it
no longer holds, leaves the database as it was.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
import pytest

from gateway.api.routing import SERVICES
from gateway.domain.ids import Kind, decode
from gateway.services import payments as payment_cases
from gateway.services.idempotency import AtOnce
from gateway.store import idempotency as keys
from gateway.store import payments as payment_store
from tests.integration.world import Holder, Merchant, World

pytestmark = pytest.mark.asyncio


async def _snapshot(conn: asyncpg.Connection[Any]) -> dict[str, Any]:
    """Everything paying can touch, as text: equal snapshots mean nothing was written."""
    return {
        "payments": await conn.fetchval("SELECT string_agg(p::text, ',' ORDER BY id) FROM payments p"),
        "events": await conn.fetchval("SELECT count(*) FROM events"),
        "entries": await conn.fetchval("SELECT count(*) FROM journal_entries"),
        "postings": await conn.fetchval("SELECT count(*) FROM postings"),
        "balances": await conn.fetchval(
            "SELECT string_agg(account_id || ':' || shard || ':' || posted_minor || ':' || held_minor, ','"
            " ORDER BY account_id, shard) FROM balances"),
        "spend": await conn.fetchval("SELECT string_agg(d::text, ',' ORDER BY holder_id, day) FROM daily_spend d"),
        "keys": await conn.fetchval("SELECT count(*) FROM idempotency_keys"),
    }


def _without(body: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in names}


async def test_answers_built_before_the_write_read_as_the_database_gives_them_back(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=50_000)
    created = await world.call("POST", "/v1/payments", 201, headers={**m.headers, "Idempotency-Key": "c-1"}, json={
        "amount": 1234, "currency": "CNY", "description": "Noodles", "merchant_reference": "order-7",
        "store": m.store, "metadata": {"order_id": "7", "a": "1", "long_key_name": "x", "bb": "2"},
        "return_url": "https://shop.example/return", "capture_method": "automatic"})
    read = await world.call("GET", f"/v1/payments/{created['id']}", headers=m.headers)
    assert created == read  # key order of metadata included: the JSON text compares as the objects do
    assert list(created["metadata"]) == list(read["metadata"])

    paid = await world.call("POST", f"/v1/wallet/payments/{created['id']}/pay", headers=h.headers, json={})
    assert paid == await world.call("GET", f"/v1/payments/{created['id']}", headers=h.headers)
    after = await world.call("GET", f"/v1/payments/{created['id']}", headers=m.headers)
    assert after["status"] == "succeeded" and after["fee"] == 12 and after["channel"] == "wallet"
    events = await world.call("GET", "/v1/events", headers=m.headers, params={"payment": created["id"]})
    by_type = {e["type"]: e["data"]["object"] for e in events["data"]}
    assert _without(by_type["payment.created"], "checkout_url") == _without(read, "checkout_url")
    assert _without(by_type["payment.succeeded"], "checkout_url") == _without(after, "checkout_url")

    manual = await world.payment(m, 800, capture_method="manual")
    held = await world.call("POST", f"/v1/wallet/payments/{manual['id']}/pay", headers=h.headers, json={})
    assert held["status"] == "requires_capture"
    view = await world.call("GET", f"/v1/payments/{manual['id']}", headers=m.headers)
    assert view["amount_capturable"] == 800 and view["authorization_expires_at"] is not None
    events = await world.call("GET", "/v1/events", headers=m.headers, params={"payment": manual["id"]})
    authorized = next(e["data"]["object"] for e in events["data"] if e["type"] == "payment.authorized")
    assert _without(authorized, "checkout_url") == _without(view, "checkout_url")
    assert await world.available(h) == 50_000 - 1234 - 800


async def _prepared(world: World, m: Merchant, h: Holder, amount: int, **extra: Any) -> tuple[AtOnce, uuid.UUID]:
    """The one-statement payment of a new payment, decided now and not yet applied."""
    svc = world.client.app[SERVICES]
    created = await world.payment(m, amount, **extra)
    pid = decode(Kind.PAYMENT, created["id"])
    holder_id = decode(Kind.WALLET_HOLDER, h.id)
    assert pid is not None and holder_id is not None
    async with svc.db.connection() as conn:
        head = await payment_store.payable(conn, pid, holder_id)
    assert head is not None
    accounts = await payment_cases.payer_accounts(svc, holder_id, head["merchant_id"], head["currency"])
    at_once = payment_cases._paid_at_once(svc, head, holder_id, accounts, channel="wallet")
    assert at_once is not None
    return at_once, pid


def _done(scope: str, key: str, at_once: AtOnce) -> keys.Done:
    return keys.Done(scope, key, b"\0" * 32, "POST", "/v1/wallet/payments/x/pay", at_once.status,
                     msgspec.json.encode(at_once.value))


Change = Callable[["asyncpg.Connection[Any]", uuid.UUID, uuid.UUID, str], Awaitable[object]]


async def _metadata_changed(conn: asyncpg.Connection[Any], pid: uuid.UUID, holder: uuid.UUID, merchant: str) -> None:
    await conn.execute("UPDATE payments SET metadata = '{\"k\": \"v\"}', updated_at = clock_timestamp() WHERE id = $1",
                       pid)


async def _canceled(conn: asyncpg.Connection[Any], pid: uuid.UUID, holder: uuid.UUID, merchant: str) -> None:
    await conn.execute("UPDATE payments SET status = 'canceled', updated_at = clock_timestamp() WHERE id = $1", pid)


async def _tier_changed(conn: asyncpg.Connection[Any], pid: uuid.UUID, holder: uuid.UUID, merchant: str) -> None:
    await conn.execute("UPDATE wallet_holders SET tier = CASE WHEN tier = 1 THEN 2 ELSE 1 END WHERE id = $1", holder)


async def _holder_locked(conn: asyncpg.Connection[Any], pid: uuid.UUID, holder: uuid.UUID, merchant: str) -> None:
    await conn.execute("UPDATE wallet_holders SET payments_locked_at = now() WHERE id = $1", holder)


async def _merchant_suspended(conn: asyncpg.Connection[Any], pid: uuid.UUID, holder: uuid.UUID, merchant: str) -> None:
    await conn.execute("UPDATE merchants SET status = 'suspended' WHERE id = $1", decode(Kind.MERCHANT, merchant))


async def _funds_gone(conn: asyncpg.Connection[Any], pid: uuid.UUID, holder: uuid.UUID, merchant: str) -> None:
    await conn.execute(
        "UPDATE balances SET held_minor = posted_minor - 1 WHERE account_id ="
        " (SELECT id FROM accounts WHERE kind = 'wallet' AND owner_id = $1 AND currency = 'CNY')", holder)


@pytest.mark.parametrize("change", [
    _metadata_changed, _canceled, _tier_changed, _holder_locked, _merchant_suspended, _funds_gone,
], ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("capture_method", ["automatic", "manual"])
async def test_a_guard_that_no_longer_holds_writes_nothing(world: World, clean_db: str, change: Change,
                                                           capture_method: str) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    at_once, pid = await _prepared(world, m, h, 700, capture_method=capture_method)
    holder_id = decode(Kind.WALLET_HOLDER, h.id)
    assert holder_id is not None
    conn = await asyncpg.connect(clean_db)
    try:
        await change(conn, pid, holder_id, m.id)
        before = await _snapshot(conn)
        assert await at_once.apply(_done("wallet:x", f"k-{uuid.uuid4()}", at_once)) is False
        assert await at_once.apply(None) is False
        assert await _snapshot(conn) == before
    finally:
        await conn.execute("UPDATE balances SET held_minor = 0 WHERE held_minor > 0 AND account_id ="
                           " (SELECT id FROM accounts WHERE kind = 'wallet' AND owner_id = $1)", holder_id)
        await conn.close()


async def test_the_day_cap_is_a_guard_of_the_statement(world: World, clean_db: str) -> None:
    """Between the decision and the statement the day's total grew: crossing the cap is refused there."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    at_once, pid = await _prepared(world, m, h, 700)
    holder_id = decode(Kind.WALLET_HOLDER, h.id)
    svc = world.client.app[SERVICES]
    conn = await asyncpg.connect(clean_db)
    try:
        tier = await conn.fetchval("SELECT tier FROM wallet_holders WHERE id = $1", holder_id)
        cap = svc.tiers[tier].caps["CNY"].daily_max_minor
        day = svc.local_day(svc.now())
        await conn.execute(
            "INSERT INTO daily_spend (holder_id, currency, day, spent_minor) VALUES ($1, 'CNY', $2, $3)"
            " ON CONFLICT (holder_id, currency, day) DO UPDATE SET spent_minor = EXCLUDED.spent_minor",
            holder_id, day, cap - 699)
        before = await _snapshot(conn)
        assert await at_once.apply(None) is False
        assert await _snapshot(conn) == before
        await conn.execute("UPDATE daily_spend SET spent_minor = $2 WHERE holder_id = $1", holder_id, cap - 700)
        assert await at_once.apply(None) is True  # exactly at the cap is allowed, as the general path allows
        assert await conn.fetchval("SELECT spent_minor FROM daily_spend WHERE holder_id = $1", holder_id) == cap
    finally:
        await conn.close()


async def test_an_existing_key_writes_nothing_and_its_request_gets_the_stored_answer(world: World, clean_db: str) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    at_once, pid = await _prepared(world, m, h, 700)
    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute(
            "INSERT INTO idempotency_keys (principal, key, request_hash, method, path, response_status, response_body)"
            " VALUES ('wallet:x', 'taken', '\\x00', 'POST', '/p', 200, '\\x7b7d')")
        before = await _snapshot(conn)
        assert await at_once.apply(_done("wallet:x", "taken", at_once)) is False
        assert await _snapshot(conn) == before
    finally:
        await conn.close()


async def test_a_refused_statement_falls_back_to_the_general_path_and_its_decline(world: World) -> None:
    """Funds short: the one statement writes nothing, the general path declines and stores that answer
    with its payment.failed event, once; the retry replays it."""
    m = await world.merchant()
    h = await world.holder(top_up=500)
    p = await world.payment(m, 700)
    first = await world.pay(h, p["id"], expect=402, key="short-1")
    assert first["error"]["code"] == "insufficient_funds"
    again = await world.pay(h, p["id"], expect=402, key="short-1")
    assert again == first
    events = await world.call("GET", "/v1/events", headers=m.headers, params={"payment": p["id"]})
    assert [e["type"] for e in events["data"]].count("payment.failed") == 1
    assert (await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers))["status"] == "requires_payment_method"


async def test_concurrent_payments_of_one_wallet_never_overdraw_it(world: World, clean_db: str) -> None:
    """Twelve payments of 300 race from a wallet holding 1,000: exactly three succeed, the rest are
    declined, and the wallet ends at 100 (the invariant checker runs after the test as well)."""
    m = await world.merchant()
    h = await world.holder(top_up=1_000)
    created = [await world.payment(m, 300) for _ in range(12)]
    answers = await asyncio.gather(*(
        world.client.post(f"/v1/wallet/payments/{p['id']}/pay", json={},
                          headers={**h.headers, "Idempotency-Key": f"race-{i}"})
        for i, p in enumerate(created)))
    statuses = sorted(a.status for a in answers)
    assert statuses.count(200) == 3 and statuses.count(402) == 9, statuses
    assert await world.available(h) == 100
