"""The live promotion campaigns, cached in each process (see ``services.promotions`` for what the
cache may and may not decide).

Invariants:
- it holds the campaigns not ended and not past their end, as the latest load that finished after
  every load begun before it saw them: a load that began before another is never kept after it;
- it is loaded when the app starts, reloaded every ``promotions.cache_refresh_s`` in the background,
  and at once by a use case of this process that created or ended a campaign (after its commit);
- until the first load succeeds, and once loads failed for ``_STALE_PERIODS`` refresh periods,
  ``current()`` answers None ("cannot tell"): callers then read the database;
- a merchant's MCC, which never changes once the merchant exists, is cached without bound on its age;
- a load also reads the promotions account of each bank-funded campaign's currency into the ledger's
  cache of account ids (an id never changes), so that the one-statement path can pay a campaign's
  first payments instead of sending them all to the general path, which reads the account there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from gateway.tasks import cancel_and_wait
from gateway.domain import ledger
from gateway.domain.promotions import Campaign, Funder
from gateway.settings import PromotionSettings
from gateway.store import ledger as ledger_store
from gateway.store import promotions as store
from gateway.store.db import Connection, Database

log = logging.getLogger(__name__)
_STALE_PERIODS = 3


class CampaignCache:
    """The live campaigns of this process (see the module's invariants)."""

    def __init__(self, settings: PromotionSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.refresh_s = settings.cache_refresh_s
        self.live_max = settings.campaigns_live_max
        self._clock = clock
        self._campaigns: tuple[Campaign, ...] = ()
        self._loaded_at_s: float | None = None
        self._started = 0  # loads begun
        self._kept = 0  # the sequence number of the load whose result is held
        self._mccs: dict[uuid.UUID, str] = {}  # a merchant's MCC never changes once created
        self.loads = 0

    def current(self) -> tuple[Campaign, ...] | None:
        """The live campaigns, or None when the cache cannot tell (never loaded, or stale)."""
        if self._loaded_at_s is None or self._clock() - self._loaded_at_s > _STALE_PERIODS * self.refresh_s:
            return None
        return self._campaigns

    async def load(self, db: Database, now: datetime) -> None:
        self._started += 1
        number = self._started
        async with db.connection() as conn:
            rows = await store.live(conn, now, self.live_max)
            campaigns = tuple(store.to_domain(r) for r in rows)
            funding = sorted({c.currency for c in campaigns if c.funded_by is Funder.BANK})
            await ledger_store.learn(conn, [ledger.promotions(code) for code in funding])
        if number < self._kept:
            return  # a later load finished first: it saw every change this one saw
        self._kept = number
        self._campaigns = campaigns
        self._loaded_at_s = self._clock()
        self.loads += 1

    def known_mcc(self, merchant_id: uuid.UUID) -> str | None:
        """The merchant's MCC if this process has read it already (no round trip), else None."""
        return self._mccs.get(merchant_id)

    async def mcc(self, conn: Connection, merchant_id: uuid.UUID) -> str | None:
        known = self._mccs.get(merchant_id)
        if known is None:
            known = await store.mcc(conn, merchant_id)
            if known is not None:
                self._mccs[merchant_id] = known
        return known

    @contextlib.asynccontextmanager
    async def refreshing(self, db: Database, now: Callable[[], datetime]) -> AsyncIterator[None]:
        """Keep the cache loaded while the block runs; the first load is tried before it starts."""

        async def loop() -> None:
            while True:
                try:
                    await self.load(db, now())
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the next period tries again; meanwhile the cache goes stale
                    log.warning("campaign cache load failed", extra={"error": type(exc).__name__})
                await asyncio.sleep(self.refresh_s)

        with contextlib.suppress(Exception):
            await self.load(db, now())
        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            await cancel_and_wait([task])
