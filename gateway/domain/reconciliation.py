"""Matching bank statement entries to the movements the ledger expects from the bank. Pure.

Amounts are signed from the bank account's view: a credit (CRDT, money in) is positive, a debit
(DBIT, out) negative. Rules, in order, for an entry whose references (EndToEndIds, else our
references found in the remittance text) name expected movements of its direction and currency
booked within the date tolerance (business days, Monday to Friday; no holiday calendar):
- ``reference`` (1:1): one reference, same amount;
- ``batch`` (1:N): several references, the entry's amount is their sum;
- ``split`` (N:1): several entries name one reference and add up to it;
Exceptions: ``unknown_entry`` (no reference we expect), ``amount_mismatch``, ``duplicate_entry``
(a reference matched already, by an earlier entry or in an earlier statement), and
``missing_at_bank`` (expected, unmatched, and older than the tolerance at the statement's end).

Invariant: every match balances (the sum of its entries equals the sum of its expected
movements), and no entry or expected movement is in two matches.
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta

RULES = ("reference", "batch", "split", "manual", "write_off")
EXCEPTION_KINDS = ("missing_at_bank", "amount_mismatch", "unknown_entry", "duplicate_entry")
_TOKEN_RE = re.compile(r"[A-Za-z0-9_\-]{6,64}")


def signed(direction: str, amount_minor: int) -> int:
    return amount_minor if direction == "CRDT" else -amount_minor


def add_business_days(day: date, count: int) -> date:
    step = 1 if count >= 0 else -1
    left = abs(count)
    while left:
        day += timedelta(days=step)
        if day.weekday() < 5:
            left -= 1
    return day


def business_days_between(start: date, end: date) -> int:
    """Business days from ``start`` to ``end`` (negative when ``end`` is earlier)."""
    if end < start:
        return -business_days_between(end, start)
    whole_weeks, rest = divmod((end - start).days, 7)
    count = whole_weeks * 5
    day = start + timedelta(days=whole_weeks * 7)
    for _ in range(rest):
        day += timedelta(days=1)
        if day.weekday() < 5:
            count += 1
    return count


@dataclass(frozen=True, slots=True)
class Expected:
    reference: str  # what the bank sees: EndToEndId / remittance reference (``tr_...``)
    direction: str  # "CRDT" | "DBIT"
    amount_minor: int  # positive
    currency: str
    day: date
    kind: str  # "top_up" | "withdrawal" (| "payout")
    object_id: uuid.UUID
    reconciled: bool = False

    @property
    def signed_minor(self) -> int:
        return signed(self.direction, self.amount_minor)


@dataclass(frozen=True, slots=True)
class BankLine:
    id: uuid.UUID
    entry_ref: str
    direction: str
    amount_minor: int
    currency: str
    booking_date: date
    refs: tuple[str, ...]
    remittance: str = ""

    @property
    def signed_minor(self) -> int:
        return signed(self.direction, self.amount_minor)


@dataclass(frozen=True, slots=True)
class Match:
    rule: str
    lines: tuple[BankLine, ...]
    expected: tuple[Expected, ...]


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    line: BankLine | None
    expected: tuple[Expected, ...]
    reference: str | None


@dataclass(slots=True)
class Outcome:
    matches: list[Match] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        rules: dict[str, int] = defaultdict(int)
        kinds: dict[str, int] = defaultdict(int)
        for m in self.matches:
            rules[m.rule] += 1
        for f in self.findings:
            kinds[f.kind] += 1
        return dict(rules), dict(kinds)


def _candidates(line: BankLine, by_ref: dict[str, Expected], tolerance_days: int) -> list[Expected]:
    refs = [r for r in line.refs if r in by_ref] or [t for t in _TOKEN_RE.findall(line.remittance) if t in by_ref]
    found = [by_ref[r] for r in dict.fromkeys(refs)]
    return [e for e in found if e.direction == line.direction and e.currency == line.currency
            and abs(business_days_between(e.day, line.booking_date)) <= tolerance_days]


def match(lines: list[BankLine], expected: list[Expected], *, tolerance_days: int, as_of: date) -> Outcome:
    """Match unmatched bank lines to expected movements (reconciled ones are passed too, to see duplicates)."""
    by_ref = {e.reference: e for e in expected}
    claimed = {e.reference for e in expected if e.reconciled}
    out = Outcome()
    single: dict[str, list[BankLine]] = defaultdict(list)
    for line in sorted(lines, key=lambda x: (x.booking_date, x.entry_ref)):
        found = _candidates(line, by_ref, tolerance_days)
        if not found:
            out.findings.append(Finding("unknown_entry", line, (), line.refs[0] if line.refs else None))
        elif len(found) == 1:
            single[found[0].reference].append(line)
        elif any(e.reference in claimed for e in found):
            out.findings.append(Finding("duplicate_entry", line, tuple(found), found[0].reference))
        elif sum(e.amount_minor for e in found) == line.amount_minor:
            out.matches.append(Match("batch", (line,), tuple(found)))
            claimed.update(e.reference for e in found)
        else:
            out.findings.append(Finding("amount_mismatch", line, tuple(found), found[0].reference))
            claimed.update(e.reference for e in found)
    for ref, group in single.items():
        e = by_ref[ref]
        if ref in claimed:
            out.findings.extend(Finding("duplicate_entry", line, (e,), ref) for line in group)
            continue
        claimed.add(ref)
        exact = next((line for line in group if line.amount_minor == e.amount_minor), None)
        if exact is not None:
            out.matches.append(Match("reference", (exact,), (e,)))
            out.findings.extend(Finding("duplicate_entry", line, (e,), ref) for line in group if line is not exact)
        elif len(group) > 1 and sum(line.amount_minor for line in group) == e.amount_minor:
            out.matches.append(Match("split", tuple(group), (e,)))
        else:
            out.findings.extend(Finding("amount_mismatch", line, (e,), ref) for line in group)
    deadline = add_business_days(as_of, -tolerance_days)
    for e in expected:
        if e.reference not in claimed and e.day < deadline:
            out.findings.append(Finding("missing_at_bank", None, (e,), e.reference))
    return out
