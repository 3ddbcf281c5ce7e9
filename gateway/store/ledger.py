"""Ledger persistence: accounts, balance shards, journal entries and holds.

Invariants kept here (and proven after the fact by ``invariants.sql``):
- an entry, its postings and the balance changes they imply are written by ONE statement, so
  they commit or vanish together, inside the caller's transaction;
- a balance shard changes only together with postings (or holds): ``sum(shards.posted_minor)``
  equals the sum of the account's postings;
- no-overdraft accounts are protected by the ``balances_no_overdraft`` CHECK, which the database
  enforces under any concurrency; its violation is reported as ``InsufficientFunds``;
- shard rows are updated in (account_id, shard) order to keep lock order fixed.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass

import asyncpg

from gateway import metrics
from gateway.domain.ledger import NO_OVERDRAFT, AccountKind, AccountRef, Entry, EntryKind
from gateway.store.db import Connection

# Shards of each hot account: concurrent payments pick one at random, so a merchant every payer
# pays (and the fee account every payment touches) does not serialise them on one row.
HOT_SHARD_COUNT = 32
_NIL = uuid.UUID(int=0)


class InsufficientFunds(Exception):
    """The no-overdraft CHECK refused a change: the account lacks available funds."""


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    shard_count: int


# Account identities never change once committed, so caching them per process is safe.
_accounts: dict[AccountRef, Account] = {}


def _shard_count(kind: AccountKind) -> int:
    return 1 if kind in NO_OVERDRAFT or kind is AccountKind.WALLET else HOT_SHARD_COUNT


async def resolve_accounts(conn: Connection, refs: list[AccountRef]) -> dict[AccountRef, Account]:
    """Ids of the accounts, creating missing ones (with their shards) in their own transaction.

    Call outside the use case's transaction: a created account must be committed before its id is
    cached, or a rollback would leave the cache pointing at nothing.
    """
    missing = [ref for ref in dict.fromkeys(refs) if ref not in _accounts]
    if missing:
        rows = await conn.fetch(
            """
            WITH wanted AS (
                SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::bool[], $5::int2[])
                    AS w(kind, owner_id, currency, no_overdraft, shard_count)
            ), created AS (
                INSERT INTO accounts (kind, owner_id, currency, no_overdraft, shard_count)
                SELECT kind, NULLIF(owner_id, $6::uuid), currency, no_overdraft, shard_count FROM wanted
                ON CONFLICT DO NOTHING
                RETURNING id, kind, owner_id, currency, no_overdraft, shard_count
            ), shards AS (
                INSERT INTO balances (account_id, shard, no_overdraft)
                SELECT c.id, s, c.no_overdraft FROM created c, generate_series(0, c.shard_count - 1) AS s
            )
            SELECT id, kind, owner_id, currency, shard_count FROM created
            UNION ALL
            SELECT a.id, a.kind, a.owner_id, a.currency, a.shard_count
              FROM accounts a JOIN wanted w
                ON a.kind = w.kind AND COALESCE(a.owner_id, $6::uuid) = w.owner_id AND a.currency = w.currency
            """,
            [ref.kind.value for ref in missing],
            [ref.owner or _NIL for ref in missing],
            [ref.currency for ref in missing],
            [ref.kind in NO_OVERDRAFT for ref in missing],
            [_shard_count(ref.kind) for ref in missing],
            _NIL,
        )
        _remember(rows)
        # A concurrent request may have created some of them after this statement's snapshot:
        # its INSERT skipped them and its SELECT could not see them. Read those again.
        return await existing_accounts(conn, refs)
    return {ref: _accounts[ref] for ref in refs}


async def existing_accounts(conn: Connection, refs: list[AccountRef]) -> dict[AccountRef, Account]:
    """Ids of accounts that exist and are committed (read only: safe inside a transaction)."""
    await learn(conn, refs)
    return {ref: _accounts[ref] for ref in refs}


async def learn(conn: Connection, refs: list[AccountRef]) -> None:
    """Read into this process's cache the ids of those accounts that exist and are not cached yet (one
    round trip when some are missing; an account that does not exist yet stays unknown)."""
    missing = [ref for ref in refs if ref not in _accounts]
    if missing:
        _remember(await conn.fetch(
            "SELECT a.id, a.kind, a.owner_id, a.currency, a.shard_count FROM accounts a"
            " JOIN unnest($1::text[], $2::uuid[], $3::text[]) AS w(kind, owner_id, currency)"
            " ON a.kind = w.kind AND COALESCE(a.owner_id, $4::uuid) = w.owner_id AND a.currency = w.currency",
            [ref.kind.value for ref in missing], [ref.owner or _NIL for ref in missing],
            [ref.currency for ref in missing], _NIL,
        ))


def cached(refs: list[AccountRef]) -> dict[AccountRef, Account] | None:
    """The accounts if every one is known already (no database round trip), else None."""
    if all(ref in _accounts for ref in refs):
        return {ref: _accounts[ref] for ref in refs}
    return None


def _remember(rows: list[asyncpg.Record]) -> None:
    for row in rows:
        ref = AccountRef(AccountKind(row["kind"]), row["owner_id"], row["currency"])
        _accounts[ref] = Account(row["id"], row["shard_count"])


def _is_overdraft(exc: asyncpg.CheckViolationError) -> bool:
    return getattr(exc, "constraint_name", None) == "balances_no_overdraft"


@dataclass(frozen=True, slots=True)
class Movement:
    """An entry's postings and the balance shard changes they imply, as the arrays of one statement.

    Shards are in (account_id, shard) order, the lock order of every use case."""

    kind: str
    posting_accounts: list[int]
    posting_currencies: list[str]
    posting_amounts: list[int]
    shard_accounts: list[int]
    shards: list[int]
    deltas: list[int]
    released: list[int]

    def args(self) -> tuple[object, ...]:
        """The statement arguments ``entry_ctes`` numbers, in its order."""
        return (self.kind, self.posting_accounts, self.posting_currencies, self.posting_amounts,
                self.shard_accounts, self.shards, self.deltas, self.released)


def movement(entry: Entry, accounts: dict[AccountRef, Account], release_holds: dict[AccountRef, int] | None = None,
             ) -> Movement:
    """``release_holds`` lowers the held amount of accounts in the same statement (a capture consumes
    its authorisation's hold). Hot accounts take a random shard each time."""
    deltas: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
    for posting in entry.postings:
        account = accounts[posting.account]
        shard = 0 if account.shard_count == 1 else random.randrange(account.shard_count)
        deltas[(account.id, shard)][0] += posting.amount_minor
    for ref, amount in (release_holds or {}).items():
        deltas[(accounts[ref].id, 0)][1] += amount
    keys = sorted(deltas)
    return Movement(
        entry.kind.value, [accounts[p.account].id for p in entry.postings], [p.account.currency for p in entry.postings],
        [p.amount_minor for p in entry.postings], [k[0] for k in keys], [k[1] for k in keys],
        [deltas[k][0] for k in keys], [deltas[k][1] for k in keys],
    )


def locked_shards(accounts: str, shards: str) -> str:
    """A CTE body that locks the balance shards named by two array expressions in (account_id, shard)
    order, the order every use case takes them in: an UPDATE changes rows in the planner's order, so two
    statements sharing two hot shards would otherwise take them crosswise (review R15). The UPDATE that
    follows waits for it with ``(SELECT count(*) FROM l) >= 0`` in its WHERE."""
    return f"""SELECT 1 FROM balances b JOIN unnest({accounts}::int8[], {shards}::int2[]) AS k(account_id, shard)
                ON b.account_id = k.account_id AND b.shard = k.shard
             ORDER BY b.account_id, b.shard FOR UPDATE OF b"""


def entry_ctes(first: int, links: str, after: str | None = None) -> str:
    """The CTEs that write a ``Movement`` (arguments ``$first``..``$first+7`` in ``Movement.args`` order):
    ``e`` the journal entry (its links, e.g. ``"payment_id, $3"``: column names then values), ``p`` its
    postings, ``l`` the shards locked first in (account_id, shard) order (the update's own order is the
    planner's: two entries sharing two hot shards would take them crosswise), ``u`` one row per balance
    shard changed. All were written exactly when
    ``(SELECT count(*) FROM u) = cardinality(<shard accounts>)``. ``after`` names a CTE the entry
    waits for (so it is written after the rows that CTE locks, in the use cases' lock order)."""
    n = [f"${first + i}" for i in range(8)]
    columns, _, values = links.partition(";")
    source = f" FROM {after}" if after else ""
    return f"""
        e AS (
            INSERT INTO journal_entries (kind, {columns}) SELECT {n[0]}, {values}{source} RETURNING id
        ), p AS (
            INSERT INTO postings (entry_id, account_id, currency, amount_minor)
            SELECT e.id, t.account_id, t.currency, t.amount_minor
              FROM e, unnest({n[1]}::int8[], {n[2]}::text[], {n[3]}::int8[]) AS t(account_id, currency, amount_minor)
        ), l AS (
            {locked_shards(n[4], n[5])}
        ), u AS (
            UPDATE balances b
               SET posted_minor = b.posted_minor + d.delta, held_minor = b.held_minor - d.released
              FROM e, unnest({n[4]}::int8[], {n[5]}::int2[], {n[6]}::int8[], {n[7]}::int8[])
                   AS d(account_id, shard, delta, released)
             WHERE b.account_id = d.account_id AND b.shard = d.shard AND (SELECT count(*) FROM l) >= 0
            RETURNING 1
        )"""


def is_overdraft(exc: BaseException) -> bool:
    """The no-overdraft CHECK refused a balance change (a statement that posts failed for lack of funds)."""
    return isinstance(exc, asyncpg.CheckViolationError) and _is_overdraft(exc)


async def post(
    conn: Connection,
    entry: Entry,
    accounts: dict[AccountRef, Account],
    *,
    payment_id: uuid.UUID | None = None,
    refund_id: uuid.UUID | None = None,
    transfer_id: uuid.UUID | None = None,
    payout_id: uuid.UUID | None = None,
    conversion_id: uuid.UUID | None = None,
    release_holds: dict[AccountRef, int] | None = None,
    move: Movement | None = None,
) -> int:
    """Write the entry, its postings and the balance changes in one statement; returns the entry id.

    ``release_holds`` lowers the held amount of accounts in the same statement (a capture consumes
    its authorisation's hold). ``move``: the entry's movement chosen (and its shards locked, ``lock``)
    earlier in the transaction.
    """
    if move is None:
        move = movement(entry, accounts, release_holds)
    started_s = time.perf_counter()
    try:
        entry_id: int = await conn.fetchval(
            f"""
            WITH {entry_ctes(1, "payment_id, refund_id, transfer_id, payout_id, conversion_id; $9, $10, $11, $12, $13")}
            SELECT e.id FROM e WHERE (SELECT count(*) FROM u) = cardinality($5::int8[])
            """,
            *move.args(), payment_id, refund_id, transfer_id, payout_id, conversion_id,
        )
    except asyncpg.CheckViolationError as exc:
        if _is_overdraft(exc):
            raise InsufficientFunds() from exc
        raise
    finally:
        metrics.LEDGER_POST_DURATION.labels(entry.kind.value).observe(time.perf_counter() - started_s)
    if entry_id is None:
        raise RuntimeError("a balance shard of the entry is missing")
    return entry_id


async def post_together(conn: Connection, entries: list[Entry], accounts: dict[AccountRef, Account], *,
                        payment_id: uuid.UUID | None = None, release_holds: dict[AccountRef, int] | None = None,
                        ) -> None:
    """Write several entries (a capture and the credits it gives: cashback, a first-payment gift; or a
    registration's gifts), each linked to ``payment_id``, in ONE statement: the balance shards of all
    of them change by one UPDATE after they are locked in (account_id, shard) order, so entries posted one after the other
    never take two shards of the promotions account (or any other) in two orders. The entries' ids
    follow the list's order; ``release_holds`` goes with the first. The later entries (credits) never
    fund the first, nor do the first's own credits of an account it debits (a merchant-funded cashback, two
    legs of its capture's entry): ``InsufficientFunds`` when a no-overdraft account could not take the
    first's debits alone."""
    if len(entries) == 1 and not _credits_what_it_debits(entries[0]):
        await post(conn, entries[0], accounts, payment_id=payment_id, release_holds=release_holds)
        return
    entry, *credits = entries
    moves = [movement(entry, accounts, release_holds), *(movement(credit, accounts) for credit in credits)]
    deltas: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0, 0])  # all entries', released, first's debits
    for move in moves:
        for account_id, shard, delta, released in zip(move.shard_accounts, move.shards, move.deltas, move.released,
                                                      strict=True):
            deltas[(account_id, shard)][0] += delta
            deltas[(account_id, shard)][1] += released
    for posting in entry.postings:  # a no-overdraft account has one shard (0): what the first entry takes of it
        if posting.account.kind in NO_OVERDRAFT and posting.amount_minor < 0:
            deltas[(accounts[posting.account].id, 0)][2] += posting.amount_minor
    kinds = [move.kind for move in moves]
    numbers = [n for n, move in enumerate(moves, start=1) for _ in move.posting_accounts]
    account_ids = [a for move in moves for a in move.posting_accounts]
    currencies = [c for move in moves for c in move.posting_currencies]
    amounts = [a for move in moves for a in move.posting_amounts]
    keys = sorted(deltas)
    started_s = time.perf_counter()
    try:
        written: int | None = await conn.fetchval(
            """
            WITH e AS (
                INSERT INTO journal_entries (kind, payment_id)
                SELECT k.kind, $1 FROM unnest($2::text[]) WITH ORDINALITY AS k(kind, n) ORDER BY k.n
                RETURNING id
            ), numbered AS (
                SELECT id, row_number() OVER (ORDER BY id) AS n FROM e
            ), p AS (
                INSERT INTO postings (entry_id, account_id, currency, amount_minor)
                SELECT numbered.id, t.account_id, t.currency, t.amount_minor
                  FROM unnest($3::int8[], $4::int8[], $5::text[], $6::int8[]) AS t(n, account_id, currency, amount_minor)
                  JOIN numbered ON numbered.n = t.n
            ), l AS (
                """ + locked_shards("$7", "$8") + """
            ), u AS (
                -- The credits never pay for the first entry: a wallet that could not take the first's debits
                -- alone is set to exactly that, and the no-overdraft CHECK refuses it (InsufficientFunds).
                UPDATE balances b
                   SET posted_minor = b.posted_minor + CASE
                           WHEN b.no_overdraft AND b.posted_minor + d.first_delta - (b.held_minor - d.released) < 0
                           THEN d.first_delta ELSE d.delta END,
                       held_minor = b.held_minor - d.released
                  FROM unnest($7::int8[], $8::int2[], $9::int8[], $10::int8[], $11::int8[])
                       AS d(account_id, shard, delta, released, first_delta)
                 WHERE b.account_id = d.account_id AND b.shard = d.shard AND EXISTS (SELECT 1 FROM e)
                   AND (SELECT count(*) FROM l) >= 0
                RETURNING 1
            )
            SELECT count(*) FROM e WHERE (SELECT count(*) FROM u) = cardinality($7::int8[])
            """,
            payment_id, kinds, numbers, account_ids, currencies, amounts,
            [k[0] for k in keys], [k[1] for k in keys], [deltas[k][0] for k in keys], [deltas[k][1] for k in keys],
            [deltas[k][2] for k in keys],
        )
    except asyncpg.CheckViolationError as exc:
        if _is_overdraft(exc):
            raise InsufficientFunds() from exc
        raise
    finally:
        metrics.LEDGER_POST_DURATION.labels(entry.kind.value).observe(time.perf_counter() - started_s)
    if written != len(entries):
        raise RuntimeError("a balance shard of the entries is missing")


