"""Scan-to-pay: dynamic codes for one payment, static codes for a store, and the payer's side.

Invariants:
- a dynamic code pays its payment at most once: the payment row and the code row are locked
  in the payer's transaction, and the code is marked used in it;
- a code is refused, with its reason, once used, past its time to live, or when its payment
  can no longer be paid; nothing about a code is trusted but its token, looked up here;
- images are pure functions of the payload: rendered off the event loop, cached per process.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import asyncpg

from gateway.auth.principals import Principal
from gateway.domain import checkout_qr, emv_qr, ids
from gateway.domain.ids import Kind, decode, encode
from gateway.domain.money import check_amount, currency, currency_by_numeric
from gateway.domain.payments import CaptureMethod, Payment, Status
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.render import qr_image
from gateway.services import fx_payments, payments, pins, promotions, risk, views
from gateway.services.context import Services
from gateway.services.idempotency import Reply, RequestIdentity
from gateway.store import codes, tenants
from gateway.store import payments as payment_store
from gateway.store.db import Connection

_FIXED_MASK = 0  # any mask decodes; fixing it makes rendering ~5x faster (see render/qr_image.py)


def _face(merchant: asyncpg.Record) -> checkout_qr.MerchantFace:
    return checkout_qr.MerchantFace(
        name=merchant["name"], city=merchant["city"], mcc=merchant["mcc"], country=merchant["country"],
        name_local=merchant["name_local"], city_local=merchant["city_local"], language_local=merchant["language_local"],
    )


def _view(svc: Services, row: asyncpg.Record) -> views.QrCodeView:
    base = f"/v1/qr_codes/{row['token']}"
    return views.QrCodeView(
        kind=row["kind"], payload=row["payload"],
        payment=encode(Kind.PAYMENT, row["payment_id"]) if row["payment_id"] else None,
        store=encode(Kind.STORE, row["store_id"]) if row["store_id"] else None,
        expires_at=row["expires_at"].isoformat() if row["expires_at"] else None,
        image_png=f"{base}/image.png", image_svg=f"{base}/image.svg",
    )


async def issue_dynamic(
    svc: Services, who: Principal, text_id: str, ttl_s: int | None, terminal_label: str | None,
    identity: RequestIdentity,
) -> Reply:
    assert who.merchant_id is not None
    pid = payments.payment_id(text_id)
    ttl = svc.settings.qr.ttl_default_s if ttl_s is None else ttl_s
    if not 30 <= ttl <= svc.settings.qr.ttl_max_s:
        raise InvalidRequest(f"ttl must be 30-{svc.settings.qr.ttl_max_s} seconds", code="invalid_ttl", param="ttl")

    async def work(conn: Connection) -> tuple[int, Any]:
        row = await payment_store.get(conn, pid, merchant_id=who.merchant_id, for_update=True)
        if row is None:
            raise NotFound(f"no such payment: {text_id}", param="id")
        return 201, _view(svc, await issue_locked(svc, conn, row, ttl, terminal_label))

    return await svc.idempotency.run(identity, work)


async def issue_locked(
    svc: Services, conn: Connection, row: asyncpg.Record, ttl_s: int, terminal_label: str | None
) -> asyncpg.Record:
    """A new dynamic code for a payment row locked by the caller; the code lives at most as long as it."""
    payment = store_domain(row)
    if payment.status is not Status.REQUIRES_PAYMENT_METHOD:
        raise Conflict(f"the payment is {payment.status.value}; it cannot be paid", code="payment_not_payable",
                       status_now=payment.status.value)
    merchant = await tenants.merchant(conn, row["merchant_id"])
    assert merchant is not None
    cur = currency(row["currency"])
    token = secrets.token_urlsafe(12)
    reference = row["merchant_reference"] or row["id"].hex[:25]
    try:
        payload = checkout_qr.dynamic(svc.settings.qr.scheme_id, token, _face(merchant), cur.numeric,
                                      row["amount_minor"], cur.exponent, reference, terminal_label)
    except emv_qr.QrFormatError as exc:  # the payment's or the request's text cannot go in a QR code
        raise InvalidRequest(f"this payment cannot be put in a QR code: {exc}", code="qr_not_encodable",
                             param=_QR_FIELD_PARAM.get(exc.id or "", None), qr_error=str(exc.code)) from None
    expires_at = min(svc.now() + timedelta(seconds=ttl_s), row["expires_at"])
    return await codes.insert_qr(conn, token, "dynamic", row["merchant_id"], row["store_id"], row["id"], payload,
                                 expires_at)


# Which request or payment field ends up in which QR field, to name it in an error.
_QR_FIELD_PARAM = {"54": "amount", "62": "terminal_label"}
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def store_domain(row: asyncpg.Record) -> Payment:
    return payment_store.to_domain(row)


async def static_for_store(svc: Services, who: Principal, text_store: str, currency_code: str) -> views.QrCodeView:
    """The store's reusable code (made on first request): no amount, the payer types it in."""
    assert who.merchant_id is not None
    store_id = decode(Kind.STORE, text_store)
    cur = currency(currency_code)

    async def work(conn: Connection) -> views.QrCodeView:
        store_row = await tenants.store(conn, store_id, who.merchant_id) if store_id else None  # type: ignore[arg-type]
        if store_row is None:
            raise NotFound(f"no such store: {text_store}", param="store")
        existing = await codes.static_qr(conn, store_row["id"])
        if existing is not None:
            if emv_qr.parse(existing["payload"]).currency_numeric != f"{cur.numeric:03d}":
                raise Conflict("this store's static code is in another currency", code="static_code_currency",
                               param="currency")
            return _view(svc, existing)
        merchant = await tenants.merchant(conn, store_row["merchant_id"])
        assert merchant is not None
        token = secrets.token_urlsafe(12)
        payload = checkout_qr.static(svc.settings.qr.scheme_id, token, _face(merchant), cur.numeric, store_row["name"])
        return _view(svc, await codes.insert_qr(conn, token, "static", store_row["merchant_id"], store_row["id"],
                                                None, payload, None))

    try:
        return await svc.db.run(work)
    except asyncpg.UniqueViolationError:  # two first requests raced: the other one made it
        return await svc.db.run(work)


