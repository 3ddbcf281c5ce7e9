"""Verification of the gateway's signed webhooks, in either of the two formats it sends.

Standard Webhooks: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature`` (space-separated
``v1,<base64>``), HMAC-SHA256 over ``"{id}.{timestamp}.{body}"`` keyed by the base64-decoded part
of the secret after ``whsec_``. Stripe's format: ``Wallet-Signature: t=<unix>,v1=<hex>[,v1=...]``,
HMAC-SHA256 over ``"{t}.{body}"`` keyed by the secret string's UTF-8 bytes.

Invariants: the raw body bytes are verified before anything parses them; every comparison is
constant-time (``hmac.compare_digest``); a signature counts only if it matches AND its timestamp
is within ``tolerance_s`` of now (both directions); any one of several signatures (a secret
rotation) or several secrets (the receiver's own rotation) is enough; every failure a delivery can
cause is a ``SignatureVerificationError`` (a secret that is not ``whsec_`` + base64 is the
receiver's configuration error: ``ValueError``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from wallet_client._errors import SignatureVerificationError

STRIPE_HEADER = "wallet-signature"
STANDARD_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300
_SIGNATURES_MAX = 16  # a header with more is not a rotation, it is an attempt to make us hash a lot


def verify_webhook(
    body: bytes,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    *,
    now_s: float | None = None,
) -> dict[str, Any]:
    """Verify a webhook delivery and return its event (the parsed JSON body).

    ``body`` is the raw request body, exactly as received; ``headers`` any mapping (aiohttp's
    ``request.headers``, a ``dict``); names are matched case-insensitively. ``secret`` is the
    endpoint's ``whsec_...`` secret, or several (old and new, while rotating). ``now_s`` is for
    tests; it defaults to the clock. Raises ``SignatureVerificationError`` unless a signature in
    either format verifies.
    """
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError("body must be the raw bytes of the request, not a parsed or decoded value")
    if tolerance_s <= 0:
        raise ValueError("tolerance_s must be > 0")
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets or not all(isinstance(s, str) and s for s in secrets):
        raise ValueError("secret must be a non-empty string or a non-empty sequence of them")
    raw = bytes(body)
    lowered = {name.lower(): value for name, value in headers.items()}
    now = time.time() if now_s is None else now_s
    failures: list[SignatureVerificationError] = []
    if any(name in lowered for name in STANDARD_HEADERS):
        try:
            _verify_standard(raw, lowered, secrets, tolerance_s, now)
            return _parse(raw)
        except SignatureVerificationError as exc:
            failures.append(exc)
    if STRIPE_HEADER in lowered:
        try:
            _verify_stripe(raw, lowered[STRIPE_HEADER], secrets, tolerance_s, now)
            return _parse(raw)
        except SignatureVerificationError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]
    raise SignatureVerificationError(
        "no webhook signature headers (webhook-signature or Wallet-Signature)", code="header_missing")


def _verify_standard(raw: bytes, headers: Mapping[str, str], secrets: list[str], tolerance_s: int, now: float) -> None:
    missing = [name for name in STANDARD_HEADERS if not headers.get(name)]
    if missing:
        raise SignatureVerificationError(f"missing header(s): {', '.join(missing)}", code="header_missing")
    msg_id, timestamp, header = headers["webhook-id"], headers["webhook-timestamp"], headers["webhook-signature"]
    ts = _timestamp(timestamp)
    given: list[bytes] = []
    for part in header.split()[:_SIGNATURES_MAX]:
        version, _, value = part.partition(",")
        if version != "v1":
            continue
        try:
            given.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not given:
        raise SignatureVerificationError("webhook-signature has no v1 signature", code="header_malformed")
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + raw
    expected = [hmac.new(_standard_key(s), signed, hashlib.sha256).digest() for s in secrets]
    _require_match(expected, given)
    _require_fresh(ts, tolerance_s, now)


def _verify_stripe(raw: bytes, header: str, secrets: list[str], tolerance_s: int, now: float) -> None:
    timestamps: list[str] = []
    given: list[bytes] = []
    for item in header.split(",")[: 2 * _SIGNATURES_MAX]:
        name, _, value = item.strip().partition("=")
        if name == "t":
            timestamps.append(value)
        elif name == "v1":
            try:
                given.append(bytes.fromhex(value))
            except ValueError:
                continue
    if len(timestamps) != 1 or not given:
        raise SignatureVerificationError("Wallet-Signature needs one t= and at least one v1=", code="header_malformed")
    ts = _timestamp(timestamps[0])
    signed = timestamps[0].encode() + b"." + raw
    expected = [hmac.new(s.encode("utf-8"), signed, hashlib.sha256).digest() for s in secrets]
    _require_match(expected, given)
    _require_fresh(ts, tolerance_s, now)


def _standard_key(secret: str) -> bytes:
    encoded = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    # Unpadded base64 is accepted, as the standardwebhooks libraries accept it.
    encoded = encoded.rstrip("=")
    encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a Standard Webhooks secret is 'whsec_' followed by base64") from exc
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def _require_match(expected: list[bytes], given: list[bytes]) -> None:
    # Every pair is compared (no early exit), so timing says nothing about which one matched.
    matched = False
    for mine in expected:
        for theirs in given:
            matched |= hmac.compare_digest(mine, theirs)
    if not matched:
        raise SignatureVerificationError("no signature matches the secret", code="signature_mismatch")


def _timestamp(value: str) -> int:
    if not value.isdigit() or len(value) > 12:
        raise SignatureVerificationError("the timestamp is not whole Unix seconds", code="header_malformed")
    return int(value)


def _require_fresh(ts: int, tolerance_s: int, now: float) -> None:
    if abs(now - ts) > tolerance_s:
        raise SignatureVerificationError(
            f"the timestamp is more than {tolerance_s} s from now", code="timestamp_outside_tolerance")


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        event = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise SignatureVerificationError("the signed body is not JSON", code="payload_invalid") from exc
    if not isinstance(event, dict):
        raise SignatureVerificationError("the signed body is not a JSON object", code="payload_invalid")
    return event
