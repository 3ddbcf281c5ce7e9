"""Wallet holder endpoints of notifications, budgets, the holder's time zone and spending insights."""

from __future__ import annotations

from typing import Any

from gateway.api import schema
from gateway.api.routing import Call, api
from gateway.auth.principals import PrincipalKind as P
from gateway.services import notifications, spending, views


@api.route("GET", "/v1/wallet/notifications", summary="The holder's notifications, newest first, cursor paginated",
           auth={P.WALLET}, query=schema.NotificationQuery, response=views.NotificationList, tag="wallet",
           errors={400: ("invalid_cursor",)})
async def list_notifications(call: Call[None, schema.NotificationQuery]) -> Any:
    """The holder's notifications (budget reminders, alerts), newest first; unread=true keeps the unread ones."""
    return await notifications.list_notifications(call.svc, call.who, call.query.page(), bool(call.query.unread))


@api.route("POST", "/v1/wallet/notifications/{id}/read", summary="Mark a notification read (again: no change)",
           auth={P.WALLET}, response=views.NotificationView, tag="wallet")
async def read_notification(call: Call[None, None]) -> Any:
    """Mark one of the holder's notifications read; marking it again keeps the first read_at."""
    return await notifications.mark_read(call.svc, call.who, call.match("id"), call.identity())


@api.route("GET", "/v1/wallet/time_zone", summary="The time zone the holder's months are counted in",
           auth={P.WALLET}, response=views.TimeZoneView, tag="wallet")
async def get_time_zone(call: Call[None, None]) -> Any:
    """The holder's time zone for budgets and insights: its own, or the gateway's default until it sets one."""
    return await spending.get_time_zone(call.svc, call.who)


@api.route("POST", "/v1/wallet/time_zone", summary="Set the holder's time zone (an IANA name)", auth={P.WALLET},
           body=schema.SetTimeZone, response=views.TimeZoneView, tag="wallet", errors={400: ("invalid_time_zone",)})
async def set_time_zone(call: Call[schema.SetTimeZone, None]) -> Any:
    """Set the time zone the holder's months are counted in (budgets, insights), e.g. Europe/Paris."""
    return await spending.set_time_zone(call.svc, call.who, call.body.time_zone, call.identity())


@api.route("POST", "/v1/wallet/budgets", summary="Set a monthly budget of a category or overall (creates or replaces)",
           auth={P.WALLET}, body=schema.PutBudget, response=views.BudgetView, status=201, tag="wallet",
           errors={400: schema.AMOUNT_CODES + ("invalid_category",)},
           also_ok={200: "an existing budget of that category and currency replaced"})
async def put_budget(call: Call[schema.PutBudget, None]) -> Any:
    """Set the holder's monthly budget of a spending category (or overall) in a currency: created (201), or its
    amount replaced (200). Reminders come at 80% and 100% of it, once a month each."""
    b = call.body
    return await spending.put_budget(call.svc, call.who, b.category, b.currency, b.amount, call.identity())


@api.route("GET", "/v1/wallet/budgets", summary="Budgets with this month's spending, remaining and percent used",
           auth={P.WALLET}, query=schema.PageQuery, response=views.BudgetList, tag="wallet",
           errors={400: ("invalid_cursor",)})
async def list_budgets(call: Call[None, schema.PageQuery]) -> Any:
    """The holder's budgets, newest first, each with this month's spending (net of refunds), what remains and the
    percent used."""
    return await spending.list_budgets(call.svc, call.who, call.query.page())


@api.route("DELETE", "/v1/wallet/budgets/{id}", summary="Delete a budget", auth={P.WALLET},
           response=views.DeletedView, tag="wallet")
async def delete_budget(call: Call[None, None]) -> Any:
    """Delete one of the holder's budgets (its reminders go with it)."""
    return await spending.delete_budget(call.svc, call.who, call.match("id"), call.identity())


@api.route("GET", "/v1/wallet/insights", summary="A month's spending by category and merchant, per currency",
           auth={P.WALLET}, query=schema.InsightsQuery, response=views.InsightsView, tag="wallet",
           errors={400: ("invalid_month", "invalid_currency")})
async def insights(call: Call[None, schema.InsightsQuery]) -> Any:
    """The month's spending in the holder's time zone, net of refunds, per currency: total and number of payments,
    by category (MCC group) and by merchant."""
    return await spending.insights(call.svc, call.who, call.query.month, call.query.currency)
