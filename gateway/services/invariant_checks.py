"""Ledger invariant checks in the background: an operator asks for one, a worker runs it, the operator reads
its outcome. For ledgers too large for the synchronous report (``operations.invariant_report``), which the
serving statement timeout bounds.

Invariants:
- asking is idempotent (Idempotency-Key) and audited (``invariant_check.requested``); while a check is queued
  or running, asking again is answered that one (one full read of the ledger at a time);
- a check reads every invariant in one read-only repeatable-read snapshot (``store.invariants.check``), on
  one connection of the primary, with its own statement timeout (``ledger.check_timeout_s``) and as a whole
  within that time; its lease is renewed by the worker meanwhile (every third of ``ledger.check_lease_s``),
  so a check whose process died is taken again by another process once its lease lapses;
- an attempt that the database failed (connection lost, its statement cancelled by an administrator before
  the check's limit, no pooled connection), or that failed otherwise, is queued again at once; after
  ``ledger.check_attempts_max`` attempts, or past its time limit (a statement, or a lock wait, that the
  server ended after the limit; or the whole check past the limit and a margin), the check ends as an
  error that says why: a check never runs forever and never silently disappears;
- an outcome is written only by the attempt that holds the check (``store.invariants``: attempts is the
  fencing token), once; a failed check is logged at ERROR with the names of the invariants it found broken,
  and counted (``gateway_ledger_checks_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from functools import partial
from typing import Any, Literal

import msgspec

from gateway import metrics
from gateway.auth.principals import Principal
from gateway.domain.ids import Kind, decode, encode
from gateway.errors import NotFound, Unavailable
from gateway.services import audit, pages
from gateway.services.context import Services
from gateway.services.idempotency import Reply, RequestIdentity
from gateway.services.pages import PageRequest
from gateway.store import invariants as store
from gateway.store.db import Connection, ran_out

log = logging.getLogger(__name__)

WHOLE_MARGIN_S = 5.0  # a check as a whole may take its statement limit and this
Status = Literal["queued", "running", "passed", "failed", "error"]


class InvariantCheckView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "invariant_check"
    status: Status
    ok: bool | None  # None until it finished: true when no invariant is violated
    invariants_total: int
    invariants_done: int
    violations: dict[str, list[dict[str, Any]]] | None  # passed / failed: each violated invariant's first rows
    error: str | None  # error: why it could not finish
    attempts: int
    requested_by: str
    created: int
    started: int | None
    finished: int | None


class InvariantCheckList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[InvariantCheckView]
    has_more: bool


def _seconds(row: Any, column: str) -> int | None:
    value = row[column]
    return None if value is None else int(value.timestamp())


def check_view(row: Any) -> InvariantCheckView:
    status: Status = row["status"]
    violations = None if row["violations"] is None else msgspec.json.decode(row["violations"])
    return InvariantCheckView(
        id=encode(Kind.INVARIANT_CHECK, row["id"]), status=status,
        ok=None if status in ("queued", "running") else status == "passed",
        invariants_total=row["invariants_total"], invariants_done=row["invariants_done"], violations=violations,
        error=row["error"], attempts=row["attempts"], requested_by=row["requested_by"],
        created=int(row["created_at"].timestamp()), started=_seconds(row, "started_at"),
        finished=_seconds(row, "finished_at"))


async def request(svc: Services, who: Principal, identity: RequestIdentity) -> Reply:
    """Queue a check (202), or answer the one queued or running already."""

    async def work(conn: Connection) -> tuple[int, Any]:
        row, created = await store.queue(conn, uuid.uuid4(), encode(Kind.OPERATOR, who.id))
        view = check_view(row)
        if created:
            await audit.record(conn, who, "invariant_check.requested", row["id"], view, merchant_id=None)
        return 202, view

    reply = await svc.idempotency.run(identity, work)
    svc.checks_due.set()  # this process's worker starts it now rather than at its next poll
    return reply


async def get(svc: Services, text_id: str) -> InvariantCheckView:
    check_id = decode(Kind.INVARIANT_CHECK, text_id)
    row = None
    if check_id is not None:
        async with svc.db.connection() as conn:
            row = await store.get(conn, check_id)
    if row is None:
        raise NotFound(f"no such invariant check: {text_id}", param="id")
    return check_view(row)


async def list_checks(svc: Services, page: PageRequest) -> InvariantCheckList:
    async with svc.db.connection() as conn:
        rows, has_more = await pages.read(conn, store.all_checks(), page, partial(decode, Kind.INVARIANT_CHECK))
    return InvariantCheckList(data=[check_view(r) for r in rows], has_more=has_more)


async def _renewing(svc: Services, check_id: uuid.UUID, attempt: int, done: list[int],
                    lost: asyncio.Event) -> None:
    """Renew the attempt's lease (and write its progress) every third of the lease, until cancelled; sets
    ``lost`` when the check is no longer this attempt's (taken over after a lapse), or when its renewal
    failed otherwise than by the database (a bug: the attempt stops rather than run on unleased)."""
    lease_s = svc.settings.ledger.check_lease_s
    while True:
        await asyncio.sleep(lease_s / 3)
        try:
            async with svc.db.connection() as conn:
                kept = await store.renew(conn, check_id, attempt, lease_s, done[0])
        except Unavailable:
            continue  # the lease may lapse; the check's own statements fail too if the database is gone
        except Exception:
            log.exception("ledger invariant check lease not renewed", extra={"check": encode(Kind.INVARIANT_CHECK,
                                                                                             check_id)})
            kept = False
        if not kept:
            lost.set()
            return


async def _attempt(svc: Services, check_id: uuid.UUID, attempt: int) -> tuple[str | None, str | None]:
    """One attempt's outcome: (violations as JSON, None), or (None, why it could not finish); raises
    ``Unavailable`` when the database failed it."""
    limit_s = svc.settings.ledger.check_timeout_s
    done = [0]
    lost = asyncio.Event()
    renewer = asyncio.create_task(_renewing(svc, check_id, attempt, done, lost))
    loser = asyncio.create_task(lost.wait())

    def progress(n: int) -> None:
        done[0] = n

    async def run() -> dict[str, list[dict[str, object]]]:
        async with svc.db.connection() as conn:
            return await store.check(conn, statement_timeout_s=limit_s, progress=progress)

    checking = asyncio.create_task(run())
    started_s = time.monotonic()
    try:
        # The server's statement limit ends a statement that runs too long; this ends a check whose statements
        # each stay under it but together do not (and one the server cannot answer).
        finished, _ = await asyncio.wait({checking, loser}, timeout=limit_s + WHOLE_MARGIN_S,
                                         return_when=asyncio.FIRST_COMPLETED)
        if checking not in finished:
            checking.cancel()
            await asyncio.wait({checking})  # a stop of this task meanwhile still stops it (wait re-raises it)
            if loser in finished:
                raise _Lost
            return None, f"did not finish within ledger.check_timeout_s ({limit_s:g} s)"
        try:
            found = checking.result()
        except Unavailable as exc:
            # Its own limits (statement_timeout, lock_timeout); the same errors sooner mean the database failed
            # the attempt (pg_cancel_backend: review R38).
            if ran_out(exc, time.monotonic() - started_s, limit_s):
                at = store.names()[min(done[0], store.count() - 1)]
                return None, (f"invariant {at} ran or waited for a lock longer than ledger.check_timeout_s"
                              f" ({limit_s:g} s)")
            raise
        return msgspec.json.encode(store.violated(found)).decode(), None
    finally:
        for task in (renewer, loser, checking):
            task.cancel()
        await asyncio.gather(renewer, loser, checking, return_exceptions=True)


class _Lost(Exception):
    """The attempt's lease lapsed and another worker took the check."""


