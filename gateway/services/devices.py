"""POS devices: enrolment with a one-time code, device tokens, renewal, revocation, fleet health.

Invariants: enrolment codes and device secrets are stored only as keyed hashes and shown once;
a device token is accepted only while its device and terminal are active (checked on every
request, so revocation takes effect at once); a device acts only for its own merchant, store
and terminal. A heartbeat is one UPDATE of its device's row; a terminal shows the health of its
active agent seen last.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid
from datetime import timedelta
from functools import partial
from typing import Any

import msgspec

from gateway.auth.principals import Principal, PrincipalKind
from gateway.domain.ids import Kind, decode, encode
from gateway.errors import Forbidden, NotFound, Unauthenticated
from gateway.services import audit, pages, throttle, views
from gateway.services.context import Services
from gateway.services.idempotency import Reply, RequestIdentity
from gateway.store import devices as store
from gateway.store.db import Connection

log = logging.getLogger(__name__)

DEVICE_AUDIENCE = "device"
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I


class EnrolmentCodeView(msgspec.Struct, kw_only=True):
    object: str = "enrolment_code"
    code: str
    terminal: str
    expires_at: views.Timestamp


class DeviceTokenView(msgspec.Struct, kw_only=True):
    object: str = "device_token"
    access_token: str
    token_type: str = "Bearer"
    expires_in: int


class EnrolmentView(msgspec.Struct, kw_only=True):
    object: str = "device_enrolment"
    device: str
    device_secret: str
    merchant: str
    store: str
    terminal: str
    access_token: str
    token_type: str = "Bearer"
    expires_in: int


class HeartbeatView(msgspec.Struct, kw_only=True):
    object: str = "device_heartbeat"
    device: str
    terminal: str
    last_seen_at: views.Timestamp


def _keyed(svc: Services, purpose: str, secret: str) -> bytes:
    return hmac.new(svc.settings.auth.api_key_pepper.encode(), f"{purpose}:{secret}".encode(), hashlib.sha256).digest()


def _normalise_code(code: str) -> str:
    return code.strip().upper().replace(" ", "")


def _token(svc: Services, device: Any) -> tuple[str, int]:
    ttl_s = svc.settings.devices.token_ttl_s
    token = svc.tokens.issue(device["id"], DEVICE_AUDIENCE, ttl_s, mid=str(device["merchant_id"]),
                             sid=str(device["store_id"]), tid=str(device["terminal_id"]))
    return token, ttl_s


async def create_enrolment_code(svc: Services, who: Principal, text_terminal: str) -> EnrolmentCodeView:
    """A one-time code for the agent at this terminal. Not kept for idempotent replay: it is a secret."""
    terminal_id = decode(Kind.TERMINAL, text_terminal)
    async with svc.db.connection() as conn, conn.transaction():
        # A merchant reaches its own terminals; an operator (no merchant) reaches any.
        terminal = await store.terminal(conn, terminal_id, who.merchant_id) if terminal_id else None
        if terminal is None or terminal["status"] != "active":
            raise NotFound(f"no such active terminal: {text_terminal}", param="id")
        code = "ENR-" + "-".join("".join(secrets.choice(_CODE_ALPHABET) for _ in range(4)) for _ in range(3))
        expires_at = svc.now() + timedelta(seconds=svc.settings.devices.enrolment_code_ttl_s)
        await store.insert_enrolment_code(conn, _keyed(svc, "enrol", code), terminal["id"], terminal["merchant_id"],
                                          expires_at)
        await audit.record(conn, who, "terminal.enrolment_code_created", terminal["id"],
                           {"object": "terminal", "id": encode(Kind.TERMINAL, terminal["id"]),
                            "enrolment_code_expires_at": expires_at.isoformat()}, merchant_id=terminal["merchant_id"])
    return EnrolmentCodeView(code=code, terminal=text_terminal, expires_at=expires_at.isoformat())


async def enrol(svc: Services, code: str, name: str, address: str | None = None) -> EnrolmentView:
    normalised = _normalise_code(code)
    attempt = await throttle.admit(svc, throttle.Kind.ENROLMENT, normalised, address)
    secret = "ds_" + secrets.token_urlsafe(32)
    async with svc.db.connection() as conn, conn.transaction():
        taken = await store.take_enrolment_code(conn, _keyed(svc, "enrol", normalised), svc.now())
        if taken is None:
            log.warning("device enrolment refused: unknown, used or expired code", extra={"client_address": address})
            raise Unauthenticated("the enrolment code is unknown, used or expired", code="invalid_enrolment_code")
        device = await store.insert_device(conn, uuid.uuid4(), taken["merchant_id"], taken["store_id"],
                                           taken["terminal_id"], name, _keyed(svc, "device", secret))
        await audit.record(conn, audit.Actor("device", device["id"]), "terminal.enrolled", device["terminal_id"],
                           {"object": "device", "id": encode(Kind.DEVICE, device["id"]), "name": name,
                            "store": encode(Kind.STORE, device["store_id"]),
                            "terminal": encode(Kind.TERMINAL, device["terminal_id"])},
                           merchant_id=device["merchant_id"])
    log.info("device enrolled", extra={"device_id": str(device["id"]), "terminal_id": str(device["terminal_id"]),
                                       "merchant_id": str(device["merchant_id"])})
    await throttle.succeeded(svc, attempt)
    token, ttl_s = _token(svc, device)
    return EnrolmentView(
        device=encode(Kind.DEVICE, device["id"]), device_secret=secret,
        merchant=encode(Kind.MERCHANT, device["merchant_id"]), store=encode(Kind.STORE, device["store_id"]),
        terminal=encode(Kind.TERMINAL, device["terminal_id"]), access_token=token, expires_in=ttl_s,
    )


async def renew(svc: Services, text_device: str, secret: str, address: str | None = None) -> DeviceTokenView:
    attempt = await throttle.admit(svc, throttle.Kind.DEVICE, text_device, address)
    device_id = decode(Kind.DEVICE, text_device)
    async with svc.db.connection() as conn:
        device = await store.device(conn, device_id) if device_id else None
        standing = await store.device_standing(conn, device["id"]) if device is not None else None
    given = _keyed(svc, "device", secret)
    if device is None or standing is None or not hmac.compare_digest(bytes(device["secret_hash"]), given):
        log.warning("device session refused", extra={"device_id": str(device["id"]) if device else None,
                                                     "client_address": address})
        raise Unauthenticated("unknown device or wrong secret", code="invalid_device_credentials")
    _check_standing(standing)
    await throttle.succeeded(svc, attempt)
    token, ttl_s = _token(svc, device)
    return DeviceTokenView(access_token=token, expires_in=ttl_s)


def _check_standing(standing: store.Standing) -> None:
    """Revoked: the device's credentials are dead. Suspended merchant: no API access for any of its
    credentials (as for its API keys), so its counters neither sell nor refund until it is reactivated."""
    if not standing.active:
        raise Unauthenticated("this device has been revoked", code="device_revoked")
    if not standing.merchant_active:
        raise Forbidden("the merchant is suspended", code="merchant_suspended")


async def principal(svc: Services, credential: str) -> Principal:
    claims = svc.tokens.verify(credential, DEVICE_AUDIENCE)
    device_id = svc.tokens.uuid_claim(claims, "sub")
    async with svc.db.connection() as conn:
        _check_standing(await store.device_standing(conn, device_id))
    return Principal(PrincipalKind.DEVICE, device_id, merchant_id=svc.tokens.uuid_claim(claims, "mid"),
                     store_id=svc.tokens.uuid_claim(claims, "sid"), terminal_id=svc.tokens.uuid_claim(claims, "tid"))


async def heartbeat(
    svc: Services, who: Principal, agent_version: str, backlog_count: int, backlog_oldest_age_s: int | None
) -> HeartbeatView:
    """The agent's periodic report (version, offline backlog): overwritten in place, so a retry is harmless."""
    assert who.kind is PrincipalKind.DEVICE and who.terminal_id is not None
    async with svc.db.connection() as conn:
        seen_at = await store.record_heartbeat(conn, who.id, agent_version, backlog_count, backlog_oldest_age_s)
    if seen_at is None:  # revoked between authentication and the write
        raise Unauthenticated("this device has been revoked", code="device_revoked")
    return HeartbeatView(device=encode(Kind.DEVICE, who.id), terminal=encode(Kind.TERMINAL, who.terminal_id),
                         last_seen_at=seen_at.isoformat())


