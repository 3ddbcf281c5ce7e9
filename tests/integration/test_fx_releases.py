"""A converted hold released (cancelled, reversed, expired by the worker, captured for less) converts back
at the payment's own conversion's rate, in the release's transaction, over real HTTP and PostgreSQL.

What the holder never spent comes back in the currency it paid from: the released units of the payment's
currency are sold back through the same running totals, rounded down, as the refunds' returns
(gateway/domain/fx_payments.py), so releases and refunds together never give back more than the
conversion took. Every test ends with the ledger invariant checker (the ``serving`` fixture):
``payment_conversion_differs_from_its_payment`` ties each return to the refund or release it gives back.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import asyncpg

from gateway.domain.fx_payments import share
from gateway.domain.ids import Kind, decode
from gateway.store import invariants
from tests.conftest import make_settings
from tests.integration.conftest import serving
from tests.integration.test_fx_payments import _balances, _expected, _pay, _rate, _refund
from tests.integration.world import Holder, Merchant, World

KWD_TIERS = {"tier4": {
    "CNY": {"balance_max_minor": 10_000_000, "payment_max_minor": 200_000, "daily_max_minor": 500_000},
    "KWD": {"balance_max_minor": 1_000_000, "payment_max_minor": 1_000_000, "daily_max_minor": 1_000_000},
}}


async def _held(world: World, m: Merchant, h: Holder, amount: int, cur: str) -> tuple[str, Any]:
    """A manual-capture payment of ``amount`` in ``cur``, authorised through the preview's quote: its id and fx."""
    p = await world.payment(m, amount, cur, capture_method="manual")
    offer = (await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers))["fx_offer"]
    paid = await _pay(world, h, p["id"], offer["quote"])
    assert paid["status"] == "requires_capture"
    return str(p["id"]), paid["fx"]


