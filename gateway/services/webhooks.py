"""Events and webhooks: the merchant's events, its webhook endpoints, and the delivery use cases the
worker runs (claim what is due, record what an attempt gave).

Invariants:
- an endpoint's signing secret leaves the gateway in two answers only (create, rotate_secret); it is
  stored sealed (``auth.sealing``) and an idempotent replay of those calls omits it (a merchant who
  lost it rotates), so no stored answer, log line or Redis copy holds a secret in clear;
- every URL passes ``domain.webhooks.check_url`` for the key mode when it is set, and again (after DNS
  resolution) at each delivery;
- an attempt's outcome is one transaction: the attempt row, the delivery's next state, the endpoint's
  failure clock and, when that clock passes ``disable_after_s``, the endpoint's disabling and its
  ``webhook_endpoint.disabled`` event.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from datetime import datetime, timedelta
from typing import Any

import msgspec

from gateway.auth.principals import Principal, PrincipalKind
from gateway.domain import webhooks as domain
from gateway.domain.ids import Kind, decode, encode
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.services import audit, pages, views
from gateway.services.context import Services
from gateway.services.idempotency import Reply, RequestIdentity, Work
from gateway.store import payments as events_store
from gateway.store import webhooks as store
from gateway.store.db import Connection

SECRET_BYTES = 32


def _id(kind: Kind, text: str, what: str, param: str = "id") -> uuid.UUID:
    value = decode(kind, text)
    if value is None:
        raise NotFound(f"no such {what}: {text}", param=param)
    return value


def _check_url(svc: Services, url: str) -> str:
    try:
        domain.check_url(url, live=svc.settings.auth.key_mode == "live")
    except domain.UrlRefused as exc:
        raise InvalidRequest(f"this URL cannot receive webhooks: {exc}", code="url_not_allowed", param="url") from None
    return url


def _check_events(enabled_events: Sequence[str]) -> list[str]:
    unknown = sorted({e for e in enabled_events if e != "*" and e not in domain.EVENT_TYPES})
    if unknown:
        raise InvalidRequest(f"unknown event types: {', '.join(unknown)}", code="invalid_event_type",
                             param="enabled_events")
    return ["*"] if "*" in enabled_events else sorted(set(enabled_events))


def _new_secret() -> str:
    return domain.make_secret(os.urandom(SECRET_BYTES))


async def _with_secret_once(svc: Services, identity: RequestIdentity, work: Work,
                            shown: dict[str, views.WebhookEndpointView]) -> Reply:
    """Run ``work`` (whose stored answer has no secret); the first answer alone gets the secret back."""
    reply = await svc.idempotency.run(identity, work)
    view = shown.get("view")
    if reply.replayed or view is None or reply.status >= 300:
        return reply
    return Reply(reply.status, msgspec.json.encode(view))


async def create_endpoint(svc: Services, who: Principal, url: str, enabled_events: Sequence[str],
                          description: str | None, identity: RequestIdentity) -> Reply:
    assert who.merchant_id is not None
    merchant_id = who.merchant_id
    _check_url(svc, url)
    wanted = _check_events(enabled_events)
    shown: dict[str, views.WebhookEndpointView] = {}

    async def work(conn: Connection) -> tuple[int, Any]:
        if await store.lock_merchant_endpoints(conn, merchant_id) >= svc.settings.webhooks.endpoints_per_merchant_max:
            raise Conflict("this merchant has as many webhook endpoints as allowed; delete one first",
                           code="too_many_webhook_endpoints")
        endpoint_id = uuid.uuid4()
        secret = _new_secret()
        row = await store.insert_endpoint(conn, endpoint_id, merchant_id, url, description, wanted,
                                          svc.sealer.seal(secret, endpoint_id.bytes))
        shown["view"] = views.webhook_endpoint_view(row, secret=secret)
        view = views.webhook_endpoint_view(row)
        await audit.record(conn, who, "webhook_endpoint.created", endpoint_id, view, merchant_id=merchant_id)
        return 201, view

    return await _with_secret_once(svc, identity, work, shown)


async def _endpoint(conn: Connection, who: Principal, text_id: str) -> Any:
    assert who.merchant_id is not None
    row = await store.endpoint(conn, _id(Kind.WEBHOOK_ENDPOINT, text_id, "webhook endpoint"), who.merchant_id)
    if row is None:
        raise NotFound(f"no such webhook endpoint: {text_id}", param="id")
    return row


async def get_endpoint(svc: Services, who: Principal, text_id: str) -> views.WebhookEndpointView:
    async with svc.db.connection() as conn:
        return views.webhook_endpoint_view(await _endpoint(conn, who, text_id))


async def list_endpoints(svc: Services, who: Principal, page: pages.PageRequest) -> views.WebhookEndpointList:
    assert who.merchant_id is not None
    async with svc.db.connection() as conn:
        rows, has_more = await pages.read(conn, store.merchant_endpoints(who.merchant_id), page,
                                          partial(decode, Kind.WEBHOOK_ENDPOINT))
    return views.WebhookEndpointList(data=[views.webhook_endpoint_view(r) for r in rows], has_more=has_more)


async def update_endpoint(svc: Services, who: Principal, text_id: str, *, url: str | None,
                          enabled_events: Sequence[str] | None, description: str | None, disabled: bool | None,
                          identity: RequestIdentity) -> Reply:
    assert who.merchant_id is not None
    merchant_id = who.merchant_id
    endpoint_id = _id(Kind.WEBHOOK_ENDPOINT, text_id, "webhook endpoint")
    if url is not None:
        _check_url(svc, url)
    wanted = _check_events(enabled_events) if enabled_events is not None else None
    status = None if disabled is None else ("disabled" if disabled else "enabled")

    async def work(conn: Connection) -> tuple[int, Any]:
        row = await store.update_endpoint(conn, endpoint_id, merchant_id, url=url, description=description,
                                          enabled_events=wanted, status=status,
                                          reason="disabled by the merchant" if disabled else None)
        if row is None:
            raise NotFound(f"no such webhook endpoint: {text_id}", param="id")
        view = views.webhook_endpoint_view(row)
        await audit.record(conn, who, "webhook_endpoint.updated", endpoint_id, view, merchant_id=merchant_id)
        return 200, view

    return await svc.idempotency.run(identity, work)


async def delete_endpoint(svc: Services, who: Principal, text_id: str, identity: RequestIdentity) -> Reply:
    assert who.merchant_id is not None
    merchant_id = who.merchant_id
    endpoint_id = _id(Kind.WEBHOOK_ENDPOINT, text_id, "webhook endpoint")

    async def work(conn: Connection) -> tuple[int, Any]:
        if not await store.delete_endpoint(conn, endpoint_id, merchant_id):
            raise NotFound(f"no such webhook endpoint: {text_id}", param="id")
        view = views.DeletedView(id=encode(Kind.WEBHOOK_ENDPOINT, endpoint_id), object="webhook_endpoint")
        await audit.record(conn, who, "webhook_endpoint.deleted", endpoint_id, view, merchant_id=merchant_id)
        return 200, view

    return await svc.idempotency.run(identity, work)


async def rotate_secret(svc: Services, who: Principal, text_id: str, expires_in_s: int | None,
                        identity: RequestIdentity) -> Reply:
    """A new secret signs from now on; the current one keeps signing too for ``expires_in_s`` (0: stops now)."""
    assert who.merchant_id is not None
    merchant_id = who.merchant_id
    endpoint_id = _id(Kind.WEBHOOK_ENDPOINT, text_id, "webhook endpoint")
    overlap_s = svc.settings.webhooks.rotation_overlap_s if expires_in_s is None else expires_in_s
    if overlap_s > svc.settings.webhooks.rotation_overlap_max_s:
        raise InvalidRequest(f"expires_in is at most {svc.settings.webhooks.rotation_overlap_max_s} seconds",
                             code="invalid_expiry", param="expires_in")
    shown: dict[str, views.WebhookEndpointView] = {}

    async def work(conn: Connection) -> tuple[int, Any]:
        row = await store.endpoint(conn, endpoint_id, merchant_id, for_update=True)
        if row is None:
            raise NotFound(f"no such webhook endpoint: {text_id}", param="id")
        secret = _new_secret()
        previous = row["secret_sealed"] if overlap_s > 0 else None
        expires_at = svc.now() + timedelta(seconds=overlap_s) if previous is not None else None
        row = await store.rotate_secret(conn, endpoint_id, merchant_id, svc.sealer.seal(secret, endpoint_id.bytes),
                                        previous, expires_at)
        shown["view"] = views.webhook_endpoint_view(row, secret=secret)
        view = views.webhook_endpoint_view(row)
        await audit.record(conn, who, "webhook_endpoint.secret_rotated", endpoint_id, view, merchant_id=merchant_id)
        return 200, view

    return await _with_secret_once(svc, identity, work, shown)


async def list_deliveries(svc: Services, who: Principal, text_id: str, page: pages.PageRequest,
                          status: str | None) -> views.WebhookDeliveryList:
    assert who.merchant_id is not None
    async with svc.db.connection() as conn:
        endpoint = await _endpoint(conn, who, text_id)
        rows, has_more = await pages.read(conn, store.endpoint_deliveries(endpoint["id"], who.merchant_id, status),
                                          page, partial(decode, Kind.WEBHOOK_DELIVERY))
    return views.WebhookDeliveryList(data=[views.webhook_delivery_view(r) for r in rows], has_more=has_more)


@dataclass(frozen=True, slots=True)
class EventQuery:
    payment: str | None = None
    type: str | None = None
    created_gte_s: int | None = None
    created_lt_s: int | None = None
    merchant: str | None = None  # operators only: one merchant's events


async def list_events(svc: Services, who: Principal, page: pages.PageRequest, q: EventQuery) -> views.EventList:
    """A merchant's own events (``who`` a merchant key), or, for an operator, every merchant's and the
    gateway's own (``merchant`` narrows it to one merchant)."""
    every = who.kind is PrincipalKind.OPERATOR
    scope = who.merchant_id
    if every and q.merchant is not None:
        scope = _id(Kind.MERCHANT, q.merchant, "merchant", "merchant")
    assert every or scope is not None
    object_id = _id(Kind.PAYMENT, q.payment, "payment", "payment") if q.payment is not None else None
    match = events_store.EventFilter(object_id=object_id, type=q.type, created_gte=pages.instant(q.created_gte_s),
                                     created_lt=pages.instant(q.created_lt_s))
    async with svc.stale() as conn:
        rows, has_more = await pages.read(conn, events_store.events_query(scope, match, every_merchant=every), page,
                                          partial(decode, Kind.EVENT))
    return views.EventList(data=[views.event_view(r) for r in rows], has_more=has_more)


