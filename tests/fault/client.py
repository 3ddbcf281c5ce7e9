"""The bank client: concurrent workers that create payments, pay them from wallets and refund
some, each call under its own Idempotency-Key, retried with that same key until a definite answer.

Definite: 2xx, or a 4xx that is final (a decline, a refused transition). Retried with jittered
backoff: 409 ``idempotency_key_in_use``, 429, every 5xx, connection errors and timeouts.

An attempt that has not answered after ``soft_timeout_s`` is NOT abandoned: the next attempt is
sent beside it (as a proxy that retries would), and the first one may still answer until
``hard_timeout_s``. So two gateways can hold requests with the same key at once, and every
answer each of them gives is recorded: all definite answers for one key must be the same bytes.

Invariants: the operation is journaled (fsynced) before its first attempt; every definite answer
is journaled with the exact bytes received; every wait is bounded (attempt, retry loop, worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.e2e.harness import Holder, Shop
from tests.fault.journal import Answer, Journal, Op

RETRY_STATUSES = frozenset({409, 429})  # 409 only with code idempotency_key_in_use (see _definite)
ATTEMPTS_IN_FLIGHT_MAX = 3
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 1.0


@dataclass(frozen=True, slots=True)
class Observation:
    """One attempt as the client saw it (times from the start of the load, in seconds)."""

    key: str
    kind: str
    sent_s: float
    received_s: float
    status: int | None     # None: no HTTP answer (connection error or timeout)
    code: str | None       # the error code of an error body
    error: str | None


@dataclass
class Stats:
    statuses: Counter[str] = field(default_factory=Counter)
    observations: list[Observation] = field(default_factory=list)


def _error_code(body: bytes) -> str | None:
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        code = json.loads(body)["error"]["code"]
        return str(code)
    return None


def _definite(status: int, code: str | None) -> bool:
    if 200 <= status < 300:
        return True
    if status == 409:
        return code != "idempotency_key_in_use"
    return 400 <= status < 500 and status not in RETRY_STATUSES


class BankClient:
    def __init__(self, base_urls: list[str], session: aiohttp.ClientSession, journal: Journal, shops: list[Shop],
                 holders: list[Holder], *, seed: int, t0: float, soft_timeout_s: float = 2.5,
                 hard_timeout_s: float = 20.0, refund_probability: float = 0.25) -> None:
        self.base_urls = base_urls
        self._turns = itertools.count()  # attempts go round the gateways: a retry reaches another one
        self.session = session
        self.journal = journal
        self.shops = shops
        self.holders = holders
        self.seed = seed
        self.t0 = t0
        self.soft_timeout_s = soft_timeout_s
        self.hard_timeout_s = hard_timeout_s
        self.refund_probability = refund_probability
        self.stats = Stats()
        self.unresolved: dict[str, Op] = {}
        self._late: set[asyncio.Task[Answer | None]] = set()
        self._stopping = False

    def now_s(self) -> float:
        return time.monotonic() - self.t0

    def _token(self, op: Op) -> str:
        return self.shops[op.shop].secret if op.actor == "shop" else self.holders[op.holder].token

    def _base_url(self) -> str:
        return self.base_urls[next(self._turns) % len(self.base_urls)]

    def stop(self) -> None:
        """Start no new payment from now on (the calls under way still run to a definite answer)."""
        self._stopping = True

    async def _attempt(self, op: Op) -> Answer | None:
        sent_s = self.now_s()
        headers = {"Authorization": f"Bearer {self._token(op)}", "Idempotency-Key": op.key}
        status: int | None = None
        code: str | None = None
        error: str | None = None
        answer: Answer | None = None
        try:
            async with self.session.request(op.method, self._base_url() + op.path, json=op.body, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=self.hard_timeout_s)) as resp:
                body = await resp.read()
            status = resp.status
            code = _error_code(body) if status >= 400 else None
            if _definite(status, code):
                answer = Answer(status, body, self.now_s())
                op.answers.append(answer)
                await self.journal.answered(op.key, answer)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = type(exc).__name__
        received_s = self.now_s()
        self.stats.statuses[str(status) if status is not None else (error or "error")] += 1
        self.stats.observations.append(Observation(op.key, op.kind, sent_s, received_s, status, code, error))
        return answer

    async def resolve(self, op: Op, give_up_s: float) -> Answer | None:
        """Retry ``op`` under its key until a definite answer or ``give_up_s`` (load time)."""
        attempts: set[asyncio.Task[Answer | None]] = set()
        backoff_s = BACKOFF_MIN_S
        rng = random.Random(f"{self.seed}:{op.key}")
        answer: Answer | None = None
        try:
            while answer is None and self.now_s() < give_up_s:
                if len(attempts) < ATTEMPTS_IN_FLIGHT_MAX:
                    attempts.add(asyncio.create_task(self._attempt(op)))
                done, _ = await asyncio.wait(attempts, timeout=self.soft_timeout_s,
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    attempts.discard(task)
                    answer = answer or task.result()
                if answer is None and done:
                    await asyncio.sleep(backoff_s * rng.uniform(0.5, 1.5))
                    backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
        finally:
            # Attempts still in flight may answer later: their answers are recorded too.
            self._late |= attempts
        if answer is None:
            self.unresolved[op.key] = op
        else:
            self.unresolved.pop(op.key, None)
        return answer

    async def _op(self, key: str, kind: str, parent: str | None, shop: int, holder: int, amount: int, path: str,
                  actor: str, body: dict[str, Any]) -> Op:
        op = Op(key, kind, parent, shop, holder, amount, "POST", path, actor, body, self.now_s())
        await self.journal.intend(op)
        return op

    async def worker(self, index: int, stop_s: float, give_up_s: float) -> int:
        """Payments until ``stop_s``; each call retried until ``give_up_s`` at most. Returns the count."""
        rng = random.Random(f"{self.seed}:worker:{index}")
        count = 0
        while self.now_s() < stop_s and not self._stopping:
            count += 1
            base = f"s{self.seed}-w{index}-{count}"
            shop, holder = rng.randrange(len(self.shops)), rng.randrange(len(self.holders))
            amount = rng.randint(10, 200)
            create = await self._op(f"{base}-c", "create", None, shop, holder, amount, "/v1/payments", "shop",
                              {"amount": amount, "currency": "CNY", "merchant_reference": f"{base}-c"})
            answer = await self.resolve(create, give_up_s)
            if answer is None or answer.status != 201:
                continue
            payment = str(answer.json()["id"])
            pay = await self._op(f"{base}-p", "pay", create.key, shop, holder, amount, f"/v1/wallet/payments/{payment}/pay",
                           "holder", {})
            answer = await self.resolve(pay, give_up_s)
            if answer is None or answer.status != 200 or answer.json().get("status") != "succeeded":
                continue
            if rng.random() < self.refund_probability:
                refunded = rng.randint(1, amount)
                refund = await self._op(f"{base}-r", "refund", create.key, shop, holder, refunded,
                                  f"/v1/payments/{payment}/refunds", "shop", {"amount": refunded})
                await self.resolve(refund, give_up_s)
        return count

    async def run(self, workers: int, stop_s: float, give_up_s: float) -> int:
        counts = await asyncio.gather(*(self.worker(i, stop_s, give_up_s) for i in range(workers)))
        return sum(counts)

    async def drain(self, give_up_s: float) -> None:
        """After the faults: every operation still without a definite answer, under its own key again."""
        pending = list(self.unresolved.values())
        await asyncio.gather(*(self.resolve(op, give_up_s) for op in pending))

    async def settle_late(self) -> None:
        """Wait (bounded by the attempt timeout) for the answers of attempts still in flight."""
        if self._late:
            await asyncio.wait(self._late, timeout=self.hard_timeout_s + 1.0)
        for task in self._late:
            task.cancel()
        await asyncio.gather(*self._late, return_exceptions=True)
        self._late.clear()
