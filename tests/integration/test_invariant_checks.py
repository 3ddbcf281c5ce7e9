"""Ledger invariant checks in the background (``services.invariant_checks``): asked for over HTTP, run by a
worker in one snapshot within their own time limit, their lease renewed while they run, taken again when
their worker died, fenced by their attempt, ended as an error that says why when they cannot finish."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import pytest

from gateway.api.routing import SERVICES
from gateway.domain.ids import Kind, decode
from gateway.services import invariant_checks
from gateway.services.context import Services
from gateway.settings import Settings
from gateway.store import invariants as store
from tests.conftest import make_settings
from tests.integration.conftest import serving
from tests.integration.world import World, auth

pytestmark = pytest.mark.asyncio
CHECKS = "/v1/operator/ledger/invariant_checks"


@pytest.fixture
def settings() -> Settings:
    # A short lease, so that its renewal and its lapse show within a test.
    return make_settings(ledger={"check_lease_s": 0.6, "check_poll_s": 0.2, "check_timeout_s": 30.0})


def _svc(world: World) -> Services:
    return world.client.server.app[SERVICES]


async def _ask(world: World, key: str | None = None) -> Any:
    headers = {**world.ops, **({"Idempotency-Key": key} if key else {})}
    return await world.call("POST", CHECKS, 202, headers=headers, json={})


async def _paid(world: World) -> None:
    """Money moved (a top-up, a payment, a refund) so that the invariants have rows to read."""
    m = await world.merchant()
    h = await world.holder(top_up=50_000)
    p = await world.payment(m, 1_234)
    await world.pay(h, p["id"])
    await world.call("POST", f"/v1/payments/{p['id']}/refunds", 201, headers=m.headers, json={"amount": 234})


async def test_a_check_asked_for_runs_in_the_background_and_passes(clean_db: str, settings: Settings) -> None:
    async with serving(clean_db, settings, workers=True) as client:
        world = await World.create(client)
        await _paid(world)
        asked = await _ask(world)
        assert asked["object"] == "invariant_check" and asked["status"] in ("queued", "running")
        assert asked["ok"] is None and asked["invariants_total"] == store.count() and asked["id"].startswith("chk_")
        deadline = time.monotonic() + 30
        while True:
            seen = await world.call("GET", f"{CHECKS}/{asked['id']}", headers=world.ops)
            if seen["status"] not in ("queued", "running") or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert seen["status"] == "passed", seen
        assert seen["ok"] is True and seen["violations"] == {} and seen["error"] is None
        assert seen["invariants_done"] == seen["invariants_total"] and seen["attempts"] == 1
        assert seen["started"] is not None and seen["finished"] is not None and seen["finished"] >= seen["started"]
        listed = await world.call("GET", CHECKS, headers=world.ops)
        assert [c["id"] for c in listed["data"]] == [asked["id"]] and listed["has_more"] is False
        events = await world.call("GET", "/v1/operator/events", headers=world.ops,
                                  params={"type": "invariant_check.requested"})
        assert [e["data"]["object"]["id"] for e in events["data"]] == [asked["id"]]


async def test_a_broken_ledger_fails_the_check_naming_the_invariant_and_its_rows(
        world: World, db: asyncpg.Connection) -> None:
    await _paid(world)
    account = await db.fetchval("SELECT account_id FROM balances WHERE posted_minor > 0 ORDER BY account_id LIMIT 1")
    await db.execute("UPDATE balances SET posted_minor = posted_minor + 1 WHERE account_id = $1 AND shard = 0", account)
    try:
        asked = await _ask(world)
        done = await invariant_checks.run_next(_svc(world))
        assert done is not None and done.id == asked["id"] and done.status == "failed" and done.ok is False
        seen = await world.call("GET", f"{CHECKS}/{asked['id']}", headers=world.ops)
        assert seen["status"] == "failed" and "balance_differs_from_postings" in seen["violations"]
        assert [r["id"] for r in seen["violations"]["balance_differs_from_postings"]] == [account]
        # The synchronous report reads the same.
        report = await world.call("GET", "/v1/operator/ledger/invariants", headers=world.ops)
        assert set(report["violations"]) == set(seen["violations"])
    finally:  # repaired, or the fixture's own check fails the test
        await db.execute("UPDATE balances SET posted_minor = posted_minor - 1 WHERE account_id = $1 AND shard = 0",
                         account)


async def test_asking_again_while_one_is_queued_answers_that_one_and_a_key_replays(world: World) -> None:
    key = str(uuid.uuid4())
    first = await _ask(world, key)
    assert (await _ask(world))["id"] == first["id"]  # another key: the same check, still queued
    assert await _ask(world, key) == first  # the same key: the same answer
    done = await invariant_checks.run_next(_svc(world))
    assert done is not None and done.status == "passed"
    assert await invariant_checks.run_next(_svc(world)) is None  # nothing else was due
    assert await _ask(world, key) == first  # a replay still answers what it answered
    second = await _ask(world)
    assert second["id"] != first["id"] and second["status"] == "queued"
    listed = await world.call("GET", CHECKS, headers=world.ops, params={"limit": "1"})
    assert [c["id"] for c in listed["data"]] == [second["id"]] and listed["has_more"] is True
    older = await world.call("GET", CHECKS, headers=world.ops, params={"starting_after": second["id"]})
    assert [c["id"] for c in older["data"]] == [first["id"]] and older["data"][0]["status"] == "passed"


async def test_a_check_whose_worker_died_is_taken_again_once_its_lease_lapsed_and_the_dead_attempt_writes_nothing(
        world: World, db: asyncpg.Connection) -> None:
    asked = await _ask(world)
    taken = await store.claim(db, 0.6)  # a worker takes it, then dies
    assert taken is not None and taken["attempts"] == 1
    assert await invariant_checks.run_next(_svc(world)) is None  # its lease still runs: nobody else takes it
    await asyncio.sleep(0.8)
    done = await invariant_checks.run_next(_svc(world))
    assert done is not None and done.id == asked["id"] and done.status == "passed" and done.attempts == 2
    # The first attempt, had it come back, can neither renew nor write an outcome.
    assert not await store.renew(db, taken["id"], 1, 0.6, 3)
    assert await store.finish(db, taken["id"], 1, violations='{"forged": []}') is None
    seen = await world.call("GET", f"{CHECKS}/{asked['id']}", headers=world.ops)
    assert seen["status"] == "passed" and seen["violations"] == {}


async def test_a_running_check_renews_its_lease_and_shows_its_progress_then_one_taken_over_writes_nothing(
        world: World, db: asyncpg.Connection, clean_db: str) -> None:
    await _paid(world)
    asked = await _ask(world)
    locker = await asyncpg.connect(clean_db)
    try:
        # The last invariant reads risk_decisions: the check waits there, with every other invariant done.
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE risk_decisions IN ACCESS EXCLUSIVE MODE")
        running = asyncio.create_task(invariant_checks.run_next(_svc(world)))
        leases = []
        for _ in range(40):
            row = await db.fetchrow("SELECT status, lease_until, invariants_done FROM invariant_checks")
            if row["status"] == "running" and row["invariants_done"] > 0:
                leases.append(row["lease_until"])
                if len(leases) >= 2 and leases[-1] > leases[0]:
                    break
            await asyncio.sleep(0.1)
        assert len(leases) >= 2 and leases[-1] > leases[0], leases  # renewed while it waits
        assert 0 < row["invariants_done"] < store.count()
        # Another worker takes it over (as after a lapse): this attempt stops and writes nothing.
        await db.execute("UPDATE invariant_checks SET attempts = attempts + 1")
        assert await asyncio.wait_for(running, timeout=10) is None
    finally:
        await tx.rollback()
        await locker.close()
    row = await db.fetchrow("SELECT status, violations, attempts FROM invariant_checks WHERE id = $1",
                            decode(Kind.INVARIANT_CHECK, asked["id"]))
    assert row["status"] == "running" and row["violations"] is None and row["attempts"] == 2
    await db.execute("UPDATE invariant_checks SET lease_until = now() - interval '1 second'")
    done = await invariant_checks.run_next(_svc(world))
    assert done is not None and done.status == "passed" and done.attempts == 3


async def _waiting_on_a_lock(world: World, clean_db: str, settings_: dict[str, Any]) -> Any:
    """The check asked for, then run by a process with ``settings_`` while a table it reads is locked."""
    await _ask(world)
    svc = await Services.start(make_settings(ledger=settings_))
    locker = await asyncpg.connect(clean_db)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE postings IN ACCESS EXCLUSIVE MODE")
            return await asyncio.wait_for(invariant_checks.run_next(svc), timeout=20)
    finally:
        await locker.close()
        await svc.stop()


async def test_a_check_past_its_time_limit_ends_as_an_error_naming_where(world: World, clean_db: str) -> None:
    done = await _waiting_on_a_lock(world, clean_db, {"check_timeout_s": 0.5})
    assert done is not None and done.status == "error" and done.ok is False and done.violations is None
    assert done.error is not None and "ledger.check_timeout_s (0.5 s)" in done.error
    assert done.error.startswith("invariant entry_unbalanced ")  # the first invariant reads postings
    assert await invariant_checks.run_next(_svc(world)) is None  # an outcome: never taken again
    listed = await world.call("GET", CHECKS, headers=world.ops)
    assert listed["data"][0]["status"] == "error" and listed["data"][0]["error"] == done.error


async def test_an_attempt_the_database_failed_is_queued_again_and_ends_as_an_error_past_its_attempts(
        world: World, db: asyncpg.Connection, clean_db: str) -> None:
    asked = await _ask(world)
    svc = await Services.start(make_settings(ledger={"check_timeout_s": 30.0, "check_attempts_max": 1}))
    locker = await asyncpg.connect(clean_db)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE postings IN ACCESS EXCLUSIVE MODE")
            running = asyncio.create_task(invariant_checks.run_next(svc))
            waiting = None
            for _ in range(100):  # the check's session, waiting for the lock
                waiting = await db.fetchval("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                            " AND datname = current_database() AND pid <> pg_backend_pid()")
                if waiting is not None:
                    break
                await asyncio.sleep(0.05)
            assert waiting is not None
            await db.execute("SELECT pg_terminate_backend($1)", waiting)  # the database ends its session
            assert await asyncio.wait_for(running, timeout=20) is None
        row = await db.fetchrow("SELECT status, attempts, lease_until FROM invariant_checks")
        assert (row["status"], row["attempts"], row["lease_until"]) == ("queued", 1, None)  # at once, not at a lapse
        done = await invariant_checks.run_next(svc)  # its second attempt: one more than it may have
    finally:
        await locker.close()
        await svc.stop()
    assert done is not None and done.id == asked["id"] and done.status == "error" and done.attempts == 2
    assert done.error == "interrupted 1 times (ledger.check_attempts_max); ask for a new check"


@pytest.mark.parametrize(("method", "path"), [("POST", CHECKS), ("GET", CHECKS), ("GET", f"{CHECKS}/chk_{'0' * 32}")])
async def test_only_operators_ask_for_and_read_checks(world: World, method: str, path: str) -> None:
    m = await world.merchant()
    h = await world.holder()
    for headers in (m.headers, h.headers, auth("not-a-token"), {}):
        resp = await world.client.request(method, path, headers=headers, json={} if method == "POST" else None)
        assert resp.status in (401, 403), (headers, resp.status)
    assert await world.call("GET", CHECKS, headers=world.ops) == {"object": "list", "data": [], "has_more": False}


async def test_an_unknown_or_malformed_id_is_not_found_and_a_body_with_fields_is_refused(world: World) -> None:
    for text in (f"chk_{uuid.uuid4().hex}", "chk_xyz", f"pay_{uuid.uuid4().hex}"):
        body = await world.call("GET", f"{CHECKS}/{text}", 404, headers=world.ops)
        assert body["error"]["param"] == "id"
    body = await world.call("POST", CHECKS, 400, headers=world.ops, json={"now": True})
    assert body["error"]["code"] and await world.call("GET", CHECKS, headers=world.ops) == {
        "object": "list", "data": [], "has_more": False}
    bad = await world.call("GET", CHECKS, 400, headers=world.ops, params={"starting_after": "chk_nope"})
    assert bad["error"]["code"] == "invalid_cursor"


@pytest.mark.parametrize(("database", "code"), [
    ({"statement_timeout_s": 0.3, "lock_timeout_s": 5.0}, "ledger_too_large_for_a_request"),  # its statement ran out
    ({"statement_timeout_s": 5.0, "lock_timeout_s": 0.2}, "database_busy"),  # a lock it waited for: retry it
])
async def test_the_synchronous_report_past_the_statement_timeout_says_to_ask_for_a_background_check(
        clean_db: str, database: dict[str, Any], code: str) -> None:
    async with serving(clean_db, make_settings(database=database)) as client:
        world = await World.create(client)
        locker = await asyncpg.connect(clean_db)
        try:
            async with locker.transaction():  # a statement of the report waits here as one over a huge ledger runs
                await locker.execute("LOCK TABLE postings IN ACCESS EXCLUSIVE MODE")
                body = await world.call("GET", "/v1/operator/ledger/invariants", 503, headers=world.ops)
        finally:
            await locker.close()
        assert body["error"]["code"] == code
        if code == "ledger_too_large_for_a_request":
            assert CHECKS in body["error"]["message"]
        assert (await world.call("GET", "/v1/operator/ledger/invariants", headers=world.ops))["ok"] is True
