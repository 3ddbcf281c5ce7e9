"""Reconcile a camt.053 statement of N top-up entries against N top-ups generated in the database.

The top-ups (transfers with their balanced journal entries, postings and balances) are written by
SQL ``generate_series`` into a fresh database; the statement is generated from them (every entry
1:1 by EndToEndId); the timed part is the import use case itself: parse (streamed), store the
entries, match, write the matches and mark the transfers reconciled, in one transaction. Prints
the seconds and the peak RSS of this process; asserts nothing about time. The ledger invariant
checker runs at the end; the database is dropped (unless ``--keep``).

    .venv/bin/python bench/reconcile.py [--entries 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
import uuid
from datetime import date, datetime
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import settings as settings_mod  # noqa: E402
from gateway.domain import ledger  # noqa: E402
from gateway.services import reconciliation  # noqa: E402
from gateway.services.context import Services  # noqa: E402
from gateway.store import db, invariants  # noqa: E402
from gateway.store import ledger as ledger_store  # noqa: E402
from gateway.banksim import Movement, book, camt053  # noqa: E402

DAY = date(2026, 3, 2)  # a Monday


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _generate(url: str, count: int) -> list[Movement]:
    holder, bank = uuid.uuid4(), uuid.uuid4()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO wallet_holders (id, phone, password_hash) VALUES ($1, '+8613800000000', 'x')",
                           holder)
        await conn.execute("INSERT INTO bank_accounts (id, holder_id, bank_name, number_masked, number_hash)"
                           " VALUES ($1, $2, 'ICBC', '****3445', '\\x00')", bank, holder)
        accounts = await ledger_store.resolve_accounts(conn, [ledger.wallet(holder, "CNY"), ledger.clearing("CNY")])
        wallet_id, clearing_id = accounts[ledger.wallet(holder, "CNY")].id, accounts[ledger.clearing("CNY")].id
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO transfers (id, holder_id, bank_account_id, kind, amount_minor, currency, created_at)"
                " SELECT gen_random_uuid(), $1, $2, 'top_up', 100 + (g * 7919) % 100000, 'CNY',"
                "        $3::timestamptz + g * interval '1 ms'"
                "   FROM generate_series(1, $4) AS g",
                holder, bank, datetime(DAY.year, DAY.month, DAY.day, 1), count,
            )
            await conn.execute("INSERT INTO journal_entries (kind, transfer_id, created_at)"
                               " SELECT 'top_up', id, created_at FROM transfers")
            await conn.execute(
                "INSERT INTO postings (entry_id, account_id, currency, amount_minor)"
                " SELECT e.id, x.account_id, 'CNY', x.sign * t.amount_minor"
                "   FROM journal_entries e JOIN transfers t ON t.id = e.transfer_id,"
                "        (VALUES ($1::int8, -1), ($2::int8, 1)) AS x(account_id, sign)",
                clearing_id, wallet_id,
            )
            total = await conn.fetchval("SELECT sum(amount_minor) FROM transfers")
            await conn.execute("UPDATE balances SET posted_minor = $2 WHERE account_id = $1 AND shard = 0",
                               wallet_id, total)
            await conn.execute("UPDATE balances SET posted_minor = $2 WHERE account_id = $1 AND shard = 0",
                               clearing_id, -total)
        await conn.execute("VACUUM ANALYZE")
        rows = await conn.fetch("SELECT id, amount_minor FROM transfers ORDER BY created_at")
    finally:
        await conn.close()
    return [Movement(f"tr_{r['id'].hex}", "CRDT", r["amount_minor"], DAY) for r in rows]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/gateway_bench_reconcile")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    if "bench" not in args.database_url.rsplit("/", 1)[-1]:
        print("refusing a database whose name does not contain 'bench'", file=sys.stderr)
        return 2
    await db.drop_database(args.database_url)
    await db.migrate(args.database_url)
    try:
        started = time.perf_counter()
        movements = await _generate(args.database_url, args.entries)
        print(f"generated {len(movements)} top-ups in the database in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        statement = camt053(book(movements), statement_id="BENCH-1", opening_minor=0)
        del movements
        print(f"generated a camt.053 statement of {len(statement) / 2**20:.1f} MiB in "
              f"{time.perf_counter() - started:.1f} s; peak RSS so far {_rss_mib():.0f} MiB")
        # The gateway's own session limits (statement 8 s, idle in transaction 5 s) apply as in production.
        config = settings_mod.load(env={}, database={"url": args.database_url, "pool_min": 1, "pool_max": 2})
        svc = await Services.start(config)
        try:
            marks: dict[str, float] = {}

            def progress(stage: str, done: int, total: int) -> None:
                marks.setdefault(f"{stage} {'done' if done == total else 'start'}", time.perf_counter() - started)

            started = time.perf_counter()
            reply = await reconciliation.import_statement(svc, None, statement, "camt053", progress=progress)
            elapsed = time.perf_counter() - started
        finally:
            await svc.stop()
        print(f"import + match: {elapsed:.1f} s ({args.entries / elapsed:,.0f} entries/s); "
              f"peak RSS {_rss_mib():.0f} MiB")
        print("stages (s from the start): " + ", ".join(f"{k} {v:.1f}" for k, v in marks.items()))
        print(f"summary: {reply.body.decode()}")
        conn = await asyncpg.connect(args.database_url)
        try:
            broken = {k: v for k, v in (await invariants.check(conn)).items() if v}
        finally:
            await conn.close()
        print("ledger invariants: OK" if not broken else f"ledger invariants BROKEN: {broken}")
        return 0 if not broken else 1
    finally:
        if not args.keep:
            await db.drop_database(args.database_url)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
