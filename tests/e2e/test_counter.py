"""A checkout counter end to end, every part a real process or a real protocol on a pty:
the gateway (``gateway serve``), the POS agent (``python -m pos_agent run``), the wallet phone
(``python -m hardware.sim.phone`` over nfcpy's udp driver), an unmodified pyTeliumManager register
over a pty null modem, and scanner/display/printer simulators on ptys.

Each test is bounded (the register waits at most ``waiting_timeout_s``; every helper wait has a
timeout) and the fixture stops every process and checks the ledger invariants afterwards.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from pos_agent import health
from tests.e2e.conftest import REGISTER_THREAD_JOIN_S, Counter
from tests.e2e.relay import RelayPhone

with_qr_slip = pytest.mark.parametrize("counter_options", [{"print_qr_slip": True}])
"""The counter prints the QR code on a slip: the test's wallet scans it from there."""


async def answer(sale: asyncio.Task[Any]) -> Any:
    """pyTeliumManager's ``TeliumResponse`` (untyped), or None when the register gave up."""
    return await asyncio.wait_for(sale, REGISTER_THREAD_JOIN_S)


async def test_tap_sale(counter: Counter) -> None:
    phone = await counter.start_phone()
    before = await counter.shop.available(counter.holder)
    response = await answer(counter.sell(38.00))
    assert response is not None and response.has_succeeded, response
    assert response.amount == 38.0 and response.currency_numeric == "156"
    assert response.transaction_id.strip() == "000001"
    assert response.repport.strip().startswith("tap pay_")
    payment_id = response.repport.strip().split()[1]

    assert await counter.shop.available(counter.holder) == before - 3_800
    # One payment for the sale: the one its QR code offered, settled by the tap; nothing reversed.
    [tap] = await counter.payments_of_sale(1)
    assert tap["id"] == payment_id and tap["status"] == "succeeded" and tap["amount"] == 3_800
    assert tap["terminal"] == counter.shop.terminal and tap["channel"] == "tap"
    assert (tap["merchant_reference"], tap["amount_refunded"]) == ("E2E-000001", 0)

    receipt = await counter.printer.next_receipt(timeout_s=5)  # the first thing printed: no QR slip
    assert receipt.qr_payloads == ()
    text = "\n".join(receipt.lines)
    assert "CNY 38.00" in text and payment_id in text and "Tap" in text and "好面馆" in text
    await counter.display.wait_for_lines("APPROVED", "CNY 38.00".rjust(20), timeout_s=5)
    assert phone.atc == int(counter.provisioning["atc"]) + 1


@with_qr_slip
async def test_qr_sale(counter: Counter) -> None:
    before = await counter.shop.available(counter.holder)
    sale = counter.sell(12.50)
    slip = await counter.printer.next_receipt(timeout_s=10)  # the pole display cannot draw the QR
    assert len(slip.qr_payloads) == 1 and "CNY 12.50" in "\n".join(slip.lines)
    paid = await counter.api.call("POST", "/v1/wallet/qr/pay", counter.holder.token,
                                  json={"payload": slip.qr_payloads[0]})
    assert paid["status"] == "succeeded"
    response = await answer(sale)
    assert response is not None and response.has_succeeded and response.amount == 12.5
    assert response.repport.strip() == f"qr {paid['id']}"
    assert await counter.shop.available(counter.holder) == before - 1_250
    payments = await counter.payments_of_sale(1)
    assert [(p["id"], p["status"], p["amount_refunded"]) for p in payments] == [(paid["id"], "succeeded", 0)]
    receipt = await counter.printer.next_receipt(timeout_s=5)
    assert paid["id"] in "\n".join(receipt.lines) and "QR" in "\n".join(receipt.lines)


