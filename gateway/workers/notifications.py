"""The notification push loop: every process runs one when ``notifications.push_url`` is set; together
they POST every notification written while it was set to the push hook at least once.

Invariants:
- a push is leased (``services.notifications.claim``: attempts + 1, due again after the timeout and a
  margin) before its attempt and its outcome recorded after; a process that dies in between, or a
  restart, leaves it due again when the lease ends: nothing is lost, and a duplicate happens only
  then (at least once by design), carrying the same ``Notification-Id`` for the push service to drop;
- each attempt is bounded by ``push_timeout_s``; at most ``push_batch_max`` in flight per process;
  redirects are not followed; only a 2xx counts;
- attempts per notification are bounded (``push_attempts_max``), with full-jitter backoff between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from gateway.services import notifications
from gateway.services.context import Services

log = logging.getLogger(__name__)
_USER_AGENT = "wallet-gateway-notifications/1"
_DB_CALL_TIMEOUT_S = 30.0


def _error(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


async def send(session: aiohttp.ClientSession, svc: Services, push: notifications.Push) -> str | None:
    """One POST of the notification; None when the hook took it (2xx), else why not. Never raises."""
    settings = svc.settings.notifications
    headers = {"Content-Type": "application/json", "User-Agent": _USER_AGENT, "Notification-Id": push.public_id,
               "Idempotency-Key": push.public_id, "Notification-Attempt": str(push.attempts)}
    try:
        async with session.post(settings.push_url, data=push.body, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=settings.push_timeout_s)) as resp:
            return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
    except TimeoutError:
        return f"no answer within {settings.push_timeout_s} s"
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return _error(exc)


async def _deliver(session: aiohttp.ClientSession, svc: Services, push: notifications.Push) -> None:
    try:
        error = await send(session, svc, push)
        status = await asyncio.wait_for(notifications.record(svc, push, pushed=error is None, error=error),
                                        _DB_CALL_TIMEOUT_S)
        if error is not None:
            log.info("notification push failed", extra={"notification": push.public_id, "attempt": push.attempts,
                                                        "error": error, "outcome": status})
    except Exception:  # the lease ends and the push is attempted again
        log.warning("notification push could not be recorded", exc_info=True)


async def loop(svc: Services) -> None:
    settings = svc.settings.notifications
    if not settings.push_url:
        return  # notifications are only listed
    async with aiohttp.ClientSession(trust_env=False, auto_decompress=False) as session:
        while True:
            try:
                pushes = await asyncio.wait_for(notifications.claim(svc, settings.push_batch_max), _DB_CALL_TIMEOUT_S)
            except Exception:
                log.warning("notification claim failed; will retry", exc_info=True)
                pushes = []
            if pushes:
                tasks = [asyncio.create_task(_deliver(session, svc, p)) for p in pushes]
                try:
                    await asyncio.gather(*tasks)
                finally:
                    for task in tasks:  # cancelled mid-attempt: the leases end, another pass pushes them
                        task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.gather(*tasks, return_exceptions=True)
                if len(pushes) == settings.push_batch_max:
                    continue  # a full batch: more may be due
            await asyncio.sleep(settings.push_poll_interval_s)
