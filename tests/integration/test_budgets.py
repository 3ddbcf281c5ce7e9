"""Budgets, reminders, the holder's time zone and spending insights over real HTTP, with the gateway's
own budget worker evaluating committed payments and refunds (real PostgreSQL; the ledger proven after
each test)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway.services.context import Services
from gateway.settings import Settings
from gateway.workers.budgets import Evaluator
from tests.conftest import make_settings
from tests.integration.conftest import serving
from tests.integration.world import Holder, Merchant, World

FAST: dict[str, object] = {"poll_interval_s": 0.05}


@pytest.fixture
def settings() -> Settings:
    return make_settings(spending=FAST)


@pytest.fixture
async def live_client(clean_db: str, settings: Settings) -> AsyncIterator[TestClient]:
    """The app WITH its background workers (the budget loop among them), over real HTTP."""
    async with serving(clean_db, settings, workers=True) as test_client:
        yield test_client


@pytest.fixture
async def world(live_client: TestClient) -> World:
    return await World.create(live_client)


async def budget(world: World, h: Holder, category: str, amount: int, currency: str = "CNY",
                 expect: int = 201) -> Any:
    return await world.call("POST", "/v1/wallet/budgets", expect, headers=h.headers,
                            json={"category": category, "currency": currency, "amount": amount})


async def paid(world: World, m: Merchant, h: Holder, amount: int, currency: str = "CNY") -> str:
    payment = await world.payment(m, amount, currency)
    await world.pay(h, payment["id"])
    return str(payment["id"])


async def refund(world: World, m: Merchant, payment_id: str, amount: int) -> None:
    await world.call("POST", f"/v1/payments/{payment_id}/refunds", 201, headers=m.headers, json={"amount": amount})


async def reminders(world: World, h: Holder) -> list[dict[str, Any]]:
    page = await world.call("GET", "/v1/wallet/notifications?limit=100", headers=h.headers)
    return [n for n in page["data"] if n["kind"] == "budget.reminder"]


async def wait_reminders(world: World, h: Holder, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = await reminders(world, h)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def settled(settings: Settings) -> None:
    """Let the worker run past everything committed so far (a few of its ticks)."""
    await asyncio.sleep(settings.spending.poll_interval_s * 8)


def summary(found: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return sorted((n["data"]["category"], n["data"]["threshold_percent"]) for n in found)


async def test_a_budget_is_created_replaced_listed_with_its_spending_and_deleted(world: World) -> None:
    m = await world.merchant(mcc="5812")
    h = await world.holder(top_up=50_000)
    created = await budget(world, h, "dining", 10_000)
    assert created["object"] == "budget" and created["id"].startswith("bud_")
    assert (created["category"], created["currency"], created["amount"]) == ("dining", "CNY", 10_000)
    assert (created["spent"], created["remaining"], created["percent_used"]) == (0, 10_000, 0)
    assert created["month"] == datetime.now(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")
    await paid(world, m, h, 2_550)
    replaced = await budget(world, h, "dining", 5_000, expect=200)
    assert replaced["id"] == created["id"] and replaced["amount"] == 5_000
    assert (replaced["spent"], replaced["remaining"], replaced["percent_used"]) == (2_550, 2_450, 51)
    overall = await budget(world, h, "overall", 20_000)
    listed = await world.call("GET", "/v1/wallet/budgets", headers=h.headers)
    assert [b["id"] for b in listed["data"]] == [overall["id"], created["id"]] and not listed["has_more"]
    assert [(b["category"], b["spent"], b["percent_used"]) for b in listed["data"]] == [
        ("overall", 2_550, 12), ("dining", 2_550, 51)]
    page = await world.call("GET", "/v1/wallet/budgets?limit=1", headers=h.headers)
    assert [b["id"] for b in page["data"]] == [overall["id"]] and page["has_more"]
    gone = await world.call("DELETE", f"/v1/wallet/budgets/{created['id']}", headers=h.headers)
    assert gone == {"id": created["id"], "object": "budget", "deleted": True}
    await world.call("DELETE", f"/v1/wallet/budgets/{created['id']}", 404, headers=h.headers)
    listed = await world.call("GET", "/v1/wallet/budgets", headers=h.headers)
    assert [b["id"] for b in listed["data"]] == [overall["id"]]


async def test_another_holders_budgets_are_not_found_and_not_listed(world: World) -> None:
    a, b = await world.holder(), await world.holder()
    mine = await budget(world, a, "groceries", 10_000)
    error = await world.call("DELETE", f"/v1/wallet/budgets/{mine['id']}", 404, headers=b.headers)
    assert error["error"]["code"] == "resource_missing"
    assert (await world.call("GET", "/v1/wallet/budgets", headers=b.headers))["data"] == []
    bad = await world.call("GET", f"/v1/wallet/budgets?starting_after={mine['id']}", 400, headers=b.headers)
    assert bad["error"]["code"] == "invalid_cursor"
    assert len((await world.call("GET", "/v1/wallet/budgets", headers=a.headers))["data"]) == 1


@pytest.mark.parametrize(("body", "code", "param"), [
    ({"category": "gambling", "currency": "CNY", "amount": 100}, "invalid_category", "category"),
    ({"category": "dining", "currency": "XXQ", "amount": 100}, "invalid_currency", "currency"),
    ({"category": "dining", "currency": "CNY", "amount": 0}, "invalid_amount", "amount"),
    ({"category": "dining", "currency": "CNY", "amount": 10.5}, "amount_too_precise", "amount"),
    ({"category": "dining", "currency": "CNY", "amount": -5}, "invalid_amount", "amount"),
    ({"category": "dining", "currency": "CNY"}, "invalid_parameter", "amount"),
])
async def test_bad_budgets_are_refused_naming_the_field(world: World, body: dict[str, Any], code: str,
                                                        param: str) -> None:
    h = await world.holder()
    error = (await world.call("POST", "/v1/wallet/budgets", 400, headers=h.headers, json=body))["error"]
    assert (error["code"], error["param"]) == (code, param)


async def test_crossing_80_and_100_percent_gives_one_reminder_each_and_refunds_reduce_spending(
        world: World, settings: Settings) -> None:
    dining, grocer = await world.merchant("Noodles", mcc="5812"), await world.merchant("Fresh Mart", mcc="5411")
    h = await world.holder(top_up=100_000)
    d = await budget(world, h, "dining", 10_000)
    o = await budget(world, h, "overall", 30_000)
    await paid(world, grocer, h, 20_000)  # groceries: overall at 66%, dining untouched
    await paid(world, dining, h, 7_000)  # dining 70%, overall 90%: overall crosses 80
    started = time.monotonic()
    found = await wait_reminders(world, h, 1)
    latency_s = time.monotonic() - started
    assert summary(found) == [("overall", 80)]
    assert latency_s < 2.0, latency_s  # "within about a second"
    reminder = found[0]
    assert reminder["data"] == {"budget": o["id"], "category": "overall", "currency": "CNY",
                                "month": reminder["data"]["month"], "threshold_percent": 80,
                                "amount": 30_000, "spent": 27_000}
    assert reminder["read_at"] is None
    p = await paid(world, dining, h, 1_500)  # dining 85% -> 80 crossed; overall 95%
    found = await wait_reminders(world, h, 2)
    assert summary(found) == [("dining", 80), ("overall", 80)]
    await refund(world, dining, p, 1_500)  # dining back to 70%
    await settled(settings)
    listed = {b["category"]: b for b in (await world.call("GET", "/v1/wallet/budgets", headers=h.headers))["data"]}
    assert (listed["dining"]["spent"], listed["overall"]["spent"]) == (7_000, 27_000)
    await paid(world, dining, h, 1_500)  # 85% again: the 80% reminder of this month was given already
    await paid(world, dining, h, 2_000)  # 105%: crosses 100; overall 35,500 of 30,000 crosses 100 too
    found = await wait_reminders(world, h, 4)
    await settled(settings)
    found = await reminders(world, h)
    assert summary(found) == [("dining", 80), ("dining", 100), ("overall", 80), ("overall", 100)]
    assert {n["data"]["budget"] for n in found if n["data"]["category"] == "dining"} == {d["id"]}
    listed = {b["category"]: b for b in (await world.call("GET", "/v1/wallet/budgets", headers=h.headers))["data"]}
    assert (listed["dining"]["spent"], listed["dining"]["remaining"], listed["dining"]["percent_used"]) == (
        10_500, -500, 105)


async def test_concurrent_payments_give_exactly_one_reminder_per_threshold(world: World, settings: Settings) -> None:
    m = await world.merchant(mcc="5812")
    h = await world.holder(top_up=60_000)
    await budget(world, h, "dining", 10_000)
    await budget(world, h, "overall", 10_000)
    payments = [await world.payment(m, 500) for _ in range(24)]  # 12,000: past 80% and 100% of both
    answers = await asyncio.gather(*(world.pay(h, p["id"]) for p in payments))
    assert {a["status"] for a in answers} == {"succeeded"}
    await wait_reminders(world, h, 4)
    await settled(settings)
    found = await reminders(world, h)
    assert summary(found) == [("dining", 80), ("dining", 100), ("overall", 80), ("overall", 100)]
    conn = await asyncpg.connect(settings.database.url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM budget_reminders") == 4
    finally:
        await conn.close()


async def test_evaluators_racing_in_several_processes_write_each_reminder_once(clean_db: str) -> None:
    """Four evaluators (as four processes would run) tick at the same moments over the same payments."""
    settings = make_settings(spending=FAST)
    async with serving(clean_db, settings, workers=False) as client:
        world = await World.create(client)
        m = await world.merchant(mcc="5411")
        h = await world.holder(top_up=60_000)
        await budget(world, h, "groceries", 10_000)
        services = [await Services.start(settings) for _ in range(4)]
        try:
            evaluators = [Evaluator(svc) for svc in services]
            payments = [await world.payment(m, 1_000) for _ in range(12)]
            for chunk in (payments[:5], payments[5:9], payments[9:]):
                await asyncio.gather(*(world.pay(h, p["id"]) for p in chunk))
                for _ in range(3):
                    await asyncio.gather(*(e.tick() for e in evaluators))
                    await asyncio.sleep(0.02)
        finally:
            for svc in services:
                await svc.stop()
        assert summary(await reminders(world, h)) == [("groceries", 80), ("groceries", 100)]


async def test_a_restart_misses_nothing_and_counts_nothing_twice(clean_db: str) -> None:
    settings = make_settings(spending=FAST)
    async with serving(clean_db, settings, workers=False) as client:  # no worker: nothing is evaluated
        world = await World.create(client)
        m = await world.merchant(mcc="4111")
        h = await world.holder(top_up=60_000)
        await budget(world, h, "transport", 10_000)
        await paid(world, m, h, 8_500)
        await asyncio.sleep(0.3)
        assert await reminders(world, h) == []
    async with serving(clean_db, settings, workers=True) as client:  # the worker catches up
        world = World(client, world.operator_token)
        assert summary(await wait_reminders(world, h, 1)) == [("transport", 80)]
        await paid(world, m, h, 1_000)  # 95%: nothing new
        await settled(settings)
    async with serving(clean_db, settings, workers=True) as client:  # again: nothing twice
        world = World(client, world.operator_token)
        await paid(world, m, h, 500)  # 100%
        found = await wait_reminders(world, h, 2)
        await settled(settings)
        assert summary(await reminders(world, h)) == [("transport", 80), ("transport", 100)] == summary(found)


async def _backdate(url: str, payment_id: str, at: str) -> None:
    """Move a payment's ledger entries to another instant (test only: the month boundary at will)."""
    raw = payment_id.removeprefix("pay_")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("UPDATE postings p SET created_at = $2::timestamptz FROM journal_entries e"
                           " WHERE e.id = p.entry_id AND e.payment_id = $1::uuid", raw, datetime.fromisoformat(at))
        await conn.execute("UPDATE journal_entries SET created_at = $2 WHERE payment_id = $1::uuid", raw,
                           datetime.fromisoformat(at))
    finally:
        await conn.close()


