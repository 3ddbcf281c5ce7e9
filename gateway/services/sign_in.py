"""Sign-in security use cases: one-time codes (challenges), trusted devices, sessions, password change.

A sign-in from a device the holder has not proven with a code, or by a holder whose phone is not
proven yet, answers a challenge instead of a token: a code goes to the holder's phone through the
code sender's outbox (``workers.sign_in_codes``), and ``verify`` exchanges the challenge id and the
code for the token, proving the phone and trusting the device.

Invariants:
- a code exists in clear only in this process's memory: at rest it is a keyed hash bound to its
  challenge (``domain.verification.code_hash``) and, until the SMS hook took it, a sealed copy in
  the outbox (AES-GCM under a key derived from ``auth.api_key_pepper``, never in the database; the
  row's id is the associated data); no code is ever logged;
- a code is short-lived (``sign_in.code_ttl_s``), dies after ``code_attempts_max`` wrong tries
  (counted before the answer, in the statement that checks it) and when used: a replay is refused;
- a resend is a new code (the old dies) at most every ``resend_interval_s``, ``resends_max`` times;
  a holder gets at most ``challenges_per_holder_max`` challenges per ``challenge_window_s``;
- every token issued here has a session (``sid``), so it can be revoked; revocations are honoured
  by this process before the use case answers (``SessionRevocations.added``);
- "known device" for holders registered before codes existed: a device the gateway had seen bound
  to them (pay-codes, tap tokens; seeded by migration 0017); any other device gets one code, once.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import asyncpg
import msgspec

from gateway.auth import passwords
from gateway.auth.principals import Principal
from gateway.auth.sealing import Sealer
from gateway.domain import verification
from gateway.domain.ids import Kind, decode, encode
from gateway.domain.verification import Level
from gateway.errors import (Conflict, Forbidden, GatewayError, InvalidRequest, NotFound, RateLimited,
                            Unauthenticated, Unavailable)
from gateway.services import audit, pages, throttle, views
from gateway.services.context import Services
from gateway.services.idempotency import Reply, RequestIdentity
from gateway.services.pages import PageRequest
from gateway.store import codes as code_store
from gateway.store import devices as device_store
from gateway.store import sign_in as store
from gateway.store.db import Connection

log = logging.getLogger(__name__)
WALLET_AUDIENCE = "wallet"
PASSWORD_LENGTH_MIN = 8
_SEAL_PURPOSE = b"wallet-gateway sign-in codes v1"
SIGN_IN_REASONS = ("phone_verification", "new_device")  # a payment's code (services.risk) never signs in


class SignInChallengeView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "sign_in_challenge"
    reason: str  # phone_verification | new_device
    phone_masked: str
    device_id: str | None
    expires_at: views.Timestamp
    attempts_remaining: int
    resends_remaining: int
    resend_available_at: views.Timestamp


class RegistrationView(views.WalletHolderView, kw_only=True):
    challenge: SignInChallengeView


class WalletDeviceView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "wallet_device"
    device_id: str
    trusted_at: views.Timestamp | None
    trusted_by: str  # code | before_codes
    last_sign_in_at: views.Timestamp | None
    created_at: views.Timestamp
    current: bool = False  # the device of the token asking
    revoked: bool = False


class WalletDeviceList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[WalletDeviceView]
    has_more: bool


class PasswordChangedView(msgspec.Struct, kw_only=True):
    object: str = "password_change"
    holder: str
    sessions_signed_out: int


def _sealer(svc: Services) -> Sealer:
    return Sealer(svc.settings.auth.api_key_pepper, _SEAL_PURPOSE)


def code_hash(svc: Services, challenge_id: uuid.UUID, code: str) -> bytes:
    """How a challenge's code is kept (also a payment's code: services.risk)."""
    return verification.code_hash(svc.settings.auth.api_key_pepper.encode(), challenge_id.bytes, code)


def challenge_view(svc: Services, row: Any, phone: str) -> SignInChallengeView:
    settings = svc.settings.sign_in
    return SignInChallengeView(
        id=encode(Kind.SIGN_IN_CHALLENGE, row["id"]), reason=row["reason"], phone_masked=views.mask_phone(phone),
        device_id=row["device_id"], expires_at=row["expires_at"].isoformat(),
        attempts_remaining=row["attempts_max"] - row["attempts"],
        resends_remaining=max(0, settings.resends_max + 1 - row["sends"]),
        resend_available_at=(row["last_sent_at"] + timedelta(seconds=settings.resend_interval_s)).isoformat(),
    )


async def start_challenge(conn: Connection, svc: Services, holder_id: uuid.UUID, phone: str, reason: str,
                          device_id: str | None, challenge_id: uuid.UUID | None = None) -> SignInChallengeView:
    """A challenge and its first code, in the caller's transaction (the sender is woken by the caller
    once it committed, with ``codes_sent``); ``challenge_id`` when the caller named it already."""
    settings = svc.settings.sign_in
    if not settings.sms_hook_url:
        raise Unavailable("no SMS hook is configured: sign-in codes cannot be sent", code="code_sender_unavailable",
                          retry_after_s=60)
    now = svc.now()
    recent = await store.challenges_since(conn, holder_id, now - timedelta(seconds=settings.challenge_window_s))
    if recent >= settings.challenges_per_holder_max:
        raise RateLimited("too many codes were sent to this phone; retry later", code="sign_in_codes_exhausted",
                          retry_after_s=settings.challenge_window_s)
    challenge_id = challenge_id or uuid.uuid4()
    # The hash is bound to the id, so the message (which needs the id) is written after the challenge.
    code = verification.new_code(settings.code_length, secrets.randbelow)
    row = await store.insert_challenge(conn, challenge_id, holder_id, reason, device_id, code_hash(svc, challenge_id, code),
                                       settings.code_attempts_max, now + timedelta(seconds=settings.code_ttl_s))
    message_id = uuid.uuid4()
    await store.insert_message(conn, message_id, challenge_id, phone, _sealer(svc).seal(code, message_id.bytes))
    log.info("sign-in code queued", extra={"holder_id": str(holder_id), "challenge": challenge_id.hex,
                                           "reason": reason})
    return challenge_view(svc, row, phone)


def codes_sent(svc: Services) -> None:
    """After a commit that queued codes: this process's sender sends them at once."""
    svc.codes_due.set()