async def _event(conn: Connection, who: Principal, text_id: str) -> Any:
    assert who.merchant_id is not None
    row = await events_store.event(conn, _id(Kind.EVENT, text_id, "event"), who.merchant_id)
    if row is None:
        raise NotFound(f"no such event: {text_id}", param="id")
    return row


async def get_event(svc: Services, who: Principal, text_id: str) -> views.EventView:
    async with svc.db.connection() as conn:
        return views.event_view(await _event(conn, who, text_id))


async def redeliver(svc: Services, who: Principal, text_id: str, endpoint: str | None,
                    identity: RequestIdentity) -> Reply:
    """Send the event again now: to every matching enabled endpoint, or to the one named."""
    assert who.merchant_id is not None
    merchant_id = who.merchant_id
    endpoint_id = _id(Kind.WEBHOOK_ENDPOINT, endpoint, "webhook endpoint", "endpoint") if endpoint else None

    async def work(conn: Connection) -> tuple[int, Any]:
        event = await _event(conn, who, text_id)
        if not event["deliverable"]:
            raise InvalidRequest(f"{event['type']} events are not sent to webhooks", code="event_not_deliverable",
                                 param="id")
        if endpoint_id is not None and await store.endpoint(conn, endpoint_id, merchant_id) is None:
            raise NotFound(f"no such webhook endpoint: {endpoint}", param="endpoint")
        rows = await store.redeliver(conn, event["id"], event["type"], merchant_id, endpoint_id)
        return 200, views.WebhookDeliveryList(data=[views.webhook_delivery_view(r) for r in rows], has_more=False)

    return await svc.idempotency.run(identity, work)


