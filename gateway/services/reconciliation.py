"""Reconciliation use cases: import a bank statement and match it; list exceptions; resolve one.

Each use case is one transaction: an import keeps all of a file or nothing of it (its entries,
the matches and exceptions it leads to, its audit row); a resolution writes its match, its ledger
movement (write-off), the exception's new state and the audit row together.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import date, timedelta
from functools import partial
from typing import Any, Literal

import msgspec

from gateway import bankfiles
from gateway.auth.principals import Principal
from gateway.domain import ledger
from gateway.domain import reconciliation as rules
from gateway.domain.ids import Kind, decode, encode
from gateway.domain.money import Money, currency
from gateway.errors import Conflict, InvalidRequest, InvalidState, NotFound
from gateway.services import audit, pages, views
from gateway.services.context import Services
from gateway.services.idempotency import Reply, RequestIdentity
from gateway.services.pages import PageRequest
from gateway.store import ledger as ledger_store
from gateway.store import reconciliation as store
from gateway.store.db import Connection

Progress = Callable[[str, int, int], None]  # (stage, done, total)
ACTIONS = ("match", "write_off", "reopen")
_RESOLVED_AS = {"match": "matched", "write_off": "written_off", "reopen": "reopened"}  # audit event type suffixes
RESOLVER_ROLES = frozenset({"admin", "settlement"})  # operators who import statements and resolve exceptions
_WINDOW_EXTRA_DAYS = 7  # expected movements looked at before a statement's first day, beyond the tolerance


class ImportSummary(msgspec.Struct, kw_only=True):
    object: str = "bank_statement_import"
    statements: list[str]
    entries: int
    entries_new: int
    matched: dict[str, int]  # by rule
    exceptions: dict[str, int]  # by kind, as found by this run
    exceptions_opened: int


class ExpectedView(msgspec.Struct, kw_only=True):
    kind: Literal["top_up", "withdrawal", "payout"]
    id: str
    reference: str
    amount: int


class ActionView(msgspec.Struct, kw_only=True):
    action: str
    operator: str | None
    reason: str | None
    match: str | None
    at: views.Timestamp


class ExceptionView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "reconciliation_exception"
    kind: Literal["missing_at_bank", "amount_mismatch", "unknown_entry", "duplicate_entry"]
    status: Literal["open", "resolved", "cleared"]
    currency: str
    reference: str | None
    bank_entry: str | None
    entry_ref: str | None
    statement: str | None
    booking_date: views.Date | None
    bank_amount: int | None  # signed minor units: credits positive
    expected: ExpectedView | None
    expected_amount: int | None
    match: str | None
    detected_at: views.Timestamp
    resolved_at: views.Timestamp | None
    actions: list[ActionView] | None = None


class ExceptionList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[ExceptionView]
    has_more: bool
    next_cursor: str | None  # the starting_after of the next page


def public_expected(kind: str, object_id: uuid.UUID) -> str:
    if kind == "payout":
        return encode(Kind.PAYOUT, object_id)
    return encode(Kind.TRANSFER, object_id) if kind in ("top_up", "withdrawal") else f"{kind}_{object_id.hex}"


def _exception_view(row: Any, actions: list[Any] | None = None) -> ExceptionView:
    exp = None
    if row["expected_id"] is not None:
        exp = ExpectedView(kind=row["expected_kind"], id=public_expected(row["expected_kind"], row["expected_id"]),
                           reference=row["reference"] or "", amount=row["expected_amount_minor"])
    return ExceptionView(
        id=encode(Kind.RECON_EXCEPTION, row["id"]), kind=row["kind"], status=row["status"], currency=row["currency"],
        reference=row["reference"],
        bank_entry=encode(Kind.BANK_ENTRY, row["bank_entry_id"]) if row["bank_entry_id"] else None,
        entry_ref=row["entry_ref"], statement=row["statement_ref"],
        booking_date=row["booking_date"].isoformat() if row["booking_date"] else None,
        bank_amount=row["bank_amount_minor"], expected=exp, expected_amount=row["expected_amount_minor"],
        match=encode(Kind.RECON_MATCH, row["match_id"]) if row["match_id"] else None,
        detected_at=row["detected_at"].isoformat(),
        resolved_at=row["resolved_at"].isoformat() if row["resolved_at"] else None,
        actions=None if actions is None else [ActionView(
            action=a["action"], operator=encode(Kind.OPERATOR, a["operator_id"]) if a["operator_id"] else None,
            reason=a["reason"], match=encode(Kind.RECON_MATCH, a["match_id"]) if a["match_id"] else None,
            at=a["created_at"].isoformat()) for a in actions],
    )


def _expected(row: Any) -> rules.Expected:
    return rules.Expected(reference=row["reference"], direction=row["direction"], amount_minor=row["amount_minor"],
                          currency=row["currency"].strip(), day=row["day"], kind=row["kind"],
                          object_id=row["object_id"], reconciled=row["reconciled"])


def _line(row: Any) -> rules.BankLine:
    return rules.BankLine(id=row["id"], entry_ref=row["entry_ref"], direction=row["direction"],
                          amount_minor=row["amount_minor"], currency=row["currency"].strip(),
                          booking_date=row["booking_date"], refs=tuple(row["refs"]), remittance=row["remittance"])


async def _match_currency(svc: Services, conn: Connection, code: str, start: date, end: date,
                          progress: Progress | None) -> tuple[rules.Outcome, int]:
    """Match the currency's unmatched entries; the outcome and how many exceptions it newly opened."""
    tolerance = svc.settings.reconciliation.tolerance_business_days
    window_from = rules.add_business_days(start, -tolerance) - timedelta(days=_WINDOW_EXTRA_DAYS)
    expected = [_expected(r) for r in await store.expected_movements(conn, code, window_from, end)]
    lines = [_line(r) for r in await store.unmatched_lines(conn, code)]
    if progress:
        progress("match", 0, len(lines))
    outcome = rules.match(lines, expected, tolerance_days=tolerance, as_of=end)
    if progress:
        progress("match", len(lines), len(lines))
    matches: list[tuple[uuid.UUID, str, str, uuid.UUID | None]] = []
    items: list[tuple[uuid.UUID, str, uuid.UUID | None, str | None, uuid.UUID | None, int]] = []
    for m in outcome.matches:
        match_id = uuid.uuid4()
        matches.append((match_id, m.rule, code, None))
        items.extend((match_id, "bank", line.id, None, None, line.signed_minor) for line in m.lines)
        items.extend((match_id, "expected", None, e.kind, e.object_id, e.signed_minor) for e in m.expected)
    await store.insert_matches(conn, matches, items)
    await store.mark_reconciled(conn, [(e.kind, e.object_id) for m in outcome.matches for e in m.expected], True)
    found: list[tuple[str, str, uuid.UUID | None, str | None, uuid.UUID | None, str | None, int | None, int | None]] = []
    for f in outcome.findings:
        # A batch's exception names its first expected movement; the others are in the reference list.
        first = f.expected[0] if f.expected else None
        found.append((f.kind, code, f.line.id if f.line else None, first.kind if first else None,
                      first.object_id if first else None, f.reference, f.line.signed_minor if f.line else None,
                      sum(e.signed_minor for e in f.expected) if f.expected else None))
    return outcome, await store.insert_exceptions(conn, found)


