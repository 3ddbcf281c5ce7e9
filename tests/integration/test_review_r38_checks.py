"""Review R38: background ledger invariant checks (services/invariant_checks.py, migration 0037, the console's
ledger page) attacked: concurrent asks, racing workers, a worker cancelled mid-check, non-operators, malformed
ids and cursors, a check while money moves, violations of odd row values, a check queued by a process of an
older version (fewer invariants)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from contextlib import suppress
from datetime import datetime
from typing import Any
from unittest import mock

import asyncpg
import pytest
from prometheus_client import REGISTRY
from yarl import URL

from gateway.domain.ids import Kind, decode
from gateway.services import invariant_checks
from gateway.services.context import Services
from gateway.settings import Settings
from gateway.store import invariants as store
from tests.conftest import make_settings
from tests.integration.test_invariant_checks import CHECKS, _ask, _paid, _svc
from tests.integration.world import OPERATOR_EMAIL, OPERATOR_PASSWORD, World, auth

pytestmark = pytest.mark.asyncio
LEASE_S = 0.6
LEDGER = {"check_lease_s": LEASE_S, "check_poll_s": 0.2, "check_timeout_s": 30.0}


@pytest.fixture
def settings() -> Settings:
    return make_settings(ledger=LEDGER)


def _checks_counted(status: str) -> float:
    return REGISTRY.get_sample_value("gateway_ledger_checks_total", {"status": status}) or 0.0


async def _waiting_pid(db: asyncpg.Connection, table: str) -> int | None:
    """The session waiting for a lock on ``table`` (the check's), polled for up to 5 s."""
    for _ in range(100):
        pid = await db.fetchval(
            "SELECT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted"
            " WHERE a.datname = current_database() AND l.relation = $1::regclass", table)
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.05)
    return None


# --- asking ------------------------------------------------------------------------------------------------


async def test_concurrent_asks_with_many_keys_and_one_key_answer_one_active_check(
        world: World, db: asyncpg.Connection) -> None:
    key = str(uuid.uuid4())

    async def ask(k: str) -> tuple[int, Any]:
        resp = await world.client.post(CHECKS, headers={**world.ops, "Idempotency-Key": k}, json={})
        return resp.status, await resp.json()

    keys = [str(uuid.uuid4()) for _ in range(12)] + [key] * 12
    answers = await asyncio.wait_for(asyncio.gather(*(ask(k) for k in keys)), timeout=30)
    assert all(status in (202, 409) for status, _ in answers), answers
    fresh = [body for (status, body), k in zip(answers, keys, strict=True) if k != key]
    assert all(status == 202 for (status, _), k in zip(answers, keys, strict=True) if k != key), answers
    ids = {body["id"] for body in fresh}
    assert len(ids) == 1, ids
    # One key: one answer (the same bytes each time), or 409 in use while its first request ran.
    same = [body for (status, body), k in zip(answers, keys, strict=True) if k == key and status == 202]
    assert same and all(body == same[0] for body in same) and same[0]["id"] in ids
    for status, body in answers:
        if status == 409:
            assert body["error"]["code"] == "idempotency_key_in_use", body
    assert await _ask(world, key) == same[0]  # and its replay afterwards
    assert await db.fetchval("SELECT count(*) FROM invariant_checks") == 1
    events = await world.call("GET", "/v1/operator/events", headers=world.ops,
                              params={"type": "invariant_check.requested"})
    assert [e["data"]["object"]["id"] for e in events["data"]] == list(ids)  # audited once