async def test_pay_code_sale(counter: Counter) -> None:
    before = await counter.shop.available(counter.holder)
    sale = counter.sell(9.90)
    await counter.waiting_for_payment("CNY 9.90")
    code = (await counter.api.call("POST", "/v1/wallet/pay_codes", counter.holder.token, 201, json={}))["code"]
    assert len(code) == 18 and code.startswith("19")
    await counter.scanner.scan("6901234567892")  # a product barcode first: ignored
    await counter.scanner.scan(code)
    response = await answer(sale)
    assert response is not None and response.has_succeeded and response.amount == 9.9
    assert response.repport.strip().startswith("pay_code pay_")
    assert await counter.shop.available(counter.holder) == before - 990
    [paid] = await counter.payments_of_sale(1)  # the sale's one payment, settled by the pay-code
    assert response.repport.strip() == f"pay_code {paid['id']}"
    assert (paid["status"], paid["channel"], paid["amount_refunded"]) == ("succeeded", "pay_code", 0)
    receipt = await counter.printer.next_receipt(timeout_s=5)  # no QR slip before it
    assert receipt.qr_payloads == () and paid["id"] in "\n".join(receipt.lines)
    assert code not in "\n".join(counter.agent.messages())  # the pay-code is never logged


async def test_cashier_cancels_the_sale(counter: Counter) -> None:
    sale = counter.sell(20.00)
    await counter.waiting_for_payment("CNY 20.00")
    counter.agent.send_signal(signal.SIGUSR1)
    response = await answer(sale)
    assert response is not None and not response.has_succeeded and response.transaction_result == 7
    assert response.repport.strip() == "cancelled_by_cashier"
    assert [p["status"] for p in await counter.payments_of_sale(1)] == ["canceled"]
    await counter.display.wait_for_lines("DECLINED", "cancelled_by_cashier", timeout_s=5)
    # The counter goes on: the next sale is served normally.
    await counter.start_phone()
    again = await answer(counter.sell(1.00))
    assert again is not None and again.has_succeeded, again.repport
    assert again.transaction_id.strip() == "000002"


@with_qr_slip
async def test_register_gives_up_then_the_payment_is_reversed(counter: Counter) -> None:
    before = await counter.shop.available(counter.holder)
    sale = counter.sell(30.00, waiting_timeout_s=2.0)
    slip = await counter.printer.next_receipt(timeout_s=10)
    assert await answer(sale) is None  # the register stopped waiting and closed its port
    paid = await counter.api.call("POST", "/v1/wallet/qr/pay", counter.holder.token,
                                  json={"payload": slip.qr_payloads[0]})
    assert paid["status"] == "succeeded"
    # The agent approves, cannot deliver the answer (no ACK to its ENQs), and reverses.
    await counter.agent.wait_log(lambda e: str(e.get("msg", "")).startswith("reversed " + paid["id"]),
                                 timeout_s=15)
    payment = await counter.api.call("GET", f"/v1/payments/{paid['id']}", counter.shop.secret)
    assert payment["status"] == "succeeded" and payment["amount_refunded"] == 3_000
    assert await counter.shop.available(counter.holder) == before
    assert (await counter.agent.status()).get("sales.voided") == 1


async def test_phone_leaves_the_field_and_comes_back(counter: Counter) -> None:
    phone = await counter.start_phone()
    first = await answer(counter.sell(2.00))
    assert first is not None and first.has_succeeded
    await phone.stop(sig=signal.SIGKILL)  # the phone vanishes mid-flight
    sale = counter.sell(3.00)
    await counter.waiting_for_payment("CNY 3.00")  # the second sale is armed, nobody in the field
    await asyncio.sleep(1.5)
    assert not sale.done()
    back = await counter.start_phone(atc=phone.atc)  # back with its counter where it was
    response = await answer(sale)
    assert response is not None and response.has_succeeded and response.amount == 3.0
    assert back.atc == phone.atc + 1
    assert [p["status"] for p in await counter.payments_of_sale(2)] == ["succeeded"]


async def test_the_terminal_shows_its_agents_heartbeat(counter: Counter) -> None:
    path = f"/v1/terminals/{counter.shop.terminal}"
    seen: list[str] = []
    async with asyncio.timeout(15):
        while len(seen) < 2:  # two beats: last_seen_at moves on while the agent runs
            terminal = await counter.api.call("GET", path, counter.shop.secret)
            if terminal["last_seen_at"] is not None and terminal["last_seen_at"] not in seen:
                seen.append(terminal["last_seen_at"])
            await asyncio.sleep(0.2)
    assert terminal["agent_version"] == health.agent_version() and terminal["offline_backlog_count"] == 0
    listed = await counter.api.call("GET", "/v1/terminals", counter.shop.secret)
    assert [t["id"] for t in listed["data"]] == [counter.shop.terminal]


