"""The journal: records survive reopening and kill -9; offline approvals are atomic with their limits;
every tap's counter (ATC), online or offline, is remembered so that an offline replay is refused."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pos_agent import journal as journal_module
from pos_agent.errors import JournalError
from pos_agent.journal import Journal, OfflineTapState, OpKind, OpState, SaleState
from pos_agent.offline import OfflineRefusal
from pos_agent.settings import OfflineLimits

LIMITS = OfflineLimits(tap_amount_max_minor=5_000, token_count_max=2, token_amount_max_minor=8_000,
                       terminal_count_max=3, terminal_amount_max_minor=20_000, total_count_max=5,
                       total_amount_max_minor=50_000, total_window_s=3_600)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def approve(journal: Journal, ttid: str, *, token: str = "9901", atc: int = 1, amount: int = 1_000,
            sale: str = "T1-000001") -> OfflineRefusal | None:
    return journal.approve_offline_tap(
        LIMITS, terminal_transaction_id=ttid, sale_reference=sale, token_pan=token, atc=atc, amount_minor=amount,
        currency="CNY", expected_currency="CNY", body={"terminal_transaction_id": ttid, "amount": amount}).refusal


def test_file_is_private_and_wal(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    try:
        assert (tmp_path / "j.sqlite3").stat().st_mode & 0o777 == 0o600
        assert journal._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        journal.close()


def test_operations_survive_reopen_and_keep_their_first_record(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    journal = Journal(path)
    sale = journal.open_sale("T1", 3_800, "CNY")
    journal.record_operation("k1", OpKind.TAP, sale_reference=sale, reference=f"{sale}-T1", body={"a": 1})
    journal.record_operation("k1", OpKind.TAP, sale_reference=sale, reference=f"{sale}-T1", body={"a": 2})
    journal.record_operation("k2", OpKind.CREATE_PAYMENT, sale_reference=sale, reference=f"{sale}-Q2", body={})
    journal.finish_operation("k2", OpState.DONE, outcome="requires_payment_method", payment_id="pay_1")
    journal.close()

    reopened = Journal(path)
    try:
        assert reopened.operation("k1") is not None and reopened.operation("k1").body == {"a": 1}  # type: ignore[union-attr]
        pending = reopened.pending_operations((OpKind.TAP, OpKind.CREATE_PAYMENT), created_before=1e12, limit=10)
        assert [op.idempotency_key for op in pending] == ["k1"]
        assert [op.payment_id for op in reopened.operations_of_sale(sale)] == [None, "pay_1"]
        assert [s.reference for s in reopened.unfinished_sales()] == [sale]
        assert reopened.open_sale("T1", 1, "CNY") == "T1-000002"  # the sequence survived
    finally:
        reopened.close()


def test_writes_in_one_transaction_are_one_commit_all_or_none(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    before = journal.commit_count
    with journal.transaction():
        reference = journal.open_sale("T1", 1_000, "CNY")
        journal.record_operation("k1", OpKind.CREATE_PAYMENT, sale_reference=reference, reference=reference, body={})
    assert journal.commit_count == before + 1
    with pytest.raises(RuntimeError), journal.transaction():
        journal.finish_operation("k1", OpState.DONE, outcome="requires_payment_method", payment_id="pay_1")
        journal.record_operation("k2", OpKind.ISSUE_QR, sale_reference=reference, reference=reference, body={})
        raise RuntimeError("the agent fails before the commit")
    assert journal.commit_count == before + 1
    journal.close()
    reopened = Journal(tmp_path / "j.sqlite3")
    k1 = reopened.operation("k1")
    assert k1 is not None and k1.state is OpState.PENDING and reopened.operation("k2") is None  # neither write
    assert reopened.sale(reference) is not None
    reopened.close()


def test_sale_lifecycle(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    try:
        sale = journal.open_sale("T1", 100, "CNY")
        journal.decide_sale(sale, approved=True, method="tap", payment_id="pay_1")
        got = journal.sale(sale)
        assert got is not None and got.state is SaleState.ANSWERING and got.approved and got.payment_id == "pay_1"
        journal.sale_answered(sale)
        assert journal.unfinished_sales() == []
    finally:
        journal.close()


def test_offline_limits_count_pending_taps_atomically(tmp_path: Path) -> None:
    clock = Clock()
    journal = Journal(tmp_path / "j.sqlite3", clock=clock)
    try:
        assert approve(journal, "a", atc=1) is None
        assert approve(journal, "b", atc=1) is OfflineRefusal.ATC_REPLAYED  # replayed counter
        assert approve(journal, "b", atc=2, amount=6_000) is OfflineRefusal.TAP_AMOUNT
        assert approve(journal, "b", atc=2) is None
        assert approve(journal, "c", atc=3) is OfflineRefusal.TOKEN_COUNT  # two pending for this wallet
        assert approve(journal, "c", token="9902", atc=1) is None
        assert approve(journal, "d", token="9903", atc=1) is OfflineRefusal.TERMINAL_COUNT  # three pending
        # Forwarding frees the pending limits, not the rolling total.
        assert journal.finish_offline_tap("a", OfflineTapState.FORWARDED, outcome="succeeded", payment_id="pay_a")
        assert not journal.finish_offline_tap("a", OfflineTapState.FORWARDED, outcome="succeeded")
        assert approve(journal, "d", token="9903", atc=1) is None
        assert journal.finish_offline_tap("b", OfflineTapState.FORWARDED, outcome="succeeded")
        assert approve(journal, "e", token="9904", atc=1) is None
        assert journal.finish_offline_tap("c", OfflineTapState.FORWARDED, outcome="succeeded")
        assert approve(journal, "f", token="9905", atc=1) is OfflineRefusal.TOTAL_COUNT  # 5 in the window
        clock.now += 3_601
        assert approve(journal, "f", token="9905", atc=1) is None
        assert [t.terminal_transaction_id for t in journal.pending_offline_taps(10)] == ["d", "e", "f"]
    finally:
        journal.close()


def test_declined_token_is_blocked_and_voided_taps_are_not_forwarded(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    try:
        assert approve(journal, "a", atc=1) is None
        assert journal.finish_offline_tap("a", OfflineTapState.DECLINED, outcome="insufficient_funds")
        assert approve(journal, "b", atc=2) is OfflineRefusal.TOKEN_BLOCKED
        assert approve(journal, "c", token="9902", atc=1, sale="T1-000009") is None
        assert journal.void_offline_taps_of_sale("T1-000009") == 1
        assert journal.pending_offline_taps(10) == []
        # A voided tap was never forwarded, but the phone spent that counter: its replay is refused.
        assert approve(journal, "d", token="9902", atc=1) is OfflineRefusal.ATC_REPLAYED
        assert approve(journal, "d", token="9902", atc=2) is None
    finally:
        journal.close()


def test_pending_taps_by_token_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    try:
        for ttid, token, atc in (("a", "1", 1), ("b", "2", 1), ("c", "1", 2)):
            assert approve(journal, ttid, token=token, atc=atc) is None
        assert [t.terminal_transaction_id for t in journal.pending_offline_taps(10, token_pan="1")] == ["a", "c"]
        assert "9901" not in repr(journal.pending_offline_taps(10)[0])  # token numbers stay out of reprs
    finally:
        journal.close()



def online(journal: Journal, ttid: str, *, atc: int, token: str = "9901", state: OpState = OpState.DONE,
           outcome: str = "succeeded") -> None:
    """An online tap as the checkout sends it: recorded (with its ATC) first, then answered."""
    journal.record_tap(ttid, sale_reference="T1-000001", reference=f"T1-000001-{ttid}", token_pan=token, atc=atc,
                       body={"terminal_transaction_id": ttid, "tap": {"token_pan": token, "atc": atc}})
    journal.finish_operation(ttid, state, outcome=outcome)


def test_offline_replay_of_an_online_approved_counter_is_refused(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    try:
        online(journal, "on1", atc=5)
        assert approve(journal, "replay", atc=5) is OfflineRefusal.ATC_REPLAYED
        assert approve(journal, "older", atc=4) is OfflineRefusal.ATC_REPLAYED
        assert approve(journal, "other", token="9902", atc=5) is None  # counters are per token
        assert approve(journal, "fresh", atc=6) is None
        assert [t.terminal_transaction_id for t in journal.pending_offline_taps(10)] == ["other", "fresh"]
    finally:
        journal.close()


def test_an_online_decline_burns_the_counter_too(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    try:
        online(journal, "on1", atc=7, state=OpState.FAILED, outcome="insufficient_funds")
        assert approve(journal, "replay", atc=7) is OfflineRefusal.ATC_REPLAYED
        assert journal.pending_offline_taps(10) == []
        assert approve(journal, "fresh", atc=8) is None
    finally:
        journal.close()


def test_the_tap_that_found_the_gateway_down_is_approved_with_its_own_counter(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    try:
        online(journal, "t1", atc=3, state=OpState.FAILED, outcome="unreachable")
        assert approve(journal, "t1", atc=3) is None  # the same tap, not a replay of it
        assert approve(journal, "t2", atc=3) is OfflineRefusal.ATC_REPLAYED
    finally:
        journal.close()


def test_counters_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    journal = Journal(path)
    online(journal, "on1", atc=9)
    journal.close()
    reopened = Journal(path)
    try:
        assert approve(reopened, "replay", atc=9) is OfflineRefusal.ATC_REPLAYED
        assert approve(reopened, "fresh", atc=10) is None
    finally:
        reopened.close()


def test_a_version_1_journal_is_migrated_with_the_counters_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(journal_module.SCHEMA_V1 + """
        INSERT INTO meta VALUES ('schema_version', 1), ('sale_sequence', 2);
        INSERT INTO operations VALUES ('old-on', 'tap', 'T1-000001', 'T1-000001-T1', 'pay_1',
            '{"terminal_transaction_id": "old-on", "tap": {"token_pan": "9901", "atc": 12}}',
            'done', 'succeeded', 1.0, 1.0);
        INSERT INTO operations VALUES ('k-qr', 'create_payment', 'T1-000001', 'T1-000001-Q2', NULL, '{}',
            'done', 'requires_payment_method', 1.0, 1.0);
        INSERT INTO offline_taps (terminal_transaction_id, sale_reference, token_pan, atc, amount_minor, currency,
            body, approved_at, state, updated_at) VALUES ('old-off', 'T1-000002', '9902', 4, 100, 'CNY', '{}',
            2.0, 'voided', 2.0);
    """)
    old.close()
    journal = Journal(path)
    try:
        assert journal.schema_version == journal_module.SCHEMA_VERSION == 2
        assert approve(journal, "r1", atc=12) is OfflineRefusal.ATC_REPLAYED  # seen online before the upgrade
        assert approve(journal, "r2", token="9902", atc=4) is OfflineRefusal.ATC_REPLAYED  # seen offline
        assert approve(journal, "fresh", atc=13) is None
        assert journal.open_sale("T1", 1, "CNY") == "T1-000003"  # the rest of the journal is intact
    finally:
        journal.close()
    again = Journal(path)  # migrating is done once
    try:
        assert again.schema_version == 2 and approve(again, "r3", atc=13) is OfflineRefusal.ATC_REPLAYED
    finally:
        again.close()


def test_a_journal_newer_than_the_agent_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    Journal(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    with pytest.raises(JournalError, match="schema version 99"):
        Journal(path)

_CHILD = """
import os, sys
from pos_agent.journal import Journal
from pos_agent.settings import OfflineLimits
journal = Journal(sys.argv[1])
for i in range(int(sys.argv[2])):
    journal.approve_offline_tap(OfflineLimits(token_count_max=1000, terminal_count_max=1000, total_count_max=1000,
        token_amount_max_minor=10**9, terminal_amount_max_minor=10**9, total_amount_max_minor=10**9),
        terminal_transaction_id=f"tt{i}", sale_reference=f"S{i}", token_pan="9901", atc=i + 1, amount_minor=100,
        currency="CNY", expected_currency="CNY", body={"i": i})
    print(f"approved {i}", flush=True)
sys.stdin.readline()  # wait to be killed
"""


@pytest.mark.skipif(sys.platform != "linux", reason="kill -9 semantics")
def test_approvals_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), "25"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        lines = [child.stdout.readline() for _ in range(25)]
        assert lines[-1].strip() == "approved 24"
        os.kill(child.pid, signal.SIGKILL)  # no close, no checkpoint: only the WAL has the data
        child.wait(timeout=5)
    finally:
        if child.poll() is None:
            child.kill()
    assert Path(f"{path}-wal").exists()
    journal = Journal(path)
    try:
        pending = journal.pending_offline_taps(100)
        assert [t.terminal_transaction_id for t in pending] == [f"tt{i}" for i in range(25)]
        assert [t.body for t in pending][:2] == [{"i": 0}, {"i": 1}]
    finally:
        journal.close()
