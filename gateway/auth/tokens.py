"""JWTs for operators and wallet holders (devices come later).

Security options are explicit at every call: HS256 only, audience and issuer checked,
``exp``/``iat``/``iss``/``aud``/``sub`` required, key chosen by the ``kid`` header from the key
ring (rotation: add a key, switch the active kid, later drop the old key).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt

from gateway.errors import Unauthenticated

ALGORITHM = "HS256"
LEEWAY_S = 5
VERIFIED_MAX = 10_000  # tokens remembered as verified per process; the memory is emptied when it is full


@dataclass(frozen=True, slots=True)
class _Verified:
    audience: str
    claims: dict[str, Any]
    expires_s: float  # exp + leeway: past it the token is refused as expired, as PyJWT would


@dataclass(frozen=True)
class TokenIssuer:
    """Issues and verifies tokens. A token that verified is remembered (by its whole text, so by its
    signature too) until it expires: its next use skips the three decodes and the HMAC. Only expiry
    changes a verified token's answer (``iat``/``nbf`` only recede into the past; the key ring is fixed
    for the process's life), and ``exp`` is checked on every use."""

    issuer: str
    keys: dict[str, str]
    active_kid: str
    _verified: dict[str, _Verified] = field(default_factory=dict, compare=False, repr=False)

    def issue(self, subject: uuid.UUID, audience: str, ttl_s: int, now_s: int | None = None, **claims: Any) -> str:
        now_s = int(time.time()) if now_s is None else now_s
        payload = {"iss": self.issuer, "aud": audience, "sub": str(subject), "iat": now_s, "exp": now_s + ttl_s, **claims}
        return jwt.encode(payload, self.keys[self.active_kid], algorithm=ALGORITHM, headers={"kid": self.active_kid})

    def unverified_audience(self, token: str) -> str | None:
        """Which verifier to route a token to; nothing is trusted until ``verify`` passes."""
        known = self._verified.get(token)
        if known is not None:
            return known.audience
        try:
            audience = jwt.decode(token, options={"verify_signature": False}).get("aud")
        except jwt.PyJWTError:
            raise Unauthenticated("the credential is neither an API key nor a token", code="invalid_token") from None
        return audience if isinstance(audience, str) else None

    @staticmethod
    def uuid_claim(claims: dict[str, Any], name: str) -> uuid.UUID:
        """A claim that names an object: a correctly signed token whose claim is not a UUID is refused."""
        value = claims.get(name)
        if isinstance(value, str):
            try:
                return uuid.UUID(value)
            except ValueError:
                pass
        raise Unauthenticated("the token is not valid", code="invalid_token")

    def verify(self, token: str, audience: str) -> dict[str, Any]:
        known = self._verified.get(token)
        if known is not None and known.audience == audience:
            if time.time() > known.expires_s:
                self._verified.pop(token, None)
                raise Unauthenticated("the token has expired", code="token_expired")
            return dict(known.claims)
        claims = self._verify(token, audience)
        if len(self._verified) >= VERIFIED_MAX:
            self._verified.clear()
        self._verified[token] = _Verified(audience, dict(claims), float(claims["exp"]) + LEEWAY_S)
        return claims

    def _verify(self, token: str, audience: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            key = self.keys.get(str(header.get("kid")))
            if key is None:
                raise Unauthenticated("unknown token key", code="invalid_token")
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
                leeway=LEEWAY_S,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired", code="token_expired") from None
        except jwt.PyJWTError:
            raise Unauthenticated("the token is not valid", code="invalid_token") from None
        return claims
