"""NFC taps: provisioning wallet phones, and authorising their taps at enrolled POS devices.

Invariants:
- the gateway is the issuer: it keeps the issuer master key and derives a phone's ICC master key
  whenever needed; that key leaves the gateway once, in the provisioning answer, and is never
  stored or logged; token PANs are stored as keyed hashes with their last four digits;
- a tap moves money only if its ARQC verifies over the exact amount, currency and unpredictable
  number the terminal sent, and its ATC is above every ATC the token used before (the counter is
  burnt in its own transaction, so even a declined tap cannot be replayed);
- a tap is idempotent by the terminal's transaction id;
- the risk rules judge a tap by the phone its token was provisioned to (``risk.issued_to``), not by the
  terminal that read it;
- a tap naming ``payment`` settles that open payment of the counter (the sale's, also offered by
  QR): its row is locked after the counter is burnt, so of a tap and a QR payment racing for it
  exactly one authorises it and the other is refused ``payment_not_payable``; without
  ``payment`` the tap creates its own (offline taps forwarded later, single-call clients).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import msgspec

from gateway.auth.principals import Principal
from gateway.domain import cryptogram, ids
from gateway.domain.cryptogram import Tap, TapDataError
from gateway.domain.ids import Kind, decode, encode
from gateway.domain.money import check_amount, currency
from gateway.domain.payments import CaptureMethod, Payment, Status
from gateway.errors import Conflict, Declined, InvalidRequest, NotFound, Unavailable
from gateway.services import payments, risk, views
from gateway.services.context import Services
from gateway.services.idempotency import Reply, RequestIdentity
from gateway.store import devices as store
from gateway.store import payments as payment_store
from gateway.store import tenants
from gateway.store.db import Connection

log = logging.getLogger(__name__)
_DRAWS_MAX = 5
PSN = 1


class TapTokenView(msgspec.Struct, kw_only=True):
    object: str = "tap_token"
    token: str
    token_pan: str
    psn: int
    expiry_yymm: str
    icc_master_key: str  # shown in this answer only
    atc: int
    aid: str


def _pan_hash(svc: Services, pan: str) -> bytes:
    return hmac.new(svc.settings.auth.api_key_pepper.encode(), f"pan:{pan}".encode(), hashlib.sha256).digest()


def _issuer_key(svc: Services) -> bytes:
    if not svc.settings.issuer.imk_hex:
        raise Unavailable("NFC taps are not configured on this gateway (issuer.imk_hex)", code="taps_not_configured")
    return svc.settings.issuer.imk


async def provision(svc: Services, who: Principal) -> TapTokenView:
    """A payment token and its key for the holder's phone (the device it logged in with)."""
    imk = _issuer_key(svc)
    if not who.device_id:
        raise InvalidRequest("tap tokens are bound to a device: log in with a device_id", code="device_required",
                             param="device_id")
    issuer = svc.settings.issuer
    async with svc.db.connection() as conn:
        for _ in range(_DRAWS_MAX):
            body_length = issuer.token_pan_length - len(issuer.token_bin) - 1
            pan = cryptogram.luhn_complete(issuer.token_bin + f"{secrets.randbelow(10**body_length):0{body_length}d}")
            row = await store.insert_tap_token(conn, uuid.uuid4(), who.id, who.device_id, _pan_hash(svc, pan),
                                               pan[-4:], PSN, issuer.expiry_yymm)
            if row is not None:
                break
        else:
            raise Conflict("could not draw a free token; retry", code="token_exhausted")
    key = cryptogram.derive_icc_master_key(imk, pan, PSN)
    return TapTokenView(token=encode(Kind.TAP_TOKEN, row["id"]), token_pan=pan, psn=PSN,
                        expiry_yymm=issuer.expiry_yymm, icc_master_key=key.hex().upper(), atc=row["last_atc"],
                        aid=issuer.aid_hex)


class RevokedTapTokenView(msgspec.Struct, kw_only=True):
    object: str = "tap_token"
    token: str
    status: views.ActiveOrRevoked
    pan_last4: str


async def revoke(svc: Services, who: Principal, text_id: str) -> RevokedTapTokenView:
    token_id = decode(Kind.TAP_TOKEN, text_id)
    async with svc.db.connection() as conn:
        row = await store.revoke_tap_token(conn, token_id, who.id) if token_id else None
    if row is None:
        raise NotFound(f"no such tap token: {text_id}", param="id")
    return RevokedTapTokenView(token=text_id, status=row["status"], pan_last4=row["pan_last4"])


@dataclass(frozen=True, slots=True)
class TapRequest:
    terminal_transaction_id: str
    amount: int
    currency: str
    merchant_reference: str | None
    tap: dict[str, Any]
    payment: str | None = None


def _hex(value: Any, field: str) -> bytes:
    if not isinstance(value, str) or len(value) > 128:
        raise InvalidRequest(f"{field} must be hex text", code="invalid_tap_data", param=field)
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise InvalidRequest(f"{field} must be hex text", code="invalid_tap_data", param=field) from None


