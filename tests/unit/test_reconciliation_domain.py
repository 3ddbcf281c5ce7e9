"""The matcher's rules and exceptions, business-day tolerance."""

from __future__ import annotations

import uuid
from datetime import date

from gateway.domain.reconciliation import BankLine, Expected, add_business_days, business_days_between, match

MON = date(2026, 3, 2)


def exp(ref: str, amount: int, day: date = MON, direction: str = "CRDT", reconciled: bool = False) -> Expected:
    return Expected(ref, direction, amount, "CNY", day, "top_up", uuid.uuid4(), reconciled)


def line(ref: str | tuple[str, ...], amount: int, day: date = MON, direction: str = "CRDT", remittance: str = "") -> BankLine:
    refs = ref if isinstance(ref, tuple) else ((ref,) if ref else ())
    return BankLine(uuid.uuid4(), f"E{uuid.uuid4().hex[:6]}", direction, amount, "CNY", day, refs, remittance)


def kinds(out: object) -> list[str]:
    return sorted(f.kind for f in out.findings)  # type: ignore[attr-defined]


def test_business_days() -> None:
    fri = date(2026, 3, 6)
    assert add_business_days(fri, 1) == date(2026, 3, 9)
    assert add_business_days(date(2026, 3, 9), -1) == fri
    assert business_days_between(fri, date(2026, 3, 9)) == 1
    assert business_days_between(date(2026, 3, 9), fri) == -1
    assert business_days_between(MON, date(2026, 3, 16)) == 10


def test_one_to_one_by_reference_and_remittance() -> None:
    a, b = exp("tr_a1b2c3", 100), exp("tr_d4e5f6", 200)
    out = match([line("tr_a1b2c3", 100), line("", 200, remittance="top-up tr_d4e5f6 ok")], [a, b],
                tolerance_days=2, as_of=MON)
    assert [m.rule for m in out.matches] == ["reference", "reference"] and not out.findings


def test_batch_and_split() -> None:
    a, b, c = exp("tr_aaaaaa", 100), exp("tr_bbbbbb", 50), exp("tr_cccccc", 300)
    out = match([line(("tr_aaaaaa", "tr_bbbbbb"), 150), line("tr_cccccc", 100), line("tr_cccccc", 200)],
                [a, b, c], tolerance_days=2, as_of=MON)
    assert sorted(m.rule for m in out.matches) == ["batch", "split"] and not out.findings


def test_exceptions() -> None:
    old = exp("tr_missing", 100, day=date(2026, 2, 23))
    recent = exp("tr_recent1", 100, day=MON)  # inside the tolerance: not missing yet
    off = exp("tr_offby01", 100)
    dup = exp("tr_dupdup", 70)
    done = exp("tr_donedone", 10, reconciled=True)
    out = match([line("tr_offby01", 101), line("tr_dupdup", 70), line("tr_dupdup", 70), line("", 5),
                 line("tr_donedone", 10)], [old, recent, off, dup, done], tolerance_days=2, as_of=MON)
    assert kinds(out) == ["amount_mismatch", "duplicate_entry", "duplicate_entry", "missing_at_bank", "unknown_entry"]
    assert [m.rule for m in out.matches] == ["reference"]


def test_date_tolerance_and_direction() -> None:
    e = exp("tr_late00", 100, day=MON)
    assert [m.rule for m in match([line("tr_late00", 100, day=date(2026, 3, 5))], [e], tolerance_days=3,
                                  as_of=MON).matches] == ["reference"]
    late = match([line("tr_late00", 100, day=date(2026, 3, 6))], [e], tolerance_days=3, as_of=date(2026, 3, 9))
    assert kinds(late) == ["missing_at_bank", "unknown_entry"]
    wrong_way = match([line("tr_late00", 100, direction="DBIT")], [e], tolerance_days=3, as_of=MON)
    assert kinds(wrong_way) == ["unknown_entry"]
