"""The load generator: seeding through the public API, one payment's flows, closed and open loops.

A payment counts as confirmed only when the last call of its flow returned success and status ``succeeded``;
every other outcome is an error counted by step, status and code. Payment i is paid by holder i mod W, so with
the concurrency below W the payments in flight never share a wallet.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp

from paybench.config import (
    CURRENCY,
    HOLDER_PASSWORD,
    OPERATOR_EMAIL,
    OPERATOR_PASSWORD,
    PHASE_GRACE_S,
    SEED_CONCURRENCY,
    TIER_HIGHEST,
    TIER_PATH,
    TOP_UP_MINOR,
    Sizes,
    T,
)
from paybench.figures import PhaseResult, Recorder
from paybench.system import DbWaits, Gateway, cpu_cores, cpu_sample, rss_mb, sms_gateway


def error_code(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return raw[:80].decode(errors="replace")


def headers_for(token: str, idempotent: bool, key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if idempotent:
        headers["Idempotency-Key"] = key or uuid.uuid4().hex
    return headers


class Api:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url

    async def seed(self, method: str, path: str, expect: int, token: str | None = None,
                   body: dict[str, Any] | None = None, timeout_s: float | None = None) -> Any:
        """A set-up call: anything but the expected status stops the benchmark. ``timeout_s`` replaces the
        session's request timeout (the invariant check reads every row: minutes after ``--big``)."""
        headers = headers_for(token, idempotent=method == "POST") if token else {}
        timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s is not None else None
        async with self.session.request(method, self.base_url + path, json=body, headers=headers,
                                        **({"timeout": timeout} if timeout is not None else {})) as resp:
            raw = await resp.read()
            if resp.status != expect:
                raise RuntimeError(f"{method} {path}: expected {expect}, got {resp.status}: {raw[:300]!r}")
            return json.loads(raw)

    async def invariant_check(self, token: str, timeout_s: float, poll_s: float = 1.0) -> dict[str, Any]:
        """A background ledger invariant check asked for and waited for (``POST/GET
        /v1/operator/ledger/invariant_checks``): its last state, finished unless ``timeout_s`` passed first."""
        check = await self.seed("POST", "/v1/operator/ledger/invariant_checks", 202, token, {})
        deadline_s = time.monotonic() + timeout_s
        while check["status"] in ("queued", "running") and time.monotonic() < deadline_s:
            await asyncio.sleep(poll_s)
            check = await self.seed("GET", f"/v1/operator/ledger/invariant_checks/{check['id']}", 200, token)
        return dict(check)

    async def timed(self, rec: Recorder, step: str, path: str, token: str, expect: int,
                    body: dict[str, Any], key: str | None = None) -> Any:
        """A measured POST with an Idempotency-Key (``key``, or a fresh one); None (and an error counted) unless it
        returned ``expect``."""
        started = time.perf_counter()
        try:
            async with self.session.post(self.base_url + path, json=body,
                                         headers=headers_for(token, True, key)) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            rec.errors[f"{step}: {type(exc).__name__}"] += 1
            return None
        if status != expect:
            rec.errors[f"{step}: HTTP {status} {error_code(raw)}"] += 1
            return None
        try:
            body_out = json.loads(raw)
        except ValueError:
            rec.errors[f"{step}: HTTP {status} with a body that is not JSON"] += 1
            return None
        rec.call_s[step].append(time.perf_counter() - started)
        return body_out


@dataclass(frozen=True)
class Merchant:
    id: str
    secret: str


@dataclass(frozen=True)
class Holder:
    id: str
    token: str


@dataclass(frozen=True)
class World:
    operator_token: str
    merchants: list[Merchant]
    holders: list[Holder]


async def bounded(coros: Iterable[Awaitable[T]], limit: int) -> list[T]:
    gate = asyncio.Semaphore(limit)

    async def one(c: Awaitable[T]) -> T:
        async with gate:
            return await c

    return list(await asyncio.gather(*(one(c) for c in coros)))


