"""Wallet holder use cases: register, log in, balances, bank accounts, top-up, withdrawal, history.

Invariant: a withdrawal is checked by the risk rules' blocks in its transaction (``risk.check_money_out``:
a blocked wallet or session device is declined, its refusal recorded once per key); a top-up is not (money in).
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any

import msgspec

from gateway.auth import passwords
from gateway.auth.principals import Principal
from gateway.domain import bank_accounts as account_numbers
from gateway.domain import ledger, limits
from gateway.domain.ids import Kind, decode, encode
from gateway.domain.money import check_amount, currency
from gateway.errors import Conflict, Declined, Forbidden, InvalidRequest, NotFound, Unauthenticated
from gateway.services import audit, pages, promotions, risk, sign_in, throttle, views
from gateway.services.context import Services
from gateway.services.idempotency import Reply, RequestIdentity
from gateway.services.pages import PageRequest
from gateway.store import ledger as ledger_store
from gateway.store import payments as events
from gateway.store import wallets as store
from gateway.store.db import Connection

log = logging.getLogger(__name__)
WALLET_AUDIENCE = sign_in.WALLET_AUDIENCE
_PHONE_RE = re.compile(r"^\+[1-9][0-9]{6,14}$")  # E.164
PASSWORD_LENGTH_MIN = sign_in.PASSWORD_LENGTH_MIN


def _phone(text: str) -> str:
    if not _PHONE_RE.match(text):
        raise InvalidRequest("phone must be in E.164 form, e.g. +8613800138000", code="invalid_phone", param="phone")
    return text


async def register(svc: Services, phone: str, password: str, device_id: str | None = None
                   ) -> sign_in.RegistrationView:
    phone = _phone(phone)
    if len(password) < PASSWORD_LENGTH_MIN:
        raise InvalidRequest(
            f"password must have at least {PASSWORD_LENGTH_MIN} characters", code="weak_password", param="password"
        )
    hashed = await passwords.hash_password(password)
    holder_id = uuid.uuid4()
    gift_accounts = await promotions.registration_accounts(svc, holder_id)
    async with svc.db.connection() as conn, conn.transaction():
        row = await store.insert_holder(conn, holder_id, phone, hashed, svc.settings.wallet.tier_default)
        if row is None:
            raise Conflict("this phone number is registered already", code="phone_taken", param="phone")
        await promotions.gift_registration(svc, conn, holder_id, gift_accounts)
        # The phone is proven by the code sent now; answering it signs the holder in (on device_id if given).
        challenge = await sign_in.start_challenge(conn, svc, row["id"], phone, "phone_verification", device_id)
    sign_in.codes_sent(svc)
    holder = views.holder_view(row)
    return sign_in.RegistrationView(**msgspec.structs.asdict(holder), challenge=challenge)


async def login(
    svc: Services, phone: str, password: str, device_id: str | None = None, address: str | None = None
) -> views.TokenView | sign_in.SignInChallengeView:
    """A token for a device the holder proved with a code; otherwise a challenge (a code sent to the phone)."""
    attempt = await throttle.admit(svc, throttle.Kind.WALLET, phone, address)  # before the hash
    async with svc.db.connection() as conn:
        row = await store.holder_by_phone(conn, phone)
    if not await passwords.verify_password(row["password_hash"] if row else None, password) or row is None:
        # The holder's id when the account exists; never the phone number or the password.
        log.warning("wallet login failed", extra={"holder_id": str(row["id"]) if row else None,
                                                  "client_address": address})
        raise Unauthenticated("wrong phone number or password", code="invalid_credentials")
    await throttle.succeeded(svc, attempt)
    return await sign_in.after_password(svc, row, device_id)


def _balance(currency_code: str, posted: int, held: int) -> views.BalanceView:
    return views.BalanceView(currency=currency_code, available=posted - held, held=held, total=posted)


async def wallet(svc: Services, who: Principal) -> views.WalletView:
    async with svc.db.connection() as conn:
        holder = await store.holder(conn, who.id)
        if holder is None:
            raise Unauthenticated("the wallet holder no longer exists", code="invalid_token")
        rows = await store.wallet_accounts(conn, who.id)
    return views.WalletView(
        holder=views.holder_view(holder),
        balances=[_balance(r["currency"], r["posted_minor"], r["held_minor"]) for r in rows],
    )


async def link_bank_account(svc: Services, who: Principal, bank_name: str, number: str) -> views.BankAccountView:
    normalised = account_numbers.normalised(number)
    if normalised is None:
        raise InvalidRequest(
            "account_number must be 8-34 letters or digits", code="invalid_account_number", param="account_number"
        )
    if not 1 <= len(bank_name) <= 100:
        raise InvalidRequest("bank_name must have 1-100 characters", code="invalid_bank_name", param="bank_name")
    # The full number is never stored: a keyed hash recognises it again, the mask shows it.
    digest = account_numbers.number_hash(svc.settings.auth.api_key_pepper, normalised)
    async with svc.db.connection() as conn:
        row = await store.insert_bank_account(conn, uuid.uuid4(), who.id, bank_name, account_numbers.masked(normalised),
                                              digest)
    return views.bank_account_view(row)


async def bank_accounts(svc: Services, who: Principal, page: PageRequest) -> views.BankAccountList:
    async with svc.db.connection() as conn:
        rows, has_more = await pages.read(conn, store.holder_bank_accounts(who.id), page,
                                          partial(decode, Kind.BANK_ACCOUNT))
    return views.BankAccountList(data=[views.bank_account_view(r) for r in rows], has_more=has_more)


@dataclass(frozen=True, slots=True)
class TransferRequest:
    kind: str  # "top_up" | "withdrawal"
    bank_account: str
    amount: int
    currency: str


async def transfer(svc: Services, who: Principal, req: TransferRequest, identity: RequestIdentity) -> Reply:
    """Move money between the linked bank (the clearing account) and the wallet."""
    amount = check_amount(req.amount)
    code = currency(req.currency).code
    bank_id = decode(Kind.BANK_ACCOUNT, req.bank_account)
    if bank_id is None:
        raise NotFound(f"no such bank account: {req.bank_account}", param="bank_account")
    entry = (ledger.top_up if req.kind == "top_up" else ledger.withdrawal)(who.id, code, amount)
    wallet_ref = ledger.wallet(who.id, code)
    async with svc.db.connection() as conn:
        if await store.bank_account(conn, bank_id, who.id) is None:  # before any account is opened
            raise NotFound(f"no such bank account: {req.bank_account}", param="bank_account")
        accounts = await ledger_store.resolve_accounts(conn, [wallet_ref, ledger.clearing(code)])

    async def work(conn: Connection) -> tuple[int, Any]:
        if await store.bank_account(conn, bank_id, who.id) is None:
            raise NotFound(f"no such bank account: {req.bank_account}", param="bank_account")
        transfer_id = uuid.uuid4()
        holder = await store.holder_for_payment(conn, who.id)
        if req.kind == "withdrawal":
            if holder["payments_locked_at"] is not None:
                raise Forbidden("this wallet is locked after too many wrong PINs; an operator can unlock it",
                                code="wallet_locked")
            await risk.check_money_out(svc, conn, who, channel="withdrawal", currency=code, amount_minor=amount)
        try:
            await ledger_store.post(conn, entry, accounts, transfer_id=transfer_id)
        except ledger_store.InsufficientFunds:
            raise Declined(
                "the wallet's available balance is lower than the amount", code="insufficient_funds", param="amount"
            ) from None
        row = await store.insert_transfer(conn, transfer_id, who.id, bank_id, req.kind, amount, code)
        posted, held = (await ledger_store.balances_of(conn, [accounts[wallet_ref].id]))[accounts[wallet_ref].id]
        if req.kind == "top_up":  # the wallet row is locked by the posting: concurrent top-ups queue here
            limits.check_top_up(svc.tiers[holder["tier"]], code, posted - amount, amount)
        view = views.TransferView(
            id=encode(Kind.TRANSFER, transfer_id), object=req.kind, bank_account=req.bank_account, amount=amount,
            currency=code, balance_after=_balance(code, posted, held), created_at=row["created_at"].isoformat(),
        )
        await events.insert_event(conn, f"wallet.{req.kind}", transfer_id, view, merchant_id=None, holder_id=who.id)
        return 201, view

    # A withdrawal's risk refusal is recorded with its stored answer; a top-up raises none (money in).
    refused = risk.record_refusal if req.kind == "withdrawal" else None
    return await svc.idempotency.run(identity, work, refused=refused)


def _posting_id(text: str) -> int | None:
    """A wallet transaction's id (``txn_`` and the posting id) back to the posting id; None if it is none."""
    digits = text.removeprefix("txn_")
    return int(digits) if digits != text and digits.isdigit() and len(digits) <= 18 else None


