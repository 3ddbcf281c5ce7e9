"""Settle a day of captured payments generated directly in the database, and write the run's files.

Generates ``--payments`` captured payments (default 1,000,000) over ``--merchants`` (default 1,000)
in one business day (UTC, cutoff 00:00) with INSERT ... SELECT generate_series: payments, their
capture journal entries (what the close reads) and the merchants' receivable and fee balances
they imply (so the ledger's balances read right after the close; postings are not generated: the
close never reads them). Then times ``settle`` (the close: one transaction, set-based) and the
file writing (streamed to a temporary directory), and prints seconds, rows and peak RSS.
Nothing is asserted. The database (its name must contain "bench") is created fresh and dropped.

    .venv/bin/python bench/settlement.py [--payments 1000000] [--merchants 1000] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gateway import settings as settings_mod  # noqa: E402
from gateway.cli import _Directory  # noqa: E402
from gateway.domain.ids import Kind, encode  # noqa: E402
from gateway.services import settlement  # noqa: E402
from gateway.services.context import Services  # noqa: E402
from gateway.store import db, invariants  # noqa: E402

DAY = date(2026, 3, 2)
SETTLEMENT_CHECKS = frozenset({
    "settlement_batch_differs_from_its_entries", "entry_settled_by_a_wrong_batch",
    "entry_unsettled_before_a_closed_cutoff", "carry_over_not_carried", "merchant_receivable_differs_from_unsettled",
    "unearned_fees_differ_from_unsettled", "revenue_differs_from_batch_fees",
    "merchant_payable_differs_from_unpaid_payouts", "batch_payout_mismatch", "payout_cleared_differs_from_status",
})
FEE_BPS = 60


async def _drop(url: str) -> None:
    admin = await asyncpg.connect(url.rsplit("/", 1)[0] + "/postgres")
    try:
        name = url.rsplit("/", 1)[1]
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def generate(url: str, payments: int, merchants: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET statement_timeout = 0")
        await conn.execute(
            "INSERT INTO merchants (id, name, mcc, country, city, fee_bps)"
            " SELECT gen_random_uuid(), 'Merchant ' || n, '5812', 'CN', 'Beijing', $2 FROM generate_series(1, $1) n",
            merchants, FEE_BPS)
        # Amounts 100..100,099 minor units; fee half-up as at capture; times spread over the day.
        await conn.execute(
            """
            WITH m AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM merchants)
            INSERT INTO payments (id, merchant_id, amount_minor, currency, status, capture_method, expires_at,
                                  authorized_minor, captured_minor, fee_minor, fee_bps, created_at, updated_at)
            SELECT gen_random_uuid(), m.id, a.amount, 'CNY', 'succeeded', 'automatic', $3::timestamptz + interval '1 day',
                   a.amount, a.amount, (a.amount * $4 + 5000) / 10000, $4, a.at, a.at
              FROM generate_series(0::int8, $1::int8 - 1) g
              CROSS JOIN LATERAL (SELECT 100 + (g * 7919) % 100000 AS amount,
                                         $3::timestamptz + (g % 86400) * interval '1 second' AS at) a
              JOIN m ON m.n = g % $2
            """,
            payments, merchants, DAY, FEE_BPS)
        await conn.execute("INSERT INTO journal_entries (kind, payment_id, created_at)"
                           " SELECT 'capture', id, created_at FROM payments")
        for kind in ("merchant_receivable", "merchant_payable"):
            await conn.execute(
                "INSERT INTO accounts (kind, owner_id, currency, no_overdraft, shard_count)"
                " SELECT $1, id, 'CNY', false, 32 FROM merchants", kind)
        await conn.execute("INSERT INTO accounts (kind, owner_id, currency, no_overdraft, shard_count)"
                           " VALUES ('fees', NULL, 'CNY', false, 32), ('revenue', NULL, 'CNY', false, 32),"
                           " ('clearing', NULL, 'CNY', false, 32)")
        await conn.execute("INSERT INTO balances (account_id, shard, no_overdraft)"
                           " SELECT a.id, s, false FROM accounts a, generate_series(0, a.shard_count - 1) s")
        await conn.execute(
            "UPDATE balances b SET posted_minor = t.net FROM (SELECT a.id, sum(p.captured_minor - p.fee_minor) AS net"
            " FROM payments p JOIN accounts a ON a.owner_id = p.merchant_id AND a.kind = 'merchant_receivable'"
            " GROUP BY a.id) t WHERE b.account_id = t.id AND b.shard = 0")
        await conn.execute(
            "UPDATE balances b SET posted_minor = (SELECT sum(fee_minor) FROM payments)"
            " FROM accounts a WHERE a.id = b.account_id AND a.kind = 'fees' AND b.shard = 0")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/gateway_bench_settlement")
    parser.add_argument("--payments", type=int, default=1_000_000)
    parser.add_argument("--merchants", type=int, default=1_000)
    parser.add_argument("--check", action="store_true",
                        help="run the settlement invariants after the run (the generated day has no postings,"
                             " so the posting invariants are left out)")
    args = parser.parse_args()
    if "bench" not in args.database_url.rsplit("/", 1)[-1] or "127.0.0.1" not in args.database_url:
        raise SystemExit("refusing: the database must be on 127.0.0.1 and its name must contain 'bench'")
    await _drop(args.database_url)
    await db.migrate(args.database_url)
    out = Path(tempfile.mkdtemp(prefix="gateway-bench-settlement-"))
    try:
        started = time.perf_counter()
        await generate(args.database_url, args.payments, args.merchants)
        print(f"generated {args.payments:,} captured payments over {args.merchants:,} merchants"
              f" in {time.perf_counter() - started:.1f} s")
        config = settings_mod.load(database={"url": args.database_url, "pool_min": 1, "pool_max": 4})
        svc = await Services.start(config)
        try:
            conn = await asyncpg.connect(args.database_url)
            try:
                merchant_ids = [r["id"] for r in await conn.fetch("SELECT id FROM merchants ORDER BY id")]
            finally:
                await conn.close()
            for n, merchant_id in enumerate(merchant_ids):  # payout accounts (sealed), so pain.001 has every payout
                await settlement.set_payout_account(svc, encode(Kind.MERCHANT, merchant_id), f"Merchant {n} Ltd",
                                                    "Bench Bank", f"GB{n:02d}BENC{n:014d}"[:22], "BENCGB22")
            rss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            started = time.perf_counter()
            run = await settlement.settle(svc, DAY)
            close_s = time.perf_counter() - started
            started = time.perf_counter()
            digests = await settlement.write_run_files(svc, run.id, _Directory(out))
            files_s = time.perf_counter() - started
            rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            again = time.perf_counter()
            rerun = await settlement.settle(svc, DAY)
            rerun_s = time.perf_counter() - again
        finally:
            await svc.stop()
        size_mb = sum(d.size_bytes for d in digests) / 1e6
        (total,) = run.totals
        print(f"close (one transaction): {close_s:.1f} s; {run.batch_count:,} batches, {run.payout_count:,} payouts,"
              f" captured {total.captured:,}, fee {total.fee:,}, payout {total.payout:,} (minor units)")
        print(f"files: {files_s:.1f} s; {len(digests):,} files, {size_mb:.0f} MB (streamed)")
        print(f"settle total: {close_s + files_s:.1f} s; re-run (idempotent): {rerun_s:.2f} s,"
              f" {rerun.batches_closed_now} closed")
        print(f"peak RSS: {rss_kb / 1024:.0f} MB (before the run: {rss_before_kb / 1024:.0f} MB)")
        if args.check:
            conn = await asyncpg.connect(args.database_url)
            try:
                await conn.execute("SET statement_timeout = 0")
                started = time.perf_counter()
                broken = {k: v for k, v in (await invariants.check(conn)).items() if v and k in SETTLEMENT_CHECKS}
            finally:
                await conn.close()
            print(f"invariants ({time.perf_counter() - started:.1f} s):"
                  f" {'OK' if not broken else broken}")
    finally:
        shutil.rmtree(out, ignore_errors=True)
        await _drop(args.database_url)


if __name__ == "__main__":
    asyncio.run(main())
