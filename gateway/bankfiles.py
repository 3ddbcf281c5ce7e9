"""Bank statements of the gateway's own accounts, parsed from bytes: ISO 20022 camt.053 and CSV.

Pure given the bytes (no I/O). Invariants:
- the size cap is checked before any parsing; a DTD (hence any entity, external or not) is refused
  before lxml sees the file, and lxml runs with entities, DTD loading and the network off and
  ``huge_tree`` off anyway (defence in depth against XXE and billion laughs);
- camt.053 is streamed (``iterparse``; every finished ``Ntry`` is cleared), so memory holds the
  compact entries, never the tree;
- amounts are decimal text converted exactly to integer minor units in the currency's exponent
  (never a float); more decimals than the exponent is an error;
- camt: opening + credits - debits = closing, per statement; an entry reference appears once
  per statement;
- anything wrong refuses the whole file with the element (``/Document/.../Ntry[3]/Amt``) or
  ``line N`` and the reason (``MalformedStatement``).

CSV format (UTF-8, a header line exactly as below, one booked entry per line)::

    statement_id,account,currency,entry_ref,booking_date,value_date,direction,amount,end_to_end_id,remittance

``direction`` is CRDT (money in) or DBIT (out); ``amount`` positive decimal text (``12.30``);
dates ``YYYY-MM-DD`` (value_date may be empty); ``end_to_end_id`` empty, one reference, or several
separated by ``;`` (a batch booking: one entry for several movements). CSV has no balances.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date

from lxml import etree

from gateway.domain.money import Money
from gateway.errors import InvalidRequest, MalformedStatement, PayloadTooLarge

NAMESPACES = (
    "urn:iso:std:iso:20022:tech:xsd:camt.053.001.02",
    "urn:iso:std:iso:20022:tech:xsd:camt.053.001.04",
    "urn:iso:std:iso:20022:tech:xsd:camt.053.001.08",
)
CSV_HEADER = ("statement_id", "account", "currency", "entry_ref", "booking_date", "value_date", "direction",
              "amount", "end_to_end_id", "remittance")
ENTRIES_MAX = 1_000_000
TEXT_MAX = 500  # longest reference or remittance text kept
_DTD_RE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_NOT_PROVIDED = "NOTPROVIDED"


@dataclass(frozen=True, slots=True)
class Entry:
    entry_ref: str
    direction: str  # "CRDT" | "DBIT"
    amount_minor: int
    booking_date: date
    value_date: date | None
    refs: tuple[str, ...]  # EndToEndIds, one per transaction of the entry
    ref_amounts: tuple[int, ...] | None  # per ref, when the bank itemised every transaction
    remittance: str


@dataclass(slots=True)
class Statement:
    statement_ref: str
    format: str  # "camt053" | "csv"
    account: str
    currency: str
    opening_minor: int | None = None
    closing_minor: int | None = None
    date_from: date | None = None
    date_to: date | None = None
    entries: list[Entry] = field(default_factory=list)

    def period(self) -> tuple[date, date]:
        days = [e.booking_date for e in self.entries]
        start = self.date_from or (min(days) if days else None)
        end = self.date_to or (max(days) if days else None)
        if start is None or end is None:
            raise MalformedStatement("the statement has no entries and no period", param=self.statement_ref)
        return start, max(end, max(days, default=end))


def detect(data: bytes) -> str:
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"<"):
        return "camt053"
    if head.startswith(b"statement_id"):
        return "csv"
    raise MalformedStatement("not a camt.053 XML document nor a statement CSV (header line expected)",
                             param="line 1")


def parse(data: bytes, fmt: str | None, size_max_bytes: int) -> list[Statement]:
    """The statements in the file (camt.053 may hold several), or ``MalformedStatement``."""
    if len(data) > size_max_bytes:
        raise PayloadTooLarge(f"the statement is larger than {size_max_bytes} bytes", code="statement_too_large")
    fmt = fmt or detect(data)
    if fmt == "camt053":
        return _parse_camt(data)
    if fmt == "csv":
        return _parse_csv(data)
    raise InvalidRequest("format is camt053 or csv", code="invalid_parameter", param="format")


def _date(text: str | None, where: str) -> date:
    try:
        return date.fromisoformat((text or "").strip()[:10])
    except ValueError:
        raise MalformedStatement(f"not a date (YYYY-MM-DD): {(text or '')[:40]!r}", param=where) from None


def _amount(text: str | None, currency: str, where: str) -> int:
    try:
        return Money.parse((text or "").strip(), currency).amount_minor
    except InvalidRequest as exc:
        raise MalformedStatement(f"amount {(text or '')[:40]!r}: {exc.message}", param=where) from None


def _text(value: str | None) -> str:
    return " ".join((value or "").split())[:TEXT_MAX]


class _Camt:
    """One pass over a camt.053 document; ``ns`` is the version's namespace."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.statements: list[Statement] = []
        self.stmt_no = 0
        self.ntry_no = 0
        self.credits = 0
        self.debits = 0
        self.seen: set[str] = set()
        self.current: Statement | None = None
        self._q: dict[str, str] = {}
        self.entries_before = 0

    def q(self, path: str) -> str:
        found = self._q.get(path)
        if found is None:
            found = self._q[path] = "/".join(f"{{{self.ns}}}{part}" for part in path.split("/"))
        return found

    def where(self, *parts: str) -> str:
        base = f"/Document/BkToCstmrStmt/Stmt[{self.stmt_no}]"
        return "/".join([base, *parts])

    def find(self, el: etree._Element, path: str) -> str | None:
        return el.findtext(self.q(path))

    def statement(self, el: etree._Element) -> None:
        """At the end of ``Stmt``: its header (the entries were taken and cleared as they ended)."""
        st = self.current
        assert st is not None
        ref = _text(self.find(el, "Id"))
        if not ref:
            raise MalformedStatement("Stmt/Id is missing", param=self.where("Id"))
        st.statement_ref = ref
        st.account = _text(self.find(el, "Acct/Id/IBAN") or self.find(el, "Acct/Id/Othr/Id"))
        if not st.account:
            raise MalformedStatement("the account (Acct/Id/IBAN or Acct/Id/Othr/Id) is missing", param=self.where("Acct"))
        for bal_no, bal in enumerate(el.iterfind(self.q("Bal")), start=1):
            code = self.find(bal, "Tp/CdOrPrtry/Cd")
            amt = bal.find(self.q("Amt"))
            where = self.where(f"Bal[{bal_no}]", "Amt")
            if amt is None:
                raise MalformedStatement("Bal/Amt is missing", param=where)
            value = _amount(amt.text, st.currency, where)
            sign = self.find(bal, "CdtDbtInd")
            if sign not in ("CRDT", "DBIT"):
                raise MalformedStatement("CdtDbtInd is CRDT or DBIT", param=self.where(f"Bal[{bal_no}]", "CdtDbtInd"))
            value = value if sign == "CRDT" else -value
            if code == "OPBD":
                st.opening_minor = value
            elif code == "CLBD":
                st.closing_minor = value
        if st.opening_minor is None or st.closing_minor is None:
            raise MalformedStatement("an opening (OPBD) and a closing (CLBD) booked balance are required",
                                     param=self.where("Bal"))
        if st.opening_minor + self.credits - self.debits != st.closing_minor:
            raise MalformedStatement(
                f"opening {st.opening_minor} + credits {self.credits} - debits {self.debits} is not the closing "
                f"balance {st.closing_minor} (minor units)", param=self.where("Bal"))
        frm, to = self.find(el, "FrToDt/FrDtTm"), self.find(el, "FrToDt/ToDtTm")
        if frm and to:
            st.date_from, st.date_to = _date(frm, self.where("FrToDt/FrDtTm")), _date(to, self.where("FrToDt/ToDtTm"))
        self.statements.append(st)
        self.entries_before += len(st.entries)

    def entry(self, el: etree._Element) -> None:
        st = self.current
        assert st is not None
        self.ntry_no += 1
        if self.entries_before + len(st.entries) >= ENTRIES_MAX:
            raise MalformedStatement(f"more than {ENTRIES_MAX} entries", param=self.where(f"Ntry[{self.ntry_no}]"))
        here = f"Ntry[{self.ntry_no}]"
        ref = _text(self.find(el, "NtryRef") or self.find(el, "AcctSvcrRef"))
        if not ref:
            raise MalformedStatement("an entry needs NtryRef (or AcctSvcrRef)", param=self.where(here, "NtryRef"))
        if ref in self.seen:
            raise MalformedStatement(f"the entry reference {ref!r} appears twice", param=self.where(here, "NtryRef"))
        self.seen.add(ref)
        status = self.find(el, "Sts/Cd") or self.find(el, "Sts")
        amt = el.find(self.q("Amt"))
        if amt is None:
            raise MalformedStatement("Amt is missing", param=self.where(here, "Amt"))
        if (amt.get("Ccy") or "").upper() != st.currency:
            raise MalformedStatement(f"the entry's currency {amt.get('Ccy')!r} is not the account's {st.currency}",
                                     param=self.where(here, "Amt/@Ccy"))
        amount = _amount(amt.text, st.currency, self.where(here, "Amt"))
        if amount <= 0:
            raise MalformedStatement("an entry's amount is positive (the sign is CdtDbtInd)", param=self.where(here, "Amt"))
        direction = self.find(el, "CdtDbtInd")
        if direction not in ("CRDT", "DBIT"):
            raise MalformedStatement("CdtDbtInd is CRDT or DBIT", param=self.where(here, "CdtDbtInd"))
        booked = _date(self.find(el, "BookgDt/Dt") or self.find(el, "BookgDt/DtTm"), self.where(here, "BookgDt/Dt"))
        value_text = self.find(el, "ValDt/Dt") or self.find(el, "ValDt/DtTm")
        valued = _date(value_text, self.where(here, "ValDt/Dt")) if value_text else None
        refs: list[str] = []
        amounts: list[int] = []
        texts: list[str] = []
        for tx_no, tx in enumerate(el.iterfind(self.q("NtryDtls/TxDtls")), start=1):
            e2e = _text(self.find(tx, "Refs/EndToEndId"))
            if e2e and e2e != _NOT_PROVIDED:
                refs.append(e2e)
                tx_amt = tx.find(self.q("AmtDtls/TxAmt/Amt"))
                if tx_amt is None:
                    tx_amt = tx.find(self.q("Amt"))
                if tx_amt is not None:
                    amounts.append(_amount(tx_amt.text, st.currency,
                                           self.where(here, f"NtryDtls/TxDtls[{tx_no}]", "AmtDtls/TxAmt/Amt")))
            texts.extend(u.text or "" for u in tx.iterfind(self.q("RmtInf/Ustrd")))
        texts.append(self.find(el, "AddtlNtryInf") or "")
        if status is not None and status.strip() != "BOOK":
            return  # pending and informational entries are not on the account yet
        if direction == "CRDT":
            self.credits += amount
        else:
            self.debits += amount
        st.entries.append(Entry(
            entry_ref=ref, direction=direction, amount_minor=amount, booking_date=booked, value_date=valued,
            refs=tuple(refs), ref_amounts=tuple(amounts) if refs and len(amounts) == len(refs) else None,
            remittance=_text(" ".join(texts)),
        ))


