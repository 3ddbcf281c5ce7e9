"""Operator tooling: the ledger proof, readiness."""

from __future__ import annotations

import asyncio
from typing import Literal

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
