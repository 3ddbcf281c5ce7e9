"""The agent's durable journal: SQLite in WAL mode with ``synchronous=FULL``.

Why SQLite rather than an append-only file with fsync: both give a durable commit (with
``synchronous=FULL`` every commit fsyncs the WAL before returning), but SQLite also gives atomic
multi-row transactions (the offline-limit check and the approval it allows are one step, under
``BEGIN IMMEDIATE``), indexed queries for the limits, and crash recovery of torn writes without
hand-written record framing, checksums or compaction. It ships with Python.

What it holds:
- ``operations``: every gateway POST's idempotency key and body, written *before* the request is
  sent, then marked ``done``/``failed`` on a definite answer. ``reverse`` and ``resolve`` entries
  left ``pending`` are compensations the forwarder still owes the gateway.
- ``sales``: one row per register request. A sale whose answer was decided but never confirmed
  delivered (``answering``) or never decided (``open``) when the agent died is compensated at
  start-up: its payments are reversed, because the register never recorded it (the EMV
  "reversal advice" rule).
- ``offline_taps``: taps approved while the gateway was unreachable, with their full request
  body, forwarded in approval order (a wallet's ATCs must reach the gateway in order).
- ``tap_counters``: every application transaction counter (ATC) the agent has seen, per wallet
  token, online or offline, approved, declined, refused or voided: the memory that refuses an
  offline replay. A genuine phone never shows one ATC twice; a relay replaying a captured
  cryptogram does, and offline the agent cannot check the cryptogram itself.
- ``meta``: the schema version (migrated forward step by step at open) and the sale sequence.

Invariants:
- Every write is one transaction, durable when the call returns (kill -9 safe). Writes made
  inside ``Journal.transaction()`` join it: one commit (one fsync) for all of them, or none.
- An offline tap is inserted only together with the limit check that allowed it.
- Counter before wire: an online tap's ATC is committed (fsynced) in ``tap_counters`` in the same
  transaction as its ``operations`` entry, and the checkout sends the tap only after that commit
  returned (``record_tap``). A crash after sending therefore never leaves an ATC the gateway may
  have burnt unknown to the journal; a crash before sending leaves one recorded that the gateway
  never saw, which only refuses a replay of it (a genuine phone's next tap counts higher).
- An offline tap's ATC is recorded in the transaction that decides it, whatever the decision,
  and it is approved only if it is higher than every ATC recorded for its token by any *other*
  tap (``terminal_transaction_id``): the tap whose own online attempt found the gateway
  unreachable is not a replay of itself. Counters are never lowered or deleted.
- Tokens are identified by their token number, as ``offline_taps`` and the tap bodies already
  store them (the forwarder needs it in clear to send the tap).
- Entries are marked done only on a definite gateway answer; nothing is ever deleted.
- ``terminal_transaction_id`` and idempotency keys are unique; re-recording one is a no-op.
- The file is created with mode 0600 (it holds wallet token numbers, never keys).
- One connection, used from one thread at a time: ``AsyncJournal`` runs every call on a single
  worker thread with a timeout, so the event loop never waits on fsync.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeVar

from pos_agent.errors import JournalError
from pos_agent.offline import Exposure, OfflineDecision, OfflineSnapshot, decide
from pos_agent.settings import OfflineLimits

__all__ = [
    "AsyncJournal",
    "Backlog",
    "Journal",
    "OfflineTap",
    "OfflineTapState",
    "OpKind",
    "OpState",
    "Operation",
    "Sale",
    "SaleState",
]

SCHEMA_VERSION: Final = 2
BUSY_TIMEOUT_S: Final = 5.0
CALL_TIMEOUT_S: Final = 10.0
LIST_LIMIT_MAX: Final = 1000

# Version 1, frozen: a new journal is created as version 1 and then migrated like an old one, so
# one path builds every journal. Changes go into a new step of ``_MIGRATIONS``, never here.
SCHEMA_V1: Final = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS operations (
    idempotency_key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    sale_reference TEXT NOT NULL,
    reference TEXT NOT NULL,
    payment_id TEXT,
    body TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
    outcome TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS operations_pending ON operations (state, kind, created_at);
CREATE INDEX IF NOT EXISTS operations_sale ON operations (sale_reference);
CREATE TABLE IF NOT EXISTS sales (
    reference TEXT PRIMARY KEY,
    amount_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'answering', 'answered', 'voided')),
    approved INTEGER NOT NULL DEFAULT 0,
    method TEXT,
    payment_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sales_state ON sales (state);
CREATE TABLE IF NOT EXISTS offline_taps (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    terminal_transaction_id TEXT NOT NULL UNIQUE,
    sale_reference TEXT NOT NULL,
    token_pan TEXT NOT NULL,
    atc INTEGER NOT NULL,
    amount_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    body TEXT NOT NULL,
    approved_at REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'forwarded', 'declined', 'voided')),
    attempt_count INTEGER NOT NULL DEFAULT 0,
    payment_id TEXT,
    outcome TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS offline_taps_state ON offline_taps (state, seq);
CREATE INDEX IF NOT EXISTS offline_taps_token ON offline_taps (token_pan, state);
CREATE INDEX IF NOT EXISTS offline_taps_time ON offline_taps (approved_at);
"""