_WATCHED = ("Document", "Stmt", "Ntry", "Ccy")


def _events(data: bytes) -> Iterator[tuple[str, etree._Element]]:
    """Events only for the elements the parser acts on (far fewer Python calls than every element)."""
    tags = [f"{{{ns}}}{local}" for ns in NAMESPACES for local in _WATCHED]
    context = etree.iterparse(
        io.BytesIO(data), events=("start", "end"), tag=tags, resolve_entities=False, no_network=True,
        load_dtd=False, dtd_validation=False, huge_tree=False, remove_comments=True, remove_pis=True,
    )
    try:
        yield from context
        root = context.root
    except etree.XMLSyntaxError as exc:
        line = exc.lineno if exc.lineno else "?"
        raise MalformedStatement(f"not well-formed XML: {exc.msg}", param=f"line {line}") from None
    if root is not None and str(root.tag).lstrip("{").partition("}")[0] not in NAMESPACES:
        raise MalformedStatement(f"not a camt.053 Document (root {root.tag!r}); accepted: {', '.join(NAMESPACES)}",
                                 param="/Document")


def _parse_camt(data: bytes) -> list[Statement]:
    if _DTD_RE.search(data):
        raise MalformedStatement("a DTD or entity declaration is refused (external entities, entity expansion)",
                                 code="hostile_xml", param="/")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in data[:64]:
        raise MalformedStatement("camt.053 must be UTF-8", param="/")
    camt: _Camt | None = None
    for event, el in _events(data):
        ns, _, local = str(el.tag).lstrip("{").partition("}")
        if camt is None:
            if local != "Document" or el.getparent() is not None:
                raise MalformedStatement(f"not a camt.053 Document (root {el.tag!r})", param="/Document")
            camt = _Camt(ns)
            continue
        if ns != camt.ns:
            raise MalformedStatement(f"one namespace per document ({el.tag!r} inside {camt.ns})", param="/Document")
        parent = el.getparent()
        in_stmt = parent is not None and parent.tag == camt.q("Stmt")
        if event == "start":
            if local == "Stmt" and parent is not None and parent.tag == camt.q("BkToCstmrStmt"):
                camt.stmt_no += 1
                camt.ntry_no, camt.credits, camt.debits, camt.seen = 0, 0, 0, set()
                camt.current = Statement(statement_ref="", format="camt053", account="", currency="")
            continue
        if local == "Ccy":
            grand = parent.getparent() if parent is not None else None
            if (camt.current is not None and parent is not None and parent.tag == camt.q("Acct")
                    and grand is not None and grand.tag == camt.q("Stmt") and not camt.current.currency):
                code = (el.text or "").strip().upper()  # Stmt/Acct/Ccy: ends before the balances and entries
                _amount("0", code, camt.where("Acct/Ccy"))
                camt.current.currency = code
        elif local == "Ntry" and in_stmt:
            if camt.current is None or not camt.current.currency:
                raise MalformedStatement("Acct/Ccy must come before the entries", param=camt.where("Acct/Ccy"))
            camt.entry(el)
            el.clear()
            previous = el.getprevious()
            while parent is not None and previous is not None and previous.tag == el.tag:  # finished entries
                parent.remove(previous)
                previous = el.getprevious()
        elif local == "Stmt" and camt.current is not None:
            if not camt.current.currency:
                raise MalformedStatement("Acct/Ccy is missing", param=camt.where("Acct/Ccy"))
            camt.statement(el)
            camt.current = None
            el.clear()
    if camt is None or not camt.statements:
        raise MalformedStatement("the document holds no statement (BkToCstmrStmt/Stmt)", param="/Document/BkToCstmrStmt")
    refs = [s.statement_ref for s in camt.statements]
    if len(set(refs)) != len(refs):
        raise MalformedStatement("a statement id appears twice", param="/Document/BkToCstmrStmt/Stmt/Id")
    return camt.statements


