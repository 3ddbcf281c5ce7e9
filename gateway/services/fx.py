"""FX use cases: the operators' rate table (one by one or a CSV file), holders' quotes and conversions.

Invariants:
- rates are exact decimals end to end (text in the API and the file, ``numeric`` in the database);
  entering rates is an audited operator action (``fx_rate.created``, ``fx_rates.imported``), a file
  is stored whole or not at all;
- a quote fixes the rate, the fee and both amounts (gateway/domain/fx.py's rounding) for
  ``fx.quote_ttl_s``; a conversion carries out exactly its quote, once, in ONE transaction: the quote
  taken, one journal entry (wallet(A) -> fx_position(A) in A; fx_position(B) -> wallet(B) and
  fx_fees(B) in B), the conversion row and its event; anything refused leaves nothing moved;
- what is received is within the holder's tier: its tier must list the target currency and the
  target's balance cap holds after the conversion (as a top-up's does);
- lock order (gateway/services/payments.py's): the quote row (the code the holder presents), the
  holder (``FOR SHARE``), then the balance rows in (account id, shard) order;
- a conversion is money leaving the wallet in its source currency: the risk rules' blocks check it in its
  transaction (``risk.check_money_out``: a blocked wallet or session device is declined, its refusal
  recorded once per key, its quote left unused).
"""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

import msgspec

from gateway.auth.principals import Principal
from gateway.domain import fx as domain
from gateway.domain import ledger, limits
from gateway.domain.ids import Kind, decode, encode
from gateway.domain.money import check_amount, currency
from gateway.errors import Conflict, Declined, Forbidden, InvalidRequest, NotFound, Unavailable
from gateway.services import audit, pages, risk, views
from gateway.services.context import Services
from gateway.services.idempotency import Reply, RequestIdentity
from gateway.services.pages import PageRequest
from gateway.store import fx as store
from gateway.store import ledger as ledger_store
from gateway.store import payments as events
from gateway.store import wallets as wallet_store
from gateway.store.db import Connection


class FxRateView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "fx_rate"
    base: str
    quote: str
    rate: str  # exact decimal text: 1 base = rate quote
    spread_bps: int
    valid_from: views.Timestamp
    valid_until: views.Timestamp | None
    source: str  # "api" | "csv"
    created_at: views.Timestamp


class FxRateList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[FxRateView]
    has_more: bool
    next_cursor: str | None


class FxRateImportView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "fx_rate_import"
    rates_created: int
    first: FxRateView
    last: FxRateView


class FxQuoteView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "fx_quote"
    from_currency: str
    to_currency: str
    sell_amount: int  # minor units of from_currency
    receive_amount: int  # minor units of to_currency, the fee already taken
    fee: int  # minor units of to_currency
    fee_currency: str
    rate: str  # the holder's rate (spread taken): to_currency units per from_currency unit, exact
    mid_rate: str
    spread_bps: int
    fee_bps: int
    fx_rate: str
    expires_at: views.Timestamp
    created_at: views.Timestamp
    conversion: str | None  # set once the quote is converted


class ConversionView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "conversion"
    quote: str
    from_currency: str
    to_currency: str
    sell_amount: int
    receive_amount: int
    fee: int
    fee_currency: str
    rate: str
    balances: list[views.BalanceView]  # the wallet's two balances after the conversion
    created_at: views.Timestamp


def _ts(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())


def rate_view(row: Any) -> FxRateView:
    return FxRateView(
        id=encode(Kind.FX_RATE, row["id"]), base=row["base"], quote=row["quote"], rate=domain.rate_text(row["rate"]),
        spread_bps=row["spread_bps"], valid_from=row["valid_from"].isoformat(), valid_until=_ts(row["valid_until"]),
        source=row["source"], created_at=row["created_at"].isoformat(),
    )


def quote_view(row: Any) -> FxQuoteView:
    return FxQuoteView(
        id=encode(Kind.FX_QUOTE, row["id"]), from_currency=row["from_currency"], to_currency=row["to_currency"],
        sell_amount=row["sell_minor"], receive_amount=row["receive_minor"], fee=row["fee_minor"],
        fee_currency=row["to_currency"], rate=domain.rate_text(row["customer_rate"]),
        mid_rate=domain.rate_text(row["mid_rate"]), spread_bps=row["spread_bps"], fee_bps=row["fee_bps"],
        fx_rate=encode(Kind.FX_RATE, row["rate_id"]), expires_at=row["expires_at"].isoformat(),
        created_at=row["created_at"].isoformat(),
        conversion=encode(Kind.CONVERSION, row["conversion_id"]) if row["conversion_id"] else None,
    )


