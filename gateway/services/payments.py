"""Payment use cases: create, pay (authorise), capture, cancel, refund, expire, read.

Each state change happens in one transaction together with its ledger entry (if money moves),
its event row and its idempotency record.

Lock order (every use case that touches a wallet takes its rows in this order, so no two of them
can deadlock; ``tests/fault/test_lock_order.py`` races every pair on one wallet):
1. the code the payer presented (QR code, pay-code, tap token), if any;
2. payment rows (``FOR UPDATE``; several at once in id order, as the expiry worker does);
3. the wallet holder (``FOR SHARE``: tier, PIN lock);
4. the holder's daily spend row (``daily_spend``);
4a. a promotion's rows when one discounts the payment: the holder's use (``campaign_uses``, only under a
   per-holder limit), then the campaign's counter rows (one nobody holds, or every row in shard order to
   gather the last units; a refused take holds none; migration 0026); the campaign's own row is
   share-locked by the payment's and use's foreign keys, which the end's FOR NO KEY UPDATE lets through;
   a capture's cashback campaign (or its discount's), then its first-payment gift's (``promotions.credits_at_capture``);
   a manual authorisation's capture, cancel or expiry gives its reserved discount back the same way (the use, then
   the counter rows in shard order; an expiry batch: every holder's use, then campaign by campaign in id order);
   a refund of a bank-funded discounted payment (or one with cashback) touches only the campaign row, after the
   payment row;
5. balance rows, in (account id, shard) order: the wallet's, then hot merchant / fee / clearing
   shards, touched last so they stay locked only until the commit;
then inserts only (events, refunds, journal entries), which lock nothing anyone waits for.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from functools import partial
from typing import Any, ParamSpec

import asyncpg
import msgspec

from gateway import metrics
from gateway.auth.principals import Principal, PrincipalKind
from gateway.domain import checkout, fees, ids, ledger, limits, metadata
from gateway.domain import promotions as promotions_domain
from gateway.domain import risk as risk_domain
from gateway.domain.promotions import Funder
from gateway.domain.ids import Kind, decode, encode
from gateway.domain.money import check_amount, currency
from gateway.domain.payments import Action, CaptureMethod, Payment, Status, check_transition
from gateway.errors import (
    Declined, Forbidden, GatewayError, IdempotencyError, IdempotencyInUse, InvalidRequest, InvalidState, NotFound,
)
from gateway.services import fx_payments, pages, pins, promotions, risk, views
from gateway.services.context import Services, pay_counted
from gateway.services.idempotency import AtOnce, Refused, Reply, RequestIdentity
from gateway.services.pages import PageRequest
from gateway.store import idempotency as keys
from gateway.store import ledger as ledger_store
from gateway.store import payments as store
from gateway.store import tenants
from gateway.store import wallets as wallet_store
from gateway.store.db import Connection

log = logging.getLogger(__name__)
EVENT_FOR_STATUS = {
    Status.SUCCEEDED: "payment.succeeded",
    Status.REQUIRES_CAPTURE: "payment.authorized",
    Status.REQUIRES_ACTION: "payment.requires_action",
    Status.CANCELED: "payment.canceled",
    Status.EXPIRED: "payment.expired",
}


P = ParamSpec("P")


class _Refusal(msgspec.Struct):
    code: str


class _Outcome(msgspec.Struct):
    """What counting needs of an answer: a payment's status, or the refusal's code."""

    status: str | None = None
    error: _Refusal | None = None


def _count(channel: str, reply: Reply) -> None:
    try:
        outcome = msgspec.json.decode(reply.body, type=_Outcome)
    except msgspec.ValidationError:  # an answer of another shape is not counted: counting never fails a payment
        return
    if outcome.error is not None:
        _count_refusal(channel, outcome.error.code, declined=reply.status == Declined.status)
    elif outcome.status is not None:
        metrics.PAYMENTS.labels(channel, outcome.status).inc()


def _count_refusal(channel: str, code: str, *, declined: bool) -> None:
    metrics.PAYMENTS.labels(channel, "declined" if declined else "error").inc()
    if declined:
        metrics.PAYMENT_DECLINES.labels(channel, code).inc()


def counted(channel: str) -> Callable[[Callable[P, Awaitable[Reply]]], Callable[P, Awaitable[Reply]]]:
    """Count each attempt to pay through ``channel`` once, by its outcome, after it is final: its
    transaction committed or its refusal stored or raised. A replayed answer is no new attempt."""

    def wrap(use_case: Callable[P, Awaitable[Reply]]) -> Callable[P, Awaitable[Reply]]:
        @functools.wraps(use_case)
        async def counting(*args: P.args, **kwargs: P.kwargs) -> Reply:
            try:
                reply = await use_case(*args, **kwargs)
            except (IdempotencyError, IdempotencyInUse):
                raise  # a key reused or still in flight: that attempt is counted by the request that owns the key
            except GatewayError as exc:
                _count_refusal(channel, exc.code, declined=isinstance(exc, Declined))
                raise
            if not reply.replayed:
                _count(channel, reply)
            return reply

        return counting

    return wrap


def payment_id(text: str, param: str = "id") -> uuid.UUID:
    value = decode(Kind.PAYMENT, text)
    if value is None:
        raise NotFound(f"no such payment: {text}", param=param)
    return value


def _missing(text: uuid.UUID) -> NotFound:
    return NotFound(f"no such payment: {text.hex}", param="id")


@dataclass(frozen=True, slots=True)
class NewPayment:
    amount: int
    currency: str
    capture_method: CaptureMethod
    merchant_reference: str | None
    description: str | None
    expires_in_s: int | None
    store: str | None
    return_url: str | None = None
    cancel_url: str | None = None
    metadata: dict[str, str] | None = None


def checkout_url(svc: Services, row: asyncpg.Record | Mapping[str, Any]) -> str | None:
    """The hosted checkout page of a payment that has one, while the payer can still pay it."""
    if row["return_url"] is None or checkout.payer_status(row["status"], row["expires_at"], svc.now()) != (
            Status.REQUIRES_PAYMENT_METHOD.value):
        return None
    # The API key pepper is the server key; the secret's own HMAC label keeps the two uses apart.
    return checkout.checkout_url(svc.settings.server.public_url, svc.settings.auth.api_key_pepper, row["id"],
                                 encode(Kind.PAYMENT, row["id"]))


def _merchant_view(svc: Services, row: asyncpg.Record) -> views.PaymentView:
    return views.payment_view(row, checkout_url(svc, row))


async def _record(conn: Connection, row: asyncpg.Record, holder_id: uuid.UUID | None = None) -> views.PaymentView:
    view = views.payment_view(row)
    await store.insert_event(
        conn, EVENT_FOR_STATUS[Status(row["status"])], row["id"], view, merchant_id=row["merchant_id"], holder_id=holder_id
    )
    return view


def record_decline(pid: uuid.UUID, holder_id: uuid.UUID) -> Refused:
    """A ``payment.failed`` event for a declined attempt to pay ``pid``, written with the stored refusal
    (so once per idempotency key); the payment itself is unchanged and can still be paid."""

    async def refused(conn: Connection, exc: GatewayError) -> None:
        await risk.record_refusal(conn, exc)  # a risk decision and its alerts, kept with the refusal
        if not isinstance(exc, Declined):
            return
        row = await store.get(conn, pid)
        if row is None:
            return
        data = msgspec.to_builtins(views.payment_view(row))
        data["last_payment_error"] = {"code": exc.code, "message": exc.message, "param": exc.param}
        await store.insert_event(conn, "payment.failed", pid, data, merchant_id=row["merchant_id"], holder_id=holder_id)

    return refused


async def create(svc: Services, who: Principal, req: NewPayment, identity: RequestIdentity) -> Reply:
    assert who.merchant_id is not None
    merchant_id = who.merchant_id
    terminal_id = who.terminal_id  # set for a POS device, whose store is its own
    amount = check_amount(req.amount)
    code = currency(req.currency).code
    pairs = metadata.check(req.metadata or {})
    expiry_s = svc.settings.payments.expiry_default_s if req.expires_in_s is None else req.expires_in_s
    if not 60 <= expiry_s <= svc.settings.payments.expiry_max_s:
        raise InvalidRequest(
            f"expires_in must be between 60 and {svc.settings.payments.expiry_max_s} seconds",
            code="invalid_expiry", param="expires_in",
        )
    live = svc.settings.auth.key_mode == "live"
    return_url = checkout.redirect_url(req.return_url, "return_url", live=live)
    cancel_url = checkout.redirect_url(req.cancel_url, "cancel_url", live=live)
    if cancel_url is not None and return_url is None:
        raise InvalidRequest("cancel_url needs a return_url (both belong to the hosted checkout)",
                             code="cancel_url_without_return_url", param="cancel_url")
    store_id = who.store_id
    if req.store is not None:
        store_id = decode(Kind.STORE, req.store)
        if store_id is None or (who.store_id is not None and store_id != who.store_id):
            raise NotFound(f"no such store: {req.store}", param="store")

    async def work(conn: Connection) -> tuple[int, Any]:
        merchant = await tenants.merchant(conn, merchant_id)
        assert merchant is not None
        if store_id is not None and await tenants.store(conn, store_id, merchant_id) is None:
            raise NotFound(f"no such store: {req.store}", param="store")
        payment = Payment(
            id=ids.new(), merchant_id=merchant_id, amount_minor=amount, currency=code,
            status=Status.REQUIRES_PAYMENT_METHOD, capture_method=req.capture_method,
            expires_at=svc.now() + timedelta(seconds=expiry_s),
        )
        row = await store.insert(
            conn, payment, store_id=store_id, terminal_id=terminal_id, merchant_reference=req.merchant_reference,
            description=req.description, fee_bps=merchant["fee_bps"], return_url=return_url, cancel_url=cancel_url,
            metadata=pairs,
        )
        view = views.payment_view(row)
        # The event goes without the checkout URL: its client secret is not kept with the payment's history.
        await store.insert_event(conn, "payment.created", payment.id, view, merchant_id=merchant_id, holder_id=None)
        return 201, msgspec.structs.replace(view, checkout_url=checkout_url(svc, row))

    now = svc.now()
    new = Payment(
        id=ids.new(), merchant_id=merchant_id, amount_minor=amount, currency=code,
        status=Status.REQUIRES_PAYMENT_METHOD, capture_method=req.capture_method,
        expires_at=now + timedelta(seconds=expiry_s),
    )
    row = _new_row(new, now, store_id=store_id, terminal_id=terminal_id, merchant_reference=req.merchant_reference,
                   description=req.description, return_url=return_url, cancel_url=cancel_url, pairs=pairs)
    view = views.payment_view(row)
    event_data = msgspec.json.encode(view)

    made = store.CreatedAtOnce(new, now, store_id=store_id, terminal_id=terminal_id,
                               merchant_reference=req.merchant_reference, description=req.description,
                               return_url=return_url, cancel_url=cancel_url, metadata=pairs, event_id=ids.new(),
                               event_data=event_data)

    async def at_once(done: keys.Done | None) -> bool:
        if svc.create_batches is not None:  # group commit with the process's other creates
            return await svc.create_batches.submit((made, done))
        async with svc.db.connection() as conn:
            return (await store.create_batch(conn, [(made, done)]))[0]

    answer = msgspec.structs.replace(view, checkout_url=checkout_url(svc, row))
    return await svc.idempotency.run(identity, work, at_once=AtOnce(201, answer, at_once))


def _jsonb_order(pairs: dict[str, str]) -> dict[str, str]:
    """Metadata in the order PostgreSQL's jsonb gives it back (shorter keys first, then by bytes), so an
    answer built before the write reads as the stored object does."""
    return dict(sorted(pairs.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode())))


def _new_row(payment: Payment, now: datetime, *, store_id: uuid.UUID | None, terminal_id: uuid.UUID | None,
             merchant_reference: str | None, description: str | None, return_url: str | None,
             cancel_url: str | None, pairs: dict[str, str]) -> dict[str, Any]:
    """The row ``store.create_batch`` writes, as ``store.get`` would read it back (for the views)."""
    return {
        "id": payment.id, "merchant_id": payment.merchant_id, "amount_minor": payment.amount_minor,
        "currency": payment.currency, "status": payment.status.value, "capture_method": payment.capture_method.value,
        "expires_at": payment.expires_at, "payer_id": None, "authorized_minor": 0, "captured_minor": 0,
        "refunded_minor": 0, "fee_minor": 0, "authorization_expires_at": None, "confirm_by": None,
        "store_id": store_id, "terminal_id": terminal_id, "merchant_reference": merchant_reference,
        "description": description, "wallet_account_id": None, "channel": None, "created_at": now,
        "updated_at": now, "spend_day": None, "return_url": return_url, "cancel_url": cancel_url,
        "metadata": msgspec.json.encode(_jsonb_order(pairs)).decode(), "campaign_id": None, "discount_minor": 0,
        "discount_funded_by": None, "discount_clawed_back_minor": 0, "cashback_campaign_id": None,
        "cashback_minor": 0, "cashback_clawed_back_minor": 0, "cashback_funded_by": None,
        "reserved_campaign_id": None, "discount_reserved_minor": 0, "reserved_funded_by": None,
    }


async def get(svc: Services, who: Principal, text_id: str) -> Any:
    pid = payment_id(text_id)
    async with svc.db.connection() as conn:
        if who.kind in (PrincipalKind.MERCHANT, PrincipalKind.DEVICE):
            row = await store.get(conn, pid, merchant_id=who.merchant_id)
            if row is None:
                raise _missing(pid)
            return _merchant_view(svc, row)
        # A publishable key sees its own merchant's payments; a wallet holder may look up an unpaid
        # payment it was given the id of (that is how it pays), in the payer's view; once paid, only
        # its payer (and its merchant) see it.
        scope = who.merchant_id if who.kind is PrincipalKind.PUBLISHABLE else None
        row = await store.get(conn, pid, merchant_id=scope)
        if row is None or (who.kind is PrincipalKind.WALLET and row["payer_id"] not in (None, who.id)):
            raise _missing(pid)
        merchant = await tenants.merchant(conn, row["merchant_id"])
        assert merchant is not None
        offer = cashback = None
        if row["status"] == Status.REQUIRES_PAYMENT_METHOD.value:  # a manual capture's authorisation is discounted too
            payer = who.id if who.kind is PrincipalKind.WALLET else None
            offer = await promotions.offer_for(svc.campaigns, conn, row, payer, svc.now())
            if row["capture_method"] == "automatic":
                cashback = await promotions.cashback_offer_for(svc.campaigns, conn, row, payer, svc.now(), offer)
        view = views.payer_payment_view(row, merchant["name"], offer, cashback)
        if who.kind is PrincipalKind.WALLET:  # its payer, or a holder about to pay it: the cross-currency side
            view = await fx_payments.payer_side(svc, conn, who.id, row, view)
        return view


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The filters of the payment and refund lists (``created_*`` in Unix seconds, as the events list)."""

    created_gte_s: int | None = None
    created_lt_s: int | None = None
    status: str | None = None
    metadata: dict[str, str] | None = None
    merchant_reference: str | None = None
    payment: str | None = None
    payment_param: str = "payment"  # where the payment id came from: the query, or the path ("id")


