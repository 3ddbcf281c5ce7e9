"""The webhook delivery loop: every process runs one; together they deliver every event to every
matching endpoint at least once.

Invariants:
- a delivery is leased (``services.webhooks.claim``) before its attempt and its outcome recorded
  after; a process that dies in between leaves it due again when the lease ends;
- no endpoint can hold the others up: at most ``endpoint_concurrency_max`` attempts in flight per
  endpoint (an endpoint at its cap is not claimed for), ``concurrency_max`` in all, each attempt
  bounded by ``timeout_s``, the answer read only up to ``response_excerpt_bytes``, redirects never
  followed;
- the address connected to is the one checked: names resolve through ``PolicyResolver``, which
  drops every address ``domain.webhooks.address_allowed`` refuses (DNS rebinding gets nothing), and
  literal addresses are checked with the URL before each attempt;
- the loop wakes at each commit that queued deliveries (LISTEN on a dedicated connection, NOTIFY sent
  by the fan-out trigger at commit), after each finished attempt, and every ``poll_interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
import uuid
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from gateway import metrics
from gateway.domain import webhooks as domain
from gateway.services import webhooks
from gateway.services.context import Services
from gateway.store import webhooks as store

log = logging.getLogger(__name__)
_LISTEN_RETRY_S = 2.0
_DB_CALL_TIMEOUT_S = 30.0
_USER_AGENT = "wallet-gateway-webhooks/1"


class PolicyResolver(AbstractResolver):
    """Resolves like the system does, then keeps only the addresses webhooks may be sent to."""

    def __init__(self, *, live: bool) -> None:
        self._inner = ThreadedResolver()
        self._live = live

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        allowed = [r for r in found if domain.address_allowed(ipaddress.ip_address(r["host"]), live=self._live)]
        if not allowed:
            raise OSError(f"{host} resolves to no public address")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def _error(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


async def send(session: aiohttp.ClientSession, attempt: webhooks.Attempt, svc: Services) -> webhooks.Outcome:
    """One HTTP POST of the event, signed with every live secret; never raises."""
    settings = svc.settings.webhooks
    live = svc.settings.auth.key_mode == "live"
    headers = domain.signed_headers(attempt.message_id, int(svc.now().timestamp()), attempt.body, attempt.secrets)
    headers.update({"Content-Type": "application/json", "User-Agent": _USER_AGENT})
    started = time.monotonic()

    def elapsed_ms() -> int:
        return round((time.monotonic() - started) * 1000)

    try:
        domain.check_url(attempt.url, live=live)
        async with session.post(attempt.url, data=attempt.body, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=settings.timeout_s)) as resp:
            excerpt = await resp.content.read(settings.response_excerpt_bytes) if settings.response_excerpt_bytes else b""
            return webhooks.Outcome(resp.status, elapsed_ms(), None, excerpt.decode("utf-8", errors="replace") or None)
    except domain.UrlRefused as exc:
        return webhooks.Outcome(None, elapsed_ms(), f"refused: {exc}", None)
    except TimeoutError:
        return webhooks.Outcome(None, elapsed_ms(), f"no answer within {settings.timeout_s} s", None)
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return webhooks.Outcome(None, elapsed_ms(), _error(exc), None)


class Deliverer:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.settings = svc.settings.webhooks
        self.wake = asyncio.Event()
        self.in_flight: dict[uuid.UUID, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def room(self, endpoint_id: uuid.UUID) -> int:
        return self.settings.endpoint_concurrency_max - self.in_flight.get(endpoint_id, 0)

    def _busy(self) -> list[uuid.UUID]:
        return [e for e, n in self.in_flight.items() if n >= self.settings.endpoint_concurrency_max]

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(resolver=PolicyResolver(live=self.svc.settings.auth.key_mode == "live"),
                                         limit=self.settings.concurrency_max, use_dns_cache=False)
        listener = asyncio.create_task(self._listen()) if self.settings.listen else None
        try:
            async with aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False) as session:
                while True:
                    self.wake.clear()
                    if await self._claim_and_start(session):
                        continue  # a full batch: more may be due
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), self.settings.poll_interval_s)
        finally:
            if listener is not None:
                listener.cancel()
            for task in list(self.tasks):
                task.cancel()  # its lease ends and a process delivers it again
            await asyncio.gather(*self.tasks, *([listener] if listener else []), return_exceptions=True)

    async def _claim_and_start(self, session: aiohttp.ClientSession) -> bool:
        """Lease what is due and start its attempts; True if the batch was full."""
        want = min(self.settings.concurrency_max - len(self.tasks), self.settings.batch_max)
        if want <= 0:
            return False
        try:
            claimed = await asyncio.wait_for(webhooks.claim(self.svc, want, self.room, self._busy()),
                                             _DB_CALL_TIMEOUT_S)
        except Exception:
            log.warning("webhook claim failed; will retry", exc_info=True)
            return False
        for attempt in claimed:
            self.in_flight[attempt.endpoint_id] = self.in_flight.get(attempt.endpoint_id, 0) + 1
            task = asyncio.create_task(self._deliver(session, attempt))
            self.tasks.add(task)
            task.add_done_callback(self._finished)
        return len(claimed) == want

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.wake.set()

    async def _deliver(self, session: aiohttp.ClientSession, attempt: webhooks.Attempt) -> None:
        try:
            outcome = await send(session, attempt, self.svc)
            if attempt.number == 1:
                metrics.WEBHOOK_FIRST_ATTEMPT_DELAY.observe(max(0.0, (self.svc.now() - attempt.event_created_at).total_seconds()))
            status = await asyncio.wait_for(webhooks.record(self.svc, attempt, outcome), _DB_CALL_TIMEOUT_S)
            metrics.WEBHOOK_ATTEMPTS.labels(status or "superseded").inc()
            if not outcome.succeeded:
                log.info("webhook attempt failed", extra={"delivery": attempt.delivery_id.hex,
                                                          "attempt": attempt.number, "status": outcome.status_code,
                                                          "error": outcome.error, "outcome": status})
        except Exception:  # the lease ends and the delivery is attempted again
            log.warning("webhook attempt could not be recorded", exc_info=True)
        finally:
            left = self.in_flight.get(attempt.endpoint_id, 1) - 1
            if left > 0:
                self.in_flight[attempt.endpoint_id] = left
            else:
                self.in_flight.pop(attempt.endpoint_id, None)

    async def _listen(self) -> None:
        """Keep a LISTEN connection; on every (re)connection wake once for what was missed meanwhile."""
        url = self.svc.settings.database.url
        while True:
            conn: Any = None
            try:
                conn = await store.listen(url, self.wake.set, timeout_s=10)
                self.wake.set()
                while True:
                    await asyncio.sleep(self.settings.poll_interval_s)
                    await store.ping(conn, timeout_s=10)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("webhook listener lost its connection; polling until it is back", exc_info=True)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 5)
            await asyncio.sleep(_LISTEN_RETRY_S)