# --- delivery (the worker's use cases) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt to deliver one event to one endpoint, as leased."""

    delivery_id: uuid.UUID
    endpoint_id: uuid.UUID
    merchant_id: uuid.UUID
    url: str
    message_id: str  # the event id: the same on every retry and redelivery (receivers dedupe on it)
    body: bytes
    secrets: tuple[str, ...]  # the current secret first, then one still in its rotation overlap
    number: int  # 1 for the first attempt of this delivery
    window_start_at: datetime
    event_created_at: datetime


@dataclass(frozen=True, slots=True)
class Outcome:
    status_code: int | None
    latency_ms: int
    error: str | None
    excerpt: str | None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _attempt(svc: Services, row: Any) -> Attempt:
    context = row["endpoint_id"].bytes
    secrets = [svc.sealer.open(row["secret_sealed"], context)]
    if row["previous_secret_sealed"] is not None and row["previous_secret_expires_at"] > row["leased_at"]:
        secrets.append(svc.sealer.open(row["previous_secret_sealed"], context))
    event = views.event_view({"id": row["event_id"], "type": row["type"], "data": row["data"],
                              "created_at": row["created_at"], "merchant_id": row["merchant_id"],
                              "actor_type": row["actor_type"], "actor_id": row["actor_id"],
                              "request_id": row["request_id"]})
    return Attempt(
        delivery_id=row["id"], endpoint_id=row["endpoint_id"], merchant_id=row["merchant_id"], url=row["url"],
        message_id=event.id, body=msgspec.json.encode(event), secrets=tuple(secrets), number=row["attempt_count"],
        window_start_at=row["window_start_at"], event_created_at=row["created_at"],
    )