def _wanted_pairs(pairs: dict[str, str] | None) -> dict[str, str] | None:
    """A metadata search: the pairs as given (an empty value matches nothing, as no stored pair is empty),
    under the limits of stored pairs."""
    if not pairs:
        return None
    metadata.check(pairs)
    return pairs


def _list_filter(q: ListQuery) -> store.ListFilter:
    return store.ListFilter(
        created_gte=pages.instant(q.created_gte_s), created_lt=pages.instant(q.created_lt_s), status=q.status,
        metadata=_wanted_pairs(q.metadata), merchant_reference=q.merchant_reference,
        payment_id=payment_id(q.payment, q.payment_param) if q.payment is not None else None,
    )


async def list_payments(svc: Services, who: Principal, page: PageRequest, q: ListQuery) -> views.PaymentList:
    assert who.merchant_id is not None
    query = store.merchant_payments(who.merchant_id, _list_filter(q))
    async with svc.stale() as conn:
        rows, has_more = await pages.read(conn, query, page, partial(decode, Kind.PAYMENT))
    return views.PaymentList(data=[_merchant_view(svc, r) for r in rows], has_more=has_more)


async def update(svc: Services, who: Principal, text_id: str, changes: dict[str, Any] | None,
                 identity: RequestIdentity) -> Reply:
    """Change a payment's metadata: each given key is set, an empty value removes its key."""
    pid = payment_id(text_id)
    metadata.check(changes or {})  # refused before anything is stored under the idempotency key

    async def work(conn: Connection) -> tuple[int, Any]:
        row = await _locked(conn, who, pid)
        if changes is None:
            return 200, _merchant_view(svc, row)
        merged = metadata.merge(msgspec.json.decode(row["metadata"]), changes)
        return 200, _merchant_view(svc, await store.set_metadata(conn, pid, merged))

    return await svc.idempotency.run(identity, work)