_TAP_COUNTERS_V2: Final = """
CREATE TABLE tap_counters (
    terminal_transaction_id TEXT NOT NULL,
    token_pan TEXT NOT NULL,
    atc INTEGER NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (terminal_transaction_id, atc)
);
CREATE INDEX tap_counters_token ON tap_counters (token_pan, atc);
"""


def _statements(script: str) -> list[str]:
    """DDL split into statements (``executescript`` would commit the open transaction)."""
    return [statement for statement in script.split(";") if statement.strip()]


def _migrate_to_v2(db: sqlite3.Connection) -> None:
    """Add ``tap_counters`` and fill it with every ATC the version-1 journal already holds."""
    for statement in _statements(_TAP_COUNTERS_V2):
        db.execute(statement)
    db.execute(
        "INSERT OR IGNORE INTO tap_counters (terminal_transaction_id, token_pan, atc, seen_at)"
        " SELECT terminal_transaction_id, token_pan, atc, approved_at FROM offline_taps"
    )
    # Online taps kept their ATC only in the request body (journalled before sending).
    rows = db.execute("SELECT idempotency_key, body, created_at FROM operations WHERE kind = 'tap'")
    for key, body, created_at in rows.fetchall():
        tap = json.loads(body).get("tap") or {}
        if isinstance(tap.get("token_pan"), str) and isinstance(tap.get("atc"), int):
            db.execute(
                "INSERT OR IGNORE INTO tap_counters (terminal_transaction_id, token_pan, atc, seen_at)"
                " VALUES (?, ?, ?, ?)",
                (key, tap["token_pan"], tap["atc"], created_at),
            )


_MIGRATIONS: Final[tuple[tuple[int, Callable[[sqlite3.Connection], None]], ...]] = ((2, _migrate_to_v2),)
assert _MIGRATIONS[-1][0] == SCHEMA_VERSION


class OpKind(StrEnum):
    CREATE_PAYMENT = "create_payment"
    ISSUE_QR = "issue_qr"
    PAY_CODE = "pay_code"
    TAP = "tap"
    REVERSE = "reverse"
    RESOLVE = "resolve"
    """An attempt whose outcome stayed unknown: find its payments by reference and reverse them."""
    REFUND = "refund"
    """A refund the register asked for, of a sale's payment (``outcome`` ``answered`` once it has it)."""


