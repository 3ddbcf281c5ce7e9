"""A payment's Redis calls from concurrent requests: gateway CPU, Redis CPU and Redis round trips per payment.

Drives ``gateway.accel.Accelerator`` as the hot path does, without HTTP or PostgreSQL: each "payment" of
``--concurrency`` concurrent loops makes the create's preflight (API rate bucket and cached-answer lookup),
waits a little as a database call would, stores the create's answer as a copy, makes the pay's preflight,
is charged in three count-only velocity windows (per wallet, device and merchant) by a windows call shared
with the other payments of the moment (a 1 ms batcher, as the group commit gathers a batch), and stores the
pay's answer as a copy. It prints, per payment: this process's CPU, Redis's CPU (``INFO cpu``) and Redis's
reads (``INFO stats`` total_reads_processed: one per round trip received). Compare two commits by running
it from each (``PYTHONPATH``), in one sitting.

Only 127.0.0.1 is accepted; the keys it writes carry the prefix ``bench:rt:`` and are deleted at the end
(nothing else in the database is touched). Bounded: ``--payments`` (default 4,000) after 800 of warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import redis
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.accel import Accelerator  # noqa: E402
from gateway.domain.risk import Window  # noqa: E402
from gateway.settings import RedisSettings  # noqa: E402

PREFIX = "bench:rt:"
WARMUP_PER_LOOP = 50
DB_WAIT_MAX_S = 0.002  # a database call's wait, at most (uniform)
BATCH_WINDOW_S = 0.001  # the windows call gathers what arrived within this


def _server_stats(url: str) -> tuple[float, int]:
    r = redis.Redis.from_url(url)
    try:
        cpu, stats = r.info("cpu"), r.info("stats")
        return float(cpu["used_cpu_user"] + cpu["used_cpu_sys"]), int(stats["total_reads_processed"])
    finally:
        r.close()


def _delete_own_keys(url: str) -> int:
    r = redis.Redis.from_url(url)
    try:
        keys = list(r.scan_iter(match=f"{PREFIX}*", count=1000))
        for start in range(0, len(keys), 500):
            r.delete(*keys[start:start + 500])
        return len(keys)
    finally:
        r.close()


async def run(url: str, payments: int, concurrency: int) -> None:
    accel = Accelerator(RedisSettings(url=url, timeout_s=2.0))
    waiting: list[tuple[asyncio.Future[bool], tuple[list[Window], float, str]]] = []

    async def windows_batcher() -> None:
        while True:
            await asyncio.sleep(BATCH_WINDOW_S)
            if waiting:
                batch = list(waiting)
                waiting.clear()
                found = await accel.windows_take_all([call for _, call in batch])
                for n, (done, _) in enumerate(batch):
                    done.set_result(found is not None and found[n].taken)

    async def payment(loop_no: int) -> None:
        create_key = f"{PREFIX}idem:{uuid.uuid4().hex}"
        await accel.preflight(f"{PREFIX}merchant:{loop_no % 4}", 10**6, create_key)
        await asyncio.sleep(DB_WAIT_MAX_S * random.random())
        accel.copy_later(create_key, b"c" * 600, 60)
        pay_key = f"{PREFIX}idem:{uuid.uuid4().hex}"
        await accel.preflight(f"{PREFIX}holder:{loop_no}", 10**6, pay_key)
        await asyncio.sleep(DB_WAIT_MAX_S / 2 * random.random())
        windows = [Window(f"{PREFIX}w:wallet:{loop_no}", 3600, 10**6, None, 0),
                   Window(f"{PREFIX}w:device:{loop_no}", 3600, 10**6, None, 0),
                   Window(f"{PREFIX}w:merchant:{loop_no % 4}", 3600, 10**6, None, 0)]
        charged: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        waiting.append((charged, (windows, time.time(), uuid.uuid4().hex)))
        if not await charged:
            raise SystemExit("a windows call went unanswered: is Redis up?")
        await asyncio.sleep(DB_WAIT_MAX_S * random.random())
        accel.copy_later(pay_key, b"p" * 600, 60)

    async def loop(loop_no: int, count: int) -> None:
        for _ in range(count):
            await payment(loop_no)

    batcher = asyncio.create_task(windows_batcher())
    try:
        await asyncio.gather(*(loop(n, WARMUP_PER_LOOP) for n in range(concurrency)))
        await accel.copies_sent()
        per_loop = max(1, payments // concurrency)
        cpu0, (rcpu0, reads0), wall0 = time.process_time(), _server_stats(url), time.perf_counter()
        await asyncio.gather(*(loop(n, per_loop) for n in range(concurrency)))
        await accel.copies_sent()
        cpu1, (rcpu1, reads1), wall1 = time.process_time(), _server_stats(url), time.perf_counter()
    finally:
        batcher.cancel()
        await accel.close()
    done = per_loop * concurrency
    print(f"{done:,} payments, {concurrency} concurrent, in {wall1 - wall0:.2f} s")
    print(f"per payment: this process {1e6 * (cpu1 - cpu0) / done:.1f} us CPU, Redis {1e6 * (rcpu1 - rcpu0) / done:.1f}"
          f" us CPU, Redis round trips received {(reads1 - reads0) / done:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    p.add_argument("--payments", type=int, default=4000)
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args()
    if urlsplit(args.redis_url).hostname != "127.0.0.1":
        p.error("only a Redis on 127.0.0.1")
    if not 1 <= args.payments <= 100_000 or not 1 <= args.concurrency <= 256:
        p.error("--payments in [1, 100000], --concurrency in [1, 256]")
    try:
        uvloop.run(run(args.redis_url, args.payments, args.concurrency))
    finally:
        print(f"({_delete_own_keys(args.redis_url):,} keys of this run deleted)")


if __name__ == "__main__":
    main()