async def payer_accounts(
    svc: Services, holder_id: uuid.UUID, merchant_id: uuid.UUID, cur: str
) -> dict[ledger.AccountRef, ledger_store.Account]:
    """The accounts an authorisation touches; resolved (and created) before its transaction."""
    refs = [ledger.wallet(holder_id, cur), ledger.merchant(merchant_id, cur), ledger.fees(cur)]
    known = ledger_store.cached(refs)
    if known is not None:
        return known
    async with svc.db.connection() as conn:
        return await ledger_store.resolve_accounts(conn, refs)


async def authorize_locked(
    svc: Services,
    conn: Connection,
    row: asyncpg.Record,
    holder_id: uuid.UUID,
    accounts: dict[ledger.AccountRef, ledger_store.Account],
    *,
    channel: str,
    needs_confirmation: bool = False,
    terminal_transaction_id: str | None = None,
    fx: fx_payments.Funding | None = None,
    confirmable: bool = False,
) -> asyncpg.Record:
    """Authorise a locked, unpaid payment against the holder's wallet: tier caps, funds, then hold
    or capture. Shared by every way of paying (by id, QR, pay-code, tap), so every decline of a
    payment is logged here once (code, payment, merchant, channel; never an amount's payer data).
    ``fx``: the payer's quote, converted into the payment's currency first (gateway/services/fx_payments.py).
    ``confirmable``: the payer can confirm it later in the app (a pay-code charge), so a risk step-up
    nobody in the request passed holds it in requires_action (``confirm``) instead of declining it."""
    try:
        return await _authorize_locked(svc, conn, row, holder_id, accounts, channel=channel,
                                       needs_confirmation=needs_confirmation,
                                       terminal_transaction_id=terminal_transaction_id, fx=fx,
                                       confirmable=confirmable)
    except (Declined, Forbidden) as exc:
        log.info("payment declined", extra={"code": exc.code, "payment_id": str(row["id"]),
                                            "merchant_id": str(row["merchant_id"]), "channel": channel})
        raise


