"""The gateway client: pure retry decisions, then the same rules against a scripted fake gateway."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pos_agent.credentials import Credentials
from pos_agent.errors import Declined, DeviceAuthError, GatewayRejected, GatewayUnreachable, OutcomeUnknown
from pos_agent.gateway_client import Attempt, GatewayClient, RetryPolicy, backoff_delay_s, classify_status, next_step
from pos_agent.settings import GatewaySettings

POLICY = RetryPolicy(attempt_count_max=3, backoff_base_s=0.1, backoff_max_s=1.0)


@pytest.mark.parametrize(("status", "code", "expected"), [
    (201, None, Attempt.OK),
    (402, "insufficient_funds", Attempt.DEFINITE),
    (404, "pay_code_unknown", Attempt.DEFINITE),
    (409, "pay_code_used", Attempt.DEFINITE),
    (409, "idempotency_key_in_use", Attempt.BUSY),
    (429, "rate_limited", Attempt.BUSY),
    (401, "token_expired", Attempt.TOKEN_EXPIRED),
    (401, "device_revoked", Attempt.DEFINITE),
    (500, None, Attempt.SERVER_ERROR),
    (503, "unavailable", Attempt.SERVER_ERROR),
])
def test_classify_status(status: int, code: str | None, expected: Attempt) -> None:
    assert classify_status(status, code, token_sent=True) is expected


@pytest.mark.parametrize("code", ["invalid_enrolment_code", "invalid_device_credentials", "device_revoked"])
def test_a_401_without_a_token_is_no_token_expiry(code: str) -> None:
    assert classify_status(401, code, token_sent=False) is Attempt.DEFINITE


def test_next_step_is_bounded_and_never_repeats_definite_answers() -> None:
    for attempt in (Attempt.CONNECT_FAILED, Attempt.NO_ANSWER, Attempt.SERVER_ERROR, Attempt.BUSY):
        assert next_step(attempt, 0, POLICY, token_renewed=False)
        assert next_step(attempt, 1, POLICY, token_renewed=False)
        assert not next_step(attempt, 2, POLICY, token_renewed=False)
    assert not next_step(Attempt.DEFINITE, 0, POLICY, token_renewed=False)
    assert not next_step(Attempt.OK, 0, POLICY, token_renewed=False)
    assert next_step(Attempt.TOKEN_EXPIRED, 0, POLICY, token_renewed=False)
    assert not next_step(Attempt.TOKEN_EXPIRED, 0, POLICY, token_renewed=True)


def test_backoff_is_full_jitter_and_capped() -> None:
    rng = random.Random(7)
    for attempt_index, ceiling in ((0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (40, 1.0)):
        delays = [backoff_delay_s(attempt_index, POLICY, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8 and min(delays) < ceiling * 0.2  # spread over the whole range


# --- against a scripted fake gateway ----------------------------------------------------------

Script = Callable[[web.Request, int], web.Response]


class Fake:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None, dict[str, Any] | None]] = []
        self.script: dict[str, Script] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.seen.append((request.method, request.path, request.headers.get("Idempotency-Key"), body))
        if request.path == "/v1/devices/sessions":
            return web.json_response({"access_token": f"tok{len(self.seen)}", "expires_in": 900}, status=201)
        count = sum(1 for s in self.seen if s[1] == request.path)
        return self.script[request.path](request, count)

    def keys(self, path: str) -> list[str | None]:
        return [key for _, p, key, _ in self.seen if p == path]


def error(status: int, code: str) -> web.Response:
    return web.json_response({"error": {"type": "x", "code": code, "message": code}}, status=status)


PAYMENT = {"id": "pay_1", "status": "succeeded", "amount": 100, "currency": "CNY", "amount_refunded": 0,
           "channel": "tap", "merchant_reference": "T1-000001-T1", "confirm_by": None}
CREDENTIALS = Credentials("http://x", "dev_1", "ds_secret", "ter_1", "sto_1", "mer_1")


@pytest.fixture
async def fake() -> AsyncIterator[tuple[Fake, str]]:
    gateway = Fake()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", gateway.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield gateway, str(server.make_url("")).rstrip("/")
    await server.close()


def client_for(url: str, **overrides: Any) -> GatewayClient:
    settings = GatewaySettings(url=url, backoff_base_s=0.01, backoff_max_s=0.02, **overrides)
    return GatewayClient(settings, credentials=CREDENTIALS, rng=random.Random(1))


async def tap(client: GatewayClient) -> Any:
    return await client.tap_payment({"terminal_transaction_id": "tt1", "amount": 100}, idempotency_key="tt1")


async def test_retries_5xx_and_in_use_with_the_same_key_and_body(fake: tuple[Fake, str]) -> None:
    gateway, url = fake
    responses = [error(503, "unavailable"), error(409, "idempotency_key_in_use"), web.json_response(PAYMENT, status=201)]
    gateway.script["/v1/tap_payments"] = lambda request, n: responses[n - 1]
    async with client_for(url) as client:
        payment = await tap(client)
    assert payment.succeeded and payment.id == "pay_1"
    assert gateway.keys("/v1/tap_payments") == ["tt1", "tt1", "tt1"]
    bodies = [body for _, p, _, body in gateway.seen if p == "/v1/tap_payments"]
    assert bodies == [bodies[0]] * 3


async def test_definite_decline_is_not_retried(fake: tuple[Fake, str]) -> None:
    gateway, url = fake
    gateway.script["/v1/tap_payments"] = lambda request, n: error(402, "insufficient_funds")
    async with client_for(url) as client:
        with pytest.raises(Declined) as caught:
            await tap(client)
    assert caught.value.error_code == "insufficient_funds" and caught.value.status == 402
    assert len(gateway.keys("/v1/tap_payments")) == 1


async def test_pay_code_refusals_are_declines(fake: tuple[Fake, str]) -> None:
    gateway, url = fake
    gateway.script["/v1/pay_code_charges"] = lambda request, n: error(409, "pay_code_used")
    async with client_for(url) as client:
        with pytest.raises(Declined):
            await client.charge_pay_code(pay_code="19" + "0" * 16, amount_minor=1, currency="CNY",
                                         reference="r", idempotency_key="k")


async def test_5xx_every_time_is_an_unknown_outcome(fake: tuple[Fake, str]) -> None:
    gateway, url = fake
    gateway.script["/v1/tap_payments"] = lambda request, n: error(500, "internal_error")
    async with client_for(url) as client:
        with pytest.raises(OutcomeUnknown):
            await tap(client)
    assert len(gateway.keys("/v1/tap_payments")) == 3


async def test_expired_token_is_renewed_once_then_revocation_is_final(fake: tuple[Fake, str]) -> None:
    gateway, url = fake
    gateway.script["/v1/payments/pay_1"] = lambda request, n: (
        error(401, "token_expired") if n == 1 else web.json_response(PAYMENT))
    gateway.script["/v1/payments/pay_2"] = lambda request, n: error(401, "device_revoked")
    async with client_for(url) as client:
        assert (await client.get_payment("pay_1")).id == "pay_1"
        with pytest.raises(DeviceAuthError):
            await client.get_payment("pay_2")
    sessions = [s for s in gateway.seen if s[1] == "/v1/devices/sessions"]
    assert len(sessions) == 2 and all(s[3] == {"device": "dev_1", "device_secret": "ds_secret"} for s in sessions)


async def test_find_payments_keeps_only_the_exact_reference(fake: tuple[Fake, str]) -> None:
    gateway, url = fake
    other = {**PAYMENT, "id": "pay_2", "merchant_reference": "someone-else"}
    gateway.script["/v1/payments"] = lambda request, n: web.json_response(
        {"data": [PAYMENT, other], "has_more": False})
    async with client_for(url) as client:
        found = await client.find_payments("T1-000001-T1")
    assert [p.id for p in found] == ["pay_1"]
    assert gateway.seen[-1][1] == "/v1/payments"


async def test_unreachable_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with client_for(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(GatewayUnreachable):
            await client.tap_payment({"terminal_transaction_id": "tt1"}, idempotency_key="tt1")


async def test_a_slow_gateway_is_an_unknown_outcome_not_unreachable(fake: tuple[Fake, str]) -> None:
    gateway, url = fake

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.json_response(PAYMENT, status=201)

    app = web.Application()
    app.router.add_post("/v1/tap_payments", slow)
    app.router.add_route("*", "/{tail:.*}", gateway.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with client_for(str(server.make_url("")).rstrip("/"), request_timeout_s=0.2,
                              retry_count_max=2) as client:
            with pytest.raises(OutcomeUnknown):
                await tap(client)
    finally:
        await server.close()


async def test_other_4xx_are_rejections(fake: tuple[Fake, str]) -> None:
    gateway, url = fake
    gateway.script["/v1/payments/pay_9/reverse"] = lambda request, n: error(409, "payment_not_reversible")
    async with client_for(url) as client:
        with pytest.raises(GatewayRejected) as caught:
            await client.reverse("pay_9", idempotency_key="reverse-pay_9")
    assert not isinstance(caught.value, Declined) and caught.value.error_code == "payment_not_reversible"
