"""Pay-codes: the customer shows a one-time code, the counter scans it and charges it.

Invariants:
- a code is 18 digits: the gateway's 2-digit prefix and 16 random digits; only a keyed hash is
  stored (the code is a bearer credential for its minute), with a masked form for people;
- a code is bound to the wallet holder and the device it was issued to, valid for
  ``pay_code_ttl_s``, and charged at most once: the code row is locked and marked used in the
  charge's transaction; the risk rules judge the charge by that device (``risk.issued_to``);
- above the PIN threshold, or when a risk rule asks the PIN or a one-time code (nobody at the counter
  can answer: ``services.risk.check`` with ``hold``), the charge waits for the payer's confirmation in
  the app (``requires_action``) with the amount held; the worker reverses it if it is not confirmed in
  time;
- a charge naming ``payment`` settles that open payment of the counter (locked after the code,
  refused ``payment_not_payable`` if a QR code or a tap paid it first); without it the charge
  creates its payment (the single-call form).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from gateway.auth.principals import Principal
from gateway.domain import ids, metadata
from gateway.domain.ids import Kind, decode
from gateway.domain.money import check_amount, currency
from gateway.domain.payments import CaptureMethod, Payment, Status
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.services import payments, pins, qr, risk, views
from gateway.services.context import Services
from gateway.services.idempotency import Reply, RequestIdentity
from gateway.store import codes, tenants
from gateway.store import payments as payment_store
from gateway.store.db import Connection

CODE_LENGTH = 18
_DRAWS_MAX = 5


def _hash(svc: Services, code: str) -> bytes:
    return hmac.new(svc.settings.auth.api_key_pepper.encode(), b"paycode:" + code.encode(), hashlib.sha256).digest()


def _mask(code: str) -> str:
    return code[:4] + "*" * (len(code) - 8) + code[-4:]


def is_ours(svc: Services, text: str) -> bool:
    return len(text) == CODE_LENGTH and text.isascii() and text.isdigit() and text.startswith(
        svc.settings.wallet.pay_code_prefix
    )


async def issue(svc: Services, who: Principal, device_id: str | None) -> views.PayCodeView:
    """A fresh code for the holder's device. No idempotency record: its answer holds the code in clear."""
    if not device_id:
        raise InvalidRequest("pay-codes are bound to a device: log in with a device_id", code="device_required",
                             param="device_id")
    expires_at = svc.now() + timedelta(seconds=svc.settings.wallet.pay_code_ttl_s)
    async with svc.db.connection() as conn:
        for _ in range(_DRAWS_MAX):
            code = svc.settings.wallet.pay_code_prefix + f"{secrets.randbelow(10**16):016d}"
            if await codes.insert_pay_code(conn, _hash(svc, code), who.id, device_id, _mask(code), expires_at):
                break
        else:
            raise Conflict("could not draw a free pay-code; retry", code="pay_code_exhausted")
    svg = await qr.render(code, "svg")
    return views.PayCodeView(code=code, expires_at=expires_at.isoformat(), device_id=device_id, qr_svg=svg.decode())


@dataclass(frozen=True, slots=True)
class Charge:
    pay_code: str
    amount: int
    currency: str
    merchant_reference: str | None
    description: str | None
    store: str | None
    capture_method: CaptureMethod | None  # None: automatic, for a new payment
    payment: str | None = None
    metadata: dict[str, Any] | None = None


@payments.counted("pay_code")
async def charge(svc: Services, who: Principal, req: Charge, identity: RequestIdentity) -> Reply:
    """The counter charges a scanned pay-code: one transaction authorises the payment it names, or
    creates one and authorises it."""
    assert who.merchant_id is not None
    merchant_id = who.merchant_id
    if not is_ours(svc, req.pay_code):
        raise InvalidRequest("not a pay-code of this gateway", code="pay_code_foreign", param="pay_code")
    if req.payment is not None:
        for name in ("description", "store", "capture_method", "metadata"):
            if getattr(req, name) is not None:
                raise InvalidRequest(f"{name} describes a new payment; the named payment has its own",
                                     code="parameter_unexpected", param=name)
    amount = check_amount(req.amount)
    pairs = metadata.check(req.metadata or {})
    cur = currency(req.currency).code
    store_id = decode(Kind.STORE, req.store) if req.store else who.store_id
    if req.store and (store_id is None or (who.store_id is not None and store_id != who.store_id)):
        raise NotFound(f"no such store: {req.store}", param="store")
    code_hash = _hash(svc, req.pay_code)
    async with svc.db.connection() as conn:
        head = await codes.take_pay_code(conn, code_hash, svc.now())
    if head is None:
        raise NotFound("this pay-code is not known to the gateway", code="pay_code_unknown", param="pay_code")
    holder_id = head["holder_id"]
    accounts = await payments.payer_accounts(svc, holder_id, merchant_id, cur)
    needs_pin = pins.needed(svc, cur, amount)

    async def work(conn: Connection) -> tuple[int, Any]:
        code_row = await codes.take_pay_code(conn, code_hash, svc.now())
        assert code_row is not None
        if code_row["used_at"] is not None:
            raise Conflict("this pay-code has been used", code="pay_code_used", param="pay_code")
        if code_row["expires_at"] <= svc.now():
            raise Conflict("this pay-code has expired; ask for a fresh one", code="pay_code_expired",
                           param="pay_code")
        if req.payment is not None:
            row = await payments.counter_payment_locked(conn, who, req.payment, amount, cur, req.merchant_reference)
            await codes.use_pay_code(conn, code_hash, row["id"])
            updated = await payments.authorize_locked(svc, conn, row, holder_id, accounts, channel="pay_code",
                                                      needs_confirmation=needs_pin, confirmable=True)
            return 200, views.payment_view(updated)
        merchant = await tenants.merchant(conn, merchant_id)
        assert merchant is not None
        if store_id is not None and await tenants.store(conn, store_id, merchant_id) is None:
            raise NotFound(f"no such store: {req.store}", param="store")
        new = Payment(
            id=ids.new(), merchant_id=merchant_id, amount_minor=amount, currency=cur,
            status=Status.REQUIRES_PAYMENT_METHOD, capture_method=req.capture_method or CaptureMethod.AUTOMATIC,
            expires_at=svc.now() + timedelta(seconds=svc.settings.payments.expiry_default_s),
        )
        row = await payment_store.insert(conn, new, store_id=store_id, terminal_id=who.terminal_id,
                                         merchant_reference=req.merchant_reference, description=req.description,
                                         fee_bps=merchant["fee_bps"], channel="pay_code", metadata=pairs)
        await payment_store.insert_event(conn, "payment.created", new.id, views.payment_view(row),
                                         merchant_id=merchant_id, holder_id=holder_id)
        await codes.use_pay_code(conn, code_hash, new.id)
        updated = await payments.authorize_locked(svc, conn, row, holder_id, accounts, channel="pay_code",
                                                  needs_confirmation=needs_pin, confirmable=True)
        return 201, views.payment_view(updated)

    with risk.issued_to(head["device_id"]):  # the rules judge the holder's phone, not the counter
        return await svc.idempotency.run(identity, work, refused=risk.record_refusal)
