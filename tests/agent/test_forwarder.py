"""The forwarder against a scripted fake gateway: order, idempotent resends, definite answers only."""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from pos_agent.forwarder import Forwarder
from pos_agent.gateway_client import GatewayClient
from pos_agent.journal import AsyncJournal, OfflineTapState, OpKind, OpState
from pos_agent.settings import ForwarderSettings, GatewaySettings, OfflineLimits, Settings
from tests.agent.test_gateway_client import CREDENTIALS, PAYMENT, Fake, error, fake  # noqa: F401

LIMITS = OfflineLimits(token_count_max=10, terminal_count_max=10)


class Clock:
    """Starts at the real time: the journal stamps entries with it."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def setup(
    fake: tuple[Fake, str], tmp_path: Path  # noqa: F811 (the imported fixture)
) -> AsyncIterator[tuple[Fake, Forwarder, AsyncJournal, Clock]]:
    gateway, url = fake
    clock = Clock()
    settings = Settings(gateway=GatewaySettings(url=url, backoff_base_s=0.01, backoff_max_s=0.02,
                                                request_timeout_s=1.0),
                        forwarder=ForwarderSettings(batch_max=10))
    journal = AsyncJournal.open(tmp_path / "j.sqlite3")
    async with GatewayClient(settings.gateway, credentials=CREDENTIALS, rng=random.Random(3)) as client:
        yield gateway, Forwarder(settings, client, journal, clock=clock), journal, clock
    await journal.close()


async def approve(journal: AsyncJournal, ttid: str, token: str, atc: int) -> None:
    body = {"terminal_transaction_id": ttid, "amount": 100, "tap": {"atc": atc}}
    decision = await journal.call(lambda j: j.approve_offline_tap(
        LIMITS, terminal_transaction_id=ttid, sale_reference=f"S-{ttid}", token_pan=token, atc=atc,
        amount_minor=100, currency="CNY", expected_currency="CNY", body=body))
    assert decision.approved


def tap_script(outcomes: dict[str, list[int]]) -> Any:
    def respond(request: web.Request, count: int) -> web.Response:
        ttid = request.headers["Idempotency-Key"]
        statuses = outcomes[ttid]
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        if status == 201:
            return web.json_response({**PAYMENT, "id": f"pay_{ttid}"}, status=201)
        return error(status, "insufficient_funds" if status == 402 else "unavailable")
    return respond


async def test_forwards_in_order_stops_at_the_first_transient_failure(setup) -> None:  # type: ignore[no-untyped-def]
    gateway, forwarder, journal, _ = setup
    for ttid, token, atc in (("a", "1", 1), ("b", "2", 1), ("c", "1", 2), ("d", "3", 1)):
        await approve(journal, ttid, token, atc)
    outcomes = {"a": [201], "b": [402], "c": [503], "d": [201]}
    gateway.script["/v1/tap_payments"] = tap_script(outcomes)

    first = await forwarder.run_round()
    assert (first.forwarded, first.declined, first.blocked) == (1, 1, True)
    assert gateway.keys("/v1/tap_payments") == ["a", "b", "c", "c", "c"]  # d waits behind c: ATC order
    pending = await journal.call(lambda j: j.pending_offline_taps(10))
    assert [(t.terminal_transaction_id, t.attempt_count) for t in pending] == [("c", 1), ("d", 0)]

    outcomes["c"] = [201]
    second = await forwarder.run_round()
    assert (second.forwarded, second.blocked) == (2, False)
    assert await journal.call(lambda j: j.pending_offline_taps(10)) == []
    bodies = [body for _, path, key, body in gateway.seen if path == "/v1/tap_payments" and key == "c"]
    assert len(bodies) == 4 and all(body == bodies[0] for body in bodies)  # the same body every time
    states = {t: (await journal.call(lambda j, t=t: j.offline_taps_of_sale(f"S-{t}")))[0].state for t in "abcd"}
    assert states == {"a": OfflineTapState.FORWARDED, "b": OfflineTapState.DECLINED,
                      "c": OfflineTapState.FORWARDED, "d": OfflineTapState.FORWARDED}
    assert (await forwarder.run_round()).forwarded == 0  # nothing is forwarded twice


async def test_drain_token_forwards_only_that_wallet(setup) -> None:  # type: ignore[no-untyped-def]
    gateway, forwarder, journal, _ = setup
    await approve(journal, "a", "1", 1)
    await approve(journal, "b", "2", 1)
    gateway.script["/v1/tap_payments"] = tap_script({"a": [201], "b": [201]})
    await forwarder.drain_token("2")
    assert gateway.keys("/v1/tap_payments") == ["b"]


async def test_queued_reversals_and_old_unknowns_are_settled(setup) -> None:  # type: ignore[no-untyped-def]
    gateway, forwarder, journal, clock = setup
    await journal.call(lambda j: j.record_operation(
        "reverse-pay_q", OpKind.REVERSE, sale_reference="S-1", reference="S-1", body={}, payment_id="pay_q"))
    await journal.call(lambda j: j.record_operation(
        "resolve-S-1-T2", OpKind.RESOLVE, sale_reference="S-1", reference="S-1-T2", body={}))
    found = {**PAYMENT, "id": "pay_t", "merchant_reference": "S-1-T2"}
    gateway.script["/v1/payments/pay_q/reverse"] = lambda request, n: (
        error(503, "unavailable") if n <= 3 else web.json_response({**PAYMENT, "id": "pay_q", "status": "canceled"}))
    gateway.script["/v1/payments"] = lambda request, n: web.json_response({"data": [found], "has_more": False})
    gateway.script["/v1/payments/pay_t/reverse"] = lambda request, n: web.json_response(
        {**found, "amount_refunded": found["amount"]})

    clock.now += 1  # the resolve entry is too young: a request could still be running
    blocked = await forwarder.run_round()
    assert blocked.blocked and blocked.reversed == 0
    assert gateway.keys("/v1/payments/pay_q/reverse") == ["reverse-pay_q"] * 3

    clock.now += 60
    settled = await forwarder.run_round()
    assert (settled.reversed, settled.resolved, settled.blocked) == (1, 1, False)
    assert gateway.keys("/v1/payments/pay_t/reverse") == ["reverse-pay_t"]
    for key in ("reverse-pay_q", "resolve-S-1-T2", "reverse-pay_t"):
        op = await journal.call(lambda j, k=key: j.operation(k))
        assert op is not None and op.state is OpState.DONE, key


async def test_key_reused_means_the_online_attempt_landed(setup) -> None:  # type: ignore[no-untyped-def]
    gateway, forwarder, journal, _ = setup
    await approve(journal, "a", "1", 1)
    body = (await journal.call(lambda j: j.pending_offline_taps(1)))[0].body
    body_ref = "S-a-T2"
    await journal.call(lambda j: j._db.execute(
        "UPDATE offline_taps SET body = ? WHERE terminal_transaction_id = 'a'",
        (json.dumps({**body, "merchant_reference": body_ref}),)))
    gateway.script["/v1/tap_payments"] = lambda request, n: error(422, "idempotency_key_reused")
    gateway.script["/v1/payments"] = lambda request, n: web.json_response(
        {"data": [{**PAYMENT, "id": "pay_online", "merchant_reference": body_ref}], "has_more": False})
    assert (await forwarder.run_round()).forwarded == 1
    tap = (await journal.call(lambda j: j.offline_taps_of_sale("S-a")))[0]
    assert tap.state is OfflineTapState.FORWARDED and tap.payment_id == "pay_online"