async def _authorize_locked(
    svc: Services,
    conn: Connection,
    row: asyncpg.Record,
    holder_id: uuid.UUID,
    accounts: dict[ledger.AccountRef, ledger_store.Account],
    *,
    channel: str,
    needs_confirmation: bool,
    terminal_transaction_id: str | None,
    fx: fx_payments.Funding | None = None,
    confirmable: bool = False,
) -> asyncpg.Record:
    now = svc.now()
    day = svc.local_day(now)
    payment = store.to_domain(row)
    holder = await wallet_store.spend_for_payment(conn, holder_id, payment.currency, day, payment.amount_minor,
                                                  payment.merchant_id)
    if holder["payments_locked_at"] is not None:
        raise pins.locked_error()
    if holder["merchant_status"] != "active":
        raise Declined("the merchant cannot take payments now", code="merchant_unavailable")
    limits.check_payment(svc.tiers[holder["tier"]], payment.currency, holder["spent_minor"] - payment.amount_minor,
                         payment.amount_minor)
    held = await risk.check(svc, conn, payment, holder_id, channel=channel, now=now, hold=confirmable)
    confirm_s = svc.settings.wallet.confirmation_timeout_s if needs_confirmation or held else None
    payment = payment.authorize(holder_id, now, svc.settings.payments.authorization_ttl_s, confirm_within_s=confirm_s)
    granted = None
    # Discounted as it is authorised: captured at once, or its discount reserved for a manual capture (not
    # through a quote, whose conversion is for the full amount). Held for its payer: by the confirmation.
    if payment.status is Status.SUCCEEDED or (payment.status is Status.REQUIRES_CAPTURE and fx is None):
        granted = await promotions.grant(svc.campaigns, conn, row, holder_id, now)
    payment, discount, reserved = _discounted(payment, row, granted)
    wallet_ref = ledger.wallet(holder_id, payment.currency)
    credits = await _credits(svc, conn, row, payment, discounted=granted is not None)  # campaign rows, then balances
    updated = await store.update(conn, payment, wallet_account_id=accounts[wallet_ref].id, channel=channel,
                                 spend_day=day, terminal_transaction_id=terminal_transaction_id, discount=discount,
                                 reserved=reserved)
    await _record(conn, updated, holder_id)
    if fx is not None:  # the quote's conversion puts the money in the wallet the hold or capture takes it from
        await fx_payments.fund_locked(conn, fx, holder_id, payment, svc.tiers[holder["tier"]],
                                      _wallet_pays(payment, discount, reserved))
    # Money last: the hot balance rows (merchant and fee shards) stay locked only until the commit.
    try:
        if payment.status is Status.SUCCEEDED:
            entry, moved = await _capture_entry(conn, payment, discount, accounts)
            await promotions.post_capture(conn, entry, credits, moved, holder_id=holder_id, payment_id=payment.id)
        else:  # the wallet holds what the holder will pay: the amount less a reserved discount
            await ledger_store.hold(conn, accounts[wallet_ref], payment.authorized_minor - _reserved_minor(reserved))
    except ledger_store.InsufficientFunds:
        raise Declined(
            "the wallet's available balance is lower than the amount", code="insufficient_funds", param="amount"
        ) from None
    return updated


def _discounted(payment: Payment, row: asyncpg.Record, granted: promotions.Grant | None,
                ) -> tuple[Payment, store.Discount | None, store.Discount | None]:
    """The payment as its campaign's discount leaves it, with the discount it records: granted (captured
    now, its fee fixed; a merchant-funded one lowers what is authorised and captured: the merchant sells
    for less) or reserved (a manual authorisation: granted by its capture, ``capture``)."""
    recorded = None if granted is None else store.Discount(granted.campaign_id, granted.discount_minor,
                                                           granted.funded_by.value)
    if payment.status is not Status.SUCCEEDED:
        return payment, None, recorded
    if granted is not None and granted.funded_by is Funder.MERCHANT:
        sold_minor = payment.amount_minor - granted.discount_minor
        payment = replace(payment, authorized_minor=sold_minor, captured_minor=sold_minor)
    return _with_fee(payment, row), recorded, None


def _reserved_minor(reserved: store.Discount | None) -> int:
    return 0 if reserved is None else reserved.amount_minor


def _wallet_pays(payment: Payment, discount: store.Discount | None, reserved: store.Discount | None) -> int:
    """What the holder's wallet gives for the payment as ``_discounted`` left it: a capture less a
    bank-funded discount (a merchant-funded one already lowered it), or a hold less a reserved discount."""
    if payment.status is Status.SUCCEEDED:
        bank = discount is not None and discount.funded_by == Funder.BANK.value
        return payment.captured_minor - (discount.amount_minor if bank and discount is not None else 0)
    return payment.authorized_minor - _reserved_minor(reserved)


async def _capture_entry(conn: Connection, payment: Payment, discount: store.Discount | None,
                         accounts: dict[ledger.AccountRef, ledger_store.Account],
                         ) -> tuple[ledger.Entry, dict[ledger.AccountRef, ledger_store.Account]]:
    """A capture's entry and the accounts it touches: the promotions account pays a bank-funded discount
    (``ledger.discounted_capture``); any other capture, a merchant-funded discount's too, is a plain one."""
    assert payment.payer_id is not None
    if discount is not None and discount.funded_by == Funder.BANK.value:
        entry = ledger.discounted_capture(payment.payer_id, payment.merchant_id, payment.currency,
                                          payment.captured_minor, payment.fee_minor, discount.amount_minor)
        return entry, {**accounts, **await ledger_store.existing_accounts(conn, [ledger.promotions(payment.currency)])}
    return ledger.capture(payment.payer_id, payment.merchant_id, payment.currency, payment.captured_minor,
                          payment.fee_minor), accounts


async def payer_view(conn: Connection, row: asyncpg.Record) -> views.PayerPaymentView:
    if "merchant_name" in row.keys():  # rows from store.update carry it
        return views.payer_payment_view(row, row["merchant_name"])
    merchant = await tenants.merchant(conn, row["merchant_id"])
    assert merchant is not None
    return views.payer_payment_view(row, merchant["name"])


