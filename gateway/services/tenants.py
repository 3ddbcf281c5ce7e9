"""Operator, merchant, store, terminal and API key use cases; authentication of requests."""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from functools import partial
from typing import Any

from gateway.auth import api_keys, passwords
from gateway.auth.principals import Principal, PrincipalKind
from gateway.domain import ledger
from gateway.domain.fees import FEE_BPS_MAX
from gateway.domain.ids import Kind, decode, encode
from gateway.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthenticated
from gateway.services import audit, devices, pages, revocations, throttle, views
from gateway.services.context import Services
from gateway.services.idempotency import Reply, RequestIdentity
from gateway.services.pages import PageRequest
from gateway.services.wallets import WALLET_AUDIENCE
from gateway.store import ledger as ledger_store
from gateway.store import tenants as store
from gateway.store.db import Connection

log = logging.getLogger(__name__)
OPERATOR_AUDIENCE = "operator"
ROLES = ("admin", "settlement", "support")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


async def create_operator(svc: Services, email: str, password: str, role: str) -> uuid.UUID:
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {ROLES}", code="invalid_role", param="role")
    if not _EMAIL_RE.match(email):
        raise InvalidRequest("not an email address", code="invalid_email", param="email")
    if len(password) < 12:
        raise InvalidRequest("operator passwords have at least 12 characters", code="weak_password", param="password")
    op_id = uuid.uuid4()
    password_hash = await passwords.hash_password(password)
    async with svc.db.connection() as conn, conn.transaction():
        created = await store.insert_operator(conn, op_id, email.lower(), password_hash, role)
        if created:
            await audit.record(conn, None, "operator.created", op_id,
                               {"id": encode(Kind.OPERATOR, op_id), "object": "operator", "role": role},
                               merchant_id=None)
    if not created:
        raise Conflict("an operator with this email exists", code="operator_exists", param="email")
    return op_id


async def operator_login(svc: Services, email: str, password: str, address: str | None = None) -> views.TokenView:
    attempt = await throttle.admit(svc, throttle.Kind.OPERATOR, email, address)  # before the hash
    async with svc.db.connection() as conn:
        row = await store.operator_by_email(conn, email.lower())
    if not await passwords.verify_password(row["password_hash"] if row else None, password) or row is None:
        # Who, never the e-mail itself: the operator's id when the account exists, else the e-mail's domain.
        log.warning("operator login failed", extra={
            "operator_id": str(row["id"]) if row else None, "email_domain": email.rpartition("@")[2].lower()[:64],
            "client_address": address})
        raise Unauthenticated("wrong email or password", code="invalid_credentials")
    await throttle.succeeded(svc, attempt)
    ttl_s = svc.settings.auth.operator_token_ttl_s
    return views.TokenView(token=svc.tokens.issue(row["id"], OPERATOR_AUDIENCE, ttl_s, role=row["role"]), expires_in=ttl_s)


async def authenticate(svc: Services, authorization: str | None) -> Principal:
    """The principal behind an ``Authorization: Bearer`` header: an API key or a JWT."""
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthenticated("send credentials as 'Authorization: Bearer <key or token>'", code="missing_credentials")
    credential = authorization[7:].strip()
    if not (credential.isascii() and credential.isprintable()) or len(credential) > 4096:
        raise Unauthenticated("the credential is malformed", code="invalid_token")
    kind = api_keys.kind_of(credential)
    if kind is not None:
        key = await svc.api_keys.lookup(api_keys.keyed_hash(svc.settings.auth.api_key_pepper, credential))
        if key is None:
            raise Unauthenticated("the API key is not valid or was revoked", code="invalid_api_key")
        if key.merchant_status != "active":
            raise Forbidden("the merchant is suspended", code="merchant_suspended")
        principal_kind = PrincipalKind.MERCHANT if kind == "secret" else PrincipalKind.PUBLISHABLE
        return Principal(principal_kind, key.key_id, merchant_id=key.merchant_id)
    audience = svc.tokens.unverified_audience(credential)
    if audience == OPERATOR_AUDIENCE:
        claims = svc.tokens.verify(credential, OPERATOR_AUDIENCE)
        return Principal(PrincipalKind.OPERATOR, svc.tokens.uuid_claim(claims, "sub"), role=str(claims.get("role")))
    if audience == devices.DEVICE_AUDIENCE:
        return await devices.principal(svc, credential)
    if audience == WALLET_AUDIENCE:
        claims = svc.tokens.verify(credential, WALLET_AUDIENCE)
        device = claims.get("did")
        holder_id = svc.tokens.uuid_claim(claims, "sub")
        session_id = svc.tokens.uuid_claim(claims, "sid") if "sid" in claims else None
        if svc.revocations is not None:
            await svc.revocations.check(holder_id, session_id, int(claims["iat"]))
        else:
            await revocations.check_in_database(svc.db, holder_id, session_id, int(claims["iat"]))
        return Principal(PrincipalKind.WALLET, holder_id, device_id=str(device) if device else None,
                         session_id=session_id)
    raise Unauthenticated("the token is not valid", code="invalid_token")