async def test_insights_per_currency_category_and_merchant_net_of_refunds(world: World, settings: Settings) -> None:
    noodles, mart = await world.merchant("Noodles", mcc="5812"), await world.merchant("Fresh Mart", mcc="5411")
    cinema = await world.merchant("Cinema", mcc="7832")
    h = await world.holder(top_up=100_000)
    await world.top_up(h, 50_000, "HKD")
    other = await world.holder(top_up=50_000)
    await paid(world, noodles, h, 3_000)
    p = await paid(world, noodles, h, 2_000)
    await paid(world, mart, h, 10_000)
    await paid(world, cinema, h, 4_500, "HKD")
    await paid(world, noodles, other, 9_999)  # another holder's: never in h's figures
    await refund(world, noodles, p, 500)
    held = await world.payment(mart, 7_000, capture_method="manual")  # authorised, not captured: not spent
    await world.pay(h, held["id"])
    got = await world.call("GET", "/v1/wallet/insights", headers=h.headers)
    assert got["object"] == "spending_insights" and got["time_zone"] == "Asia/Shanghai"
    by_currency = {c["currency"]: c for c in got["currencies"]}
    cny = by_currency["CNY"]
    assert (cny["total"], cny["count"]) == (14_500, 3)
    assert [(c["category"], c["total"], c["count"]) for c in cny["by_category"]] == [
        ("groceries", 10_000, 1), ("dining", 4_500, 2)]
    assert [(x["name"], x["merchant"], x["total"], x["count"]) for x in cny["by_merchant"]] == [
        ("Fresh Mart", mart.id, 10_000, 1), ("Noodles", noodles.id, 4_500, 2)]
    hkd = by_currency["HKD"]
    assert (hkd["total"], hkd["count"], hkd["by_category"]) == (4_500, 1, [
        {"category": "entertainment", "total": 4_500, "count": 1}])
    only = await world.call("GET", f"/v1/wallet/insights?currency=HKD&month={got['month']}", headers=h.headers)
    assert [c["currency"] for c in only["currencies"]] == ["HKD"]
    empty = await world.call("GET", "/v1/wallet/insights?month=2001-01", headers=h.headers)
    assert (empty["month"], empty["currencies"]) == ("2001-01", [])