async def run_next(svc: Services) -> InvariantCheckView | None:
    """Take the check that is due (queued, or running with its lease lapsed) and run it to its outcome;
    None when none was due, or this attempt ended without an outcome (queued again, or taken over)."""
    settings = svc.settings.ledger
    async with svc.db.connection() as conn:
        row = await store.claim(conn, settings.check_lease_s)
    if row is None:
        return None
    check_id, attempt = row["id"], row["attempts"]
    text_id = encode(Kind.INVARIANT_CHECK, check_id)
    violations: str | None = None
    error: str | None = None
    elapsed_s = 0.0
    if attempt > settings.check_attempts_max:
        error = f"interrupted {attempt - 1} times (ledger.check_attempts_max); ask for a new check"
    else:
        log.info("ledger invariant check started", extra={"check": text_id, "attempt": attempt})
        started_s = time.monotonic()
        try:
            violations, error = await _attempt(svc, check_id, attempt)
        except _Lost:
            log.warning("ledger invariant check taken over by another process", extra={"check": text_id})
            return None
        except Exception as exc:  # the database failed it (Unavailable), or a bug: another attempt may pass
            if isinstance(exc, Unavailable):
                log.warning("ledger invariant check failed by the database; queued again",
                            extra={"check": text_id, "attempt": attempt, "error": exc.code})
            else:
                log.exception("ledger invariant check failed; queued again", extra={"check": text_id,
                                                                                     "attempt": attempt})
            with contextlib.suppress(Unavailable):
                async with svc.db.connection() as conn:
                    await store.give_back(conn, check_id, attempt)
            return None
        elapsed_s = round(time.monotonic() - started_s, 3)
    async with svc.db.connection() as conn:
        finished = await store.finish(conn, check_id, attempt, violations=violations, error=error)
    if finished is None:
        return None
    view = check_view(finished)
    metrics.LEDGER_CHECKS.labels(view.status).inc()
    if view.status == "failed":
        log.error("ledger invariant check found violations",
                  extra={"check": text_id, "invariants": sorted(view.violations or {})})
    elif view.status == "error":
        log.error("ledger invariant check could not finish", extra={"check": text_id, "reason": view.error})
    else:
        log.info("ledger invariant check passed", extra={"check": text_id, "elapsed_s": elapsed_s})
    return view