async def history(svc: Services, who: Principal, currency_code: str | None, page: PageRequest) -> views.TransactionList:
    code = currency(currency_code).code if currency_code else None
    async with svc.stale() as conn:
        rows, has_more = await pages.read(conn, store.history(who.id, code), page, _posting_id)
    data = [
        views.TransactionView(
            id=f"txn_{r['id']}", kind=r["kind"], amount=r["amount_minor"], currency=r["currency"],
            payment=encode(Kind.PAYMENT, r["payment_id"]) if r["payment_id"] else None,
            refund=encode(Kind.REFUND, r["refund_id"]) if r["refund_id"] else None,
            transfer=encode(Kind.TRANSFER, r["transfer_id"]) if r["transfer_id"] else None,
            merchant_name=r["merchant_name"], created_at=r["created_at"].isoformat(),
            conversion=encode(Kind.CONVERSION, r["conversion_id"]) if r["conversion_id"] else None,
        )
        for r in rows
    ]
    return views.TransactionList(data=data, has_more=has_more, next_cursor=data[-1].id if has_more and data else None)


async def set_tier(svc: Services, who: Principal | None, text_id: str, tier: int) -> views.WalletHolderView:
    holder_id = decode(Kind.WALLET_HOLDER, text_id)
    if tier not in svc.tiers:
        raise InvalidRequest(f"tier must be one of {sorted(svc.tiers)}", code="invalid_tier", param="tier")
    async with svc.db.connection() as conn, conn.transaction():
        row = await store.set_tier(conn, holder_id, tier) if holder_id else None
        if row is not None:
            await audit.record(conn, who, "wallet.tier_set", row["id"], views.holder_view(row), merchant_id=None,
                               holder_id=row["id"])
    if row is None:
        raise NotFound(f"no such wallet holder: {text_id}", param="id")
    return views.holder_view(row)


async def unlock(svc: Services, who: Principal | None, text_id: str) -> views.WalletHolderView:
    holder_id = decode(Kind.WALLET_HOLDER, text_id)
    async with svc.db.connection() as conn, conn.transaction():
        row = await store.unlock(conn, holder_id) if holder_id else None
        if row is not None:
            await audit.record(conn, who, "wallet.unlocked", row["id"], views.holder_view(row), merchant_id=None,
                               holder_id=row["id"])
    if row is None:
        raise NotFound(f"no such wallet holder: {text_id}", param="id")
    return views.holder_view(row)
