"""Operator tooling: the ledger proof, readiness."""

from __future__ import annotations

import asyncio

import msgspec

from gateway.services import views
from gateway.services.context import Services
from gateway.store import invariants


async def invariant_report(svc: Services) -> views.InvariantReport:
    async with svc.db.connection() as conn:
        found = await invariants.check(conn)
    violations = {name: [msgspec.to_builtins(r, str_keys=True) for r in rows] for name, rows in found.items() if rows}
    return views.InvariantReport(ok=not violations, violations=violations)


class Readiness(msgspec.Struct, kw_only=True):
    status: str  # "ok", "degraded" (Redis down: still serving), "unavailable" (no database)
    database: str
    redis: str


async def readiness(svc: Services) -> Readiness:
    try:
        await asyncio.wait_for(svc.db.fetchval("SELECT 1"), timeout=2)
        database = "ok"
    except Exception:
        database = "down"
    redis = "ok" if await svc.accel.ping() else "down"
    status = "unavailable" if database != "ok" else ("degraded" if redis != "ok" else "ok")
    return Readiness(status=status, database=database, redis=redis)
