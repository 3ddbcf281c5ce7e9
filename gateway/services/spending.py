"""Budgets, spending insights and the holder's time zone; and the budget worker's use case
(``evaluate``), which turns committed payments and refunds into budget reminders.

Invariants:
- nothing here runs on a payment's path: reminders are derived afterwards from the journal (committed
  money movements), by the worker, through the cursor of ``store.spending``: each entry is evaluated
  exactly once, in the transaction that advances the cursor and writes the reminders;
- a reminder exists at most once per budget, month and threshold (80 %, 100 %): the primary key of
  ``budget_reminders``, whatever processes race; its notification is written with it;
- months are the holder's (its time zone, else ``spending.time_zone_default``); refunds count, as
  negative spending, in the month they happen;
- a holder reaches only its own budgets (another's id is a 404).
"""

from __future__ import annotations

import logging
import uuid
import zoneinfo
from datetime import date
from functools import partial
from typing import Any

from gateway.auth.principals import Principal
from gateway.domain import budgets as domain
from gateway.domain import notifications as kinds
from gateway.domain.ids import Kind, decode, encode
from gateway.domain.money import check_amount, currency
from gateway.errors import InvalidRequest, NotFound, Unauthenticated
from gateway.services import notifications, pages, views
from gateway.services.context import Services
from gateway.services.idempotency import Reply, RequestIdentity
from gateway.services.pages import PageRequest
from gateway.store import spending as store
from gateway.store.db import Connection

log = logging.getLogger(__name__)
TIME_ZONE_LENGTH_MAX = 64


_IANA_ZONES = frozenset(zoneinfo.available_timezones())  # read once: the names are the zone files'


def _holder_gone() -> Unauthenticated:
    return Unauthenticated("the wallet holder no longer exists", code="invalid_token")


# --- time zone ----------------------------------------------------------------------------------


async def get_time_zone(svc: Services, who: Principal) -> views.TimeZoneView:
    async with svc.db.connection() as conn:
        row = await store.time_zone(conn, who.id)
    if row is None:
        raise _holder_gone()
    own = row["time_zone"]
    return views.TimeZoneView(time_zone=own or svc.settings.spending.time_zone_default, is_default=own is None)


async def set_time_zone(svc: Services, who: Principal, zone: str, identity: RequestIdentity) -> Reply:
    """An IANA zone name (``Europe/Paris``), known to both Python and PostgreSQL; else ``invalid_time_zone``."""
    if len(zone) > TIME_ZONE_LENGTH_MAX or zone not in _IANA_ZONES:
        raise InvalidRequest("time_zone must be an IANA time zone name, e.g. Asia/Shanghai", code="invalid_time_zone",
                             param="time_zone")

    async def work(conn: Connection) -> tuple[int, Any]:
        try:
            found = await store.set_time_zone(conn, who.id, zone)
        except store.UnknownTimeZone:
            raise InvalidRequest("this time zone is unknown to the gateway's database", code="invalid_time_zone",
                                 param="time_zone") from None
        if not found:
            raise _holder_gone()
        return 200, views.TimeZoneView(time_zone=zone, is_default=False)

    return await svc.idempotency.run(identity, work)


# --- budgets ------------------------------------------------------------------------------------


def _category(text: str) -> str:
    if text not in domain.CATEGORIES:
        raise InvalidRequest(f"category must be one of {', '.join(domain.CATEGORIES)}", code="invalid_category",
                             param="category")
    return text


async def _spent_this_month(conn: Connection, svc: Services, who: Principal) -> tuple[date, dict[tuple[str, str], int]]:
    """This month of the holder and its spending per (currency, category), 'overall' included."""
    month = await store.holder_month(conn, who.id, svc.settings.spending.time_zone_default)
    if month is None:
        raise _holder_gone()
    spent: dict[tuple[str, str], int] = {}
    for row in await store.month_spending(conn, who.id, month["tz"], month["this_month"], None):
        if row["level"] == "currency":
            spent[(row["currency"], domain.OVERALL)] = row["total_minor"]
        elif row["level"] == "category":
            spent[(row["currency"], row["category"])] = row["total_minor"]
    return month["this_month"], spent


def _budget_view(row: Any, month: date, spent: dict[tuple[str, str], int]) -> views.BudgetView:
    used = domain.usage(row["amount_minor"], spent.get((row["currency"], row["category"]), 0))
    return views.BudgetView(
        id=encode(Kind.BUDGET, row["id"]), category=row["category"], currency=row["currency"],
        amount=row["amount_minor"], month=domain.month_text(month), spent=used.spent_minor,
        remaining=used.remaining_minor, percent_used=used.percent_used, created_at=row["created_at"].isoformat(),
        updated_at=row["updated_at"].isoformat(),
    )


