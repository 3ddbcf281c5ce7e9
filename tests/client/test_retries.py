"""Retry behaviour against the local fake: what is retried, with which key, how long it waits, when it stops."""

from __future__ import annotations

import socket
import time
import uuid

import pytest

from tests.client.conftest import FAKE_KEY, FAST
from tests.client.fake import FakeGateway, Scripted, error
from wallet_client import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    CardError,
    ConflictError,
    IdempotencyError,
    IdempotencyInUseError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    RetryPolicy,
    ServiceUnavailableError,
    UnsupportedMediaTypeError,
    WalletClient,
    WalletError,
)

Fake = tuple[FakeGateway, str]
CREATED = Scripted(201, {"id": "pay_1", "object": "payment", "status": "requires_payment_method"})


def keys(fake: FakeGateway, path: str = "/v1/payments") -> list[str | None]:
    return [s.headers.get("Idempotency-Key") for s in fake.requests("POST", path)]


async def test_503_then_200_same_idempotency_key_and_retry_after_honoured(fake: Fake) -> None:
    gw, url = fake
    gw.queue("POST", "/v1/payments", error(503, "api_error", "service_unavailable", headers={"Retry-After": "1"}),
             CREATED)
    async with WalletClient(FAKE_KEY, base_url=url, retry=FAST) as wallet:
        started = time.monotonic()
        payment = await wallet.payments.create(amount=1050, currency="CNY")
        elapsed_s = time.monotonic() - started
    assert payment["id"] == "pay_1"
    sent = keys(gw)
    assert len(sent) == 2 and sent[0] == sent[1] and sent[0] is not None
    uuid.UUID(sent[0])
    first, second = gw.requests("POST", "/v1/payments")
    assert second.at_s - first.at_s >= 1.0 and elapsed_s >= 1.0
    assert first.body == second.body == {"amount": 1050, "currency": "CNY"}


async def test_429_waits_for_retry_after(fake: Fake) -> None:
    gw, url = fake
    gw.queue("GET", "/v1/payments/pay_9", error(429, "rate_limit_error", "rate_limited", headers={"Retry-After": "1"}))
    async with WalletClient(FAKE_KEY, base_url=url, retry=FAST) as wallet:
        started = time.monotonic()
        assert (await wallet.payments.retrieve("pay_9"))["id"] == "pay_9"
        elapsed_s = time.monotonic() - started
    first, second = gw.requests("GET", "/v1/payments/pay_9")
    assert second.at_s - first.at_s >= 1.0
    assert 1.0 <= elapsed_s < 1.0 + FAST.backoff_initial_s + 0.5
    assert "Idempotency-Key" not in first.headers


async def test_409_idempotency_key_in_use_is_retried_with_the_same_key(fake: Fake) -> None:
    gw, url = fake
    in_use = error(409, "idempotency_error", "idempotency_key_in_use")
    gw.queue("POST", "/v1/payments", in_use, in_use, CREATED)
    async with WalletClient(FAKE_KEY, base_url=url, retry=FAST) as wallet:
        await wallet.payments.create(amount=1, currency="CNY", idempotency_key="order-42")
    assert keys(gw) == ["order-42"] * 3


async def test_other_409_is_not_retried(fake: Fake) -> None:
    gw, url = fake
    gw.queue("POST", "/v1/payments", error(409, "invalid_request_error", "invalid_state_transition"), CREATED)
    async with WalletClient(FAKE_KEY, base_url=url, retry=FAST) as wallet:
        with pytest.raises(ConflictError) as caught:
            await wallet.payments.create(amount=1, currency="CNY")
    assert not isinstance(caught.value, IdempotencyInUseError)
    assert caught.value.code == "invalid_state_transition" and caught.value.attempt_count == 1
    assert len(gw.requests("POST", "/v1/payments")) == 1


async def test_400_is_not_retried_and_carries_the_error_body(fake: Fake) -> None:
    gw, url = fake
    gw.queue("POST", "/v1/payments", error(400, "invalid_request_error", "amount_too_precise", "two decimals",
                                           param="amount"), CREATED)
    async with WalletClient(FAKE_KEY, base_url=url, retry=FAST) as wallet:
        with pytest.raises(InvalidRequestError) as caught:
            await wallet.payments.create(amount=1, currency="CNY")
    e = caught.value
    assert (e.http_status, e.type, e.code, e.param, e.request_id, e.message) == (
        400, "invalid_request_error", "amount_too_precise", "amount", "req_amount_too_precise", "two decimals")
    assert len(gw.requests("POST", "/v1/payments")) == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_refused_is_retried_then_a_typed_error_after_the_bound() -> None:
    policy = RetryPolicy(retry_count_max=3, backoff_initial_s=0.05, backoff_max_s=0.1, elapsed_max_s=5.0)
    async with WalletClient(FAKE_KEY, base_url=f"http://127.0.0.1:{free_port()}", retry=policy) as wallet:
        started = time.monotonic()
        with pytest.raises(APIConnectionError) as caught:
            await wallet.payments.create(amount=1, currency="CNY")
        elapsed_s = time.monotonic() - started
    assert caught.value.attempt_count == 4 and caught.value.http_status is None
    assert elapsed_s < 0.05 + 0.1 + 0.1 + 1.0  # three waits, each at most its ceiling, plus slack
    assert isinstance(caught.value, WalletError)


