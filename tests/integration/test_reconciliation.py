"""Bank statements reconciled end to end over the operator API: every exception kind, its actions
(audited), a write-off in the ledger (the checker runs after each test), idempotent re-import."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg

from gateway.domain.reconciliation import add_business_days
from gateway.services import tenants
from gateway.services.context import Services
from tests.conftest import make_settings
from tests.integration.world import World, auth
from gateway.banksim import Inject, Movement, book, camt053, csv

EXC = "/v1/operator/reconciliation/exceptions"


async def _movements(world: World, count: int) -> list[Movement]:
    """``count`` top-ups (and one withdrawal) made through the API, as the bank should see them."""
    today = datetime.now(UTC).date()
    h = await world.holder()
    found = []
    for n in range(count):
        t = await world.top_up(h, 1000 + n)
        found.append(Movement(t["id"], "CRDT", 1000 + n, today))
    w = await world.call("POST", "/v1/wallet/withdrawals", 201, headers=h.headers,
                         json={"bank_account": h.bank_account, "amount": 500, "currency": "CNY"})
    found.append(Movement(w["id"], "DBIT", 500, today))
    return found


async def _import(world: World, data: bytes, fmt: str | None = None, key: str | None = None,
                  expect: int = 201, headers: dict[str, str] | None = None) -> Any:
    h = dict(headers or world.ops)
    if key:
        h["Idempotency-Key"] = key
    body: dict[str, Any] = {"content_base64": base64.b64encode(data).decode()}
    if fmt:
        body["format"] = fmt
    return await world.call("POST", "/v1/operator/bank_statements", expect, headers=h, json=body)


def _end(movements: list[Movement]) -> Any:
    return add_business_days(movements[0].day, 6)  # beyond the 3-day tolerance: unseen ones are missing


async def test_every_exception_kind_end_to_end(world: World, clean_db: str) -> None:
    mv = await _movements(world, 10)
    r = [m.reference for m in mv]
    inject = Inject(missing={r[0]}, off_by_one={r[1]}, unknown_deposits=1, duplicate={r[2]},
                    batches=[(r[3], r[4])], split={r[5]}, in_remittance={r[6]})
    lines = book(mv, inject)
    statement = camt053(lines, statement_id="STMT-1", date_to=_end(mv), opening_minor=10_000)
    summary = await _import(world, statement, key="import-1")
    assert summary["entries"] == len(lines) == summary["entries_new"]
    assert summary["matched"] == {"reference": 6, "batch": 1, "split": 1}  # 1:1: r2, r6 (in Ustrd), r7-r9, withdrawal
    assert summary["exceptions"] == {"missing_at_bank": 1, "amount_mismatch": 1, "unknown_entry": 1,
                                     "duplicate_entry": 1}
    # Idempotent: the same key replays; a new key on the same file adds nothing and opens nothing new.
    assert await _import(world, statement, key="import-1") == summary
    again = await _import(world, statement, key="import-2")
    assert again["entries_new"] == 0 and again["exceptions_opened"] == 0 and again["matched"] == {}

    open_ = (await world.call("GET", f"{EXC}?status=open&limit=10", headers=world.ops))["data"]
    by_kind = {x["kind"]: x for x in open_}
    assert set(by_kind) == {"missing_at_bank", "amount_mismatch", "unknown_entry", "duplicate_entry"}
    assert by_kind["missing_at_bank"]["expected"]["id"] == r[0]
    assert by_kind["amount_mismatch"]["bank_amount"] == 1002 and by_kind["amount_mismatch"]["expected_amount"] == 1001
    page = await world.call("GET", f"{EXC}?status=open&limit=3", headers=world.ops)
    rest = await world.call("GET", f"{EXC}?status=open&limit=3&starting_after={page['next_cursor']}", headers=world.ops)
    assert page["has_more"] and not rest["has_more"]
    assert {x["id"] for x in page["data"] + rest["data"]} == {x["id"] for x in open_}
    back = await world.call("GET", f"{EXC}?status=open&limit=3&ending_before={rest['data'][0]['id']}",
                            headers=world.ops)
    assert [x["id"] for x in back["data"]] == [x["id"] for x in page["data"]] and not back["has_more"]
    only = await world.call("GET", f"{EXC}?kind=unknown_entry", headers=world.ops)
    assert [x["kind"] for x in only["data"]] == ["unknown_entry"]

    async def resolve(x: dict[str, Any], expect: int = 200, **body: Any) -> Any:
        return await world.call("POST", f"{EXC}/{x['id']}/resolve", expect, headers={**world.ops,
                                "Idempotency-Key": str(uuid.uuid4())}, json=body)

    # A mismatch cannot be matched as it is; written off, the difference goes through the ledger.
    refused = await resolve(by_kind["amount_mismatch"], 409, action="match", reason="looks right")
    assert refused["error"]["code"] == "amounts_differ"
    done = await resolve(by_kind["amount_mismatch"], action="write_off", reason="bank fee rounding")
    assert done["status"] == "resolved" and done["actions"][-1]["action"] == "write_off"
    assert done["actions"][-1]["reason"] == "bank fee rounding" and done["actions"][-1]["operator"].startswith("op_")
    await resolve(by_kind["unknown_entry"], action="write_off", reason="unidentified deposit to suspense")
    await resolve(by_kind["duplicate_entry"], action="write_off", reason="bank booked twice; claim raised")
    missing = await resolve(by_kind["missing_at_bank"], action="write_off", reason="top-up never arrived")
    # Reopen reverses the write-off; then the operator matches it by hand to a late bank entry.
    reopened = await resolve(missing, action="reopen", reason="the bank found it")
    assert reopened["status"] == "open" and [a["action"] for a in reopened["actions"]] == ["write_off", "reopen"]
    late = csv(book([mv[0]], Inject(delay_business_days=2)), statement_id="STMT-2")
    late_summary = await _import(world, late, "csv")
    assert late_summary["matched"] == {"reference": 1}  # the matcher finds it and clears the exception
    cleared = await world.call("GET", f"{EXC}/{missing['id']}", headers=world.ops)
    assert cleared["status"] == "cleared"

    conn = await asyncpg.connect(clean_db)
    try:
        written = await conn.fetchval("SELECT sum(p.amount_minor) FROM postings p JOIN accounts a ON a.id = p.account_id"
                                      " WHERE a.kind = 'write_off'")
        audit = await conn.fetch("SELECT action FROM recon_audit WHERE operator_id IS NOT NULL ORDER BY id")
        unreconciled = await conn.fetchval("SELECT count(*) FROM transfers WHERE reconciled_at IS NULL")
    finally:
        await conn.close()
    assert written == 1 + 4321 + 1002  # off by one, the unknown deposit, the duplicate (net of the reversal)
    assert [a["action"] for a in audit].count("write_off") == 4 and "reopen" in [a["action"] for a in audit]
    assert unreconciled == 0


async def test_manual_match_and_malformed_file_keeps_nothing(world: World, clean_db: str) -> None:
    mv = await _movements(world, 2)
    lines = book(mv[:1])
    stranger = book([Movement("no-such-ref", "CRDT", mv[1].amount_minor, mv[1].day)])
    statement = camt053([*lines, *(type(s)(f"X{s.entry_ref}", s.direction, s.amount_minor, s.booking_date, s.refs)
                                   for s in stranger)], statement_id="STMT-M", date_to=mv[0].day)
    summary = await _import(world, statement)
    assert summary["exceptions"] == {"unknown_entry": 1}
    [unknown] = (await world.call("GET", f"{EXC}?kind=unknown_entry", headers=world.ops))["data"]
    matched = await world.call("POST", f"{EXC}/{unknown['id']}/resolve", headers=world.ops,
                               json={"action": "match", "reason": "customer wrote the wrong reference",
                                     "references": [mv[1].reference]})
    assert matched["status"] == "resolved" and matched["match"].startswith("rcm_")

    broken = camt053(book(mv[2:]), statement_id="STMT-BAD").replace(b"<CdtDbtInd>DBIT</CdtDbtInd><Sts>",
                                                                    b"<CdtDbtInd>MAYBE</CdtDbtInd><Sts>")
    err = await _import(world, broken, expect=422)
    assert err["error"]["code"] == "malformed_statement" and err["error"]["param"].endswith("Ntry[1]/CdtDbtInd")
    hostile = b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><d>&x;</d>'
    assert (await _import(world, hostile, expect=422))["error"]["code"] == "hostile_xml"
    conn = await asyncpg.connect(clean_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM bank_statements WHERE statement_ref = 'STMT-BAD'") == 0
    finally:
        await conn.close()


async def test_roles_and_credentials(world: World) -> None:
    email, password = f"support-{uuid.uuid4().hex[:8]}@example.com", "correct horse staple"
    svc = await Services.start(make_settings())
    try:
        await tenants.create_operator(svc, email, password, "support")
    finally:
        await svc.stop()
    support = auth((await world.call("POST", "/v1/operator/sessions", 201,
                                     json={"email": email, "password": password}))["token"])
    mv = await _movements(world, 1)
    await _import(world, camt053(book(mv, Inject(missing={mv[0].reference})), statement_id="S-R",
                                 date_to=_end(mv)))
    [x] = (await world.call("GET", EXC, headers=support))["data"]  # support may look
    denied = await world.call("POST", f"{EXC}/{x['id']}/resolve", 403, headers=support,
                              json={"action": "write_off", "reason": "no"})
    assert denied["error"]["code"] == "role_forbidden"
    m = await world.merchant()
    await world.call("GET", EXC, 401, headers=m.headers)
    await world.call("POST", f"{EXC}/{x['id']}/resolve", 401, headers=m.headers, json={"action": "write_off",
                                                                                      "reason": "no"})


async def test_cli_reconcile_prints_the_summary(world: World, clean_db: str, tmp_path: Path) -> None:
    mv = await _movements(world, 3)
    env = {**os.environ, "GATEWAY_DATABASE_URL": clean_db, "GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/15"}
    good = tmp_path / "statement.csv"
    good.write_bytes(csv(book(mv, Inject(unknown_deposits=1)), statement_id="CLI-1"))
    done = await asyncio.to_thread(_gateway, ["reconcile", str(good)], env)
    assert done.returncode == 0, done.stderr
    assert "matched: reference" in done.stdout and "exception: unknown_entry" in done.stdout
    bad = tmp_path / "bad.xml"
    bad.write_bytes(camt053(book(mv), statement_id="CLI-2").replace(b"<Ccy>CNY</Ccy>", b"<Ccy>XXQ</Ccy>"))
    refused = await asyncio.to_thread(_gateway, ["reconcile", "--format", "camt053", str(bad)], env)
    assert refused.returncode == 2 and "malformed_statement" in refused.stderr and "Acct/Ccy" in refused.stderr


def _gateway(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


async def test_a_paid_payout_is_matched_on_the_statement_and_reconciles_its_batch(world: World, clean_db: str) -> None:
    """Settlement and reconciliation together: a day settled, its payout paid, the bank's statement
    showing the debit under the payout's EndToEndId: matched 1:1, payout and batch reconciled; a
    reopen is not exercised here (the invariant checker runs after the test)."""
    from datetime import timedelta

    from tests.integration.test_settlement import at, captured, configure, run

    day = datetime.now(UTC).date() - timedelta(days=3)
    m = await world.merchant(fee_bps=100)
    await configure(world, m, timezone="UTC")
    await world.call("POST", f"/v1/operator/merchants/{m.id}/payout_account", 201, headers=world.ops,
                     json={"holder_name": "Best Noodles Ltd", "bank_name": "ICBC", "account_number": "6222020200998877"})
    h = await world.holder(top_up=50_000)
    conn = await asyncpg.connect(clean_db)
    try:
        await captured(world, conn, m, h, 10_000, at(day, 10))
    finally:
        await conn.close()
    await run(world, day)
    [payout] = (await world.call("GET", "/v1/payouts", headers=m.headers))["data"]
    assert payout["amount"] == 9_900 and payout["status"] == "pending"
    await world.call("POST", f"/v1/operator/payouts/{payout['id']}/mark_paid", headers=world.ops, json={})
    payout_day = date.fromisoformat(payout["execution_date"])
    lines = book([Movement(payout["reference"], "DBIT", 9_900, payout_day)])
    summary = await _import(world, camt053(lines, statement_id="STMT-PAYOUT-1"))
    assert summary["matched"] == {"reference": 1} and summary["exceptions"] == {}, summary
    [after] = (await world.call("GET", "/v1/payouts", headers=m.headers))["data"]
    assert after["status"] == "reconciled" and after["reconciled_at"]
    [batch] = [b for b in (await world.call("GET", "/v1/settlement_batches", headers=m.headers))["data"]
               if b["id"] == payout["batch"]]
    assert batch["status"] == "reconciled"
