"""Merchant-funded cashback over real HTTP, as an acquirer's merchant offer: at capture the merchant's
receivable pays the cashback into the payer's wallet, two legs of the capture's own entry; a refund's
proportional claw-back goes back to the merchant, never overdrawing a holder who spent it; settlement
deducts it from the merchant's net, so a batch's payout is what the ledger says the merchant is owed.
The fixtures prove every ledger invariant after each test (among them
``merchant_cashback_differs_from_its_capture`` and ``settlement_line_differs_from_its_merchant_postings``)."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
from lxml import etree

from gateway.banksim import Movement, book, camt053
from gateway.domain.ids import Kind, decode
from gateway.store import invariants
from tests.integration.world import Holder, Merchant, World, campaign_window

D0 = datetime.now(UTC).date() - timedelta(days=10)


async def _cashback(world: World, m: Merchant | None, funded_by: str = "merchant", **terms: Any) -> Any:
    body = {"name": f"{funded_by} cashback", "currency": "CNY", "rule": "cashback", "funded_by": funded_by,
            "budget": 1_000_000, **({"merchants": [m.id]} if m is not None else {}), **campaign_window(), **terms}
    return await world.call("POST", "/v1/operator/campaigns", 201, headers=world.ops, json=body)


async def _paid(world: World, m: Merchant, h: Holder, amount: int, **extra: Any) -> tuple[Any, str]:
    p = await world.payment(m, amount, **extra)
    return await world.pay(h, p["id"]), p["id"]


async def _refund(world: World, m: Merchant, pid: str, amount: int | None, key: str | None = None) -> Any:
    headers = {**m.headers, **({"Idempotency-Key": key} if key else {})}
    return await world.call("POST", f"/v1/payments/{pid}/refunds", 201, headers=headers,
                            json={} if amount is None else {"amount": amount})


async def _postings(db: asyncpg.Connection, pid: str) -> list[tuple[str, str, int]]:
    """The payment's entries' postings as (entry kind, account kind, amount), sorted."""
    rows = await db.fetch(
        "SELECT e.kind AS entry, a.kind AS account, p.amount_minor FROM journal_entries e"
        " JOIN postings p ON p.entry_id = e.id JOIN accounts a ON a.id = p.account_id WHERE e.payment_id = $1",
        decode(Kind.PAYMENT, pid))
    return sorted((r["entry"], r["account"], r["amount_minor"]) for r in rows)


async def _promotions_total(db: asyncpg.Connection) -> int:
    total: int = await db.fetchval("SELECT COALESCE(sum(p.amount_minor), 0) FROM postings p"
                                   " JOIN accounts a ON a.id = p.account_id WHERE a.kind = 'promotions'")
    return total


async def test_the_merchant_pays_the_cashback_out_of_its_capture_in_the_captures_entry(
        world: World, db: asyncpg.Connection) -> None:
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=10_000)
    c = await _cashback(world, m, percent_bps=500)
    p = await world.payment(m, 1_000)
    preview = await world.call("GET", f"/v1/payments/{p['id']}", headers=h.headers)
    assert preview["cashback_offer"] == {"campaign": c["id"], "amount": 50, "funded_by": "merchant"}
    paid = await world.pay(h, p["id"])
    assert paid["cashback"] == {"campaign": c["id"], "amount": 50, "funded_by": "merchant", "clawed_back": 0}
    assert await world.available(h) == 10_000 - 1_000 + 50
    assert await world.merchant_total(m) == 1_000 - 10 - 50  # the merchant funds it: captured - fee - cashback
    seen = await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers)
    assert (seen["amount_received"], seen["fee"]) == (1_000, 10)
    assert seen["cashback"] == {"campaign": c["id"], "amount": 50, "funded_by": "merchant", "clawed_back": 0}
    listed = await world.call("GET", "/v1/payments", headers=m.headers)
    assert listed["data"][0]["cashback"]["funded_by"] == "merchant"
    assert await _postings(db, p["id"]) == sorted([  # one entry: the capture's, the cashback two legs of it
        ("capture", "wallet", -1_000), ("capture", "merchant_receivable", 990), ("capture", "fees", 10),
        ("capture", "merchant_receivable", -50), ("capture", "wallet", 50)])
    assert await _promotions_total(db) == 0  # the bank paid nothing
    mine = await world.call("GET", "/v1/wallet/benefits", headers=h.headers)
    assert [(b["kind"], b["amount"], b["funded_by"]) for b in mine["data"]] == [("cashback", 50, "merchant")]
    events = (await world.call("GET", "/v1/events?limit=10", headers=m.headers))["data"]
    succeeded = next(e for e in events if e["type"] == "payment.succeeded")
    assert succeeded["data"]["object"]["cashback"]["funded_by"] == "merchant"
    got = await world.call("GET", f"/v1/operator/campaigns/{c['id']}", headers=world.ops)
    assert (got["spent"], got["places_taken"], got["funded_by"]) == (50, 1, "merchant")


async def test_a_merchant_never_pays_more_cashback_than_its_capture_brings_it(world: World) -> None:
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=10_000)
    await _cashback(world, m, percent_bps=10_000)  # "everything back"
    paid, _ = await _paid(world, m, h, 1_000)
    assert paid["cashback"]["amount"] == 990  # captured - fee: the merchant nets nothing, never less
    assert await world.merchant_total(m) == 0
    assert await world.available(h) == 10_000 - 10


async def test_the_merchants_cashback_never_pays_for_its_own_payment(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=990)
    c = await _cashback(world, m, percent_bps=500)
    p = await world.payment(m, 1_000)
    refused = await world.pay(h, p["id"], 402)  # 990 + the 50 the merchant pays back would cover it: it may not
    assert refused["error"]["code"] == "insufficient_funds"
    assert await world.available(h) == 990 and await world.merchant_total(m) == 0
    got = await world.call("GET", f"/v1/operator/campaigns/{c['id']}", headers=world.ops)
    assert (got["places_taken"], got["spent"]) == (0, 0)
    await world.top_up(h, 10)
    assert (await world.pay(h, p["id"]))["cashback"]["amount"] == 50
    assert await world.available(h) == 50


async def test_a_partial_manual_capture_gets_its_share_and_replays_credit_nothing_more(world: World) -> None:
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    await _cashback(world, m, fixed_amount=300)
    p = await world.payment(m, 1_000, capture_method="manual")
    assert (await world.pay(h, p["id"]))["cashback"] is None  # held, not captured: nothing yet
    headers = {**m.headers, "Idempotency-Key": "cap-1"}
    captured = await world.call("POST", f"/v1/payments/{p['id']}/capture", headers=headers,
                                json={"amount_to_capture": 400})
    assert captured["amount_received"] == 400
    assert captured["cashback"] == {"campaign": captured["cashback"]["campaign"], "amount": 120,
                                    "funded_by": "merchant", "clawed_back": 0}  # 300 * 400 / 1,000
    again = await world.call("POST", f"/v1/payments/{p['id']}/capture", headers=headers,
                             json={"amount_to_capture": 400})
    assert again == captured
    assert await world.available(h) == 10_000 - 400 + 120
    assert await world.merchant_total(m) == 400 - 120


async def test_retried_payments_credit_the_merchants_cashback_once(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    await _cashback(world, m, percent_bps=1_000)
    p = await world.payment(m, 1_000)
    answers = await asyncio.gather(*(world.client.post(f"/v1/wallet/payments/{p['id']}/pay", json={},
                                                       headers={**h.headers, "Idempotency-Key": "pay-once"})
                                     for _ in range(5)))
    assert {a.status for a in answers} <= {200, 409}
    assert (await world.pay(h, p["id"], key="pay-once"))["cashback"]["amount"] == 100
    assert await world.available(h) == 10_000 - 1_000 + 100
    assert await world.merchant_total(m) == 1_000 - 10 - 100


async def test_refunds_give_the_cashback_back_to_the_merchant_even_when_the_holder_spent_it(
        world: World, db: asyncpg.Connection) -> None:
    m = await world.merchant(fee_bps=100)
    elsewhere = await world.merchant("Elsewhere")
    h = await world.holder(top_up=1_000)
    c = await _cashback(world, m, percent_bps=1_000)
    paid, pid = await _paid(world, m, h, 1_000)
    assert paid["cashback"]["amount"] == 100 and await world.available(h) == 100
    await _paid(world, elsewhere, h, 100)  # the cashback is spent: the wallet is empty
    assert await world.available(h) == 0
    first = await _refund(world, m, pid, 333, key="r-1")
    assert (first["amount"], first["fee_returned"], first["cashback_clawed_back"]) == (333, 3, 33)
    assert await _refund(world, m, pid, 333, key="r-1") == first  # a replay: the same refund, once
    assert await world.available(h) == 333 - 33
    assert await world.merchant_total(m) == (1_000 - 10 - 100) - (333 - 3 - 33)
    rest = await _refund(world, m, pid, None)
    assert (rest["amount"], rest["fee_returned"], rest["cashback_clawed_back"]) == (667, 7, 67)
    assert await world.available(h) == 1_000 - 100  # what it paid, less the cashback it had
    assert await world.merchant_total(m) == 0  # all of it back: the merchant is owed nothing
    seen = await world.call("GET", f"/v1/payments/{pid}", headers=m.headers)
    assert seen["cashback"] == {"campaign": c["id"], "amount": 100, "funded_by": "merchant", "clawed_back": 100}
    refund_legs = [x for x in await _postings(db, pid) if x[0] == "refund"]
    assert refund_legs == sorted([  # the claw-back is the merchant's own leg; the wallet gets the rest
        ("refund", "merchant_receivable", -330), ("refund", "fees", -3), ("refund", "wallet", 300),
        ("refund", "merchant_receivable", 33),
        ("refund", "merchant_receivable", -660), ("refund", "fees", -7), ("refund", "wallet", 600),
        ("refund", "merchant_receivable", 67)])
    assert await _promotions_total(db) == 0
    got = await world.call("GET", f"/v1/operator/campaigns/{c['id']}", headers=world.ops)
    assert (got["spent"], got["clawed_back"]) == (100, 100)


async def test_partial_refunds_racing_take_back_exactly_the_cashback(world: World) -> None:
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=10_000)
    await _cashback(world, m, percent_bps=700)
    _, pid = await _paid(world, m, h, 1_000)  # cashback 70, fee 10
    refunds = await asyncio.gather(*(world.client.post(f"/v1/payments/{pid}/refunds", json={"amount": 100},
                                                       headers={**m.headers, "Idempotency-Key": f"race-{n}"})
                                     for n in range(12)))
    assert sorted(r.status for r in refunds) == [201] * 10 + [409] * 2  # ten fit in what was captured
    bodies = [await r.json() for r in refunds if r.status == 201]
    assert sum(b["cashback_clawed_back"] for b in bodies) == 70 and sum(b["fee_returned"] for b in bodies) == 10
    assert all((b["cashback_clawed_back"], b["fee_returned"]) == (7, 1) for b in bodies)
    assert await world.merchant_total(m) == 0
    assert await world.available(h) == 10_000  # paid 1,000, got 70, refunded 1,000 less the 70


async def test_a_first_payment_gift_and_the_merchants_cashback_go_with_one_capture(
        world: World, db: asyncpg.Connection) -> None:
    m = await world.merchant(fee_bps=0)
    await world.call("POST", "/v1/operator/campaigns", 201, headers=world.ops, json={
        "name": "welcome", "currency": "CNY", "rule": "gift_first_payment", "funded_by": "bank", "fixed_amount": 300,
        "budget": 10_000, **campaign_window()})
    await _cashback(world, m, percent_bps=1_000)
    h = await world.holder(top_up=1_000)
    paid, pid = await _paid(world, m, h, 1_000)  # exactly the wallet: neither credit pays for it
    assert paid["cashback"]["amount"] == 100
    assert await world.available(h) == 100 + 300
    assert await world.merchant_total(m) == 900
    assert await _postings(db, pid) == sorted([
        ("capture", "wallet", -1_000), ("capture", "merchant_receivable", 1_000),
        ("capture", "merchant_receivable", -100), ("capture", "wallet", 100),
        ("gift", "promotions", -300), ("gift", "wallet", 300)])


async def _backdate(db: asyncpg.Connection, when: datetime, *, payment: str | None = None,
                    refund: str | None = None) -> None:
    if payment is not None:
        await db.execute("UPDATE journal_entries SET created_at = $2 WHERE payment_id = $1 AND kind = 'capture'",
                         decode(Kind.PAYMENT, payment), when)
    if refund is not None:
        await db.execute("UPDATE journal_entries SET created_at = $2 WHERE refund_id = $1",
                         decode(Kind.REFUND, refund), when)


def _at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


async def test_a_batch_deducts_the_merchants_cashback_and_pays_what_the_ledger_owes(
        world: World, db: asyncpg.Connection) -> None:
    """One day: a capture with merchant-funded cashback, a partial refund of it, and a capture with the
    bank's cashback (which the merchant does not pay); the next day the rest is refunded (the clawback
    comes back to the merchant, the net is negative and carried). Each batch's figures, its detail
    report, the run's totals and files agree, and its payout is what its entries posted to the
    merchant's receivable; the payout file instructs it and the bank statement reconciles it."""
    m = await world.merchant(fee_bps=100)
    await world.call("POST", f"/v1/operator/merchants/{m.id}/payout_account", 201, headers=world.ops,
                     json={"holder_name": "Best Noodles Ltd", "bank_name": "ICBC", "account_number": "6222020200998877"})
    h = await world.holder(top_up=100_000)
    mine = await _cashback(world, m, percent_bps=500)
    _, p1 = await _paid(world, m, h, 10_000)  # fee 100, cashback 500 (the merchant's)
    await _backdate(db, _at(D0, 9), payment=p1)
    r1 = await _refund(world, m, p1, 4_000)  # fee back 40, cashback back 200
    assert r1["cashback_clawed_back"] == 200
    await _backdate(db, _at(D0, 12), refund=r1["id"])
    await world.call("POST", f"/v1/operator/campaigns/{mine['id']}/end", headers=world.ops, json={})
    await _cashback(world, m, "bank", percent_bps=500)
    paid2, p2 = await _paid(world, m, h, 3_000)  # fee 30, cashback 150 (the bank's)
    assert paid2["cashback"]["funded_by"] == "bank"
    await _backdate(db, _at(D0, 15), payment=p2)
    r2 = await _refund(world, m, p1, None)  # the rest: 6,000, fee back 60, cashback back 300
    await _backdate(db, _at(D0 + timedelta(days=1), 10), refund=r2["id"])

    run = await world.call("POST", "/v1/operator/settlement_runs", headers=world.ops, json={"date": D0.isoformat()})
    await world.call("POST", "/v1/operator/settlement_runs", headers=world.ops,
                     json={"date": (D0 + timedelta(days=1)).isoformat()})
    got = sorted((await world.call("GET", "/v1/settlement_batches", headers=m.headers))["data"],
                 key=lambda b: b["business_date"])
    figures = [(b["captured"], b["refunded"], b["fee"], b["cashback"], b["carry_in"], b["net"], b["payout"],
                b["carry_out"]) for b in got]
    assert figures == [
        (13_000, 4_000, 100 + 30 - 40, 500 - 200, 0, 13_000 - 4_000 - 90 - 300, 8_610, 0),
        (0, 6_000, -60, -300, 0, -6_000 + 60 + 300, 0, -5_640),
    ]
    assert [t["cashback"] for t in run["totals"]] == [300]
    for batch in got:  # what the ledger says the merchant is owed, entry by entry
        posted = await db.fetchval(
            "SELECT COALESCE(sum(p.amount_minor), 0) FROM journal_entries e JOIN postings p ON p.entry_id = e.id"
            " JOIN accounts a ON a.id = p.account_id WHERE e.batch_id = $1 AND e.kind IN ('capture', 'refund')"
            " AND a.kind = 'merchant_receivable'", decode(Kind.SETTLEMENT_BATCH, batch["id"]))
        assert posted == batch["net"] - batch["carry_in"]
    payouts = (await world.call("GET", "/v1/payouts", headers=m.headers))["data"]
    assert [p["amount"] for p in payouts] == [8_610]
    report = await world.client.get(f"/v1/settlement_batches/{got[0]['id']}/report.json", headers=m.headers)
    lines = json.loads(await report.read())["lines"]
    assert [(x["type"], x["gross"], x["fee"], x["cashback"], x["net"]) for x in lines] == [
        ("capture", 10_000, 100, 500, 9_400), ("refund", -4_000, -40, -200, -3_760), ("capture", 3_000, 30, 0, 2_970)]
    summary = await world.client.get(f"/v1/operator/settlement_runs/{run['id']}/files/merchants/{m.id}/summary.csv",
                                     headers=world.ops)
    assert summary.status == 200
    (row,) = list(csv.DictReader(io.StringIO((await summary.read()).decode())))
    assert (row["cashback"], row["net"], row["payout"]) == ("300", "8610", "8610")
    pain = await world.client.get(f"/v1/operator/settlement_runs/{run['id']}/files/pain001.xml", headers=world.ops)
    amounts = etree.fromstring(await pain.read()).findall(".//{*}InstdAmt")
    assert [a.text for a in amounts] == ["86.10"]
    await world.call("POST", f"/v1/operator/payouts/{payouts[0]['id']}/mark_paid", headers=world.ops, json={})
    statement = camt053(book([Movement(payouts[0]["reference"], "DBIT", 8_610,
                                       date.fromisoformat(payouts[0]["execution_date"]))]), statement_id="STMT-CB-1")
    imported = await world.call("POST", "/v1/operator/bank_statements", 201, headers=world.ops,
                                json={"content_base64": base64.b64encode(statement).decode()})
    assert imported["matched"] == {"reference": 1} and imported["exceptions"] == {}, imported
    reconciled = await world.call("GET", f"/v1/settlement_batches/{got[0]['id']}", headers=m.headers)
    assert reconciled["status"] == "reconciled"
    assert await world.merchant_total(m) == -5_640  # the carried claw-back, owed by the merchant


