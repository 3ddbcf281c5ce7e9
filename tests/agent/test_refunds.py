"""Counter refunds against a scripted gateway: which sale, which payment, and the key a repeated
request resends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from pos_agent.journal import AsyncJournal, OpKind
from pos_agent.refunds import CounterRefunds
from tests.agent.test_gateway_client import Fake, client_for, error, fake  # noqa: F401


def refund_answer(request: web.Request, count: int) -> web.Response:
    return web.json_response({"id": f"re_{request.headers['Idempotency-Key']}", "object": "refund",
                              "payment": "pay_1", "amount": 500, "status": "succeeded"}, status=201)


async def sold(journal: AsyncJournal, *, approved: bool = True, answered: bool = True) -> str:
    reference = await journal.call(lambda j: j.open_sale("T1", 3_800, "CNY"))
    await journal.call(lambda j: j.decide_sale(reference, approved=approved, method="tap", payment_id="pay_1"))
    if answered:
        await journal.call(lambda j: j.sale_answered(reference))
    return reference


async def test_a_repeated_request_resends_the_key_until_the_register_has_the_answer(
    fake: tuple[Fake, str], tmp_path: Path  # noqa: F811 (the imported fixture)
) -> None:
    gateway, url = fake
    gateway.script["/v1/payments/pay_1/refunds"] = refund_answer
    journal = AsyncJournal.open(tmp_path / "j.sqlite3")
    try:
        reference = await sold(journal)
        async with client_for(url) as client:
            refunds = CounterRefunds(client, journal, terminal_label="T1", timeout_s=5.0)
            first = await refunds.refund("000001 ", 500)
            again = await refunds.refund("000001", 500)  # the answer never reached the register
            assert first.approved and again.approved and first.key == again.key
            assert first.key is not None
            await refunds.mark_answered(first.key)
            second = await refunds.refund("000001", 500)  # a new request: a second refund
            assert second.approved and second.key != first.key
        keys = gateway.keys("/v1/payments/pay_1/refunds")
        assert keys == [first.key, first.key, second.key]
        bodies = [body for _, path, _, body in gateway.seen if path == "/v1/payments/pay_1/refunds"]
        assert all(body == {"amount": 500, "reason": "counter refund"} for body in bodies)
        ops = await journal.call(lambda j: j.operations_of_sale(reference))
        assert [op.kind for op in ops].count(OpKind.REFUND) == 2
    finally:
        await journal.close()


async def test_only_approved_answered_sales_are_refunded(
    fake: tuple[Fake, str], tmp_path: Path  # noqa: F811 (the imported fixture)
) -> None:
    gateway, url = fake
    refused: dict[str, Any] = {"count": 0}

    def refuse(request: web.Request, count: int) -> web.Response:
        refused["count"] += 1
        return error(409, "payment_fully_refunded")

    gateway.script["/v1/payments/pay_1/refunds"] = refuse
    journal = AsyncJournal.open(tmp_path / "j.sqlite3")
    try:
        await sold(journal, approved=False)
        await sold(journal, answered=False)
        await sold(journal)
        async with client_for(url) as client:
            refunds = CounterRefunds(client, journal, terminal_label="T1", timeout_s=5.0)
            assert (await refunds.refund("", 100)).reason == "sale_number_required"
            assert (await refunds.refund("000009", 100)).reason == "sale_unknown"
            assert (await refunds.refund("000001", 100)).reason == "sale_not_approved"
            assert (await refunds.refund("000002", 100)).reason == "sale_not_approved"  # voided at restart
            assert (await refunds.refund("000003", 3_801)).reason == "amount_too_large"
            refusal = await refunds.refund("000003", 100)
            assert not refusal.approved and refusal.reason == "payment_fully_refunded"
        assert refused["count"] == 1
    finally:
        await journal.close()
