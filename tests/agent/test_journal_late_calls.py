"""A journal call that times out while it runs (the journal file is locked, as a slow disk or
another process would hold it) still completes on the journal's thread: the state it writes must
be the values bound when the call was made, not names looked up when it runs (an ``except``
block's exception is gone by then, a loop variable names the next item)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from aiohttp import web

from pos_agent.checkout import reverse_payment
from pos_agent.errors import JournalError
from pos_agent.forwarder import Forwarder
from pos_agent.journal import AsyncJournal, Journal, OfflineTapState, OpState
from pos_agent.settings import GatewaySettings, Settings
from tests.agent.test_forwarder import approve
from tests.agent.test_gateway_client import Fake, client_for, error, fake  # noqa: F401

JOURNAL_CALL_TIMEOUT_S = 0.3


class BusyJournal:
    """Another connection holds the journal's write lock from inside a gateway answer, so the
    agent's next write waits in SQLite (its busy timeout) past the call's timeout; ``release``
    lets it through, and waits until the journal's thread has finished it."""

    def __init__(self, journal: AsyncJournal) -> None:
        self.journal = journal
        self.other = sqlite3.connect(journal.sync.path, isolation_level=None)

    def busy(self) -> None:
        self.other.execute("BEGIN IMMEDIATE")

    async def release(self) -> None:
        self.other.execute("ROLLBACK")
        self.other.close()
        await self.journal.call(lambda _: None)  # the thread is FIFO: the late write has run now


def refused_while_busy(busy: BusyJournal, status: int, code: str) -> Any:
    def respond(request: web.Request, count: int) -> web.Response:
        busy.busy()
        return error(status, code)
    return respond


async def test_a_refused_reversal_is_journalled_even_after_a_journal_timeout(
    fake: tuple[Fake, str], tmp_path: Path  # noqa: F811 (the imported fixture)
) -> None:
    gateway, url = fake
    journal = AsyncJournal(Journal(tmp_path / "j.sqlite3"), call_timeout_s=JOURNAL_CALL_TIMEOUT_S)
    busy = BusyJournal(journal)
    gateway.script["/v1/payments/pay_1/reverse"] = refused_while_busy(busy, 409, "payment_not_cancelable")
    try:
        async with client_for(url) as client:
            try:
                await reverse_payment(client, journal, "T1-000001", "pay_1")
                raise AssertionError("the journal call should have timed out")
            except JournalError:
                pass
        await busy.release()
        op = await journal.call(lambda j: j.operation("reverse-pay_1"))
        assert op is not None and (op.state, op.outcome) == (OpState.FAILED, "payment_not_cancelable")
    finally:
        await journal.close()


async def test_a_declined_offline_tap_is_journalled_even_after_a_journal_timeout(
    fake: tuple[Fake, str], tmp_path: Path  # noqa: F811 (the imported fixture)
) -> None:
    gateway, url = fake
    journal = AsyncJournal(Journal(tmp_path / "j.sqlite3"), call_timeout_s=JOURNAL_CALL_TIMEOUT_S)
    busy = BusyJournal(journal)
    await approve(journal, "a", "1", 1)
    gateway.script["/v1/tap_payments"] = refused_while_busy(busy, 402, "insufficient_funds")
    try:
        async with client_for(url) as client:
            forwarder = Forwarder(Settings(gateway=GatewaySettings(url=url)), client, journal)
            try:
                await forwarder.run_round()
                raise AssertionError("the journal call should have timed out")
            except JournalError:
                pass
        await busy.release()
        [tap] = await journal.call(lambda j: j.offline_taps_of_sale("S-a"))
        assert (tap.state, tap.outcome) == (OfflineTapState.DECLINED, "insufficient_funds")
    finally:
        await journal.close()
