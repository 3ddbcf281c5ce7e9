"""Stopping background tasks: every loop of the gateway (workers, listeners, caches) ends through here.

Invariant: a stop never waits for ever. A task is cancelled and then awaited, each wait bounded by
``wait_s``; a task that is still running is cancelled again. On Python 3.11, ``asyncio.wait_for``
can swallow a cancellation that arrives as its inner call completes (fixed in 3.12), so a
``while True`` loop around it can outlive one ``cancel()``: one cancellation is not enough.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)

CANCEL_ROUNDS_MAX = 10


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object]], wait_s: float = 1.0) -> None:
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    for _ in range(CANCEL_ROUNDS_MAX):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=wait_s)
    for task in pending:  # never seen; say so rather than hang the shutdown
        log.error("background task did not stop", extra={"task": task.get_name()})
    for task in tasks:  # a loop that had died before its stop is not silent either
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("background task had failed", extra={"task": task.get_name()}, exc_info=task.exception())
