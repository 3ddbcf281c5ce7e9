"""Sign-in security over real HTTP, PostgreSQL and the SMS gateway simulator (a real HTTP receiver):
codes on registration and on a new device, their limits, trusted devices and their revocation,
password change, verification upgrades by an operator and by the signed KYC callback."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway.api.routing import SERVICES
from gateway.domain import webhooks
from gateway.services.context import Services
from gateway.services.wallets import WALLET_AUDIENCE
from tests.conftest import make_settings, sms_gateway
from tests.integration.conftest import serving
from tests.integration.world import OPERATOR_EMAIL, OPERATOR_PASSWORD, World, auth

PASSWORD = "s3cret-pass"
KYC_SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


def _svc(client: TestClient) -> Services:
    svc: Services = client.server.app[SERVICES]
    return svc


@pytest.fixture
async def fast(clean_db: str) -> AsyncIterator[World]:
    """A gateway whose codes live 1 s and may be sent again after 1 s, with a KYC hook secret."""
    settings = make_settings(sign_in={"code_ttl_s": 1, "resend_interval_s": 1, "resends_max": 1,
                                      "challenges_per_holder_max": 4, "kyc_hook_secret": KYC_SECRET,
                                      "sms_hook_backoff_base_s": 0.05, "sms_hook_backoff_max_s": 0.1,
                                      "sender_poll_interval_s": 0.05})
    async with serving(clean_db, settings) as client:
        yield await World.create(client)


async def _login(world: World, phone: str, device_id: str | None = None, password: str = PASSWORD) -> Any:
    body: dict[str, Any] = {"phone": phone, "password": password}
    if device_id:
        body["device_id"] = device_id
    resp = await world.client.post("/v1/wallet/sessions", json=body)
    return resp.status, await resp.json()


async def _verify(world: World, challenge_id: str, code: str) -> tuple[int, Any]:
    resp = await world.client.post(f"/v1/wallet/challenges/{challenge_id}/verify", json={"code": code})
    return resp.status, await resp.json()


def _wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def test_registration_code_proves_the_phone_and_trusts_the_device(world: World) -> None:
    phone = "+8613911110001"
    reg = await world.call("POST", "/v1/wallet/holders", 201,
                           json={"phone": phone, "password": PASSWORD, "device_id": "phone-1"})
    assert reg["verification_level"] == "none" and reg["challenge"]["reason"] == "phone_verification"
    assert reg["challenge"]["phone_masked"] == "+86*******0001" and reg["challenge"]["attempts_remaining"] == 5
    # Before the code, a sign-in from that device gets a challenge, not a token.
    status, body = await _login(world, phone, "phone-1")
    assert status == 202 and body["object"] == "sign_in_challenge" and body["reason"] == "phone_verification"
    token = await world.answer(phone, reg["challenge"])
    wallet = await world.call("GET", "/v1/wallet", headers=auth(token))
    assert wallet["holder"]["verification_level"] == "phone" and wallet["holder"]["tier"] == 4
    # The device is trusted now: a token at once. Another device, or none, needs a code.
    status, body = await _login(world, phone, "phone-1")
    assert status == 201 and body["object"] == "token"
    status, body = await _login(world, phone, "phone-2")
    assert status == 202 and body["reason"] == "new_device" and body["device_id"] == "phone-2"
    token2 = await world.answer(phone, body)
    devices = await world.call("GET", "/v1/wallet/devices", headers=auth(token2))
    assert [(d["device_id"], d["current"], d["trusted_by"]) for d in devices["data"]] == [
        ("phone-2", True, "code"), ("phone-1", False, "code")]
    status, body = await _login(world, phone)
    assert status == 202 and body["device_id"] is None
    await sms_gateway().code(phone, body["id"])
    # A wrong password still gets no challenge (no text is sent for it).
    texts = len(sms_gateway().texts(phone))
    status, body = await _login(world, phone, "phone-1", password="wrong-password")
    assert status == 401 and body["error"]["code"] == "invalid_credentials"
    assert len(sms_gateway().texts(phone)) == texts


async def test_wrong_codes_are_limited_even_when_raced(world: World) -> None:
    h = await world.holder()
    status, challenge = await _login(world, h.phone, "racer")
    assert status == 202
    code = await sms_gateway().code(h.phone, challenge["id"])
    answers = await asyncio.gather(*(_verify(world, challenge["id"], _wrong(code)) for _ in range(9)))
    codes = sorted(body["error"]["code"] for _, body in answers)
    assert codes == ["challenge_exhausted"] * 4 + ["incorrect_code"] * 5
    assert sorted(body["error"].get("attempts_remaining", -1) for _, body in answers)[-5:] == [0, 1, 2, 3, 4]
    # The code is dead: the right one no longer works.
    status, body = await _verify(world, challenge["id"], code)
    assert status == 409 and body["error"]["code"] == "challenge_exhausted"
    status, body = await _verify(world, challenge["id"], "12ab56")
    assert status == 400 and body["error"]["code"] == "invalid_code_format"


async def test_a_code_is_used_once_even_when_raced(world: World) -> None:
    h = await world.holder()
    _, challenge = await _login(world, h.phone, "twice")
    code = await sms_gateway().code(h.phone, challenge["id"])
    answers = await asyncio.gather(*(_verify(world, challenge["id"], code) for _ in range(5)))
    assert sorted(status for status, _ in answers) == [201, 409, 409, 409, 409]
    assert {body["error"]["code"] for status, body in answers if status == 409} == {"challenge_used"}
    status, body = await _verify(world, challenge["id"], code)  # a replay later
    assert status == 409 and body["error"]["code"] == "challenge_used"
    status, body = await _verify(world, "chl_" + uuid.uuid4().hex, code)
    assert status == 404


async def test_expired_code_and_resend(fast: World) -> None:
    world = fast
    h = await world.holder()
    _, challenge = await _login(world, h.phone, "slow-phone")
    first = await sms_gateway().code(h.phone, challenge["id"])
    resp = await world.client.post(f"/v1/wallet/challenges/{challenge['id']}/resend", json={})
    assert resp.status == 429 and (await resp.json())["error"]["code"] == "resend_too_soon"
    assert int(resp.headers["Retry-After"]) >= 1
    await asyncio.sleep(1.1)
    # Past code_ttl_s (1 s) the code is dead, and so is its challenge: no resend either.
    status, body = await _verify(world, challenge["id"], first)
    assert status == 409 and body["error"]["code"] == "challenge_expired"
    resp = await world.client.post(f"/v1/wallet/challenges/{challenge['id']}/resend", json={})
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "challenge_expired"


async def test_resend_kills_the_previous_code(clean_db: str) -> None:
    settings = make_settings(sign_in={"resend_interval_s": 1, "resends_max": 1})
    async with serving(clean_db, settings) as client:
        world = await World.create(client)
        h = await world.holder()
        _, challenge = await _login(world, h.phone, "resend-phone")
        sms = sms_gateway()
        first = await sms.code(h.phone, challenge["id"])
        await asyncio.sleep(1.05)
        resent = await world.call("POST", f"/v1/wallet/challenges/{challenge['id']}/resend", json={})
        assert resent["resends_remaining"] == 0 and resent["id"] == challenge["id"]
        second = await sms.code(h.phone, challenge["id"], after=1)
        await asyncio.sleep(1.05)
        resp = await client.post(f"/v1/wallet/challenges/{challenge['id']}/resend", json={})
        assert resp.status == 409 and (await resp.json())["error"]["code"] == "resends_exhausted"
        if first != second:
            status, body = await _verify(world, challenge["id"], first)
            assert status == 401 and body["error"]["code"] == "incorrect_code"
        status, _ = await _verify(world, challenge["id"], second)
        assert status == 201


async def test_challenges_per_holder_are_capped(fast: World) -> None:
    h = await fast.holder()  # its registration was the first of four
    for n in range(3):
        status, _ = await _login(fast, h.phone, f"device-{n}")
        assert status == 202
    status, body = await _login(fast, h.phone, "device-9")
    assert status == 429 and body["error"]["code"] == "sign_in_codes_exhausted"


async def test_the_sender_retries_a_failing_hook_and_keeps_no_code(fast: World, clean_db: str) -> None:
    sms = sms_gateway()
    sms.fail_next = 2
    h = await fast.holder()  # its code arrives on the third attempt
    assert h.token
    conn = await asyncpg.connect(clean_db)
    try:
        rows = await conn.fetch("SELECT status, attempts, sealed_code FROM sign_in_messages")
        hashes = await conn.fetch("SELECT code_hash FROM sign_in_challenges")
    finally:
        await conn.close()
    assert [(r["status"], r["attempts"], r["sealed_code"]) for r in rows] == [("sent", 3, None)]
    code = sms.latest(h.phone)
    assert code is not None and all(code.code.encode() not in r["code_hash"] for r in hashes)


async def test_a_revoked_device_is_refused_at_once(world: World) -> None:
    h = await world.holder(device_id="phone-a")
    token_a = h.token
    token_b = await world.sign_in(h.phone, device_id="phone-b")
    devices = (await world.call("GET", "/v1/wallet/devices", headers=auth(token_b)))["data"]
    device_a = next(d for d in devices if d["device_id"] == "phone-a")
    # Another holder cannot see or revoke it.
    other = await world.holder()
    await world.call("DELETE", f"/v1/wallet/devices/{device_a['id']}", 404, headers=other.headers)
    revoked = await world.call("DELETE", f"/v1/wallet/devices/{device_a['id']}", headers=auth(token_b))
    assert revoked["revoked"] is True
    body = await world.call("GET", "/v1/wallet", 401, headers=auth(token_a))
    assert body["error"]["code"] == "session_revoked"
    await world.call("GET", "/v1/wallet", headers=auth(token_b))
    devices = (await world.call("GET", "/v1/wallet/devices", headers=auth(token_b)))["data"]
    assert [d["device_id"] for d in devices] == ["phone-b"]
    # Its trust is gone: the next sign-in there needs a code, which trusts it again.
    status, challenge = await _login(world, h.phone, "phone-a")
    assert status == 202 and challenge["reason"] == "new_device"
    fresh = await world.answer(h.phone, challenge)
    await world.call("GET", "/v1/wallet", headers=auth(fresh))
    events = await world.call("GET", "/v1/operator/events?type=wallet.device_revoked", headers=world.ops)
    assert [e["actor"]["type"] for e in events["data"]] == ["wallet_holder"]


async def test_a_sign_in_without_a_device_is_listed_and_can_be_signed_out(world: World) -> None:
    """A sign-in that names no device_id (after its code) is on a device named for it: it appears in the
    holder's device list, can be signed out there like any other, and each such sign-in needs its own code
    (found by review: such a session was in no list, so only a password change could end it)."""
    h = await world.holder(device_id="phone-a")
    hidden = await world.sign_in(h.phone)
    await world.call("GET", "/v1/wallet", headers=auth(hidden))
    devices = (await world.call("GET", "/v1/wallet/devices", headers=h.headers))["data"]
    unnamed = [d for d in devices if d["device_id"] != "phone-a"]
    assert len(devices) == 2 and len(unnamed) == 1 and unnamed[0]["device_id"].startswith("unnamed-"), devices
    seen_there = (await world.call("GET", "/v1/wallet/devices", headers=auth(hidden)))["data"]
    assert [d["id"] for d in seen_there if d["current"]] == [unnamed[0]["id"]]
    await world.call("DELETE", f"/v1/wallet/devices/{unnamed[0]['id']}", headers=h.headers)
    body = await world.call("GET", "/v1/wallet", 401, headers=auth(hidden))
    assert body["error"]["code"] == "session_revoked"
    # A second sign-in without a device is another unnamed device, proven by its own code.
    status, challenge = await _login(world, h.phone, None)
    assert status == 202, challenge
    again = await world.answer(h.phone, challenge)
    names = {d["device_id"] for d in (await world.call("GET", "/v1/wallet/devices", headers=auth(again)))["data"]}
    assert "phone-a" in names and unnamed[0]["device_id"] not in names and len(names) == 2


async def test_revocation_reaches_another_process_without_database_reads(world: World, clean_db: str,
                                                                         settings: Any) -> None:
    h = await world.holder(device_id="phone-x")
    token_y = await world.sign_in(h.phone, device_id="phone-y")
    async with serving(clean_db, settings) as second:
        other = _svc(second)
        assert other.revocations is not None and other.revocations.answering
        for _ in range(3):
            resp = await second.get("/v1/wallet", headers=auth(h.token))
            assert resp.status == 200
        device_x = next(d for d in (await world.call("GET", "/v1/wallet/devices", headers=auth(token_y)))["data"]
                        if d["device_id"] == "phone-x")
        await world.call("DELETE", f"/v1/wallet/devices/{device_x['id']}", headers=auth(token_y))
        await other.revocations.sync()
        resp = await second.get("/v1/wallet", headers=auth(h.token))
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "session_revoked"
        resp = await second.get("/v1/wallet", headers=auth(token_y))
        assert resp.status == 200
        assert other.revocations.database_checks == 0 and other.revocations.notifications == 1


async def test_revocations_are_loaded_by_a_process_that_starts_later(world: World, clean_db: str,
                                                                     settings: Any) -> None:
    h = await world.holder(device_id="phone-1")
    token_2 = await world.sign_in(h.phone, device_id="phone-2")
    await world.call("POST", "/v1/wallet/password", headers=auth(token_2),
                     json={"current_password": PASSWORD, "new_password": "another-pass"})
    async with serving(clean_db, settings) as later:
        resp = await later.get("/v1/wallet", headers=auth(h.token))
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "session_revoked"
        assert _svc(later).revocations.database_checks == 0  # type: ignore[union-attr]


async def test_password_change_signs_out_the_other_devices(world: World) -> None:
    h = await world.holder(device_id="phone-a")
    token_b = await world.sign_in(h.phone, device_id="phone-b")
    body = await world.call("POST", "/v1/wallet/password", 403, headers=h.headers,
                            json={"current_password": "not-the-password", "new_password": "brand-new-pass"})
    assert body["error"]["code"] == "incorrect_password"
    body = await world.call("POST", "/v1/wallet/password", 400, headers=h.headers,
                            json={"current_password": PASSWORD, "new_password": "short"})
    assert body["error"]["code"] == "weak_password"
    changed = await world.call("POST", "/v1/wallet/password", headers=h.headers,
                               json={"current_password": PASSWORD, "new_password": "brand-new-pass"})
    assert changed["sessions_signed_out"] == 1
    body = await world.call("GET", "/v1/wallet", 401, headers=auth(token_b))
    assert body["error"]["code"] == "session_revoked"
    await world.call("GET", "/v1/wallet", headers=h.headers)  # the device that changed it stays signed in
    status, _ = await _login(world, h.phone, "phone-a")
    assert status == 401
    status, _ = await _login(world, h.phone, "phone-a", password="brand-new-pass")
    assert status == 201
    status, body = await _login(world, h.phone, "phone-b", password="brand-new-pass")
    assert status == 202 and body["reason"] == "new_device"  # its trust went with the old password


async def test_tokens_from_before_sessions_keep_working_until_their_holder_revokes(world: World) -> None:
    h = await world.holder(device_id="old-phone")
    svc = _svc(world.client)
    legacy = svc.tokens.issue(uuid.UUID(hex=h.id.removeprefix("wh_")), WALLET_AUDIENCE, 900, did="old-phone")
    await world.call("GET", "/v1/wallet", headers=auth(legacy))
    token_new = await world.sign_in(h.phone, device_id="new-phone")
    await world.call("POST", "/v1/wallet/password", headers=auth(token_new),
                     json={"current_password": PASSWORD, "new_password": "brand-new-pass"})
    body = await world.call("GET", "/v1/wallet", 401, headers=auth(legacy))
    assert body["error"]["code"] == "session_revoked"


async def test_operator_upgrade_is_audited_and_never_goes_down(world: World) -> None:
    h = await world.holder()
    path = f"/v1/operator/wallet_holders/{h.id}/verification"
    up = await world.call("POST", path, headers=world.ops, json={"level": "real_name", "reference": "ID-check-7"})
    assert up["holder"]["verification_level"] == "real_name" and up["holder"]["tier"] == 3
    assert up["previous_level"] == "phone" and up["changed"] is True
    body = await world.call("POST", path, 409, headers=world.ops, json={"level": "phone"})
    assert body["error"]["code"] == "verification_level_lower"
    up = await world.call("POST", path, headers=world.ops, json={"level": "bank_card"})
    assert up["holder"]["tier"] == 2
    wallet = await world.call("GET", "/v1/wallet", headers=h.headers)
    assert wallet["holder"]["verification_level"] == "bank_card" and wallet["holder"]["tier"] == 2
    await world.call("POST", path, 400, headers=world.ops, json={"level": "none"})
    await world.call("POST", f"/v1/operator/wallet_holders/wh_{uuid.uuid4().hex}/verification", 404,
                     headers=world.ops, json={"level": "real_name"})
    await world.call("POST", path, 401, headers=h.headers, json={"level": "in_person"})
    events = await world.call("GET", "/v1/operator/events?type=wallet.verification_upgraded", headers=world.ops)
    assert [(e["actor"]["type"], e["data"]["object"]["holder"]["verification_level"]) for e in events["data"]] == [
        ("operator", "bank_card"), ("operator", "real_name")]
    assert OPERATOR_EMAIL and OPERATOR_PASSWORD


def _kyc(secret: str, body: dict[str, Any], msg_id: str | None = None, timestamp_s: int | None = None,
         ) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    msg_id = msg_id or f"kyc_{uuid.uuid4().hex}"
    ts = int(time.time()) if timestamp_s is None else timestamp_s
    return raw, {"webhook-id": msg_id, "webhook-timestamp": str(ts),
                 "webhook-signature": webhooks.standard_signature(secret, msg_id, ts, raw),
                 "Content-Type": "application/json"}


async def test_kyc_callbacks_are_signed_fresh_and_once(fast: World) -> None:
    world = fast
    h = await world.holder()

    async def send(raw: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        resp = await world.client.post("/v1/kyc/callbacks", data=raw, headers=headers)
        return resp.status, await resp.json()

    raw, headers = _kyc(KYC_SECRET, {"holder": h.id, "level": "real_name", "reference": "kyc-1"})
    status, body = await send(raw, headers)
    assert status == 200 and body["verification_level"] == "real_name" and body["tier"] == 3 and body["changed"]
    status, body = await send(raw, headers)  # the very same delivery again
    assert status == 409 and body["error"]["code"] == "callback_replayed"
    other_secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    status, body = await send(*_kyc(other_secret, {"holder": h.id, "level": "in_person"}))
    assert status == 401 and body["error"]["code"] == "signature_invalid"
    raw, headers = _kyc(KYC_SECRET, {"holder": h.id, "level": "in_person"})
    status, body = await send(raw.replace(b"in_person", b"bank_card"), headers)  # altered after signing
    assert status == 401 and body["error"]["code"] == "signature_invalid"
    status, body = await send(*_kyc(KYC_SECRET, {"holder": h.id, "level": "in_person"},
                                    timestamp_s=int(time.time()) - 301))
    assert status == 401 and body["error"]["code"] == "timestamp_out_of_tolerance"
    status, body = await send(raw, {"Content-Type": "application/json"})
    assert status == 401 and body["error"]["code"] == "signature_missing"
    # A late callback of a lower level (a new id) changes nothing: levels never go down.
    status, body = await send(*_kyc(KYC_SECRET, {"holder": h.id, "level": "phone"}))
    assert status == 200 and body["verification_level"] == "real_name" and body["changed"] is False
    status, body = await send(*_kyc(KYC_SECRET, {"holder": h.id, "level": "galactic"}))
    assert status == 400 and body["error"]["code"] == "invalid_callback"
    wallet = await world.call("GET", "/v1/wallet", headers=h.headers)
    assert wallet["holder"]["verification_level"] == "real_name" and wallet["holder"]["tier"] == 3
    events = await world.call("GET", "/v1/operator/events?type=wallet.verification_upgraded", headers=world.ops)
    assert [e["actor"]["type"] for e in events["data"]] == ["kyc_hook", "kyc_hook"]


async def test_kyc_callbacks_are_refused_without_a_secret(world: World) -> None:
    h = await world.holder()
    raw, headers = _kyc(KYC_SECRET, {"holder": h.id, "level": "real_name"})
    resp = await world.client.post("/v1/kyc/callbacks", data=raw, headers=headers)
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "kyc_hook_disabled"
