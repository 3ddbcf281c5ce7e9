"""A serving process settles Python's cyclic collector once its services have started (gateway.serve):
start-up's objects frozen out of every collection, the youngest generation collected less often."""

from __future__ import annotations

import asyncio
import gc

from aiohttp import web

from gateway import serve


def test_a_serving_process_freezes_start_up_and_collects_the_young_generation_less_often() -> None:
    before = gc.get_threshold()
    kept = []
    try:
        kept.append([object() for _ in range(100)])  # start-up's objects, alive when the process settles
        asyncio.run(serve._settle_gc(web.Application()))
        young, older, oldest = gc.get_threshold()
        assert young == serve.GC_YOUNG_THRESHOLD > before[0]
        assert (older, oldest) == before[1:]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