@counted("wallet")
async def pay(svc: Services, who: Principal, text_id: str, pin: str | None, identity: RequestIdentity,
              fx_quote: str | None = None) -> Reply:
    """The wallet holder pays a payment from its wallet: an authorisation, captured at once if automatic.
    With ``fx_quote``, from another of its currencies through that quote (gateway/services/fx_payments.py)."""
    assert who.kind is PrincipalKind.WALLET
    holder_id = who.id
    pid = payment_id(text_id)
    async with svc.db.connection() as conn:
        head = await store.payable(conn, pid, holder_id, risk.holder_reads(svc, holder_id, who.device_id))
    if head is None:
        raise _missing(pid)
    accounts = await payer_accounts(svc, holder_id, head["merchant_id"], head["currency"])
    # A PIN given is verified even below the threshold: a risk rule may ask for it (services.risk).
    pin_needed = pins.needed(svc, head["currency"], head["amount_minor"]) or pin is not None
    funding = None if fx_quote is None else await fx_payments.prepare(svc, holder_id, fx_quote, head["currency"])

    async def check_pin(conn: Connection) -> None:
        await pins.verify(svc, holder_id, pin, conn)

    async def work(conn: Connection) -> tuple[int, Any]:
        row = await store.get(conn, pid, for_update=True)
        assert row is not None
        updated = await authorize_locked(svc, conn, row, holder_id, accounts, channel="wallet", fx=funding)
        view = await payer_view(conn, updated)
        return 200, view if funding is None else fx_payments.with_fx(view, await fx_payments.paid_with(conn, updated))

    one_statement = not pin_needed and funding is None  # a conversion takes the general path
    with risk.holder_present(who.device_id, pin_verified=pin_needed):
        return await svc.idempotency.run(
            identity, work, before=check_pin if pin_needed else None, refused=record_decline(pid, holder_id),
            at_once=_paid_at_once(svc, head, holder_id, accounts, channel="wallet") if one_statement else None,
        )


def _paid_at_once(svc: Services, head: asyncpg.Record, holder_id: uuid.UUID,
                  accounts: dict[ledger.AccountRef, ledger_store.Account], *, channel: str) -> AtOnce | None:
    """Paying ``head`` in one statement, with the process's other payments of the moment when group
    commit is on (``svc.pay_batches``)."""
    decided = decide_payment(svc, head, holder_id, accounts, channel=channel)
    if decided is None:
        return None
    paid, answer = decided

    async def apply(done: keys.Done | None) -> bool:
        if svc.pay_batches is not None:
            return await svc.pay_batches.submit((paid, done))  # group commit with the process's other payments
        return (await pay_counted(svc.db, svc.accel, [(paid, done)]))[0]

    return AtOnce(200, answer, apply)


def decide_payment(svc: Services, head: asyncpg.Record, holder_id: uuid.UUID,
                   accounts: dict[ledger.AccountRef, ledger_store.Account], *, channel: str,
                   ) -> tuple[store.PaidAtOnce, views.PayerPaymentView] | None:
    """What paying ``head`` (read just before, unlocked) writes and answers, decided by the same domain
    rules as ``authorize_locked``; None when those rules would refuse it (the general path then gives
    the refusal)."""
    if head["holder_tier"] is None or head["holder_locked"] or head["merchant_status"] != "active":
        return None
    now = svc.now()
    campaign = promotions.from_memory(svc.campaigns, head, now)
    if not campaign.known:  # only the general path can tell which campaign applies
        return None
    kept = risk.one_statement(svc, head, holder_id, channel, now)
    if kept is None:  # from memory and the head: a rule might not allow this payment (the general path decides)
        return None
    day = svc.local_day(now)
    try:
        tier = svc.tiers[head["holder_tier"]]
        caps = limits.payment_caps(tier, head["currency"])
        limits.check_payment(tier, head["currency"], 0, head["amount_minor"])
        payment = store.to_domain(head).authorize(holder_id, now, svc.settings.payments.authorization_ttl_s)
    except (GatewayError, KeyError):
        return None
    if campaign.offer is not None and payment.status is not Status.SUCCEEDED:
        return None  # a manual authorisation reserves its discount: the general path takes it
    offer = campaign.offer
    moved = accounts
    if offer is not None:
        if offer.campaign.funded_by is Funder.MERCHANT:  # the merchant sells for less
            sold_minor = payment.amount_minor - offer.benefit_minor
            payment = replace(payment, authorized_minor=sold_minor, captured_minor=sold_minor)
        else:
            promo = ledger_store.cached([ledger.promotions(payment.currency)])
            if promo is None:  # the general path reads the promotions account (and caches it)
                return None
            moved = {**accounts, **promo}
    if payment.status is Status.SUCCEEDED:
        payment = _with_fee(payment, head)
    wallet = accounts[ledger.wallet(holder_id, payment.currency)]
    discount = None if offer is None else store.Discount(offer.campaign.id, offer.benefit_minor,
                                                         offer.campaign.funded_by.value)
    row = {**dict(head), "status": payment.status.value, "payer_id": holder_id,
           "authorized_minor": payment.authorized_minor, "captured_minor": payment.captured_minor,
           "fee_minor": payment.fee_minor, "authorization_expires_at": payment.authorization_expires_at,
           "confirm_by": None, "wallet_account_id": wallet.id, "channel": channel, "spend_day": day, "updated_at": now,
           "campaign_id": None if discount is None else discount.campaign_id,
           "discount_minor": 0 if discount is None else discount.amount_minor,
           "discount_funded_by": None if discount is None else discount.funded_by}
    capture = None
    if payment.status is Status.SUCCEEDED and discount is not None and discount.funded_by == Funder.BANK.value:
        capture = ledger_store.movement(ledger.discounted_capture(
            holder_id, payment.merchant_id, payment.currency, payment.captured_minor, payment.fee_minor,
            discount.amount_minor), moved)
    elif payment.status is Status.SUCCEEDED:
        capture = ledger_store.movement(ledger.capture(holder_id, payment.merchant_id, payment.currency,
                                                       payment.captured_minor, payment.fee_minor), accounts)
    day_ends = datetime.combine(day + timedelta(days=1), time(0), tzinfo=svc.limits_zone)
    until = min(payment.expires_at, day_ends)
    if offer is not None:
        until = min(until, offer.campaign.ends_at)  # an expired campaign stops at once, by the database's clock
    paid = store.PaidAtOnce(
        payment=payment, seen_updated_at=head["updated_at"], now=now,
        decided_until=until, holder_id=holder_id, tier=tier.number,
        wallet_account_id=wallet.id, channel=channel, spend_day=day,
        daily_max_minor=caps.daily_max_minor if kept.spend_max_minor is None else min(caps.daily_max_minor,
                                                                                      kept.spend_max_minor),
        event_type=EVENT_FOR_STATUS[payment.status], event_id=ids.new(),
        event_data=msgspec.json.encode(views.payment_view(row)), capture=capture,
        hold_minor=0 if capture is not None else payment.authorized_minor,
        discount=discount, per_holder_max=None if offer is None else offer.campaign.per_holder_max,
        risk=kept.allowed,
    )
    return paid, views.payer_payment_view(row, head["merchant_name"])