async def test_asks_racing_a_worker_that_finishes_checks_never_fail_nor_make_two_active(
        world: World, db: asyncpg.Connection) -> None:
    """The queue's read of the active check races its end: each ask answers a queued or running check."""
    svc = _svc(world)
    runs = [0]
    deadline = time.monotonic() + 20

    async def work() -> None:
        while runs[0] < 4 and time.monotonic() < deadline:
            if await invariant_checks.run_next(svc) is not None:
                runs[0] += 1
            await asyncio.sleep(0)

    async def asks() -> list[Any]:
        seen = []
        while runs[0] < 4 and time.monotonic() < deadline:
            resp = await world.client.post(CHECKS, headers=world.ops, json={})
            body = await resp.json()
            assert resp.status == 202, body
            seen.append(body)
        return seen

    parts = await asyncio.wait_for(asyncio.gather(work(), asks(), asks(), asks()), timeout=30)
    answers = [a for part in parts[1:] for a in part]
    assert runs[0] >= 4  # checks ended meanwhile: the race was run
    assert all(a["status"] in ("queued", "running") and a["ok"] is None for a in answers)
    rows = await db.fetch("SELECT id, status FROM invariant_checks")
    assert sum(r["status"] in ("queued", "running") for r in rows) <= 1
    assert {r["status"] for r in rows} <= {"queued", "running", "passed"}, rows
    assert {decode(Kind.INVARIANT_CHECK, a["id"]) for a in answers} <= {r["id"] for r in rows}


# --- workers -----------------------------------------------------------------------------------------------


async def test_workers_racing_for_one_queued_check_run_one_attempt_and_write_one_outcome(
        world: World, db: asyncpg.Connection) -> None:
    await _paid(world)
    asked = await _ask(world)
    others = [await Services.start(make_settings(ledger=LEDGER)) for _ in range(2)]
    passed_before = _checks_counted("passed")
    try:
        workers = [_svc(world), *others, *others]
        done = await asyncio.wait_for(asyncio.gather(*(invariant_checks.run_next(s) for s in workers)), timeout=30)
        outcomes = [d for d in done if d is not None]
        assert len(outcomes) == 1 and outcomes[0].id == asked["id"] and outcomes[0].status == "passed", done
        assert outcomes[0].attempts == 1
        assert _checks_counted("passed") == passed_before + 1
        # Its lease lapsed while "running" (its worker died): racing workers take it once, as attempt 2.
        await db.execute("UPDATE invariant_checks SET status = 'running', attempts = 1, finished_at = NULL,"
                         " violations = NULL, lease_until = now() - interval '1 second'")
        done = await asyncio.wait_for(asyncio.gather(*(invariant_checks.run_next(s) for s in workers)), timeout=30)
        outcomes = [d for d in done if d is not None]
        assert len(outcomes) == 1 and outcomes[0].status == "passed" and outcomes[0].attempts == 2, done
        assert _checks_counted("passed") == passed_before + 2
        row = await db.fetchrow("SELECT status, attempts, lease_until FROM invariant_checks")
        assert (row["status"], row["attempts"], row["lease_until"]) == ("passed", 2, None)
        assert [d for d in await asyncio.gather(*(invariant_checks.run_next(s) for s in workers)) if d] == []
    finally:
        for s in others:
            await s.stop()


async def test_a_worker_cancelled_mid_check_leaves_no_session_or_lock_and_its_check_is_taken_after_the_lease(
        world: World, db: asyncpg.Connection, clean_db: str) -> None:
    await _paid(world)
    asked = await _ask(world)
    a = await Services.start(make_settings(ledger=LEDGER))
    b = await Services.start(make_settings(ledger=LEDGER))
    locker = await asyncpg.connect(clean_db)
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE risk_decisions IN ACCESS EXCLUSIVE MODE")
        running = asyncio.create_task(invariant_checks.run_next(a))
        pid = await _waiting_pid(db, "risk_decisions")
        assert pid is not None
        for _ in range(50):  # renewed at least once: its progress written
            if await db.fetchval("SELECT invariants_done FROM invariant_checks") > 0:
                break
            await asyncio.sleep(0.05)
        running.cancel()  # as at the process's stop
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(running, timeout=10)
        # The cancelled attempt's session holds nothing: not waiting, no transaction, no lock.
        for _ in range(40):
            state = await db.fetchrow("SELECT state, xact_start FROM pg_stat_activity WHERE pid = $1", pid)
            if state is None or (state["state"] == "idle" and state["xact_start"] is None):
                break
            await asyncio.sleep(0.05)
        assert state is None or (state["state"] == "idle" and state["xact_start"] is None), state
        assert await db.fetchval("SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype = 'relation'", pid) == 0
        assert a.db.pool.get_idle_size() == a.db.pool.get_size()  # every connection back in its pool
        row = await db.fetchrow("SELECT status, attempts, violations FROM invariant_checks")
        assert (row["status"], row["attempts"], row["violations"]) == ("running", 1, None)
        await tx.rollback()
        # Another process takes it once its lease lapsed, and it passes as attempt 2.
        deadline = time.monotonic() + 5
        done = None
        while done is None and time.monotonic() < deadline:
            done = await invariant_checks.run_next(b)
            await asyncio.sleep(0.1)
        assert done is not None and done.id == asked["id"] and done.status == "passed" and done.attempts == 2
        # The cancelled process's pool still serves.
        async with a.db.connection() as conn:
            assert await conn.fetchval("SELECT current_setting('transaction_read_only')") == "off"
    finally:
        await locker.close()
        await asyncio.wait_for(a.stop(), timeout=15)
        await b.stop()