class OpState(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class SaleState(StrEnum):
    OPEN = "open"
    ANSWERING = "answering"
    ANSWERED = "answered"
    VOIDED = "voided"


class OfflineTapState(StrEnum):
    PENDING = "pending"
    FORWARDED = "forwarded"
    DECLINED = "declined"
    VOIDED = "voided"


@dataclass(frozen=True, slots=True)
class Operation:
    idempotency_key: str
    kind: OpKind
    sale_reference: str
    reference: str
    payment_id: str | None
    body: dict[str, Any]
    state: OpState
    outcome: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class Sale:
    reference: str
    amount_minor: int
    currency: str
    state: SaleState
    approved: bool
    method: str | None
    payment_id: str | None


@dataclass(frozen=True, slots=True, repr=False)
class OfflineTap:
    seq: int
    terminal_transaction_id: str
    sale_reference: str
    token_pan: str
    atc: int
    amount_minor: int
    currency: str
    body: dict[str, Any]
    approved_at: float
    state: OfflineTapState
    attempt_count: int
    payment_id: str | None
    outcome: str | None

    def __repr__(self) -> str:  # the token number stays out of logs
        return (
            f"OfflineTap(seq={self.seq}, ttid={self.terminal_transaction_id}, atc={self.atc}, "
            f"amount_minor={self.amount_minor}, state={self.state.value})"
        )


class Journal:
    """Synchronous journal on one SQLite connection. Use ``AsyncJournal`` from asyncio code."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self._path = Path(path)
        self._clock = clock
        self.commit_count = 0
        """Commits (each one fsync) since the journal was opened: what a sale pays the disk."""
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            if not self._path.exists():
                os.close(os.open(self._path, os.O_CREAT | os.O_WRONLY, 0o600))
            self._db = sqlite3.connect(
                self._path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise JournalError(f"{self._path}: WAL mode refused (got {mode})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self.schema_version = self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"cannot open journal {self._path}: {exc}") from exc

    def _migrate(self) -> int:
        """Create version 1 if the file is new, then apply each later step once: one transaction,
        so an agent killed mid-upgrade finds the journal as it was."""
        with self._transaction(immediate=True):
            for statement in _statements(SCHEMA_V1):
                self._db.execute(statement)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', 1)")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('sale_sequence', 0)")
            version = int(self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise JournalError(f"{self._path}: schema version {version} is newer than this agent's"
                                   f" ({SCHEMA_VERSION}); refusing to open it")
            for target, step in _MIGRATIONS:
                if version < target:
                    step(self._db)
                    version = target
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
        return version

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        self._db.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _transaction(self, *, immediate: bool = False) -> _Transaction:
        return _Transaction(self, immediate=immediate)

    def transaction(self) -> _Transaction:
        """Several writes as one transaction: durable together at its end (one fsync), or not at all.

        For writes that follow each other with no request in between (the answer of one request
        and the key of the next): each is as durable before the next request as on its own.
        """
        return _Transaction(self, immediate=True)

    # -- sales -------------------------------------------------------------------------------

    def open_sale(self, label: str, amount_minor: int, currency: str) -> str:
        """Allocate the next sale reference (``LABEL-000042``) and record the sale as open."""
        now = self._clock()
        with self._transaction(immediate=True):
            self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'sale_sequence'")
            sequence = self._db.execute("SELECT value FROM meta WHERE key = 'sale_sequence'").fetchone()[0]
            reference = f"{label}-{sequence:06d}"
            self._db.execute(
                "INSERT INTO sales (reference, amount_minor, currency, state, created_at, updated_at)"
                " VALUES (?, ?, ?, 'open', ?, ?)",
                (reference, amount_minor, currency, now, now),
            )
        return reference

    def decide_sale(self, reference: str, *, approved: bool, method: str | None, payment_id: str | None) -> None:
        """The result is known and about to be sent to the register."""
        self._set_sale(reference, SaleState.ANSWERING, approved=approved, method=method, payment_id=payment_id)

    def sale_answered(self, reference: str) -> None:
        self._set_sale(reference, SaleState.ANSWERED)

    def sale_voided(self, reference: str) -> None:
        self._set_sale(reference, SaleState.VOIDED)

    def _set_sale(self, reference: str, state: SaleState, **columns: Any) -> None:
        assignments = "".join(f", {name} = ?" for name in columns)
        values = [int(v) if isinstance(v, bool) else v for v in columns.values()]
        with self._transaction():
            self._db.execute(
                f"UPDATE sales SET state = ?, updated_at = ?{assignments} WHERE reference = ?",
                (state.value, self._clock(), *values, reference),
            )

    def sale(self, reference: str) -> Sale | None:
        row = self._db.execute(
            "SELECT reference, amount_minor, currency, state, approved, method, payment_id FROM sales"
            " WHERE reference = ?",
            (reference,),
        ).fetchone()
        return _sale(row) if row else None

    def unfinished_sales(self) -> list[Sale]:
        rows = self._db.execute(
            "SELECT reference, amount_minor, currency, state, approved, method, payment_id FROM sales"
            " WHERE state IN ('open', 'answering') ORDER BY created_at LIMIT ?",
            (LIST_LIMIT_MAX,),
        ).fetchall()
        return [_sale(row) for row in rows]

    # -- operations --------------------------------------------------------------------------

    def record_operation(
        self,
        key: str,
        kind: OpKind,
        *,
        sale_reference: str,
        reference: str,
        body: dict[str, Any],
        payment_id: str | None = None,
    ) -> None:
        """Persist an operation before it is sent; re-recording the same key changes nothing."""
        now = self._clock()
        with self._transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO operations (idempotency_key, kind, sale_reference, reference, payment_id,"
                " body, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                (key, kind.value, sale_reference, reference, payment_id, json.dumps(body), now, now),
            )

    def record_tap(
        self,
        key: str,
        *,
        sale_reference: str,
        reference: str,
        token_pan: str,
        atc: int,
        body: dict[str, Any],
        payment_id: str | None = None,
    ) -> None:
        """Persist an online tap (settling ``payment_id``, if any) and its counter in one durable
        transaction, before it is sent.

        Approved or declined, a tap the gateway receives spends its ATC there; recording it here
        first is what lets an offline replay of it be refused later.
        """
        assert atc >= 0
        now = self._clock()
        with self._transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO operations (idempotency_key, kind, sale_reference, reference, payment_id,"
                " body, state, created_at, updated_at) VALUES (?, 'tap', ?, ?, ?, ?, 'pending', ?, ?)",
                (key, sale_reference, reference, payment_id, json.dumps(body), now, now),
            )
            self._record_counter(key, token_pan, atc, now)

    def _record_counter(self, terminal_transaction_id: str, token_pan: str, atc: int, now: float) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO tap_counters (terminal_transaction_id, token_pan, atc, seen_at) VALUES (?, ?, ?, ?)",
            (terminal_transaction_id, token_pan, atc, now),
        )

    def finish_operation(
        self, key: str, state: OpState, *, outcome: str | None = None, payment_id: str | None = None
    ) -> None:
        assert state is not OpState.PENDING
        with self._transaction():
            self._db.execute(
                "UPDATE operations SET state = ?, outcome = ?, payment_id = COALESCE(?, payment_id),"
                " updated_at = ? WHERE idempotency_key = ?",
                (state.value, outcome, payment_id, self._clock(), key),
            )

    def operation(self, key: str) -> Operation | None:
        row = self._db.execute(_OPERATION_SELECT + " WHERE idempotency_key = ?", (key,)).fetchone()
        return _operation(row) if row else None

    def operations_of_sale(self, sale_reference: str) -> list[Operation]:
        rows = self._db.execute(
            _OPERATION_SELECT + " WHERE sale_reference = ? ORDER BY created_at LIMIT ?",
            (sale_reference, LIST_LIMIT_MAX),
        ).fetchall()
        return [_operation(row) for row in rows]

    def pending_operations(self, kinds: tuple[OpKind, ...], *, created_before: float, limit: int) -> list[Operation]:
        assert 1 <= limit <= LIST_LIMIT_MAX
        marks = ", ".join("?" for _ in kinds)
        rows = self._db.execute(
            _OPERATION_SELECT + f" WHERE state = 'pending' AND kind IN ({marks}) AND created_at < ?"
            " ORDER BY created_at LIMIT ?",
            (*[k.value for k in kinds], created_before, limit),
        ).fetchall()
        return [_operation(row) for row in rows]

    # -- offline taps ------------------------------------------------------------------------

    def approve_offline_tap(
        self,
        limits: OfflineLimits,
        *,
        terminal_transaction_id: str,
        sale_reference: str,
        token_pan: str,
        atc: int,
        amount_minor: int,
        currency: str,
        expected_currency: str,
        body: dict[str, Any],
    ) -> OfflineDecision:
        """Check the offline limits and the counter and, if they allow it, record the approval:
        one transaction, which also records the tap's ATC whatever the decision."""
        now = self._clock()
        with self._transaction(immediate=True):
            snapshot = self._offline_snapshot(token_pan, terminal_transaction_id, now - limits.total_window_s)
            self._record_counter(terminal_transaction_id, token_pan, atc, now)
            decision = decide(
                limits, snapshot, amount_minor=amount_minor, atc=atc, currency_matches=currency == expected_currency
            )
            if decision.approved:
                self._db.execute(
                    "INSERT INTO offline_taps (terminal_transaction_id, sale_reference, token_pan, atc, amount_minor,"
                    " currency, body, approved_at, state, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                    (terminal_transaction_id, sale_reference, token_pan, atc, amount_minor, currency,
                     json.dumps(body), now, now),
                )
        return decision

    def _offline_snapshot(self, token_pan: str, terminal_transaction_id: str, window_start: float) -> OfflineSnapshot:
        def exposure(where: str, *args: Any) -> Exposure:
            count, amount = self._db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(amount_minor), 0) FROM offline_taps WHERE {where}", args
            ).fetchone()
            return Exposure(int(count), int(amount))

        blocked = self._db.execute(
            "SELECT 1 FROM offline_taps WHERE token_pan = ? AND state = 'declined' LIMIT 1", (token_pan,)
        ).fetchone()
        last_atc = self._db.execute(
            "SELECT MAX(atc) FROM tap_counters WHERE token_pan = ? AND terminal_transaction_id != ?",
            (token_pan, terminal_transaction_id),
        ).fetchone()[0]
        return OfflineSnapshot(
            token_pending=exposure("token_pan = ? AND state = 'pending'", token_pan),
            terminal_pending=exposure("state = 'pending'"),
            total_window=exposure("approved_at >= ? AND state != 'voided'", window_start),
            token_blocked=blocked is not None,
            token_last_atc=None if last_atc is None else int(last_atc),
        )

    def pending_offline_taps(self, limit: int, *, token_pan: str | None = None) -> list[OfflineTap]:
        assert 1 <= limit <= LIST_LIMIT_MAX
        where, args = ("state = 'pending'", ()) if token_pan is None else (
            "state = 'pending' AND token_pan = ?", (token_pan,))
        rows = self._db.execute(
            _OFFLINE_SELECT + f" WHERE {where} ORDER BY seq LIMIT ?", (*args, limit)
        ).fetchall()
        return [_offline_tap(row) for row in rows]

    def offline_taps_of_sale(self, sale_reference: str) -> list[OfflineTap]:
        rows = self._db.execute(
            _OFFLINE_SELECT + " WHERE sale_reference = ? ORDER BY seq LIMIT ?", (sale_reference, LIST_LIMIT_MAX)
        ).fetchall()
        return [_offline_tap(row) for row in rows]

    def offline_tap_attempted(self, terminal_transaction_id: str, outcome: str) -> None:
        with self._transaction():
            self._db.execute(
                "UPDATE offline_taps SET attempt_count = attempt_count + 1, outcome = ?, updated_at = ?"
                " WHERE terminal_transaction_id = ?",
                (outcome, self._clock(), terminal_transaction_id),
            )

    def finish_offline_tap(
        self, terminal_transaction_id: str, state: OfflineTapState, *, outcome: str, payment_id: str | None = None
    ) -> bool:
        """Move a pending offline tap to a final state; False if it was not pending any more."""
        assert state is not OfflineTapState.PENDING
        with self._transaction():
            cursor = self._db.execute(
                "UPDATE offline_taps SET state = ?, outcome = ?, payment_id = ?, attempt_count = attempt_count + 1,"
                " updated_at = ? WHERE terminal_transaction_id = ? AND state = 'pending'",
                (state.value, outcome, payment_id, self._clock(), terminal_transaction_id),
            )
            return cursor.rowcount == 1

    def void_offline_taps_of_sale(self, sale_reference: str) -> int:
        """The register never recorded this sale: its offline taps must never be forwarded."""
        with self._transaction():
            cursor = self._db.execute(
                "UPDATE offline_taps SET state = 'voided', outcome = 'answer_undelivered', updated_at = ?"
                " WHERE sale_reference = ? AND state = 'pending'",
                (self._clock(), sale_reference),
            )
            return cursor.rowcount

    def offline_backlog(self) -> Backlog:
        """Offline taps the gateway has not accepted yet: how many, and how long the oldest has waited."""
        count, oldest = self._db.execute(
            "SELECT COUNT(*), MIN(approved_at) FROM offline_taps WHERE state = 'pending'"
        ).fetchone()
        age_s = None if oldest is None else max(int(self._clock() - float(oldest)), 0)
        return Backlog(int(count), age_s)

    def counts(self) -> dict[str, int]:
        """Row counts by table and state, for logs and tests."""
        result: dict[str, int] = {}
        for table in ("operations", "sales", "offline_taps"):
            for state, count in self._db.execute(f"SELECT state, COUNT(*) FROM {table} GROUP BY state"):
                result[f"{table}.{state}"] = int(count)
        return result


