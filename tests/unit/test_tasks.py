"""``gateway.tasks.cancel_and_wait``: a stop that one swallowed cancellation cannot hang."""

from __future__ import annotations

import asyncio

import pytest

from gateway.tasks import cancel_and_wait

pytestmark = pytest.mark.asyncio


async def test_a_loop_that_swallows_one_cancellation_is_still_stopped() -> None:
    """What Python 3.11's wait_for can do to a loop around it: the first cancel is lost."""
    swallowed = 0

    async def loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task], wait_s=0.05), 5)
    assert task.cancelled() and swallowed == 1


async def test_a_task_that_never_stops_is_left_with_an_error_not_a_hang(caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()

    async def stubborn() -> None:
        while not stop.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task], wait_s=0.01), 5)
    assert not task.done() and "did not stop" in caplog.text
    stop.set()
    task.cancel()
    await asyncio.wait({task}, timeout=1)
