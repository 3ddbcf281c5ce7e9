"""Redis round trips shared by concurrent requests (``gateway/accel.py``): the same answers as one
call per round trip, fewer round trips, and the same failure behaviour."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from redis.asyncio.client import Pipeline

from gateway.accel import Accelerator, Windows
from gateway.domain.risk import Window
from gateway.domain.throttle import Rate
from gateway.settings import RedisSettings

pytestmark = pytest.mark.asyncio


def _count_pipelines(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every round trip of commands sent: a pipeline's, or 1 for a script sent alone (as a plain
    command, not a pipeline)."""
    sizes: list[int] = []
    real = Pipeline.execute
    real_scripts = Accelerator._pipeline

    async def counting(self: Pipeline, raise_on_error: bool = True) -> Any:
        sizes.append(len(self.command_stack))
        return await real(self, raise_on_error)

    async def counting_scripts(self: Accelerator, calls: Any, copies: Any) -> Any:
        if len(calls) == 1 and not copies:
            sizes.append(1)
        return await real_scripts(self, calls, copies)

    monkeypatch.setattr(Pipeline, "execute", counting)
    monkeypatch.setattr(Accelerator, "_pipeline", counting_scripts)
    return sizes


async def test_concurrent_takes_share_round_trips_and_each_bucket_stays_exact(
        accel: Accelerator, monkeypatch: pytest.MonkeyPatch) -> None:
    """60 concurrent requests of one scope with a burst of 25: exactly 25 pass, as 60 calls one by
    one would let through, in far fewer than 60 round trips; a lone call waits for no one."""
    sizes = _count_pipelines(monkeypatch)
    scope = f"batch-{uuid.uuid4()}"
    answers = await asyncio.gather(*(accel.preflight(scope, 25, None) for _ in range(60)))
    assert all(redis_answered for _, _, redis_answered in answers)
    assert sum(1 for wait_s, _, _ in answers if wait_s == 0) == 25
    assert sum(sizes) == 60 and len(sizes) < 10, sizes
    sizes.clear()
    assert (await accel.preflight(f"alone-{uuid.uuid4()}", 25, None))[0] == 0
    assert sizes == [1]


async def test_each_take_gets_its_own_cached_answer(accel: Accelerator) -> None:
    keys = [f"idem:test:{uuid.uuid4()}" for _ in range(20)]
    for n, key in enumerate(keys[:10]):
        await accel.set(key, f"answer-{n}".encode(), 60)
    answers = await asyncio.gather(*(accel.preflight(f"own-{uuid.uuid4()}", 100, key) for key in keys))
    assert [cached for _, cached, _ in answers] == [f"answer-{n}".encode() for n in range(10)] + [None] * 10


async def test_a_script_redis_lost_is_loaded_again(own_redis_accel: Accelerator) -> None:
    assert (await own_redis_accel.preflight(f"s-{uuid.uuid4()}", 5, None))[2]
    await own_redis_accel.client.script_flush()
    answers = await asyncio.gather(*(own_redis_accel.preflight(f"s-{uuid.uuid4()}", 5, None) for _ in range(5)))
    assert all(answered and wait_s == 0 for wait_s, _, answered in answers)


