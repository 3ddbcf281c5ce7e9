"""Operator tooling: the ledger proof, readiness."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import msgspec

from gateway.errors import Unavailable
from gateway.services import views
from gateway.services.context import Services
from gateway.store import invariants
from gateway.store.db import ran_out


async def invariant_report(svc: Services) -> views.InvariantReport:
    """The invariants checked now, within the request's statement timeout; a ledger that outgrew it is told
    to ask for a background check (``services.invariant_checks``), which no retry of this request replaces."""
    started_s = time.monotonic()
    try:
        async with svc.db.connection() as conn:
            found = await invariants.check(conn)
    except Unavailable as exc:
        # The session's lock_timeout is shorter than its statement_timeout: a lock waited for stays database_busy.
        if ran_out(exc, time.monotonic() - started_s, svc.settings.database.statement_timeout_s, lock_waits=False):
            raise Unavailable("the ledger is too large to check within a request (database.statement_timeout_s):"
                              " ask for a background check, POST /v1/operator/ledger/invariant_checks",
                              code="ledger_too_large_for_a_request") from exc
        raise
    violations = invariants.violated(found)
    return views.InvariantReport(ok=not violations, violations=violations)


class Readiness(msgspec.Struct, kw_only=True):
    status: Literal["ok", "degraded", "unavailable"]  # degraded: Redis down, still serving; unavailable: no database
    database: Literal["ok", "down"]
    redis: Literal["ok", "down"]


async def readiness(svc: Services) -> Readiness:
    database: Literal["ok", "down"]
    try:
        await asyncio.wait_for(svc.db.fetchval("SELECT 1"), timeout=2)
        database = "ok"
    except Exception:
        database = "down"
    redis: Literal["ok", "down"] = "ok" if await svc.accel.ping() else "down"
    status: Literal["ok", "degraded", "unavailable"] = (
        "unavailable" if database != "ok" else ("degraded" if redis != "ok" else "ok"))
    return Readiness(status=status, database=database, redis=redis)