@pytest.mark.parametrize("month", ["2026-13", "2026-1", "202612", "2026-12-01", "x", "", "0000-01"])
async def test_an_invalid_month_is_invalid_month(world: World, month: str) -> None:
    h = await world.holder()
    error = (await world.call("GET", f"/v1/wallet/insights?month={month}", 400, headers=h.headers))["error"]
    assert (error["code"], error["param"]) == ("invalid_month", "month")


async def test_months_are_counted_in_the_holders_time_zone(world: World, settings: Settings) -> None:
    m = await world.merchant(mcc="5812")
    h = await world.holder(top_up=50_000)
    p = await paid(world, m, h, 1_234)
    # 20:00 UTC on 31 March is 04:00 on 1 April in Shanghai (the default) but still 31 March in London.
    await _backdate(settings.database.url, p, "2026-03-31T20:00:00+00:00")
    assert await world.call("GET", "/v1/wallet/time_zone", headers=h.headers) == {
        "object": "time_zone", "time_zone": "Asia/Shanghai", "is_default": True}

    async def total(month: str) -> int:
        got = await world.call("GET", f"/v1/wallet/insights?month={month}", headers=h.headers)
        return sum(c["total"] for c in got["currencies"])

    assert (await total("2026-04"), await total("2026-03")) == (1_234, 0)
    zone = await world.call("POST", "/v1/wallet/time_zone", headers=h.headers, json={"time_zone": "Europe/London"})
    assert zone == {"object": "time_zone", "time_zone": "Europe/London", "is_default": False}
    assert (await total("2026-04"), await total("2026-03")) == (0, 1_234)
    assert (await world.call("GET", "/v1/wallet/insights?month=2026-03", headers=h.headers))["time_zone"] == (
        "Europe/London")


