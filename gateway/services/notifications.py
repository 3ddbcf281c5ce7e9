"""Holder notifications: written by other use cases inside their own transaction (``notify``), listed
and marked read by the holder, pushed by the worker (``claim`` / ``record``).

Invariants:
- a notification is written in the transaction of the change it tells about, so it exists exactly
  when that change committed; whether it is pushed is decided then (a push hook configured or not);
- a holder reaches only its own notifications: another's id is a 404, like one that does not exist;
- push is at least once (a lease that ends is attempted again) with the notification id on every
  attempt, so duplicates are the push service's to drop; bounded by ``push_attempts_max``.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import msgspec

from gateway.auth.principals import Principal
from gateway.domain import notifications as domain
from gateway.domain.ids import Kind, decode, encode
from gateway.errors import NotFound
from gateway.services import pages, views
from gateway.services.context import Services
from gateway.services.idempotency import Reply, RequestIdentity
from gateway.services.pages import PageRequest
from gateway.store import notifications as store
from gateway.store.db import Connection


async def notify(svc: Services, conn: Connection, holder_id: uuid.UUID, kind: str, data: Any,
                 notification_id: uuid.UUID | None = None) -> uuid.UUID:
    """Write a notification in the caller's transaction; ``data`` must hold nothing secret."""
    notification_id = notification_id or uuid.uuid4()
    await store.insert(conn, notification_id, holder_id, domain.check_kind(kind), data,
                       push=bool(svc.settings.notifications.push_url))
    return notification_id


async def list_notifications(svc: Services, who: Principal, page: PageRequest,
                             unread_only: bool) -> views.NotificationList:
    async with svc.db.connection() as conn:
        rows, has_more = await pages.read(conn, store.holder_notifications(who.id, unread_only), page,
                                          partial(decode, Kind.NOTIFICATION))
    return views.NotificationList(data=[views.notification_view(r) for r in rows], has_more=has_more)


async def mark_read(svc: Services, who: Principal, text_id: str, identity: RequestIdentity) -> Reply:
    """Idempotent by nature (read once, the first time kept) and by key."""
    notification_id = decode(Kind.NOTIFICATION, text_id)
    if notification_id is None:
        raise NotFound(f"no such notification: {text_id}", param="id")

    async def work(conn: Connection) -> tuple[int, Any]:
        row = await store.mark_read(conn, notification_id, who.id)
        if row is None:
            raise NotFound(f"no such notification: {text_id}", param="id")
        return 200, views.notification_view(row)

    return await svc.idempotency.run(identity, work)


# --- push (the worker's use cases) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Push:
    notification_id: uuid.UUID
    public_id: str  # ntf_...: the same on every attempt
    attempts: int  # this attempt's number (1 for the first)
    body: bytes


def _body(row: Any) -> bytes:
    view = views.notification_view(row)
    return msgspec.json.encode({"holder": encode(Kind.WALLET_HOLDER, row["holder_id"]),
                                **msgspec.structs.asdict(view)})


async def claim(svc: Services, limit: int) -> list[Push]:
    settings = svc.settings.notifications
    async with svc.db.connection() as conn:
        rows = await store.claim_pushes(conn, limit, settings.push_timeout_s + settings.push_lease_margin_s)
    return [Push(r["id"], encode(Kind.NOTIFICATION, r["id"]), r["push_attempts"], _body(r)) for r in rows]


async def record(svc: Services, push: Push, *, pushed: bool, error: str | None) -> str | None:
    """Store an attempt's outcome; the new push status, or None when another attempt holds it now."""
    settings = svc.settings.notifications
    next_at: datetime | None = None
    if not pushed:
        rule = domain.PushRetry(settings.push_backoff_base_s, settings.push_backoff_max_s, settings.push_attempts_max)
        delay_s = rule.next_delay_s(push.attempts, random.random())
        next_at = None if delay_s is None else svc.now() + timedelta(seconds=delay_s)
    async with svc.db.connection() as conn:
        done = await store.record_push(conn, push.notification_id, push.attempts, pushed=pushed, next_at=next_at,
                                       error=None if error is None else error[:300])
    if not done:
        return None
    return "pushed" if pushed else ("pending" if next_at is not None else "failed")
