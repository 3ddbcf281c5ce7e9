"""The one exception hierarchy of the client.

Every error the client raises is a ``WalletError``. An error the gateway answered carries the
fields of its body ``{"error": {"type", "code", "message", "param", "request_id"}}`` and the HTTP
status; the class is chosen by the status first (so a new ``code`` on the server never changes
which ``except`` catches it) and refined by the code only where a client acts differently on it
(``idempotency_key_in_use`` is retried, other 409s are not).

Errors that never reached an HTTP answer (refused connection, reset, timeout) are
``APIConnectionError`` with ``http_status`` ``None``. A webhook whose signature does not verify is
``SignatureVerificationError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class WalletError(Exception):
    """Base of every error the client raises.

    Attributes mirror the gateway's error body; those the answer did not carry are ``None``.
    ``attempt_count`` is how many HTTP attempts the client made for the call before giving up.
    """

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.type = type
        self.code = code
        self.param = param
        self.request_id = request_id
        self.retry_after_s = retry_after_s
        self.body = body
        self.attempt_count = 1

    def __str__(self) -> str:
        details = [f"{name}={value}" for name, value in (
            ("http_status", self.http_status), ("code", self.code), ("param", self.param),
            ("request_id", self.request_id),
        ) if value is not None]
        return f"{self.message} ({', '.join(details)})" if details else self.message


class APIConnectionError(WalletError):
    """No HTTP answer: the connection was refused, reset, or the answer was cut off."""


class APITimeoutError(APIConnectionError):
    """No complete HTTP answer within the per-attempt timeout."""


class InvalidRequestError(WalletError):
    """400 (and 405, 413, 415): the request is wrong; ``param`` names the offending field."""


class PayloadTooLargeError(InvalidRequestError):
    """413: the request body is over the gateway's limit."""


class UnsupportedMediaTypeError(InvalidRequestError):
    """415: the body is not ``application/json``."""


class AuthenticationError(WalletError):
    """401: missing, unknown or revoked API key."""


class CardError(WalletError):
    """402: a valid request refused by the money rules (``code`` says which, e.g. ``insufficient_funds``)."""


class PermissionDeniedError(WalletError):
    """403: the key is valid but may not do this."""


class NotFoundError(WalletError):
    """404: no such object (also for another merchant's objects)."""


class ConflictError(WalletError):
    """409: the object's state refuses the operation (e.g. capturing a cancelled payment)."""


class IdempotencyInUseError(ConflictError):
    """409 ``idempotency_key_in_use``: a request with this key is still running; retried automatically."""


class IdempotencyError(WalletError):
    """422: the idempotency key was used before with different parameters."""


class RateLimitError(WalletError):
    """429: too many requests; ``retry_after_s`` says when to come back. Retried automatically."""


class APIError(WalletError):
    """5xx, or an answer that is not the gateway's JSON; retried automatically."""


class ServiceUnavailableError(APIError):
    """503: a dependency of the gateway failed; safe to retry with the same idempotency key."""


class SignatureVerificationError(WalletError):
    """A webhook whose headers, signature or timestamp do not verify; answer it with a 400.

    ``code`` is one of ``header_missing``, ``header_malformed``, ``signature_mismatch``,
    ``timestamp_outside_tolerance``, ``payload_invalid``.
    """


_BY_STATUS: dict[int, type[WalletError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    402: CardError,
    403: PermissionDeniedError,
    404: NotFoundError,
    405: InvalidRequestError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: IdempotencyError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_class(http_status: int, code: str | None) -> type[WalletError]:
    """The class for an error answer: by status, refined by code where the client's reaction differs."""
    if http_status == 409 and code == "idempotency_key_in_use":
        return IdempotencyInUseError
    found = _BY_STATUS.get(http_status)
    if found is not None:
        return found
    return InvalidRequestError if 400 <= http_status < 500 else APIError
