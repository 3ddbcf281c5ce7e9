"""JWTs for operators and wallet holders (devices come later).

Security options are explicit at every call: HS256 only, audience and issuer checked,
``exp``/``iat``/``iss``/``aud``/``sub`` required, key chosen by the ``kid`` header from the key
ring (rotation: add a key, switch the active kid, later drop the old key).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.errors import Unauthenticated

ALGORITHM = "HS256"


@dataclass(frozen=True)
class TokenIssuer:
    issuer: str
    keys: dict[str, str]
    active_kid: str

    def issue(self, subject: uuid.UUID, audience: str, ttl_s: int, now_s: int | None = None, **claims: Any) -> str:
        now_s = int(time.time()) if now_s is None else now_s
        payload = {"iss": self.issuer, "aud": audience, "sub": str(subject), "iat": now_s, "exp": now_s + ttl_s, **claims}
        return jwt.encode(payload, self.keys[self.active_kid], algorithm=ALGORITHM, headers={"kid": self.active_kid})

    @staticmethod
    def unverified_audience(token: str) -> str | None:
        """Which verifier to route a token to; nothing is trusted until ``verify`` passes."""
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
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired", code="token_expired") from None
        except jwt.PyJWTError:
            raise Unauthenticated("the token is not valid", code="invalid_token") from None
        return claims