def _token(svc: Services, payload_text: str) -> tuple[str, emv_qr.MerchantPayload]:
    try:
        payload = emv_qr.parse(payload_text.strip())
    except emv_qr.QrFormatError as exc:
        raise InvalidRequest(f"not a valid EMV QR payload: {exc}", code="invalid_qr_payload", param="payload",
                             qr_error=str(exc.code)) from None
    token = checkout_qr.token_of(payload, svc.settings.qr.scheme_id)
    if token is None:
        raise InvalidRequest("this QR code belongs to another payment scheme", code="qr_code_foreign", param="payload")
    return token, payload


def _refuse_if_unknown(qr_row: asyncpg.Record | None, payload_text: str) -> asyncpg.Record:
    """The code the gateway issued, exactly: preview and pay refuse the same scanned texts."""
    if qr_row is None:
        raise NotFound("this QR code is not known to the gateway", code="qr_code_unknown", param="payload")
    if payload_text.strip() != qr_row["payload"]:
        # Only the token is looked up: every other field must be the gateway's own, untouched.
        raise InvalidRequest("this QR code was altered", code="qr_code_altered", param="payload")
    return qr_row


def _refuse_if_unusable(svc: Services, qr_row: asyncpg.Record | None, payment: asyncpg.Record | None) -> None:
    if qr_row is None:
        raise NotFound("this QR code is not known to the gateway", code="qr_code_unknown", param="payload")
    if qr_row["kind"] == "static":
        return
    if qr_row["used_at"] is not None or (payment is not None and payment["status"] != "requires_payment_method"):
        status = payment["status"] if payment is not None else "succeeded"
        if status in ("canceled", "expired"):
            raise Conflict(f"the payment of this QR code was {status}", code=f"payment_{status}", param="payload")
        raise Conflict("this QR code has been paid already", code="qr_code_used", param="payload")
    if qr_row["expires_at"] <= svc.now():
        raise Conflict("this QR code has expired", code="qr_code_expired", param="payload")


