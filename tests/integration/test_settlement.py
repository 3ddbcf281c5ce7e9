"""Daily settlement over several days: time zones, fees, refunds across days, carry-over, late and racing
captures, re-runs, payouts, tenancy and the run's files. The ledger invariants are proven after each test."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from lxml import etree

from gateway.domain.ids import Kind, decode
from gateway.render import settlement_files as files
from gateway.services import settlement, tenants
from gateway.services.context import Services
from gateway.store import invariants
from tests.conftest import make_settings
from tests.integration.world import Holder, Merchant, World, auth

TODAY = datetime.now(UTC).date()
D0 = TODAY - timedelta(days=10)


def at(day: date, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=UTC)


@pytest.fixture
async def svc(client: TestClient) -> AsyncIterator[Services]:
    services = await Services.start(make_settings())
    yield services
    await services.stop()


async def configure(world: World, m: Merchant, **settings: Any) -> Any:
    return await world.call("POST", f"/v1/operator/merchants/{m.id}/settlement", headers=world.ops, json=settings)


async def captured(world: World, db: asyncpg.Connection, m: Merchant, h: Holder, amount: int,
                   when: datetime) -> str:
    payment = await world.payment(m, amount)
    await world.pay(h, payment["id"])
    await db.execute("UPDATE journal_entries SET created_at = $2 WHERE payment_id = $1 AND kind = 'capture'",
                     decode(Kind.PAYMENT, payment["id"]), when)
    return str(payment["id"])


async def refunded(world: World, db: asyncpg.Connection, m: Merchant, payment_id: str, amount: int,
                   when: datetime) -> None:
    refund = await world.call("POST", f"/v1/payments/{payment_id}/refunds", 201, headers=m.headers,
                              json={"amount": amount})
    await db.execute("UPDATE journal_entries SET created_at = $2 WHERE refund_id = $1",
                     decode(Kind.REFUND, refund["id"]), when)


async def run(world: World, day: date, m: Merchant | None = None, key: str | None = None) -> Any:
    headers = dict(world.ops)
    if key:
        headers["Idempotency-Key"] = key
    body: dict[str, str] = {"date": day.isoformat()}
    if m is not None:
        body["merchant"] = m.id
    return await world.call("POST", "/v1/operator/settlement_runs", headers=headers, json=body)


async def batches(world: World, m: Merchant) -> list[Any]:
    found = await world.call("GET", "/v1/settlement_batches?limit=100", headers=m.headers)
    return sorted(found["data"], key=lambda b: b["business_date"])


async def test_days_in_shanghai_with_fees_refunds_across_days_and_carry_over(world: World,
                                                                            db: asyncpg.Connection) -> None:
    m = await world.merchant(fee_bps=100)
    view = await configure(world, m, timezone="Asia/Shanghai", settlement_cutoff="00:00", fee_fixed=5)
    assert (view["timezone"], view["settlement_cutoff"], view["fee_fixed"]) == ("Asia/Shanghai", "00:00:00", 5)
    h = await world.holder(top_up=1_000_000)
    # Shanghai's day D ends at 16:00 UTC on D.
    p1 = await captured(world, db, m, h, 10_000, at(D0, 10))  # fee 100 + 5
    p2 = await captured(world, db, m, h, 5_000, at(D0, 16))  # at the cutoff: the next day; fee 50 + 5
    await refunded(world, db, m, p1, 4_000, at(D0 + timedelta(days=1), 12))  # fee back floor(105 * 0.4) = 42
    await refunded(world, db, m, p2, 5_000, at(D0 + timedelta(days=2), 1))  # fee back 55
    await refunded(world, db, m, p1, 6_000, at(D0 + timedelta(days=2), 2))  # fee back 63
    await captured(world, db, m, h, 20_000, at(D0 + timedelta(days=3), 3))  # fee 205

    first = await run(world, D0, m)
    assert (first["batches_closed_now"], first["batch_count"], first["payout_count"]) == (1, 1, 1)
    again = await run(world, D0, m)
    assert again["id"] == first["id"] and again["batches_closed_now"] == 0 and again["batch_count"] == 1
    for n in (1, 2, 3):
        await run(world, D0 + timedelta(days=n))
    got = await batches(world, m)
    figures = [(b["business_date"], b["capture_count"], b["refund_count"], b["captured"], b["refunded"], b["fee"],
                b["carry_in"], b["net"], b["payout"], b["carry_out"]) for b in got]
    assert figures == [
        (D0.isoformat(), 1, 0, 10_000, 0, 105, 0, 9_895, 9_895, 0),
        ((D0 + timedelta(days=1)).isoformat(), 1, 1, 5_000, 4_000, 13, 0, 987, 987, 0),
        ((D0 + timedelta(days=2)).isoformat(), 0, 2, 0, 11_000, -118, 0, -10_882, 0, -10_882),
        ((D0 + timedelta(days=3)).isoformat(), 1, 0, 20_000, 0, 205, -10_882, 8_913, 8_913, 0),
    ]
    assert got[0]["window_end"] == at(D0, 16).isoformat()
    payouts = (await world.call("GET", "/v1/payouts", headers=m.headers))["data"]
    assert sorted(p["amount"] for p in payouts) == [987, 8_913, 9_895]
    assert all(p["status"] == "pending" and p["reference"].startswith("PO") for p in payouts)
    # Paying one moves payable -> clearing, once.
    target = next(p for p in payouts if p["amount"] == 9_895)
    paid = await world.call("POST", f"/v1/operator/payouts/{target['id']}/mark_paid", headers=world.ops, json={})
    assert paid["status"] == "paid"
    twice = await world.call("POST", f"/v1/operator/payouts/{target['id']}/mark_paid", headers=world.ops, json={})
    assert twice["status"] == "paid" and twice["paid_at"] == paid["paid_at"]
    batch = await world.call("GET", f"/v1/settlement_batches/{target['batch']}", headers=m.headers)
    assert batch["status"] == "paid"
    types = [e["type"] for e in (await world.call("GET", "/v1/events?limit=100", headers=m.headers))["data"]]
    assert types.count("settlement_batch.closed") == 4 and types.count("payout.paid") == 1


async def test_new_york_over_the_dst_change_and_los_angeles_west_of_utc(world: World,
                                                                       db: asyncpg.Connection) -> None:
    spring = date(2026, 3, 8) if date(2026, 3, 9) <= TODAY else date(2025, 3, 9)
    ny, la = await world.merchant("NY Deli", fee_bps=0), await world.merchant("LA Tacos", fee_bps=0)
    await configure(world, ny, timezone="America/New_York", settlement_cutoff="02:30")
    await configure(world, la, timezone="America/Los_Angeles")
    h = await world.holder(top_up=100_000)
    # 02:30 does not exist in New York on the spring-forward day: the day ends at 03:00 EDT (07:00 UTC).
    await captured(world, db, ny, h, 100, at(spring, 6, 59, 59))
    await captured(world, db, ny, h, 200, at(spring, 7))
    # Los Angeles' day ends at 08:00 UTC the next morning (PST) / 07:00 (PDT).
    await captured(world, db, la, h, 300, at(spring - timedelta(days=2), 7, 59))
    await captured(world, db, la, h, 400, at(spring - timedelta(days=2), 8))
    for n in range(-3, 2):
        await run(world, spring + timedelta(days=n))
    ny_batches = {b["business_date"]: b["captured"] for b in await batches(world, ny)}
    assert ny_batches == {spring.isoformat(): 100, (spring + timedelta(days=1)).isoformat(): 200}
    la_batches = {b["business_date"]: b["captured"] for b in await batches(world, la)}
    assert la_batches == {(spring - timedelta(days=3)).isoformat(): 300,
                          (spring - timedelta(days=2)).isoformat(): 400}


async def test_a_capture_stamped_into_a_closed_day_lands_in_the_next_batch_never_two(
        world: World, db: asyncpg.Connection, clean_db: str) -> None:
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=100_000)
    await captured(world, db, m, h, 1_000, at(D0, 12))
    await run(world, D0)
    late = await captured(world, db, m, h, 2_000, at(D0, 13))  # committed after D0 closed
    found = await invariants.check(db)
    assert [r["entry_id"] for r in found["entry_unsettled_before_a_closed_cutoff"]], found
    await run(world, D0)  # closing again changes nothing
    await run(world, D0 + timedelta(days=1))
    got = await batches(world, m)
    assert [(b["business_date"], b["captured"]) for b in got] == [(D0.isoformat(), 1_000),
                                                                  ((D0 + timedelta(days=1)).isoformat(), 2_000)]
    n = await db.fetchval("SELECT count(DISTINCT batch_id) FROM journal_entries WHERE payment_id = $1",
                          decode(Kind.PAYMENT, late))
    assert n == 1


async def test_a_day_that_has_not_ended_is_left_open(world: World, db: asyncpg.Connection) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    await captured(world, db, m, h, 1_000, datetime.now(UTC))
    result = await run(world, TODAY, m)
    assert result["batch_count"] == 0 and result["merchants_not_ended"] == [m.id]
    assert await batches(world, m) == []


async def test_captures_racing_the_close_land_in_exactly_one_batch(world: World, db: asyncpg.Connection,
                                                                   svc: Services) -> None:
    rng = random.Random(20261201)
    h = await world.holder(top_up=1_000_000)
    outcomes = {"in": 0, "next": 0}
    for _ in range(16):
        m = await world.merchant(fee_bps=0)
        payments = [await world.payment(m, 100 + i) for i in range(3)]
        await world.pay(h, (await world.payment(m, 50))["id"])  # the merchant's accounts exist
        end = await db.fetchval("SELECT clock_timestamp()") + timedelta(milliseconds=150)
        day = end.date()
        await db.execute("UPDATE merchants SET settlement_cutoff = $2 WHERE id = $1",
                         decode(Kind.MERCHANT, m.id), end.time())

        async def pay_later(payment_id: str, delay_s: float) -> None:
            await asyncio.sleep(delay_s)
            await world.pay(h, payment_id)

        async def close_after_end(merchant: Merchant, end: datetime, day: date) -> None:
            now = await db.fetchval("SELECT clock_timestamp()")
            await asyncio.sleep(max(0.0, (end - now).total_seconds()) + rng.uniform(0, 0.01))
            await settlement.settle(svc, day, decode(Kind.MERCHANT, merchant.id))

        await asyncio.gather(close_after_end(m, end, day),
                             *(pay_later(p["id"], rng.uniform(0.10, 0.20)) for p in payments))
        rows = await db.fetch(
            "SELECT e.created_at, e.batch_id, b.window_end FROM journal_entries e JOIN payments p ON p.id = e.payment_id"
            " LEFT JOIN settlement_batches b ON b.merchant_id = p.merchant_id WHERE p.merchant_id = $1"
            " AND e.kind = 'capture'", decode(Kind.MERCHANT, m.id))
        window_end = next(r["window_end"] for r in rows if r["window_end"] is not None)
        for row in rows:
            assert (row["batch_id"] is not None) == (row["created_at"] < window_end), row
            outcomes["in" if row["batch_id"] is not None else "next"] += 1
        broken = {k: v for k, v in (await invariants.check(db)).items() if v}
        assert not broken, broken
    assert outcomes["in"] > 0 and outcomes["next"] > 0, outcomes


async def test_merchants_see_only_their_own_batches_payouts_and_reports(world: World,
                                                                        db: asyncpg.Connection) -> None:
    a, b = await world.merchant("A"), await world.merchant("B")
    h = await world.holder(top_up=100_000)
    await captured(world, db, a, h, 5_000, at(D0, 9))
    await captured(world, db, b, h, 7_000, at(D0, 9))
    await run(world, D0)
    (mine,) = await batches(world, a)
    assert [x["merchant"] for x in await batches(world, b)] == [b.id]
    for path in (f"/v1/settlement_batches/{mine['id']}", f"/v1/settlement_batches/{mine['id']}/report.csv",
                 f"/v1/settlement_batches/{mine['id']}/report.json"):
        resp = await world.client.get(path, headers=b.headers)
        assert resp.status == 404, path
    report = await world.client.get(f"/v1/settlement_batches/{mine['id']}/report.json", headers=a.headers)
    assert report.status == 200
    body = json.loads(await report.read())
    assert [line["gross"] for line in body["lines"]] == [5_000]
    payouts_b = (await world.call("GET", "/v1/payouts", headers=b.headers))["data"]
    assert [p["amount"] for p in payouts_b] == [7_000 - 70]
    resp = await world.client.post(f"/v1/operator/payouts/{payouts_b[0]['id']}/mark_paid", headers=b.headers, json={})
    assert resp.status == 401


class Memory:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def write(self, name: str, data: bytes) -> None:
        self.files[name] = self.files.get(name, b"") + data


async def test_run_files_are_deterministic_checksummed_and_parse_back(world: World, db: asyncpg.Connection,
                                                                      svc: Services) -> None:
    a, b = await world.merchant("A"), await world.merchant("B")
    number = "GB33BUKB20201555555555"
    account = await world.call("POST", f"/v1/operator/merchants/{a.id}/payout_account", 201, headers=world.ops,
                               json={"holder_name": "A Ltd", "bank_name": "Barclays", "account_number": number,
                                     "bic": "BUKBGB22"})
    assert account["number_masked"].endswith("5555") and number not in json.dumps(account)
    h = await world.holder(top_up=100_000)
    p = await captured(world, db, a, h, 5_000, at(D0, 9))
    await refunded(world, db, a, p, 1_000, at(D0, 10))
    await captured(world, db, b, h, 7_000, at(D0, 9))
    result = await run(world, D0, key="settle-" + uuid.uuid4().hex)
    assert result["payouts_without_account"] == 1  # B has no payout account: held, not in the pain.001
    first, second = Memory(), Memory()
    await settlement.write_run_files(svc, result["id"], first)
    await settlement.write_run_files(svc, result["id"], second)
    assert first.files == second.files
    manifest = json.loads(first.files["manifest.json"])
    listed = {f["name"]: f["sha256"] for f in manifest["files"]}
    assert set(listed) == set(first.files) - {"manifest.json"}
    assert all(hashlib.sha256(first.files[name]).hexdigest() == digest for name, digest in listed.items())
    assert f"merchants/{a.id}/detail.csv" in listed and f"merchants/{b.id}/summary.json" in listed
    ns = {"p": files.PAIN_NS}
    doc = etree.fromstring(first.files["pain001.xml"], etree.XMLParser(resolve_entities=False, no_network=True))
    amounts = [Decimal(x) for x in doc.xpath("//p:InstdAmt/text()", namespaces=ns)]
    assert doc.findtext("p:CstmrCdtTrfInitn/p:GrpHdr/p:NbOfTxs", namespaces=ns) == "1"
    assert Decimal(doc.findtext("p:CstmrCdtTrfInitn/p:GrpHdr/p:CtrlSum", namespaces=ns) or "") == sum(amounts)
    payouts = (await world.call("GET", "/v1/payouts", headers=a.headers))["data"]
    assert doc.xpath("//p:EndToEndId/text()", namespaces=ns) == [payouts[0]["reference"]]
    assert doc.xpath("//p:CdtrAcct/p:Id/p:IBAN/text()", namespaces=ns) == [number]
    assert doc.xpath("//p:PmtInf/p:DbtrAcct/p:Id/p:Othr/p:Id/text()", namespaces=ns) == ["GATEWAYSETTLEMENT0001"]
    assert amounts == [Decimal(payouts[0]["amount"]) / 100]
    assert number not in first.files["payouts.csv"].decode()
    detail = first.files[f"merchants/{a.id}/detail.csv"].decode().splitlines()
    assert [line.split(",")[3] for line in detail[1:]] == ["capture", "refund"]
    via_api = await world.client.get(f"/v1/operator/settlement_runs/{result['id']}/files/pain001.xml",
                                     headers=world.ops)
    assert via_api.status == 200 and await via_api.read() == first.files["pain001.xml"]
    replay = await world.client.post("/v1/operator/settlement_runs", headers=auth(world.operator_token),
                                     json={"date": D0.isoformat()})
    assert (await replay.json())["id"] == result["id"]


async def test_settings_are_refused_when_malformed(world: World) -> None:
    m = await world.merchant()
    for body in ({"timezone": "Mars/Olympus"}, {"settlement_cutoff": "25:00"}):
        resp = await world.client.post(f"/v1/operator/merchants/{m.id}/settlement", headers=world.ops, json=body)
        assert resp.status == 400, body


async def test_the_close_waits_for_transactions_begun_before_the_cutoff(world: World, db: asyncpg.Connection,
                                                                       clean_db: str, svc: Services) -> None:
    m = await world.merchant(fee_bps=0)
    h = await world.holder(top_up=10_000)
    await world.pay(h, (await world.payment(m, 100))["id"])
    end = await db.fetchval("SELECT clock_timestamp()") + timedelta(milliseconds=100)
    await db.execute("UPDATE merchants SET settlement_cutoff = $2 WHERE id = $1", decode(Kind.MERCHANT, m.id),
                     end.time())
    straggler = await asyncpg.connect(clean_db)
    try:
        async with straggler.transaction():  # a capture's transaction would be stamped before the cutoff
            await straggler.execute("SELECT 1")
            await asyncio.sleep(0.15)
            closing = asyncio.create_task(settlement.settle(svc, end.date(), decode(Kind.MERCHANT, m.id)))
            await asyncio.sleep(0.3)
            assert not closing.done()
        result = await asyncio.wait_for(closing, timeout=5)
    finally:
        await straggler.close()
    assert result.batches_closed_now == 1


async def test_the_command_line_settles_a_day_and_writes_checksummed_files(world: World, db: asyncpg.Connection,
                                                                          clean_db: str, tmp_path: Path) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    await captured(world, db, m, h, 2_000, at(D0, 9))
    env = {**os.environ, "GATEWAY_DATABASE_URL": clean_db, "GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/15"}

    def settle_cli() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "settle", "--date", D0.isoformat(), "--out",
                               str(tmp_path)], env=env, capture_output=True, text=True, timeout=120, check=False)

    done = await asyncio.to_thread(settle_cli)
    assert done.returncode == 0, done.stderr
    assert "CNY" in done.stdout and "1980" in done.stdout and "batches closed now: 1" in done.stdout
    manifest = json.loads((tmp_path / "manifest.json").read_bytes())
    for entry in manifest["files"]:
        assert hashlib.sha256((tmp_path / entry["name"]).read_bytes()).hexdigest() == entry["sha256"]
    again = await asyncio.to_thread(settle_cli)
    assert again.returncode == 0 and "batches closed now: 0" in again.stdout
    assert json.loads((tmp_path / "manifest.json").read_bytes()) == manifest


async def test_only_admin_and_settlement_operators_run_settlement(world: World, svc: Services) -> None:
    for role in ("settlement", "support"):
        await tenants.create_operator(svc, f"{role}@example.com", "a-long-operator-password", role)
        token = (await world.call("POST", "/v1/operator/sessions", 201,
                                  json={"email": f"{role}@example.com", "password": "a-long-operator-password"}))["token"]
        resp = await world.client.post("/v1/operator/settlement_runs", headers=auth(token),
                                       json={"date": D0.isoformat()})
        assert resp.status == (200 if role == "settlement" else 403), role
