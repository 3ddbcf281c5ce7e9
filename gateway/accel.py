"""Redis as an accelerator the gateway survives without.

Invariants:
- nothing here is the source of truth: every value is a copy of something PostgreSQL holds, or
  a token bucket whose loss only refills it (a limit loosened for one burst);
- a token bucket is read and charged by one script, atomically, in the same round trip as the
  cached idempotent answer; while Redis is down each process keeps its own buckets (so N
  processes allow N times the rate, never unlimited);
- every call is bounded by ``timeout_s``; after a failure Redis is not tried again for
  ``backoff_s`` (a circuit breaker), so a dead Redis costs one timeout, not one per request;
- a failure never propagates: callers get "no answer" and take the PostgreSQL path;
- a velocity window (``windows_take``) is checked and charged with the payment's other windows by one
  script, all or none, so concurrent payments never pass a limit together, and a payment already in a
  window is never counted in it twice;
- round trips are shared (natural batching): while one is in flight, the scripts and copies that
  arrive meanwhile wait and then go together in one pipeline, so a lone request waits for nothing
  and a busy process pays one round trip for many requests. A pipeline that fails fails each of its
  calls as a call alone would (no answer, the breaker opens).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from urllib.parse import urlsplit

import msgspec
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import NoScriptError, RedisError, ResponseError

from gateway import metrics
from gateway.domain import throttle
from gateway.domain.risk import Window
from gateway.domain.throttle import Level, Rate
from gateway.settings import RedisSettings

log = logging.getLogger(__name__)
_JSON = msgspec.json.Encoder()
LOCAL_BUCKETS_MAX = 10_000  # buckets one process keeps while Redis is down; the idlest go first
PIPELINE_MAX = 256  # calls sent together at most
_AMOUNT_UNLIMITED = 2**53  # an amount limit no window's total reaches (exact as a Lua number)
COPIES_PENDING_MAX = 1000  # copies waiting for their round trip; beyond that they are skipped (PostgreSQL has them)
_FAILURES = (RedisError, OSError, TimeoutError)
FORGET_BATCH = 500  # keys a SCAN step asks for and an UNLINK removes at once (``forget``)
_Call = tuple[AsyncScript, list[str], Sequence[float | int | str | bytes]]  # a script, its keys and arguments

# gateway.domain.throttle.take, run by Redis on its own clock so that every gateway process shares
# one bucket, atomically, in one round trip. KEYS: the buckets, then (optional) a cached idempotent
# answer to return. ARGV: the number of buckets, then per_s and burst of each. Returns the seconds
# to wait (text: 0 when taken) and the cached answer. Times and tokens are kept as text with
# microsecond precision; a bucket expires once it would be full again.
_TAKE_LUA = """
local n = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now_s = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local wait_s = 0
local tokens = {}
for i = 1, n do
  local per_s, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'at_s')
  local level = burst
  if state[1] and state[2] then
    level = math.min(burst, tonumber(state[1]) + math.max(0, now_s - tonumber(state[2])) * per_s)
  end
  tokens[i] = level
  if level < 1 - 1e-6 then
    wait_s = math.max(wait_s, (1 - level) / per_s)
  end
end
if wait_s == 0 then
  for i = 1, n do
    local per_s, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
    redis.call('HSET', KEYS[i], 'tokens', string.format('%.6f', math.max(0, tokens[i] - 1)), 'at_s', string.format('%.6f', now_s))
    redis.call('PEXPIRE', KEYS[i], math.ceil(burst / per_s * 1000) + 1000)
  end
end
local cached = false
if #KEYS > n then
  cached = redis.call('GET', KEYS[n + 1])