async def _session(conn: Connection, svc: Services, holder_id: uuid.UUID, device_row: uuid.UUID | None,
                   device_id: str | None) -> views.TokenView:
    ttl_s = svc.settings.auth.wallet_token_ttl_s
    now_s = int(time.time())
    session_id = uuid.uuid4()
    await store.insert_session(conn, session_id, holder_id, device_row, datetime.fromtimestamp(now_s + ttl_s, UTC))
    claims: dict[str, Any] = {"sid": str(session_id)}
    if device_id:
        claims["did"] = device_id
    token = svc.tokens.issue(holder_id, WALLET_AUDIENCE, ttl_s, now_s=now_s, **claims)
    return views.TokenView(token=token, expires_in=ttl_s)


async def after_password(svc: Services, holder: asyncpg.Record, device_id: str | None
                         ) -> views.TokenView | SignInChallengeView:
    """The password was right: a token for a trusted device of a holder whose phone is proven, else a
    challenge (a device_id never proven, none given, or the phone not proven yet)."""
    level = Level(holder["verification_level"])
    async with svc.db.connection() as conn, conn.transaction():
        device_row = (await store.trusted_device(conn, holder["id"], device_id)
                      if device_id is not None and level >= Level.PHONE else None)
        if device_row is not None:
            await store.signed_in(conn, device_row, svc.now())
            return await _session(conn, svc, holder["id"], device_row, device_id)
        reason = "phone_verification" if level is Level.NONE else "new_device"
        view = await start_challenge(conn, svc, holder["id"], holder["phone"], reason, device_id)
    codes_sent(svc)
    return view


