"""Group commit: requests of one process that arrive together are written in one transaction.

Natural batching (as TigerBeetle and PostgreSQL's own WAL writer do it): a request that finds no
batch in flight starts one at once, alone, so at low load nobody waits for anybody; requests that
arrive while a batch is in flight wait and go together in the next one (up to ``items_max``), so
under load one round trip and one commit serve many requests. Each item's outcome is its own (the
batch statement decides per item, see ``store.payments.pay_batch``); a batch that fails as a whole
(the database went away, a timeout) fails each of its requests with that error, as a statement of
its own would have: its outcome is unknown to the client, whose retry with the same idempotency key
finds out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]], items_max: int, in_flight_max: int = 1) -> None:
        """``run`` writes a batch and returns one result per item, in order; at most ``in_flight_max``
        batches run at once (each on its own connection)."""
        self._run = run
        self.items_max = items_max
        self.in_flight_max = in_flight_max
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._in_flight = 0
        self.sizes: list[int] = []  # the size of each batch run (tests, benchmarks); capped
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        answer: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, answer))
        if self._in_flight < self.in_flight_max:
            self._start()
        return await answer

    def _start(self) -> None:
        self._in_flight += 1
        task = asyncio.create_task(self._drain())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        cancelled = False
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:self.items_max], self._waiting[self.items_max:]
                live = [(item, answer) for item, answer in batch if not answer.done()]  # a cancelled request's item is dropped
                if not live:
                    continue
                if len(self.sizes) < 100_000:
                    self.sizes.append(len(live))
                try:
                    results = await self._run([item for item, _ in live])
                except BaseException as exc:  # the batch failed whole: every request of it gets that error
                    for _, answer in live:
                        if not answer.done():
                            answer.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        cancelled = True
                        raise
                    continue
                for (_, answer), result in zip(live, results, strict=True):
                    if not answer.done():
                        answer.set_result(result)
        finally:
            self._in_flight -= 1
            if cancelled:  # the loop is stopping: what still waits is cancelled with its requests
                for _, answer in self._waiting:
                    answer.cancel()
                self._waiting.clear()
            elif self._waiting and self._in_flight < self.in_flight_max:  # items that came as this one stopped
                self._start()
