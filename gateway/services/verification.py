"""Verification level upgrades: an operator's audited action, or a signed callback of the KYC hook.

Invariants:
- a level never goes down and an upgrade never weakens a tier (``domain.verification.upgrade``, and
  the store's ``GREATEST``/``LEAST``): a replayed or late callback changes nothing;
- a KYC callback is verified (Standard Webhooks signature by ``sign_in.kyc_hook_secret``, timestamp
  within ``sign_in.kyc_tolerance_s``) on its raw bytes before it is parsed; its ``webhook-id`` is
  recorded in the upgrade's transaction, so a replay of it is refused (``callback_replayed``);
- every upgrade, operator or hook, is an audit event in its own transaction.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

from gateway.auth.principals import Principal
from gateway.domain import verification
from gateway.domain.ids import Kind, decode, encode
from gateway.domain.verification import Level
from gateway.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthenticated
from gateway.services import audit, views
from gateway.services.context import Services
from gateway.store import sign_in as store
from gateway.store.db import Connection

log = logging.getLogger(__name__)
KYC_HOOK = audit.Actor("kyc_hook", None)
LevelName = Literal["phone", "real_name", "bank_card", "in_person"]
Reference = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class KycCallback(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    holder: Annotated[str, msgspec.Meta(max_length=40)]
    level: LevelName
    reference: Reference | None = None


class KycCallbackView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "kyc_callback"
    holder: str
    verification_level: str
    tier: int
    changed: bool


class UpgradeView(msgspec.Struct, kw_only=True):
    object: str = "verification_upgrade"
    holder: views.WalletHolderView
    previous_level: str
    source: str  # operator | kyc_hook
    reference: str | None
    changed: bool


async def _upgrade(conn: Connection, holder_id: uuid.UUID, level: Level) -> tuple[views.WalletHolderView, Level,
                                                                                      verification.Upgrade] | None:
    row = await store.holder_level(conn, holder_id, lock=True)
    if row is None:
        return None
    before = Level(row["verification_level"])
    up = verification.upgrade(before, row["tier"], level)
    if up.changed:
        row = await store.set_level(conn, holder_id, up.level, up.tier)
    return views.holder_view(row), before, up


async def operator_upgrade(svc: Services, who: Principal, text_id: str, level_name: str, reference: str | None
                           ) -> UpgradeView:
    """Raise a holder's verification level (and so its tier); asking for a lower level than it has is refused."""
    level = Level.named(level_name)
    if level is None or level is Level.NONE:
        raise InvalidRequest(f"level is one of {verification.UPGRADABLE}", code="invalid_level", param="level")
    holder_id = decode(Kind.WALLET_HOLDER, text_id)
    async with svc.db.connection() as conn, conn.transaction():
        done = await _upgrade(conn, holder_id, level) if holder_id else None
        if done is None:
            raise NotFound(f"no such wallet holder: {text_id}", param="id")
        holder, before, up = done
        if level < before:
            raise Conflict(f"the holder is verified at {before.label} already; levels never go down",
                           code="verification_level_lower", param="level")
        view = UpgradeView(holder=holder, previous_level=before.label, source="operator", reference=reference,
                           changed=up.changed)
        assert holder_id is not None
        await audit.record(conn, who, "wallet.verification_upgraded", holder_id, view, merchant_id=None,
                           holder_id=holder_id)
    return view


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return headers.get(name)


async def kyc_callback(svc: Services, headers: Mapping[str, str], body: bytes) -> KycCallbackView:
    """A KYC provider's verdict: signature and timestamp checked on the raw body, then the upgrade, once."""
    settings = svc.settings.sign_in
    if not settings.kyc_hook_secret:
        raise Forbidden("KYC callbacks are not configured (sign_in.kyc_hook_secret)", code="kyc_hook_disabled")
    msg_id = _header(headers, "webhook-id")
    try:
        verification.verify_callback(settings.kyc_hook_secret, msg_id, _header(headers, "webhook-timestamp"),
                                     _header(headers, "webhook-signature"), body, int(svc.now().timestamp()),
                                     settings.kyc_tolerance_s)
    except verification.CallbackRefused as exc:
        log.warning("KYC callback refused", extra={"reason": exc.code})
        raise Unauthenticated(str(exc), code=exc.code) from None
    assert msg_id is not None
    try:
        payload = msgspec.json.decode(body, type=KycCallback)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidRequest(f"the callback body is not valid: {exc}", code="invalid_callback") from None
    level = Level.named(payload.level)
    assert level is not None
    holder_id = decode(Kind.WALLET_HOLDER, payload.holder)
    async with svc.db.connection() as conn, conn.transaction():
        if not await store.insert_kyc_callback(conn, msg_id, holder_id, int(level)):
            raise Conflict("this callback (webhook-id) was received already", code="callback_replayed")
        done = await _upgrade(conn, holder_id, level) if holder_id else None
        if done is None:
            raise NotFound(f"no such wallet holder: {payload.holder}", param="holder")
        holder, before, up = done
        assert holder_id is not None
        view = UpgradeView(holder=holder, previous_level=before.label, source="kyc_hook",
                           reference=payload.reference, changed=up.changed)
        await audit.record(conn, KYC_HOOK, "wallet.verification_upgraded", holder_id, view, merchant_id=None,
                           holder_id=holder_id)
    return KycCallbackView(id=msg_id, holder=encode(Kind.WALLET_HOLDER, holder_id), verification_level=up.level.label,
                           tier=up.tier, changed=up.changed)