@dataclass(frozen=True, slots=True)
class Backlog:
    count: int
    oldest_age_s: int | None
    """Whole seconds since the oldest pending offline tap was approved; None when there is none."""


class _Transaction:
    """``BEGIN``/``COMMIT`` on an autocommit connection; ``ROLLBACK`` on any exception. Inside an
    open transaction it joins it: the outermost one commits or rolls back."""

    def __init__(self, journal: Journal, *, immediate: bool) -> None:
        self._journal = journal
        self._db = journal._db
        self._begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"
        self._outermost = False

    def __enter__(self) -> None:
        self._outermost = not self._db.in_transaction
        if self._outermost:
            self._db.execute(self._begin)

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if not self._outermost:
            return
        if exc_type is None:
            self._db.execute("COMMIT")
            self._journal.commit_count += 1
        else:
            self._db.execute("ROLLBACK")


_OPERATION_SELECT: Final = (
    "SELECT idempotency_key, kind, sale_reference, reference, payment_id, body, state, outcome, created_at"
    " FROM operations"
)
_OFFLINE_SELECT: Final = (
    "SELECT seq, terminal_transaction_id, sale_reference, token_pan, atc, amount_minor, currency, body,"
    " approved_at, state, attempt_count, payment_id, outcome FROM offline_taps"
)


