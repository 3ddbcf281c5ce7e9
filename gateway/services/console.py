"""Use cases and read models of the operator console (``/console/``).

Sessions: logging in is the operator API's own login (``tenants.operator_login``: throttled, the
same JWT); the console keeps that token in a cookie and turns it back into the principal with
``tenants.authenticate``, so a console session is exactly as valid as the API's bearer token.

Invariants: the CSRF token is an HMAC of the session token (one per session, nothing stored):
a form carrying another session's token, or none, is refused; an operator role that may not
resolve exceptions (``support``) is refused here, whatever the page showed; every list is bounded
(``LIST_LIMIT``) and the overview covers ``OVERVIEW_DAYS`` days.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import msgspec

from gateway.auth.principals import Principal, PrincipalKind
from gateway.domain.ids import Kind, decode, encode
from gateway.domain.money import Money, currency
from gateway.errors import Forbidden, InvalidRequest, NotFound, Unauthenticated
from gateway.services import invariant_checks, reconciliation, tenants
from gateway.services.context import Services
from gateway.services.idempotency import RequestIdentity, fingerprint
from gateway.services.pages import PageRequest
from gateway.store import console as store

LIST_LIMIT = 100
CHECKS_SHOWN = 20  # the ledger page's latest checks
VIOLATIONS_NAMED_MAX = 10  # violated invariants named in a check's row
OVERVIEW_DAYS = 14
SEARCH_TEXT_MAX = 100


@dataclass(frozen=True, slots=True)
class Session:
    token: str
    expires_in_s: int


async def login(svc: Services, email: str, password: str, address: str | None) -> Session:
    view = await tenants.operator_login(svc, email.strip()[:SEARCH_TEXT_MAX * 3], password, address)
    return Session(view.token, view.expires_in)


async def principal(svc: Services, token: str | None) -> Principal:
    """The operator behind a console cookie; anything else (a merchant key, a wallet token) is refused."""
    if not token:
        raise Unauthenticated("log in first", code="missing_credentials")
    who = await tenants.authenticate(svc, f"Bearer {token}")
    if who.kind is not PrincipalKind.OPERATOR:
        raise Unauthenticated("the console is for operators", code="invalid_token")
    return who


def _csrf_key(svc: Services) -> bytes:
    secret = svc.tokens.keys[svc.tokens.active_kid]
    return hmac.new(secret.encode(), b"console-csrf-key", hashlib.sha256).digest()


def csrf_token(svc: Services, session_token: str) -> str:
    return hmac.new(_csrf_key(svc), session_token.encode(), hashlib.sha256).hexdigest()


def check_csrf(svc: Services, session_token: str, sent: str | None) -> None:
    if not sent or not hmac.compare_digest(csrf_token(svc, session_token), sent):
        raise Forbidden("the form is stale or did not come from the console; reload the page", code="csrf_failed")


def can_resolve(who: Principal) -> bool:
    return who.role in reconciliation.RESOLVER_ROLES


def _money(minor: int, code: str) -> str:
    return Money(minor, currency(code.strip())).format()


@dataclass(frozen=True, slots=True)
class Day:
    day: date
    volume_minor: int
    fee_minor: int
    payout_minor: int
    bank_entries: int
    bank_matched: int
    exceptions: int

    @property
    def match_rate_pct(self) -> float | None:
        return 100.0 * self.bank_matched / self.bank_entries if self.bank_entries else None


@dataclass(frozen=True, slots=True)
class Overview:
    currency: str
    exponent: int
    days: list[Day]
    open_exceptions: int

    def total(self, name: str) -> str:
        return _money(sum(getattr(d, name) for d in self.days), self.currency)


async def overview(svc: Services, code: str, today: date) -> Overview:
    cur = currency(code)
    start = today - timedelta(days=OVERVIEW_DAYS - 1)
    async with svc.stale() as conn:
        rows = await store.daily_series(conn, start, today, cur.code)
        open_count = await store.open_exception_count(conn)
    days = [Day(r["day"], r["volume_minor"], r["fee_minor"], r["payout_minor"], r["bank_entries"],
                r["bank_matched"], r["exceptions"]) for r in rows]
    return Overview(cur.code, cur.exponent, days, open_count)


def _day(text: str | None, param: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest("a date is YYYY-MM-DD", code="invalid_parameter", param=param) from None


def _merchant(text: str | None) -> uuid.UUID | None:
    if not text:
        return None
    found = decode(Kind.MERCHANT, text.strip())
    if found is None:
        raise NotFound(f"no such merchant: {text}", param="merchant")
    return found


@dataclass(frozen=True, slots=True)
class Row:
    """One line of a console table: the cells as display text, plus the object's public id."""
    id: str
    cells: dict[str, str]


