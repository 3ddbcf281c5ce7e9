"""JWTs: round trip, expiry, audience/issuer/algorithm pinning, key ids and rotation, required claims."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.auth.tokens import ALGORITHM, TokenIssuer
from gateway.errors import Unauthenticated

ISSUER = "wallet-gateway"
AUDIENCE = "operator"
SUBJECT = uuid.UUID("66666666-6666-4666-8666-666666666666")
# 64 bytes: long enough for HS512 too, so the forged-algorithm test is about the algorithm, not the key length.
OLD_KID, OLD_SECRET = "2026-05", "old-secret-" + "0123456789abcdef" * 3 + "-" * 5
NEW_KID, NEW_SECRET = "2026-11", "new-secret-" + "0123456789abcdef" * 3 + "-" * 5
TTL_S = 900


def issuer(keys: dict[str, str] | None = None, active_kid: str = OLD_KID) -> TokenIssuer:
    return TokenIssuer(ISSUER, {OLD_KID: OLD_SECRET} if keys is None else keys, active_kid)


def now_s() -> int:
    return int(time.time())


def claims(**changes: Any) -> dict[str, Any]:
    """A complete, valid claim set; a change of ``None`` removes the claim."""
    base: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": str(SUBJECT), "iat": now_s(), "exp": now_s() + TTL_S}
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def refusal(verifier: TokenIssuer, token: str, audience: str = AUDIENCE) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token, audience)
    assert caught.value.status == 401
    return caught.value


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_round_trip() -> None:
    token = issuer().issue(SUBJECT, AUDIENCE, TTL_S, role="admin")
    verified = issuer().verify(token, AUDIENCE)
    assert verified["sub"] == str(SUBJECT)
    assert (verified["iss"], verified["aud"], verified["role"]) == (ISSUER, AUDIENCE, "admin")
    assert verified["exp"] - verified["iat"] == TTL_S


def test_issued_token_header_names_algorithm_and_kid() -> None:
    header = jwt.get_unverified_header(issuer().issue(SUBJECT, AUDIENCE, TTL_S))
    assert (header["alg"], header["kid"]) == (ALGORITHM, OLD_KID) == ("HS256", OLD_KID)


def test_expired_token_refused() -> None:
    # Issued an hour ago for 15 minutes: well past the 5 s leeway.
    token = issuer().issue(SUBJECT, AUDIENCE, TTL_S, now_s=now_s() - 3600)
    assert refusal(issuer(), token).code == "token_expired"


def test_token_within_the_leeway_still_verifies() -> None:
    token = issuer().issue(SUBJECT, AUDIENCE, 60, now_s=now_s() - 62)
    assert issuer().verify(token, AUDIENCE)["sub"] == str(SUBJECT)


def test_wrong_audience_refused() -> None:
    token = issuer().issue(SUBJECT, "wallet", TTL_S)
    assert refusal(issuer(), token, audience=AUDIENCE).code == "invalid_token"


def test_wrong_issuer_refused() -> None:
    token = TokenIssuer("someone-else", {OLD_KID: OLD_SECRET}, OLD_KID).issue(SUBJECT, AUDIENCE, TTL_S)
    assert refusal(issuer(), token).code == "invalid_token"


def test_alg_none_refused() -> None:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": OLD_KID}).encode())
    body = b64url(json.dumps(claims()).encode())
    for token in (f"{header}.{body}.", f"{header}.{body}"):
        assert refusal(issuer(), token).code == "invalid_token"


def test_alg_none_from_pyjwt_refused() -> None:
    token = jwt.encode(claims(), None, algorithm="none", headers={"kid": OLD_KID})  # type: ignore[arg-type]
    assert refusal(issuer(), token).code == "invalid_token"


def test_hs512_with_the_right_secret_refused() -> None:
    # Only HS256 is allowed, even when the signature itself is valid.
    token = jwt.encode(claims(), OLD_SECRET, algorithm="HS512", headers={"kid": OLD_KID})
    assert refusal(issuer(), token).code == "invalid_token"


def test_rs256_forged_token_refused() -> None:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), private_key, algorithm="RS256", headers={"kid": OLD_KID})
    assert refusal(issuer(), token).code == "invalid_token"


def test_token_signed_with_another_secret_refused() -> None:
    token = jwt.encode(claims(), "attacker-secret-0123456789abcdef-01", algorithm="HS256", headers={"kid": OLD_KID})
    assert refusal(issuer(), token).code == "invalid_token"


def test_tampered_claims_refused() -> None:
    header, _, signature = issuer().issue(SUBJECT, AUDIENCE, TTL_S).split(".")
    forged_body = b64url(json.dumps(claims(sub=str(uuid.uuid4()))).encode())
    assert refusal(issuer(), f"{header}.{forged_body}.{signature}").code == "invalid_token"


@pytest.mark.parametrize("token", ["", "not-a-token", "a.b.c", "a.b", "sk_test_abcdef"])
def test_garbage_refused(token: str) -> None:
    assert refusal(issuer(), token).code == "invalid_token"


def test_unknown_kid_refused() -> None:
    token = TokenIssuer(ISSUER, {"stranger": OLD_SECRET}, "stranger").issue(SUBJECT, AUDIENCE, TTL_S)
    assert refusal(issuer(), token).code == "invalid_token"


def test_missing_kid_refused() -> None:
    token = jwt.encode(claims(), OLD_SECRET, algorithm="HS256")
    assert "kid" not in jwt.get_unverified_header(token)
    assert refusal(issuer(), token).code == "invalid_token"


def test_kid_must_select_the_key_that_signed() -> None:
    # Signed with the new secret but labelled with the old kid: checked against the old secret, refused.
    ring = issuer({OLD_KID: OLD_SECRET, NEW_KID: NEW_SECRET})
    token = jwt.encode(claims(), NEW_SECRET, algorithm="HS256", headers={"kid": OLD_KID})
    assert refusal(ring, token).code == "invalid_token"


@pytest.mark.parametrize("missing", ["exp", "iat", "iss", "aud", "sub"])
def test_missing_required_claim_refused(missing: str) -> None:
    token = jwt.encode(claims(**{missing: None}), OLD_SECRET, algorithm="HS256", headers={"kid": OLD_KID})
    assert missing not in jwt.decode(token, options={"verify_signature": False})
    assert refusal(issuer(), token).code == "invalid_token"


def test_key_rotation() -> None:
    old_token = issuer().issue(SUBJECT, AUDIENCE, TTL_S)

    # Step 1: the new key joins the ring and becomes active; tokens of the old key still verify.
    rotated = issuer({OLD_KID: OLD_SECRET, NEW_KID: NEW_SECRET}, active_kid=NEW_KID)
    new_token = rotated.issue(SUBJECT, AUDIENCE, TTL_S)
    assert jwt.get_unverified_header(new_token)["kid"] == NEW_KID
    assert rotated.verify(old_token, AUDIENCE)["sub"] == str(SUBJECT)
    assert rotated.verify(new_token, AUDIENCE)["sub"] == str(SUBJECT)

    # Step 2: the old key leaves the ring; its tokens stop verifying, the new ones still do.
    retired = issuer({NEW_KID: NEW_SECRET}, active_kid=NEW_KID)
    assert refusal(retired, old_token).code == "invalid_token"
    assert retired.verify(new_token, AUDIENCE)["sub"] == str(SUBJECT)


def test_unverified_audience_routes_without_trusting() -> None:
    assert issuer().unverified_audience(issuer().issue(SUBJECT, "wallet", TTL_S)) == "wallet"
    forged = jwt.encode(claims(aud="wallet"), "attacker-secret-0123456789abcdef-01", algorithm="HS256")
    assert issuer().unverified_audience(forged) == "wallet"
    assert issuer().unverified_audience(jwt.encode(claims(aud=["a", "b"]), OLD_SECRET, algorithm="HS256")) is None


def test_unverified_audience_of_garbage_is_unauthenticated() -> None:
    with pytest.raises(Unauthenticated) as caught:
        issuer().unverified_audience("not-a-token")
    assert caught.value.code == "invalid_token"


def test_a_verified_token_is_remembered_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = issuer()
    token = verifier.issue(SUBJECT, AUDIENCE, 60)
    first = verifier.verify(token, AUDIENCE)

    def no_decode(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("decoded again")

    monkeypatch.setattr(jwt, "decode", no_decode)
    monkeypatch.setattr(jwt, "get_unverified_header", no_decode)
    assert verifier.unverified_audience(token) == AUDIENCE
    again = verifier.verify(token, AUDIENCE)
    assert again == first
    again["sub"] = "changed by a caller"
    assert verifier.verify(token, AUDIENCE)["sub"] == str(SUBJECT)  # callers get copies
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 60 + 6)  # past exp and its 5 s of leeway
    assert refusal(verifier, token).code == "token_expired"


def test_a_remembered_token_is_no_credential_for_another_audience_or_another_text() -> None:
    verifier = issuer()
    token = verifier.issue(SUBJECT, AUDIENCE, TTL_S)
    verifier.verify(token, AUDIENCE)
    assert refusal(verifier, token, "wallet").code == "invalid_token"
    head, payload, signature = token.split(".")
    forged = ".".join((head, b64url(json.dumps(claims(sub=str(uuid.uuid4()))).encode()), signature))
    assert refusal(verifier, forged).code == "invalid_token"
    assert refusal(verifier, token[:-2] + ("AA" if not token.endswith("AA") else "BB")).code == "invalid_token"
