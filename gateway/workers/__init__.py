"""Background loops every gateway process runs: one module per loop, each needing only ``Services``.

- ``expiry``: payments and authorisations past their time, idempotency keys and pay-codes past retention;
- ``webhooks``: delivery of the webhook outbox;
- ``budgets``: committed payments and refunds evaluated against budgets (reminders);
- ``notifications``: holder notifications pushed to the push hook, when one is configured.
- ``invariant_checks``: the ledger invariant checks operators asked for, run in the background;
- ``partitions``: months of the time-partitioned tables created ahead, expired ones dropped;
- ``sign_in_codes``: delivery of one-time sign-in codes to the SMS hook (also run by an app built
  without workers: without it no new device could sign in).
Every loop is safe in every process at once (rows claimed with ``FOR UPDATE SKIP LOCKED``) and
survives its own failures (logged, retried on the next tick)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from gateway.tasks import cancel_and_wait
from gateway.services.context import Services
from gateway.workers import budgets, expiry, invariant_checks, notifications, partitions, sign_in_codes, webhooks


@contextlib.asynccontextmanager
async def running(svc: Services) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(expiry.loop(svc)), asyncio.create_task(webhooks.Deliverer(svc).run()),
             asyncio.create_task(budgets.Evaluator(svc).run()), asyncio.create_task(notifications.loop(svc)),
             asyncio.create_task(sign_in_codes.CodeSender(svc).run()), asyncio.create_task(partitions.loop(svc)),
             asyncio.create_task(invariant_checks.loop(svc))]
    try:
        yield
    finally:
        await cancel_and_wait(tasks)


@contextlib.asynccontextmanager
async def sending_codes(svc: Services) -> AsyncIterator[None]:
    """Only the sign-in code sender (an app built without its other loops)."""
    task = asyncio.create_task(sign_in_codes.CodeSender(svc).run())
    try:
        yield
    finally:
        await cancel_and_wait([task])
