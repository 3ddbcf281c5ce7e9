"""Promotion campaigns: the operator's use cases, the per-process cache of live campaigns, and what
the payment path asks of them (may one apply? take it; claw it back on a refund).

Invariants:
- whether a discount is given is decided by the database, in the payment's own transaction, by the
  guarded statements of ``store.promotions.take``: the cache only says which campaigns to try (and
  what a preview shows), so a campaign ended, expired or exhausted gives nothing at once, and places
  and budget are never exceeded, whatever any process's cache holds;
- the cache holds the campaigns not ended and not past their end; it is loaded when the app starts,
  reloaded every ``promotions.cache_refresh_s`` in the background, and at once in a process that
  created or ended a campaign (after the commit). A load that began before another is never kept
  after it. Until the first load succeeds, and when loads fail for 3 refresh periods, it answers
  "unknown", and every payment goes to the general path, which reads the campaigns itself;
- so deciding that no campaign applies to a payment costs no database or Redis round trip, and a
  payment one campaign discounts (its whole stated benefit, while the cached budget covers it) is
  paid by the one-statement path too, which takes the use, place and budget under the same guards
  (``from_memory``; migration 0025); a campaign created in another process applies there within
  ``cache_refresh_s``;
- a payment is discounted as it is authorised: captured at once, or held for a manual capture (its
  authorisation reserves the discount: the wallet holds amount - discount, and the capture keeps its share,
  ``domain.promotions.capture_share``, giving the rest back with ``give_back``; a cancel or an expiry gives
  back the budget, the place and the holder's use), or when its payer confirms it (a risk step-up or a
  pay-code charge held in requires_action is discounted by its confirmation, not before); a payment
  paid from another currency through a quote is discounted only when captured at once (its conversion
  is for the full amount); the holder's daily cap counts the full amount;
- cashback is taken and credited in the transaction of the capture that earns it (captured at once,
  a later manual capture, a confirmed pay-code charge), on the amount captured, from the campaign
  live at that capture; a payment gets a discount or a cashback, never both (the better of them is
  not weighed: a discount, when one applies, is taken first);
- a first-payment gift goes with the holder's first captured payment ever, whatever the campaign
  (a holder who paid before any such campaign ran never gets one); registration gifts are taken in
  the registration's transaction, one from each live registration campaign;
- a bank-funded cashback and gifts are posted with the capture's own entry in one statement
  (``ledger_store.post_together``); a merchant-funded cashback is two legs of the capture's entry itself
  (``ledger.with_merchant_cashback``: the merchant's receivable pays it to the wallet), at most what the
  merchant receives from the capture (captured - fee); neither ever funds the payment it is paid on;
- a refund takes the cashback back in proportion, netted from what it gives the holder, so a holder
  who spent it is never overdrawn, and returns it to whoever funded it: the promotions account
  (``ledger.discounted_refund``) or the merchant (``ledger.refund``'s merchant claw-back leg), which
  settlement then counts in the merchant's net; gifts are never taken back.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.auth.principals import Principal
from gateway.domain import fees, ledger, promotions
from gateway.domain.ids import Kind, decode
from gateway.domain.money import check_amount, currency
from gateway.domain.promotions import COUNT_MAX, Campaign, Funder, Offer, Purchase, Rule
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.services import audit, pages, views
from gateway.services.campaign_cache import CampaignCache
from gateway.services.context import Services
from gateway.services.idempotency import Reply, RequestIdentity
from gateway.services.pages import PageRequest
from gateway.store import ledger as ledger_store
from gateway.store import promotions as store
from gateway.store.db import Connection



# --- the payment path ---------------------------------------------------------------------------


def purchase_of(row: Any, mcc: str | None = None) -> Purchase:
    return Purchase(merchant_id=row["merchant_id"], store_id=row["store_id"], currency=row["currency"],
                    amount_minor=row["amount_minor"], mcc=mcc)


# What a capture can credit: while one of these may apply to a payment, the general path pays it.
_AT_CAPTURE = frozenset({Rule.CASHBACK, Rule.GIFT_FIRST_PAYMENT})


@dataclass(frozen=True, slots=True)
class FromMemory:
    """What the hot path learns of a payment's campaigns without a round trip: ``known`` False when
    only the general path can tell (the cache cannot, a campaign's MCCs need a merchant's MCC not
    cached yet, the best campaign's budget left is below its discount: the general path gives
    those last units; or a cashback or first-payment gift may apply: the general path credits
    them); else ``offer`` is the discount to take whole (None: no campaign applies)."""

    known: bool
    offer: Offer | None = None


def from_memory(cache: CampaignCache, row: Any, now: datetime) -> FromMemory:
    """The best campaign for this payment, from memory (see ``FromMemory``). Taking it is still the
    database's decision (the one-statement path's guards, as ``store.take``'s)."""
    campaigns = cache.current()
    if campaigns is None:
        return FromMemory(known=False)
    if not campaigns:
        return FromMemory(known=True)
    if promotions.may_apply(campaigns, purchase_of(row), now, _AT_CAPTURE):
        return FromMemory(known=False)  # a cashback or a first-payment gift: the general path credits them
    found = promotions.offers(campaigns, purchase_of(row), now)  # with no MCC: a superset of the answer
    if found and any(o.campaign.mccs for o in found):
        mcc = cache.known_mcc(row["merchant_id"])
        if mcc is None:
            return FromMemory(known=False)
        found = promotions.offers([o.campaign for o in found], purchase_of(row, mcc), now)
    if not found:
        return FromMemory(known=True)
    best = found[0]
    if best.benefit_minor != promotions.stated_benefit_minor(best.campaign, row["amount_minor"]):
        return FromMemory(known=False)
    return FromMemory(known=True, offer=best)