async def preview(svc: Services, who: Principal, payload_text: str) -> views.QrPreviewView:
    token, payload = _token(svc, payload_text)
    async with svc.db.connection() as conn:
        qr_row = _refuse_if_unknown(await codes.qr(conn, token), payload_text)
        payment = await payment_store.get(conn, qr_row["payment_id"]) if qr_row["payment_id"] else None
        _refuse_if_unusable(svc, qr_row, payment)
        merchant = await tenants.merchant(conn, qr_row["merchant_id"])
        store_row = await tenants.store(conn, qr_row["store_id"], qr_row["merchant_id"]) if qr_row["store_id"] else None
        offer = cashback = None
        if payment is not None:  # a manual payment's authorisation reserves its discount (migration 0031)
            offer = await promotions.offer_for(svc.campaigns, conn, payment, who.id, svc.now())
            if payment["capture_method"] == CaptureMethod.AUTOMATIC.value:  # as payments.get
                cashback = await promotions.cashback_offer_for(svc.campaigns, conn, payment, who.id, svc.now(),
                                                               offer)
        fx_offer = None
        if payment is not None:
            offer, fx_offer = await fx_payments.offers(svc, conn, who.id, payment, offer)
    assert merchant is not None
    if payment is not None:
        code = payment["currency"]
    else:
        found = currency_by_numeric(int(payload.currency_numeric))
        if found is None:
            raise InvalidRequest("the code names an unknown currency", code="invalid_qr_payload", param="payload")
        code = found.code
    amount = payment["amount_minor"] if payment else None
    return views.QrPreviewView(
        kind=qr_row["kind"], payment=encode(Kind.PAYMENT, payment["id"]) if payment else None,
        status=payment["status"] if payment else None, merchant_name=merchant["name"],
        merchant_name_local=merchant["name_local"], store_name=store_row["name"] if store_row else None,
        amount=amount, currency=code, expires_at=qr_row["expires_at"].isoformat() if qr_row["expires_at"] else None,
        pin_required=amount is not None and pins.needed(svc, code, amount), discount_offer=offer, fx_offer=fx_offer,
        cashback_offer=cashback,
    )


@payments.counted("qr")
async def pay(
    svc: Services, who: Principal, payload_text: str, amount: int | None, pin: str | None, identity: RequestIdentity,
    fx_quote: str | None = None,
) -> Reply:
    """Pay a scanned code: a dynamic code pays its payment; a static one creates and pays a payment.
    With ``fx_quote``, from another of the wallet's currencies through that quote (fx_payments.py)."""
    token, payload = _token(svc, payload_text)
    async with svc.db.connection() as conn:
        qr_row = _refuse_if_unknown(await codes.qr(conn, token), payload_text)
        head = await payment_store.get(conn, qr_row["payment_id"]) if qr_row["payment_id"] else None
    if qr_row["kind"] == "dynamic":
        assert head is not None
        if amount is not None and amount != head["amount_minor"]:
            raise InvalidRequest("a dynamic code fixes the amount", code="amount_mismatch", param="amount")
        cur_code, amount_minor = head["currency"], head["amount_minor"]
    else:
        if amount is None:
            raise InvalidRequest("a static code needs the amount the payer enters", code="amount_required",
                                 param="amount")
        amount_minor = check_amount(amount)
        found = currency_by_numeric(int(payload.currency_numeric))
        if found is None:
            raise InvalidRequest("the code names an unknown currency", code="invalid_qr_payload", param="payload")
        cur_code = found.code
    accounts = await payments.payer_accounts(svc, who.id, qr_row["merchant_id"], cur_code)
    funding = None if fx_quote is None else await fx_payments.prepare(svc, who.id, fx_quote, cur_code)

    # A PIN given is verified even below the threshold: a risk rule may ask for it (services.risk).
    pin_checked = pins.needed(svc, cur_code, amount_minor) or pin is not None

    async def checks(conn: Connection) -> None:
        _refuse_if_unusable(svc, qr_row, head)
        if pin_checked:
            await pins.verify(svc, who.id, pin, conn)

    async def work(conn: Connection) -> tuple[int, Any]:
        locked_qr = await codes.qr(conn, token, for_update=True)
        if qr_row["kind"] == "dynamic":
            row = await payment_store.get(conn, qr_row["payment_id"], for_update=True)
            _refuse_if_unusable(svc, locked_qr, row)
            assert row is not None
            await codes.use_qr(conn, token)
        else:
            merchant = await tenants.merchant(conn, qr_row["merchant_id"])
            assert merchant is not None
            new = Payment(
                id=ids.new(), merchant_id=qr_row["merchant_id"], amount_minor=amount_minor, currency=cur_code,
                status=Status.REQUIRES_PAYMENT_METHOD, capture_method=CaptureMethod.AUTOMATIC,
                expires_at=svc.now() + timedelta(seconds=svc.settings.payments.expiry_default_s),
            )
            row = await payment_store.insert(conn, new, store_id=qr_row["store_id"], terminal_id=None,
                                             merchant_reference=None, description="static QR payment",
                                             fee_bps=merchant["fee_bps"], channel="qr")
            await payment_store.insert_event(conn, "payment.created", new.id, views.payment_view(row),
                                             merchant_id=new.merchant_id, holder_id=who.id)
        updated = await payments.authorize_locked(svc, conn, row, who.id, accounts, channel="qr", fx=funding)
        view = await payments.payer_view(conn, updated)
        return 200, view if funding is None else fx_payments.with_fx(view, await fx_payments.paid_with(conn, updated))

    # A declined dynamic code leaves its payment unpaid: a payment.failed event says why. (A static
    # code's payment is created by the work, so a decline leaves no payment to speak of.)
    refused = payments.record_decline(head["id"], who.id) if head is not None else risk.record_refusal
    with risk.holder_present(who.device_id, pin_verified=pin_checked):
        return await svc.idempotency.run(identity, work, before=checks, refused=refused)