def _at(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else ""


async def settlement(svc: Services, merchant: str | None, day_from: str | None,
                     day_to: str | None) -> tuple[list[Row], list[Row]]:
    """Batches and payouts, filtered by merchant and business date."""
    merchant_id, start, end = _merchant(merchant), _day(day_from, "from"), _day(day_to, "to")
    async with svc.stale() as conn:
        batch_rows = await store.batches(conn, merchant_id, start, end, LIST_LIMIT)
        payout_rows = await store.payouts(conn, merchant_id, start, end, LIST_LIMIT)
    batches = [Row(encode(Kind.SETTLEMENT_BATCH, r["id"]), {
        "day": r["business_date"].isoformat(), "merchant": r["merchant_name"],
        "merchant_id": encode(Kind.MERCHANT, r["merchant_id"]), "currency": r["currency"].strip(),
        "status": r["status"], "captures": str(r["capture_count"]), "refunds": str(r["refund_count"]),
        "captured": _money(r["captured_minor"], r["currency"]), "refunded": _money(r["refunded_minor"], r["currency"]),
        "fees": _money(r["fee_minor"], r["currency"]), "cashback": _money(r["cashback_minor"], r["currency"]),
        "net": _money(r["net_minor"], r["currency"]), "payout": _money(r["payout_minor"], r["currency"]),
    }) for r in batch_rows]
    payouts = [Row(encode(Kind.PAYOUT, r["id"]), {
        "day": r["business_date"].isoformat(), "merchant": r["merchant_name"],
        "amount": _money(r["amount_minor"], r["currency"]), "currency": r["currency"].strip(),
        "reference": r["reference"], "status": r["status"], "execution_date": r["execution_date"].isoformat(),
        "paid_at": _at(r["paid_at"]),
    }) for r in payout_rows]
    return batches, payouts


@dataclass(frozen=True, slots=True)
class Search:
    payment: str = ""
    reference: str = ""
    phone: str = ""
    amount: str = ""
    currency: str = "CNY"
    day: str = ""

    @property
    def empty(self) -> bool:
        return not (self.payment or self.reference or self.phone or self.amount or self.day)


async def search_payments(svc: Services, q: Search) -> list[Row]:
    if q.empty:
        return []
    if any(len(v) > SEARCH_TEXT_MAX for v in (q.payment, q.reference, q.phone, q.amount, q.day)):
        raise InvalidRequest("a search field is too long", code="invalid_parameter")
    payment_id = None
    if q.payment:
        payment_id = decode(Kind.PAYMENT, q.payment.strip())
        if payment_id is None:
            return []
    amount = Money.parse(q.amount.strip(), q.currency).amount_minor if q.amount else None
    async with svc.stale() as conn:
        rows = await store.search_payments(
            conn, payment_id=payment_id, merchant_reference=q.reference.strip() or None,
            phone=q.phone.strip() or None, amount_minor=amount, day=_day(q.day, "day"), limit=LIST_LIMIT)
    return [Row(encode(Kind.PAYMENT, r["id"]), {
        "created": _at(r["created_at"]), "merchant": r["merchant_name"], "reference": r["merchant_reference"] or "",
        "amount": _money(r["amount_minor"], r["currency"]), "currency": r["currency"].strip(), "status": r["status"],
        "captured": _money(r["captured_minor"], r["currency"]), "refunded": _money(r["refunded_minor"], r["currency"]),
        "phone": _mask_phone(r["phone"]),
    }) for r in rows]


def _mask_phone(phone: str | None) -> str:
    """Support sees enough of a payer's phone to confirm it with the caller, not the whole number."""
    if not phone:
        return ""
    return phone[:3] + "•" * max(len(phone) - 7, 0) + phone[-4:] if len(phone) > 7 else phone


@dataclass(frozen=True, slots=True)
class MerchantRow:
    merchant: Row
    terminals: list[Row]


async def merchants(svc: Services) -> list[MerchantRow]:
    async with svc.db.connection() as conn:
        found = await store.merchants(conn, LIST_LIMIT)
        terminal_rows = await store.terminals(conn, [r["id"] for r in found], LIST_LIMIT * 10)
    by_merchant: dict[uuid.UUID, list[Row]] = {}
    for t in terminal_rows:
        by_merchant.setdefault(t["merchant_id"], []).append(Row(encode(Kind.TERMINAL, t["id"]), {
            "label": t["label"], "store": t["store_name"], "status": t["status"], "created": _at(t["created_at"]),
            "device": t["device_name"] or "", "device_status": t["device_status"] or "",
            "enrolled": _at(t["enrolled_at"]), "agent_version": t["agent_version"] or "",
            "last_seen": _at(t["last_seen_at"]),
        }))
    return [MerchantRow(Row(encode(Kind.MERCHANT, r["id"]), {
        "name": r["name"], "city": r["city"], "country": r["country"], "fee_bps": str(r["fee_bps"]),
        "status": r["status"], "created": _at(r["created_at"]), "terminals": str(r["terminal_count"]),
    }), by_merchant.get(r["id"], [])) for r in found]


async def exceptions(svc: Services, status: str | None) -> list[reconciliation.ExceptionView]:
    if status not in (None, "open", "resolved", "cleared"):
        raise InvalidRequest("status is open, resolved or cleared", code="invalid_parameter", param="status")
    found = await reconciliation.list_exceptions(svc, status, None, None, PageRequest(LIST_LIMIT))
    return found.data


def amount_text(minor: int | None, code: str) -> str:
    return "" if minor is None else _money(minor, code)


async def resolve(svc: Services, who: Principal, exception: str, action: str, reason: str,
                  references: list[str], request_id: str) -> reconciliation.ExceptionView:
    """Resolve through the reconciliation service (which audits it); support may not."""
    if not can_resolve(who):
        raise Forbidden("this operator role may not resolve exceptions", code="role_forbidden")
    params = {"action": action, "reason": reason, "references": references}
    path = f"/console/exceptions/{exception}/resolve"
    identity = RequestIdentity(scope=who.idempotency_scope, key=None, method="POST", path=path,
                               fingerprint=fingerprint("POST", path, params), request_id=request_id, actor=who)
    reply = await reconciliation.resolve(svc, who, exception, action, reason, None, references or None, identity)
    return msgspec.json.decode(reply.body, type=reconciliation.ExceptionView)


async def audit_log(svc: Services) -> list[Row]:
    async with svc.db.connection() as conn:
        rows = await store.audit(conn, LIST_LIMIT)
    return [Row(str(r["id"]), {
        "at": _at(r["created_at"]), "operator": r["operator_email"] or "",
        "action": r["action"], "exception": encode(Kind.RECON_EXCEPTION, r["exception_id"]) if r["exception_id"] else "",
        "statement": encode(Kind.BANK_STATEMENT, r["statement_id"]) if r["statement_id"] else "",
        "reason": r["reason"] or "", "details": r["details"] if r["details"] != "{}" else "",
    }) for r in rows]


@dataclass(frozen=True, slots=True)
class LedgerChecks:
    rows: list[Row]
    active: bool  # one is queued or running: the page refreshes itself


def _stamp(seconds: int | None) -> str:
    return _at(None if seconds is None else datetime.fromtimestamp(seconds, UTC))


def _outcome(view: invariant_checks.InvariantCheckView) -> str:
    if view.error is not None:
        return view.error
    names = sorted(view.violations or {})
    return ", ".join(names[:VIOLATIONS_NAMED_MAX]) + (" ..." if len(names) > VIOLATIONS_NAMED_MAX else "")


async def ledger_checks(svc: Services) -> LedgerChecks:
    """The latest background invariant checks, newest first."""
    found = (await invariant_checks.list_checks(svc, PageRequest(limit=CHECKS_SHOWN))).data
    rows = [Row(v.id, {
        "status": v.status, "progress": f"{v.invariants_done} / {v.invariants_total}", "requested_by": v.requested_by,
        "created": _stamp(v.created), "finished": _stamp(v.finished), "outcome": _outcome(v),
    }) for v in found]
    return LedgerChecks(rows, any(v.status in ("queued", "running") for v in found))


async def check_ledger(svc: Services, who: Principal, request_id: str) -> invariant_checks.InvariantCheckView:
    """Ask for a background check (the API's use case, which audits it): answered the one queued or
    running already, if any."""
    path = "/console/ledger/checks"
    identity = RequestIdentity(scope=who.idempotency_scope, key=None, method="POST", path=path,
                               fingerprint=fingerprint("POST", path, {}), request_id=request_id, actor=who)
    reply = await invariant_checks.request(svc, who, identity)
    return msgspec.json.decode(reply.body, type=invariant_checks.InvariantCheckView)
