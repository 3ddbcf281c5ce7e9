"""Webhooks, the pure part: secrets, signatures, the retry schedule and the URL policy.

Invariants:
- a secret is ``whsec_`` + base64 of 24-64 random bytes; the bytes are drawn by the caller;
- the Standard Webhooks signature is ``v1,<base64 HMAC-SHA256(decoded key, "{id}.{ts}.{body}")>``
  and the Stripe-format one ``v1=<hex HMAC-SHA256(secret text, "{ts}.{body}")>``: one endpoint
  secret serves both, and during a rotation every live secret signs (several signatures);
- a retry waits a uniformly random time in [0, min(cap, base * 2**n)] ("full jitter"), so
  receivers that come back are not hit by every sender at once;
- a URL is deliverable only if its scheme and every address it resolves to pass ``address_allowed``:
  in live mode https to public addresses only; test mode adds http and loopback. Private, link-local
  (cloud metadata 169.254.169.254), ULA, multicast, reserved and unspecified addresses never pass.
No I/O, clock or randomness here: times and random numbers are passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

SECRET_PREFIX = "whsec_"
SECRET_BYTES_MIN = 24
SECRET_BYTES_MAX = 64
URL_LENGTH_MAX = 2048
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(ValueError):
    """The URL may not receive webhooks; the message says why (never echoing secrets)."""


def make_secret(key: bytes) -> str:
    if not SECRET_BYTES_MIN <= len(key) <= SECRET_BYTES_MAX:
        raise ValueError(f"a webhook key has {SECRET_BYTES_MIN}-{SECRET_BYTES_MAX} bytes")
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of the Standard Webhooks scheme: the base64-decoded part after the prefix."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("not a webhook secret")
    try:
        return base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except binascii.Error:
        raise ValueError("not a webhook secret") from None


def standard_signature(secret: str, msg_id: str, timestamp_s: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp_s}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def stripe_signature(secret: str, timestamp_s: int, body: bytes) -> str:
    signed = f"{timestamp_s}.".encode() + body
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def signed_headers(msg_id: str, timestamp_s: int, body: bytes, secrets: Sequence[str]) -> dict[str, str]:
    """Every header a delivery carries: Standard Webhooks' three and ``Wallet-Signature`` (Stripe's format)."""
    if not secrets:
        raise ValueError("at least one secret signs")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp_s),
        "webhook-signature": " ".join(standard_signature(s, msg_id, timestamp_s, body) for s in secrets),
        "Wallet-Signature": ",".join([f"t={timestamp_s}"]
                                     + [f"v1={stripe_signature(s, timestamp_s, body)}" for s in secrets]),
    }


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float
    cap_s: float
    window_s: float  # retries stop once the first attempt is this old: the delivery is then failed

    def __post_init__(self) -> None:
        if not (0 < self.base_s <= self.cap_s) or self.window_s <= 0:
            raise ValueError("backoff needs 0 < base_s <= cap_s and a positive window_s")

    def delay_s(self, failures: int, unit_random: float) -> float:
        """Wait after the ``failures``-th failed attempt (1 = the first); ``unit_random`` in [0, 1)."""
        exponent = min(max(failures - 1, 0), 62)
        return unit_random * min(self.cap_s, self.base_s * 2.0**exponent)

    def gives_up(self, age_s: float) -> bool:
        return age_s >= self.window_s


def address_allowed(address: Address, *, live: bool) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return not live
    # is_global is False for private, link-local (metadata), ULA, shared (CGNAT), reserved and unspecified space.
    return address.is_global and not address.is_multicast


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str
    host: str
    port: int


def check_url(url: str, *, live: bool) -> Target:
    """The URL's target if its form is acceptable; a literal address is checked here, a name at delivery."""
    if len(url) > URL_LENGTH_MAX:
        raise UrlRefused(f"the URL is longer than {URL_LENGTH_MAX} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlRefused("the URL is malformed") from None
    allowed = ("https",) if live else ("https", "http")
    if parts.scheme not in allowed:
        raise UrlRefused("live endpoints use https" if live else "the URL is http or https")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("the URL may not carry credentials")
    host = parts.hostname
    if not host:
        raise UrlRefused("the URL names no host")
    if parts.fragment:
        raise UrlRefused("the URL may not have a fragment")
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None and not address_allowed(literal, live=live):
        raise UrlRefused("the URL's address is not public")
    if literal is None and live and (host == "localhost" or host.endswith(".localhost")):
        raise UrlRefused("the URL's address is not public")
    return Target(parts.scheme, host, port or (443 if parts.scheme == "https" else 80))


def matches(enabled_events: Sequence[str], event_type: str) -> bool:
    return "*" in enabled_events or event_type in enabled_events


# Every event type a merchant can subscribe to ("*" means all, those added later included).
EVENT_TYPES = frozenset({
    "payment.created", "payment.authorized", "payment.requires_action", "payment.succeeded", "payment.canceled",
    "payment.expired", "payment.failed", "refund.succeeded", "merchant.created", "merchant.suspended",
    "merchant.reactivated", "webhook_endpoint.disabled", "settlement_batch.closed", "payout.paid",
})
