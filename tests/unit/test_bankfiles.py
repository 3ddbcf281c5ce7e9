"""camt.053 (both versions) and CSV parsing; malformed files named by element or line; hostile XML refused."""

from __future__ import annotations

from datetime import date

import pytest

from gateway import bankfiles
from gateway.errors import MalformedStatement, PayloadTooLarge
from gateway.banksim import Line, camt053, csv

DAY = date(2026, 3, 2)
LINES = [
    Line("E1", "CRDT", 1050, DAY, ("tr_" + "a" * 32,)),
    Line("E2", "DBIT", 25, DAY, ("tr_" + "b" * 32, "tr_" + "c" * 32), (10, 15)),
    Line("E3", "CRDT", 7, DAY, (), (), "top-up tr_" + "d" * 32),
]
CAP = 1 << 20


@pytest.mark.parametrize("version", ["02", "08"])
def test_camt_versions(version: str) -> None:
    [st] = bankfiles.parse(camt053(LINES, statement_id="S1", version=version, opening_minor=100), None, CAP)
    assert (st.statement_ref, st.currency, st.account, st.format) == ("S1", "CNY", "CN0000000000000000001", "camt053")
    assert (st.opening_minor, st.closing_minor) == (100, 100 + 1050 - 25 + 7)
    e1, e2, e3 = st.entries
    assert (e1.entry_ref, e1.direction, e1.amount_minor, e1.booking_date, e1.refs) == ("E1", "CRDT", 1050, DAY, LINES[0].refs)
    assert e2.refs == LINES[1].refs and e2.ref_amounts == (10, 15)
    assert e3.refs == () and "tr_" + "d" * 32 in e3.remittance


def test_csv_exact_minor_units() -> None:
    [st] = bankfiles.parse(csv(LINES, statement_id="S2"), None, CAP)
    assert [e.amount_minor for e in st.entries] == [1050, 25, 7]
    assert st.entries[1].refs == LINES[1].refs
    [jpy] = bankfiles.parse(csv([Line("J", "CRDT", 1230, DAY)], statement_id="S3", currency="JPY", exponent=0), "csv", CAP)
    assert jpy.entries[0].amount_minor == 1230


def _refused(data: bytes, fmt: str | None = None) -> MalformedStatement:
    with pytest.raises(MalformedStatement) as info:
        bankfiles.parse(data, fmt, CAP)
    return info.value


def test_camt_balance_must_add_up() -> None:
    err = _refused(camt053(LINES, statement_id="S1", closing_minor=5))
    assert err.param == "/Document/BkToCstmrStmt/Stmt[1]/Bal" and "closing" in err.message


def test_camt_bad_amount_names_the_element() -> None:
    data = camt053(LINES, statement_id="S1").replace(b">0.25<", b">0.255<")
    err = _refused(data)
    assert err.param == "/Document/BkToCstmrStmt/Stmt[1]/Ntry[2]/Amt" and "decimal places" in err.message


def test_camt_bad_direction_and_duplicate_ref() -> None:
    assert _refused(camt053(LINES, statement_id="S1").replace(b"<CdtDbtInd>DBIT</CdtDbtInd><Sts>", b"<CdtDbtInd>X</CdtDbtInd><Sts>")).param.endswith("Ntry[2]/CdtDbtInd")
    twice = [LINES[0], Line("E1", "CRDT", 1, DAY)]
    assert "twice" in _refused(camt053(twice, statement_id="S1")).message


def test_not_well_formed_names_the_line() -> None:
    err = _refused(b'<?xml version="1.0"?>\n<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.02">\n<BkToCstmrStmt>\n</Oops>')
    assert err.param == "line 4"


def test_unknown_namespace() -> None:
    assert "camt.053" in _refused(b'<Document xmlns="urn:other"><x/></Document>').message


def test_csv_errors_name_the_line() -> None:
    good = csv(LINES, statement_id="S2").decode()
    rows = good.splitlines()
    rows[2] = rows[2].replace("DBIT", "SIDEWAYS")
    assert _refused("\n".join(rows).encode()).param == "line 3: direction"
    rows = good.splitlines()
    rows[3] = rows[3].replace(",0.07,", ",0.07.1,")
    assert _refused("\n".join(rows).encode()).param == "line 4: amount"
    assert _refused(b"statement_id,foo\nx,y\n", "csv").param == "line 1"
    rows = good.splitlines()
    rows[1] = rows[1] + ",extra"
    assert _refused("\n".join(rows).encode()).param == "line 2"


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE Document [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"><BkToCstmrStmt><Stmt><Id>&xxe;</Id></Stmt></BkToCstmrStmt></Document>"""
LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.02">&lol3;</Document>"""
DTD = b"""<?xml version="1.0"?>
<!DOCTYPE Document SYSTEM "http://evil.example/camt.dtd">
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"/>"""


@pytest.mark.parametrize("data", [XXE, LAUGHS, DTD], ids=["xxe", "billion_laughs", "external_dtd"])
def test_hostile_xml_refused(data: bytes) -> None:
    err = _refused(data)
    assert err.code == "hostile_xml" and "DTD" in err.message


def test_oversized_refused_before_parsing() -> None:
    with pytest.raises(PayloadTooLarge):
        bankfiles.parse(b"<" + b" " * 100, None, 50)