async def get_terminal(svc: Services, who: Principal, text_terminal: str) -> views.TerminalView:
    """A merchant sees its own terminals; an operator (no merchant) any. Another's is not found."""
    terminal_id = decode(Kind.TERMINAL, text_terminal)
    async with svc.db.connection() as conn:
        row = await store.terminal_with_agent(conn, terminal_id, who.merchant_id) if terminal_id else None
    if row is None:
        raise NotFound(f"no such terminal: {text_terminal}", param="id")
    return views.terminal_view(row)


async def list_terminals(svc: Services, who: Principal, page: pages.PageRequest) -> views.TerminalList:
    async with svc.db.connection() as conn:
        rows, has_more = await pages.read(conn, store.terminals_query(who.merchant_id), page,
                                          partial(decode, Kind.TERMINAL))
    return views.TerminalList(data=[views.terminal_view(r) for r in rows], has_more=has_more)


async def revoke_terminal(svc: Services, who: Principal, text_terminal: str, identity: RequestIdentity) -> Reply:
    terminal_id = decode(Kind.TERMINAL, text_terminal)
    if terminal_id is None:
        raise NotFound(f"no such terminal: {text_terminal}", param="id")

    async def work(conn: Connection) -> tuple[int, Any]:
        terminal = await store.terminal(conn, terminal_id, who.merchant_id)
        scope = terminal["merchant_id"] if terminal else None
        revoked = await store.revoke_terminal(conn, terminal_id, scope) if scope else None
        if revoked is None:
            raise NotFound(f"no such terminal: {text_terminal}", param="id")
        view = views.terminal_view(await store.terminal_with_agent(conn, revoked["id"], scope))
        await audit.record(conn, who, "terminal.revoked", terminal_id, view, merchant_id=scope)
        return 200, view

    return await svc.idempotency.run(identity, work)