async def put_budget(svc: Services, who: Principal, category: str, currency_code: str, amount: object,
                     identity: RequestIdentity) -> Reply:
    """Create the monthly budget of (category, currency), or replace its amount: 201 created, 200 replaced."""
    wanted = _category(category)
    code = currency(currency_code).code
    amount_minor = check_amount(amount)

    async def work(conn: Connection) -> tuple[int, Any]:
        row, created = await store.put_budget(conn, uuid.uuid4(), who.id, wanted, code, amount_minor)
        month, spent = await _spent_this_month(conn, svc, who)
        return (201 if created else 200), _budget_view(row, month, spent)

    return await svc.idempotency.run(identity, work)


async def list_budgets(svc: Services, who: Principal, page: PageRequest) -> views.BudgetList:
    async with svc.db.connection() as conn:
        rows, has_more = await pages.read(conn, store.holder_budgets(who.id), page, partial(decode, Kind.BUDGET))
        month, spent = await _spent_this_month(conn, svc, who)
    return views.BudgetList(data=[_budget_view(r, month, spent) for r in rows], has_more=has_more)


async def delete_budget(svc: Services, who: Principal, text_id: str, identity: RequestIdentity) -> Reply:
    budget_id = decode(Kind.BUDGET, text_id)
    if budget_id is None:
        raise NotFound(f"no such budget: {text_id}", param="id")

    async def work(conn: Connection) -> tuple[int, Any]:
        if not await store.delete_budget(conn, budget_id, who.id):
            raise NotFound(f"no such budget: {text_id}", param="id")
        return 200, views.DeletedView(id=text_id, object="budget")

    return await svc.idempotency.run(identity, work)


# --- insights -----------------------------------------------------------------------------------


async def insights(svc: Services, who: Principal, month_text: str | None, currency_code: str | None
                   ) -> views.InsightsView:
    """The month's spending (default: this month) per currency: total and count, by category, by merchant."""
    month = None
    if month_text is not None:
        month = domain.parse_month(month_text)
        if month is None:
            raise InvalidRequest("month must be YYYY-MM, e.g. 2026-12", code="invalid_month", param="month")
    code = currency(currency_code).code if currency_code is not None else None
    async with svc.db.connection() as conn:
        holder = await store.holder_month(conn, who.id, svc.settings.spending.time_zone_default)
        if holder is None:
            raise _holder_gone()
        wanted = month or holder["this_month"]
        rows = await store.month_spending(conn, who.id, holder["tz"], wanted, code)
    found: dict[str, views.CurrencySpending] = {}
    for row in rows:
        if row["level"] == "currency":
            found[row["currency"]] = views.CurrencySpending(currency=row["currency"], total=row["total_minor"],
                                                            count=row["payment_count"], by_category=[],
                                                            by_merchant=[])
    for row in rows:
        into = found[row["currency"]]
        if row["level"] == "category":
            into.by_category.append(views.CategorySpending(category=row["category"], total=row["total_minor"],
                                                           count=row["payment_count"]))
        elif row["level"] == "merchant":
            into.by_merchant.append(views.MerchantSpending(
                merchant=encode(Kind.MERCHANT, row["merchant_id"]), name=row["merchant_name"],
                total=row["total_minor"], count=row["payment_count"]))
    return views.InsightsView(month=domain.month_text(wanted), time_zone=holder["tz"],
                              currencies=[found[c] for c in sorted(found)])


# --- the budget worker's use case ---------------------------------------------------------------


async def evaluate(svc: Services, to: store.Sample) -> int | None:
    """Evaluate every payment and refund committed between the cursor and ``to`` (a horizon no open
    transaction began before), write the reminders they cause, move the cursor to ``to``: one
    transaction. The number of reminders written, or None when another process holds the cursor or it
    is at ``to`` already."""

    async def work(conn: Connection) -> int | None:
        cursor = await store.lock_cursor(conn)
        if cursor is None or cursor["horizon_at"] >= to.at:
            return None
        steps = await store.budget_steps(conn, cursor["entry_id_floor"], cursor["horizon_at"], to.at,
                                         svc.settings.spending.time_zone_default)
        wanted: list[tuple[Any, int, uuid.UUID]] = []
        for step in steps:
            for percent in domain.crossed(step["amount_minor"], step["before_minor"], step["after_minor"]):
                wanted.append((step, percent, uuid.uuid4()))
        written = 0
        if wanted:
            recorded = await store.insert_reminders(conn, [s["id"] for s, _, _ in wanted], [s["month"] for s, _, _ in wanted],
                                                    [p for _, p, _ in wanted], [n for _, _, n in wanted])
            new = {(r["budget_id"], r["month"], r["threshold_percent"]) for r in recorded}
            for step, percent, notification_id in wanted:
                if (step["id"], step["month"], percent) not in new:
                    continue
                await notifications.notify(svc, conn, step["holder_id"], kinds.BUDGET_REMINDER, {
                    "budget": encode(Kind.BUDGET, step["id"]), "category": step["category"],
                    "currency": step["currency"], "month": domain.month_text(step["month"]),
                    "threshold_percent": percent, "amount": step["amount_minor"], "spent": step["after_minor"],
                }, notification_id)
                written += 1
        await store.advance_cursor(conn, to)
        return written

    return await svc.db.run(work)
