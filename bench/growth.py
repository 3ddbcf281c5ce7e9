"""Insert and lookup rates of the append-only, high-volume tables as they grow (issue 14).

Grows events (partitioned by month, migration 0023), idempotency keys, payments and postings (not
partitioned; docs/scaling.md says why) by ``--rows`` each per step, for ``--steps`` steps, with
INSERT ... SELECT generate_series, and after each step times ``--ops`` operations of each kind on
one connection, one statement (or one short transaction) each:

- events: ``store.payments.insert_event`` (a new event now), ``store.payments.event`` (one by id);
- idempotency keys: ``store.idempotency.claim`` then ``complete`` (a new key), ``stored`` (one by key);
- payments: an insert shaped like the create use case's, ``store.payments.get`` (one by id);
- postings: a journal entry with its two postings, an account's latest 20 postings.

The grown rows look like a year of traffic: events and payments spread over the past 365 days (so
every month's partition grows), keys over the last 23 hours (inside the retention), postings over
1,000 accounts. Lookups pick uniformly among the rows grown so far (cold and hot alike). The session
runs with synchronous_commit off: the figure is the table's and its indexes' cost, not the WAL
flush, which is the same at any size. Prints rates and p50/p99 per step; asserts nothing. The
database (its name must contain "bench") is created fresh and dropped at the end.

    .venv/bin/python bench/growth.py [--rows 500000] [--steps 4] [--ops 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gateway.store import db, idempotency  # noqa: E402
from gateway.store import payments as payment_store  # noqa: E402

ROWS_MAX = 5_000_000
STEPS_MAX = 10
OPS_MAX = 100_000
BATCH_ROWS = 100_000
ACCOUNTS = 1000
CURRENCY = "CNY"
PRINCIPAL = "merchant:growth-bench"
SEED = 14


def grown_id(kind: str, n: int) -> uuid.UUID:
    """The id the growth SQL gives row ``n`` of a kind (md5 of kind||n), so lookups can name any row."""
    return uuid.UUID(hashlib.md5(f"{kind}{n}".encode()).hexdigest())


# Postings: each grown entry debits one of the bench's accounts and credits the next (ids are dense).
POSTINGS_GROW = """
    WITH acc AS MATERIALIZED (SELECT min(id) AS first FROM accounts WHERE kind = 'merchant_receivable'),
    e AS (
        INSERT INTO journal_entries (kind) SELECT 'bench' FROM generate_series($1::bigint, $2::bigint) RETURNING id
    )
    INSERT INTO postings (entry_id, account_id, currency, amount_minor)
    SELECT e.id, acc.first + (e.id + s.side) % $3, 'CNY', CASE WHEN s.side = 0 THEN -100 ELSE 100 END
      FROM e CROSS JOIN acc CROSS JOIN (VALUES (0), (1)) AS s (side)"""

GROW = {
    "events": """
        INSERT INTO events (id, type, merchant_id, object_id, data, created_at, deliverable)
        SELECT md5('ev' || g)::uuid, 'payment.succeeded', $3, md5('pay' || g)::uuid,
               jsonb_build_object('amount', g % 100000), now() - random() * interval '365 days', false
          FROM generate_series($1::bigint, $2::bigint) AS g""",
    "idempotency_keys": """
        INSERT INTO idempotency_keys (principal, key, request_hash, method, path, response_status, response_body,
                                      created_at)
        SELECT $3::text, 'key' || g, '\\x00', 'POST', '/v1/payments', 201, '\\x7b7d',
               now() - random() * interval '23 hours'
          FROM generate_series($1::bigint, $2::bigint) AS g""",
    "payments": """
        INSERT INTO payments (id, merchant_id, amount_minor, currency, status, capture_method, expires_at, fee_bps,
                              created_at, updated_at)
        SELECT md5('pay' || g)::uuid, $3, 100 + g % 100000, 'CNY', 'canceled', 'automatic', t + interval '15 minutes',
               0, t, t
          FROM generate_series($1::bigint, $2::bigint) AS g,
               LATERAL (SELECT now() - random() * interval '365 days') AS at (t)""",
    "postings": POSTINGS_GROW,
}


async def seed(conn: asyncpg.Connection) -> uuid.UUID:
    merchant_id = uuid.uuid4()
    await conn.execute("INSERT INTO merchants (id, name, mcc, country, city, fee_bps)"
                       " VALUES ($1, 'Growth bench', '5411', 'CN', 'Shanghai', 100)", merchant_id)
    await conn.execute(
        "INSERT INTO accounts (kind, owner_id, currency, no_overdraft, shard_count)"
        " SELECT 'merchant_receivable', gen_random_uuid(), $1, false, 1 FROM generate_series(1, $2)",
        CURRENCY, ACCOUNTS)
    return merchant_id


async def grow(conn: asyncpg.Connection, table: str, first: int, rows: int, merchant_id: uuid.UUID) -> float:
    started = time.perf_counter()
    scope: object = PRINCIPAL if table == "idempotency_keys" else merchant_id
    for start in range(first, first + rows, BATCH_ROWS):
        end = min(start + BATCH_ROWS, first + rows) - 1
        await conn.execute(GROW[table], start, end, ACCOUNTS if table == "postings" else scope, timeout=3600)
    await conn.execute(f"ANALYZE {table}")
    return time.perf_counter() - started


Op = Callable[[int], Awaitable[object]]


def operations(conn: asyncpg.Connection, merchant_id: uuid.UUID, grown: int, rng: random.Random,
               first_account: int) -> dict[str, Op]:
    async def event_insert(i: int) -> object:
        return await payment_store.insert_event(conn, "payment.succeeded", uuid.uuid4(), {"amount": i},
                                                merchant_id=merchant_id, holder_id=None, deliverable=False)

    async def event_lookup(_: int) -> object:
        found = await payment_store.event(conn, grown_id("ev", rng.randint(1, grown)), merchant_id)
        assert found is not None
        return found

    async def key_claim_complete(i: int) -> object:
        key = f"new-{uuid.uuid4()}"
        row = await idempotency.claim(conn, PRINCIPAL, key, b"\x01", "POST", "/v1/payments", 30)
        assert row.claimed and row.locked_at is not None
        return await idempotency.complete(conn, PRINCIPAL, key, row.locked_at, 201, b"{}", row.key_locked)

    async def key_lookup(_: int) -> object:
        found = await idempotency.stored(conn, PRINCIPAL, f"key{rng.randint(1, grown)}")
        assert found is not None
        return found

    async def payment_insert(i: int) -> object:
        return await conn.execute(
            "INSERT INTO payments (id, merchant_id, amount_minor, currency, status, capture_method, expires_at,"
            " fee_bps) VALUES ($1, $2, $3, $4, 'requires_payment_method', 'automatic', now() + interval '15 min', 0)",
            uuid.uuid4(), merchant_id, 100 + i, CURRENCY)

    async def payment_lookup(_: int) -> object:
        found = await payment_store.get(conn, grown_id("pay", rng.randint(1, grown)))
        assert found is not None
        return found

    async def posting_insert(i: int) -> object:
        account = first_account + i % ACCOUNTS
        return await conn.execute(
            """
            WITH e AS (INSERT INTO journal_entries (kind) VALUES ('bench') RETURNING id)
            INSERT INTO postings (entry_id, account_id, currency, amount_minor)
            SELECT e.id, a, 'CNY', x FROM e, (VALUES ($1::bigint, -100), ($2::bigint, 100)) AS l (a, x)""",
            account, first_account + (i + 1) % ACCOUNTS)

    async def posting_lookup(_: int) -> object:
        return await conn.fetch("SELECT id, entry_id, amount_minor FROM postings WHERE account_id = $1"
                                " ORDER BY id DESC LIMIT 20", first_account + rng.randrange(ACCOUNTS))

    return {"events insert": event_insert, "events lookup": event_lookup,
            "keys claim+complete": key_claim_complete, "keys lookup": key_lookup,
            "payments insert": payment_insert, "payments lookup": payment_lookup,
            "postings insert": posting_insert, "postings lookup": posting_lookup}


async def timed(op: Op, count: int) -> tuple[float, float, float]:
    """(operations per second, p50 ms, p99 ms)."""
    latencies: list[float] = []
    started = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        await op(i)
        latencies.append((time.perf_counter() - t0) * 1000)
    elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    return count / elapsed, cuts[49], cuts[98]


async def run(url: str, rows: int, steps: int, ops: int) -> None:
    await db.drop_database(url)
    await db.migrate(url)
    conn = await asyncpg.connect(url, timeout=10)
    rng = random.Random(SEED)
    try:
        await conn.execute("SET synchronous_commit = off")
        merchant_id = await seed(conn)
        first_account = await conn.fetchval("SELECT min(id) FROM accounts WHERE kind = 'merchant_receivable'")
        partitions = await conn.fetchval("SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass")
        print(f"growth bench: +{rows:,} rows per table per step, {steps} steps, {ops:,} operations of each kind;"
              f" events in {partitions} monthly partitions")
        for step in range(1, steps + 1):
            grow_s = {table: await grow(conn, table, (step - 1) * rows + 1, rows, merchant_id) for table in GROW}
            sizes = {table: await conn.fetchval(f"SELECT pg_size_pretty(pg_total_relation_size('{table}'))")
                     for table in ("idempotency_keys", "payments", "postings")}
            sizes["events"] = await conn.fetchval(
                "SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))) FROM pg_inherits"
                " WHERE inhparent = 'events'::regclass")
            print(f"\n{step * rows:>10,} grown rows per table (grown in "
                  + ", ".join(f"{t} {s:.0f} s" for t, s in grow_s.items()) + "); sizes "
                  + ", ".join(f"{t} {s}" for t, s in sizes.items()))
            for name, op in operations(conn, merchant_id, step * rows, rng, first_account).items():
                rate, p50, p99 = await timed(op, ops)
                print(f"  {name:<20} {rate:>8,.0f}/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")
    finally:
        await conn.close(timeout=10)
        await db.drop_database(url)


def bounded(high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not 1 <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between 1 and {high:,}")
        return value
    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=bounded(ROWS_MAX), default=500_000)
    parser.add_argument("--steps", type=bounded(STEPS_MAX), default=4)
    parser.add_argument("--ops", type=bounded(OPS_MAX), default=2000)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/gateway_growth_bench")
    args = parser.parse_args()
    if "bench" not in args.database_url.rsplit("/", 1)[-1]:
        parser.error("the database name must contain 'bench' (it is dropped)")
    asyncio.run(run(args.database_url, args.rows, args.steps, args.ops))


if __name__ == "__main__":
    main()