async def import_statement(svc: Services, who: Principal | None, data: bytes, fmt: str | None,
                           identity: RequestIdentity | None = None, progress: Progress | None = None) -> Reply:
    """Parse (refusing the whole file on any fault), store the new entries, match, open exceptions."""
    statements = bankfiles.parse(data, fmt, svc.settings.reconciliation.statement_max_bytes)
    total = sum(len(s.entries) for s in statements)
    if progress:
        progress("parse", total, total)
    operator_id = who.id if who else None

    async def work(conn: Connection) -> tuple[int, Any]:
        ids: list[str] = []
        new = 0
        periods: dict[str, tuple[date, date]] = {}
        for st in statements:
            start, end = st.period()
            statement_id = await store.insert_statement(conn, uuid.uuid4(), st, start, end, operator_id)
            added = await store.insert_entries(conn, statement_id, st)
            new += added
            ids.append(encode(Kind.BANK_STATEMENT, statement_id))
            if progress:
                progress("store", new, total)
            known = periods.get(st.currency)
            periods[st.currency] = (min(start, known[0]), max(end, known[1])) if known else (start, end)
            summary = {"statement_ref": st.statement_ref, "format": st.format, "entries": len(st.entries),
                       "entries_new": added}
            await store.audit(conn, operator_id, "import", statement_id=statement_id, reason=None,
                              details=json.dumps(summary))
            await audit.record(conn, who, "bank_statement.imported", statement_id,
                               {"object": "bank_statement", "id": ids[-1], **summary}, merchant_id=None)
        matched: dict[str, int] = {}
        kinds: dict[str, int] = {}
        opened = 0
        for code, (start, end) in sorted(periods.items()):
            outcome, added_exceptions = await _match_currency(svc, conn, code, start, end, progress)
            by_rule, by_kind = outcome.counts()
            for k, v in by_rule.items():
                matched[k] = matched.get(k, 0) + v
            for k, v in by_kind.items():
                kinds[k] = kinds.get(k, 0) + v
            opened += added_exceptions
        return 201, ImportSummary(statements=ids, entries=total, entries_new=new, matched=matched, exceptions=kinds,
                                  exceptions_opened=opened)

    if identity is None:
        status, view = await svc.db.run(work)
        return Reply(status=status, body=msgspec.json.encode(view), replayed=False)
    return await svc.idempotency.run(identity, work)