async def test_a_script_redis_lost_is_loaded_again_for_a_lone_call(
        own_redis_accel: Accelerator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A script sent alone (a plain command, not a pipeline) that Redis lost is loaded and sent again."""
    sizes = _count_pipelines(monkeypatch)
    await own_redis_accel.client.script_flush()
    wait_s, _, answered = await own_redis_accel.preflight(f"s-{uuid.uuid4()}", 5, None)
    assert answered and wait_s == 0
    assert sizes == [1, 1]  # refused for its script, then sent again once loaded


async def test_copies_go_together_and_all_arrive(accel: Accelerator, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = _count_pipelines(monkeypatch)
    keys = [f"idem:copy:{uuid.uuid4()}" for _ in range(50)]
    for n, key in enumerate(keys):
        accel.copy_later(key, str(n).encode(), 60)
    await accel.copies_sent()
    assert await accel.client.mget(keys) == [str(n).encode() for n in range(50)]
    assert sum(sizes) == 50 and len(sizes) <= 2, sizes
    assert 0 < await accel.client.ttl(keys[0]) <= 60


async def test_copies_and_scripts_share_one_round_trip_and_a_copy_is_seen_by_the_script_after_it(
        accel: Accelerator, monkeypatch: pytest.MonkeyPatch) -> None:
    """One stream of round trips: the copies waiting go in the scripts' pipeline, before them, so a
    replay's preflight sent with the copy of its answer finds it."""
    sizes = _count_pipelines(monkeypatch)
    key = f"idem:copy:{uuid.uuid4()}"
    blocker = asyncio.create_task(accel.preflight(f"s-{uuid.uuid4()}", 5, None))
    for _ in range(2):  # the blocker's take, then its round trip, start: what follows waits for it
        await asyncio.sleep(0)
    accel.copy_later(key, b"the answer", 60)
    replay = asyncio.create_task(accel.preflight(f"s-{uuid.uuid4()}", 5, key))
    others = [asyncio.create_task(accel.preflight(f"s-{uuid.uuid4()}", 5, None)) for _ in range(3)]
    await blocker
    wait_s, cached, answered = await replay
    await asyncio.gather(*others)
    await accel.copies_sent()
    assert answered and wait_s == 0 and cached == b"the answer"
    assert sizes == [1, 5], sizes  # the blocker alone; then the copy and the four scripts together


async def test_copies_alone_whose_pipeline_fails_open_the_breaker_and_raise_nothing(
        accel: Accelerator, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: Pipeline, raise_on_error: bool = True) -> Any:
        raise ConnectionError("gone")

    monkeypatch.setattr(Pipeline, "execute", broken)
    accel.copy_later(f"idem:copy:{uuid.uuid4()}", b"v", 60)
    accel.copy_later(f"idem:copy:{uuid.uuid4()}", b"w", 60)
    await accel.copies_sent()
    assert not accel.available and accel.last_error == "ConnectionError"
    accel.copy_later(f"idem:copy:{uuid.uuid4()}", b"x", 60)  # breaker open: skipped, nothing waits
    await accel.copies_sent()


async def test_a_redis_that_is_gone_costs_no_request_anything() -> None:
    """Nothing listens on the port: every waiting take gets the local bucket, the breaker opens once,
    copies are skipped, and nothing raises."""
    gone = Accelerator(RedisSettings(url="redis://127.0.0.1:9/0", timeout_s=0.2, backoff_s=30))
    try:
        answers = await asyncio.gather(*(gone.preflight("gone", 3, "idem:x") for _ in range(10)))
        assert all(not answered and cached is None for _, cached, answered in answers)
        assert not gone.available and gone.last_error is not None
        after = await gone.preflight("gone", 3, None)  # breaker open: no round trip, local bucket
        assert after[2] is False
        assert sum(1 for wait_s, _, _ in [*answers, after] if wait_s == 0) == 3
        gone.copy_later("idem:y", b"v", 60)
        await gone.copies_sent()
    finally:
        await gone.close()


async def test_rate_given_as_several_buckets_stays_all_or_nothing(accel: Accelerator) -> None:
    """``take`` over two buckets through shared pipelines: a refused take charges neither bucket."""
    a, b = f"tb:a:{uuid.uuid4()}", f"tb:b:{uuid.uuid4()}"
    small, large = Rate(per_s=0.001, burst=2), Rate(per_s=0.001, burst=100)
    waits = await asyncio.gather(*(accel.take([(a, small), (b, large)]) for _ in range(10)))
    assert sum(1 for w in waits if w == 0) == 2
    level = float((await accel.client.hget(b, "tokens")) or 0)
    assert 97.9 < level < 98.1  # two charged, eight refused charged nothing


def _w(key: str, window_s: int = 60, count_max: int | None = None, amount_max: int | None = None,
       amount: int = 100) -> Window:
    return Window(key, window_s, count_max, amount_max, amount)


async def test_concurrent_window_charges_share_round_trips_and_stop_exactly_at_the_limit(
        accel: Accelerator, monkeypatch: pytest.MonkeyPatch) -> None:
    """40 payments race for a window of 7: exactly 7 are charged, in far fewer than 40 round trips."""
    await accel.windows_take([_w(f"risk:w:test:{uuid.uuid4().hex}")], 1_000.0, "warm")  # the script loaded
    sizes = _count_pipelines(monkeypatch)
    window = _w(f"risk:w:test:{uuid.uuid4().hex}", count_max=7)
    found = await asyncio.gather(*(accel.windows_take([window], 1_000.0, uuid.uuid4().hex) for _ in range(40)))
    assert all(f is not None for f in found)
    assert sum(1 for f in found if f is not None and f.taken) == 7
    assert sum(sizes) == 40 and len(sizes) < 10, sizes
    # A window that limits only the count keeps no running amount.
    assert await accel.client.zcard(window.key) == 7 and not await accel.client.exists(window.key + ":sum")


async def test_windows_are_charged_all_or_none_and_a_payment_counts_once(accel: Accelerator) -> None:
    base = f"risk:w:test:{uuid.uuid4().hex}"
    roomy, amounts = _w(base + ":a", count_max=10), _w(base + ":b", amount_max=250, amount=100)
    first, second, third = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    assert await accel.windows_take([roomy, amounts], 1_000.0, first) == Windows(True, ((0, 0), (0, 0)))
    again = await accel.windows_take([roomy, amounts], 1_001.0, first)  # charged before: counted once
    assert again == Windows(True, ((0, 0), (0, 0)))
    # The count-only window answers no amount (it keeps none).
    assert await accel.windows_take([roomy, amounts], 1_002.0, second) == Windows(True, ((1, 0), (1, 100)))
    over = await accel.windows_take([roomy, amounts], 1_003.0, third)  # 300 > 250: charged in neither
    assert over == Windows(False, ((2, 0), (2, 200)))
    assert await accel.client.zcard(roomy.key) == 2 and await accel.client.zcard(amounts.key) == 2
    await accel.windows_give_back([roomy, amounts], second)
    await accel.windows_give_back([roomy, amounts], second)  # given back twice: once
    assert await accel.windows_take([roomy, amounts], 1_004.0, third) == Windows(True, ((1, 0), (1, 100)))
    other_currency = _w(amounts.key, amount_max=250, amount=0)  # a payment in another currency adds nothing
    assert (await accel.windows_take([other_currency], 1_005.0, uuid.uuid4().hex)) == Windows(True, ((2, 200),))


async def test_a_window_forgets_what_left_it_and_keeps_its_total(accel: Accelerator) -> None:
    window = _w(f"risk:w:test:{uuid.uuid4().hex}", window_s=10, amount_max=1_000, amount=400)
    assert (await accel.windows_take([window], 100.0, uuid.uuid4().hex)) == Windows(True, ((0, 0),))
    assert (await accel.windows_take([window], 105.0, uuid.uuid4().hex)) == Windows(True, ((1, 400),))
    assert (await accel.windows_take([window], 109.0, uuid.uuid4().hex)) == Windows(False, ((2, 800),))
    assert (await accel.windows_take([window], 110.0, uuid.uuid4().hex)) == Windows(True, ((1, 400),))  # 100 left
    await accel.client.delete(window.key + ":sum")  # a total lost (evicted): counted again from the members
    assert (await accel.windows_take([window], 111.0, uuid.uuid4().hex)) == Windows(False, ((2, 800),))
    assert 0 < await accel.client.ttl(window.key) <= 11 and 0 < await accel.client.ttl(window.key + ":sum") <= 11


async def test_a_count_only_window_forgets_what_left_it(accel: Accelerator) -> None:
    window = _w(f"risk:w:test:{uuid.uuid4().hex}", window_s=10, count_max=2, amount=400)
    assert (await accel.windows_take([window], 100.0, uuid.uuid4().hex)) == Windows(True, ((0, 0),))
    assert (await accel.windows_take([window], 105.0, uuid.uuid4().hex)) == Windows(True, ((1, 0),))
    assert (await accel.windows_take([window], 109.0, uuid.uuid4().hex)) == Windows(False, ((2, 0),))
    assert (await accel.windows_take([window], 110.0, uuid.uuid4().hex)) == Windows(True, ((1, 0),))  # 100 left
    assert await accel.client.zcard(window.key) == 2 and not await accel.client.exists(window.key + ":sum")
    assert 0 < await accel.client.ttl(window.key) <= 11


async def test_a_window_script_redis_lost_is_loaded_again(own_redis_accel: Accelerator) -> None:
    window = _w(f"risk:w:test:{uuid.uuid4().hex}", count_max=5)
    await own_redis_accel.client.script_flush()
    found = await asyncio.gather(*(own_redis_accel.windows_take([window], 1.0, uuid.uuid4().hex) for _ in range(3)),
                                 own_redis_accel.preflight(f"s-{uuid.uuid4()}", 5, None))
    assert [f.taken for f in found[:3] if isinstance(f, Windows)] == [True] * 3 and found[3][2]


async def test_windows_without_redis_give_no_answer() -> None:
    gone = Accelerator(RedisSettings(url="redis://127.0.0.1:9/0", timeout_s=0.2, backoff_s=30))
    try:
        assert await gone.windows_take([_w("risk:w:gone")], 1.0, "p") is None
        assert not gone.available
        await gone.windows_give_back([_w("risk:w:gone")], "p")  # nothing raises
    finally:
        await gone.close()