async def test_gateway_outage_offline_tap_forwarded_once_after_agent_kill(counter: Counter) -> None:
    phone = await counter.start_phone()
    before = await counter.shop.available(counter.holder)
    await counter.gateway.kill()
    response = await answer(counter.sell(45.00))
    assert response is not None and response.has_succeeded and response.amount == 45.0
    assert response.repport.strip().startswith("tap_offline ")
    await counter.display.wait_for_lines("APPROVED", "CNY 45.00".rjust(20), timeout_s=5)
    receipt = await counter.printer.next_receipt(timeout_s=5)
    assert "OFFLINE" in "\n".join(receipt.lines)
    status = await counter.agent.status()
    assert status.get("offline_taps.pending") == 1 and status.get("sales.answered") == 1, status

    # Killed between approval and forwarding: the journal keeps the tap.
    await counter.agent.stop(sig=signal.SIGKILL)
    await counter.gateway.start()
    await counter.agent.start()
    await counter.agent.wait_log(lambda e: str(e.get("msg", "")).startswith("forwarder: offline tap")
                                 and "accepted" in str(e.get("msg")), timeout_s=15)
    status = await counter.agent.status()
    assert status.get("offline_taps.forwarded") == 1 and "offline_taps.pending" not in status, status

    taps = [p for p in await counter.payments_of_sale(1) if "-T" in p["merchant_reference"]]
    assert [(p["status"], p["amount"], p["channel"]) for p in taps] == [("succeeded", 4_500, "tap")]
    assert await counter.shop.available(counter.holder) == before - 4_500
    # Once only: another round finds nothing to forward, and the next online tap of the same
    # phone (a higher ATC) is accepted.
    again = await answer(counter.sell(1.00))
    assert again is not None and again.has_succeeded and again.repport.strip().startswith("tap pay_")
    assert await counter.shop.available(counter.holder) == before - 4_600
    assert phone.atc == int(counter.provisioning["atc"]) + 2


async def test_gateway_dies_mid_sale_the_unused_qr_payment_is_reversed_later(counter: Counter) -> None:
    sale = counter.sell(15.00)
    await counter.waiting_for_payment("CNY 15.00")  # the sale's payment created while the gateway was up
    await counter.gateway.kill()
    await counter.start_phone()
    response = await answer(sale)
    assert response is not None and response.has_succeeded and response.repport.strip().startswith("tap_offline")
    status = await counter.agent.status()
    assert status.get("offline_taps.pending") == 1 and status.get("operations.pending", 0) >= 1, status

    await counter.gateway.start()
    await counter.agent.wait_log(lambda e: str(e.get("msg", "")).startswith("reversed "), timeout_s=15)
    await counter.agent.wait_log(lambda e: "accepted as" in str(e.get("msg", "")), timeout_s=15)
    # The offline tap made its own payment (the sale's might have expired before it got through).
    statuses = {p["merchant_reference"]: p["status"] for p in await counter.payments_of_sale(1)}
    assert statuses == {"E2E-000001": "canceled", "E2E-000001-T1": "succeeded"}


async def test_agent_killed_mid_sale_reverses_it_at_restart(counter: Counter) -> None:
    sale = counter.sell(8.00, waiting_timeout_s=3.0)
    await counter.waiting_for_payment("CNY 8.00")
    await counter.agent.stop(sig=signal.SIGKILL)
    assert await answer(sale) is None
    await counter.agent.start()
    assert "sale E2E-000001 was interrupted (open): reversing its payments" in counter.agent.messages()
    assert [p["status"] for p in await counter.payments_of_sale(1)] == ["canceled"]
    assert (await counter.agent.status()).get("sales.voided") == 1