@counted("pay_code")  # only a pay-code charge waits for its payer's confirmation
async def confirm(svc: Services, who: Principal, text_id: str, pin: str | None, identity: RequestIdentity,
                  otp: str | None = None) -> Reply:
    """The payer confirms a counter payment waiting for it (a pay-code charge): with the PIN above the
    threshold, and with every step-up the risk rules held it for (the PIN, the one-time code: ``otp``, or
    its challenge verified before). A PIN given is verified even when not needed."""
    pid = payment_id(text_id)
    if otp is not None:
        risk.check_code_format(svc, otp, "otp")
    async with svc.db.connection() as conn:
        head = await store.get(conn, pid)
        held = await risk.held_step_ups(conn, pid, who.id) if head is not None else None
    if head is None or head["payer_id"] != who.id:
        raise _missing(pid)
    accounts = await _accounts_for(svc, head)
    asked = frozenset() if held is None else held.step_ups
    pin_needed = (held is None or risk_domain.StepUp.PIN in asked or pin is not None
                  or pins.needed(svc, head["currency"], head["amount_minor"]))

    async def check_step_ups(conn: Connection) -> None:
        if pin_needed:
            await pins.verify(svc, who.id, pin, conn)
        if held is not None and risk_domain.StepUp.OTP in asked:
            await risk.pass_held_code(svc, conn, who.id, held, otp)

    async def work(conn: Connection) -> tuple[int, Any]:
        row = await store.get(conn, pid, for_update=True)
        assert row is not None
        holder = await wallet_store.holder_for_payment(conn, who.id)
        if holder["payments_locked_at"] is not None:  # locked by a concurrent wrong PIN
            raise pins.locked_error()
        before = store.to_domain(row)
        payment = before.confirm(svc.now(), svc.settings.payments.authorization_ttl_s)
        await risk.check_confirmation(svc, conn, who, row, held)  # a block since its authorisation
        if held is not None:
            await risk.confirm_held(conn, held, svc.now())
        # Discounted now, as it is authorised (captured at once, or its discount reserved for a manual capture).
        granted = await promotions.grant(svc.campaigns, conn, row, who.id, svc.now())  # campaign rows, then balances
        payment, discount, reserved = _discounted(payment, row, granted)
        if payment.status is Status.SUCCEEDED:
            entry, moved = await _capture_entry(conn, payment, discount, accounts)
            wallet_ref = ledger.wallet(who.id, payment.currency)
            await _post_capture(svc, conn, row, payment, entry, moved, {wallet_ref: before.authorized_minor},
                                discounted=granted is not None)
        elif reserved is not None:  # the hold of the full amount becomes one of what the holder will pay
            await ledger_store.release(conn, row["wallet_account_id"], reserved.amount_minor)
        updated = await store.update(conn, payment, discount=discount, reserved=reserved)
        await _record(conn, updated, who.id)
        return 200, await payer_view(conn, updated)

    return await svc.idempotency.run(identity, work, before=check_step_ups, refused=risk.record_refusal)


async def awaiting_confirmation(svc: Services, who: Principal, page: PageRequest) -> views.PayerPaymentList:
    async with svc.db.connection() as conn:
        rows, has_more = await pages.read(conn, store.awaiting_confirmation(who.id), page, partial(decode, Kind.PAYMENT))
        data = [await payer_view(conn, row) for row in rows]
    return views.PayerPaymentList(data=data, has_more=has_more)


async def _credits(svc: Services, conn: Connection, row: asyncpg.Record, payment: Payment, *,
                   discounted: bool) -> list[promotions.Credit]:
    """The promotion credits (cashback, a first-payment gift) a capture earns, taken before its balance
    rows; none for a payment not captured now."""
    if payment.status is not Status.SUCCEEDED or payment.payer_id is None:
        return []
    return await promotions.credits_at_capture(svc.campaigns, conn, row, payment.payer_id, payment.captured_minor,
                                               svc.now(), discounted=discounted, fee_minor=payment.fee_minor)


async def _post_capture(svc: Services, conn: Connection, row: asyncpg.Record, payment: Payment, entry: ledger.Entry,
                        accounts: dict[ledger.AccountRef, ledger_store.Account],
                        release_holds: dict[ledger.AccountRef, int], released_minor: int = 0, *,
                        discounted: bool) -> None:
    """A later capture (manual, or a confirmed charge): its credits taken (none for a discounted payment: it
    gets one or the other), then its entry posted with them. ``released_minor`` of the hold not captured is
    converted back if the payment was paid from another currency."""
    assert payment.payer_id is not None
    credits = await _credits(svc, conn, row, payment, discounted=discounted)
    converted = await fx_payments.lock_returns(conn, [(row, released_minor)])  # campaign rows, then balances
    await promotions.post_capture(conn, entry, credits, accounts, holder_id=payment.payer_id, payment_id=payment.id,
                                  release_holds=release_holds)
    await fx_payments.give_back(conn, converted)


def _with_fee(payment: Payment, row: asyncpg.Record) -> Payment:
    """The capture's fee, fixed now: the rate and fixed part copied onto the payment at its creation."""
    return replace(payment, fee_minor=fees.fee_minor(payment.captured_minor, row["fee_bps"], row["fee_fixed_minor"]))


async def _locked(conn: Connection, who: Principal, pid: uuid.UUID) -> asyncpg.Record:
    row = await store.get(conn, pid, merchant_id=who.merchant_id, for_update=True)
    if row is None or not _device_may_change(who, row):
        raise _missing(pid)
    return row


def _device_may_change(who: Principal, row: asyncpg.Record) -> bool:
    """A POS device sees its merchant's payments but changes only the ones made at its terminal."""
    return who.kind is not PrincipalKind.DEVICE or row["terminal_id"] == who.terminal_id


async def _with_payer(
    conn: Connection, row: asyncpg.Record, accounts: dict[ledger.AccountRef, ledger_store.Account]
) -> dict[ledger.AccountRef, ledger_store.Account]:
    """The accounts plus the payer's wallet, read from the locked row: the payer may have paid
    between the first read and the lock. The wallet account exists (its payment committed)."""
    if row["payer_id"] is None:
        return accounts
    wallet_ref = ledger.wallet(row["payer_id"], row["currency"])
    if wallet_ref in accounts:
        return accounts
    return {**accounts, **await ledger_store.existing_accounts(conn, [wallet_ref])}


