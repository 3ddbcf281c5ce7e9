"""The agent's client of the gateway's device API (docs/device-api.md).

Invariants:
- Every request is bounded: ``connect_timeout_s`` to connect, ``request_timeout_s`` in total,
  and at most ``attempt_count_max`` attempts with full-jitter exponential backoff between them;
  a caller's ``timeout_s`` bounds the whole call, retries and backoff included (the checkout
  passes its share of the sale's remaining time).
- Every POST carries the ``Idempotency-Key`` its caller supplies; the caller persisted it before
  calling, and every retry of the call resends the same key and body, so a retry never charges
  twice. Only session renewal makes its own key (it moves no money).
- Retried: connection failures, timeouts, 5xx, 429 and 409 ``idempotency_key_in_use``. Never
  retried: any other 4xx (a definite answer).
- The error tells the caller what it may do (see ``pos_agent.errors``): ``GatewayUnreachable``
  only when no attempt can have reached the gateway; ``OutcomeUnknown`` when one may have.
- The device token is renewed ``token_renew_margin_s`` before it expires, one renewal at a time;
  a 401 on a call that sent the token (other than ``device_revoked``) renews once and resends. A
  401 on a call sent without a token (enrolment, session renewal) is the gateway's final answer,
  carried with its own code (``invalid_enrolment_code``, ``invalid_device_credentials``). Once
  the gateway refuses the device itself, ``device_refused`` stays set (the checkout then approves
  nothing offline).
- The device secret and access token are never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum, auto
from types import TracebackType
from typing import Any, Final

import aiohttp

from pos_agent.credentials import Credentials
from pos_agent.errors import (
    Declined,
    DeviceAuthError,
    GatewayError,
    GatewayProtocolError,
    GatewayRejected,
    GatewayUnreachable,
    NotEnrolledError,
    OutcomeUnknown,
)
from pos_agent.settings import GatewaySettings

__all__ = [
    "Attempt",
    "Enrolment",
    "GatewayClient",
    "Payment",
    "QrCode",
    "Refund",
    "RetryPolicy",
    "backoff_delay_s",
    "classify_status",
    "next_step",
]

log = logging.getLogger(__name__)

RESPONSE_BODY_MAX_BYTES: Final = 256 * 1024
TOKEN_RETRY_S: Final = 5.0
CONNECTION_LIMIT: Final = 8
ATTEMPT_TIMEOUT_MIN_S: Final = 0.05
"""The first attempt is always sent, with at least this long: a call is never given up unsent."""
# Refusals of a payment by the money rules, whatever their HTTP status.
DECLINE_CODES: Final = frozenset({
    "insufficient_funds", "limit_exceeded", "cryptogram_invalid", "atc_replayed", "amount_mismatch",
    "tap_token_unknown", "tap_token_revoked", "pay_code_used", "pay_code_expired", "pay_code_unknown",
    "payment_declined", "wallet_locked", "pin_required",
})
RETRYABLE_409_CODES: Final = frozenset({"idempotency_key_in_use"})
# Refusals of the device itself, on the session call or on any call that carried its token.
DEVICE_AUTH_CODES: Final = frozenset({"device_revoked", "invalid_device_credentials"})


# ---------------------------------------------------------------------------------------------
# Pure retry decisions


class Attempt(Enum):
    """How one attempt ended, as far as retrying is concerned."""

    OK = auto()
    CONNECT_FAILED = auto()  # never reached the gateway
    NO_ANSWER = auto()  # sent, no (complete) answer: may have executed
    SERVER_ERROR = auto()  # 5xx: may have executed
    BUSY = auto()  # 429 or 409 idempotency_key_in_use: not executed (yet), try again
    TOKEN_EXPIRED = auto()  # 401 on a call that sent the device token: renew and resend
    DEFINITE = auto()  # a 4xx refusal: final


def classify_status(status: int, error_code: str | None, *, token_sent: bool) -> Attempt:
    if 200 <= status < 300:
        return Attempt.OK
    if status == 429 or (status == 409 and error_code in RETRYABLE_409_CODES):
        return Attempt.BUSY
    if status == 401 and token_sent and error_code not in DEVICE_AUTH_CODES:
        return Attempt.TOKEN_EXPIRED
    if status >= 500:
        return Attempt.SERVER_ERROR
    return Attempt.DEFINITE


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempt_count_max: int = 3
    backoff_base_s: float = 0.1
    backoff_max_s: float = 2.0

    def __post_init__(self) -> None:
        assert 1 <= self.attempt_count_max <= 10
        assert 0 < self.backoff_base_s <= self.backoff_max_s


def backoff_delay_s(attempt_index: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max, base * 2**attempt_index)] (AWS's recommendation)."""
    assert attempt_index >= 0
    ceiling_s = min(policy.backoff_max_s, policy.backoff_base_s * 2 ** min(attempt_index, 30))
    return rng.uniform(0.0, ceiling_s)