def parse_tap(raw: dict[str, Any]) -> Tap:
    terminal = raw.get("terminal")
    if not isinstance(terminal, dict):
        raise InvalidRequest("tap.terminal must be an object of tag -> hex", code="invalid_tap_data",
                             param="tap.terminal")
    for name in ("psn", "atc"):
        if isinstance(raw.get(name), bool) or not isinstance(raw.get(name), int):
            raise InvalidRequest(f"tap.{name} must be an integer", code="invalid_tap_data", param=f"tap.{name}")
    try:
        return Tap(
            token_pan=str(raw.get("token_pan", "")), psn=raw["psn"], atc=raw["atc"],
            arqc=_hex(raw.get("arqc"), "tap.arqc"), aip=_hex(raw.get("aip"), "tap.aip"),
            iad=_hex(raw.get("iad"), "tap.iad"),
            terminal={str(tag).upper(): _hex(value, f"tap.terminal.{tag}") for tag, value in terminal.items()},
        )
    except TapDataError as exc:
        raise InvalidRequest(str(exc), code="invalid_tap_data", param=exc.field) from None


@payments.counted("tap")
async def authorize(svc: Services, who: Principal, req: TapRequest, identity: RequestIdentity) -> Reply:
    assert who.merchant_id is not None and who.terminal_id is not None
    merchant_id, device_id = who.merchant_id, who.id
    amount = check_amount(req.amount)
    cur = currency(req.currency)
    tap = parse_tap(req.tap)
    if tap.amount_minor != amount or tap.currency_numeric != cur.numeric:
        raise Declined("the tap's cryptogram covers another amount or currency", code="amount_mismatch",
                       param="amount")
    async with svc.db.connection() as conn:
        token = await store.tap_token_by_pan(conn, _pan_hash(svc, tap.token_pan))
    if token is None:
        raise Declined("the tapped token is not known to the gateway", code="tap_token_unknown", param="tap")
    holder_id = token["holder_id"]
    accounts = await payments.payer_accounts(svc, holder_id, merchant_id, cur.code)

    async def checks(conn: Connection) -> None:
        if token["status"] != "active":
            raise Declined("the tapped token has been revoked", code="tap_token_revoked", param="tap")
        if token["psn"] != tap.psn or not cryptogram.arqc_is_valid(_issuer_key(svc), tap):
            log.warning("tap cryptogram refused", extra={"code": "cryptogram_invalid", "tap_token_id": str(token["id"]),
                                                         "merchant_id": str(merchant_id), "device_id": str(device_id)})
            raise Declined("the tap's cryptogram does not verify", code="cryptogram_invalid", param="tap")
        if not await store.claim_atc(conn, token["id"], tap.atc, device_id, req.terminal_transaction_id):
            log.warning("tap cryptogram refused", extra={"code": "atc_replayed", "tap_token_id": str(token["id"]),
                                                         "merchant_id": str(merchant_id), "device_id": str(device_id),
                                                         "atc": tap.atc})
            raise Declined("the tap's transaction counter was used before (a replay)", code="atc_replayed",
                           param="tap")

    async def work(conn: Connection) -> tuple[int, Any]:
        try:
            return await settle_or_create(conn)
        except payment_store.TerminalTransactionTaken:
            # The id went with another payment of this terminal (another agent enrolled on it, or a
            # retry after the idempotency record was purged): refused, that payment is untouched.
            raise Conflict("this terminal transaction id names another payment of the terminal",
                           code="terminal_transaction_id_used", param="terminal_transaction_id") from None

    async def settle_or_create(conn: Connection) -> tuple[int, Any]:
        if req.payment is not None:
            row = await payments.counter_payment_locked(conn, who, req.payment, amount, cur.code,
                                                        req.merchant_reference)
            # The phone verified its holder (CDCVM) before answering the tap: no PIN here.
            updated = await payments.authorize_locked(svc, conn, row, holder_id, accounts, channel="tap",
                                                      terminal_transaction_id=req.terminal_transaction_id)
            return 200, views.payment_view(updated)
        merchant = await tenants.merchant(conn, merchant_id)
        assert merchant is not None
        new = Payment(
            id=ids.new(), merchant_id=merchant_id, amount_minor=amount, currency=cur.code,
            status=Status.REQUIRES_PAYMENT_METHOD, capture_method=CaptureMethod.AUTOMATIC,
            expires_at=svc.now() + timedelta(seconds=svc.settings.payments.expiry_default_s),
        )
        row = await payment_store.insert(conn, new, store_id=who.store_id, terminal_id=who.terminal_id,
                                         merchant_reference=req.merchant_reference, description="NFC tap",
                                         fee_bps=merchant["fee_bps"], channel="tap",
                                         terminal_transaction_id=req.terminal_transaction_id)
        await payment_store.insert_event(conn, "payment.created", new.id, views.payment_view(row),
                                         merchant_id=merchant_id, holder_id=holder_id)
        # The phone verified its holder (CDCVM) before answering the tap: no PIN here.
        updated = await payments.authorize_locked(svc, conn, row, holder_id, accounts, channel="tap")
        return 201, views.payment_view(updated)

    with risk.issued_to(token["phone_device"]):  # the rules judge the holder's phone, not this terminal
        return await svc.idempotency.run(identity, work, before=checks, refused=risk.record_refusal)