async def _campaigns(cache: CampaignCache, conn: Connection, now: datetime) -> tuple[Campaign, ...]:
    campaigns = cache.current()
    if campaigns is None:
        campaigns = tuple(store.to_domain(r) for r in await store.live(conn, now, cache.live_max))
    return campaigns


async def _offers(cache: CampaignCache, conn: Connection, row: Any, now: datetime,
                  rules: frozenset[Rule] = promotions.DISCOUNTS, captured_minor: int | None = None,
                  fee_minor: int = 0) -> list[Offer]:
    campaigns = await _campaigns(cache, conn, now)
    if not campaigns:
        return []
    rough = promotions.offers(campaigns, purchase_of(row), now, rules, captured_minor, fee_minor)
    if not rough:
        return []
    mcc = await cache.mcc(conn, row["merchant_id"]) if any(o.campaign.mccs for o in rough) else None
    return promotions.offers([o.campaign for o in rough], purchase_of(row, mcc), now, rules, captured_minor, fee_minor)


@dataclass(frozen=True, slots=True)
class Grant:
    campaign_id: uuid.UUID
    funded_by: Funder
    discount_minor: int


async def grant(cache: CampaignCache, conn: Connection, row: Any, holder_id: uuid.UUID,
                now: datetime) -> Grant | None:
    """Take the best campaign that still gives this payment something, in the payment's transaction
    (its rollback gives the place, the budget and the holder's use back); None: none does. Tried in
    the order of ``domain.promotions.offers``, at most three."""
    for offer in (await _offers(cache, conn, row, now))[:3]:
        c = offer.campaign
        taken = await store.take(conn, c.id, holder_id, promotions.stated_benefit_minor(c, row["amount_minor"]),
                                 now, c.per_holder_max)
        if taken is not None:
            return Grant(c.id, c.funded_by, taken)
    return None


