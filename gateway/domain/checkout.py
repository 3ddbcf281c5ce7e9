"""Hosted checkout: the client secret, the checkout and redirect URLs, and the payer's language.

Invariants:
- The client secret of a payment is HMAC-SHA256 of its id under a server key, with a label of its
  own: it cannot be computed from the payment id without the key, is never stored, and is compared
  in constant time. The same key signs nothing else under this label.
- A redirect URL (``return_url``, ``cancel_url``) is absolute ``http`` or ``https`` (``https`` only
  in live mode), has a host, carries no user name or password, and is at most
  ``REDIRECT_URL_LENGTH_MAX`` characters; anything else is refused naming the parameter.
- The payer is sent back to ``return_url`` with the payment id added as the ``payment`` query
  parameter; the merchant's own query and fragment are kept.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from gateway.errors import InvalidRequest

REDIRECT_URL_LENGTH_MAX = 2048
SECRET_PREFIX = "cs_"
_SECRET_LABEL = b"wallet-gateway checkout client secret v1\x00"
_SECRET_BYTES = 24  # 192 bits of the MAC: far beyond guessing, 32 characters of base64url
LANGUAGES = ("en", "zh")
DEFAULT_LANGUAGE = "en"
ACCEPT_LANGUAGE_LENGTH_MAX = 512  # a header longer than any real browser's is read no further
_OPEN = "requires_payment_method"
PAID = frozenset({"succeeded", "requires_capture"})  # the payer is done; capture is the merchant's business
CLOSED = frozenset({"expired", "canceled"})


def client_secret(key: str, payment_id: uuid.UUID) -> str:
    mac = hmac.new(key.encode(), _SECRET_LABEL + payment_id.bytes, hashlib.sha256).digest()
    return SECRET_PREFIX + base64.urlsafe_b64encode(mac[:_SECRET_BYTES]).decode().rstrip("=")


def secret_matches(key: str, payment_id: uuid.UUID, given: str) -> bool:
    return hmac.compare_digest(client_secret(key, payment_id).encode(), given.encode())


def checkout_url(public_url: str, key: str, payment_id: uuid.UUID, payment_text_id: str) -> str:
    return f"{public_url.rstrip('/')}/checkout/{payment_text_id}?secret={client_secret(key, payment_id)}"


def redirect_url(url: str | None, param: str, *, live: bool) -> str | None:
    """``url`` checked as a place to send the payer's browser, or ``InvalidRequest`` naming ``param``."""
    if url is None:
        return None
    if len(url) > REDIRECT_URL_LENGTH_MAX:
        raise InvalidRequest(f"{param} is longer than {REDIRECT_URL_LENGTH_MAX} characters", code="url_too_long",
                             param=param)
    if not url.isprintable() or any(c.isspace() for c in url):
        raise InvalidRequest(f"{param} may not contain spaces or control characters", code="invalid_url", param=param)
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  (a port out of range raises here)
    except ValueError:
        raise InvalidRequest(f"{param} is not a valid URL", code="invalid_url", param=param) from None
    allowed = ("https",) if live else ("http", "https")
    if parts.scheme not in allowed:
        schemes = " or ".join(allowed)
        raise InvalidRequest(f"{param} must be an absolute {schemes} URL", code="invalid_url_scheme", param=param)
    if not host:
        raise InvalidRequest(f"{param} must name a host", code="invalid_url", param=param)
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest(f"{param} may not carry a user name or password", code="invalid_url", param=param)
    return url


def return_with_payment(return_url: str, payment_text_id: str) -> str:
    parts = urlsplit(return_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "payment"]
    query.append(("payment", payment_text_id))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def payer_status(status: str, expires_at: datetime, now: datetime) -> str:
    """The status the payer sees: an open payment past its expiry is expired, worker or not."""
    return "expired" if status == _OPEN and expires_at <= now else status


@dataclass(frozen=True, slots=True)
class Language:
    code: str  # one of LANGUAGES
    tag: str  # the BCP 47 tag for the page's ``lang`` attribute

    @classmethod
    def of(cls, code: str) -> Language:
        return cls(code, "zh-CN" if code == "zh" else "en")


def pick_language(chosen: str | None, accept_language: str | None) -> Language:
    """``?lang=`` when it names a language of the page, else the best of ``Accept-Language``, else English."""
    if chosen in LANGUAGES:
        return Language.of(chosen)
    best, best_q = DEFAULT_LANGUAGE, 0.0
    for item in (accept_language or "")[:ACCEPT_LANGUAGE_LENGTH_MAX].split(","):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        name, _, value = params.strip().partition("=")
        if name.strip() == "q":
            try:
                q = float(value)
            except ValueError:
                continue
        primary = tag.strip().lower().split("-", 1)[0]
        # Ties go to the earlier entry, as the header lists them in the user's order.
        if primary in LANGUAGES and 0 < q <= 1 and q > best_q:
            best, best_q = primary, q
    return Language.of(best)