def _parse_csv(data: bytes) -> list[Statement]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MalformedStatement("the CSV is not UTF-8", param=f"line {line}") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    statements: dict[str, Statement] = {}
    seen: set[tuple[str, str]] = set()
    try:
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != CSV_HEADER:
            raise MalformedStatement(f"the header must be: {','.join(CSV_HEADER)}", param="line 1")
        for row in reader:
            where = f"line {reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(CSV_HEADER):
                raise MalformedStatement(f"{len(row)} fields, {len(CSV_HEADER)} expected", param=where)
            stmt_id, account, cur, ref, booked, valued, direction, amount, e2e, remittance = (c.strip() for c in row)
            if not (stmt_id and account and ref):
                raise MalformedStatement("statement_id, account and entry_ref are required", param=where)
            cur = cur.upper()
            st = statements.get(stmt_id)
            if st is None:
                _amount("0", cur, f"{where}: currency")
                st = statements[stmt_id] = Statement(statement_ref=stmt_id[:TEXT_MAX], format="csv", account=account,
                                                     currency=cur)
            elif (st.account, st.currency) != (account, cur):
                raise MalformedStatement("one statement_id, one account and currency", param=where)
            if (stmt_id, ref) in seen:
                raise MalformedStatement(f"the entry reference {ref!r} appears twice", param=where)
            seen.add((stmt_id, ref))
            if direction not in ("CRDT", "DBIT"):
                raise MalformedStatement("direction is CRDT or DBIT", param=f"{where}: direction")
            minor = _amount(amount, cur, f"{where}: amount")
            if minor <= 0:
                raise MalformedStatement("amount is positive (the sign is the direction)", param=f"{where}: amount")
            if len(st.entries) >= ENTRIES_MAX:
                raise MalformedStatement(f"more than {ENTRIES_MAX} entries", param=where)
            refs = tuple(r.strip()[:TEXT_MAX] for r in e2e.split(";") if r.strip() and r.strip() != _NOT_PROVIDED)
            st.entries.append(Entry(
                entry_ref=ref[:TEXT_MAX], direction=direction, amount_minor=minor,
                booking_date=_date(booked, f"{where}: booking_date"),
                value_date=_date(valued, f"{where}: value_date") if valued else None,
                refs=refs, ref_amounts=None, remittance=_text(remittance),
            ))
    except csv.Error as exc:
        raise MalformedStatement(f"not valid CSV: {exc}", param=f"line {reader.line_num}") from None
    if not statements:
        raise MalformedStatement("the CSV holds no entries", param="line 2")
    return list(statements.values())