async def _usable(conn: Connection, found: list[Offer], holder_id: uuid.UUID | None) -> Offer | None:
    """The first offer whose per-holder limit the holder has not reached (places and budget as last loaded)."""
    if not found:
        return None
    used = {}
    if holder_id is not None:
        used = {r["campaign_id"]: r["uses"] for r in await store.holder_uses(conn, holder_id)}
    for o in found:
        limit = o.campaign.per_holder_max
        if limit is None or used.get(o.campaign.id, 0) < limit:
            return o
    return None


async def offer_for(cache: CampaignCache, conn: Connection, row: Any, holder_id: uuid.UUID | None,
                    now: datetime) -> views.DiscountOffer | None:
    """What a preview shows: the discount paying now would get, if its places and budget last (the
    holder's own limit is looked at; the places and budget as last loaded)."""
    o = await _usable(conn, await _offers(cache, conn, row, now), holder_id)
    if o is None:
        return None
    return views.DiscountOffer(campaign=views.campaign_id(o.campaign.id), amount=o.benefit_minor,
                               funded_by=o.campaign.funded_by.value,
                               amount_to_pay=row["amount_minor"] - o.benefit_minor)


async def cashback_offer_for(cache: CampaignCache, conn: Connection, row: Any, holder_id: uuid.UUID | None,
                             now: datetime, discount: views.DiscountOffer | None) -> views.CashbackOffer | None:
    """What a preview shows of the cashback capturing the whole amount now would credit (none when a
    discount applies: a payment gets one or the other)."""
    if discount is not None:
        return None
    fee = fees.fee_minor(row["amount_minor"], row["fee_bps"], row["fee_fixed_minor"])
    o = await _usable(conn, await _offers(cache, conn, row, now, frozenset({Rule.CASHBACK}), fee_minor=fee), holder_id)
    return None if o is None else views.CashbackOffer(campaign=views.campaign_id(o.campaign.id), amount=o.benefit_minor,
                                                      funded_by=o.campaign.funded_by.value)


@dataclass(frozen=True, slots=True)
class Credit:
    """What a capture (or a registration) credits the holder's wallet: from the promotions account, or
    (a merchant-funded cashback) from the merchant's receivable, in the capture's own entry."""

    campaign_id: uuid.UUID
    rule: Rule  # CASHBACK, GIFT_FIRST_PAYMENT or GIFT_REGISTRATION
    amount_minor: int
    currency: str
    funded_by: Funder = Funder.BANK
    merchant_id: uuid.UUID | None = None  # the merchant paying a merchant-funded cashback

    def entry(self, holder_id: uuid.UUID) -> ledger.Entry:
        """The bank's credit as its own entry (a merchant's cashback is no entry: ``capture_entry``)."""
        assert self.funded_by is Funder.BANK
        if self.rule is Rule.CASHBACK:
            return ledger.cashback(holder_id, self.currency, self.amount_minor)
        return ledger.gift(holder_id, self.currency, self.amount_minor)

    def capture_entry(self, capture: ledger.Entry, holder_id: uuid.UUID) -> ledger.Entry:
        """The capture's entry with this credit's legs in it when the merchant funds it (else unchanged)."""
        if self.funded_by is Funder.BANK:
            return capture
        assert self.merchant_id is not None
        return ledger.with_merchant_cashback(capture, holder_id, self.merchant_id, self.currency, self.amount_minor)