async def test_a_check_run_while_money_moves_passes_every_time(world: World) -> None:
    """Payments, manual captures, refunds and top-ups in parallel with checks: each check reads one snapshot."""
    m = await world.merchant()
    holders = [await world.holder(top_up=500_000) for _ in range(6)]
    checker = await Services.start(make_settings(ledger=LEDGER))
    moving = True
    outcomes: list[Any] = []

    async def spend(h: Any, n: int) -> None:
        for i in range(n):
            if i % 3 == 2:
                await world.top_up(h, 1_000)
            manual = i % 2 == 1
            p = await world.payment(m, 1_000 + i, **({"capture_method": "manual"} if manual else {}))
            await world.pay(h, p["id"])
            if manual:
                await world.call("POST", f"/v1/payments/{p['id']}/capture", headers=m.headers,
                                 json={"amount_to_capture": 900})
            await world.call("POST", f"/v1/payments/{p['id']}/refunds", 201, headers=m.headers, json={"amount": 7})

    async def check() -> None:
        while moving:
            await _ask(world)
            done = await invariant_checks.run_next(checker)
            assert done is not None
            outcomes.append(done)

    checking = asyncio.create_task(check())
    try:
        await asyncio.wait_for(asyncio.gather(*(spend(h, 10) for h in holders)), timeout=45)
    finally:
        moving = False
        await asyncio.wait_for(checking, timeout=30)
        await checker.stop()
    assert len(outcomes) >= 2, outcomes  # checks ran while money moved
    assert all(o.status == "passed" and o.violations == {} for o in outcomes), [
        (o.status, o.violations, o.error) for o in outcomes if o.status != "passed"]


async def test_a_check_queued_by_a_process_with_fewer_invariants_keeps_its_lease_while_it_runs(
        world: World, db: asyncpg.Connection, clean_db: str) -> None:
    """A rolling deploy: a process of the previous version (one invariant fewer, or a few) queued the check,
    this version's worker runs it. Its progress must not break its lease renewal: renewal stops silently
    (CHECK invariants_done BETWEEN 0 AND invariants_total refuses it), the lease lapses, another process takes
    the check while this attempt still reads the ledger, and this attempt never learns it lost the check."""
    fewer = 50  # the check waits at invariant 51 (risk_decisions, locked below): 51 done > 50 invariants
    assert store.count() > fewer + 1 and "risk_decisions" in store._queries()[fewer + 1][1]
    check_id = uuid.uuid4()
    await db.execute("INSERT INTO invariant_checks (id, requested_by, invariants_total) VALUES ($1, 'op_old', $2)",
                     check_id, fewer)
    other = await Services.start(make_settings(ledger=LEDGER))
    locker = await asyncpg.connect(clean_db)
    running = None
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE risk_decisions IN ACCESS EXCLUSIVE MODE")
        running = asyncio.create_task(invariant_checks.run_next(_svc(world)))
        assert await _waiting_pid(db, "risk_decisions") is not None
        await asyncio.sleep(LEASE_S * 3)  # several renewals due
        row = await db.fetchrow("SELECT status, attempts, lease_until > now() AS leased FROM invariant_checks")
        taken = await store.claim(db, LEASE_S)  # another process looks for a due check
        await tx.rollback()
        done = await asyncio.wait_for(running, timeout=20)
        observed = {"status": row["status"], "leased while it ran": row["leased"],
                    "taken by another worker": None if taken is None else f"attempt {taken['attempts']}",
                    "outcome": None if done is None else (done.status, done.attempts)}
        assert observed == {"status": "running", "leased while it ran": True, "taken by another worker": None,
                            "outcome": ("passed", 1)}
    finally:
        if running is not None and not running.done():
            running.cancel()
            with suppress(BaseException):
                await running
        await locker.close()
        await other.stop()


