"""Every pair of use cases that touch one wallet, raced: no deadlock, every request succeeds (issue 8).

The documented lock order is in ``gateway/services/payments.py``. Deadlocks are counted by the
gateway itself (``gateway_db_transaction_retries_total{reason="deadlock"}``): PostgreSQL breaks a
deadlock by failing one transaction, which the gateway retries, so without the counter a deadlock
would only show as latency.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from prometheus_client import REGISTRY

from gateway.api.routing import SERVICES
from gateway.domain.ids import Kind, decode
from gateway.services import payments as payment_service
from tests.integration.world import Holder, Merchant, World

PER_KIND = 4
AMOUNT = 1_000


def deadlocks() -> float:
    return REGISTRY.get_sample_value("gateway_db_transaction_retries_total", {"reason": "deadlock"}) or 0.0


@dataclass
class Scene:
    world: World
    m: Merchant
    h: Holder
    db_url: str

    async def post(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        resp = await self.world.client.post(path, json=body, headers=headers)
        return resp.status, await resp.json()

    async def unpaid(self) -> str:
        return str((await self.world.payment(self.m, AMOUNT))["id"])

    async def authorised(self) -> str:
        p = await self.world.payment(self.m, AMOUNT, capture_method="manual")
        assert (await self.world.pay(self.h, p["id"]))["status"] == "requires_capture"
        return str(p["id"])

    async def paid(self) -> str:
        p = await self.world.payment(self.m, AMOUNT)
        assert (await self.world.pay(self.h, p["id"]))["status"] == "succeeded"
        return str(p["id"])

    async def lapse(self, pid: str) -> None:
        conn = await asyncpg.connect(self.db_url)
        try:
            await conn.execute("UPDATE payments SET authorization_expires_at = now() - interval '1 second'"
                               " WHERE id = $1", decode(Kind.PAYMENT, pid))
        finally:
            await conn.close()

    async def expire(self) -> tuple[int, Any]:
        return 200, await payment_service.expire_due(self.world.client.server.app[SERVICES])


Op = Callable[[], Awaitable[tuple[int, Any]]]


async def prepare(scene: Scene, kind: str) -> Op:
    """Set up what one operation of ``kind`` needs, and return the operation itself."""
    s, m, h = scene, scene.m, scene.h
    if kind == "pay":
        pid = await s.unpaid()
        return lambda: s.post(f"/v1/wallet/payments/{pid}/pay", h.headers, {})
    if kind == "capture_partial":
        pid = await s.authorised()
        return lambda: s.post(f"/v1/payments/{pid}/capture", m.headers, {"amount_to_capture": AMOUNT // 2})
    if kind == "cancel":
        pid = await s.authorised()
        return lambda: s.post(f"/v1/payments/{pid}/cancel", m.headers, {})
    if kind == "refund":
        pid = await s.paid()
        return lambda: s.post(f"/v1/payments/{pid}/refunds", m.headers, {"amount": AMOUNT // 4})
    if kind == "top_up":
        return lambda: s.post("/v1/wallet/top_ups", h.headers,
                              {"bank_account": h.bank_account, "amount": AMOUNT, "currency": "CNY"})
    if kind == "withdrawal":
        return lambda: s.post("/v1/wallet/withdrawals", h.headers,
                              {"bank_account": h.bank_account, "amount": AMOUNT // 10, "currency": "CNY"})
    if kind == "convert":  # CNY -> USD at a quote (the quote row, then the holder, then balances)
        await s.world.call("POST", "/v1/operator/fx_rates", 201, headers=s.world.ops,
                           json={"base": "USD", "quote": "CNY", "rate": "7.1234"})
        quote = await s.world.call("POST", "/v1/wallet/fx_quotes", 201, headers=h.headers,
                                   json={"from_currency": "CNY", "to_currency": "USD", "sell_amount": AMOUNT // 10})
        return lambda: s.post("/v1/wallet/conversions", h.headers, {"quote": quote["id"]})
    if kind in ("pay_fx", "refund_fx", "cancel_fx", "capture_partial_fx", "expire_fx"):
        # A USD payment paid from CNY through a quote (fx_payments.py); a manual one's hold released converts back.
        await s.world.call("POST", "/v1/operator/fx_rates", 201, headers=s.world.ops,
                           json={"base": "USD", "quote": "CNY", "rate": "7.1234"})
        quote = await s.world.call("POST", "/v1/wallet/fx_quotes", 201, headers=h.headers,
                                   json={"from_currency": "CNY", "to_currency": "USD", "receive_amount": AMOUNT // 10})
        manual = {"capture_method": "manual"} if kind in ("cancel_fx", "capture_partial_fx", "expire_fx") else {}
        p = await s.world.payment(m, AMOUNT // 10, "USD", **manual)
        pay = f"/v1/wallet/payments/{p['id']}/pay"
        if kind == "pay_fx":
            return lambda: s.post(pay, h.headers, {"fx_quote": quote["id"]})
        assert (await s.post(pay, h.headers, {"fx_quote": quote["id"]}))[0] == 200
        if kind == "cancel_fx":
            return lambda: s.post(f"/v1/payments/{p['id']}/cancel", m.headers, {})
        if kind == "capture_partial_fx":
            return lambda: s.post(f"/v1/payments/{p['id']}/capture", m.headers, {"amount_to_capture": AMOUNT // 40})
        if kind == "expire_fx":
            await s.lapse(str(p["id"]))
            return s.expire
        return lambda: s.post(f"/v1/payments/{p['id']}/refunds", m.headers, {"amount": AMOUNT // 40})
    if kind == "expire":
        await s.lapse(await s.authorised())
        return s.expire
    raise AssertionError(kind)


KINDS = ("pay", "capture_partial", "cancel", "refund", "top_up", "withdrawal", "expire", "convert", "pay_fx", "refund_fx",
         "cancel_fx", "capture_partial_fx", "expire_fx")


async def race(scene: Scene, kinds: list[str]) -> list[tuple[int, Any]]:
    ops = [await prepare(scene, kind) for kind in kinds]
    return list(await asyncio.gather(*(op() for op in ops)))


async def test_twenty_partial_captures_and_twenty_pays_of_one_wallet(world: World, clean_db: str) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=200_000)
    scene = Scene(world, m, h, clean_db)
    before = deadlocks()
    results = await race(scene, ["capture_partial"] * 20 + ["pay"] * 20)
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed
    assert deadlocks() == before


async def test_every_pair_of_wallet_use_cases_raced_on_one_wallet(world: World, clean_db: str) -> None:
    m = await world.merchant()
    problems: list[str] = []
    for a, b in itertools.combinations_with_replacement(KINDS, 2):
        h = await world.holder(top_up=100_000)
        scene = Scene(world, m, h, clean_db)
        before = deadlocks()
        results = await race(scene, [a] * PER_KIND + [b] * PER_KIND)
        failed = [r for r in results if r[0] not in (200, 201)]
        if failed or deadlocks() != before:
            problems.append(f"{a} x {b}: {deadlocks() - before:g} deadlocks, failed {failed}")
    assert not problems, "\n".join(problems)


CAMPAIGN_KINDS = ("pay", "capture_partial", "cancel", "refund", "expire")


async def test_every_pair_raced_on_one_wallet_while_a_campaign_reserves_and_gives_back(world: World,
                                                                                     clean_db: str) -> None:
    """With a live campaign counting holders' uses (migration 0031): paying takes a use and the counter rows,
    a manual authorisation reserves them, a partial capture, a cancel and an expiry give back (the use, then
    the rows in shard order), a refund claws back on the campaign's row. No deadlock, every request succeeds."""
    m = await world.merchant()
    await world.call("POST", "/v1/operator/campaigns", 201, headers=world.ops, json={
        "name": "Lock order", "currency": "CNY", "rule": "percent", "percent_bps": 1_000, "funded_by": "bank",
        "budget": 10_000_000, "per_holder_limit": 1_000, "time_zone": "UTC",
        "starts_at": "2000-01-01T00:00:00", "ends_at": "2100-01-01T00:00:00"})
    problems: list[str] = []
    for a, b in itertools.combinations_with_replacement(CAMPAIGN_KINDS, 2):
        h = await world.holder(top_up=100_000)
        scene = Scene(world, m, h, clean_db)
        before = deadlocks()
        results = await race(scene, [a] * PER_KIND + [b] * PER_KIND)
        failed = [r for r in results if r[0] not in (200, 201)]
        discounted = [r for r in results if isinstance(r[1], dict) and r[1].get("discount")]
        if failed or deadlocks() != before or (a == "pay" and not discounted):
            problems.append(f"{a} x {b}: {deadlocks() - before:g} deadlocks, failed {failed}")
    assert not problems, "\n".join(problems)