async def credits_at_capture(cache: CampaignCache, conn: Connection, row: Any, holder_id: uuid.UUID,
                             captured_minor: int, now: datetime, *, discounted: bool, fee_minor: int = 0) -> list[Credit]:
    """Take, in the capture's transaction and before its balance rows (lock order 4a: the cashback's
    campaign, then the gift's), the cashback of this capture (none for a discounted payment; a
    merchant-funded one at most ``captured_minor - fee_minor``) and the holder's first-payment gift if
    this is its first captured payment; both recorded (the cashback and who funds it on the payment row,
    which the caller updates next). From memory when no such campaign can apply."""
    campaigns = await _campaigns(cache, conn, now)
    if not promotions.may_apply(campaigns, purchase_of(row), now, _AT_CAPTURE):
        return []
    credits = []
    if not discounted:
        found = await _offers(cache, conn, row, now, frozenset({Rule.CASHBACK}), captured_minor, fee_minor)
        for offer in found[:3]:
            c = offer.campaign
            stated = promotions.stated_benefit_minor(c, row["amount_minor"], captured_minor, fee_minor)
            taken = await store.take(conn, c.id, holder_id, stated, now, c.per_holder_max)
            if taken is not None:
                await store.record_cashback(conn, row["id"], c.id, taken, c.funded_by.value)
                credits.append(Credit(c.id, Rule.CASHBACK, taken, c.currency, c.funded_by, row["merchant_id"]))
                break
    gifts = await _offers(cache, conn, row, now, frozenset({Rule.GIFT_FIRST_PAYMENT}))
    if gifts and not await store.holder_has_paid(conn, holder_id, row["id"]):
        gift = await _take_gift(conn, [o.campaign for o in gifts], holder_id, row["id"], now)
        if gift is not None:
            credits.append(gift)
    return credits


class _GiftTakenAlready(Exception):
    """Rolls a gift's take back to its savepoint: the holder got that gift in a concurrent transaction."""


async def _take_gift(conn: Connection, campaigns: list[Campaign], holder_id: uuid.UUID,
                     payment_id: uuid.UUID | None, now: datetime) -> Credit | None:
    """The first of ``campaigns`` (at most three tried) that still gives the holder its gift, taken and
    recorded; None when none does, or the holder has it (or, on a payment, a first-payment gift) already."""
    kind = "first_payment" if payment_id is not None else "registration"
    for c in campaigns[:3]:
        try:
            async with conn.transaction():  # a savepoint: a gift refused below gives its take back with it
                granted = await store.take(conn, c.id, holder_id, c.fixed_minor, now, 1)
                if granted is None:
                    continue
                if await store.insert_gift(conn, uuid.uuid4(), kind, c.id, holder_id, payment_id, c.currency, granted):
                    return Credit(c.id, c.rule, granted, c.currency)
                raise _GiftTakenAlready
        except _GiftTakenAlready:
            return None
    return None


async def post_capture(conn: Connection, entry: ledger.Entry, credits: list[Credit],
                       accounts: dict[ledger.AccountRef, ledger_store.Account], *, holder_id: uuid.UUID,
                       payment_id: uuid.UUID, release_holds: dict[ledger.AccountRef, int] | None = None) -> None:
    """Post a capture's entry with the credits it earned, in one statement: a merchant-funded cashback in
    the capture's entry itself, the bank's credits as entries of their own."""
    bank = [c for c in credits if c.funded_by is Funder.BANK]
    for c in credits:
        entry = c.capture_entry(entry, holder_id)
    if bank:
        accounts = {**accounts, **await ledger_store.existing_accounts(
            conn, [ledger.promotions(c.currency) for c in bank])}
    await ledger_store.post_together(conn, [entry, *(c.entry(holder_id) for c in bank)], accounts,
                                     payment_id=payment_id, release_holds=release_holds)


async def registration_accounts(svc: Services, holder_id: uuid.UUID) -> dict[ledger.AccountRef, ledger_store.Account]:
    """The accounts a registration's gifts would touch (the new holder's wallets, the promotions
    accounts), created before its transaction (an account must be committed before its id is
    cached); none, and no round trip, when no registration gift is live. A registration that then
    fails leaves an empty wallet account that no holder owns: harmless, and rare."""
    now = svc.now()
    cached = svc.campaigns.current()
    if cached is not None and not promotions.registration_gifts(cached, now):
        return {}
    async with svc.db.connection() as conn:
        found = promotions.registration_gifts(await _campaigns(svc.campaigns, conn, now), now)
        refs = [ref for o in found for ref in (ledger.wallet(holder_id, o.campaign.currency),
                                                  ledger.promotions(o.campaign.currency))]
        return await ledger_store.resolve_accounts(conn, refs) if refs else {}


