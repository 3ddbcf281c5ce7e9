"""An async client for merchants of the wallet gateway.

    from wallet_client import WalletClient, CardError

    async with WalletClient("sk_test_...", base_url="https://pay.example.com") as wallet:
        payment = await wallet.payments.create(amount=1050, currency="CNY")
        async for event in wallet.events.iterate(type="payment.succeeded"):
            ...

Everything public is importable from this package; the modules starting with ``_`` are private.
It needs only aiohttp and the standard library (none of the gateway's own dependencies).
Every error is a ``WalletError``; see ``_errors`` for the hierarchy. ``verify_webhook`` checks
a delivery's signature in the Standard Webhooks or the Stripe format.
"""

from wallet_client._client import WalletClient, __version__
from wallet_client._errors import (
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
    ServiceUnavailableError,
    SignatureVerificationError,
    UnsupportedMediaTypeError,
    WalletError,
)
from wallet_client._pagination import Page
from wallet_client._retry import RetryPolicy
from wallet_client._webhooks import verify_webhook

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "CardError",
    "ConflictError",
    "IdempotencyError",
    "IdempotencyInUseError",
    "InvalidRequestError",
    "NotFoundError",
    "Page",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryPolicy",
    "ServiceUnavailableError",
    "SignatureVerificationError",
    "UnsupportedMediaTypeError",
    "WalletClient",
    "WalletError",
    "__version__",
    "verify_webhook",
]