# --- who may ask and read ------------------------------------------------------------------------------------


async def _device_token(world: World) -> str:
    m = await world.merchant("Device shop")
    terminal = await world.call("POST", f"/v1/merchants/{m.id}/terminals", 201, headers=world.ops,
                                json={"store": m.store, "label": "Counter 1"})
    code = await world.call("POST", f"/v1/terminals/{terminal['id']}/enrolment_codes", 201, headers=m.headers,
                            json={})
    enrolled = await world.call("POST", "/v1/devices/enrolments", 201, json={"code": code["code"], "name": "agent"})
    return str(enrolled["access_token"])


async def test_no_principal_but_an_operator_asks_for_or_reads_checks_and_the_console_needs_its_csrf(
        world: World, db: asyncpg.Connection) -> None:
    m = await world.merchant()
    h = await world.holder()
    device = await _device_token(world)
    tampered = world.operator_token[:-4] + ("AAAA" if not world.operator_token.endswith("AAAA") else "BBBB")
    strangers = {"merchant secret": m.headers, "publishable": auth(m.publishable), "wallet": h.headers,
                 "device": auth(device), "tampered operator": auth(tampered), "garbage": auth("x"), "none": {},
                 "basic": {"Authorization": f"Basic {world.operator_token}"}}
    existing = await _ask(world)
    for path, method in ((CHECKS, "POST"), (CHECKS, "GET"), (f"{CHECKS}/{existing['id']}", "GET")):
        for name, headers in strangers.items():
            resp = await world.client.request(method, path, headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
                                              json={} if method == "POST" else None)
            body = await resp.json()
            assert resp.status in (401, 403), (name, method, path, resp.status, body)
            assert body["error"]["code"] and existing["id"] not in str(body), (name, body)
    assert await db.fetchval("SELECT count(*) FROM invariant_checks") == 1
    await db.execute("UPDATE invariant_checks SET status = 'error', error = 'test', finished_at = now()")

    # The console: no session -> the login page; a session without the CSRF token -> 403; nothing queued.
    client = world.client
    anonymous = await client.post("/console/ledger/checks", data={}, allow_redirects=False)
    assert anonymous.status == 303 and anonymous.headers["Location"].endswith("/console/login")
    login = await client.post("/console/login", data={"email": OPERATOR_EMAIL, "password": OPERATOR_PASSWORD},
                              allow_redirects=False)
    assert login.status == 303
    for csrf in (None, "", "0" * 64):
        data = {} if csrf is None else {"csrf": csrf}
        refused = await client.post("/console/ledger/checks", data=data, allow_redirects=False)
        assert refused.status == 403 and 'data-code="csrf_failed"' in await refused.text()
    # A cross-site form post carries the session cookie only if SameSite lets it; the token is what guards.
    refused = await client.post("/console/ledger/checks", allow_redirects=False,
                                headers={"Content-Type": "application/json"}, data=b'{"csrf": "x"}')
    assert refused.status == 403
    assert await db.fetchval("SELECT count(*) FROM invariant_checks WHERE status IN ('queued', 'running')") == 0
    page = await (await client.get("/console/ledger")).text()
    csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert csrf is not None
    asked = await client.post("/console/ledger/checks", data={"csrf": csrf.group(1)}, allow_redirects=False)
    assert asked.status == 303 and "/console/ledger?asked=chk_" in asked.headers["Location"]
    assert await db.fetchval("SELECT count(*) FROM invariant_checks WHERE status = 'queued'") == 1
    # The page names only a check it lists: a forged ?asked= is not echoed.
    forged = await (await client.get("/console/ledger", params={"asked": "<script>x</script>"})).text()
    assert "<script>x</script>" not in forged