async def test_offline_replay_of_a_tap_approved_online_is_declined_at_the_counter(counter: Counter) -> None:
    relay = RelayPhone(counter.nfc_port, counter.provisioning)
    relay.start()
    try:
        first = await answer(counter.sell(38.00))
        assert first is not None and first.has_succeeded and first.repport.strip().startswith("tap pay_"), first
        assert relay.card.captured is not None and relay.card.replay_count == 0
        before = await counter.shop.available(counter.holder)

        await counter.gateway.kill()
        replayed = await answer(counter.sell(38.00))  # the same cryptogram, byte for byte
        assert relay.card.replay_count >= 1
        assert replayed is not None and not replayed.has_succeeded, replayed.repport
        assert replayed.repport.strip() == "offline_atc_replayed"
        await counter.display.wait_for_lines("DECLINED", "offline_atc_replayed", timeout_s=5)
    finally:
        relay.stop()
    status = await counter.agent.status()
    assert "offline_taps.pending" not in status and status.get("sales.answered") == 2, status

    # Back online nothing is forwarded for the replay: the merchant was never told it was paid.
    await counter.gateway.start()
    await asyncio.sleep(1.5)  # more than two forwarder rounds
    assert [p["merchant_reference"] for p in await counter.payments_of_sale(2)
            if "-T" in p["merchant_reference"]] == []
    assert await counter.shop.available(counter.holder) == before


async def test_register_refunds_a_sale_of_its_payment(counter: Counter) -> None:
    await counter.start_phone()
    before = await counter.shop.available(counter.holder)
    sold = await answer(counter.sell(38.00))
    assert sold is not None and sold.has_succeeded
    sale_number = sold.transaction_id.strip()
    payment_id = sold.repport.strip().split()[1]

    first = await answer(counter.refund(10.00, sale_number))
    assert first is not None and first.has_succeeded and first.amount == 10.0, first.repport
    assert first.repport.strip().startswith("refund re_") and first.transaction_id.strip() == sale_number
    # Answered: the same request again is a second refund of that amount, not a replay of the first.
    second = await answer(counter.refund(10.00, sale_number))
    assert second is not None and second.has_succeeded and second.repport != first.repport
    too_much = await answer(counter.refund(30.00, sale_number))
    assert too_much is not None and not too_much.has_succeeded

    [payment] = await counter.payments_of_sale(1)
    assert (payment["id"], payment["amount_refunded"]) == (payment_id, 2_000)
    refunds = await counter.api.call("GET", f"/v1/payments/{payment_id}/refunds", counter.shop.secret)
    assert sorted(r["id"] for r in refunds["data"]) == sorted(
        r.repport.strip().split()[1] for r in (first, second))
    assert await counter.shop.available(counter.holder) == before - 3_800 + 2_000

    unknown = await answer(counter.refund(1.00, "000099"))
    assert unknown is not None and not unknown.has_succeeded and unknown.repport.strip() == "sale_unknown"


@with_qr_slip
async def test_qr_and_tap_at_once_pay_the_sale_once(counter: Counter) -> None:
    before = await counter.shop.available(counter.holder)
    sale = counter.sell(6.60)
    slip = await counter.printer.next_receipt(timeout_s=10)
    # The wallet scans the code while its phone is put on the reader: both reach for the one payment.
    scan = asyncio.create_task(counter.api.call("POST", "/v1/wallet/qr/pay", counter.holder.token, (200, 409),
                                                json={"payload": slip.qr_payloads[0]}))
    await counter.start_phone()
    scanned = await scan
    response = await answer(sale)
    assert response is not None and response.has_succeeded, response.repport
    method, payment_id = response.repport.strip().split()
    [paid] = await counter.payments_of_sale(1)
    assert (paid["id"], paid["status"], paid["amount_refunded"]) == (payment_id, "succeeded", 0)
    assert paid["channel"] == method  # "qr" or "tap": whichever locked the payment first
    if method == "qr":
        assert scanned["id"] == payment_id
    else:
        assert scanned["error"]["code"] == "qr_code_used"
    assert await counter.shop.available(counter.holder) == before - 660
