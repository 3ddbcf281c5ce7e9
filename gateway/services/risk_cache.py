"""This process's view of the active risk rules: what the one-statement payment path asks, from memory.

Invariants:
- ``one_statement(attempt, read)`` answers only from the last kept read of the rules, younger than
  ``FRESH_S``: the rules the one-statement path keeps for the payment (``domain.risk.one_statement``:
  none when no rule concerns it, e.g. another holder's blocked wallet or another currency's amount
  rule); a payment a rule might not allow (or any payment, when this process cannot tell) takes the
  general path, which reads the rules from the database;
- the view is read when the app starts, re-read every ``REFRESH_S`` in the background
  (``refreshing``) and at once after a change made by this process, so a rule created in another
  process reaches this one's fast path within ``REFRESH_S``;
- a read that began before another is never kept after it (reads are numbered when they begin);
- ``sightings`` keeps when each (holder, device) the head reads found was first seen
  (``wallet_devices.created_at``). A first sighting is never moved: no statement updates ``created_at``
  or deletes a device row (a revoked device keeps its row, and signing in on it again keeps its
  ``created_at``: ``store.sign_in.trust_device``), so a sighting read once holds for good and a device's
  age only grows; only a sighting found is kept (a device never seen may be seen later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from gateway.domain import risk
from gateway.store import risk as store
from gateway.store.db import Connection, Database
from gateway.tasks import cancel_and_wait

REFRESH_S = 2.0
SIGHTINGS_MAX = 50_000  # (holder, device) first sightings one process keeps; the least recently used go first
FRESH_S = 3 * REFRESH_S  # after 3 failed refreshes the view cannot tell: the general path runs
# A disabled rule's velocity windows are removed from Redis this long after the disable: by then no process's
# fast path still charges them (its view is fresh within FRESH_S, and the general path reads the rules).
FORGET_AFTER_S = 2 * FRESH_S
log = logging.getLogger(__name__)


class Sightings:
    """When each (holder, device) was first seen, as read (see the module's invariants), the least recently
    used forgotten first beyond ``entries_max``."""

    def __init__(self, entries_max: int = SIGHTINGS_MAX) -> None:
        self.entries_max = entries_max
        self._seen: OrderedDict[tuple[uuid.UUID, str], datetime] = OrderedDict()

    def get(self, holder_id: uuid.UUID, device_id: str) -> datetime | None:
        key = (holder_id, device_id)
        found = self._seen.get(key)
        if found is not None:
            self._seen.move_to_end(key)
        return found

    def saw(self, holder_id: uuid.UUID, device_id: str, first_seen_at: datetime) -> None:
        self._seen[(holder_id, device_id)] = first_seen_at
        self._seen.move_to_end((holder_id, device_id))
        while len(self._seen) > self.entries_max:
            self._seen.popitem(last=False)

    def clear(self) -> None:
        """Forget every sighting (tests that move a device's history back, which nothing else does)."""
        self._seen.clear()

    def __len__(self) -> int:
        return len(self._seen)


@dataclass
class RiskRules:
    """The active rules at this process's last kept read (see the module's invariants)."""

    rules: tuple[risk.Rule, ...] = ()
    kinds: frozenset[risk.RuleKind] = frozenset()  # of those rules: what the one-statement path reads for
    read_at_s: float | None = None
    clock: Callable[[], float] = field(default=time.monotonic)
    sightings: Sightings = field(default_factory=Sightings)
    _begun: int = 0
    _kept: int = 0
    _forgetting: set[asyncio.Task[None]] = field(default_factory=set)

    def forget_later(self, forget: Callable[[], Awaitable[object]]) -> None:
        """Run ``forget`` (a disabled rule's windows removed) ``FORGET_AFTER_S`` from now, in the background;
        a stop cancels it (the windows then expire by their TTL, as they would have without it)."""

        async def later() -> None:
            await asyncio.sleep(FORGET_AFTER_S)
            try:
                await forget()
            except Exception as exc:  # an accelerator's failure is its own to report; nothing waits for this
                log.warning("a disabled rule's windows were not removed", extra={"error": type(exc).__name__})

        task = asyncio.create_task(later())
        self._forgetting.add(task)
        task.add_done_callback(self._forgetting.discard)

    def saw(self, rules: tuple[risk.Rule, ...], read_number: int | None = None) -> None:
        if read_number is not None:
            if read_number < self._kept:
                return
            self._kept = read_number
        self.rules = rules
        self.kinds = frozenset(r.kind for r in rules)
        self.read_at_s = self.clock()

    def one_statement(self, attempt: risk.Attempt, read: risk.Unlocked | None) -> risk.OneStatement | None:
        """From memory, while the view is fresh: the rules the one-statement path keeps for this payment
        (``domain.risk.one_statement``; none: no active rule concerns it, so the general path would find
        nothing to check or record either); None when the view is stale or a rule might not allow it."""
        fresh = self.read_at_s is not None and self.clock() - self.read_at_s <= FRESH_S
        return risk.one_statement(self.rules, attempt, read) if fresh else None

    async def load(self, conn: Connection) -> tuple[risk.Rule, ...]:
        """Read the active rules (the general path's answer) and keep them as this process's view."""
        self._begun += 1
        number = self._begun
        rules = tuple(store.to_domain(r) for r in await store.active(conn))
        self.saw(rules, number)
        return rules

    @contextlib.asynccontextmanager
    async def refreshing(self, db: Database) -> AsyncIterator[None]:
        """Keep the view fresh while the block runs."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(REFRESH_S)
                try:
                    async with db.connection() as conn:
                        await self.load(conn)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the next period tries again; meanwhile the view goes stale
                    log.warning("risk rules load failed", extra={"error": type(exc).__name__})

        with contextlib.suppress(Exception):  # the first read before serving; the loop retries a failure
            async with db.connection() as conn:
                await self.load(conn)
        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            await cancel_and_wait([task, *self._forgetting])
