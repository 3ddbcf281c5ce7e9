"""Settlement's pure part: business days across time zones and DST, fees, batch arithmetic, files."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import pytest
from lxml import etree

from gateway.domain import fees, ledger
from gateway.domain import settlement as s
from gateway.render import settlement_files as files


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


NY, LONDON = s.zone("America/New_York"), s.zone("Europe/London")
SHANGHAI, LA = s.zone("Asia/Shanghai"), s.zone("America/Los_Angeles")


def test_midnight_cutoff_ends_the_day_at_the_next_midnight() -> None:
    w = s.window(date(2026, 3, 10), s.zone("UTC"), time(0, 0))
    assert (w.start, w.end) == (utc(2026, 3, 10), utc(2026, 3, 11))


def test_east_of_utc_ends_before_utc_midnight() -> None:
    assert s.day_end(date(2026, 3, 10), SHANGHAI, time(0, 0)) == utc(2026, 3, 10, 16)
    assert s.day_end(date(2026, 3, 10), SHANGHAI, time(18, 0)) == utc(2026, 3, 10, 10)


def test_west_of_utc_ends_after_utc_midnight() -> None:
    assert s.day_end(date(2026, 1, 15), LA, time(0, 0)) == utc(2026, 1, 16, 8)
    assert s.day_end(date(2026, 7, 15), LA, time(0, 0)) == utc(2026, 7, 16, 7)  # PDT


def test_new_york_spring_forward_day_has_23_hours_and_a_gap_cutoff_ends_when_the_clocks_jump() -> None:
    w = s.window(date(2026, 3, 8), NY, time(0, 0))
    assert w.end - w.start == timedelta(hours=23)
    # 02:30 does not exist on 8 March 2026: the day ends when the wall clock first reads 02:30 or later (03:00 EDT).
    assert s.day_end(date(2026, 3, 8), NY, time(2, 30)) == utc(2026, 3, 8, 7)


def test_new_york_fall_back_day_has_25_hours_and_a_repeated_cutoff_ends_at_its_first_occurrence() -> None:
    w = s.window(date(2026, 11, 1), NY, time(0, 0))
    assert w.end - w.start == timedelta(hours=25)
    assert s.day_end(date(2026, 11, 1), NY, time(1, 30)) == utc(2026, 11, 1, 5, 30)  # 01:30 EDT, not EST


def test_london_dst_both_ways() -> None:
    assert s.day_end(date(2026, 3, 29), LONDON, time(1, 30)) == utc(2026, 3, 29, 1)  # gap: 02:00 BST
    assert s.day_end(date(2026, 10, 25), LONDON, time(1, 30)) == utc(2026, 10, 25, 0, 30)  # first 01:30 (BST)
    spring = s.window(date(2026, 3, 29), LONDON, time(1, 30))
    assert spring.end - spring.start == timedelta(hours=23, minutes=30)  # the jump takes the last 30 minutes


@pytest.mark.parametrize("tz", ["America/New_York", "Europe/London", "Asia/Shanghai", "America/Los_Angeles",
                                "Australia/Lord_Howe"])
@pytest.mark.parametrize("cut", [time(0, 0), time(1, 30), time(2, 30), time(18, 0), time(23, 59, 59)])
def test_windows_tile_the_year_without_gaps_or_overlaps(tz: str, cut: time) -> None:
    zone = s.zone(tz)
    day = date(2026, 1, 1)
    for _ in range(366):
        w, following = s.window(day, zone, cut), s.window(day + timedelta(days=1), zone, cut)
        assert w.start < w.end == following.start
        assert s.business_day_of(w.start, zone, cut) == day
        assert s.business_day_of(w.end - timedelta(microseconds=1), zone, cut) == day
        day += timedelta(days=1)


def test_settings_are_validated() -> None:
    assert s.cutoff("18:30") == time(18, 30)
    assert s.cutoff("23:59:59") == time(23, 59, 59)
    for bad in ("24:00", "7:00", "18:60", "noon", ""):
        with pytest.raises(s.SettlementError):
            s.cutoff(bad)
    for bad in ("Mars/Olympus", "", "../etc/passwd", "/etc/localtime"):
        with pytest.raises(s.SettlementError):
            s.zone(bad)


def test_fee_is_rounded_half_up_per_capture_plus_the_fixed_part_and_capped() -> None:
    assert fees.fee_minor(250, 100) == 3  # 2.5 -> 3
    assert fees.fee_minor(249, 100) == 2  # 2.49 -> 2
    assert fees.fee_minor(1000, 60, 30) == 36
    assert fees.fee_minor(10, 100, 50) == 10  # never more than the amount
    # A refund gives back the fee in cumulative shares: refunding everything returns exactly the fee.
    fee = fees.fee_minor(1001, 60, 30)
    parts = [fees.refund_fee_minor(1001, fee, before, part) for before, part in ((0, 333), (333, 333), (666, 335))]
    assert sum(parts) == fee


def test_batch_arithmetic_and_carry_over() -> None:
    lines = [s.Line("capture", 10_000, 90), s.Line("capture", 5_000, 60), s.Line("refund", 2_000, 12)]
    t = s.totals_of(lines, carry_in_minor=0)
    assert (t.captured_minor, t.refunded_minor, t.fee_minor) == (15_000, 2_000, 138)
    assert t.net_minor == sum(line.net_minor for line in lines) == 12_862
    assert (t.payout_minor, t.carry_out_minor) == (12_862, 0)
    refunds_only = s.totals_of([s.Line("refund", 20_000, 120)], carry_in_minor=0)
    assert (refunds_only.net_minor, refunds_only.payout_minor, refunds_only.carry_out_minor) == (-19_880, 0, -19_880)
    next_day = s.totals_of(lines, carry_in_minor=refunds_only.carry_out_minor)
    assert (next_day.payout_minor, next_day.carry_out_minor) == (0, -7_018)
    with pytest.raises(s.SettlementError):
        s.totals(0, 0, 0, carry_in_minor=5)


def test_payout_reference_and_execution_date() -> None:
    batch = uuid.UUID(int=42)
    ref = s.payout_reference(batch)
    assert ref == s.payout_reference(batch) and ref.startswith("PO") and len(ref) == 18 and ref[2:].isupper()
    assert s.execution_date(date(2026, 12, 4)) == date(2026, 12, 7)  # Friday -> Monday
    assert s.execution_date(date(2026, 12, 1)) == date(2026, 12, 2)


def test_close_entry_moves_receivable_to_payable_and_fees_to_revenue() -> None:
    m = uuid.uuid4()
    entry = ledger.settlement_close(m, "CNY", 12_862, 138)
    assert entry is not None
    legs = {(p.account.kind, p.amount_minor) for p in entry.postings}
    assert legs == {(ledger.AccountKind.MERCHANT, -12_862), (ledger.AccountKind.PAYABLE, 12_862),
                    (ledger.AccountKind.FEES, -138), (ledger.AccountKind.REVENUE, 138)}
    assert ledger.settlement_close(m, "CNY", 0, 0) is None
    fee_back = ledger.settlement_close(m, "CNY", 0, -12)  # a day of refunds only gives fees back
    assert fee_back is not None and {p.amount_minor for p in fee_back.postings} == {12, -12}
    paid = ledger.payout_paid(m, "CNY", 12_862)
    assert {(p.account.kind, p.amount_minor) for p in paid.postings} == {
        (ledger.AccountKind.PAYABLE, -12_862), (ledger.AccountKind.CLEARING, 12_862)}


def _instruction(ref: str, amount: int, cur: str, day: date) -> files.PayoutInstruction:
    return files.PayoutInstruction(reference=ref, amount_minor=amount, currency=cur, execution_date=day,
                                   merchant="mer_x", merchant_name="Noodles & Co <1>", holder_name="Noodles Ltd",
                                   account_number="GB33BUKB20201555555555", bic="BUKBGB22",
                                   business_date=day - timedelta(days=1))


def test_pain001_is_deterministic_and_its_control_sums_add_up() -> None:
    payouts = [_instruction("POB", 12_345, "CNY", date(2026, 3, 2)), _instruction("POA", 1_000, "CNY", date(2026, 3, 2)),
               _instruction("POC", 500, "JPY", date(2026, 3, 2)), _instruction("POD", 1_234, "KWD", date(2026, 3, 3))]
    debtor = files.Debtor("Wallet Gateway Ltd", "GATEWAY0001", "GATEWAYXXXX")
    created = utc(2026, 3, 2, 1, 2, 3)
    first = files.pain001("SR1", created, debtor, payouts)
    assert first == files.pain001("SR1", created, debtor, list(reversed(payouts)))
    ns = {"p": files.PAIN_NS}
    doc = etree.fromstring(first, etree.XMLParser(resolve_entities=False, no_network=True))
    amounts = [Decimal(a) for a in doc.xpath("//p:CdtTrfTxInf/p:Amt/p:InstdAmt/text()", namespaces=ns)]
    assert amounts == [Decimal("10.00"), Decimal("123.45"), Decimal("500"), Decimal("1.234")]
    assert doc.findtext("p:CstmrCdtTrfInitn/p:GrpHdr/p:NbOfTxs", namespaces=ns) == "4"
    assert Decimal(doc.findtext("p:CstmrCdtTrfInitn/p:GrpHdr/p:CtrlSum", namespaces=ns) or "") == sum(amounts)
    infos = doc.findall("p:CstmrCdtTrfInitn/p:PmtInf", namespaces=ns)
    assert len(infos) == 3  # per currency and execution date
    for info in infos:
        txs = info.findall("p:CdtTrfTxInf", namespaces=ns)
        assert info.findtext("p:NbOfTxs", namespaces=ns) == str(len(txs))
        total = sum(Decimal(t.findtext("p:Amt/p:InstdAmt", namespaces=ns) or "") for t in txs)
        assert Decimal(info.findtext("p:CtrlSum", namespaces=ns) or "") == total
    assert doc.xpath("//p:EndToEndId/text()", namespaces=ns) == ["POA", "POB", "POC", "POD"]
    assert doc.xpath("//p:CdtrAcct/p:Id/p:IBAN/text()", namespaces=ns) == ["GB33BUKB20201555555555"] * 4
    assert doc.xpath("//p:DbtrAcct/p:Id/p:Othr/p:Id/text()", namespaces=ns) == ["GATEWAY0001"] * 3
    long_id = "SR" + "f" * 26
    info_ids = etree.fromstring(files.pain001(long_id, created, debtor, payouts)).xpath("//p:PmtInfId/text()",
                                                                                      namespaces=ns)
    assert len(set(info_ids)) == 3 and all(len(i) <= 35 for i in info_ids)
    with pytest.raises(ValueError):
        files.pain001(long_id + "f", created, debtor, payouts)


def test_reports_render_the_same_bytes_and_parse_back() -> None:
    line = files.DetailLine(batch="sb_1", business_date="2026-03-01", currency="CNY", type="refund", payment="pay_1",
                            refund="re_1", merchant_reference='order "7", table 2', occurred_at="2026-03-01T10:00:00+00:00",
                            gross=-500, fee=-3, net=-497)
    csv_text = (files.detail_csv_header() + files.detail_csv_lines([line])).decode()
    assert csv_text.splitlines()[0].split(",") == files.DETAIL_FIELDS
    assert '"order ""7"", table 2"' in csv_text
    doc = files.DetailJson("mer_1", date(2026, 3, 1))
    body = doc.header() + doc.lines([line, line]) + doc.footer()
    import json
    parsed = json.loads(body)
    assert parsed["merchant"] == "mer_1" and len(parsed["lines"]) == 2 and parsed["lines"][0]["net"] == -497


def test_a_merchant_funded_cashback_is_deducted_from_the_net_and_a_refund_gives_its_clawback_back() -> None:
    lines = [s.Line("capture", 10_000, 100, cashback_minor=500), s.Line("refund", 4_000, 40, cashback_minor=200)]
    assert [line.net_minor for line in lines] == [9_400, -3_760]
    t = s.totals_of(lines, carry_in_minor=0)
    assert (t.captured_minor, t.refunded_minor, t.fee_minor, t.cashback_minor) == (10_000, 4_000, 60, 300)
    assert t.net_minor == t.payout_minor == sum(line.net_minor for line in lines) == 5_640
    refunds_only = s.totals_of([s.Line("refund", 10_000, 100, cashback_minor=500)], carry_in_minor=0)
    assert (refunds_only.cashback_minor, refunds_only.net_minor, refunds_only.carry_out_minor) == (-500, -9_400, -9_400)