def _operation(row: tuple[Any, ...]) -> Operation:
    key, kind, sale_reference, reference, payment_id, body, state, outcome, created_at = row
    return Operation(key, OpKind(kind), sale_reference, reference, payment_id, json.loads(body), OpState(state),
                     outcome, float(created_at))


def _sale(row: tuple[Any, ...]) -> Sale:
    reference, amount_minor, currency, state, approved, method, payment_id = row
    return Sale(reference, int(amount_minor), currency, SaleState(state), bool(approved), method, payment_id)


def _offline_tap(row: tuple[Any, ...]) -> OfflineTap:
    (seq, ttid, sale_reference, token_pan, atc, amount_minor, currency, body, approved_at, state, attempt_count,
     payment_id, outcome) = row
    return OfflineTap(int(seq), ttid, sale_reference, token_pan, int(atc), int(amount_minor), currency,
                      json.loads(body), float(approved_at), OfflineTapState(state), int(attempt_count), payment_id,
                      outcome)


T = TypeVar("T")


class AsyncJournal:
    """Runs journal calls on one dedicated thread, each bounded by ``call_timeout_s``.

    A call that times out may still complete on the thread; callers treat the timeout as a
    failed write and do not send the operation it was meant to protect.
    """

    def __init__(self, journal: Journal, *, call_timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.sync = journal
        self._call_timeout_s = call_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")

    @classmethod
    def open(cls, path: str | Path) -> AsyncJournal:
        return cls(Journal(path))

    async def call(self, fn: Callable[[Journal], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._call_timeout_s):
                return await loop.run_in_executor(self._executor, fn, self.sync)
        except TimeoutError:
            raise JournalError(f"journal call took longer than {self._call_timeout_s:g} s") from None
        except sqlite3.Error as exc:
            raise JournalError(f"journal write failed: {exc}") from exc

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self.sync.close)
        self._executor.shutdown(wait=True)
