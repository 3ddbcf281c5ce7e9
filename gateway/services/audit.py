"""Audit events: who did which admin action to what, written in the action's own transaction.

Invariants:
- ``record`` runs on the action's connection inside its transaction: the event commits with the
  action or not at all (an action that fails, or is rolled back, leaves none);
- an audit event is a row of the events table (``events``): a merchant lists those of its objects
  (``api_key.created`` for its keys) through ``GET /v1/events``, operators every one through
  ``GET /v1/operator/events``; one of no merchant (``wallet.unlocked``, ``operator.created``) is
  seen by operators only;
- only the webhook event types (``domain.webhooks.EVENT_TYPES``: ``merchant.suspended``,
  ``payout.paid``, ...) are delivered to webhook endpoints; the audit-only types are not, so an
  endpoint subscribed to ``*`` keeps receiving what it did;
- the data is the object's public view: ids, prefixes, masked numbers; never a secret, code or PIN;
- each event is also a business log line ("audit event", logger ``gateway.audit``) with the same ids.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from gateway.auth.principals import Principal, PrincipalKind
from gateway.domain import webhooks
from gateway.logs import request_id_var
from gateway.store import payments as events_store
from gateway.store.db import Connection

log = logging.getLogger("gateway.audit")

Actor = events_store.Actor
CLI = Actor("cli", None)  # an operator at the server's shell (`gateway create-operator`, ...)
_ACTOR_TYPES = {PrincipalKind.OPERATOR: "operator", PrincipalKind.MERCHANT: "api_key",
                PrincipalKind.PUBLISHABLE: "api_key", PrincipalKind.DEVICE: "device",
                PrincipalKind.WALLET: "wallet_holder"}


def actor(who: Principal | None) -> Actor:
    """The principal of a request, or the command line when there is none."""
    return CLI if who is None else Actor(_ACTOR_TYPES[who.kind], who.id)


async def record(conn: Connection, who: Principal | Actor | None, event_type: str, object_id: uuid.UUID,
                 data: Any, *, merchant_id: uuid.UUID | None, holder_id: uuid.UUID | None = None) -> None:
    """Write the audit event of an action (call it inside the action's transaction)."""
    by = who if isinstance(who, Actor) else actor(who)
    request_id = request_id_var.get()
    await events_store.insert_event(conn, event_type, object_id, data, merchant_id=merchant_id, holder_id=holder_id,
                                    actor=by, request_id=request_id,
                                    deliverable=event_type in webhooks.EVENT_TYPES)
    log.info("audit event", extra={"event_type": event_type, "object_id": str(object_id),
                                    "merchant_id": str(merchant_id) if merchant_id else None,
                                    "actor_type": by.type, "actor_id": str(by.id) if by.id else None})
