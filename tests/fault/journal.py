"""The client's durable journal (SQLite, WAL, ``synchronous=FULL``: every commit is fsynced).

Invariants: an operation (its Idempotency-Key, the request it stands for, what it intends) is
committed BEFORE the first byte is sent, so a crashed client still knows every key it may have
used; every definite answer is committed with the exact bytes received. A key is never reused
for another request, so the journal maps keys to intentions one to one. Writes run on one
thread of their own (in order), so an fsync does not stop the event loop and the other workers.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ops (
    key        TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,      -- create | pay | refund
    parent     TEXT,               -- the create key of the payment a pay or refund belongs to
    shop       INTEGER NOT NULL,
    holder     INTEGER NOT NULL,
    amount     INTEGER NOT NULL,
    method     TEXT NOT NULL,
    path       TEXT NOT NULL,
    actor      TEXT NOT NULL,      -- shop | holder: whose credentials sign the request
    body       TEXT NOT NULL,      -- the JSON request body
    intended_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS answers (
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL REFERENCES ops (key),
    status      INTEGER NOT NULL,
    body        BLOB NOT NULL,
    received_s  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_key ON answers (key);
"""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    received_s: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(slots=True)
class Op:
    key: str
    kind: str
    parent: str | None
    shop: int
    holder: int
    amount: int
    method: str
    path: str
    actor: str
    body: dict[str, Any]
    intended_s: float
    answers: list[Answer] = field(default_factory=list)

    @property
    def answer(self) -> Answer | None:
        """The first definite answer (later ones must be byte-identical; the checker says so if not)."""
        return self.answers[0] if self.answers else None


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")

    async def intend(self, op: Op) -> None:
        await asyncio.get_running_loop().run_in_executor(self._writer, self._intend, op)

    async def answered(self, key: str, answer: Answer) -> None:
        await asyncio.get_running_loop().run_in_executor(self._writer, self._answered, key, answer)

    def _intend(self, op: Op) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO ops VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (op.key, op.kind, op.parent, op.shop, op.holder, op.amount, op.method, op.path, op.actor,
                 json.dumps(op.body, sort_keys=True), op.intended_s))

    def _answered(self, key: str, answer: Answer) -> None:
        with self._db:
            self._db.execute("INSERT INTO answers (key, status, body, received_s) VALUES (?, ?, ?, ?)",
                             (key, answer.status, answer.body, answer.received_s))

    def load(self) -> list[Op]:
        """Everything journaled, as a fresh reader (the checker) sees it on disk."""
        ops: dict[str, Op] = {}
        for row in self._db.execute("SELECT * FROM ops ORDER BY intended_s, key"):
            ops[row[0]] = Op(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8],
                             json.loads(row[9]), row[10])
        for key, status, body, received_s in self._db.execute(
                "SELECT key, status, body, received_s FROM answers ORDER BY id"):
            ops[key].answers.append(Answer(status, bytes(body), received_s))
        return list(ops.values())

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._db.close()