def next_step(attempt: Attempt, attempt_index: int, policy: RetryPolicy, *, token_renewed: bool) -> bool:
    """True to send again (after a backoff), False to stop and report ``attempt``."""
    if attempt in (Attempt.OK, Attempt.DEFINITE):
        return False
    if attempt is Attempt.TOKEN_EXPIRED and token_renewed:
        return False  # a fresh token refused again: the device itself is refused
    return attempt_index + 1 < policy.attempt_count_max


# ---------------------------------------------------------------------------------------------
# Typed results


def _str(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str):
        raise GatewayProtocolError(f"expected a string {name!r} in the gateway's answer")
    return value


def _int(raw: Mapping[str, Any], name: str) -> int:
    value = raw.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise GatewayProtocolError(f"expected an integer {name!r} in the gateway's answer")
    return value


def _opt_str(raw: Mapping[str, Any], name: str) -> str | None:
    value = raw.get(name)
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Payment:
    id: str
    status: str
    amount: int
    currency: str
    amount_refunded: int
    channel: str | None
    merchant_reference: str | None
    confirm_by: str | None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Payment:
        return cls(
            id=_str(raw, "id"),
            status=_str(raw, "status"),
            amount=_int(raw, "amount"),
            currency=_str(raw, "currency"),
            amount_refunded=int(raw.get("amount_refunded") or 0),
            channel=_opt_str(raw, "channel"),
            merchant_reference=_opt_str(raw, "merchant_reference"),
            confirm_by=_opt_str(raw, "confirm_by"),
        )

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded" and self.amount_refunded == 0

    @property
    def open(self) -> bool:
        return self.status in ("requires_payment_method", "requires_action", "requires_capture")

    @property
    def reversed(self) -> bool:
        """Nothing of it holds money any more: canceled, expired, or refunded in full."""
        return self.status in ("canceled", "expired") or (
            self.status == "succeeded" and self.amount_refunded >= self.amount
        )


@dataclass(frozen=True, slots=True)
class Refund:
    id: str
    status: str
    amount: int
    payment: str

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Refund:
        return cls(id=_str(raw, "id"), status=_str(raw, "status"), amount=_int(raw, "amount"),
                   payment=_str(raw, "payment"))


@dataclass(frozen=True, slots=True)
class QrCode:
    payload: str
    image_png: str | None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> QrCode:
        return cls(payload=_str(raw, "payload"), image_png=_opt_str(raw, "image_png"))


@dataclass(frozen=True, slots=True, repr=False)
class Enrolment:
    credentials: Credentials
    access_token: str
    expires_in_s: int

    def __repr__(self) -> str:
        return f"Enrolment({self.credentials!r}, expires_in_s={self.expires_in_s})"


# ---------------------------------------------------------------------------------------------
# Client


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float  # monotonic


