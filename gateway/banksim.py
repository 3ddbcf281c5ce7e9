"""The bank, simulated: statements of the gateway's own account for the demo, the tests and the
benchmark (no bank can exist here; what crosses the line is the real file format, camt.053 or CSV).

Given the movements the ledger expects, ``book`` lays out the bank's entries with chosen
exceptions injected (a missing one, an amount off by one, an unknown deposit, a duplicate, a 1:N
batch booking, an N:1 split, a reference only in the remittance text); ``camt053`` and ``csv``
render them. Entries are booked one business day after their movement unless told otherwise.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from xml.sax.saxutils import escape

from gateway.domain.reconciliation import add_business_days

NS = {"02": "urn:iso:std:iso:20022:tech:xsd:camt.053.001.02", "08": "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08"}


@dataclass(frozen=True)
class Movement:
    reference: str
    direction: str  # CRDT | DBIT
    amount_minor: int
    day: date


@dataclass(frozen=True)
class Line:
    entry_ref: str
    direction: str
    amount_minor: int
    booking_date: date
    refs: tuple[str, ...] = ()
    ref_amounts: tuple[int, ...] = ()
    remittance: str = ""


@dataclass
class Inject:
    missing: set[str] = field(default_factory=set)
    off_by_one: set[str] = field(default_factory=set)
    unknown_deposits: int = 0
    duplicate: set[str] = field(default_factory=set)
    batches: list[tuple[str, ...]] = field(default_factory=list)  # booked as one entry each
    split: set[str] = field(default_factory=set)  # booked as two entries
    in_remittance: set[str] = field(default_factory=set)  # no EndToEndId: the reference is in Ustrd
    delay_business_days: int = 1


def book(movements: Iterable[Movement], inject: Inject | None = None) -> list[Line]:
    inject = inject or Inject()
    numbers = itertools.count(1)
    by_ref = {m.reference: m for m in movements}
    batched = {ref for group in inject.batches for ref in group}
    lines: list[Line] = []

    def when(m: Movement) -> date:
        return add_business_days(m.day, inject.delay_business_days)

    for m in by_ref.values():
        if m.reference in inject.missing or m.reference in batched:
            continue
        amount = m.amount_minor + (1 if m.reference in inject.off_by_one else 0)
        if m.reference in inject.split:
            first = amount // 2
            lines.append(Line(f"E{next(numbers)}", m.direction, first, when(m), (m.reference,)))
            lines.append(Line(f"E{next(numbers)}", m.direction, amount - first, when(m), (m.reference,)))
            continue
        if m.reference in inject.in_remittance:
            lines.append(Line(f"E{next(numbers)}", m.direction, amount, when(m), (), (),
                              f"wallet top-up {m.reference} thank you"))
        else:
            lines.append(Line(f"E{next(numbers)}", m.direction, amount, when(m), (m.reference,)))
        if m.reference in inject.duplicate:
            lines.append(Line(f"E{next(numbers)}", m.direction, amount, when(m), (m.reference,)))
    for group in inject.batches:
        members = [by_ref[r] for r in group]
        lines.append(Line(f"E{next(numbers)}", members[0].direction, sum(m.amount_minor for m in members),
                          when(members[0]), tuple(group), tuple(m.amount_minor for m in members)))
    day = max((m.day for m in by_ref.values()), default=date(2026, 1, 5))
    for n in range(inject.unknown_deposits):
        lines.append(Line(f"E{next(numbers)}", "CRDT", 4321 + n, day, (), (), "deposit without reference"))
    return lines


def _amount(minor: int, exponent: int) -> str:
    if not exponent:
        return str(minor)
    units, rest = divmod(minor, 10**exponent)
    return f"{units}.{rest:0{exponent}d}"


def _camt_entries(lines: list[Line], currency: str, exponent: int, version: str) -> Iterator[str]:
    for line in lines:
        status = "<Sts><Cd>BOOK</Cd></Sts>" if version == "08" else "<Sts>BOOK</Sts>"
        txs = []
        refs = line.refs or ("NOTPROVIDED",)
        for index, ref in enumerate(refs):
            amount = (f'<AmtDtls><TxAmt><Amt Ccy="{currency}">{_amount(line.ref_amounts[index], exponent)}</Amt>'
                      f"</TxAmt></AmtDtls>") if line.ref_amounts else ""
            remittance = f"<RmtInf><Ustrd>{escape(line.remittance)}</Ustrd></RmtInf>" if line.remittance else ""
            txs.append(f"<TxDtls><Refs><EndToEndId>{escape(ref)}</EndToEndId></Refs>{amount}{remittance}</TxDtls>")
        yield (f'<Ntry><NtryRef>{escape(line.entry_ref)}</NtryRef><Amt Ccy="{currency}">'
               f"{_amount(line.amount_minor, exponent)}</Amt><CdtDbtInd>{line.direction}</CdtDbtInd>{status}"
               f"<BookgDt><Dt>{line.booking_date.isoformat()}</Dt></BookgDt>"
               f"<ValDt><Dt>{line.booking_date.isoformat()}</Dt></ValDt><AcctSvcrRef>B{escape(line.entry_ref)}</AcctSvcrRef>"
               f"<NtryDtls>{''.join(txs)}</NtryDtls></Ntry>")


def camt053(lines: list[Line], *, statement_id: str, currency: str = "CNY", exponent: int = 2,
            account: str = "CN0000000000000000001", version: str = "02", opening_minor: int = 0,
            date_from: date | None = None, date_to: date | None = None, closing_minor: int | None = None) -> bytes:
    days = [line.booking_date for line in lines] or [date(2026, 1, 5)]
    start, end = date_from or min(days), date_to or max(days)
    credits = sum(line.amount_minor for line in lines if line.direction == "CRDT")
    debits = sum(line.amount_minor for line in lines if line.direction == "DBIT")
    closing = opening_minor + credits - debits if closing_minor is None else closing_minor

    def balance(code: str, minor: int, day: date) -> str:
        sign = "CRDT" if minor >= 0 else "DBIT"
        return (f"<Bal><Tp><CdOrPrtry><Cd>{code}</Cd></CdOrPrtry></Tp><Amt Ccy=\"{currency}\">"
                f"{_amount(abs(minor), exponent)}</Amt><CdtDbtInd>{sign}</CdtDbtInd><Dt><Dt>{day.isoformat()}</Dt></Dt></Bal>")

    head = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Document xmlns="{NS[version]}"><BkToCstmrStmt>'
            f"<GrpHdr><MsgId>MSG-{escape(statement_id)}</MsgId><CreDtTm>{end.isoformat()}T18:00:00</CreDtTm></GrpHdr>"
            f"<Stmt><Id>{escape(statement_id)}</Id><ElctrncSeqNb>1</ElctrncSeqNb><CreDtTm>{end.isoformat()}T18:00:00</CreDtTm>"
            f"<FrToDt><FrDtTm>{start.isoformat()}T00:00:00</FrDtTm><ToDtTm>{end.isoformat()}T23:59:59</ToDtTm></FrToDt>"
            f"<Acct><Id><IBAN>{account}</IBAN></Id><Ccy>{currency}</Ccy></Acct>"
            f"{balance('OPBD', opening_minor, start)}{balance('CLBD', closing, end)}")
    body = "".join(_camt_entries(lines, currency, exponent, version))
    return (head + body + "</Stmt></BkToCstmrStmt></Document>\n").encode("utf-8")


def csv(lines: list[Line], *, statement_id: str, currency: str = "CNY", exponent: int = 2,
        account: str = "CN0000000000000000001") -> bytes:
    out = ["statement_id,account,currency,entry_ref,booking_date,value_date,direction,amount,end_to_end_id,remittance"]
    for line in lines:
        remittance = line.remittance.replace('"', '""')
        out.append(f"{statement_id},{account},{currency},{line.entry_ref},{line.booking_date.isoformat()},"
                   f"{line.booking_date.isoformat()},{line.direction},{_amount(line.amount_minor, exponent)},"
                   f'{";".join(line.refs)},"{remittance}"')
    return ("\n".join(out) + "\n").encode("utf-8")