class _ImageCache:
    """Bounded LRU of rendered images by (payload, format)."""

    def __init__(self, entries_max: int) -> None:
        self.entries_max = entries_max
        self.items: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    async def get(self, payload: str, fmt: str) -> bytes:
        key = (payload, fmt)
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        render = qr_image.render_png if fmt == "png" else qr_image.render_svg
        image = await asyncio.get_running_loop().run_in_executor(
            None, lambda: render(payload, mask_pattern=_FIXED_MASK)
        )
        self.items[key] = image
        while len(self.items) > self.entries_max:
            self.items.popitem(last=False)
        return image


_caches: dict[int, _ImageCache] = {}


async def image(svc: Services, who: Principal, token: str, fmt: str) -> bytes:
    """A code's image, for its merchant (secret or publishable key)."""
    return await _image_of(svc, token, fmt, lambda row: row["merchant_id"] == who.merchant_id)


async def payment_image(svc: Services, payment_id: uuid.UUID, token: str, fmt: str) -> bytes:
    """A code's image for whoever may see its payment (the hosted checkout, by the client secret)."""
    return await _image_of(svc, token, fmt, lambda row: row["payment_id"] == payment_id)


async def _image_of(svc: Services, token: str, fmt: str, allowed: Callable[[asyncpg.Record], bool]) -> bytes:
    if not (0 < len(token) <= 64 and set(token) <= _TOKEN_CHARS):
        raise NotFound("no such QR code", code="qr_code_unknown", param="token")
    async with svc.db.connection() as conn:
        row = await codes.qr(conn, token)
    if row is None or not allowed(row):
        raise NotFound("no such QR code", code="qr_code_unknown", param="token")
    cache = _caches.setdefault(id(svc), _ImageCache(svc.settings.qr.image_cache_entries))
    return await cache.get(row["payload"], fmt)


async def render(payload: str, fmt: str) -> bytes:
    """An image of any payload text (the pay-code's own QR, for instance), rendered off the loop."""
    render_fn = qr_image.render_png if fmt == "png" else qr_image.render_svg
    return await asyncio.get_running_loop().run_in_executor(None, lambda: render_fn(payload, mask_pattern=_FIXED_MASK))