async def list_exceptions(svc: Services, status: str | None, kind: str | None, code: str | None,
                          page: PageRequest) -> ExceptionList:
    if code is not None:
        code = currency(code).code
    async with svc.db.connection() as conn:
        rows, more = await pages.read(conn, store.exceptions(status, kind, code), page,
                                      partial(decode, Kind.RECON_EXCEPTION))
    data = [_exception_view(r) for r in rows]
    return ExceptionList(data=data, has_more=more, next_cursor=data[-1].id if more and data else None)


async def get_exception(svc: Services, public_id: str) -> ExceptionView:
    exception_id = decode(Kind.RECON_EXCEPTION, public_id)
    async with svc.db.connection() as conn:
        row = await store.exception(conn, exception_id) if exception_id else None
        if row is None or exception_id is None:
            raise NotFound(f"no such exception: {public_id}")
        return _exception_view(row, await store.audit_of(conn, exception_id))


def _lines_of(texts: list[str]) -> list[uuid.UUID]:
    found = []
    for text in texts:
        value = decode(Kind.BANK_ENTRY, text)
        if value is None:
            raise NotFound(f"no such bank entry: {text}", param="bank_entries")
        found.append(value)
    return found


async def resolve(svc: Services, who: Principal, public_id: str, action: str, reason: str,
                  bank_entries: list[str] | None, references: list[str] | None, identity: RequestIdentity) -> Reply:
    """``match`` (by hand: the items must balance), ``write_off`` (the difference goes to the write-off
    account through clearing), or ``reopen`` (undo a resolution, reversing its write-off)."""
    if action not in ACTIONS:
        raise InvalidRequest(f"action is one of {', '.join(ACTIONS)}", code="invalid_parameter", param="action")
    reason = " ".join(reason.split())
    if not reason:
        raise InvalidRequest("a reason is required", code="invalid_parameter", param="reason")
    exception_id = decode(Kind.RECON_EXCEPTION, public_id)
    if exception_id is None:
        raise NotFound(f"no such exception: {public_id}")
    async with svc.db.connection() as conn:
        first = await store.exception(conn, exception_id)
        if first is None:
            raise NotFound(f"no such exception: {public_id}")
        code = first["currency"].strip()
        accounts = await ledger_store.resolve_accounts(conn, [ledger.clearing(code), _write_off_ref(code)])

    async def work(conn: Connection) -> tuple[int, Any]:
        row = await store.exception_for_update(conn, exception_id)
        assert row is not None
        if action == "reopen":
            await _reopen(conn, who, row, reason, accounts)
        else:
            if row["status"] != "open":
                raise InvalidState(f"the exception is {row['status']}; reopen it first", param="action")
            await _settle(conn, who, row, action, reason, bank_entries, references, accounts)
        fresh = await store.exception(conn, exception_id)
        view = _exception_view(fresh, await store.audit_of(conn, exception_id))
        await audit.record(conn, who, f"reconciliation_exception.{_RESOLVED_AS[action]}", exception_id, view,
                           merchant_id=None)
        return 200, view

    return await svc.idempotency.run(identity, work)



def _write_off_ref(code: str) -> ledger.AccountRef:
    return ledger.AccountRef(ledger.AccountKind.WRITE_OFF, None, code)