def _challenge_id(text: str) -> uuid.UUID:
    found = decode(Kind.SIGN_IN_CHALLENGE, text)
    if found is None:
        raise NotFound(f"no such sign-in challenge: {text}", param="id")
    return found


def _dead(row: Any, now: datetime, text: str) -> GatewayError:
    """Why a challenge took no attempt or resend."""
    if row is None:
        return NotFound(f"no such sign-in challenge: {text}", param="id")
    if row["consumed_at"] is not None:
        return Conflict("this code was used already; sign in again", code="challenge_used")
    if row["attempts"] >= row["attempts_max"]:
        return Conflict("too many wrong codes: this challenge is dead; sign in again", code="challenge_exhausted")
    if row["expires_at"] <= now:
        return Conflict("the code has expired; sign in again", code="challenge_expired")
    return Conflict("the challenge cannot take this now", code="challenge_busy")


UNNAMED_DEVICE_PREFIX = "unnamed-"  # the device a sign-in without a device_id is listed (and revoked) as


async def verify(svc: Services, text: str, code: str) -> views.TokenView:
    """Exchange the challenge and its code for a wallet token; the phone is proven, the device trusted (one
    named ``unnamed-...`` when the sign-in gave no device_id)."""
    challenge_id = _challenge_id(text)
    if not verification.valid_code_format(code, svc.settings.sign_in.code_length):
        raise InvalidRequest(f"code is {svc.settings.sign_in.code_length} digits", code="invalid_code_format",
                             param="code")
    now = svc.now()
    async with svc.db.connection() as conn:
        async with conn.transaction():
            row = await store.attempt_code(conn, challenge_id, code_hash(svc, challenge_id, code), now, SIGN_IN_REASONS)
            if row is not None and row["consumed_at"] is not None:
                holder = await store.verify_phone(conn, row["holder_id"], now, Level.PHONE,
                                                  verification.TIER_OF_LEVEL[Level.PHONE])
                # A sign-in that named no device is on a device all the same, one named for it: every
                # signed-in session is in the holder's device list, where it can be signed out.
                device_id = row["device_id"] or f"{UNNAMED_DEVICE_PREFIX}{secrets.token_hex(6)}"
                device_row = await store.trust_device(conn, row["holder_id"], device_id, now)
                await store.drop_messages(conn, challenge_id)
                token = await _session(conn, svc, row["holder_id"], device_row, device_id)
                log.info("sign-in challenge verified", extra={"holder_id": str(holder["id"]),
                                                              "challenge": challenge_id.hex, "reason": row["reason"]})
                return token
        # A wrong code's attempt is committed above, then refused.
        if row is None:
            raise _dead(await store.challenge(conn, challenge_id), now, text)
    left = row["attempts_max"] - row["attempts"]
    log.warning("sign-in code wrong", extra={"holder_id": str(row["holder_id"]), "challenge": challenge_id.hex,
                                             "attempts_remaining": left})
    raise Unauthenticated("the code is not right", code="incorrect_code", attempts_remaining=left)


async def resend(svc: Services, text: str) -> SignInChallengeView:
    """A new code for a live challenge (the previous code dies; wrong tries still count)."""
    challenge_id = _challenge_id(text)
    settings = svc.settings.sign_in
    now = svc.now()
    async with svc.db.connection() as conn:
        async with conn.transaction():
            code = verification.new_code(settings.code_length, secrets.randbelow)
            row = await store.resend(conn, challenge_id, code_hash(svc, challenge_id, code), now,
                                     settings.resend_interval_s, settings.resends_max)
            holder = await store.holder_password(conn, row["holder_id"]) if row is not None else None
            if row is not None and holder is not None:
                await store.drop_messages(conn, challenge_id)
                message_id = uuid.uuid4()
                await store.insert_message(conn, message_id, challenge_id, holder["phone"],
                                           _sealer(svc).seal(code, message_id.bytes))
        if row is None:
            found = await store.challenge(conn, challenge_id)
            failure = _dead(found, now, text)
            if failure.code == "challenge_busy" and found is not None:
                if found["sends"] > settings.resends_max:
                    raise Conflict("no more codes can be sent for this challenge; sign in again",
                                   code="resends_exhausted")
                wait_s = (found["last_sent_at"] + timedelta(seconds=settings.resend_interval_s) - now).total_seconds()
                raise RateLimited("a code was sent a moment ago; wait before asking again", code="resend_too_soon",
                                  retry_after_s=max(1, math.ceil(wait_s)))
            raise failure
    assert holder is not None
    codes_sent(svc)
    return challenge_view(svc, row, holder["phone"])