async def test_the_invariants_catch_a_merchant_cashback_posted_or_recorded_wrong(
        world: World, db: asyncpg.Connection) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    await _cashback(world, m, percent_bps=1_000)
    _, pid = await _paid(world, m, h, 1_000)
    await _refund(world, m, pid, 500)
    payment = decode(Kind.PAYMENT, pid)

    async def broken(break_sql: str, mend_sql: str) -> set[str]:
        await db.execute(break_sql, payment)
        found = {name for name, rows in (await invariants.check(db)).items() if rows}
        await db.execute(mend_sql, payment)
        assert not any(rows for rows in (await invariants.check(db)).values())
        return found

    assert await broken("UPDATE payments SET cashback_minor = cashback_minor + 1 WHERE id = $1",
                        "UPDATE payments SET cashback_minor = cashback_minor - 1 WHERE id = $1") == {
        "merchant_cashback_differs_from_its_capture", "settlement_line_differs_from_its_merchant_postings",
        "merchant_receivable_differs_from_unsettled", "campaign_over_budget_or_places"}
    # Said to be the bank's while the merchant paid it: the promotions account and the cashback entry disagree.
    assert await broken("UPDATE payments SET cashback_funded_by = 'bank' WHERE id = $1",
                        "UPDATE payments SET cashback_funded_by = 'merchant' WHERE id = $1") == {
        "merchant_cashback_differs_from_its_capture", "settlement_line_differs_from_its_merchant_postings",
        "merchant_receivable_differs_from_unsettled", "cashback_differs_from_its_entry",
        "promotions_account_differs_from_benefits", "payment_promotion_postings"}
    # A refund's claw-back recorded but not given back to the merchant in its entry.
    assert await broken(
        "UPDATE postings SET amount_minor = amount_minor - 1 WHERE entry_id = (SELECT id FROM journal_entries"
        " WHERE payment_id = $1 AND kind = 'refund') AND amount_minor > 0 AND account_id IN"
        " (SELECT id FROM accounts WHERE kind = 'merchant_receivable')",
        "UPDATE postings SET amount_minor = amount_minor + 1 WHERE entry_id = (SELECT id FROM journal_entries"
        " WHERE payment_id = $1 AND kind = 'refund') AND amount_minor > 0 AND account_id IN"
        " (SELECT id FROM accounts WHERE kind = 'merchant_receivable')") >= {
        "merchant_cashback_differs_from_its_capture", "settlement_line_differs_from_its_merchant_postings",
        "entry_unbalanced"}


async def test_gifts_stay_the_banks_and_cashback_may_be_either(world: World) -> None:
    for rule in ("gift_first_payment", "gift_registration"):
        refused = await world.call("POST", "/v1/operator/campaigns", 400, headers=world.ops, json={
            "name": "g", "currency": "CNY", "rule": rule, "funded_by": "merchant", "fixed_amount": 100,
            "budget": 1_000, **campaign_window()})
        assert (refused["error"]["code"], refused["error"]["param"]) == ("invalid_funded_by", "funded_by")
    created = await _cashback(world, None, percent_bps=100)
    assert (created["rule"], created["funded_by"], created["merchants"]) == ("cashback", "merchant", [])
