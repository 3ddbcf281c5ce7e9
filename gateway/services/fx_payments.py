"""Paying a payment in a currency the wallet lacks (Alipay abroad), and refunds and releases converted back.

What the payer sees and does:
- the payment's preview (``POST /v1/wallet/qr/preview``, ``GET /v1/payments/{id}`` as its payer)
  carries ``fx_offer`` when the wallet's available balance in the payment's currency is short and
  another of its currencies can pay: "you pay X EUR = Y CNY at rate R, fee F, valid N s", with the
  quote id (a quote offered for that payment, reused while it has ``_OFFER_LEFT_MIN_S`` left);
- the pay call (``/v1/wallet/payments/{id}/pay``, ``/v1/wallet/qr/pay``) takes ``fx_quote``: the
  payment is then paid through that quote, honoured once, at exactly its rate and amounts. Any quote
  of the holder into the payment's currency receiving at least what the wallet pays of it will do (one
  from ``POST /v1/wallet/fx_quotes`` too: the payer may choose the currency it pays from). What the
  wallet pays is the amount less a campaign's discount granted with an automatic capture: the offer
  quotes that, and a quote buying less than the wallet then pays (the discount ended meanwhile) is
  refused (``quote_mismatch``) in the payment's transaction;
- without ``fx_quote`` nothing is converted: a wallet short in the payment's currency is declined
  (``insufficient_funds``) as before. The payer must have seen and accepted the rate (a fresh quote),
  as a wallet does; there is no silent conversion at an unseen rate, and the one-statement path of
  payments in the wallet's own currency is unchanged (a payment with ``fx_quote`` takes the general one).

Money (one transaction with the payment's hold or capture, in the use cases' lock order: the
payment row, the holder, the day's spend, the quote row, then balance rows):
- the quote's conversion into the holder's wallet in the payment's currency (one ``conversion``
  entry through the FX positions, fee to ``fx_fees``; the conversion row names the payment); the
  payment then holds or captures from that wallet exactly as a payment in the wallet's own
  currency does. A manual-capture payment is thus converted at authorisation and held in the
  payment's currency; capturing less, cancelling or expiring releases the hold and converts what it
  released back, at the conversion's own rate, in the release's transaction (``lock_returns``);
- any rounding excess of the quote (it buys at least the amount) stays in the holder's wallet.
- a refund converts back what it credits to the wallet at the ORIGINAL conversion's rate
  (gateway/domain/fx_payments.py: running totals rounded down), in the refund's transaction; a release
  does the same with what it frees, through the same code and the same running totals.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg
import msgspec

from gateway.domain import fx as fx_domain
from gateway.domain import ledger, limits
from gateway.domain.fx_payments import Return
from gateway.domain.ids import Kind, decode, encode
from gateway.domain.limits import Tier
from gateway.domain.money import currency
from gateway.domain.payments import Payment
from gateway.errors import Conflict, Declined, GatewayError, InvalidRequest, NotFound
from gateway.services import views
from gateway.services.context import Services
from gateway.store import fx as fx_store
from gateway.store import fx_payments as store
from gateway.store import ledger as ledger_store
from gateway.store import wallets as wallet_store
from gateway.store.db import Connection

_OFFER_LEFT_MIN_S = 10  # a preview reuses its payment's open quote only with this long left to pay


@dataclass(frozen=True, slots=True)
class Funding:
    """A pay call's ``fx_quote``, checked and its accounts resolved before the payment's transaction."""

    quote_id: uuid.UUID
    accounts: dict[ledger.AccountRef, ledger_store.Account]  # empty: it looked unable to pay a moment ago


def _unknown(text: str) -> NotFound:
    return NotFound(f"no such quote: {text}", param="fx_quote")


def _refuse_mismatch(q: asyncpg.Record, currency_code: str, pays_minor: int | None) -> None:
    if q["to_currency"] != currency_code:
        raise InvalidRequest(f"the quote buys {q['to_currency']}, the payment is in {currency_code}",
                             code="quote_mismatch", param="fx_quote")
    if pays_minor is not None and q["receive_minor"] < pays_minor:
        raise InvalidRequest("the quote buys less than the wallet pays for this payment (a discount offered with"
                             " the quote may have ended): ask for a new quote", code="quote_mismatch",
                             param="fx_quote")


async def prepare(svc: Services, holder_id: uuid.UUID, quote_text: str, currency_code: str) -> Funding:
    """The quote a payer pays with: its own, into the payment's currency (whether it buys enough is known
    only in the payment's transaction, with its discount: ``fund_locked``). Accounts are opened only for a
    payment that looks able to go ahead (as ``fx.convert`` does)."""
    quote_id = decode(Kind.FX_QUOTE, quote_text)
    if quote_id is None:
        raise _unknown(quote_text)
    async with svc.db.connection() as conn:
        q = await fx_store.quote(conn, quote_id, holder_id)
        if q is None:
            raise _unknown(quote_text)
        _refuse_mismatch(q, currency_code, None)
        source, target = q["from_currency"], q["to_currency"]
        available = {r["currency"]: r["posted_minor"] - r["held_minor"]
                     for r in await wallet_store.wallet_accounts(conn, holder_id)}
        likely = q["used_at"] is None and q["expires_at"] > svc.now() and available.get(source, 0) >= q["sell_minor"]
        accounts = await ledger_store.resolve_accounts(conn, [
            ledger.wallet(holder_id, source), ledger.wallet(holder_id, target), ledger.fx_position(source),
            ledger.fx_position(target), ledger.fx_fees(target),
        ]) if likely else {}
    return Funding(quote_id, accounts)


async def fund_locked(conn: Connection, funding: Funding, holder_id: uuid.UUID, payment: Payment,
                      tier: Tier, pays_minor: int) -> None:
    """Convert the quote into the holder's wallet in the payment's currency, for the authorisation that
    follows in this transaction (its hold or capture then finds the money there). ``pays_minor``: what the
    wallet pays of the payment, its discount taken off; a quote buying less is refused."""
    conversion_id = uuid.uuid4()
    q = await fx_store.use_quote(conn, funding.quote_id, holder_id, conversion_id)
    if q is None:
        seen = await fx_store.quote(conn, funding.quote_id, holder_id)
        if seen is not None and seen["used_at"] is not None:
            raise Conflict("this quote has been used already; ask for a new quote", code="quote_used",
                           param="fx_quote")
        raise Conflict("this quote has expired; ask for a new quote", code="quote_expired", param="fx_quote")
    _refuse_mismatch(q, payment.currency, pays_minor)
    limits.payment_caps(tier, q["from_currency"])  # the tier may have changed since the quote
    if not funding.accounts:
        raise Declined("the wallet's available balance is lower than the quote sells", code="insufficient_funds",
                       param="fx_quote")
    source, target = q["from_currency"], q["to_currency"]
    accounts = funding.accounts
    # Both wallets in account id order (the lock order), before the FX shards the posting takes.
    await ledger_store.lock_single_shard(
        conn, [accounts[ledger.wallet(holder_id, source)].id, accounts[ledger.wallet(holder_id, target)].id])
    entry = ledger.conversion(holder_id, source, target, q["sell_minor"], q["receive_minor"], q["fee_minor"])
    try:
        await ledger_store.post(conn, entry, accounts, conversion_id=conversion_id)
    except ledger_store.InsufficientFunds:
        raise Declined("the wallet's available balance is lower than the quote sells", code="insufficient_funds",
                       param="fx_quote") from None
    await store.insert_payment_conversion(conn, conversion_id, q, payment.id)


def _view(q: asyncpg.Record, amount_minor: int, *, quote_id: uuid.UUID, conversion_id: uuid.UUID | None,
          expires_at: datetime | None, now: datetime) -> views.PaymentFxView:
    rate: Decimal = q["customer_rate"]
    left_s = None if expires_at is None else max(0, int((expires_at - now).total_seconds()))
    return views.PaymentFxView(
        quote=encode(Kind.FX_QUOTE, quote_id),
        conversion=encode(Kind.CONVERSION, conversion_id) if conversion_id is not None else None,
        from_currency=q["from_currency"], from_amount=q["sell_minor"], to_currency=q["to_currency"],
        to_amount=q["receive_minor"], amount=amount_minor, rate=fx_domain.rate_text(rate), fee=q["fee_minor"],
        fee_currency=q["to_currency"], expires_at=expires_at.isoformat() if expires_at is not None else None,
        valid_for_s=left_s,
    )


def pays_through_quote(payment: asyncpg.Record, discount: views.DiscountOffer | None) -> int:
    """What a wallet paying ``payment`` through a quote pays of it, as its preview shows: the amount less the
    discount offered beside it for an automatic capture (granted with the capture); the whole amount for a
    manual capture, whose quoted authorisation is not discounted (``payments.authorize_locked``)."""
    if discount is not None and payment["capture_method"] == "automatic":
        return discount.amount_to_pay
    return int(payment["amount_minor"])


async def offer(svc: Services, conn: Connection, holder_id: uuid.UUID, payment: asyncpg.Record,
                discount: views.DiscountOffer | None) -> views.PaymentFxView | None:
    """The quote a preview offers for paying ``payment`` from another currency, when the wallet's available
    balance in its currency is short of what it would pay without a quote (the discount taken off): from the first of the holder's other currencies (by code) that its
    tier lists, has a rate into the payment's currency now and covers what the wallet pays (the amount less
    ``discount``, the discount the preview offers: ``pays_through_quote``). None otherwise."""
    target_code = payment["currency"]
    pays = pays_through_quote(payment, discount)
    own = discount.amount_to_pay if discount is not None else int(payment["amount_minor"])  # paid without a quote
    available = {r["currency"]: r["posted_minor"] - r["held_minor"]
                 for r in await wallet_store.wallet_accounts(conn, holder_id)}
    if available.get(target_code, 0) >= own:  # the common case: one read, nothing offered
        return None
    holder = await wallet_store.holder_for_payment(conn, holder_id)
    tier = svc.tiers[holder["tier"]]
    try:
        limits.payment_caps(tier, target_code)
    except GatewayError:
        return None
    target = currency(target_code)
    fee_bps, ttl_s = svc.settings.fx.fee_bps, svc.settings.fx.quote_ttl_s
    for source_code, balance in available.items():
        if source_code == target_code or balance <= 0:
            continue
        rate = await fx_store.current_rate(conn, source_code, target_code)
        if rate is None:
            continue
        try:
            limits.payment_caps(tier, source_code)
            mid = fx_domain.directional(rate["rate"], rate["base"], source_code)
            q = fx_domain.Quote.receiving(currency(source_code), target, fx_domain.holder_rate(mid, rate["spread_bps"]),
                                          fee_bps, pays)
        except GatewayError:
            continue
        if q.sell_minor > balance:
            continue
        row = await store.open_quote(conn, payment["id"], holder_id, rate["id"], source_code, q.sell_minor,
                                     q.receive_minor, _OFFER_LEFT_MIN_S)
        if row is None:
            row = await fx_store.insert_quote(conn, uuid.uuid4(), holder_id, rate["id"], mid, rate["spread_bps"], q,
                                              ttl_s, payment_id=payment["id"])
        return _view(row, pays, quote_id=row["id"], conversion_id=None, expires_at=row["expires_at"], now=svc.now())
    return None


async def paid_with(conn: Connection, payment: asyncpg.Record) -> views.PaymentFxView | None:
    """The conversion a payment was paid through, for its payer's view (None: paid in its own currency)."""
    c = await store.payment_conversion(conn, payment["id"])
    if c is None:
        return None
    return _view(c, _wallet_took(payment), quote_id=c["quote_id"], conversion_id=c["id"], expires_at=None,
                 now=c["created_at"])


