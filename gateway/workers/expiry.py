"""Expiry of payments and authorisations, reaping of idempotency keys, old pay-codes and forgotten
sign-in failures, every
``workers.interval_s``. Safe to run everywhere at once: rows are claimed with SKIP LOCKED and every
change is a state-checked transition."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import timedelta

from gateway import metrics
from gateway.services import payments
from gateway.services.context import Services
from gateway.store import codes, idempotency, throttle
from gateway.store import payments as payment_store

log = logging.getLogger(__name__)


async def tick(svc: Services) -> tuple[int, int]:
    async with svc.db.connection() as conn:
        # Measured before the batch, so that a batch that keeps failing shows as a growing lag: up to one
        # interval while the worker keeps up, more when it falls behind.
        now = svc.now()
        oldest = await payment_store.oldest_overdue(conn, now)
    metrics.EXPIRY_LAG.set(0.0 if oldest is None else (now - oldest).total_seconds())
    expired = await payments.expire_due(svc)
    async with svc.db.connection() as conn:
        reaped = await idempotency.reap(conn, svc.settings.idempotency.retention_s, svc.settings.workers.batch_max)
        # Unused pay-codes are worthless a minute after issue; keep a day of them for support.
        reaped += await codes.reap_pay_codes(conn, svc.now() - timedelta(days=1), svc.settings.workers.batch_max)
        # Sign-in failures older than the forget window count for nothing any more.
        reaped += await throttle.reap(conn, svc.now() - timedelta(seconds=svc.settings.throttle.failures_forget_s),
                                      svc.settings.workers.batch_max)
    return expired, reaped


async def loop(svc: Services) -> None:
    while True:
        # Jitter spreads the processes' ticks apart.
        await asyncio.sleep(svc.settings.workers.interval_s * random.uniform(0.8, 1.2))
        try:
            expired, reaped = await asyncio.wait_for(tick(svc), timeout=60)
            if expired or reaped:
                log.info("worker tick", extra={"expired": expired, "keys_reaped": reaped})
        except Exception:
            log.exception("worker tick failed; will retry")
