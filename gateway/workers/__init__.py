"""Background loops every gateway process runs: one module per loop, each needing only ``Services``.

- ``expiry``: payments and authorisations past their time, idempotency keys and pay-codes past retention;
- ``webhooks``: delivery of the webhook outbox;
- ``budgets``: committed payments and refunds evaluated against budgets (reminders);
- ``notifications``: holder notifications pushed to the push hook, when one is configured.
Every loop is safe in every process at once (rows claimed with ``FOR UPDATE SKIP LOCKED``) and
survives its own failures (logged, retried on the next tick)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from gateway.services.context import Services
from gateway.workers import budgets, expiry, notifications, webhooks


@contextlib.asynccontextmanager
async def running(svc: Services) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(expiry.loop(svc)), asyncio.create_task(webhooks.Deliverer(svc).run()),
             asyncio.create_task(budgets.Evaluator(svc).run()), asyncio.create_task(notifications.loop(svc))]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