async def _store_rates(svc: Services, who: Principal | None, rows: list[domain.RateRow], source: str,
                       identity: RequestIdentity | None, single: bool) -> Reply:
    operator_id = who.id if who else None

    async def work(conn: Connection) -> tuple[int, Any]:
        stored = await store.insert_rates(conn, rows, source, operator_id)
        if single:
            view: Any = rate_view(stored[0])
            await audit.record(conn, who, "fx_rate.created", stored[0]["id"], view, merchant_id=None)
            return 201, view
        import_id = uuid.uuid4()
        view = FxRateImportView(id=f"fxi_{import_id.hex}", rates_created=len(stored), first=rate_view(stored[0]),
                                last=rate_view(stored[-1]))
        await audit.record(conn, who, "fx_rates.imported", import_id,
                           {"object": "fx_rate_import", "id": view.id, "rates_created": len(stored),
                            "rates": [encode(Kind.FX_RATE, r["id"]) for r in stored[:100]]}, merchant_id=None)
        return 201, view

    if identity is None:
        status, value = await svc.db.run(work)
        return Reply(status, msgspec.json.encode(value))
    return await svc.idempotency.run(identity, work)


async def create_rate(svc: Services, who: Principal, base: str, quote: str, rate: object, spread_bps: int,
                      valid_from: str | None, valid_until: str | None, identity: RequestIdentity) -> Reply:
    row = domain.rate_row(base, quote, rate, spread_bps, valid_from, valid_until, svc.now())
    return await _store_rates(svc, who, [row], "api", identity, single=True)


async def import_rates(svc: Services, who: Principal | None, text: str, identity: RequestIdentity | None) -> Reply:
    """Every line valid, or nothing stored (the refusal names ``line N``)."""
    rows = domain.parse_rates_csv(text, svc.settings.fx.import_rows_max, svc.now())
    return await _store_rates(svc, who, rows, "csv", identity, single=False)


async def list_rates(svc: Services, base: str | None, quote: str | None, page: PageRequest) -> FxRateList:
    b = currency(base, "base").code if base else None
    q = currency(quote, "quote").code if quote else None
    async with svc.db.connection() as conn:
        rows, more = await pages.read(conn, store.rates(b, q), page, partial(decode, Kind.FX_RATE))
    data = [rate_view(r) for r in rows]
    return FxRateList(data=data, has_more=more, next_cursor=data[-1].id if more and data else None)


async def create_quote(svc: Services, who: Principal, from_currency: str, to_currency: str,
                       sell_amount: object | None, receive_amount: object | None, identity: RequestIdentity) -> Reply:
    source, target = currency(from_currency, "from_currency"), currency(to_currency, "to_currency")
    if source.code == target.code:
        raise InvalidRequest("from_currency and to_currency must differ", code="same_currency", param="to_currency")
    if (sell_amount is None) == (receive_amount is None):
        raise InvalidRequest("give either sell_amount or receive_amount", code="amount_choice_required",
                             param="sell_amount")
    sell = check_amount(sell_amount, "sell_amount") if sell_amount is not None else None
    receive = check_amount(receive_amount, "receive_amount") if receive_amount is not None else None
    fee_bps, ttl_s = svc.settings.fx.fee_bps, svc.settings.fx.quote_ttl_s

    async def work(conn: Connection) -> tuple[int, Any]:
        holder = await wallet_store.holder_for_payment(conn, who.id)
        tier = svc.tiers[holder["tier"]]
        limits.payment_caps(tier, source.code)  # currency_not_supported, before any rate is looked at
        limits.payment_caps(tier, target.code)
        rate = await store.current_rate(conn, source.code, target.code)
        if rate is None:
            raise NotFound(f"no {source.code}/{target.code} rate is valid now", code="fx_rate_unavailable",
                           param="to_currency")
        mid = domain.directional(rate["rate"], rate["base"], source.code)
        holder_rate = domain.holder_rate(mid, rate["spread_bps"])
        if sell is not None:
            q = domain.Quote.of(source, target, holder_rate, fee_bps, sell)
        else:
            assert receive is not None
            q = domain.Quote.receiving(source, target, holder_rate, fee_bps, receive)
        row = await store.insert_quote(conn, uuid.uuid4(), who.id, rate["id"], mid, rate["spread_bps"], q, ttl_s)
        return 201, quote_view(row)

    return await svc.idempotency.run(identity, work)


def _balance(code: str, posted: int, held: int) -> views.BalanceView:
    return views.BalanceView(currency=code, available=posted - held, held=held, total=posted)


