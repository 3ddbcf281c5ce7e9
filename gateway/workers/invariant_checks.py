"""Background ledger invariant checks (services/invariant_checks.py): every ``ledger.check_poll_s``, or at once
when this process queued one, run the check that is due. Safe in every process at once: a check is claimed
with SKIP LOCKED and at most one is queued or running."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from gateway.errors import Unavailable
from gateway.services import invariant_checks
from gateway.services.context import Services

log = logging.getLogger(__name__)


async def loop(svc: Services) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(svc.checks_due.wait(), svc.settings.ledger.check_poll_s * random.uniform(0.8, 1.2))
        svc.checks_due.clear()
        try:
            await invariant_checks.run_next(svc)  # bounded by ledger.check_timeout_s
        except Unavailable as exc:  # the database is away: nothing was claimed, the next poll tries again
            log.warning("ledger invariant check worker: database unavailable", extra={"error": exc.code})
        except Exception:
            log.exception("ledger invariant check worker failed; will retry")
            await asyncio.sleep(svc.settings.ledger.check_poll_s)