async def counter_payment_locked(
    conn: Connection, who: Principal, text_id: str, amount_minor: int, currency_code: str,
    merchant_reference: str | None,
) -> asyncpg.Record:
    """The open payment a counter settles by tap or pay-code, locked (lock order: after the payer's code).

    Only the device's own (its merchant's, made at its terminal: another's is ``resource_missing``),
    for exactly the amount and currency the payer agreed to, and still payable: a payment paid or
    closed meanwhile (a QR code won the race) is ``payment_not_payable`` with its status.
    """
    pid = decode(Kind.PAYMENT, text_id)
    row = await store.get(conn, pid, merchant_id=who.merchant_id, for_update=True) if pid is not None else None
    if row is None or not _device_may_change(who, row):
        raise NotFound(f"no such payment: {text_id}", param="payment")
    if row["amount_minor"] != amount_minor or row["currency"] != currency_code:
        raise InvalidRequest("the payment is for another amount or currency", code="amount_mismatch", param="amount")
    if merchant_reference is not None and merchant_reference != row["merchant_reference"]:
        raise InvalidRequest("the payment has another merchant_reference", code="merchant_reference_mismatch",
                             param="merchant_reference")
    check_transition(Status(row["status"]), Action.AUTHORIZE)
    return row


async def _merchant_head(svc: Services, who: Principal, pid: uuid.UUID) -> asyncpg.Record:
    async with svc.db.connection() as conn:
        head = await store.get(conn, pid, merchant_id=who.merchant_id)
    if head is None or not _device_may_change(who, head):
        raise _missing(pid)
    return head


async def _accounts_for(svc: Services, head: asyncpg.Record) -> dict[ledger.AccountRef, ledger_store.Account]:
    cur = head["currency"]
    refs = [ledger.merchant(head["merchant_id"], cur), ledger.fees(cur)]
    if head["payer_id"] is not None:
        refs.append(ledger.wallet(head["payer_id"], cur))
    async with svc.db.connection() as conn:
        return await ledger_store.resolve_accounts(conn, refs)


async def capture(svc: Services, who: Principal, text_id: str, amount: int | None, identity: RequestIdentity) -> Reply:
    pid = payment_id(text_id)
    if amount is not None:
        check_amount(amount, "amount_to_capture")
    accounts = await _accounts_for(svc, await _merchant_head(svc, who, pid))

    async def work(conn: Connection, gave: _GiveBacks) -> tuple[int, Any]:
        row = await _locked(conn, who, pid)
        before = store.to_domain(row)
        now = svc.now()
        gave.back = promotions.reservation_given_back(row) is not None  # an expiry gives it all back
        if before.holds_funds and before.authorization_expires_at and now >= before.authorization_expires_at:
            # Touching a lapsed authorisation expires it at once (the worker would a moment later):
            # the hold is released in this transaction and the refusal is the stored answer.
            await _record(conn, await _end(conn, row, "expire"), row["payer_id"])
            refusal = InvalidState("the authorisation has expired", code="authorization_expired",
                                   status_now=Status.EXPIRED.value)
            return refusal.status, refusal.body(identity.request_id)
        payment = before.capture(amount, now)
        capture_minor = payment.captured_minor  # of the authorised amount, at its list price
        payer_id = payment.payer_id
        assert payer_id is not None
        share, discount = None, None
        if row["reserved_campaign_id"] is not None:  # its authorisation reserved a discount: keep its share
            share = promotions_domain.capture_share(row["discount_reserved_minor"], before.authorized_minor,
                                                    capture_minor, Funder(row["reserved_funded_by"]))
            gave.back = share.given_back_minor > 0 or share.place_back  # a full capture gives nothing back
            payment = replace(payment, captured_minor=share.captured_minor)
            if share.discount_minor:
                discount = store.Discount(row["reserved_campaign_id"], share.discount_minor, row["reserved_funded_by"])
        payment = _with_fee(payment, row)
        entry, moved = await _capture_entry(conn, payment, discount, await _with_payer(conn, row, accounts))
        wallet_ref = ledger.wallet(payer_id, payment.currency)
        await _give_back(conn, row, before.authorized_minor - capture_minor)  # daily spend, campaign rows, balances
        if share is not None:
            await promotions.give_back(conn, [promotions.GiveBack(row["reserved_campaign_id"], payer_id,
                                                                  share.given_back_minor, share.place_back)])
        await _post_capture(svc, conn, row, payment, entry, moved,
                            {wallet_ref: before.authorized_minor - row["discount_reserved_minor"]},
                            released_minor=before.authorized_minor - payment.captured_minor,
                            discounted=share is not None)
        return 200, await _record(conn, await store.update(conn, payment, discount=discount))

    return await _run_reoffering(svc, identity, work)


async def cancel(svc: Services, who: Principal, text_id: str, identity: RequestIdentity) -> Reply:
    pid = payment_id(text_id)
    await _merchant_head(svc, who, pid)

    async def work(conn: Connection, gave: _GiveBacks) -> tuple[int, Any]:
        row = await _locked(conn, who, pid)
        gave.back = promotions.reservation_given_back(row) is not None
        return 200, await _record(conn, await _end(conn, row, "cancel"))

    return await _run_reoffering(svc, identity, work)


@dataclass
class _GiveBacks:
    """Whether a use case's transaction gave a reservation's budget or place back (set by its work, which
    may run more than once: the last run is the one committed)."""

    back: bool = False


async def _run_reoffering(svc: Services, identity: RequestIdentity,
                          work: Callable[[Connection, _GiveBacks], Awaitable[tuple[int, Any]]]) -> Reply:
    """``work`` under the idempotency protocol, then, when its commit gave a reservation back (not on a replay
    of a stored answer), this process's campaign cache reloaded (``_offer_given_back``)."""
    gave = _GiveBacks()
    reply = await svc.idempotency.run(identity, lambda conn: work(conn, gave))
    await _offer_given_back(svc, gave.back and not reply.replayed)
    return reply


async def _offer_given_back(svc: Services, gave_back: bool) -> None:
    """After a commit that gave a reservation's budget or place back: this process's campaign cache reloaded,
    so that a campaign it last saw spent or full is offered again at once (others: within their refresh,
    ``promotions.cache_refresh_s``; the database's guarded take decides in every case)."""
    if not gave_back:
        return
    try:
        await svc.campaigns.load(svc.db, svc.now())
    except Exception:  # after the commit: the reply stands; the refresh loop reloads within cache_refresh_s
        log.warning("campaign cache reload after a give-back failed", exc_info=True)


async def _give_back(conn: Connection, row: asyncpg.Record, released_minor: int) -> None:
    """Money an authorisation held but never took no longer counts against the day's cap."""
    if released_minor > 0 and row["spend_day"] is not None and row["payer_id"] is not None:
        await wallet_store.give_back_spend(conn, row["payer_id"], row["currency"], row["spend_day"], released_minor)