async def _conversion(db_url: str, payment_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(db_url)
    try:
        row: asyncpg.Record = await conn.fetchrow(
            "SELECT sell_minor, receive_minor, fee_minor, returned_minor, returned_source_minor, returned_fee_minor"
            " FROM conversions WHERE payment_id = $1", decode(Kind.PAYMENT, payment_id))
    finally:
        await conn.close()
    return row


async def _returns(world: World, h: Holder, cur: str) -> list[Any]:
    history = await world.call("GET", f"/v1/wallet/transactions?currency={cur}&limit=100", headers=h.headers)
    return [t for t in history["data"] if t["kind"] == "conversion_return"]


def _exact_amount(source: str, target: str, rate: str, base: str, spread_bps: int) -> int:
    """An amount whose least sale receives exactly it (no excess): a full release then gives back every unit sold."""
    return next(a for a in range(1_000, 1_200) if _expected(source, target, rate, base, spread_bps, a).receive_minor == a)


async def test_a_cancelled_converted_hold_comes_back_whole_at_the_original_rate(world: World, clean_db: str) -> None:
    await _rate(world, "EUR", "CNY", "7.8", 30)
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    amount = _exact_amount("CNY", "EUR", "7.8", "EUR", 30)
    pid, fx = await _held(world, m, h, amount, "EUR")
    sell, receive, fee = fx["from_amount"], fx["to_amount"], fx["fee"]
    assert receive == amount
    assert await _balances(world, h) == {"CNY": (100_000 - sell, 0), "EUR": (amount, amount)}
    await _rate(world, "EUR", "CNY", "3.9", 0)  # the euro halves: the release still converts back at the payment's rate
    key = {**m.headers, "Idempotency-Key": "cancel-fx-1"}
    cancelled = await world.call("POST", f"/v1/payments/{pid}/cancel", headers=key, json={})
    assert cancelled["status"] == "canceled"
    # Nothing was spent: every fen sold comes back, the fee with it, and the euro wallet is empty again.
    assert await _balances(world, h) == {"CNY": (100_000, 0), "EUR": (0, 0)}
    c = await _conversion(clean_db, pid)
    assert (c["returned_minor"], c["returned_source_minor"], c["returned_fee_minor"]) == (receive, sell, fee)
    # The same key again: the stored answer, nothing converted twice.
    assert await world.call("POST", f"/v1/payments/{pid}/cancel", headers=key, json={}) == cancelled
    again = await world.call("POST", f"/v1/payments/{pid}/cancel", 409, headers=m.headers, json={})
    assert again["error"]["code"] == "payment_not_cancelable"
    assert await _balances(world, h) == {"CNY": (100_000, 0), "EUR": (0, 0)}
    backs = await _returns(world, h, "CNY")
    assert [(t["amount"], t["payment"], t["refund"], t["conversion"]) for t in backs] == [
        (sell, pid, None, fx["conversion"])]


async def test_a_reversed_hold_and_the_excess_the_quote_bought(world: World) -> None:
    """A quote buying a little more than the amount: the release gives back the amount's share of the sale,
    the excess stays the holder's in the payment's currency (as a full refund leaves it)."""
    await _rate(world, "EUR", "CNY", "7.8", 30)
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    pid, fx = await _held(world, m, h, 1_250, "EUR")
    sell, receive = fx["from_amount"], fx["to_amount"]
    excess = receive - 1_250
    reversed_ = await world.call("POST", f"/v1/payments/{pid}/reverse", headers=m.headers, json={})
    assert reversed_["status"] == "canceled"
    back = share(sell, 1_250, receive)
    assert back <= sell and (excess > 0 or back == sell)
    assert await _balances(world, h) == {"CNY": (100_000 - sell + back, 0), "EUR": (excess, 0)}


async def test_a_converted_hold_expired_by_the_worker_converts_back(clean_db: str) -> None:
    """The expiry worker's batch (one transaction): two converted holds of one holder, one of another holder,
    and a hold paid in the wallet's own currency, all lapsed; each converted one comes back at its own rate."""
    async with serving(clean_db, make_settings(workers={"interval_s": 0.2}), workers=True) as client:
        world = await World.create(client)
        await _rate(world, "EUR", "CNY", "7.8", 30)
        await _rate(world, "CNY", "JPY", "21.05")
        m = await world.merchant()
        h = await world.holder(top_up=100_000)
        other = await world.holder(top_up=100_000)
        await world.top_up(other, 2_000, "JPY")
        held = [await _held(world, m, h, 1_000, "EUR"), await _held(world, m, h, 5_000, "JPY"),
                await _held(world, m, other, 3_000, "EUR")]
        own = await world.payment(m, 1_500, "JPY", capture_method="manual")
        assert (await _pay(world, other, own["id"], None))["status"] == "requires_capture"
        conn = await asyncpg.connect(clean_db)
        try:
            await conn.execute("UPDATE payments SET authorization_expires_at = now() - interval '1 second'"
                               " WHERE status = 'requires_capture'")
        finally:
            await conn.close()
        ids = [pid for pid, _ in held] + [own["id"]]
        for _ in range(100):
            statuses = [(await world.call("GET", f"/v1/payments/{pid}", headers=m.headers))["status"] for pid in ids]
            if set(statuses) == {"expired"}:
                break
            await asyncio.sleep(0.1)
        assert set(statuses) == {"expired"}, statuses
        (_, eur), (_, jpy), (_, eur2) = held
        assert await _balances(world, h) == {
            "CNY": (100_000 - eur["from_amount"] + share(eur["from_amount"], 1_000, eur["to_amount"])
                    - jpy["from_amount"] + share(jpy["from_amount"], 5_000, jpy["to_amount"]), 0),
            "EUR": (eur["to_amount"] - 1_000, 0), "JPY": (jpy["to_amount"] - 5_000, 0)}
        assert await _balances(world, other) == {
            "CNY": (100_000 - eur2["from_amount"] + share(eur2["from_amount"], 3_000, eur2["to_amount"]), 0),
            "EUR": (eur2["to_amount"] - 3_000, 0), "JPY": (2_000, 0)}
        events = await world.call("GET", "/v1/events?type=payment.expired", headers=m.headers)
        assert len(events["data"]) == 4


async def test_a_capture_after_the_authorisation_lapsed_expires_and_converts_back(world: World, clean_db: str) -> None:
    await _rate(world, "EUR", "CNY", "7.8", 30)
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    pid, fx = await _held(world, m, h, 800, "EUR")
    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute("UPDATE payments SET authorization_expires_at = now() - interval '1 second' WHERE id = $1",
                           decode(Kind.PAYMENT, pid))
    finally:
        await conn.close()
    key = {**m.headers, "Idempotency-Key": "late-capture-1"}
    late = await world.call("POST", f"/v1/payments/{pid}/capture", 409, headers=key, json={})
    assert late["error"]["code"] == "authorization_expired"
    assert await world.call("POST", f"/v1/payments/{pid}/capture", 409, headers=key, json={}) == late
    sell, receive = fx["from_amount"], fx["to_amount"]
    assert await _balances(world, h) == {"CNY": (100_000 - sell + share(sell, 800, receive), 0),
                                         "EUR": (receive - 800, 0)}
    assert (await world.call("GET", f"/v1/payments/{pid}", headers=m.headers))["status"] == "expired"


async def test_a_partial_capture_then_refunds_of_the_rest_in_yen(world: World, clean_db: str) -> None:
    await _rate(world, "CNY", "JPY", "21.05")
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    pid, fx = await _held(world, m, h, 10_000, "JPY")
    sell, receive = fx["from_amount"], fx["to_amount"]
    excess = receive - 10_000
    key = {**m.headers, "Idempotency-Key": "capture-fx-1"}
    captured = await world.call("POST", f"/v1/payments/{pid}/capture", headers=key, json={"amount_to_capture": 6_000})
    assert captured["status"] == "succeeded"
    # The 4,000 yen never taken come back in yuan at once, at the payment's rate.
    assert await _balances(world, h) == {"CNY": (100_000 - sell + share(sell, 4_000, receive), 0), "JPY": (excess, 0)}
    assert await world.call("POST", f"/v1/payments/{pid}/capture", headers=key,
                            json={"amount_to_capture": 6_000}) == captured
    await _refund(world, m, pid, 2_500)
    assert (await _balances(world, h))["CNY"] == (100_000 - sell + share(sell, 6_500, receive), 0)
    await _refund(world, m, pid)  # the rest: everything the payment took is back, as if never converted but the excess
    assert await _balances(world, h) == {"CNY": (100_000 - sell + share(sell, 10_000, receive), 0), "JPY": (excess, 0)}
    c = await _conversion(clean_db, pid)
    assert c["returned_minor"] == 10_000 and c["returned_source_minor"] == share(sell, 10_000, receive)
    assert c["returned_fee_minor"] == share(fx["fee"], 10_000, receive)
    backs = await _returns(world, h, "CNY")
    assert sorted(t["amount"] for t in backs) == sorted([
        share(sell, 4_000, receive), share(sell, 6_500, receive) - share(sell, 4_000, receive),
        share(sell, 10_000, receive) - share(sell, 6_500, receive)])
    assert Counter(t["refund"] is None for t in backs) == Counter({True: 1, False: 2})


async def test_kwd_releases_round_down_and_catch_up(clean_db: str) -> None:
    """A fils buys 2.35 fen: a release of one fen gives back no fils yet; the running total catches up."""
    async with serving(clean_db, make_settings(tiers=KWD_TIERS)) as client:
        world = await World.create(client)
        await _rate(world, "KWD", "CNY", "23.5")
        m = await world.merchant()
        h = await world.holder(top_up=10_000, currency="KWD")
        pid, fx = await _held(world, m, h, 10_000, "CNY")
        assert (fx["from_amount"], fx["to_amount"], fx["fee"]) == (4_265, 10_001, 21)
        await world.call("POST", f"/v1/payments/{pid}/capture", headers=m.headers, json={"amount_to_capture": 9_999})
        # 1 fen released and sold back, for 0 fils yet (as a refund of 1 fen): the running total catches up later.
        assert await _balances(world, h) == {"KWD": (10_000 - 4_265, 0), "CNY": (1, 0)}
        c = await _conversion(clean_db, pid)
        assert (c["returned_minor"], c["returned_source_minor"], c["returned_fee_minor"]) == (1, 0, 0)
        await _refund(world, m, pid, 2)  # 3 fen in all: 1 fils
        assert (await _balances(world, h))["KWD"] == (10_000 - 4_265 + 1, 0)
        await _refund(world, m, pid)
        assert await _balances(world, h) == {"KWD": (10_000 - 1, 0), "CNY": (1, 0)}  # floor(4265 * 10000 / 10001)
        c = await _conversion(clean_db, pid)
        assert (c["returned_minor"], c["returned_source_minor"], c["returned_fee_minor"]) == (10_000, 4_264, 20)
        # A whole KWD hold cancelled: the same share as a full refund.
        pid2, _ = await _held(world, m, h, 10_000, "CNY")
        await world.call("POST", f"/v1/payments/{pid2}/cancel", headers=m.headers, json={})
        assert (await _balances(world, h))["KWD"] == (10_000 - 2, 0)


async def test_cancel_and_capture_raced_on_one_converted_hold(world: World) -> None:
    await _rate(world, "EUR", "CNY", "7.8", 30)
    m = await world.merchant()
    h = await world.holder(top_up=200_000)
    for _ in range(4):
        before = (await _balances(world, h))["CNY"][0]
        pid, fx = await _held(world, m, h, 1_000, "EUR")
        sell, receive = fx["from_amount"], fx["to_amount"]
        cancel, capture = await asyncio.gather(
            world.client.post(f"/v1/payments/{pid}/cancel", headers=m.headers, json={}),
            world.client.post(f"/v1/payments/{pid}/capture", headers=m.headers, json={"amount_to_capture": 400}))
        assert sorted([cancel.status, capture.status]) == [200, 409]
        status = (await world.call("GET", f"/v1/payments/{pid}", headers=m.headers))["status"]
        released = 1_000 if status == "canceled" else 600
        assert (await _balances(world, h))["CNY"][0] == before - sell + share(sell, released, receive)


async def test_concurrent_partial_refunds_after_a_partial_capture(world: World, clean_db: str) -> None:
    await _rate(world, "CNY", "JPY", "21.05")
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    pid, fx = await _held(world, m, h, 9_000, "JPY")
    sell, receive = fx["from_amount"], fx["to_amount"]
    await world.call("POST", f"/v1/payments/{pid}/capture", headers=m.headers, json={"amount_to_capture": 5_000})
    answers = await asyncio.gather(*(
        world.client.post(f"/v1/payments/{pid}/refunds", headers={**m.headers, "Idempotency-Key": f"r-{i}"},
                          json={"amount": 700}) for i in range(8)))
    outcomes = Counter(a.status for a in answers)
    assert outcomes == Counter({201: 7, 400: 1}), outcomes  # 7 x 700 = 4,900 of the 5,000 captured
    c = await _conversion(clean_db, pid)
    assert c["returned_minor"] == 4_000 + 4_900
    assert (await _balances(world, h))["CNY"] == (100_000 - sell + share(sell, 8_900, receive), 0)
    await _refund(world, m, pid)  # the last 100 yen: the conversion is given back exactly as far as it was taken
    assert (await _balances(world, h))["CNY"] == (100_000 - sell + share(sell, 9_000, receive), 0)


async def _undo(conn: asyncpg.Connection, entry_id: int) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    """The return entry ``entry_id`` taken out of the ledger whole (entry, postings, balances, the conversion's
    totals): the ledger as the code before releases converted back left it. Returns the entry and postings."""
    async with conn.transaction():
        postings = await conn.fetch("DELETE FROM postings WHERE entry_id = $1 RETURNING *", entry_id)
        for p in postings:
            await conn.execute("UPDATE balances SET posted_minor = posted_minor - $2 WHERE account_id = $1"
                               " AND shard = (SELECT min(shard) FROM balances WHERE account_id = $1)",
                               p["account_id"], p["amount_minor"])
        await conn.execute("UPDATE conversions SET returned_minor = 0, returned_source_minor = 0,"
                           " returned_fee_minor = 0 WHERE id = (SELECT conversion_id FROM journal_entries WHERE id = $1)",
                           entry_id)
        entry = await conn.fetchrow("DELETE FROM journal_entries WHERE id = $1 RETURNING *", entry_id)
    return entry, postings


async def test_the_invariants_catch_a_release_not_converted_back(world: World, clean_db: str) -> None:
    await _rate(world, "EUR", "CNY", "7.8", 30)
    m = await world.merchant()
    h = await world.holder(top_up=100_000)
    pid, _ = await _held(world, m, h, 1_000, "EUR")
    await world.call("POST", f"/v1/payments/{pid}/cancel", headers=m.headers, json={})
    conn = await asyncpg.connect(clean_db)
    try:
        entry = await conn.fetchrow("SELECT id, conversion_id FROM journal_entries WHERE kind = 'conversion_return'")
        c = await conn.fetchrow("SELECT * FROM conversions WHERE id = $1", entry["conversion_id"])

        async def broken() -> set[str]:
            return {name for name, rows in (await invariants.check(conn)).items() if rows}

        # The release names no payment: it is no refund's and no release's.
        await conn.execute("UPDATE journal_entries SET payment_id = NULL WHERE id = $1", entry["id"])
        unnamed = await broken()
        await conn.execute("UPDATE journal_entries SET payment_id = $2 WHERE id = $1", entry["id"], c["payment_id"])
        # The release not converted back at all (what a cancel did before): the ledger balances, yet it is caught.
        gone, postings = await _undo(conn, entry["id"])
        missing = await broken()
        async with conn.transaction():
            await conn.execute("INSERT INTO journal_entries SELECT * FROM jsonb_populate_record(NULL::journal_entries, $1)",
                               json.dumps({k: str(v) if v is not None else None for k, v in dict(gone).items()}))
            for p in postings:
                await conn.execute("INSERT INTO postings (id, entry_id, account_id, currency, amount_minor, created_at)"
                                   " VALUES ($1, $2, $3, $4, $5, $6)", p["id"], p["entry_id"], p["account_id"],
                                   p["currency"], p["amount_minor"], p["created_at"])
                await conn.execute("UPDATE balances SET posted_minor = posted_minor + $2 WHERE account_id = $1"
                                   " AND shard = (SELECT min(shard) FROM balances WHERE account_id = $1)",
                                   p["account_id"], p["amount_minor"])
            await conn.execute("UPDATE conversions SET returned_minor = $2, returned_source_minor = $3,"
                               " returned_fee_minor = $4 WHERE id = $1", c["id"], c["returned_minor"],
                               c["returned_source_minor"], c["returned_fee_minor"])
        # A release giving back more than the hold (the excess too): the totals are the floor formula's, yet caught.
        await conn.execute("UPDATE payments SET captured_minor = 1 WHERE id = $1", c["payment_id"])
        more = await broken()
        await conn.execute("UPDATE payments SET captured_minor = 0 WHERE id = $1", c["payment_id"])
        assert await broken() == set()
    finally:
        await conn.close()
    assert unnamed == {"payment_conversion_differs_from_its_payment"}
    assert missing == {"payment_conversion_differs_from_its_payment"}
    assert "payment_conversion_differs_from_its_payment" in more
