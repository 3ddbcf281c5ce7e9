"""The one error hierarchy of the POS agent.

Every failure a caller can act on is an ``AgentError`` subclass with a stable ``code``; callers
catch by class, never by message text. The gateway errors are split by what the caller may do:

- ``GatewayUnreachable``: the request never reached the gateway (connection refused, connect
  timeout, DNS). Nothing happened there; a tap may be approved offline.
- ``OutcomeUnknown``: the request may have been executed (read timeout, connection dropped after
  sending, 5xx after every retry). Query the status, reverse if still unknown; never charge again.
- ``GatewayRejected``: a definite refusal (a 4xx other than 409 ``idempotency_key_in_use``);
  ``Declined`` is its money-rule subclass (402, and the pay-code 404/409 refusals).
- ``DeviceAuthError``: the device credentials are refused (revoked device, bad secret).
"""

from __future__ import annotations

from typing import Any, ClassVar


class AgentError(Exception):
    code: ClassVar[str] = "agent_error"


class ConfigError(AgentError, ValueError):
    """The configuration file is missing, malformed, or names an impossible value."""

    code = "config_invalid"


class NotEnrolledError(AgentError):
    """No credentials file: the agent must be enrolled (``pos-agent enrol``) first."""

    code = "not_enrolled"


class JournalError(AgentError):
    """The journal on disk cannot be opened or written; the agent must not take payments."""

    code = "journal_failed"


class GatewayError(AgentError):
    """Base class of every failure talking to the gateway."""

    code = "gateway_error"


class GatewayUnreachable(GatewayError, ConnectionError):
    code = "gateway_unreachable"


class OutcomeUnknown(GatewayError, TimeoutError):
    code = "outcome_unknown"


class GatewayRejected(GatewayError):
    """A definite 4xx answer. ``error_code`` is the gateway's stable ``error.code``."""

    code = "gateway_rejected"

    def __init__(self, status: int, error_code: str, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {error_code}: {message}")
        self.status = status
        self.error_code = error_code
        self.body = body or {}


class Declined(GatewayRejected):
    """The money rules refused the payment (insufficient funds, cryptogram invalid, ...)."""

    code = "declined"


class DeviceAuthError(GatewayRejected):
    """401/403 on the device's own credentials: revoked, unknown, or a wrong secret."""

    code = "device_auth_failed"


class GatewayProtocolError(GatewayError):
    """The gateway answered something the contract does not allow (bad JSON, missing field)."""

    code = "gateway_protocol_error"