def merchant_id(text: str, param: str = "merchant") -> uuid.UUID:
    value = decode(Kind.MERCHANT, text)
    if value is None:
        raise NotFound(f"no such merchant: {text}", param=param)
    return value


async def create_merchant(
    svc: Services, name: str, mcc: str, country: str, city: str, fee_bps: int | None, identity: RequestIdentity,
    name_local: str | None = None, city_local: str | None = None, language_local: str | None = None,
) -> Reply:
    if not (len(mcc) == 4 and mcc.isdigit()):
        raise InvalidRequest("mcc is 4 digits (ISO 18245)", code="invalid_mcc", param="mcc")
    if not (len(country) == 2 and country.isalpha() and country.isupper()):
        raise InvalidRequest("country is an ISO 3166-1 alpha-2 code", code="invalid_country", param="country")
    rate = svc.settings.payments.fee_bps_default if fee_bps is None else fee_bps
    if not 0 <= rate <= FEE_BPS_MAX:
        raise InvalidRequest("fee_bps is between 0 and 10000", code="invalid_fee", param="fee_bps")
    if language_local is not None and not (len(language_local) == 2 and language_local.isascii()
                                           and language_local.isalpha()):
        raise InvalidRequest("language_local is an ISO 639-1 code", code="invalid_language", param="language_local")

    async def work(conn: Connection) -> tuple[int, Any]:
        row = await store.insert_merchant(conn, uuid.uuid4(), name, mcc, country, city, rate, name_local, city_local,
                                          language_local)
        view = views.merchant_view(row)
        await audit.record(conn, identity.actor, "merchant.created", row["id"], view, merchant_id=row["id"])
        return 201, view

    return await svc.idempotency.run(identity, work)


async def get_merchant(svc: Services, who: Principal, text_id: str) -> views.MerchantView:
    mid = merchant_id(text_id, "id")
    if who.kind is not PrincipalKind.OPERATOR and who.merchant_id != mid:
        raise NotFound(f"no such merchant: {text_id}", param="id")
    async with svc.db.connection() as conn:
        row = await store.merchant(conn, mid)
    if row is None:
        raise NotFound(f"no such merchant: {text_id}", param="id")
    return views.merchant_view(row)


async def set_merchant_status(svc: Services, text_id: str, status: str, identity: RequestIdentity) -> Reply:
    """Suspend (no API access, no payments) or reactivate a merchant."""
    mid = merchant_id(text_id, "id")

    async def work(conn: Connection) -> tuple[int, Any]:
        row = await store.set_merchant_status(conn, mid, status)
        if row is None:
            raise NotFound(f"no such merchant: {text_id}", param="id")
        view = views.merchant_view(row)
        await audit.record(conn, identity.actor, f"merchant.{'suspended' if status == 'suspended' else 'reactivated'}",
                           mid, view, merchant_id=mid)
        return 200, view

    try:
        return await svc.idempotency.run(identity, work)
    finally:
        svc.api_keys.evict(mid)  # after the commit: this process's next request sees the new status


async def list_merchants(svc: Services, page: PageRequest) -> views.MerchantList:
    async with svc.db.connection() as conn:
        rows, has_more = await pages.read(conn, store.all_merchants(), page, partial(decode, Kind.MERCHANT))
    return views.MerchantList(data=[views.merchant_view(r) for r in rows], has_more=has_more)


async def _require_merchant(conn: Connection, mid: uuid.UUID, text_id: str) -> None:
    if await store.merchant(conn, mid) is None:
        raise NotFound(f"no such merchant: {text_id}", param="merchant")


async def create_store(svc: Services, text_mid: str, name: str, city: str, identity: RequestIdentity) -> Reply:
    mid = merchant_id(text_mid)

    async def work(conn: Connection) -> tuple[int, Any]:
        await _require_merchant(conn, mid, text_mid)
        row = await store.insert_store(conn, uuid.uuid4(), mid, name, city)
        view = views.store_view(row)
        await audit.record(conn, identity.actor, "store.created", row["id"], view, merchant_id=mid)
        return 201, view

    return await svc.idempotency.run(identity, work)