async def reverse(svc: Services, who: Principal, text_id: str, identity: RequestIdentity) -> Reply:
    """Undo a sale whatever it reached: cancel it if no money was captured, refund the rest if it was.

    What a counter does when it cannot know the outcome of a charge: never a blind second charge.
    """
    pid = payment_id(text_id)
    head = await _merchant_head(svc, who, pid)
    accounts = await _accounts_for(svc, head)

    async def work(conn: Connection, gave: _GiveBacks) -> tuple[int, Any]:
        row = await _locked(conn, who, pid)
        status = Status(row["status"])
        if status in (Status.REQUIRES_PAYMENT_METHOD, Status.REQUIRES_ACTION, Status.REQUIRES_CAPTURE):
            gave.back = promotions.reservation_given_back(row) is not None
            return 200, await _record(conn, await _end(conn, row, "cancel"))
        if status is Status.SUCCEEDED and row["refunded_minor"] < row["captured_minor"]:
            await _refund_locked(conn, row, None, "reversal", await _with_payer(conn, row, accounts), {})
            row = await _locked(conn, who, pid)
        return 200, views.payment_view(row)

    return await _run_reoffering(svc, identity, work)


async def _end(conn: Connection, row: asyncpg.Record, how: str) -> asyncpg.Record:
    """Cancel or expire: the hold, if any, is released in the same transaction."""
    return (await _end_all(conn, [row], how))[0]


async def _end_all(conn: Connection, rows: list[asyncpg.Record], how: str) -> list[asyncpg.Record]:
    """Cancel or expire locked payments (one, or the expiry worker's batch in holder order): their holds
    released in the same transaction, a discount an authorisation reserved given back whole to its campaign
    (budget, place and the holder's use), and what a hold paid from another currency converted back. Each
    kind of row for all of them before the next (daily spend rows, campaign rows, then balance rows), in
    the lock order."""
    before = [store.to_domain(row) for row in rows]
    held = [(row, b.authorized_minor) for row, b in zip(rows, before, strict=True) if b.holds_funds]
    for row, held_minor in held:
        await _give_back(conn, row, held_minor)  # the daily spend row before the balance rows
    await promotions.give_back(conn, [g for row, _ in held if (g := promotions.reservation_given_back(row))])
    converted = await fx_payments.lock_returns(conn, held)  # paid from another currency: wallets, FX shards
    for row, held_minor in held:  # the wallet held the amount less a reserved discount
        await ledger_store.release(conn, row["wallet_account_id"], held_minor - row["discount_reserved_minor"])
    await fx_payments.give_back(conn, converted)  # at the conversion's own rate, as its refunds
    return [await store.update(conn, b.cancel() if how == "cancel" else b.expire()) for b in before]


async def refund(
    svc: Services, who: Principal, text_id: str, amount: int | None, reason: str | None, identity: RequestIdentity,
    pairs: dict[str, Any] | None = None,
) -> Reply:
    pid = payment_id(text_id)
    if amount is not None:
        check_amount(amount)
    refund_metadata = metadata.check(pairs or {})
    head = await _merchant_head(svc, who, pid)
    if head["payer_id"] is None:
        # The same answer as an uncaptured payment's (the state machine's refusal): a 409, not a 400.
        raise InvalidState("the payment has not been paid", code="payment_not_refundable", status_now=head["status"])
    accounts = await _accounts_for(svc, head)

    async def work(conn: Connection) -> tuple[int, Any]:
        row = await _locked(conn, who, pid)
        return 201, await _refund_locked(conn, row, amount, reason, await _with_payer(conn, row, accounts),
                                         refund_metadata)

    return await svc.idempotency.run(identity, work)


async def _refund_locked(
    conn: Connection, row: asyncpg.Record, amount: int | None, reason: str | None,
    accounts: dict[ledger.AccountRef, ledger_store.Account], pairs: dict[str, str],
) -> views.RefundView:
    before = store.to_domain(row)
    payment, refunded = before.refund(amount)
    assert payment.payer_id is not None
    fee_back = fees.refund_fee_minor(before.captured_minor, before.fee_minor, before.refunded_minor, refunded)
    refund_id = ids.new()
    back = await promotions.claw_back(conn, row, before.refunded_minor, refunded)  # the campaign row, then balances
    converted = await fx_payments.lock_returns(conn, [(row, refunded - back.total_minor)])  # from another currency
    entry, accounts = await back.refund_entry(conn, payment.payer_id, payment.merchant_id, payment.currency, refunded,
                                              fee_back, accounts)  # the clawback back to its funder
    await ledger_store.post(conn, entry, accounts, payment_id=payment.id, refund_id=refund_id)
    refund_row = await store.insert_refund(conn, refund_id, payment, refunded, fee_back, reason, pairs,
                                           back.discount_minor, back.cashback_minor)
    await fx_payments.give_back(conn, converted, refund_id)  # what the wallet received, back at its own rate
    clawed = back.discount_minor
    await store.update(conn, payment,
                       discount_clawed_back_minor=row["discount_clawed_back_minor"] + clawed if clawed else None)
    view = views.refund_view(refund_row)
    await store.insert_event(
        conn, "refund.succeeded", refund_id, view, merchant_id=payment.merchant_id, holder_id=payment.payer_id
    )
    return view


async def list_refunds(svc: Services, who: Principal, page: PageRequest, q: ListQuery) -> views.RefundList:
    """The merchant's refunds, or one payment's (``q.payment``: a payment of another merchant is a 404)."""
    assert who.merchant_id is not None
    query = store.merchant_refunds(who.merchant_id, _list_filter(q))
    async with svc.db.connection() as conn:
        if q.payment is not None and await store.get(conn, payment_id(q.payment), merchant_id=who.merchant_id) is None:
            raise NotFound(f"no such payment: {q.payment}", param=q.payment_param)
        rows, has_more = await pages.read(conn, query, page, partial(decode, Kind.REFUND))
    return views.RefundList(data=[views.refund_view(r) for r in rows], has_more=has_more)


async def expire_due(svc: Services) -> int:
    """Expire open payments and lapsed authorisations (releasing holds). Safe in every process."""

    gave = _GiveBacks()

    async def work(conn: Connection) -> int:
        rows = await store.due_for_expiry(conn, svc.now(), svc.settings.workers.batch_max)
        # Holders' rows in one order in every process's batch (two batches never wait on each other in a circle).
        ordered = sorted(rows, key=lambda r: (r["payer_id"] is not None, r["payer_id"] or uuid.UUID(int=0), r["id"]))
        gave.back = any(promotions.reservation_given_back(row) is not None for row in ordered)
        for row, updated in zip(ordered, await _end_all(conn, ordered, "expire"), strict=True):
            await _record(conn, updated, row["payer_id"])
        return len(rows)

    expired = await svc.db.run(work)
    await _offer_given_back(svc, gave.back)
    return expired