async def convert(svc: Services, who: Principal, quote_text: str, identity: RequestIdentity) -> Reply:
    quote_id = decode(Kind.FX_QUOTE, quote_text)
    if quote_id is None:
        raise NotFound(f"no such quote: {quote_text}", param="quote")
    async with svc.db.connection() as conn:
        q = await store.quote(conn, quote_id, who.id)
        if q is None:
            raise NotFound(f"no such quote: {quote_text}", param="quote")
        source, target = q["from_currency"], q["to_currency"]
        available = {r["currency"]: r["posted_minor"] - r["held_minor"]
                     for r in await wallet_store.wallet_accounts(conn, who.id)}
        # Accounts are opened (the target wallet's among them) only for a conversion that looks able to
        # go ahead: an unknown, used or expired quote, a wallet lacking the funds, or a blocked wallet or
        # device, is refused by ``work`` (and stored for the key) without leaving an empty wallet behind.
        # A retry of a done conversion is replayed before ``work`` runs.
        likely = q["used_at"] is None and q["expires_at"] > svc.now() and available.get(source, 0) >= q["sell_minor"]
        hinted_blocked = likely and await risk.money_out_blocked(svc, conn, who, channel="conversion",
                                                                 currency=source, amount_minor=q["sell_minor"])
        accounts = await ledger_store.resolve_accounts(conn, [
            ledger.wallet(who.id, source), ledger.wallet(who.id, target), ledger.fx_position(source),
            ledger.fx_position(target), ledger.fx_fees(target),
        ]) if likely and not hinted_blocked else {}

    async def work(conn: Connection) -> tuple[int, Any]:
        conversion_id = uuid.uuid4()
        row = await store.use_quote(conn, quote_id, who.id, conversion_id)
        if row is None:
            seen = await store.quote(conn, quote_id, who.id)
            if seen is not None and seen["used_at"] is not None:
                raise Conflict("this quote has been converted already; ask for a new quote", code="quote_used",
                               param="quote")
            raise Conflict("this quote has expired; ask for a new quote", code="quote_expired", param="quote")
        holder = await wallet_store.holder_for_payment(conn, who.id)
        if holder["payments_locked_at"] is not None:
            raise Forbidden("this wallet is locked after too many wrong PINs; an operator can unlock it",
                            code="wallet_locked")
        await risk.check_money_out(svc, conn, who, channel="conversion", currency=source,
                                   amount_minor=row["sell_minor"])
        if hinted_blocked:  # the block was lifted since the hint: no account was opened, nothing is lacking
            raise Unavailable("the wallet's risk rules changed during the conversion; retry it")
        tier = svc.tiers[holder["tier"]]
        limits.payment_caps(tier, target)  # the tier may have changed since the quote
        if not accounts:  # the wallet lacked the funds a moment ago (or never held the currency)
            raise Declined("the wallet's available balance is lower than the amount", code="insufficient_funds",
                           param="quote")
        from_ref, to_ref = ledger.wallet(who.id, source), ledger.wallet(who.id, target)
        # Both wallets first, in account id order (the lock order), before the FX shards the posting takes.
        await ledger_store.lock_single_shard(conn, [accounts[from_ref].id, accounts[to_ref].id])
        entry = ledger.conversion(who.id, source, target, row["sell_minor"], row["receive_minor"], row["fee_minor"])
        try:
            await ledger_store.post(conn, entry, accounts, conversion_id=conversion_id)
        except ledger_store.InsufficientFunds:
            raise Declined("the wallet's available balance is lower than the amount", code="insufficient_funds",
                           param="quote") from None
        found = await ledger_store.balances_of(conn, [accounts[from_ref].id, accounts[to_ref].id])
        posted_to, held_to = found[accounts[to_ref].id]
        # The target wallet's row is locked by the posting: concurrent conversions into it queue here.
        limits.check_top_up(tier, target, posted_to - row["receive_minor"], row["receive_minor"])
        created = await store.insert_conversion(conn, conversion_id, row)
        view = ConversionView(
            id=encode(Kind.CONVERSION, conversion_id), quote=quote_text, from_currency=source, to_currency=target,
            sell_amount=row["sell_minor"], receive_amount=row["receive_minor"], fee=row["fee_minor"],
            fee_currency=target, rate=domain.rate_text(row["customer_rate"]),
            balances=[_balance(source, *found[accounts[from_ref].id]), _balance(target, posted_to, held_to)],
            created_at=created["created_at"].isoformat(),
        )
        await events.insert_event(conn, "wallet.conversion", conversion_id, view, merchant_id=None, holder_id=who.id)
        return 201, view

    return await svc.idempotency.run(identity, work, refused=risk.record_refusal)
