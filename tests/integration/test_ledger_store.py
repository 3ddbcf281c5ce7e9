"""The ledger store under concurrency: account creation races, balanced posting."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from gateway.domain import ledger
from gateway.store import ledger as ledger_store


async def test_concurrent_first_use_of_an_account_resolves_for_everyone(clean_db: str) -> None:
    """Two requests creating the same accounts at once both get their ids (the loser re-reads)."""
    merchant = uuid.uuid4()
    refs = [ledger.merchant(merchant, "CNY"), ledger.fees("CNY"), ledger.wallet(uuid.uuid4(), "CNY")]
    conns = [await asyncpg.connect(clean_db) for _ in range(6)]
    try:
        for _ in range(5):
            ledger_store._accounts.clear()
            await conns[0].execute("TRUNCATE balances, accounts CASCADE")
            results = await asyncio.gather(*(ledger_store.resolve_accounts(c, refs) for c in conns))
            ids = {tuple(r[ref].id for ref in refs) for r in results}
            assert len(ids) == 1
    finally:
        for conn in conns:
            await conn.close()