async def create_terminal(
    svc: Services, text_mid: str, text_store: str, label: str, identity: RequestIdentity
) -> Reply:
    mid = merchant_id(text_mid)
    sid = decode(Kind.STORE, text_store)

    async def work(conn: Connection) -> tuple[int, Any]:
        await _require_merchant(conn, mid, text_mid)
        if sid is None or await store.store(conn, sid, mid) is None:
            raise NotFound(f"no such store of this merchant: {text_store}", param="store")
        row = await store.insert_terminal(conn, uuid.uuid4(), mid, sid, label)
        view = views.terminal_view(row)
        await audit.record(conn, identity.actor, "terminal.created", row["id"], view, merchant_id=mid)
        return 201, view

    return await svc.idempotency.run(identity, work)


async def create_api_key(svc: Services, text_mid: str, kind: str, identity: RequestIdentity) -> Reply:
    """A new key; its secret appears in this one answer only (and, for a retry, its replay)."""
    mid = merchant_id(text_mid)
    if kind not in api_keys.KINDS:
        raise InvalidRequest("kind is 'secret' or 'publishable'", code="invalid_key_kind", param="kind")

    async def work(conn: Connection) -> tuple[int, Any]:
        await _require_merchant(conn, mid, text_mid)
        secret = api_keys.generate(kind, svc.settings.auth.key_mode)
        key_hash = api_keys.keyed_hash(svc.settings.auth.api_key_pepper, secret)
        row = await store.insert_api_key(conn, uuid.uuid4(), mid, kind, api_keys.visible_prefix(secret), key_hash)
        await audit.record(conn, identity.actor, "api_key.created", row["id"], views.api_key_view(row), merchant_id=mid)
        log.info("api key created", extra={"api_key_id": str(row["id"]), "merchant_id": str(mid), "kind": kind,
                                           "key_prefix": row["prefix"]})
        return 201, views.api_key_view(row, secret=secret)

    # The stored replay must not keep the secret in clear: create keys without an idempotency record.
    return await svc.idempotency.run(dataclasses.replace(identity, key=None, cached=None, prefetched=False), work)


async def list_api_keys(svc: Services, who: Principal, text_mid: str, page: PageRequest) -> views.ApiKeyList:
    mid = merchant_id(text_mid)
    if who.kind is not PrincipalKind.OPERATOR and who.merchant_id != mid:
        raise NotFound(f"no such merchant: {text_mid}", param="merchant")
    async with svc.db.connection() as conn:
        rows, has_more = await pages.read(conn, store.merchant_api_keys(mid), page, partial(decode, Kind.API_KEY))
    return views.ApiKeyList(data=[views.api_key_view(r) for r in rows], has_more=has_more)


async def revoke_api_key(svc: Services, who: Principal, text_id: str, identity: RequestIdentity) -> Reply:
    key_id = decode(Kind.API_KEY, text_id)
    if key_id is None:
        raise NotFound(f"no such API key: {text_id}", param="id")
    scope = None if who.kind is PrincipalKind.OPERATOR else who.merchant_id
    revoked: list[uuid.UUID] = []  # the key's merchant, once known

    async def work(conn: Connection) -> tuple[int, Any]:
        row = await store.revoke_api_key(conn, key_id, scope)
        if row is None:
            raise NotFound(f"no such API key: {text_id}", param="id")
        revoked.append(row["merchant_id"])
        view = views.api_key_view(row)
        await audit.record(conn, who, "api_key.revoked", key_id, view, merchant_id=row["merchant_id"])
        log.info("api key revoked", extra={"api_key_id": str(key_id), "merchant_id": str(row["merchant_id"]),
                                           "key_prefix": row["prefix"]})
        return 200, view

    try:
        return await svc.idempotency.run(identity, work)
    finally:
        for merchant in revoked:  # after the commit: this process's next request is refused
            svc.api_keys.evict(merchant)


async def merchant_balance(svc: Services, who: Principal) -> views.MerchantBalanceView:
    assert who.merchant_id is not None
    async with svc.db.connection() as conn:
        rows = await ledger_store.accounts_of(conn, ledger.AccountKind.MERCHANT, who.merchant_id)
        sums = await ledger_store.balances_of(conn, [r[0] for r in rows])
    return views.MerchantBalanceView(
        balances=[views.BalanceView(currency=cur, available=sums[aid][0] - sums[aid][1], held=sums[aid][1],
                                    total=sums[aid][0]) for aid, cur in rows]
    )
