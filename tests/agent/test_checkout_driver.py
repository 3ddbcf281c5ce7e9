"""The checkout driver with fake devices against an unreachable gateway: offline approval,
limits, pay-codes refused offline, cancellation. (The online paths run end to end in tests/e2e.)"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hardware.nfc import TapResult
from pos_agent.checkout import CheckoutDevices, CheckoutRunner, Method
from pos_agent.credentials import Credentials
from pos_agent.gateway_client import GatewayClient
from pos_agent.journal import AsyncJournal, SaleState
from pos_agent.settings import GatewaySettings, OfflineLimits, SaleSettings, Settings
from tests.agent.test_checkout_states import make_tap


class FakeReader:
    def __init__(self) -> None:
        self.taps: asyncio.Queue[TapResult] = asyncio.Queue()
        self.disarmed = 0

    async def read_tap(self, amount_minor: int, currency_numeric: int, country_numeric: int,
                       timeout_s: float) -> TapResult:
        return await self.taps.get()

    def disarm(self) -> None:
        self.disarmed += 1


class FakeCodes:
    def __init__(self) -> None:
        self.codes: asyncio.Queue[str] = asyncio.Queue()

    async def next_code(self, timeout_s: float) -> str:
        async with asyncio.timeout(timeout_s):
            return await self.codes.get()

    def flush(self) -> None:
        pass


class FakeDisplay:
    def __init__(self) -> None:
        self.shown: list[tuple[str, str]] = []

    async def show(self, line1: str, line2: str) -> None:
        self.shown.append((line1, line2))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[CheckoutRunner, FakeReader, FakeCodes, FakeDisplay, AsyncJournal]]:
    settings = Settings(
        gateway=GatewaySettings(url=f"http://127.0.0.1:{closed_port()}", backoff_base_s=0.01, backoff_max_s=0.02),
        sale=SaleSettings(sale_timeout_s=5.0, cleanup_timeout_s=2.0),
        offline=OfflineLimits(tap_amount_max_minor=5_000, token_count_max=1),
    )
    journal = AsyncJournal.open(tmp_path / "journal.sqlite3")
    reader, codes, display = FakeReader(), FakeCodes(), FakeDisplay()
    async with GatewayClient(settings.gateway, credentials=Credentials("x", "dev", "ds", "ter", "sto", "mer")) as client:
        runner = CheckoutRunner(settings, client, journal,
                                CheckoutDevices(reader=reader, codes=codes, display=display),
                                now=lambda: datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.UTC))
        yield runner, reader, codes, display, journal
    await journal.close()


async def test_offline_tap_is_approved_and_journalled(parts) -> None:  # type: ignore[no-untyped-def]
    runner, reader, _, display, journal = parts
    reader.taps.put_nowait(make_tap())
    outcome = await runner.sell(3_800)
    assert outcome.approved and outcome.method is Method.TAP_OFFLINE and outcome.payment_id is None
    pending = await journal.call(lambda j: j.pending_offline_taps(10))
    assert [t.terminal_transaction_id for t in pending] == [outcome.terminal_transaction_id]
    body = pending[0].body
    assert body["offline_approved_at"] == "2026-11-23T12:00:00+00:00" and body["amount"] == 3_800
    assert body["merchant_reference"].startswith(outcome.reference)
    assert ("TOTAL", "CNY 38.00".rjust(20)) in display.shown
    assert display.shown[-1][0].startswith("APPROVED")
    sale = await journal.call(lambda j: j.sale(outcome.reference))
    assert sale is not None and sale.state is SaleState.ANSWERING and sale.approved


async def test_offline_limits_refuse_the_second_tap_of_a_wallet(parts) -> None:  # type: ignore[no-untyped-def]
    runner, reader, _, _, _ = parts
    first, second = make_tap(), make_tap()
    object.__setattr__(second, "atc", 18)
    reader.taps.put_nowait(first)
    assert (await runner.sell(1_000)).approved
    reader.taps.put_nowait(second)
    outcome = await runner.sell(1_000)
    assert not outcome.approved and outcome.reason == "offline_token_count_exceeded"


async def test_pay_code_needs_the_gateway(parts) -> None:  # type: ignore[no-untyped-def]
    runner, _, codes, _, _ = parts
    codes.codes.put_nowait("not a pay code")
    codes.codes.put_nowait("19" + "1" * 16)
    outcome = await runner.sell(1_000)
    assert not outcome.approved and outcome.method is Method.PAY_CODE and outcome.reason == "gateway_unreachable"


async def test_cancel_ends_the_sale_rejected(parts) -> None:  # type: ignore[no-untyped-def]
    runner, reader, _, _, journal = parts
    selling = asyncio.create_task(runner.sell(1_000))
    await asyncio.sleep(0.3)
    assert runner.cancel()
    outcome = await asyncio.wait_for(selling, 3)
    assert not outcome.approved and outcome.reason == "cancelled_by_cashier"
    assert reader.disarmed >= 1
    assert not runner.cancel()  # nothing to cancel any more
    assert await journal.call(lambda j: j.pending_offline_taps(10)) == []


# --- unknown outcomes, against a scripted gateway that never answers the tap in time ------------

from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestServer  # noqa: E402

from pos_agent.journal import OpKind, OpState  # noqa: E402


def payment(pid: str, status: str, reference: str, refunded: int = 0) -> dict[str, object]:
    return {"id": pid, "status": status, "amount": 3_800, "currency": "CNY", "amount_refunded": refunded,
            "channel": None, "merchant_reference": reference, "confirm_by": None}


async def unknown_tap_sale(tmp_path: Path, *, executed: bool, sale_payment: bool = True,
                           ) -> tuple[object, AsyncJournal, list[str]]:
    """The tap executes (``executed``) or not, and answers too late either way. With
    ``sale_payment`` it settles the sale's payment ``pay_q``; without (the gateway failed the
    payment's creation) it creates its own, ``pay_t``."""
    seen: list[str] = []
    tap_reference: list[str] = []
    paid: list[bool] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path_qs}")
        path = request.path
        if path == "/v1/devices/sessions":
            return web.json_response({"access_token": "t", "expires_in": 900}, status=201)
        if path == "/v1/payments" and request.method == "POST":
            if not sale_payment:
                return web.json_response({"error": {"code": "internal_error"}}, status=503)
            return web.json_response(payment("pay_q", "requires_payment_method", "Q"), status=201)
        if path == "/v1/payments/pay_q/qr_codes":
            return web.json_response({"payload": "000201QR", "image_png": None}, status=201)
        if path == "/v1/payments/pay_q":
            return web.json_response(payment("pay_q", "succeeded" if paid else "requires_payment_method", "Q"))
        if path == "/v1/tap_payments":
            body = await request.json()
            assert body["payment"] == ("pay_q" if sale_payment else None)
            tap_reference.append(body["merchant_reference"])
            if executed:
                paid.append(True)
            await asyncio.sleep(1.0)  # answers too late
            return web.json_response(payment("pay_q", "succeeded", "Q"), status=200)
        if path == "/v1/payments" and request.method == "GET":
            data = [payment("pay_t", "succeeded", tap_reference[0])] if executed else []
            return web.json_response({"data": data, "has_more": False})
        if path == "/v1/payments/pay_q/reverse":
            return web.json_response(payment("pay_q", "canceled", "Q"))
        return web.json_response({"error": {"code": "resource_missing"}}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    settings = Settings(
        gateway=GatewaySettings(url=str(server.make_url("")).rstrip("/"), request_timeout_s=0.3, retry_count_max=1),
        sale=SaleSettings(sale_timeout_s=5.0, resolve_query_count_max=2, resolve_query_interval_s=0.05,
                          status_poll_interval_s=5.0),
    )
    journal = AsyncJournal.open(tmp_path / "journal.sqlite3")
    reader = FakeReader()
    reader.taps.put_nowait(make_tap())
    try:
        async with GatewayClient(settings.gateway, credentials=Credentials("x", "d", "s", "t", "s", "m")) as client:
            runner = CheckoutRunner(settings, client, journal, CheckoutDevices(reader=reader))
            outcome = await runner.sell(3_800)
    finally:
        await server.close()
    return outcome, journal, seen


def after_tap(seen: list[str]) -> list[str]:
    return seen[seen.index("POST /v1/tap_payments") + 1:]


async def test_unknown_tap_on_the_sales_payment_found_paid_is_approved(tmp_path: Path) -> None:
    outcome, journal, seen = await unknown_tap_sale(tmp_path, executed=True)
    try:
        assert outcome.approved and outcome.payment_id == "pay_q" and outcome.method is Method.TAP  # type: ignore[attr-defined]
        assert seen.count("POST /v1/tap_payments") == 1  # never charged twice
        assert after_tap(seen) == ["GET /v1/payments/pay_q"]  # the status query, by the payment's id
        assert not any("reverse" in s for s in seen)  # one payment, the winner
    finally:
        await journal.close()


async def test_unknown_tap_on_the_sales_payment_still_unpaid_is_rejected_and_reversed(tmp_path: Path) -> None:
    outcome, journal, seen = await unknown_tap_sale(tmp_path, executed=False)
    try:
        assert not outcome.approved and outcome.reason == "outcome_unknown"  # type: ignore[attr-defined]
        assert seen.count("POST /v1/tap_payments") == 1
        assert after_tap(seen) == ["GET /v1/payments/pay_q"] * 2 + ["POST /v1/payments/pay_q/reverse"]
        # Reversing the payment settles the question: no search by reference is left to the forwarder.
        assert await journal.call(lambda j: j.pending_operations((OpKind.RESOLVE,), created_before=1e12,
                                                                 limit=10)) == []
    finally:
        await journal.close()


async def test_unknown_tap_without_a_sale_payment_found_by_reference_is_approved(tmp_path: Path) -> None:
    outcome, journal, seen = await unknown_tap_sale(tmp_path, executed=True, sale_payment=False)
    try:
        assert outcome.approved and outcome.payment_id == "pay_t" and outcome.method is Method.TAP  # type: ignore[attr-defined]
        assert seen.count("POST /v1/tap_payments") == 1
        assert any("merchant_reference=T1-000001-T1" in s for s in after_tap(seen))
    finally:
        await journal.close()


async def test_unknown_tap_without_a_sale_payment_not_found_is_queued_for_resolution(tmp_path: Path) -> None:
    outcome, journal, seen = await unknown_tap_sale(tmp_path, executed=False, sale_payment=False)
    try:
        assert not outcome.approved and outcome.reason == "outcome_unknown"  # type: ignore[attr-defined]
        assert seen.count("POST /v1/tap_payments") == 1
        assert sum(s.startswith("GET /v1/payments?") for s in seen) == 2  # bounded status queries
        queued = await journal.call(lambda j: j.pending_operations((OpKind.RESOLVE,), created_before=1e12, limit=10))
        reference = outcome.reference  # type: ignore[attr-defined]
        assert sorted(op.reference for op in queued) == [reference, f"{reference}-T1"]  # the payment, the tap
        tap_ops = [op for op in await journal.call(lambda j: j.operations_of_sale(reference)) if op.kind is OpKind.TAP]
        assert [op.state for op in tap_ops] == [OpState.FAILED]  # handed over to the resolve entry
    finally:
        await journal.close()


# --- a replay at the counter: approved online, then the gateway goes down ----------------------


async def replay_after_online_answer(
    tmp_path: Path, *, tap_status: int, counters_when_sent: list[tuple[str, list[tuple[str, int]]]] | None = None,
) -> tuple[object, object, FakeDisplay, AsyncJournal]:
    """Sale 1: the gateway answers the tap (``tap_status``). Then the gateway is gone, and sale 2
    gets the very same tap (same cryptogram, same ATC), as a relay replaying it would send it.
    ``counters_when_sent`` gets what another reader of the journal file sees as each tap arrives."""
    journal_path = tmp_path / "journal.sqlite3"

    async def handle(request: web.Request) -> web.Response:
        path = request.path
        if path == "/v1/tap_payments" and counters_when_sent is not None:
            ttid = (await request.json())["terminal_transaction_id"]
            with contextlib.closing(sqlite3.connect(journal_path)) as other:
                counters_when_sent.append((ttid, other.execute(
                    "SELECT terminal_transaction_id, atc FROM tap_counters ORDER BY seen_at").fetchall()))
        if path == "/v1/devices/sessions":
            return web.json_response({"access_token": "t", "expires_in": 900}, status=201)
        if path == "/v1/payments" and request.method == "POST":
            return web.json_response(payment("pay_q", "requires_payment_method", "Q"), status=201)
        if path == "/v1/payments/pay_q/qr_codes":
            return web.json_response({"payload": "000201QR", "image_png": None}, status=201)
        if path == "/v1/payments/pay_q":
            return web.json_response(payment("pay_q", "requires_payment_method", "Q"))
        if path == "/v1/tap_payments" and tap_status == 201:
            return web.json_response(payment("pay_t", "succeeded", "T"), status=201)
        if path == "/v1/tap_payments":
            return web.json_response({"error": {"type": "card_error", "code": "insufficient_funds"}},
                                     status=tap_status)
        if path == "/v1/payments/pay_q/reverse":
            return web.json_response(payment("pay_q", "canceled", "Q"))
        return web.json_response({"error": {"code": "resource_missing"}}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    settings = Settings(
        gateway=GatewaySettings(url=str(server.make_url("")).rstrip("/"), retry_count_max=1, backoff_base_s=0.01,
                                backoff_max_s=0.02),
        sale=SaleSettings(sale_timeout_s=5.0, cleanup_timeout_s=2.0, status_poll_interval_s=5.0),
    )
    journal = AsyncJournal.open(journal_path)
    reader, display = FakeReader(), FakeDisplay()
    tap = make_tap()
    async with GatewayClient(settings.gateway, credentials=Credentials("x", "d", "s", "t", "s", "m")) as client:
        runner = CheckoutRunner(settings, client, journal, CheckoutDevices(reader=reader, display=display))
        reader.taps.put_nowait(tap)
        first = await runner.sell(3_800)
        await server.close()  # the gateway is down: connections are refused
        reader.taps.put_nowait(tap)
        replayed = await runner.sell(3_800)
    return first, replayed, display, journal


async def test_offline_replay_of_a_tap_approved_online_is_refused(tmp_path: Path) -> None:
    first, replayed, display, journal = await replay_after_online_answer(tmp_path, tap_status=201)
    try:
        assert first.approved and first.method is Method.TAP  # type: ignore[attr-defined]
        assert not replayed.approved and replayed.reason == "offline_atc_replayed"  # type: ignore[attr-defined]
        assert display.shown[-1] == ("DECLINED", "offline_atc_replayed")
        assert await journal.call(lambda j: j.pending_offline_taps(10)) == []
        assert await journal.call(lambda j: j.offline_taps_of_sale(replayed.reference)) == []  # type: ignore[attr-defined]
    finally:
        await journal.close()


async def test_offline_replay_of_a_tap_declined_online_is_refused(tmp_path: Path) -> None:
    first, replayed, _, journal = await replay_after_online_answer(tmp_path, tap_status=402)
    try:
        assert not first.approved and first.reason == "insufficient_funds"  # type: ignore[attr-defined]
        assert not replayed.approved and replayed.reason == "offline_atc_replayed"  # type: ignore[attr-defined]
        assert await journal.call(lambda j: j.pending_offline_taps(10)) == []
    finally:
        await journal.close()


async def test_the_counter_is_durable_before_the_tap_reaches_the_gateway(tmp_path: Path) -> None:
    seen: list[tuple[str, list[tuple[str, int]]]] = []
    first, _, _, journal = await replay_after_online_answer(tmp_path, tap_status=201, counters_when_sent=seen)
    try:
        assert first.approved  # type: ignore[attr-defined]
        # Another connection (a restarted agent would be one) already sees the tap's ATC committed.
        [(ttid, counters)] = seen
        assert counters == [(ttid, 17)]
    finally:
        await journal.close()


# --- the QR code and a tap race for the sale's one payment --------------------------------------


async def test_a_tap_refused_because_the_qr_code_paid_the_payment_approves_the_sale_by_qr(tmp_path: Path) -> None:
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        path = request.path
        if path == "/v1/devices/sessions":
            return web.json_response({"access_token": "t", "expires_in": 900}, status=201)
        if path == "/v1/payments" and request.method == "POST":
            return web.json_response(payment("pay_q", "requires_payment_method", "Q"), status=201)
        if path == "/v1/payments/pay_q/qr_codes":
            return web.json_response({"payload": "000201QR", "image_png": None}, status=201)
        if path == "/v1/tap_payments":  # the wallet's scan locked the payment first
            return web.json_response({"error": {"type": "invalid_request_error", "code": "payment_not_payable",
                                                "status_now": "succeeded"}}, status=409)
        if path == "/v1/payments/pay_q":
            return web.json_response({**payment("pay_q", "succeeded", "Q"), "channel": "qr"})
        return web.json_response({"error": {"code": "resource_missing"}}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    settings = Settings(
        gateway=GatewaySettings(url=str(server.make_url("")).rstrip("/"), retry_count_max=1),
        sale=SaleSettings(sale_timeout_s=5.0, status_poll_interval_s=5.0),
    )
    journal = AsyncJournal.open(tmp_path / "journal.sqlite3")
    reader = FakeReader()
    reader.taps.put_nowait(make_tap())
    try:
        async with GatewayClient(settings.gateway, credentials=Credentials("x", "d", "s", "t", "s", "m")) as client:
            outcome = await CheckoutRunner(settings, client, journal, CheckoutDevices(reader=reader)).sell(3_800)
        assert outcome.approved and outcome.method is Method.QR and outcome.payment_id == "pay_q"
        assert seen[-2:] == ["POST /v1/tap_payments", "GET /v1/payments/pay_q"]  # nothing reversed
    finally:
        await server.close()
        await journal.close()


async def test_an_online_tap_sale_commits_the_journal_six_times(tmp_path: Path) -> None:
    """Each commit is an fsync on the sale's path. Writes with no request between them share one:
    the sale with its payment's key, the payment's answer with its QR code's key. The rest (the
    QR's answer, the tap and its counter, the tap's answer, the decision) each stand before or
    after a request of their own."""
    seen: list[tuple[str, int]] = []
    journal = AsyncJournal.open(tmp_path / "journal.sqlite3")

    async def handle(request: web.Request) -> web.Response:
        path = request.path
        seen.append((f"{request.method} {path}", journal.sync.commit_count))
        if path == "/v1/devices/sessions":
            return web.json_response({"access_token": "t", "expires_in": 900}, status=201)
        if path == "/v1/payments" and request.method == "POST":
            return web.json_response(payment("pay_q", "requires_payment_method", "Q"), status=201)
        if path == "/v1/payments/pay_q/qr_codes":
            return web.json_response({"payload": "000201QR", "image_png": None}, status=201)
        if path == "/v1/tap_payments":
            return web.json_response(payment("pay_q", "succeeded", "Q"), status=200)
        return web.json_response({"error": {"code": "resource_missing"}}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    settings = Settings(
        gateway=GatewaySettings(url=str(server.make_url("")).rstrip("/"), retry_count_max=1),
        sale=SaleSettings(sale_timeout_s=5.0, status_poll_interval_s=5.0),
    )
    reader = FakeReader()
    reader.taps.put_nowait(make_tap())
    try:
        async with GatewayClient(settings.gateway, credentials=Credentials("x", "d", "s", "t", "s", "m")) as client:
            start = journal.sync.commit_count
            outcome = await CheckoutRunner(settings, client, journal, CheckoutDevices(reader=reader)).sell(3_800)
        assert outcome.approved and outcome.method is Method.TAP
        assert journal.sync.commit_count - start == 6
        posts = [(name, count - start) for name, count in seen if name.startswith("POST /v1/") and "sessions" not in name]
        # Each request goes out once the commits that cover it are done: 1, then 2, then 4 (QR answer, tap).
        assert posts == [("POST /v1/payments", 1), ("POST /v1/payments/pay_q/qr_codes", 2), ("POST /v1/tap_payments", 4)]
        ops = {op.kind: op for op in await journal.call(lambda j: j.operations_of_sale(outcome.reference))}
        assert ops[OpKind.CREATE_PAYMENT].state is OpState.DONE and ops[OpKind.CREATE_PAYMENT].payment_id == "pay_q"
        assert ops[OpKind.ISSUE_QR].state is OpState.DONE and ops[OpKind.TAP].state is OpState.DONE
    finally:
        await server.close()
        await journal.close()
