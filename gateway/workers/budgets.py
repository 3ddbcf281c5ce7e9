"""The budget loop: every process runs one; together they evaluate every committed payment and refund
against the holders' budgets exactly once, a reminder following a payment within about two
``spending.poll_interval_s``.

Each tick takes a ``Sample`` of the database (the journal's last id, then the time) and asks when the
oldest open transaction began. A sample becomes a horizon once no transaction begun before it is
open: then every journal entry stamped before it is committed (or gone), and the cursor can move
there (``services.spending.evaluate``, one transaction under the cursor's lock, so processes take
turns and a crash moves nothing). Only samples from earlier ticks are used, a tick apart from the
check, so a transaction that has begun but not yet shown in ``pg_stat_activity`` is not overtaken.

A transaction that stays open (a long settlement run) holds reminders back until it ends, never
loses one. Samples kept are bounded (``_SAMPLES_MAX``): while one transaction blocks them, the
oldest are dropped, and the newest that is clear serves once it ends.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from gateway.services import spending
from gateway.services.context import Services
from gateway.store import spending as store

log = logging.getLogger(__name__)
_SAMPLES_MAX = 256
_TICK_TIMEOUT_S = 30.0


class Evaluator:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.samples: collections.deque[store.Sample] = collections.deque(maxlen=_SAMPLES_MAX)

    async def tick(self) -> int | None:
        """Take a sample; evaluate up to the newest earlier sample that is clear. Reminders written, or None."""
        async with self.svc.db.connection() as conn:
            oldest = await store.oldest_transaction_start(conn)
            now = await store.sample(conn)
        ready = None
        while self.samples and (oldest is None or self.samples[0].at <= oldest):
            ready = self.samples.popleft()
        self.samples.append(now)
        if ready is None:
            return None
        return await spending.evaluate(self.svc, ready)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.svc.settings.spending.poll_interval_s)
            try:
                written = await asyncio.wait_for(self.tick(), _TICK_TIMEOUT_S)
                if written:
                    log.info("budget reminders written", extra={"reminders": written})
            except Exception:
                log.warning("budget evaluation failed; will retry", exc_info=True)