class GatewayClient:
    def __init__(
        self,
        settings: GatewaySettings,
        *,
        credentials: Credentials | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._base_url = settings.url.rstrip("/")
        self._credentials = credentials
        self._clock = clock
        self._rng = rng or random.Random()
        self._policy = RetryPolicy(settings.retry_count_max, settings.backoff_base_s, settings.backoff_max_s)
        self._token: _Token | None = None
        self._token_lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self.device_refused = False
        """Set once the gateway refused this device (revoked): no more offline approvals."""

    @property
    def credentials(self) -> Credentials | None:
        return self._credentials

    async def __aenter__(self) -> GatewayClient:
        timeout = aiohttp.ClientTimeout(
            total=self._settings.request_timeout_s, sock_connect=self._settings.connect_timeout_s
        )
        self._session = aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=CONNECTION_LIMIT), raise_for_status=False
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- device API ----------------------------------------------------------------------------

    async def enrol(self, code: str, name: str, *, idempotency_key: str) -> Enrolment:
        raw = await self._call("POST", "/v1/devices/enrolments", {"code": code, "name": name},
                               key=idempotency_key, auth=False)
        credentials = Credentials(
            gateway_url=self._base_url,
            device=_str(raw, "device"),
            device_secret=_str(raw, "device_secret"),
            terminal=_str(raw, "terminal"),
            store=_str(raw, "store"),
            merchant=_str(raw, "merchant"),
        )
        self._credentials = credentials
        expires_in_s = _int(raw, "expires_in")
        self._token = _Token(_str(raw, "access_token"), self._clock() + expires_in_s)
        return Enrolment(credentials, self._token.value, expires_in_s)

    async def create_payment(
        self, *, amount_minor: int, currency: str, reference: str, description: str | None, idempotency_key: str,
        timeout_s: float | None = None,
    ) -> Payment:
        body: dict[str, Any] = {"amount": amount_minor, "currency": currency, "merchant_reference": reference,
                                "capture_method": "automatic"}
        if description:
            body["description"] = description
        return Payment.parse(await self._call("POST", "/v1/payments", body, key=idempotency_key, timeout_s=timeout_s))

    async def issue_qr(
        self, payment_id: str, *, ttl_s: int, terminal_label: str, idempotency_key: str, timeout_s: float | None = None
    ) -> QrCode:
        body = {"ttl": ttl_s, "terminal_label": terminal_label[:25]}
        return QrCode.parse(await self._call("POST", f"/v1/payments/{payment_id}/qr_codes", body, key=idempotency_key,
                                             timeout_s=timeout_s))

    async def charge_pay_code(
        self, *, pay_code: str, amount_minor: int, currency: str, reference: str | None, idempotency_key: str,
        payment_id: str | None = None, timeout_s: float | None = None,
    ) -> Payment:
        """Charge a scanned code: settles ``payment_id`` (the sale's) if given, else creates a payment."""
        body = {"pay_code": pay_code, "amount": amount_minor, "currency": currency, "merchant_reference": reference,
                "payment": payment_id}
        return Payment.parse(await self._call("POST", "/v1/pay_code_charges", body, key=idempotency_key,
                                              timeout_s=timeout_s))

    async def tap_payment(
        self, body: dict[str, Any], *, idempotency_key: str, timeout_s: float | None = None
    ) -> Payment:
        assert body.get("terminal_transaction_id") == idempotency_key
        return Payment.parse(await self._call("POST", "/v1/tap_payments", body, key=idempotency_key,
                                              timeout_s=timeout_s))

    async def reverse(self, payment_id: str, *, idempotency_key: str) -> Payment:
        return Payment.parse(await self._call("POST", f"/v1/payments/{payment_id}/reverse", {}, key=idempotency_key))

    async def refund(
        self, payment_id: str, *, amount_minor: int, reason: str, idempotency_key: str, timeout_s: float | None = None
    ) -> Refund:
        body = {"amount": amount_minor, "reason": reason}
        return Refund.parse(await self._call("POST", f"/v1/payments/{payment_id}/refunds", body, key=idempotency_key,
                                             timeout_s=timeout_s))

    async def get_payment(self, payment_id: str, *, timeout_s: float | None = None) -> Payment:
        return Payment.parse(await self._call("GET", f"/v1/payments/{payment_id}", None, timeout_s=timeout_s))

    async def find_payments(self, reference: str, *, timeout_s: float | None = None) -> list[Payment]:
        raw = await self._call("GET", "/v1/payments", None, params={"merchant_reference": reference, "limit": "10"},
                               timeout_s=timeout_s)
        data = raw.get("data")
        if not isinstance(data, list):
            raise GatewayProtocolError("expected a 'data' list in the payment list")
        found = [Payment.parse(item) for item in data if isinstance(item, dict)]
        # A gateway that ignored the filter must not make us reverse someone else's payment.
        return [payment for payment in found if payment.merchant_reference == reference]

    async def heartbeat(
        self, *, agent_version: str, backlog_count: int, backlog_oldest_age_s: int | None, idempotency_key: str
    ) -> str:
        """Report this agent's version and offline backlog; the gateway's ``last_seen_at``."""
        body = {"agent_version": agent_version, "offline_backlog_count": backlog_count,
                "offline_backlog_oldest_age_s": backlog_oldest_age_s}
        return _str(await self._call("POST", "/v1/devices/heartbeat", body, key=idempotency_key), "last_seen_at")

    async def ping(self) -> None:
        """The gateway answers (``/healthz``, no credentials)."""
        await self._call("GET", "/healthz", None, auth=False)

    async def renew_token(self) -> None:
        """Get a fresh device token now."""
        async with self._token_lock:
            await self._renew_locked()

    async def keep_token_fresh(self) -> None:
        """Renew the token ahead of the on-demand threshold, forever, so no sale waits for it."""
        margin_s = self._settings.token_renew_margin_s
        while True:
            token = self._token
            wait_s = TOKEN_RETRY_S if token is None else token.expires_at - self._clock() - 1.5 * margin_s
            await asyncio.sleep(max(wait_s, TOKEN_RETRY_S))
            try:
                await self.renew_token()
            except GatewayError as exc:
                log.warning("device token renewal failed: %s", exc)

    # -- plumbing ------------------------------------------------------------------------------

    async def _bearer(self, timeout_s: float | None) -> str:
        """The device token, renewed first when it is near its end (within ``timeout_s``: the renewal is
        part of the call that needs it, so a hung gateway cannot hold a bounded call longer)."""
        async with self._token_lock:
            token = self._token
            if token is None or token.expires_at - self._clock() < self._settings.token_renew_margin_s:
                await self._renew_locked(timeout_s)
                token = self._token
            assert token is not None
            return token.value

    async def _renew_locked(self, timeout_s: float | None = None) -> None:
        credentials = self._credentials
        if credentials is None:
            raise NotEnrolledError("this agent has no device credentials: run `pos-agent enrol` first")
        raw = await self._call(
            "POST", "/v1/devices/sessions",
            {"device": credentials.device, "device_secret": credentials.device_secret},
            key=f"session-{uuid.uuid4()}", auth=False, timeout_s=timeout_s,
        )
        self._token = _Token(_str(raw, "access_token"), self._clock() + _int(raw, "expires_in"))
        log.info("device token renewed", extra={"device": credentials.device})

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        key: str | None = None,
        auth: bool = True,
        params: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        session = self._session
        if session is None:
            raise RuntimeError("GatewayClient used outside `async with`")
        assert (method == "POST") == (key is not None), "every POST needs the caller's idempotency key"
        maybe_executed = False
        token_renewed = False
        last: tuple[Attempt, str] = (Attempt.CONNECT_FAILED, "no attempt")
        deadline = None if timeout_s is None else self._clock() + max(timeout_s, ATTEMPT_TIMEOUT_MIN_S)
        for attempt_index in range(self._policy.attempt_count_max):
            headers = {"Accept": "application/json"}
            if key is not None:
                headers["Idempotency-Key"] = key
            if auth:
                headers["Authorization"] = f"Bearer {await self._bearer(self._left_s(deadline))}"
            started = self._clock()
            attempt_timeout_s = self._settings.request_timeout_s
            if deadline is not None:
                attempt_timeout_s = min(attempt_timeout_s, max(deadline - started, ATTEMPT_TIMEOUT_MIN_S))
            attempt, detail, payload = await self._attempt(session, method, path, body, headers, params,
                                                           auth, attempt_timeout_s)
            log.debug("%s %s -> %s (%s) in %.1f ms", method, path, attempt.name, detail,
                      (self._clock() - started) * 1000)
            if attempt is Attempt.OK:
                assert payload is not None
                return payload
            if attempt is Attempt.DEFINITE:
                raise self._noted(_rejection(detail, payload, token_sent=auth))
            if attempt in (Attempt.NO_ANSWER, Attempt.SERVER_ERROR):
                maybe_executed = True
            last = (attempt, detail)
            if not next_step(attempt, attempt_index, self._policy, token_renewed=token_renewed):
                break
            if attempt is Attempt.TOKEN_EXPIRED:
                token_renewed = True
                async with self._token_lock:
                    await self._renew_locked(self._left_s(deadline))
                continue
            delay_s = backoff_delay_s(attempt_index, self._policy, self._rng)
            if deadline is not None and self._clock() + delay_s + ATTEMPT_TIMEOUT_MIN_S >= deadline:
                break  # no time left for another attempt within the caller's bound
            await asyncio.sleep(delay_s)
        attempt, detail = last
        if attempt is Attempt.TOKEN_EXPIRED:
            raise self._noted(_rejection(detail, None, token_sent=auth))
        if maybe_executed:
            raise OutcomeUnknown(f"{method} {path}: outcome unknown after retries ({detail})")
        if attempt is Attempt.BUSY:
            raise OutcomeUnknown(f"{method} {path}: still busy after retries ({detail})")
        raise GatewayUnreachable(f"{method} {path}: gateway unreachable ({detail})")

    def _left_s(self, deadline: float | None) -> float | None:
        return None if deadline is None else max(deadline - self._clock(), ATTEMPT_TIMEOUT_MIN_S)

    def _noted(self, rejection: GatewayRejected) -> GatewayRejected:
        if isinstance(rejection, DeviceAuthError):
            self.device_refused = True
        return rejection

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        headers: dict[str, str],
        params: dict[str, str] | None,
        token_sent: bool,
        timeout_s: float,
    ) -> tuple[Attempt, str, dict[str, Any] | None]:
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(self._settings.connect_timeout_s, timeout_s))
        try:
            async with session.request(method, self._base_url + path, json=body, headers=headers,
                                       params=params, timeout=timeout) as response:
                raw_body = await response.content.read(RESPONSE_BODY_MAX_BYTES + 1)
                status = response.status
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            return Attempt.CONNECT_FAILED, type(exc).__name__, None
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Attempt.NO_ANSWER, type(exc).__name__, None
        if len(raw_body) > RESPONSE_BODY_MAX_BYTES:
            return Attempt.NO_ANSWER, "response too large", None
        payload = _json_object(raw_body)
        error = payload.get("error") if payload is not None else None
        error_code = error.get("code") if isinstance(error, dict) else None
        attempt = classify_status(status, error_code if isinstance(error_code, str) else None, token_sent=token_sent)
        if attempt is Attempt.OK and payload is None:
            raise GatewayProtocolError(f"{method} {path}: {status} without a JSON object")
        return attempt, f"{status} {error_code or ''}".strip(), payload


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _rejection(detail: str, payload: dict[str, Any] | None, *, token_sent: bool) -> GatewayRejected:
    status_text, _, _ = detail.partition(" ")
    status = int(status_text) if status_text.isdigit() else 0
    error = payload.get("error") if payload else None
    error = error if isinstance(error, dict) else {}
    code = str(error.get("code") or "unknown")
    message = str(error.get("message") or detail)
    # Without a token, a 401 refuses what was sent (an enrolment code), not this device.
    if status in (401, 403) and ((status == 401 and token_sent) or code in DEVICE_AUTH_CODES):
        return DeviceAuthError(status, code, message, error)
    if status == 402 or code in DECLINE_CODES:
        return Declined(status, code, message, error)
    return GatewayRejected(status, code, message, error)