async def gift_registration(svc: Services, conn: Connection, holder_id: uuid.UUID,
                            accounts: dict[ledger.AccountRef, ledger_store.Account]) -> list[Credit]:
    """In the registration's transaction: the gift of each live registration campaign (whose accounts
    ``registration_accounts`` resolved) that still has a place and budget, credited in one statement."""
    now = svc.now()
    found = promotions.registration_gifts(await _campaigns(svc.campaigns, conn, now), now)
    credits = []
    for offer in found:
        c = offer.campaign
        if ledger.wallet(holder_id, c.currency) not in accounts:
            continue  # it began between the accounts' resolution and this transaction: not this holder's
        gift = await _take_gift(conn, [c], holder_id, None, now)
        if gift is not None:
            credits.append(gift)
    if credits:
        await ledger_store.post_together(conn, [g.entry(holder_id) for g in credits], accounts)
    return credits


@dataclass(frozen=True, slots=True)
class GiveBack:
    """What a manual authorisation reserved and does not keep (docs/promotions.md, "Manual capture"): part of
    the budget at a partial capture, everything at a cancel or expiry; ``place``: its place and its holder's
    use too (nothing kept)."""

    campaign_id: uuid.UUID
    holder_id: uuid.UUID
    amount_minor: int
    place: bool


def reservation_given_back(row: Any) -> GiveBack | None:
    """All that an open authorisation's reservation holds, given back as it is cancelled or expires."""
    if row["reserved_campaign_id"] is None or row["status"] != "requires_capture":
        return None
    return GiveBack(row["reserved_campaign_id"], row["payer_id"], row["discount_reserved_minor"], place=True)


async def give_back(conn: Connection, backs: list[GiveBack]) -> None:
    """In the capture's (or the cancel's, the expiry batch's) transaction, in the lock order: every holder's
    use first (in the callers' holder order), then the counter rows, campaign by campaign in id order
    (each campaign's rows in shard order)."""
    for b in backs:
        if b.place:
            await store.give_back_use(conn, b.campaign_id, b.holder_id)
    for b in sorted(backs, key=lambda b: b.campaign_id):
        if b.amount_minor or b.place:
            await store.give_back(conn, b.campaign_id, b.amount_minor, b.place)


@dataclass(frozen=True, slots=True)
class Clawback:
    """What a refund takes back of the payment's benefit (one or the other: a payment has at most one),
    and who it goes back to (``funded_by``: the promotions account, or the merchant)."""

    discount_minor: int = 0
    cashback_minor: int = 0
    funded_by: Funder = Funder.BANK

    @property
    def total_minor(self) -> int:
        return self.discount_minor + self.cashback_minor

    async def refund_entry(self, conn: Connection, holder_id: uuid.UUID, merchant_id: uuid.UUID, currency: str,
                           refunded_minor: int, fee_back_minor: int,
                           accounts: dict[ledger.AccountRef, ledger_store.Account],
                           ) -> tuple[ledger.Entry, dict[ledger.AccountRef, ledger_store.Account]]:
        """The refund's entry, the clawback netted from what the holder receives and given back to its
        funder, and the accounts it touches (the promotions account read when the bank gets it back)."""
        if self.funded_by is Funder.MERCHANT:
            return ledger.refund(holder_id, merchant_id, currency, refunded_minor, fee_back_minor,
                                 self.total_minor), accounts
        if not self.total_minor:
            return ledger.refund(holder_id, merchant_id, currency, refunded_minor, fee_back_minor), accounts
        entry = ledger.discounted_refund(holder_id, merchant_id, currency, refunded_minor, fee_back_minor,
                                         self.total_minor)
        return entry, {**accounts, **await ledger_store.existing_accounts(conn, [ledger.promotions(currency)])}


