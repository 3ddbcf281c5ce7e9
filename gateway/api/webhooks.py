"""Events (a merchant's own; every event for operators) and webhook endpoints (merchant secret keys)."""

from __future__ import annotations

from typing import Any

from gateway.api import schema
from gateway.api.routing import Call, api
from gateway.auth.principals import PrincipalKind as P
from gateway.services import views, webhooks

MERCHANT = {P.MERCHANT}


@api.route("GET", "/v1/events", summary="The merchant's events, newest first (filters: type, created[gte|lt], payment)",
           auth=MERCHANT, query=schema.EventQuery, response=views.EventList, tag="events",
           errors={400: ("invalid_cursor",), 404: ("resource_missing",)})
async def list_events(call: Call[None, schema.EventQuery]) -> Any:
    """The merchant's events, newest first, filtered by type (or a family such as payment.*), payment and
    creation time, cursor paginated."""
    q = call.query
    return await webhooks.list_events(call.svc, call.who, q.page(), webhooks.EventQuery(
        payment=q.payment, type=q.type, created_gte_s=q.created_gte, created_lt_s=q.created_lt))


@api.route("GET", "/v1/operator/events",
           summary="Every event, newest first: each merchant's and the gateway's own, audit events included"
                   " (filters: merchant, type, created[gte|lt], payment)",
           auth={P.OPERATOR}, query=schema.OperatorEventQuery, response=views.EventList, tag="events",
           errors={400: ("invalid_cursor",), 404: ("resource_missing",)})
async def list_all_events(call: Call[None, schema.OperatorEventQuery]) -> Any:
    """Every event of the gateway, newest first, audit events of admin actions included, for operators."""
    q = call.query
    return await webhooks.list_events(call.svc, call.who, q.page(), webhooks.EventQuery(
        payment=q.payment, type=q.type, created_gte_s=q.created_gte, created_lt_s=q.created_lt, merchant=q.merchant))


@api.route("GET", "/v1/events/{id}", summary="Retrieve an event", auth=MERCHANT, response=views.EventView,
           tag="events")
async def get_event(call: Call[None, None]) -> Any:
    """One event with the object it is about, as it was then."""
    return await webhooks.get_event(call.svc, call.who, call.match("id"))


@api.route("POST", "/v1/events/{id}/redeliver", summary="Send an event again now (same webhook-id)",
           auth=MERCHANT, body=schema.Redeliver, response=views.WebhookDeliveryList, tag="events")
async def redeliver(call: Call[schema.Redeliver, None]) -> Any:
    """Deliver an event again now to every endpoint that wants it, or to one; the webhook-id stays the same."""
    return await webhooks.redeliver(call.svc, call.who, call.match("id"), call.body.endpoint, call.identity())


@api.route("POST", "/v1/webhook_endpoints", summary="Create a webhook endpoint; its signing secret is shown only here",
           auth=MERCHANT, body=schema.CreateWebhookEndpoint, response=views.WebhookEndpointView, status=201,
           tag="webhooks",
           errors={400: ("invalid_event_type", "url_not_allowed"), 409: ("too_many_webhook_endpoints",)})
async def create_endpoint(call: Call[schema.CreateWebhookEndpoint, None]) -> Any:
    """Create a webhook endpoint for some event types (or all); its signing secret is in this answer only."""
    b = call.body
    return await webhooks.create_endpoint(call.svc, call.who, b.url, b.enabled_events, b.description, call.identity())


@api.route("GET", "/v1/webhook_endpoints", summary="List webhook endpoints, newest first", auth=MERCHANT,
           query=schema.PageQuery, response=views.WebhookEndpointList, tag="webhooks",
           errors={400: ("invalid_cursor",), 404: ("resource_missing",)})
async def list_endpoints(call: Call[None, schema.PageQuery]) -> Any:
    """The merchant's webhook endpoints, newest first."""
    return await webhooks.list_endpoints(call.svc, call.who, call.query.page())


@api.route("GET", "/v1/webhook_endpoints/{id}", summary="Retrieve a webhook endpoint", auth=MERCHANT,
           response=views.WebhookEndpointView, tag="webhooks")
async def get_endpoint(call: Call[None, None]) -> Any:
    """One webhook endpoint, without its secret."""
    return await webhooks.get_endpoint(call.svc, call.who, call.match("id"))


@api.route("POST", "/v1/webhook_endpoints/{id}", summary="Update a webhook endpoint (disabled: true disables it)",
           auth=MERCHANT, body=schema.UpdateWebhookEndpoint, response=views.WebhookEndpointView, tag="webhooks",
           errors={400: ("invalid_event_type", "url_not_allowed")})
async def update_endpoint(call: Call[schema.UpdateWebhookEndpoint, None]) -> Any:
    """Change an endpoint's URL, event types or description, or disable or enable it."""
    b = call.body
    return await webhooks.update_endpoint(call.svc, call.who, call.match("id"), url=b.url,
                                          enabled_events=b.enabled_events, description=b.description,
                                          disabled=b.disabled, identity=call.identity())


@api.route("DELETE", "/v1/webhook_endpoints/{id}", summary="Delete a webhook endpoint and its deliveries",
           auth=MERCHANT, response=views.DeletedView, tag="webhooks")
async def delete_endpoint(call: Call[None, None]) -> Any:
    """Delete a webhook endpoint; its pending deliveries are dropped."""
    return await webhooks.delete_endpoint(call.svc, call.who, call.match("id"), call.identity())


@api.route("POST", "/v1/webhook_endpoints/{id}/rotate_secret",
           summary="New signing secret (shown only here); the previous one signs too for expires_in seconds",
           auth=MERCHANT, body=schema.RotateSecret, response=views.WebhookEndpointView, tag="webhooks",
           errors={400: ("invalid_expiry",)})
async def rotate_secret(call: Call[schema.RotateSecret, None]) -> Any:
    """A new signing secret, in this answer only; the previous secret keeps signing alongside it for expires_in
    seconds."""
    return await webhooks.rotate_secret(call.svc, call.who, call.match("id"), call.body.expires_in, call.identity())


@api.route("GET", "/v1/webhook_endpoints/{id}/deliveries", summary="An endpoint's deliveries and their attempts",
           auth=MERCHANT, query=schema.DeliveryQuery, response=views.WebhookDeliveryList, tag="webhooks",
           errors={400: ("invalid_cursor",)})
async def list_deliveries(call: Call[None, schema.DeliveryQuery]) -> Any:
    """An endpoint's deliveries, newest first, with their latest attempts."""
    q = call.query
    return await webhooks.list_deliveries(call.svc, call.who, call.match("id"), q.page(), q.status)