def _wallet_took(payment: asyncpg.Record) -> int:
    """What the payment took from the payer's wallet when it was paid: its authorisation less a reserved
    discount, or less a bank-funded discount granted with the capture (the promotions account paid that)."""
    if payment["discount_reserved_minor"] > 0:
        return int(payment["authorized_minor"] - payment["discount_reserved_minor"])
    bank = payment["discount_minor"] if payment["discount_funded_by"] == "bank" else 0
    return int(payment["authorized_minor"] - bank)


async def offers(svc: Services, conn: Connection, holder_id: uuid.UUID, payment: asyncpg.Record,
                 discount: views.DiscountOffer | None
                 ) -> tuple[views.DiscountOffer | None, views.PaymentFxView | None]:
    """What a preview of ``payment`` offers its holder: the discount and the quote (``offer``). A manual
    capture paid through a quote is not discounted (``payments.authorize_locked``), so beside its quote, the
    wallet's only way to pay it now, no discount is offered."""
    fx_offer = await offer(svc, conn, holder_id, payment, discount)
    if fx_offer is not None and payment["capture_method"] != "automatic":
        discount = None
    return discount, fx_offer


async def payer_side(svc: Services, conn: Connection, holder_id: uuid.UUID, payment: asyncpg.Record,
                     view: views.PayerPaymentView) -> views.PayerPaymentView:
    """A payment as a holder sees it: unpaid, what paying it from another currency would cost (``fx_offer``,
    for what it pays with the view's ``discount_offer`` taken off: ``offers``); paid by this holder, the
    conversion it was paid through (``fx``)."""
    if payment["status"] == "requires_payment_method":
        discount, fx_offer = await offers(svc, conn, holder_id, payment, view.discount_offer)
        return msgspec.structs.replace(view, discount_offer=discount, fx_offer=fx_offer)
    if payment["payer_id"] == holder_id:
        return with_fx(view, await paid_with(conn, payment))
    return view