async def test_malformed_ids_cursors_and_limits_are_4xx_naming_the_parameter_never_500(world: World) -> None:
    real = await _ask(world)
    raw_ids = ["chk_", "chk_" + "0" * 31, "chk_" + "0" * 33, "chk_" + "g" * 32, "CHK_" + "0" * 32,
               "chk_" + str(uuid.uuid4()), "chk_%00", "chk_%FF%FE", "%E2%80%8B", "chk_" + "%C3%A9" * 16,
               "chk_" + "0" * 4000, real["id"].upper(), real["id"] + "%20", "chk_" + "0" * 32 + "%0A",
               "pay_" + real["id"].removeprefix("chk_"), "null", "-1", "chk_..%2F..%2Fadmin"]
    for text in raw_ids:
        resp = await world.client.get(URL(f"{CHECKS}/{text}", encoded=True), headers=world.ops)
        body = await resp.json() if resp.content_type == "application/json" else {}
        assert resp.status in (400, 404, 414), (text, resp.status, body)
        if resp.status != 414:
            assert body["error"]["code"] and body["error"]["param"] == "id", (text, body)
    cursors: list[dict[str, str]] = [
        {"starting_after": ""}, {"starting_after": "chk_"}, {"starting_after": "chk_" + "0" * 32},
        {"ending_before": "pay_" + uuid.uuid4().hex}, {"ending_before": "chk_" + "z" * 32},
        {"starting_after": "x" * 5000}, {"starting_after": "chk_\u0000"},
        {"starting_after": real["id"], "ending_before": real["id"]},
    ]
    for params in cursors:
        resp = await world.client.get(CHECKS, headers=world.ops, params=params)
        body = await resp.json()
        assert resp.status == 400, (params, resp.status, body)
        assert body["error"]["code"] and body["error"]["param"] in ("starting_after", "ending_before"), (params, body)
    for limit in ("0", "101", "-1", "abc", "1.5", "", "9" * 40):
        resp = await world.client.get(CHECKS, headers=world.ops, params={"limit": limit})
        body = await resp.json()
        assert resp.status == 400 and body["error"]["param"] == "limit", (limit, resp.status, body)
    resp = await world.client.get(CHECKS, headers=world.ops, params={"status": "queued"})
    assert resp.status == 400 and (await resp.json())["error"]["code"], "an unknown filter is refused"
    # The real check is still listed and read (the cursor of itself is a valid, empty page).
    page = await world.call("GET", CHECKS, headers=world.ops, params={"starting_after": real["id"]})
    assert page == {"object": "list", "data": [], "has_more": False}
    page = await world.call("GET", CHECKS, headers=world.ops, params={"ending_before": real["id"]})
    assert page == {"object": "list", "data": [], "has_more": False}
    # A POST body that is no JSON object, or a key too long, is a 400, and nothing new is queued.
    for data, headers in ((b"[]", {}), (b"not json", {}), (b"{}", {"Idempotency-Key": "k" * 300})):
        resp = await world.client.post(CHECKS, data=data, headers={**world.ops, "Content-Type": "application/json",
                                                                   **headers})
        assert resp.status == 400, (data, resp.status, await resp.text())
        assert (await resp.json())["error"]["code"]


# --- violations ----------------------------------------------------------------------------------------------