end
return {string.format('%.6f', wait_s), cached}
"""


# Sliding windows of payments (services.risk's velocity per wallet, device and merchant), checked and charged:
# each payment in every one of its windows or in none, atomically, the payments of one call one after the
# other (a batch's payments of one window are counted as concurrent calls would count them). A window is a
# sorted set of members "payment id:amount" scored by the caller's clock (seconds), with its running total
# of amounts kept beside it (KEYS[i]..':sum') when the window limits the amount, so a check costs O(log n)
# plus the members that left the window, not O(n); a window that limits only the count keeps no total (it
# answers 0 for the amount before). KEYS: every payment's windows, in order. ARGV[1]: a JSON array with,
# per payment, [now_s, its id, [per window: [window_s, count_max (-1: none), amount_max (-1: none), the
# amount this payment adds]]]. Returns one string of integers: per payment, taken (1/0), then per window
# its count and amount before it. A payment already in a window (charged before: by its one-statement
# attempt, a retried transaction, a second request paying it) is counted there once: it is left out of
# "before" and keeps its entry. A window expires once its newest member would have left it.
_WINDOWS_LUA = """
local function amount_of(member) return tonumber(string.match(member, ':(%d+)$')) end
local answer, k = {}, 0
for _, call in ipairs(cjson.decode(ARGV[1])) do
  local now_s, payment, windows = call[1], call[2], call[3]
  local fits, seen, found = true, {}, {}
  for i, w in ipairs(windows) do
    local key = KEYS[k + i]
    local window_s, count_max, amount_max, amount = w[1], w[2], w[3], w[4]
    local member = payment .. ':' .. string.format('%d', amount)
    local cutoff, ttl_s = now_s - window_s, math.ceil(window_s) + 1
    if amount_max < 0 then
      -- Count only: added at once (given back below if another window refuses), no total kept.
      redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
      local added = redis.call('ZADD', key, 'NX', now_s, member)
      local n_before = redis.call('ZCARD', key) - 1
      seen[i] = {key, false, member, ttl_s, added == 0}
      found[2 * i], found[2 * i + 1] = n_before, 0
      if count_max >= 0 and n_before + 1 > count_max then fits = false end
    else
      local sum_key, n, total = key .. ':sum', 0, 0
      local gone = redis.call('ZRANGEBYSCORE', key, '-inf', cutoff)
      n = redis.call('ZCARD', key)
      if n > 0 then
        local kept = redis.call('GET', sum_key)
        if kept and #gone == 0 then
          total = tonumber(kept)
        else
          if #gone > 0 then
            redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
            n = n - #gone
          end
          if kept then
            total = tonumber(kept)
            for _, m in ipairs(gone) do total = total - amount_of(m) end
          else
            for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do total = total + amount_of(m) end
          end
          redis.call('SET', sum_key, string.format('%d', total), 'EX', ttl_s)
        end
      end
      local present = n > 0 and redis.call('ZSCORE', key, member) ~= false
      local n_before, total_before = n, total
      if present then n_before, total_before = n - 1, total - amount end
      seen[i] = {key, sum_key, member, ttl_s, present, total + amount}
      found[2 * i], found[2 * i + 1] = n_before, total_before
      if (count_max >= 0 and n_before + 1 > count_max) or total_before + amount > amount_max then fits = false end
    end
  end
  k = k + #windows
  found[1] = fits and 1 or 0
  for _, w in ipairs(seen) do
    if fits then
      if not w[5] and w[2] then
        redis.call('ZADD', w[1], now_s, w[3])
        redis.call('SET', w[2], string.format('%d', w[6]), 'EX', w[4])
      end
      redis.call('EXPIRE', w[1], w[4])
    elseif not w[5] and not w[2] then
      redis.call('ZREM', w[1], w[3])
    end
  end
  for _, v in ipairs(found) do answer[#answer + 1] = string.format('%d', v) end
end
return table.concat(answer, ' ')
"""

# The payment out of its windows again (it was not authorised after all). KEYS: the windows. ARGV: the
# payment's id, then the amount it added to each window.
_WINDOWS_BACK_LUA = """
for i, key in ipairs(KEYS) do
  if redis.call('ZREM', key, ARGV[1] .. ':' .. ARGV[i + 1]) == 1 and redis.call('EXISTS', key .. ':sum') == 1 then
    redis.call('DECRBY', key .. ':sum', ARGV[i + 1])
  end
end
return 1
"""


def _limits(w: Window) -> tuple[int, int]:
    """The count and amount limits the windows script is given (-1: none). A window that does not refuse
    (``Window.refuses``) is given none but an amount limit no total reaches, so that a window of amounts
    keeps its running total, as its key always has."""
    if not w.refuses:
        return -1, -1 if w.amount_max_minor is None else _AMOUNT_UNLIMITED
    return (-1 if w.count_max is None else w.count_max), (-1 if w.amount_max_minor is None else w.amount_max_minor)


@dataclass(frozen=True, slots=True)
class Windows:
    """What ``windows_take`` found: whether the payment was charged, and each window's count and amount
    before it (in the order asked)."""

    taken: bool
    before: tuple[tuple[int, int], ...]


class LocalBuckets:
    """Token buckets in this process: the fallback while Redis is down (each process limits alone)."""

    def __init__(self, entries_max: int) -> None:
        self.entries_max = entries_max
        self._levels: OrderedDict[str, Level] = OrderedDict()

    def take(self, buckets: Sequence[tuple[str, Rate]], now_s: float) -> float:
        decision = throttle.take([(rate, self._levels.get(name)) for name, rate in buckets], now_s)
        for (name, _), level in zip(buckets, decision.levels, strict=True):
            self._levels[name] = level
            self._levels.move_to_end(name)
        while len(self._levels) > self.entries_max:
            self._levels.popitem(last=False)  # the least recently used: the most likely to be full again
        return decision.wait_s


def client(settings: RedisSettings) -> aioredis.Redis:
    """The Redis client: of ``url``, or with ``sentinels`` of the master they name ``sentinel_service``
    (asked again after a connection fails, so a failover is followed; ``url`` then gives the database
    number and password only)."""
    options: dict[str, Any] = {"socket_timeout": settings.timeout_s, "socket_connect_timeout": settings.timeout_s,
                               "retry_on_timeout": False, "health_check_interval": 0, "max_connections": 64}
    if not settings.sentinels:
        return aioredis.Redis.from_url(settings.url, **options)
    parts = urlsplit(settings.url)
    database = int(parts.path.strip("/") or 0) if parts.scheme != "unix" else 0
    sentinel = Sentinel(settings.sentinel_addresses(), socket_timeout=settings.timeout_s,  # type: ignore[no-untyped-call]
                        socket_connect_timeout=settings.timeout_s)
    master: aioredis.Redis = sentinel.master_for(settings.sentinel_service, db=database, password=parts.password,
                                                 username=parts.username, **options)
    return master


class Accelerator:
    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.client = client(settings)
        self._down_until_s = 0.0
        self.last_error: str | None = None
        self._take_script = self.client.register_script(_TAKE_LUA)
        self._windows_script = self.client.register_script(_WINDOWS_LUA)
        self._windows_back_script = self.client.register_script(_WINDOWS_BACK_LUA)
        self._local = LocalBuckets(LOCAL_BUCKETS_MAX)
        self._takes: list[tuple[AsyncScript, list[str], Sequence[float | int | str | bytes], asyncio.Future[Any]]] = []
        self._copies: dict[str, tuple[bytes, int]] = {}
        self._sending: asyncio.Task[None] | None = None  # the round trips of the scripts and copies waiting

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until_s

    def _failed(self, exc: BaseException) -> None:
        if self.available:
            log.warning("redis unavailable; continuing without it", extra={"error": type(exc).__name__})
        self._down_until_s = time.monotonic() + self.settings.backoff_s
        self.last_error = type(exc).__name__
        metrics.REDIS_FAILURES.inc()
        metrics.REDIS_BREAKER_OPEN.set(1)

    def _answered(self) -> None:
        """Redis answered: the breaker is closed (the gauge is written only when that changes it)."""
        if self.last_error is not None:
            self.last_error = None
            metrics.REDIS_BREAKER_OPEN.set(0)

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if not self.available:
            return None
        try:
            result = await getattr(self.client, name)(*args, **kwargs)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return None
        self._answered()
        return result

    async def ping(self) -> bool:
        """Checked by /readyz: tries even while the breaker is open, so recovery is noticed."""
        try:
            ok = bool(await self.client.ping())
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return False
        self._down_until_s = 0.0
        self._answered()
        return ok

    async def get(self, key: str) -> bytes | None:
        value = await self._call("get", key)
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        await self._call("set", key, value, ex=ttl_s)

    def copy_later(self, key: str, value: bytes, ttl_s: int) -> None:
        """Store a copy without waiting for it: copies go in the next round trip of the scripts (``_send``),
        before them; skipped while Redis is down or when too many wait."""
        if not self.available or len(self._copies) >= COPIES_PENDING_MAX:
            return
        self._copies[key] = (value, ttl_s)
        self._start_sending()

    async def copies_sent(self) -> None:
        """Wait until the copies asked for so far have had their round trip (tests, shutdown)."""
        while self._sending is not None:
            await asyncio.shield(self._sending)

    async def delete(self, key: str) -> None:
        await self._call("delete", key)

    async def forget(self, pattern: str) -> int | None:
        """Remove every key matching ``pattern`` (SCAN, then UNLINK in batches: Redis is never blocked for
        the whole keyspace): how many went; None when Redis gave no answer (keys left expire by their TTL)."""
        if not self.available:
            return None
        gone = 0
        try:
            batch: list[bytes] = []
            async for key in self.client.scan_iter(match=pattern, count=FORGET_BATCH):
                batch.append(key)
                if len(batch) >= FORGET_BATCH:
                    gone += int(await self.client.unlink(*batch))
                    batch.clear()
            if batch:
                gone += int(await self.client.unlink(*batch))
        except _FAILURES as exc:
            self._failed(exc)
            return None
        self._answered()
        return gone

    async def windows_take(self, windows: Sequence[Window], now_s: float, payment: str) -> Windows | None:
        """Charge the payment in every window if it fits in all, else in none (see ``_WINDOWS_LUA``); None
        when Redis gave no answer (nothing is known of the charge: the caller counts in PostgreSQL)."""
        found = await self.windows_take_all([(windows, now_s, payment)])
        return None if found is None else found[0]

    async def windows_take_all(self, calls: Sequence[tuple[Sequence[Window], float, str]]) -> list[Windows] | None:
        """``windows_take`` for several payments in one script call, one after the other, in the round trip
        shared with the calls of the moment; None when Redis gave no answer for them."""
        if not self.available:
            return None
        keys = [w.key for windows, _, _ in calls for w in windows]
        # One JSON argument and one string back: packing ~50 arguments and parsing ~20 integer replies in
        # redis-py cost more of the gateway's CPU than the script costs Redis.
        arg = _JSON.encode([[now_s, payment, [[w.window_s, *_limits(w), w.amount_minor] for w in windows]]
                            for windows, now_s, payment in calls])
        try:
            text = await self._script(self._windows_script, keys, [arg])
        except _FAILURES as exc:
            self._failed(exc)
            return None
        self._answered()
        flat = [int(v) for v in text.split()]
        answers, at = [], 0
        for windows, _, _ in calls:
            answers.append(Windows(bool(flat[at]), tuple((flat[at + 2 * i + 1], flat[at + 2 * i + 2])
                                                         for i in range(len(windows)))))
            at += 1 + 2 * len(windows)
        return answers

    async def windows_give_back(self, windows: Sequence[Window], payment: str) -> None:
        """Take the payment out of its windows again (it was not authorised after all); best effort."""
        if not self.available:
            return
        try:
            await self._script(self._windows_back_script, [w.key for w in windows],
                               [payment, *(w.amount_minor for w in windows)])
        except _FAILURES as exc:
            self._failed(exc)
        else:
            self._answered()

    async def preflight(self, scope: str, limit_per_s: int, key: str | None) -> tuple[float, bytes | None, bool]:
        """The API rate check and (with ``key``) the cached idempotent answer, in one round trip.

        A token bucket per scope holding ``limit_per_s`` tokens, refilled at ``limit_per_s``.
        Returns (seconds to wait, 0 when allowed; the cached answer; whether Redis answered).
        """
        rate = Rate(per_s=float(limit_per_s), burst=float(limit_per_s))
        return await self._take([(f"tb:api:{scope}", rate)], key)

    async def take(self, buckets: Sequence[tuple[str, Rate]]) -> float:
        """Take a token from every named bucket or from none; returns the seconds to wait (0: taken)."""
        wait_s, _, _ = await self._take(buckets, None)
        return wait_s

    async def _take(self, buckets: Sequence[tuple[str, Rate]], key: str | None) -> tuple[float, bytes | None, bool]:
        if self.available:
            args: list[float | int] = [len(buckets)]
            for _, rate in buckets:
                args += [rate.per_s, rate.burst]
            keys = [name for name, _ in buckets] + ([key] if key is not None else [])
            try:
                wait, cached = await self._script(self._take_script, keys, args)
            except _FAILURES as exc:
                self._failed(exc)
            else:
                self._answered()
                return float(wait), cached if isinstance(cached, bytes) else None, True
        return self._local.take(buckets, time.monotonic()), None, False

    async def _script(self, script: AsyncScript, keys: list[str], args: Sequence[float | int | str | bytes]) -> Any:
        """Run a script in the next shared pipeline (raises what Redis raised)."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._takes.append((script, keys, args, answer))
        self._start_sending()
        return await answer

    def _start_sending(self) -> None:
        if self._sending is None:
            self._sending = asyncio.create_task(self._send())

    async def _send(self) -> None:
        """Send the waiting copies and scripts in one pipeline, those that came meanwhile in the next, until
        none waits. A pipeline that fails fails every script waiting too, and its copies are dropped (the
        breaker then opens once: a dead Redis costs the requests of the moment one timeout, not one per
        pipeline). A pipeline carries at most ``PIPELINE_MAX`` commands, copies and scripts together: the
        scripts first in line, the copies filling what is left (those left over go in the next one); an
        error of any kind answers every script waiting (one outside ``_FAILURES`` as a ``RedisError``, so
        its caller falls back as when Redis is down), never leaving one waiting forever."""
        try:
            while self._takes or (self._copies and self.available):
                batch, self._takes = self._takes[:PIPELINE_MAX], self._takes[PIPELINE_MAX:]
                copies: dict[str, tuple[bytes, int]] = {}
                if not self.available:
                    self._copies.clear()
                elif len(self._copies) <= PIPELINE_MAX - len(batch):
                    copies, self._copies = self._copies, {}
                else:  # the oldest first; a later copy of a key waiting replaced it in place (the latest wins)
                    for key in list(itertools.islice(self._copies, PIPELINE_MAX - len(batch))):
                        copies[key] = self._copies.pop(key)
                try:
                    results = await self._evalsha_all([(script, keys, args) for script, keys, args, _ in batch], copies)
                except BaseException as exc:  # noqa: BLE001 - every caller is answered, whatever was raised
                    cancelled = isinstance(exc, asyncio.CancelledError)
                    reraise = cancelled or not isinstance(exc, Exception)  # the task's own end: passed on
                    failure = exc if isinstance(exc, _FAILURES) else TimeoutError() if cancelled else RedisError(
                        f"unexpected {type(exc).__name__}: {exc}")
                    if not isinstance(exc, _FAILURES) and not cancelled:
                        log.error("redis round trip failed unexpectedly", exc_info=exc)
                    if batch:
                        batch, self._takes = batch + self._takes, []
                        for _, _, _, answer in batch:
                            if not answer.done():
                                answer.set_exception(failure)
                    elif not reraise:  # copies alone: no caller to tell
                        self._failed(failure)
                    if reraise:
                        raise
                    continue
                if copies:
                    self._answered()
                for (_, _, _, answer), result in zip(batch, results, strict=True):
                    if answer.done():
                        continue
                    if isinstance(result, Exception):
                        answer.set_exception(result)
                    else:
                        answer.set_result(result)
        finally:
            self._copies.clear()
            self._sending = None

    async def _evalsha_all(self, calls: list[_Call], copies: dict[str, tuple[bytes, int]] | None = None) -> list[Any]:
        """One pipeline of copies, then scripts; the scripts' answers. The calls Redis refused for lacking
        their script (a restart, SCRIPT FLUSH) did not run: their scripts are loaded and only they are sent
        again."""
        results = await self._pipeline(calls, copies or {})
        missing = [n for n, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            for script in {id(calls[n][0]): calls[n][0] for n in missing}.values():
                script.sha = await self.client.script_load(script.script)
            again = await self._pipeline([calls[n] for n in missing], {})
            for n, result in zip(missing, again, strict=True):
                results[n] = result
        return results

    async def _pipeline(self, calls: list[_Call], copies: dict[str, tuple[bytes, int]]) -> list[Any]:
        if len(calls) == 1 and not copies:  # alone: a plain command (redis-py's pipeline costs ~20 us more CPU)
            script, keys, args = calls[0]
            try:
                return [await self.client.evalsha(script.sha, len(keys), *keys, *args)]
            except ResponseError as exc:  # as the pipeline answers it (raise_on_error=False): NoScript included
                return [exc]
        pipe = self.client.pipeline(transaction=False)
        for key, (value, ttl_s) in copies.items():
            pipe.set(key, value, ex=ttl_s)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results[len(copies):]

    async def close(self) -> None:
        if self._sending is not None:  # the copies asked for get their round trip, within one timeout
            try:
                await asyncio.wait_for(self.copies_sent(), self.settings.timeout_s)
            except (*_FAILURES, asyncio.CancelledError):
                pass
        await self.client.aclose()