async def test_total_time_bound_stops_before_the_count_bound(fake: Fake) -> None:
    gw, url = fake
    gw.queue("GET", "/v1/payments/pay_1",
             *[error(503, "api_error", "service_unavailable", headers={"Retry-After": "1"}) for _ in range(10)])
    policy = RetryPolicy(retry_count_max=10, backoff_initial_s=0.01, backoff_max_s=0.05, elapsed_max_s=1.5)
    async with WalletClient(FAKE_KEY, base_url=url, retry=policy) as wallet:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError) as caught:
            await wallet.payments.retrieve("pay_1")
        elapsed_s = time.monotonic() - started
    assert caught.value.attempt_count == 2 and caught.value.retry_after_s == 1.0
    assert elapsed_s < 1.5


async def test_retry_after_beyond_the_bound_is_not_waited_for(fake: Fake) -> None:
    gw, url = fake
    gw.queue("GET", "/v1/payments/pay_1", error(429, "rate_limit_error", "rate_limited",
                                               headers={"Retry-After": "3600"}))
    async with WalletClient(FAKE_KEY, base_url=url, retry=FAST) as wallet:
        started = time.monotonic()
        with pytest.raises(RateLimitError) as caught:
            await wallet.payments.retrieve("pay_1")
    assert time.monotonic() - started < 0.5
    assert caught.value.retry_after_s == 3600 and caught.value.attempt_count == 1


async def test_a_timed_out_attempt_is_retried_with_the_same_key_and_bounded(fake: Fake) -> None:
    gw, url = fake
    gw.queue("POST", "/v1/payments", Scripted(201, {"id": "late"}, delay_s=1.0), CREATED)
    async with WalletClient(FAKE_KEY, base_url=url, retry=FAST, timeout_s=0.3) as wallet:
        assert (await wallet.payments.create(amount=5, currency="CNY"))["id"] == "pay_1"
        sent = keys(gw)
        assert len(sent) == 2 and sent[0] == sent[1]
        gw.queue("POST", "/v1/payments", *[Scripted(201, {"id": "late"}, delay_s=1.0) for _ in range(4)])
        with pytest.raises(APITimeoutError) as caught:
            await wallet.payments.create(amount=5, currency="CNY")
    assert caught.value.attempt_count == FAST.retry_count_max + 1
    assert len(set(keys(gw)[2:])) == 1 and keys(gw)[2] != sent[0]


async def test_every_logical_call_gets_its_own_key(fake: Fake) -> None:
    gw, url = fake
    async with WalletClient(FAKE_KEY, base_url=url, retry=FAST) as wallet:
        await wallet.payments.create(amount=1, currency="CNY")
        await wallet.payments.create(amount=1, currency="CNY")
        await wallet.payments.create(amount=1, currency="CNY", idempotency_key="mine")
        with pytest.raises(ValueError):
            await wallet.payments.create(amount=1, currency="CNY", idempotency_key="x" * 256)
    first, second, third = keys(gw)
    assert first != second and third == "mine"


async def test_5xx_without_json_is_an_api_error_after_retries(fake: Fake) -> None:
    gw, url = fake
    gw.queue("GET", "/v1/payments/pay_1", *[Scripted(502, raw=b"<html>bad gateway</html>") for _ in range(4)])
    async with WalletClient(FAKE_KEY, base_url=url, retry=FAST) as wallet:
        with pytest.raises(APIError) as caught:
            await wallet.payments.retrieve("pay_1")
    assert caught.value.http_status == 502 and caught.value.attempt_count == 4
    assert len(gw.requests("GET", "/v1/payments/pay_1")) == 4


@pytest.mark.parametrize(("status", "type_", "code", "cls"), [
    (400, "invalid_request_error", "invalid_request", InvalidRequestError),
    (401, "authentication_error", "unauthenticated", AuthenticationError),
    (402, "card_error", "insufficient_funds", CardError),
    (403, "permission_error", "forbidden", PermissionDeniedError),
    (404, "invalid_request_error", "resource_missing", NotFoundError),
    (409, "invalid_request_error", "invalid_state_transition", ConflictError),
    (413, "invalid_request_error", "body_too_large", PayloadTooLargeError),
    (415, "invalid_request_error", "unsupported_media_type", UnsupportedMediaTypeError),
    (422, "idempotency_error", "idempotency_key_reused", IdempotencyError),
    (429, "rate_limit_error", "rate_limited", RateLimitError),
    (500, "api_error", "internal_error", APIError),
    (503, "api_error", "service_unavailable", ServiceUnavailableError),
])
async def test_error_classes_mirror_status_and_code(fake: Fake, status: int, type_: str, code: str,
                                                    cls: type[WalletError]) -> None:
    gw, url = fake
    gw.queue("POST", "/v1/payments", error(status, type_, code, param="amount"))
    async with WalletClient(FAKE_KEY, base_url=url, retry=RetryPolicy(retry_count_max=0)) as wallet:
        with pytest.raises(cls) as caught:
            await wallet.payments.create(amount=1, currency="CNY")
    e = caught.value
    assert type(e) is cls
    assert (e.http_status, e.type, e.code, e.param, e.request_id) == (status, type_, code, "amount", f"req_{code}")
    assert str(e).startswith("scripted (http_status=")


async def test_a_wrong_key_is_an_authentication_error_and_never_shown(fake: Fake) -> None:
    _, url = fake
    async with WalletClient("sk_test_wrong_key", base_url=url, retry=FAST) as wallet:
        with pytest.raises(AuthenticationError) as caught:
            await wallet.balance.retrieve()
    assert "sk_test_wrong_key" not in repr(caught.value) + str(caught.value)
    assert caught.value.attempt_count == 1