async def test_violations_with_uuids_numerics_and_timestamps_read_back_as_the_synchronous_report_says(
        world: World, db: asyncpg.Connection) -> None:
    await _paid(world)
    account = await db.fetchval("SELECT account_id FROM balances WHERE posted_minor > 0 ORDER BY account_id LIMIT 1")
    line = await db.fetchrow("SELECT entry_id, merchant_id, currency, created_at FROM settlement_lines"
                             " WHERE batch_id IS NULL ORDER BY created_at LIMIT 1")
    assert line is not None
    run_id, batch_id = uuid.uuid4(), uuid.uuid4()
    await db.execute("UPDATE balances SET posted_minor = posted_minor + 1 WHERE account_id = $1 AND shard = 0", account)
    try:
        # A closed batch (all zero) whose window covers the unsettled entries: each is reported with its time.
        await db.execute("INSERT INTO settlement_runs (id, business_date) VALUES ($1, current_date)", run_id)
        await db.execute(
            "INSERT INTO settlement_batches (id, run_id, merchant_id, currency, business_date, window_start, window_end,"
            " timezone, cutoff, status, capture_count, refund_count, captured_minor, refunded_minor, fee_minor,"
            " carry_in_minor, net_minor, payout_minor, carry_out_minor)"
            " VALUES ($1, $2, $3, $4, current_date, now() - interval '1 day', now() + interval '1 day', 'UTC',"
            " '00:00', 'closed', 0, 0, 0, 0, 0, 0, 0, 0, 0)", batch_id, run_id, line["merchant_id"], line["currency"])
        asked = await _ask(world)
        done = await invariant_checks.run_next(_svc(world))
        assert done is not None and done.status == "failed"
        seen = await world.call("GET", f"{CHECKS}/{asked['id']}", headers=world.ops)
        report = await world.call("GET", "/v1/operator/ledger/invariants", headers=world.ops)
        assert seen["violations"] == report["violations"]  # rows, values and their JSON types alike
        assert seen["violations"] == done.violations
        listed = await world.call("GET", CHECKS, headers=world.ops)
        assert listed["data"][0]["violations"] == report["violations"]
        balance = seen["violations"]["balance_differs_from_postings"]
        assert [r["id"] for r in balance] == [account]
        assert int(balance[0]["posted"]) - int(balance[0]["postings_total"]) == 1
        unsettled = seen["violations"]["entry_unsettled_before_a_closed_cutoff"]
        first = next(r for r in unsettled if r["entry_id"] == line["entry_id"])
        assert datetime.fromisoformat(first["created_at"]) == line["created_at"]  # to the microsecond
    finally:
        await db.execute("DELETE FROM settlement_batches WHERE id = $1", batch_id)
        await db.execute("DELETE FROM settlement_runs WHERE id = $1", run_id)
        await db.execute("UPDATE balances SET posted_minor = posted_minor - 1 WHERE account_id = $1 AND shard = 0",
                         account)


ODD = ("SELECT '\\x00ff27225c'::bytea AS raw, 'NaN'::numeric AS nan, 12345678901234567890.000001::numeric AS big,"
       " 'infinity'::timestamptz AS forever, '2026-02-03 04:05:06.789012+08'::timestamptz AS at,"
       " interval '1 day 2 hours' AS span, '{\"k\": \"\\u00e9\\u4e2d\", \"q\": \"\\\"\"}'::jsonb AS doc,"
       " ARRAY[1, NULL, 3] AS list, E'quote \" back \\\\ nl \\n tab \\t \U0001F600' AS text,"
       " gen_random_uuid() AS id, true AS flag, NULL::int AS nothing, 'NaN'::float8 AS fnan,"
       " '-infinity'::float8 AS fneg, '12:34:56'::time AS clock, current_date AS day")