def _credits_what_it_debits(entry: Entry) -> bool:
    """Whether the entry both debits and credits one no-overdraft account (a capture paying its payer the
    merchant's cashback): the credit must not fund the debit, which one net balance change cannot tell."""
    signs: dict[AccountRef, set[bool]] = defaultdict(set)
    for posting in entry.postings:
        if posting.account.kind in NO_OVERDRAFT:
            signs[posting.account].add(posting.amount_minor > 0)
    return any(len(found) == 2 for found in signs.values())


async def post_batches(conn: Connection, entries: list[tuple[uuid.UUID, Entry]],
                       accounts: dict[AccountRef, Account]) -> None:
    """Write many settlement entries (keyed by their batch id) in one statement, after locking every
    balance shard they touch in (account_id, shard) order, the order every use case locks them in."""
    deltas: dict[tuple[int, int], int] = defaultdict(int)
    batch_ids: list[uuid.UUID] = []
    account_ids: list[int] = []
    currencies: list[str] = []
    amounts: list[int] = []
    for batch_id, entry in entries:
        if entry.kind is not EntryKind.SETTLEMENT:
            raise ValueError("post_batches writes settlement entries only")
        for posting in entry.postings:
            account = accounts[posting.account]
            shard = 0 if account.shard_count == 1 else random.randrange(account.shard_count)
            deltas[(account.id, shard)] += posting.amount_minor
            batch_ids.append(batch_id)
            account_ids.append(account.id)
            currencies.append(posting.account.currency)
            amounts.append(posting.amount_minor)
    if not entries:
        return
    keys = sorted(deltas)
    await conn.execute(
        "SELECT 1 FROM balances b JOIN unnest($1::int8[], $2::int2[]) AS k(account_id, shard)"
        " ON b.account_id = k.account_id AND b.shard = k.shard ORDER BY b.account_id, b.shard FOR UPDATE OF b",
        [k[0] for k in keys], [k[1] for k in keys],
    )
    updated = await conn.fetchval(
        """
        WITH e AS (
            INSERT INTO journal_entries (kind, batch_id)
            SELECT $1, b FROM unnest($2::uuid[]) AS b RETURNING id, batch_id
        ), p AS (
            INSERT INTO postings (entry_id, account_id, currency, amount_minor)
            SELECT e.id, t.account_id, t.currency, t.amount_minor
              FROM unnest($3::uuid[], $4::int8[], $5::text[], $6::int8[]) AS t(batch_id, account_id, currency, amount_minor)
              JOIN e ON e.batch_id = t.batch_id
        ), l AS (
            """ + locked_shards("$7", "$8") + """
        ), u AS (
            UPDATE balances b SET posted_minor = b.posted_minor + d.delta
              FROM unnest($7::int8[], $8::int2[], $9::int8[]) AS d(account_id, shard, delta)
             WHERE b.account_id = d.account_id AND b.shard = d.shard AND (SELECT count(*) FROM l) >= 0
            RETURNING 1
        )
        SELECT count(*) FROM u
        """,
        EntryKind.SETTLEMENT.value, [batch_id for batch_id, _ in entries], batch_ids, account_ids, currencies, amounts,
        [k[0] for k in keys], [k[1] for k in keys], [deltas[k] for k in keys],
    )
    if updated != len(keys):
        raise RuntimeError("a balance shard of a settlement entry is missing")