def with_fx(view: views.PayerPaymentView, fx: views.PaymentFxView | None) -> views.PayerPaymentView:
    return view if fx is None else msgspec.structs.replace(view, fx=fx)


@dataclass(frozen=True, slots=True)
class Returning:
    """Money of a payment's currency given back to its holder's wallet (a refund's credit, or the part of a
    hold released) and converted back, decided (and its balance shards locked) before the entry that gives it."""

    conversion_id: uuid.UUID
    payment_id: uuid.UUID
    given: Return
    entry: ledger.Entry
    accounts: dict[ledger.AccountRef, ledger_store.Account]
    move: ledger_store.Movement


async def lock_returns(conn: Connection, given: list[tuple[asyncpg.Record, int]]) -> list[Returning]:
    """The first step of giving money back: for each (locked payment row, T minor units its wallet gets back:
    what a refund credits, or what a cancel, expiry or capture of less releases of the hold), the conversion
    back of those units AT THE PAYMENT'S OWN CONVERSION'S RATE, one piece of arithmetic for refunds and
    releases (``Return.of``: running totals rounded down, so together they never give back more than the
    conversion took). Payments in the wallet's own currency convert nothing: empty.

    Locks, for the whole list at once (the expiry worker gives back a batch in one transaction), after
    the daily spend rows the caller took: the conversion rows, then every wallet the list touches (each
    payment's wallet, and its holder's source wallet) in account id order, then every FX shard the returns
    change in (account id, shard) order, before the caller's entries take the merchant's: a pay through a
    quote takes FX shards before the merchant's too, so the use cases never deadlock. One payment in the
    wallet's own currency locks nothing here (its entry locks its one wallet); several lock their wallets
    in account id order all the same (a batch's holder may hold in two currencies while it pays through
    a quote, which takes both wallets in that order)."""
    owed = {row["id"]: (row, target_minor) for row, target_minor in given
            if target_minor > 0 and row["payer_id"] is not None}
    conversions = await store.payment_conversions(conn, list(owed)) if owed else []
    if not conversions and len(owed) < 2:
        return []
    accounts = await ledger_store.existing_accounts(conn, [ref for c in conversions for ref in _refs(c)])
    await ledger_store.lock_single_shard(conn, sorted(
        {row["wallet_account_id"] for row, _ in owed.values()}
        | {accounts[ledger.wallet(c["holder_id"], c["from_currency"])].id for c in conversions}))
    backs = []
    for c in conversions:
        back = Return.of(c["sell_minor"], c["receive_minor"], c["fee_minor"], c["returned_minor"],
                         owed[c["payment_id"]][1])
        entry = ledger.conversion_return(c["holder_id"], c["from_currency"], c["to_currency"], back.target_minor,
                                         back.source_minor, back.fee_minor)
        backs.append(Returning(c["id"], c["payment_id"], back, entry, accounts, ledger_store.movement(entry, accounts)))
    if backs:
        await ledger_store.lock(conn, *(b.move for b in backs))
    return backs


def _refs(c: asyncpg.Record) -> list[ledger.AccountRef]:
    holder, source, target = c["holder_id"], c["from_currency"], c["to_currency"]
    return [ledger.wallet(holder, source), ledger.wallet(holder, target), ledger.fx_position(source),
            ledger.fx_position(target), ledger.fx_fees(target)]


async def give_back(conn: Connection, backs: list[Returning], refund_id: uuid.UUID | None = None) -> None:
    """Convert back what ``lock_returns`` decided, after the entry that put it in the holder's wallet (a
    refund's, ``refund_id``) or freed it there (a release: the return then names the payment), in its
    transaction. One ``conversion_return`` entry each; the conversion's ``returned_*`` totals grow with it."""
    for back in backs:
        await ledger_store.post(conn, back.entry, back.accounts, refund_id=refund_id,
                                payment_id=back.payment_id if refund_id is None else None,
                                conversion_id=back.conversion_id, move=back.move)
        await store.add_returned(conn, back.conversion_id, back.given)