async def _settle(conn: Connection, who: Principal, row: Any, action: str, reason: str,
                  bank_entries: list[str] | None, references: list[str] | None,
                  accounts: dict[ledger.AccountRef, ledger_store.Account]) -> None:
    code = row["currency"].strip()
    line_ids = _lines_of(bank_entries or [])
    if row["bank_entry_id"] is not None and row["bank_entry_id"] not in line_ids:
        line_ids.append(row["bank_entry_id"])
    lines = await store.lines_by_id(conn, sorted(set(line_ids)))
    if len(lines) != len(set(line_ids)) or any(r["currency"].strip() != code for r in lines):
        raise NotFound("a bank entry named is not one of this currency's", param="bank_entries")
    if any(r["matched"] for r in lines):
        raise Conflict("a bank entry named is matched already", code="already_matched", param="bank_entries")
    refs = list(references or [])
    if row["expected_id"] is not None and row["reference"] and row["reference"] not in refs:
        refs.append(row["reference"])
    expected = [_expected(r) for r in await store.expected_by_reference(conn, code, refs)] if refs else []
    if row["kind"] != "duplicate_entry" and len(expected) != len(set(refs)):
        raise NotFound("a reference named is not an expected movement of this currency", param="references")
    if action == "write_off" or row["kind"] == "duplicate_entry":
        expected = [e for e in expected if not e.reconciled]  # a duplicate's movement stays with its first match
    if any(e.reconciled for e in expected):
        raise Conflict("an expected movement named is reconciled already", code="already_matched", param="references")
    bank_minor = sum(rules.signed(r["direction"], r["amount_minor"]) for r in lines)
    expected_minor = sum(e.signed_minor for e in expected)
    difference = bank_minor - expected_minor
    if action == "match" and difference != 0:
        raise Conflict(f"the bank side and the expected side differ by {Money(abs(difference), currency(code))};"
                       " write the difference off instead", code="amounts_differ")
    if action == "write_off" and difference == 0:
        raise Conflict("nothing to write off: the items balance; match them instead", code="nothing_to_write_off")
    if not lines and not expected:
        raise Conflict("nothing to resolve", code="nothing_to_resolve")
    match_id = uuid.uuid4()
    items: list[tuple[uuid.UUID, str, uuid.UUID | None, str | None, uuid.UUID | None, int]] = [
        (match_id, "bank", r["id"], None, None, rules.signed(r["direction"], r["amount_minor"])) for r in lines]
    items += [(match_id, "expected", None, e.kind, e.object_id, e.signed_minor) for e in expected]
    if difference:
        items.append((match_id, "write_off", None, None, None, difference))
        await ledger_store.post(conn, ledger.write_off(code, difference), accounts)
    related = await store.open_exceptions_of(conn, [r["id"] for r in lines], [e.object_id for e in expected])
    await store.insert_matches(conn, [(match_id, "manual" if action == "match" else "write_off", code, who.id)], items)
    await store.mark_reconciled(conn, [(e.kind, e.object_id) for e in expected], True)
    resolved = sorted(set(related) | {row["id"]})
    await store.set_exception(conn, resolved, "resolved", match_id)
    details = json.dumps({"bank_entries": [encode(Kind.BANK_ENTRY, r["id"]) for r in lines],
                          "expected": [e.reference for e in expected], "written_off_minor": difference,
                          "exceptions": [encode(Kind.RECON_EXCEPTION, x) for x in resolved]})
    for exception_id in resolved:
        await store.audit(conn, who.id, action, reason=reason, exception_id=exception_id, match_id=match_id,
                          details=details)


async def _reopen(conn: Connection, who: Principal, row: Any, reason: str,
                  accounts: dict[ledger.AccountRef, ledger_store.Account]) -> None:
    if row["status"] != "resolved" or row["match_id"] is None:
        raise InvalidState(f"only a resolved exception can be reopened (this one is {row['status']})", param="action")
    code = row["currency"].strip()
    match_id = row["match_id"]
    exceptions = await store.exceptions_of_match(conn, match_id)
    items = await store.deactivate_match(conn, match_id)
    written_off = sum(i["amount_minor"] for i in items if i["side"] == "write_off")
    if written_off:
        await ledger_store.post(conn, ledger.write_off(code, -written_off), accounts)
    await store.mark_reconciled(conn, [(i["expected_kind"], i["expected_id"]) for i in items if i["side"] == "expected"],
                                False)
    await store.set_exception(conn, exceptions, "open", None)
    for exception_id in exceptions:
        await store.audit(conn, who.id, "reopen", reason=reason, exception_id=exception_id, match_id=match_id,
                          details=json.dumps({"reversed_write_off_minor": written_off}))