async def test_violation_rows_of_odd_types_survive_the_jsonb_round_trip(world: World, db: asyncpg.Connection) -> None:
    """An invariant whose rows hold bytea, NaN and huge numerics, infinite timestamps, intervals, jsonb, arrays,
    quotes and emoji, NaN floats: the check fails naming it with every row shown, as the synchronous report."""
    real = store._queries()

    def with_odd() -> list[tuple[str, str]]:
        return [*real, ("odd_values", ODD)]

    asked = await _ask(world)
    with mock.patch.object(store, "_queries", with_odd):
        done = await asyncio.wait_for(invariant_checks.run_next(_svc(world)), timeout=30)
        report = await world.call("GET", "/v1/operator/ledger/invariants", headers=world.ops)
    assert done is not None and done.status == "failed", done
    seen = await world.call("GET", f"{CHECKS}/{asked['id']}", headers=world.ops)
    assert list(seen["violations"]) == ["odd_values"] and len(seen["violations"]["odd_values"]) == 1
    row, reported = seen["violations"]["odd_values"][0], report["violations"]["odd_values"][0]
    reported.pop("id")
    assert row.pop("id") and row == reported
    assert row["text"] == 'quote " back \\ nl \n tab \t \U0001F600'
    assert row["doc"] is not None and "\u4e2d" in str(row["doc"])
    assert row["big"] == "12345678901234567890.000001" and row["list"] == [1, None, 3] and row["nothing"] is None
    assert seen["invariants_done"] == seen["invariants_total"] == len(with_odd())  # what this process ran


async def test_a_check_whose_statement_an_administrator_cancelled_is_not_reported_as_past_its_time_limit(
        world: World, db: asyncpg.Connection, clean_db: str) -> None:
    """pg_cancel_backend (a DBA ending a query, or a failover tool) ends the check's statement at once with
    query_canceled, the code its statement_timeout also raises: the check must not say it ran longer than
    ledger.check_timeout_s (30 s) when it ran a fraction of a second. The database failed this attempt: queued
    again (as after pg_terminate_backend), or an error that says what happened, not a time limit passed."""
    asked = await _ask(world)
    locker = await asyncpg.connect(clean_db)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE postings IN ACCESS EXCLUSIVE MODE")
            started_s = time.monotonic()
            running = asyncio.create_task(invariant_checks.run_next(_svc(world)))
            pid = await _waiting_pid(db, "postings")
            assert pid is not None
            assert await db.fetchval("SELECT pg_cancel_backend($1)", pid)
            done = await asyncio.wait_for(running, timeout=20)
            elapsed_s = time.monotonic() - started_s
    finally:
        await locker.close()
    assert elapsed_s < 5  # nowhere near its 30 s limit
    row = await db.fetchrow("SELECT status, error FROM invariant_checks WHERE id = $1",
                            decode(Kind.INVARIANT_CHECK, asked["id"]))
    queued_again = done is None and row["status"] == "queued"
    truthful_error = row["status"] == "error" and "longer than ledger.check_timeout_s" not in row["error"]
    assert queued_again or truthful_error, (row["status"], row["error"])


async def test_checks_created_at_one_instant_page_each_once_both_ways(world: World, db: asyncpg.Connection) -> None:
    """The list's key is (created_at, id): checks sharing a created_at (one clock tick) are neither repeated
    nor skipped across pages, walking older or newer."""
    ids = [uuid.uuid4() for _ in range(9)]
    await db.executemany(
        "INSERT INTO invariant_checks (id, status, requested_by, created_at, started_at, finished_at, attempts,"
        " invariants_total, invariants_done, violations) VALUES ($1, 'passed', 'op_x', '2026-01-01T00:00:00Z',"
        " '2026-01-01T00:00:00Z', '2026-01-01T00:00:01Z', 1, 3, 3, '{}')", [(i,) for i in ids])
    seen: list[str] = []
    params: dict[str, str] = {"limit": "4"}
    for _ in range(5):
        page = await world.call("GET", CHECKS, headers=world.ops, params=params)
        seen += [c["id"] for c in page["data"]]
        if not page["has_more"]:
            break
        params = {"limit": "4", "starting_after": page["data"][-1]["id"]}
    assert sorted(seen) == sorted(f"chk_{i.hex}" for i in ids) and len(seen) == len(ids), seen
    back: list[str] = []
    params = {"limit": "4", "ending_before": seen[-1]}
    for _ in range(5):
        page = await world.call("GET", CHECKS, headers=world.ops, params=params)
        back = [c["id"] for c in page["data"]] + back
        if not page["has_more"]:
            break
        params = {"limit": "4", "ending_before": page["data"][0]["id"]}
    assert back == seen[:-1]