async def seed(api: Api, sizes: Sizes) -> World:
    op = await api.seed("POST", "/v1/operator/sessions", 201, body={"email": OPERATOR_EMAIL, "password": OPERATOR_PASSWORD})
    token = op["token"]
    # Gateways before verification tiers have no such endpoint (and no caps): skip the step there.
    has_tiers = TIER_PATH in (await api.seed("GET", "/openapi.json", 200)).get("paths", {})

    async def merchant(i: int) -> Merchant:
        m = await api.seed("POST", "/v1/merchants", 201, token,
                           {"name": f"Bench merchant {i}", "mcc": "5812", "country": "CN", "city": "Beijing"})
        key = await api.seed("POST", f"/v1/merchants/{m['id']}/api_keys", 201, token, {"kind": "secret"})
        return Merchant(m["id"], key["secret"])

    async def holder(i: int) -> Holder:
        credentials = {"phone": f"+8613{i:09d}", "password": HOLDER_PASSWORD}
        # A device-bound session: pay-codes are issued only to a device.
        device = {"device_id": f"bench-device-{i}"}
        h = await api.seed("POST", "/v1/wallet/holders", 201, body={**credentials, **device})
        if has_tiers:
            await api.seed("POST", TIER_PATH.format(id=h["id"]), 200, token, {"tier": TIER_HIGHEST})
        if "challenge" in h:  # gateways with sign-in codes: the code texted at registration signs in on the device
            code = await sms_gateway().code(credentials["phone"], h["challenge"]["id"], timeout_s=60)
            session = await api.seed("POST", f"/v1/wallet/challenges/{h['challenge']['id']}/verify", 201,
                                     body={"code": code})
        else:
            session = await api.seed("POST", "/v1/wallet/sessions", 201, body={**credentials, **device})
        bank = await api.seed("POST", "/v1/wallet/bank_accounts", 201, session["token"],
                              {"bank_name": "ICBC", "account_number": f"62220202{i:011d}"})
        await api.seed("POST", "/v1/wallet/top_ups", 201, session["token"],
                       {"bank_account": bank["id"], "amount": TOP_UP_MINOR, "currency": CURRENCY})
        return Holder(h["id"], session["token"])

    merchants = await bounded((merchant(i) for i in range(sizes.merchants)), SEED_CONCURRENCY)
    holders = await bounded((holder(i) for i in range(sizes.holders)), SEED_CONCURRENCY)
    return World(token, merchants, holders)


@dataclass(frozen=True)
class Load:
    name: str
    manual: bool
    one_merchant: bool


LOAD_A = Load("A: automatic capture, payers spread over the merchants", manual=False, one_merchant=False)


LOAD_B = Load("B: manual capture (create, pay, capture), spread", manual=True, one_merchant=False)


LOAD_ONE = Load("A, one merchant: every payer pays the same merchant", manual=False, one_merchant=True)


async def pay_once(api: Api, rec: Recorder, load: Load, world: World, index: int, amount_minor: int,
                   intended_start_s: float | None = None) -> None:
    """One payment end to end; its whole latency runs from its intended start (open loop) or now."""
    started = time.perf_counter() if intended_start_s is None else intended_start_s
    merchant = world.merchants[0 if load.one_merchant else index % len(world.merchants)]
    holder = world.holders[index % len(world.holders)]
    rec.attempted += 1
    body: dict[str, Any] = {"amount": amount_minor, "currency": CURRENCY}
    if load.manual:
        body["capture_method"] = "manual"
    created = await api.timed(rec, "create", "/v1/payments", merchant.secret, 201, body)
    if created is None:
        return
    pid = created["id"]
    pay_path, pay_key = f"/v1/wallet/payments/{pid}/pay", uuid.uuid4().hex
    final = await api.timed(rec, "pay", pay_path, holder.token, 200, {}, key=pay_key)
    if final is None:
        return
    if load.manual:
        if final.get("status") != "requires_capture":
            rec.errors[f"pay: status {final.get('status')} (expected requires_capture)"] += 1
            return
        final = await api.timed(rec, "capture", f"/v1/payments/{pid}/capture", merchant.secret, 200, {})
        if final is None:
            return
    if confirm(rec, final, started) and not load.manual:
        rec.replayable.append((pay_path, holder.token, pay_key))


def confirm(rec: Recorder, final: dict[str, Any], started_s: float) -> bool:
    """Count a flow whose last call answered as confirmed if the payment ``succeeded``."""
    if final.get("status") != "succeeded":
        rec.errors[f"final: status {final.get('status')} (expected succeeded)"] += 1
        return False
    rec.confirmed += 1
    rec.whole_s.append(time.perf_counter() - started_s)
    return True


async def replay_once(api: Api, rec: Recorder, call: tuple[str, str, str]) -> None:
    """The pay call of a confirmed payment again, same Idempotency-Key: the stored answer, nothing moves."""
    started = time.perf_counter()
    path, token, key = call
    rec.attempted += 1
    final = await api.timed(rec, "replay pay", path, token, 200, {}, key=key)
    if final is not None:
        confirm(rec, final, started)


async def issue_pay_codes(api: Api, world: World, count: int) -> list[str]:
    """``count`` pay-codes, code i issued to holder i mod W (so charges in flight never share a wallet)."""
    async def one(i: int) -> str:
        issued = await api.seed("POST", "/v1/wallet/pay_codes", 201, world.holders[i % len(world.holders)].token, {})
        return str(issued["code"])

    return await bounded((one(i) for i in range(count)), SEED_CONCURRENCY)