async def claw_back(conn: Connection, row: Any, refunded_before_minor: int, refund_minor: int) -> Clawback:
    """The benefit a refund takes back (recorded on its campaign), in proportion to the amount refunded
    of what was captured: a bank-funded discount's, or the cashback's (recorded on the payment too; it
    goes back to whoever funded it). Nothing for a merchant-funded discount: it lowered the capture
    itself, so a refund of what was captured gives the holder back what it paid."""
    if row["cashback_minor"]:
        back = promotions.clawback_minor(row["cashback_minor"], row["captured_minor"], refunded_before_minor,
                                         refund_minor)
        if back:
            await store.claw_back_cashback(conn, row["id"], row["cashback_campaign_id"], back)
        return Clawback(cashback_minor=back, funded_by=Funder(row["cashback_funded_by"]))
    if row["discount_funded_by"] != Funder.BANK.value:
        return Clawback()
    back = promotions.clawback_minor(row["discount_minor"], row["captured_minor"], refunded_before_minor, refund_minor)
    if back:
        await store.claw_back(conn, row["campaign_id"], back)
    return Clawback(discount_minor=back)


# --- operator use cases -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewCampaign:
    name: str
    currency: str
    rule: str
    funded_by: str
    time_zone: str
    starts_at: str  # local wall time, ISO 8601 without offset
    ends_at: str
    budget: int
    percent_bps: int = 0
    fixed_amount: int = 0
    cap: int | None = None
    min_amount: int = 0
    per_holder_limit: int | None = None
    places: int | None = None
    merchants: tuple[str, ...] = ()
    stores: tuple[str, ...] = ()
    mccs: tuple[str, ...] = ()



# The stable code of each field a campaign's terms can be refused for.
_CODES = {
    "starts_at": "invalid_starts_at", "ends_at": "invalid_ends_at", "percent_bps": "invalid_percent_bps",
    "fixed_amount": "invalid_fixed_amount", "cap": "invalid_cap", "budget": "invalid_budget",
    "min_amount": "invalid_min_amount", "per_holder_limit": "invalid_per_holder_limit", "places": "invalid_places",
    "funded_by": "invalid_funded_by", "merchants": "invalid_eligibility",
}


def _local(text: str, param: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"{param} is a local date and time, e.g. 2026-12-01T00:00:00", code=_CODES[param],
                             param=param) from None
    if value.tzinfo is not None:
        raise InvalidRequest(f"{param} is local time in time_zone: no offset", code=_CODES[param], param=param)
    return value


def _ids(kind: Kind, texts: tuple[str, ...], param: str) -> frozenset[uuid.UUID]:
    found = set()
    for i, text in enumerate(texts):
        value = decode(kind, text)
        if value is None:
            raise NotFound(f"no such object: {text}", param=f"{param}[{i}]")
        found.add(value)
    return frozenset(found)