async def lock(conn: Connection, *moves: Movement) -> None:
    """Lock movements' balance shards, all of them in one (account_id, shard) order, ahead of their ``post``:
    a use case that posts them after another entry takes their hot shards first all the same, in the lock
    order (several at once: the expiry worker's batch)."""
    await conn.execute(
        "SELECT 1 FROM balances b JOIN unnest($1::int8[], $2::int2[]) AS k(account_id, shard)"
        " ON b.account_id = k.account_id AND b.shard = k.shard ORDER BY b.account_id, b.shard FOR UPDATE OF b",
        [a for move in moves for a in move.shard_accounts], [s for move in moves for s in move.shards],
    )


async def lock_single_shard(conn: Connection, account_ids: list[int]) -> None:
    """Lock the balance rows of single-shard accounts (wallets) in account id order, the use cases' lock
    order. A ``post`` alone updates its rows in whatever order the plan joins them: two entries sharing
    two such rows (one holder's two wallets) could take them crosswise and deadlock."""
    await conn.execute(
        "SELECT 1 FROM balances WHERE account_id = ANY($1::int8[]) AND shard = 0 ORDER BY account_id FOR UPDATE",
        account_ids,
    )


async def hold(conn: Connection, account: Account, amount_minor: int) -> None:
    """Reserve funds on a single-shard account; ``InsufficientFunds`` if they are not available."""
    try:
        await conn.execute(
            "UPDATE balances SET held_minor = held_minor + $2 WHERE account_id = $1 AND shard = 0",
            account.id,
            amount_minor,
        )
    except asyncpg.CheckViolationError as exc:
        if _is_overdraft(exc):
            raise InsufficientFunds() from exc
        raise


async def release(conn: Connection, account_id: int, amount_minor: int) -> None:
    await conn.execute(
        "UPDATE balances SET held_minor = held_minor - $2 WHERE account_id = $1 AND shard = 0",
        account_id,
        amount_minor,
    )


async def balances_of(conn: Connection, account_ids: list[int]) -> dict[int, tuple[int, int]]:
    """(posted, held) per account, summed over shards."""
    rows = await conn.fetch(
        "SELECT account_id, sum(posted_minor)::int8 AS posted, sum(held_minor)::int8 AS held"
        " FROM balances WHERE account_id = ANY($1::int8[]) GROUP BY account_id",
        account_ids,
    )
    return {row["account_id"]: (row["posted"], row["held"]) for row in rows}


async def accounts_of(conn: Connection, kind: AccountKind, owner_id: uuid.UUID) -> list[tuple[int, str]]:
    rows = await conn.fetch(
        "SELECT id, currency FROM accounts WHERE kind = $1 AND owner_id = $2 ORDER BY currency", kind.value, owner_id
    )
    return [(row["id"], row["currency"]) for row in rows]
