"""Events and webhook endpoints (merchant secret keys)."""

from __future__ import annotations

from typing import Any

from gateway.api import schema
from gateway.api.routing import Call, api
from gateway.auth.principals import PrincipalKind as P
from gateway.services import views, webhooks

MERCHANT = {P.MERCHANT}


@api.route("GET", "/v1/events", summary="The merchant's events, newest first (filters: type, created[gte|lt], payment)",
           auth=MERCHANT, query=schema.EventQuery, response=views.EventList, tag="events")
async def list_events(call: Call[None, schema.EventQuery]) -> Any:
    q = call.query
    return await webhooks.list_events(call.svc, call.who, q.page(), webhooks.EventQuery(
        payment=q.payment, type=q.type, created_gte_s=q.created_gte, created_lt_s=q.created_lt))


@api.route("GET", "/v1/events/{id}", summary="Retrieve an event", auth=MERCHANT, response=views.EventView,
           tag="events")
async def get_event(call: Call[None, None]) -> Any:
    return await webhooks.get_event(call.svc, call.who, call.match("id"))


@api.route("POST", "/v1/events/{id}/redeliver", summary="Send an event again now (same webhook-id)",
           auth=MERCHANT, body=schema.Redeliver, response=views.WebhookDeliveryList, tag="events")
async def redeliver(call: Call[schema.Redeliver, None]) -> Any:
    return await webhooks.redeliver(call.svc, call.who, call.match("id"), call.body.endpoint, call.identity())


@api.route("POST", "/v1/webhook_endpoints", summary="Create a webhook endpoint; its signing secret is shown only here",
           auth=MERCHANT, body=schema.CreateWebhookEndpoint, response=views.WebhookEndpointView, status=201,
           tag="webhooks")
async def create_endpoint(call: Call[schema.CreateWebhookEndpoint, None]) -> Any:
    b = call.body
    return await webhooks.create_endpoint(call.svc, call.who, b.url, b.enabled_events, b.description, call.identity())


@api.route("GET", "/v1/webhook_endpoints", summary="List webhook endpoints, newest first", auth=MERCHANT,
           query=schema.PageQuery, response=views.WebhookEndpointList, tag="webhooks")
async def list_endpoints(call: Call[None, schema.PageQuery]) -> Any:
    return await webhooks.list_endpoints(call.svc, call.who, call.query.page())


@api.route("GET", "/v1/webhook_endpoints/{id}", summary="Retrieve a webhook endpoint", auth=MERCHANT,
           response=views.WebhookEndpointView, tag="webhooks")
async def get_endpoint(call: Call[None, None]) -> Any:
    return await webhooks.get_endpoint(call.svc, call.who, call.match("id"))


@api.route("POST", "/v1/webhook_endpoints/{id}", summary="Update a webhook endpoint (disabled: true disables it)",
           auth=MERCHANT, body=schema.UpdateWebhookEndpoint, response=views.WebhookEndpointView, tag="webhooks")
async def update_endpoint(call: Call[schema.UpdateWebhookEndpoint, None]) -> Any:
    b = call.body
    return await webhooks.update_endpoint(call.svc, call.who, call.match("id"), url=b.url,
                                          enabled_events=b.enabled_events, description=b.description,
                                          disabled=b.disabled, identity=call.identity())


@api.route("DELETE", "/v1/webhook_endpoints/{id}", summary="Delete a webhook endpoint and its deliveries",
           auth=MERCHANT, response=views.DeletedView, tag="webhooks")
async def delete_endpoint(call: Call[None, None]) -> Any:
    return await webhooks.delete_endpoint(call.svc, call.who, call.match("id"), call.identity())


@api.route("POST", "/v1/webhook_endpoints/{id}/rotate_secret",
           summary="New signing secret (shown only here); the previous one signs too for expires_in seconds",
           auth=MERCHANT, body=schema.RotateSecret, response=views.WebhookEndpointView, tag="webhooks")
async def rotate_secret(call: Call[schema.RotateSecret, None]) -> Any:
    return await webhooks.rotate_secret(call.svc, call.who, call.match("id"), call.body.expires_in, call.identity())


@api.route("GET", "/v1/webhook_endpoints/{id}/deliveries", summary="An endpoint's deliveries and their attempts",
           auth=MERCHANT, query=schema.DeliveryQuery, response=views.WebhookDeliveryList, tag="webhooks")
async def list_deliveries(call: Call[None, schema.DeliveryQuery]) -> Any:
    q = call.query
    return await webhooks.list_deliveries(call.svc, call.who, call.match("id"), q.page(), q.status)
