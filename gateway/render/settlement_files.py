"""Settlement files, rendered purely from data: reports (CSV, JSON), the payout file (ISO 20022
pain.001.001.03 and CSV) and the run's manifest.

Invariants:
- deterministic: the same inputs give the same bytes (rows in a fixed order, fixed field order, times
  taken from the data, never the clock; CSV with ``\\n`` line ends; JSON without spaces, UTF-8);
- amounts are integers in minor units in the reports; in pain.001 decimal text in the currency's
  exponent (``Money.format``), ``NbOfTxs``/``CtrlSum`` equal the count and the sum of the entries, in
  the group header and in each ``PmtInf`` (one per currency and execution date);
- detail reports are produced piecewise (a header, then chunks of lines, then a footer), so a caller
  can stream any number of lines into a file and its hash.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from itertools import groupby

import msgspec
from lxml import etree

from gateway.domain import bank_accounts
from gateway.domain.money import Money, currency

PAIN_NS = "urn:iso:std:iso:20022:tech:xsd:pain.001.001.03"


class BatchSummary(msgspec.Struct, kw_only=True):
    batch: str
    merchant: str
    currency: str
    business_date: str
    window_start: str
    window_end: str
    status: str
    capture_count: int
    refund_count: int
    captured: int
    refunded: int
    fee: int
    cashback: int = 0  # merchant-funded cashback its captures paid holders, less what its refunds took back
    carry_in: int
    net: int
    payout: int
    carry_out: int
    payout_reference: str | None


class DetailLine(msgspec.Struct, kw_only=True):
    batch: str
    business_date: str
    currency: str
    type: str  # capture | refund
    payment: str
    refund: str | None
    merchant_reference: str | None
    occurred_at: str
    gross: int  # negative for a refund
    fee: int  # negative for the fee a refund gave back
    cashback: int = 0  # merchant-funded cashback the capture paid the holder; negative for what a refund took back
    net: int  # gross - fee - cashback


@dataclass(frozen=True, slots=True)
class PayoutInstruction:
    reference: str  # EndToEndId
    amount_minor: int
    currency: str
    execution_date: date
    merchant: str  # public merchant id
    merchant_name: str
    holder_name: str
    account_number: str  # full number: only in the payout file, never logged
    bic: str | None
    business_date: date


@dataclass(frozen=True, slots=True)
class Debtor:
    name: str
    account_number: str
    bic: str


SUMMARY_FIELDS = list(BatchSummary.__struct_fields__)
DETAIL_FIELDS = list(DetailLine.__struct_fields__)
PAYOUT_FIELDS = ["reference", "merchant", "merchant_name", "business_date", "execution_date", "currency", "amount",
                 "amount_minor", "holder_name", "account_masked", "bic"]
_ENCODER = msgspec.json.Encoder()


def _csv(rows: Iterable[Iterable[object]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue().encode("utf-8")


def summary_csv(batches: list[BatchSummary]) -> bytes:
    return _csv([SUMMARY_FIELDS, *([getattr(b, f) for f in SUMMARY_FIELDS] for b in batches)])


def summary_json(merchant: str, business_date: date, batches: list[BatchSummary]) -> bytes:
    return _ENCODER.encode({"merchant": merchant, "business_date": business_date.isoformat(), "batches": batches})


def detail_csv_header() -> bytes:
    return _csv([DETAIL_FIELDS])


def detail_csv_lines(lines: Iterable[DetailLine]) -> bytes:
    return _csv([getattr(line, f) for f in DETAIL_FIELDS] for line in lines)


class DetailJson:
    """``{"merchant": ..., "business_date": ..., "lines": [...]}`` written piecewise."""

    def __init__(self, merchant: str, business_date: date) -> None:
        self._head = _ENCODER.encode({"merchant": merchant, "business_date": business_date.isoformat()})[:-1]
        self._first = True

    def header(self) -> bytes:
        return self._head + b',"lines":['

    def lines(self, lines: Iterable[DetailLine]) -> bytes:
        parts = []
        for line in lines:
            parts.append(_ENCODER.encode(line) if self._first else b"," + _ENCODER.encode(line))
            self._first = False
        return b"".join(parts)

    @staticmethod
    def footer() -> bytes:
        return b"]}"


def payouts_csv(payouts: list[PayoutInstruction]) -> bytes:
    rows: list[list[object]] = [list(PAYOUT_FIELDS)]
    for p in payouts:
        rows.append([p.reference, p.merchant, p.merchant_name, p.business_date.isoformat(),
                     p.execution_date.isoformat(), p.currency, Money(p.amount_minor, currency(p.currency)).format(),
                     p.amount_minor, p.holder_name, bank_accounts.masked(p.account_number), p.bic])
    return _csv(rows)


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    node = etree.SubElement(parent, f"{{{PAIN_NS}}}{tag}", attrs)
    if text is not None:
        node.text = text
    return node


def _path(parent: etree._Element, path: str, text: str) -> None:
    node = parent
    for tag in path.split("/"):
        node = _sub(node, tag)
    node.text = text


_IBAN_RE = re.compile(r"^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$")


def _account(parent: etree._Element, tag: str, number: str) -> None:
    """``{tag}/Id/IBAN`` for an IBAN, ``{tag}/Id/Othr/Id`` for any other account number."""
    _path(parent, f"{tag}/Id/IBAN" if _IBAN_RE.match(number) else f"{tag}/Id/Othr/Id", number)


def _decimal(p: PayoutInstruction) -> str:
    return Money(p.amount_minor, currency(p.currency)).format()


def _ctrl_sum(payouts: list[PayoutInstruction]) -> str:
    # Currencies of different exponents add up as decimals (CtrlSum is a plain sum of the amounts).
    total = sum((Decimal(_decimal(p)) for p in payouts), Decimal(0))
    return format(total, "f")


def pain001(message_id: str, created_at: datetime, debtor: Debtor, payouts: list[PayoutInstruction]) -> bytes:
    """A CstmrCdtTrfInitn (pain.001.001.03): one PmtInf per (currency, execution date), payouts sorted.
    ``message_id`` has at most 28 characters, leaving room for the PmtInfId suffixes (ISO 20022: 35)."""
    if not 1 <= len(message_id) <= 28:
        raise ValueError("a pain.001 MsgId here has 1-28 characters")
    ordered = sorted(payouts, key=lambda p: (p.currency, p.execution_date, p.reference))
    root = etree.Element(f"{{{PAIN_NS}}}Document", nsmap={None: PAIN_NS})
    initiation = _sub(root, "CstmrCdtTrfInitn")
    header = _sub(initiation, "GrpHdr")
    _sub(header, "MsgId", message_id)
    _sub(header, "CreDtTm", created_at.strftime("%Y-%m-%dT%H:%M:%S"))
    _sub(header, "NbOfTxs", str(len(ordered)))
    _sub(header, "CtrlSum", _ctrl_sum(ordered))
    _path(header, "InitgPty/Nm", debtor.name)
    for n, ((code, when), group) in enumerate(groupby(ordered, key=lambda p: (p.currency, p.execution_date)), 1):
        items = list(group)
        info = _sub(initiation, "PmtInf")
        _sub(info, "PmtInfId", f"{message_id}-{n}")
        _sub(info, "PmtMtd", "TRF")
        _sub(info, "NbOfTxs", str(len(items)))
        _sub(info, "CtrlSum", _ctrl_sum(items))
        _sub(info, "ReqdExctnDt", when.isoformat())
        _path(info, "Dbtr/Nm", debtor.name)
        _account(info, "DbtrAcct", debtor.account_number)
        _path(info, "DbtrAgt/FinInstnId/BIC", debtor.bic)
        for p in items:
            tx = _sub(info, "CdtTrfTxInf")
            _path(tx, "PmtId/EndToEndId", p.reference)
            _sub(_sub(tx, "Amt"), "InstdAmt", _decimal(p), Ccy=code)
            if p.bic:
                _path(tx, "CdtrAgt/FinInstnId/BIC", p.bic)
            _path(tx, "Cdtr/Nm", p.holder_name)
            _account(tx, "CdtrAcct", p.account_number)
            _path(tx, "RmtInf/Ustrd", f"Settlement {p.business_date.isoformat()} {p.reference}")
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))


@dataclass(frozen=True, slots=True)
class FileDigest:
    name: str
    size_bytes: int
    sha256: str


class Hashing:
    """Counts and hashes the bytes written to one file."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._hash = hashlib.sha256()
        self._size = 0

    def update(self, data: bytes) -> bytes:
        self._hash.update(data)
        self._size += len(data)
        return data

    def digest(self) -> FileDigest:
        return FileDigest(self.name, self._size, self._hash.hexdigest())


def manifest(run: str, business_date: date, files: list[FileDigest]) -> bytes:
    entries = [{"name": f.name, "size_bytes": f.size_bytes, "sha256": f.sha256}
               for f in sorted(files, key=lambda f: f.name)]
    return _ENCODER.encode({"run": run, "business_date": business_date.isoformat(), "files": entries})