def _device_view(row: Any, current: uuid.UUID | None, revoked: bool = False) -> WalletDeviceView:
    return WalletDeviceView(
        id=encode(Kind.WALLET_DEVICE, row["id"]), device_id=row["device_id"],
        trusted_at=row["trusted_at"].isoformat() if row["trusted_at"] else None, trusted_by=row["trusted_by"],
        last_sign_in_at=row["last_sign_in_at"].isoformat() if row["last_sign_in_at"] else None,
        created_at=row["created_at"].isoformat(), current=row["id"] == current, revoked=revoked,
    )


async def devices(svc: Services, who: Principal, page: PageRequest) -> WalletDeviceList:
    async with svc.db.connection() as conn:
        current = await store.session_device(conn, who.session_id, who.id) if who.session_id else None
        rows, has_more = await pages.read(conn, store.holder_devices(who.id), page, partial(decode, Kind.WALLET_DEVICE))
    return WalletDeviceList(data=[_device_view(r, current) for r in rows], has_more=has_more)


async def revoke_device(svc: Services, who: Principal, text: str, identity: RequestIdentity) -> Reply:
    """Sign the device out (its tokens stop working at once, and its unused pay-codes and tap tokens with them)
    and forget its trust: its next sign-in needs a code."""
    device_row = decode(Kind.WALLET_DEVICE, text)
    revoked: list[asyncpg.Record] = []

    async def work(conn: Connection) -> tuple[int, Any]:
        revoked.clear()
        now = svc.now()
        row = await store.revoke_device(conn, device_row, who.id, now) if device_row else None
        if row is None:
            raise NotFound(f"no such device: {text}", param="id")
        revoked.extend(await store.revoke_device_sessions(conn, row["id"], now))
        # The credentials the phone holds for a counter stop working too: its unused pay-codes, its tap tokens.
        await code_store.expire_device_pay_codes(conn, who.id, row["device_id"], now)
        await device_store.revoke_phone_tap_tokens(conn, who.id, row["device_id"])
        view = _device_view(row, None, revoked=True)
        await audit.record(conn, who, "wallet.device_revoked", row["id"], view, merchant_id=None, holder_id=who.id)
        return 200, view

    reply = await svc.idempotency.run(identity, work)
    _honour(svc, revoked)
    return reply


def _honour(svc: Services, revoked: list[asyncpg.Record]) -> None:
    if svc.revocations is not None:
        svc.revocations.added(revoked)