@pytest.mark.parametrize("zone", ["Mars/Olympus", "asia/shanghai", "UTC+8", "../../etc/passwd", "", "x" * 65,
                                  "Asia/Shanghai "])
async def test_a_time_zone_must_be_an_iana_name(world: World, zone: str) -> None:
    h = await world.holder()
    error = (await world.call("POST", "/v1/wallet/time_zone", 400, headers=h.headers, json={"time_zone": zone}))["error"]
    assert error["param"] == "time_zone"
    assert error["code"] in ({"invalid_parameter"} if zone == "" or len(zone) > 64 else {"invalid_time_zone"})
    assert (await world.call("GET", "/v1/wallet/time_zone", headers=h.headers))["is_default"]


async def test_a_reminder_month_is_the_holders_month(world: World, settings: Settings) -> None:
    """A budget of this month ignores last month's spending, in the holder's zone."""
    m = await world.merchant(mcc="5812")
    h = await world.holder(top_up=50_000)
    await budget(world, h, "dining", 10_000)
    old = await paid(world, m, h, 7_900)
    await _backdate(settings.database.url, old, "2001-01-15T12:00:00+00:00")
    await paid(world, m, h, 1_000)  # this month: 10%, however much was spent in 2001
    await settled(settings)
    assert await reminders(world, h) == []
    listed = (await world.call("GET", "/v1/wallet/budgets", headers=h.headers))["data"]
    assert listed[0]["spent"] == 1_000


async def test_a_budget_set_above_a_threshold_reminds_at_the_next_one_crossed(world: World, settings: Settings) -> None:
    """Reminders come from payments crossing a threshold: a budget set when 90% is spent already gives no
    80% reminder, and its 100% one when a payment gets there."""
    m = await world.merchant(mcc="5812")
    h = await world.holder(top_up=50_000)
    await paid(world, m, h, 9_000)
    await settled(settings)
    await budget(world, h, "dining", 10_000)
    await paid(world, m, h, 500)
    await settled(settings)
    assert await reminders(world, h) == []
    await paid(world, m, h, 600)
    assert summary(await wait_reminders(world, h, 1)) == [("dining", 100)]
