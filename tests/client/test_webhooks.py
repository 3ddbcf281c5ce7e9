"""verify_webhook against signatures made by others: the standardwebhooks library signs, and the
Stripe-format header built here by Stripe's documented scheme is proven right by ``stripe`` itself."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from datetime import datetime, timezone

import pytest
import standardwebhooks
import stripe
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from wallet_client import SignatureVerificationError, WalletError, verify_webhook

EVENT = {"id": "evt_1", "object": "event", "type": "payment.succeeded", "created": 1_700_000_000,
         "data": {"object": {"id": "pay_1", "amount": 1050, "currency": "CNY", "note": "面条"}}}
BODY = json.dumps(EVENT, ensure_ascii=False).encode()


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def standard_headers(secret: str, body: bytes = BODY, ts: int | None = None, msg_id: str = "msg_1") -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    signature = standardwebhooks.Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=timezone.utc),
                                                      body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def stripe_v1(secret: str, body: bytes, ts: int) -> str:
    # Stripe's documented scheme: HMAC-SHA256 keyed by the endpoint secret string over "{t}.{payload}", hex.
    return hmac.new(secret.encode("utf-8"), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()


def stripe_header(secret: str, body: bytes = BODY, ts: int | None = None) -> str:
    ts = int(time.time()) if ts is None else ts
    return f"t={ts},v1={stripe_v1(secret, body, ts)}"


def rejected(body: bytes, headers: dict[str, str], secret: str | list[str], code: str, **kw: int) -> None:
    with pytest.raises(SignatureVerificationError) as caught:
        verify_webhook(body, headers, secret, **kw)
    assert caught.value.code == code
    assert isinstance(caught.value, WalletError)


def test_standard_webhooks_signed_by_the_library_verifies() -> None:
    secret = new_secret()
    headers = standard_headers(secret)
    assert verify_webhook(BODY, headers, secret) == EVENT
    # and the library agrees with itself on these headers (the fixture is what a sender sends)
    assert standardwebhooks.Webhook(secret).verify(BODY, headers) == EVENT


def test_stripe_format_verifies_and_stripe_accepts_the_same_header() -> None:
    secret = new_secret()
    header = stripe_header(secret)
    event = stripe.Webhook.construct_event(BODY, header, secret)
    assert event["id"] == "evt_1"
    assert verify_webhook(BODY, {"Wallet-Signature": header}, secret) == EVENT


@pytest.mark.parametrize("fmt", ["standard", "stripe"])
def test_tampered_body_is_refused(fmt: str) -> None:
    secret = new_secret()
    headers = standard_headers(secret) if fmt == "standard" else {"Wallet-Signature": stripe_header(secret)}
    tampered = BODY.replace(b"1050", b"9050")
    rejected(tampered, headers, secret, "signature_mismatch")
    if fmt == "stripe":
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(tampered, headers["Wallet-Signature"], secret)


@pytest.mark.parametrize("fmt", ["standard", "stripe"])
def test_wrong_secret_is_refused(fmt: str) -> None:
    secret, other = new_secret(), new_secret()
    headers = standard_headers(secret) if fmt == "standard" else {"Wallet-Signature": stripe_header(secret)}
    rejected(BODY, headers, other, "signature_mismatch")


@pytest.mark.parametrize("fmt", ["standard", "stripe"])
@pytest.mark.parametrize("skew_s", [-301, 301])
def test_timestamp_outside_tolerance_is_refused(fmt: str, skew_s: int) -> None:
    secret = new_secret()
    ts = int(time.time()) + skew_s
    headers = standard_headers(secret, ts=ts) if fmt == "standard" else {"Wallet-Signature": stripe_header(secret, ts=ts)}
    rejected(BODY, headers, secret, "timestamp_outside_tolerance")
    # a wider tolerance accepts the same delivery: it was the clock, not the signature
    assert verify_webhook(BODY, headers, secret, tolerance_s=400) == EVENT


def test_a_valid_signature_with_a_replayed_old_timestamp_is_refused() -> None:
    secret = new_secret()
    ts = int(time.time()) - 3600
    header = stripe_header(secret, ts=ts)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(BODY, header, secret)
    rejected(BODY, {"Wallet-Signature": header}, secret, "timestamp_outside_tolerance")


def test_rotation_several_signatures_any_match_verifies() -> None:
    old, new = new_secret(), new_secret()
    ts = int(time.time())
    std_old = standard_headers(old, ts=ts)
    std_new = standard_headers(new, ts=ts)
    both = dict(std_new, **{"webhook-signature": f"{std_old['webhook-signature']} {std_new['webhook-signature']}"})
    assert verify_webhook(BODY, both, new) == EVENT
    assert verify_webhook(BODY, both, old) == EVENT
    assert standardwebhooks.Webhook(new).verify(BODY, both) == EVENT

    header = f"t={ts},v1={stripe_v1(old, BODY, ts)},v1={stripe_v1(new, BODY, ts)}"
    assert stripe.Webhook.construct_event(BODY, header, new)["id"] == "evt_1"
    assert verify_webhook(BODY, {"Wallet-Signature": header}, new) == EVENT
    assert verify_webhook(BODY, {"Wallet-Signature": header}, old) == EVENT
    rejected(BODY, both, new_secret(), "signature_mismatch")


def test_receiver_rotating_its_own_secret_may_pass_both() -> None:
    old, new = new_secret(), new_secret()
    assert verify_webhook(BODY, standard_headers(old), [new, old]) == EVENT
    assert verify_webhook(BODY, {"Wallet-Signature": stripe_header(old)}, [new, old]) == EVENT
    rejected(BODY, standard_headers(old), [new], "signature_mismatch")


def test_either_format_when_both_are_sent() -> None:
    secret = new_secret()
    headers = dict(standard_headers(secret), **{"Wallet-Signature": stripe_header(secret)})
    assert verify_webhook(BODY, headers, secret) == EVENT
    # one format broken, the other intact: the intact one verifies
    broken = dict(headers, **{"webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()})
    assert verify_webhook(BODY, broken, secret) == EVENT


def test_missing_and_malformed_headers() -> None:
    secret = new_secret()
    rejected(BODY, {}, secret, "header_missing")
    partial = standard_headers(secret)
    del partial["webhook-id"]
    rejected(BODY, partial, secret, "header_missing")
    rejected(BODY, dict(standard_headers(secret), **{"webhook-signature": "v2,abc"}), secret, "header_malformed")
    rejected(BODY, dict(standard_headers(secret), **{"webhook-timestamp": "12.5"}), secret, "header_malformed")
    rejected(BODY, {"Wallet-Signature": "v1=abcd"}, secret, "header_malformed")
    rejected(BODY, {"Wallet-Signature": "t=1,t=2,v1=abcd"}, secret, "header_malformed")
    rejected(BODY, {"Wallet-Signature": f"t={int(time.time())},v1=not-hex"}, secret, "header_malformed")


def test_header_names_are_case_insensitive_and_body_must_be_raw_bytes() -> None:
    secret = new_secret()
    upper = {name.upper(): value for name, value in standard_headers(secret).items()}
    assert verify_webhook(BODY, upper, secret) == EVENT
    assert verify_webhook(BODY, CIMultiDict({"wallet-signature": stripe_header(secret)}), secret) == EVENT
    with pytest.raises(TypeError):
        verify_webhook(BODY.decode(), standard_headers(secret), secret)  # type: ignore[arg-type]


def test_signed_non_json_is_refused_after_verification() -> None:
    secret = new_secret()
    body = b"not json"
    rejected(body, standard_headers(secret, body=body), secret, "payload_invalid")
    rejected(b"[1]", {"Wallet-Signature": stripe_header(secret, body=b"[1]")}, secret, "payload_invalid")


def test_a_secret_that_is_not_base64_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        verify_webhook(BODY, standard_headers(new_secret()), "whsec_!!!")


async def test_in_an_aiohttp_receiver() -> None:
    """The shape a merchant writes: raw bytes and request.headers straight in, 400 on failure."""
    secret = new_secret()
    seen: list[dict[str, object]] = []

    async def receive(request: web.Request) -> web.Response:
        try:
            event = verify_webhook(await request.read(), request.headers, secret)
        except SignatureVerificationError as exc:
            return web.Response(status=400, text=exc.code or "")
        seen.append(event)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks", receive)
    async with TestClient(TestServer(app, host="127.0.0.1")) as http:
        ok = await http.post("/hooks", data=BODY, headers=standard_headers(secret))
        assert ok.status == 204
        ok = await http.post("/hooks", data=BODY, headers={"Wallet-Signature": stripe_header(secret)})
        assert ok.status == 204
        bad = await http.post("/hooks", data=BODY + b" ", headers=standard_headers(secret))
        assert bad.status == 400 and await bad.text() == "signature_mismatch"
    assert seen == [EVENT, EVENT]