async def charge_once(api: Api, rec: Recorder, world: World, codes: list[str], index: int,
                      amount_minor: int) -> None:
    """A counter payment in one call: the merchant charges a pay-code the holder showed."""
    started = time.perf_counter()
    merchant = world.merchants[index % len(world.merchants)]
    rec.attempted += 1
    final = await api.timed(rec, "pay-code charge", "/v1/pay_code_charges", merchant.secret, 201,
                            {"pay_code": codes[index], "amount": amount_minor, "currency": CURRENCY})
    if final is not None:
        confirm(rec, final, started)


async def closed_loop(api: Api, world: World, load: Load, sizes: Sizes, count: int, duration_s: float,
                      gateway: Gateway) -> PhaseResult:
    """``concurrency`` workers, each starting its next payment when the previous one ends."""
    return await closed_loop_of(load.name, lambda rec, i: pay_once(api, rec, load, world, i, sizes.amount_minor),
                                sizes, count, duration_s, gateway)


async def closed_loop_of(name: str, one: Callable[[Recorder, int], Awaitable[None]], sizes: Sizes, count: int,
                         duration_s: float, gateway: Gateway) -> PhaseResult:
    """``concurrency`` workers, each starting its next ``one(rec, index)`` when the previous one ends."""
    rec = Recorder()
    indices = itertools.count()
    async with DbWaits(gateway.env["GATEWAY_DATABASE_URL"]) as waits:
        before = cpu_sample(gateway.pgid, gateway.database)
        deadline_s = before.at_s + duration_s

        async def worker() -> None:
            while True:
                i = next(indices)
                if i >= count or time.perf_counter() >= deadline_s:
                    return
                await one(rec, i)

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(sizes.concurrency))),
                               timeout=duration_s + PHASE_GRACE_S)
        after = cpu_sample(gateway.pgid, gateway.database)
    return PhaseResult(name, rec, after.at_s - before.at_s, cpu_cores(before, after), db_waits=waits.counts, db_waits_failed=waits.failed,
                       rss_mb=rss_mb(gateway))


async def open_loop(api: Api, world: World, load: Load, sizes: Sizes, rate_per_s: float, count: int,
                    duration_s: float, gateway: Gateway) -> PhaseResult:
    """Payments started on a fixed schedule whatever the gateway's pace (no coordinated omission)."""
    rec = Recorder()
    tasks: set[asyncio.Task[None]] = set()
    interval_s = 1.0 / rate_per_s
    async with DbWaits(gateway.env["GATEWAY_DATABASE_URL"]) as waits:
        before = cpu_sample(gateway.pgid, gateway.database)
        start_s = before.at_s
        for i in range(count):
            due_s = start_s + i * interval_s
            if due_s - start_s >= duration_s:
                break
            delay_s = due_s - time.perf_counter()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            if len(tasks) >= sizes.inflight_max:
                rec.errors["client: in-flight cap reached, payment not started"] += 1
                continue
            task = asyncio.create_task(pay_once(api, rec, load, world, i, sizes.amount_minor, intended_start_s=due_s))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=PHASE_GRACE_S)
        after = cpu_sample(gateway.pgid, gateway.database)
    return PhaseResult(f"{load.name}; open loop at {rate_per_s:,.1f}/s", rec, after.at_s - before.at_s,
                       cpu_cores(before, after), db_waits=waits.counts, db_waits_failed=waits.failed,
                       rss_mb=rss_mb(gateway))


_GROUP_COMMIT_SERIES = ("gateway_group_commit_payments_per_batch_count", "gateway_group_commit_payments_per_batch_sum",
                        "gateway_group_commit_fallbacks_total", "gateway_group_commit_creates_per_batch_count",
                        "gateway_group_commit_creates_per_batch_sum", "gateway_group_commit_create_fallbacks_total")


async def group_commit_counts(api: Api) -> tuple[float, ...]:
    """(batches, payments in them, fall-backs, then the same of creates) so far, summed over the serving
    processes (/metrics)."""
    async with api.session.get(api.base_url + "/metrics") as resp:
        text = await resp.text()
    found = dict.fromkeys(_GROUP_COMMIT_SERIES, 0.0)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in found:
            found[name] += float(value)
    return tuple(found[name] for name in _GROUP_COMMIT_SERIES)


def group_commit_line(before: tuple[float, ...], after: tuple[float, ...]) -> str:
    batches, items, fallbacks, c_batches, c_items, c_fallbacks = (b - a for a, b in zip(before, after, strict=True))
    creates = (f"; creates: {c_items:,.0f} in {c_batches:,.0f} batch statements, {c_items / c_batches:.2f} per batch,"
               f" {c_fallbacks:,.0f} run on their general path" if c_batches else "")
    if batches == 0:
        return "  group commit: no batch (off, or no wallet payment in this phase)" + creates
    return (f"  group commit: {items:,.0f} wallet payments in {batches:,.0f} batch statements, {items / batches:.2f}"
            f" per batch; {fallbacks:,.0f} refused by their batch and run on their general path{creates}")