async def claim(svc: Services, limit: int, room: Callable[[uuid.UUID], int],
                busy_endpoints: Sequence[uuid.UUID]) -> list[Attempt]:
    """Lease up to ``limit`` due deliveries, at most ``room(endpoint)`` per endpoint, none of ``busy_endpoints``."""
    lease_s = svc.settings.webhooks.timeout_s + svc.settings.webhooks.lease_margin_s

    async def work(conn: Connection) -> list[Attempt]:
        taken: list[uuid.UUID] = []
        per_endpoint: dict[uuid.UUID, int] = {}
        for row in await store.due(conn, limit, busy_endpoints):
            count = per_endpoint.get(row["endpoint_id"], 0)
            if count < room(row["endpoint_id"]):
                per_endpoint[row["endpoint_id"]] = count + 1
                taken.append(row["id"])
        if not taken:
            return []
        return [_attempt(svc, row) for row in await store.lease(conn, taken, lease_s)]

    return await svc.db.run(work)


async def record(svc: Services, attempt: Attempt, outcome: Outcome) -> str | None:
    """Store the attempt and move the delivery on; the delivery's new status, or None if it was no
    longer pending (redelivered or deleted meanwhile)."""
    settings = svc.settings.webhooks
    now = svc.now()
    next_at: datetime | None = None
    if outcome.succeeded:
        status = "succeeded"
    elif settings.backoff().gives_up((now - attempt.window_start_at).total_seconds()):
        status = "failed"
    else:
        status = "pending"
        next_at = now + timedelta(seconds=settings.backoff().delay_s(attempt.number, random.random()))

    async def work(conn: Connection) -> str | None:
        if not await store.record_attempt(conn, attempt.delivery_id, now, outcome.status_code, outcome.latency_ms,
                                          outcome.error, outcome.excerpt, status, next_at):
            return None
        if outcome.succeeded:
            await store.endpoint_succeeded(conn, attempt.endpoint_id)
            return status
        row = await store.endpoint_failed(conn, attempt.endpoint_id, now)
        if (row is not None and row["status"] == "enabled"
                and (now - row["failing_since"]).total_seconds() >= settings.disable_after_s):
            reason = f"every delivery failed for {int(settings.disable_after_s)} seconds"
            disabled = await store.update_endpoint(conn, attempt.endpoint_id, attempt.merchant_id, url=None,
                                                   description=None, enabled_events=None, status="disabled",
                                                   reason=reason)
            assert disabled is not None
            await events_store.insert_event(conn, "webhook_endpoint.disabled", attempt.endpoint_id,
                                            views.webhook_endpoint_view(disabled), merchant_id=attempt.merchant_id,
                                            holder_id=None)
        return status

    return await svc.db.run(work)
