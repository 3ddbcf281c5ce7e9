"""The one error hierarchy of the gateway.

Every error a client can cause is a ``GatewayError`` subclass carrying its HTTP status, an error
``type`` family, a stable machine-readable ``code`` and the offending ``param``. Handlers never
build error bodies themselves: the error middleware renders these. Anything else is a bug and
becomes a 500 with no detail.

Every 429 and 503 tells the client when to come back: ``retry_after_s`` (whole seconds, at least
1), sent as the ``Retry-After`` header.
"""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    default_code: ClassVar[str] = "internal_error"
    default_retry_after_s: ClassVar[int | None] = None

    def __init__(
        self, message: str, *, code: str | None = None, param: str | None = None, retry_after_s: int | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        self.retry_after_s = max(1, retry_after_s) if retry_after_s is not None else self.default_retry_after_s
        self.extra = extra

    def body(self, request_id: str | None) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "code": self.code, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        error.update(self.extra)
        error["request_id"] = request_id
        return {"error": error}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    default_code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    status = 413
    default_code = "body_too_large"


class MalformedStatement(InvalidRequest):
    """A bank statement refused as a whole; ``param`` names the element (XPath-like) or ``line N``."""

    status = 422
    default_code = "malformed_statement"


class Unauthenticated(GatewayError):
    status = 401
    type = "authentication_error"
    default_code = "unauthenticated"


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"
    default_code = "forbidden"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    default_code = "resource_missing"


class UnsupportedMediaType(InvalidRequest):
    status = 415
    default_code = "unsupported_media_type"


class MethodNotAllowed(InvalidRequest):
    status = 405
    default_code = "method_not_allowed"


class Declined(GatewayError):
    """Valid request, refused by the money rules (HTTP 402)."""

    status = 402
    type = "card_error"
    default_code = "payment_declined"


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    default_code = "conflict"


class InvalidState(Conflict):
    """A state transition the object's state machine refuses."""

    default_code = "invalid_state_transition"


class IdempotencyError(GatewayError):
    status = 422
    type = "idempotency_error"
    default_code = "idempotency_key_reused"


class IdempotencyInUse(Conflict):
    type = "idempotency_error"
    default_code = "idempotency_key_in_use"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limited"
    default_retry_after_s = 1


class Unavailable(GatewayError):
    """A dependency failed in a way the client may retry with the same idempotency key."""

    status = 503
    type = "api_error"
    default_code = "service_unavailable"
    default_retry_after_s = 1