async def change_password(svc: Services, who: Principal, current: str, new: str, address: str | None
                          ) -> PasswordChangedView:
    """Change the password (the current one is needed) and sign out every other session and device: their
    trust, their unused pay-codes and tap tokens, and every sign-in challenge still open."""
    if len(new) < PASSWORD_LENGTH_MIN:
        raise InvalidRequest(f"password must have at least {PASSWORD_LENGTH_MIN} characters", code="weak_password",
                             param="new_password")
    async with svc.db.connection() as conn:
        holder = await store.holder_password(conn, who.id)
    if holder is None:
        raise Unauthenticated("the wallet holder no longer exists", code="invalid_token")
    # Guesses of the current password count with the account's sign-in failures (and its lockout).
    attempt = await throttle.admit(svc, throttle.Kind.WALLET, holder["phone"], address)
    if not await passwords.verify_password(holder["password_hash"], current):
        log.warning("wallet password change refused", extra={"holder_id": str(who.id)})
        raise Forbidden("the current password is not right", code="incorrect_password", param="current_password")
    await throttle.succeeded(svc, attempt)
    hashed = await passwords.hash_password(new)
    async with svc.db.connection() as conn, conn.transaction():
        now = svc.now()
        await store.set_password(conn, who.id, hashed, now)
        revoked = await store.revoke_other_sessions(conn, who.id, who.session_id, now)
        # What the other phones hold for a counter stops working too (as when a device is revoked), and a
        # sign-in begun with the old password cannot be finished with its code.
        await code_store.expire_other_devices_pay_codes(conn, who.id, who.device_id, now)
        await device_store.revoke_other_phones_tap_tokens(conn, who.id, who.device_id)
        await store.end_pending_challenges(conn, who.id, SIGN_IN_REASONS, now)
        view = PasswordChangedView(holder=encode(Kind.WALLET_HOLDER, who.id), sessions_signed_out=len(revoked))
        await audit.record(conn, who, "wallet.password_changed", who.id, view, merchant_id=None, holder_id=who.id)
    _honour(svc, revoked)
    return view


# The code sender's side (workers.sign_in_codes).

@dataclasses.dataclass(frozen=True, slots=True)
class Outgoing:
    """One text message to send: the only place a code is in clear outside the request that made it."""

    message_id: uuid.UUID
    phone: str
    body: bytes  # the hook's JSON, code included
    attempts: int
    expires_at: datetime

    def __repr__(self) -> str:  # never the body
        return f"Outgoing({self.message_id.hex}, attempts={self.attempts})"


async def claim_codes(svc: Services) -> list[Outgoing]:
    """Forget the codes of dead challenges, then lease what is due and open it."""
    settings = svc.settings.sign_in
    now = svc.now()
    async with svc.db.connection() as conn:
        await store.drop_dead_messages(conn, now)
        rows = await store.claim_messages(conn, now, settings.sms_hook_timeout_s + 10.0, settings.sender_batch_max)
    sealer = _sealer(svc)
    found = []
    for r in rows:
        code = sealer.open(r["sealed_code"], r["id"].bytes)
        body = msgspec.json.encode({
            "id": encode(Kind.SIGN_IN_MESSAGE, r["id"]), "object": "sign_in_code", "to": r["phone"], "code": code,
            "text": verification.sms_text(code, settings.code_ttl_s), "reason": r["reason"],
            "reference": encode(Kind.SIGN_IN_CHALLENGE, r["challenge_id"]), "expires_at": r["expires_at"].isoformat(),
        })
        found.append(Outgoing(r["id"], r["phone"], body, r["attempts"], r["expires_at"]))
    return found


async def record_delivery(svc: Services, sent: Outgoing, error: str | None) -> str:
    """The hook's answer: sent (the sealed code is erased), retried later, or failed for good."""
    settings = svc.settings.sign_in
    now = svc.now()
    async with svc.db.connection() as conn:
        if error is None:
            await store.message_sent(conn, sent.message_id, now)
            return "sent"
        retry_at = now + timedelta(seconds=verification.retry_delay_s(
            sent.attempts, settings.sms_hook_backoff_base_s, settings.sms_hook_backoff_max_s, random.random()))
        give_up = sent.attempts >= settings.sms_hook_attempts_max or retry_at >= sent.expires_at
        await store.message_failed(conn, sent.message_id, error[:300], None if give_up else retry_at)
    return "failed" if give_up else "retry"


async def reap(svc: Services) -> int:
    """Sessions and challenges ended a day ago; KYC callback ids far past the timestamp tolerance."""
    now = svc.now()
    async with svc.db.connection() as conn:
        return await store.reap(conn, now - timedelta(days=1),
                                now - timedelta(seconds=10 * svc.settings.sign_in.kyc_tolerance_s),
                                svc.settings.workers.batch_max)
