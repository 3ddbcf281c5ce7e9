"""Hosted checkout: what the payer's page shows, the status it follows, and its QR code's image.

Invariants:
- Everything is found by the payment id together with its client secret. A wrong or missing secret,
  an unknown payment and a payment made without a ``return_url`` are one and the same ``NotFound``
  (nothing tells them apart); a wrong secret is refused before any database read.
- The payer sees the payer's status (``domain.checkout.payer_status``): an open payment past its
  expiry is expired here even before the worker has marked it.
- An open payment's page always has a usable dynamic QR code: the latest of the payment's codes that
  is unused and valid for a while yet, or a new one issued with the payment row locked
  (``qr.issue_locked``, the issue path of ``POST /v1/payments/{id}/qr_codes``).
- Reads only, except that one issuance; each is one transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

import asyncpg

from gateway.domain import checkout
from gateway.domain.ids import Kind, decode, encode
from gateway.domain.money import Money, currency
from gateway.errors import NotFound
from gateway.services import qr, views
from gateway.services.context import Services
from gateway.store import codes, tenants
from gateway.store import payments as payment_store
from gateway.store.db import Connection

OPEN = "requires_payment_method"
# A code about to lapse is not shown: the payer needs time to scan and confirm.
QR_VALIDITY_MIN_S = 60


@dataclass(frozen=True, slots=True)
class CheckoutPage:
    payment: str
    status: str  # the payer's status
    merchant_name: str
    merchant_name_local: str | None
    merchant_language_local: str | None
    amount_text: str  # in the currency's own decimals: 1200 JPY, 38.00 CNY, 1.250 KWD
    currency: str
    description: str | None
    expires_at: datetime
    qr_token: str | None  # while the payment can be paid
    redirect_url: str | None  # once paid: return_url with ?payment=
    cancel_url: str | None


def _not_found() -> NotFound:
    return NotFound("no such checkout", code="checkout_unknown")


def _checked_id(svc: Services, text_id: str, secret: str) -> uuid.UUID:
    pid = decode(Kind.PAYMENT, text_id)
    if pid is None or not checkout.secret_matches(svc.settings.auth.api_key_pepper, pid, secret):
        raise _not_found()
    return pid


async def _payment(conn: Connection, pid: uuid.UUID, *, for_update: bool = False) -> asyncpg.Record:
    row = await payment_store.get(conn, pid, for_update=for_update)
    if row is None or row["return_url"] is None:
        raise _not_found()
    return row


def _redirect(row: asyncpg.Record, status: str) -> str | None:
    if status not in checkout.PAID:
        return None
    return checkout.return_with_payment(row["return_url"], encode(Kind.PAYMENT, row["id"]))


def _usable(svc: Services, qr_row: asyncpg.Record | None) -> bool:
    return (qr_row is not None and qr_row["used_at"] is None
            and qr_row["expires_at"] > svc.now() + timedelta(seconds=QR_VALIDITY_MIN_S))


async def _code_for(svc: Services, pid: uuid.UUID) -> tuple[asyncpg.Record, asyncpg.Record | None]:
    """The payment (locked) and a usable code for it, issued now if it has none; no code once not open."""

    async def work(conn: Connection) -> tuple[asyncpg.Record, asyncpg.Record | None]:
        row = await _payment(conn, pid, for_update=True)
        if checkout.payer_status(row["status"], row["expires_at"], svc.now()) != OPEN:
            return row, None
        latest = await codes.latest_qr_of(conn, pid)  # another page load may have issued one meanwhile
        if _usable(svc, latest):
            return row, latest
        return row, await qr.issue_locked(svc, conn, row, svc.settings.qr.ttl_max_s, None)

    return await svc.db.run(work)


async def page(svc: Services, text_id: str, secret: str) -> CheckoutPage:
    pid = _checked_id(svc, text_id, secret)
    async with svc.db.connection() as conn:
        row = await _payment(conn, pid)
        merchant = await tenants.merchant(conn, row["merchant_id"])
        latest = await codes.latest_qr_of(conn, pid)
    assert merchant is not None
    status = checkout.payer_status(row["status"], row["expires_at"], svc.now())
    if status == OPEN and not _usable(svc, latest):
        row, latest = await _code_for(svc, pid)
        status = checkout.payer_status(row["status"], row["expires_at"], svc.now())
    return CheckoutPage(
        payment=encode(Kind.PAYMENT, pid), status=status, merchant_name=merchant["name"],
        merchant_name_local=merchant["name_local"], merchant_language_local=merchant["language_local"],
        amount_text=Money(row["amount_minor"], currency(row["currency"])).format(), currency=row["currency"],
        description=row["description"], expires_at=row["expires_at"],
        qr_token=latest["token"] if status == OPEN and latest is not None else None,
        redirect_url=_redirect(row, status), cancel_url=row["cancel_url"],
    )


async def status(svc: Services, text_id: str, secret: str) -> views.CheckoutStatus:
    pid = _checked_id(svc, text_id, secret)
    async with svc.db.connection() as conn:
        row = await _payment(conn, pid)
    state = checkout.payer_status(row["status"], row["expires_at"], svc.now())
    return views.CheckoutStatus(payment=encode(Kind.PAYMENT, pid), status=cast(views.PaymentStatus, state), redirect_url=_redirect(row, state),
                                cancel_url=row["cancel_url"])


async def qr_image(svc: Services, text_id: str, secret: str, token: str, fmt: str) -> bytes:
    pid = _checked_id(svc, text_id, secret)
    async with svc.db.connection() as conn:
        await _payment(conn, pid)
    return await qr.payment_image(svc, pid, token, fmt)