def _terms(req: NewCampaign, campaign_id: uuid.UUID) -> Campaign:
    try:
        zone = ZoneInfo(req.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidRequest("time_zone is an IANA name, e.g. Asia/Shanghai", code="invalid_time_zone",
                             param="time_zone") from None
    starts_at, ends_at = promotions.window(_local(req.starts_at, "starts_at"), _local(req.ends_at, "ends_at"), zone)
    for param, instant in (("starts_at", starts_at), ("ends_at", ends_at)):
        try:
            instant.astimezone(UTC)  # year 1 in Asia/Tokyo is before year 1 in UTC: no datetime holds it
        except OverflowError:
            raise InvalidRequest(f"{param} is out of range", code=_CODES[param], param=param) from None
    for i, mcc in enumerate(req.mccs):
        if not (len(mcc) == 4 and mcc.isdigit()):
            raise InvalidRequest("an mcc is 4 digits (ISO 18245)", code="invalid_mcc", param=f"mccs[{i}]")
    for param, count in (("per_holder_limit", req.per_holder_limit), ("places", req.places)):
        if count is not None and count > COUNT_MAX:  # the columns are integer; <= 0 is refused by check_terms
            raise InvalidRequest(f"{param} is at most {COUNT_MAX}", code=_CODES[param], param=param)
    amounts = {"budget": req.budget, "fixed_amount": req.fixed_amount, "cap": req.cap, "min_amount": req.min_amount}
    for param, value in amounts.items():
        if value is not None and value != 0:
            check_amount(value, param)
    try:
        return Campaign(
            id=campaign_id, currency=currency(req.currency).code, rule=Rule(req.rule), funded_by=Funder(req.funded_by),
            starts_at=starts_at, ends_at=ends_at, budget_minor=req.budget, percent_bps=req.percent_bps,
            fixed_minor=req.fixed_amount, cap_minor=req.cap, min_amount_minor=req.min_amount,
            per_holder_max=req.per_holder_limit, places_max=req.places,
            merchant_ids=_ids(Kind.MERCHANT, req.merchants, "merchants"),
            store_ids=_ids(Kind.STORE, req.stores, "stores"), mccs=frozenset(req.mccs),
        )
    except promotions.CampaignError as exc:
        raise InvalidRequest(str(exc), code=_CODES[exc.param], param=exc.param) from None


async def _require(conn: Connection, table: str, ids: frozenset[uuid.UUID], texts: tuple[str, ...],
                   kind: Kind, param: str) -> None:
    if not ids:
        return
    known = await store.existing(conn, table, sorted(ids))
    for i, text in enumerate(texts):
        if decode(kind, text) not in known:
            raise NotFound(f"no such object: {text}", param=f"{param}[{i}]")


def _rows(svc: Services, c: Campaign) -> list[tuple[int, int | None]]:
    """How the campaign's budget and places are spread over its counter rows (``shard_split``), its
    largest benefit bounded by the largest payment any tier allows in its currency."""
    payment_max = max((t.caps[c.currency].payment_max_minor for t in svc.tiers.values() if c.currency in t.caps),
                      default=c.budget_minor)
    return promotions.shard_split(c.budget_minor, c.places_max, promotions.largest_benefit_minor(c, payment_max))


async def create(svc: Services, who: Principal, req: NewCampaign, identity: RequestIdentity) -> Reply:
    terms = _terms(req, uuid.uuid4())
    if terms.funded_by is Funder.BANK:  # the account its benefits come from, committed before any payment uses it
        async with svc.db.connection() as conn:
            await ledger_store.resolve_accounts(conn, [ledger.promotions(terms.currency)])

    async def work(conn: Connection) -> tuple[int, Any]:
        await _require(conn, "merchants", terms.merchant_ids, req.merchants, Kind.MERCHANT, "merchants")
        await _require(conn, "stores", terms.store_ids, req.stores, Kind.STORE, "stores")
        if len(await store.live(conn, svc.now(), svc.campaigns.live_max)) >= svc.campaigns.live_max:
            raise Conflict(f"at most {svc.campaigns.live_max} campaigns run at once", code="too_many_campaigns")
        row = await store.insert(conn, terms, req.name, req.time_zone, _rows(svc, terms))
        view = views.campaign_view(row, svc.now())
        await audit.record(conn, who, "campaign.created", row["id"], view, merchant_id=None)
        return 201, view

    reply = await svc.idempotency.run(identity, work)
    await svc.campaigns.load(svc.db, svc.now())
    return reply


def campaign_uuid(text: str) -> uuid.UUID:
    value = decode(Kind.CAMPAIGN, text)
    if value is None:
        raise NotFound(f"no such campaign: {text}", param="id")
    return value


async def end(svc: Services, who: Principal, text_id: str, identity: RequestIdentity) -> Reply:
    """End a campaign now: from this commit no payment is discounted by it (the guarded take reads
    ``ended_at`` in each payment's transaction). Ending an ended campaign answers it unchanged."""
    cid = campaign_uuid(text_id)

    async def work(conn: Connection) -> tuple[int, Any]:
        row = await store.get(conn, cid, for_update=True)
        if row is None:
            raise NotFound(f"no such campaign: {text_id}", param="id")
        was_ended = row["ended_at"] is not None
        row = await store.end(conn, cid)
        view = views.campaign_view(row, svc.now())
        if not was_ended:
            await audit.record(conn, who, "campaign.ended", cid, view, merchant_id=None)
        return 200, view

    reply = await svc.idempotency.run(identity, work)
    await svc.campaigns.load(svc.db, svc.now())
    return reply


async def get(svc: Services, text_id: str) -> views.CampaignView:
    cid = campaign_uuid(text_id)
    async with svc.db.connection() as conn:
        row = await store.get(conn, cid)
    if row is None:
        raise NotFound(f"no such campaign: {text_id}", param="id")
    return views.campaign_view(row, svc.now())


async def list_campaigns(svc: Services, page: PageRequest) -> views.CampaignList:
    async with svc.db.connection() as conn:
        rows, has_more = await pages.read(conn, store.all_campaigns(), page, partial(decode, Kind.CAMPAIGN))
    return views.CampaignList(data=[views.campaign_view(r, svc.now()) for r in rows], has_more=has_more)


def _benefit_id(text: str) -> uuid.UUID | None:
    """A benefit's cursor: the payment a discount or cashback went with, or the gift's own id."""
    return decode(Kind.PAYMENT, text) or decode(Kind.GIFT, text)


async def benefits(svc: Services, who: Principal, page: PageRequest) -> views.BenefitsView:
    """The holder's discounts, cashback and gifts received (a page, newest first) and the live
    campaigns it can still get something from (those whose per-holder limit it has not reached;
    places and budget as last loaded)."""
    now = svc.now()
    async with svc.db.connection() as conn:
        rows, has_more = await pages.read(conn, store.holder_benefits(who.id), page, _benefit_id)
        used = {r["campaign_id"]: r["uses"] for r in await store.holder_uses(conn, who.id)}
        live = await store.live(conn, now, svc.campaigns.live_max)
        # A registration gift is for holders to come; a first-payment gift for holders who never paid.
        closed = {Rule.GIFT_REGISTRATION.value}
        if any(r["rule"] == Rule.GIFT_FIRST_PAYMENT.value for r in live) and await store.holder_has_paid(
                conn, who.id, uuid.UUID(int=0)):
            closed.add(Rule.GIFT_FIRST_PAYMENT.value)
    campaigns = []
    for row in live:
        limit = 1 if row["rule"] in promotions.GIFTS else row["per_holder_max"]
        left = None if limit is None else limit - used.get(row["id"], 0)
        exhausted = row["spent_minor"] >= row["budget_minor"] or (
            row["places_max"] is not None and row["places_taken"] >= row["places_max"])
        if exhausted or (left is not None and left <= 0) or row["rule"] in closed:
            continue
        seen = views.campaign_view(row, now)
        campaigns.append(views.HolderCampaignView(
            campaign=seen.id, name=seen.name, status=seen.status, currency=seen.currency, rule=seen.rule,
            percent_bps=seen.percent_bps, fixed_amount=seen.fixed_amount, cap=seen.cap, min_amount=seen.min_amount,
            starts_at=seen.starts_at, ends_at=seen.ends_at, uses_left=left))
    return views.BenefitsView(campaigns=campaigns, data=[views.benefit_view(r) for r in rows], has_more=has_more)


async def campaign_gifts(svc: Services, text_id: str, page: PageRequest) -> views.GiftList:
    """The gifts a campaign gave, newest first (an operator's view)."""
    cid = campaign_uuid(text_id)
    async with svc.db.connection() as conn:
        if await store.get(conn, cid) is None:
            raise NotFound(f"no such campaign: {text_id}", param="id")
        rows, has_more = await pages.read(conn, store.campaign_gifts(cid), page, partial(decode, Kind.GIFT))
    return views.GiftList(data=[views.gift_view(r) for r in rows], has_more=has_more)
