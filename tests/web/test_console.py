"""The operator console in a real browser (Debian's Chromium driven by Playwright): log in, the
overview's charts drawn for the seeded days, a payment found by its merchant reference, an
exception written off and seen in the audit log, a support operator who may look but not resolve
(the button absent and a forged POST refused), the way back to the login page, the Chinese page, a ledger check asked for and its outcome shown;
and, without a browser, a POST without the session's CSRF token refused."""

from __future__ import annotations

import base64
import re
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, BrowserContext, Page, expect

from gateway.api.routing import SERVICES
from gateway.banksim import Inject, book, csv
from gateway.demo_browser import DESKTOP
from gateway.domain.ids import Kind, decode
from gateway.services import invariant_checks, tenants
from gateway.services.context import Services
from gateway.settings import Settings
from gateway.store import invariants as store_invariants
from tests.conftest import make_settings
from tests.integration.world import OPERATOR_EMAIL, OPERATOR_PASSWORD, World, auth

WAIT_MS = 15_000
SUPPORT_EMAIL = "support@example.com"
SUPPORT_PASSWORD = "support horse battery"


async def _terminal_seen(world: World, m: Any) -> dict[str, Any]:
    """A terminal of ``m`` whose enrolled agent sent one heartbeat, as the merchant's API shows it."""
    terminal = await world.call("POST", f"/v1/merchants/{m.id}/terminals", 201, headers=world.ops,
                                json={"store": m.store, "label": "Counter 1"})
    code = await world.call("POST", f"/v1/terminals/{terminal['id']}/enrolment_codes", 201, headers=m.headers, json={})
    device = await world.call("POST", "/v1/devices/enrolments", 201, json={"code": code["code"], "name": "agent"})
    await world.call("POST", "/v1/devices/heartbeat", headers=auth(device["access_token"]),
                     json={"agent_version": "7.1.0", "offline_backlog_count": 0})
    seen: dict[str, Any] = await world.call("GET", f"/v1/terminals/{terminal['id']}", headers=m.headers)
    return seen


async def _seed(world: World, clean_db: str) -> dict[str, Any]:
    """Two paid payments (one moved two days back) and a statement with one unknown deposit."""
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    paid = []
    for ref, amount in (("ORDER-7", 3_800), ("ORDER-8", 1_250)):
        p = await world.payment(m, amount, merchant_reference=ref)
        paid.append(await world.pay(h, p["id"]))
    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute("UPDATE payments SET created_at = created_at - interval '2 days' WHERE id = $1",
                           uuid.UUID(paid[1]["id"][4:]))
    finally:
        await conn.close()
    statement = csv(book([], Inject(unknown_deposits=1)), statement_id="STMT-CONSOLE")
    summary = await world.call("POST", "/v1/operator/bank_statements", 201, headers=world.ops,
                               json={"content_base64": base64.b64encode(statement).decode(), "format": "csv"})
    assert summary["exceptions"] == {"unknown_entry": 1}
    [unknown] = (await world.call("GET", "/v1/operator/reconciliation/exceptions", headers=world.ops))["data"]
    return {"merchant": m, "payments": paid, "exception": unknown["id"]}


async def _support_operator() -> None:
    svc = await Services.start(make_settings())
    try:
        await tenants.create_operator(svc, SUPPORT_EMAIL, SUPPORT_PASSWORD, "support")
    finally:
        await svc.stop()


async def _login(browser: Browser, base: str, email: str = OPERATOR_EMAIL, password: str = OPERATOR_PASSWORD,
                 language: str = "en-US,en;q=0.9") -> tuple[BrowserContext, Page]:
    context = await browser.new_context(viewport={"width": DESKTOP[0], "height": DESKTOP[1]},
                                        locale=language.split(",")[0], extra_http_headers={"Accept-Language": language})
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    await page.goto(f"{base}/console/")
    await page.wait_for_url(f"{base}/console/login")
    await page.get_by_label(re.compile("Email|邮箱")).fill(email)
    await page.get_by_label(re.compile("Password|密码")).fill(password)
    await page.get_by_label(re.compile("Password|密码")).press("Enter")  # the keyboard submits the form
    await page.wait_for_url(f"{base}/console/")
    return context, page


async def _drawn(page: Page, chart: str) -> list[str]:
    """The days whose bar the browser drew with a height (its laid-out box, not the attribute)."""
    heights = await page.locator(f"#chart-{chart} rect.bar").evaluate_all(
        "bars => bars.map(b => [b.dataset.day, b.getBBox().height])")
    return [day for day, height in heights if height > 0]


async def test_log_in_see_charts_find_a_payment_write_off_an_exception_and_see_it_audited(
    world: World, browser: Browser, settings: Settings, clean_db: str, tmp_path: Path,
) -> None:
    seeded = await _seed(world, clean_db)
    base = settings.server.public_url
    context, page = await _login(browser, base)
    cookie = next(c for c in await context.cookies() if c["name"] == "console_session")
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/console")
    response = await page.goto(f"{base}/console/")
    assert response is not None and response.status == 200
    assert response.headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    # Volume: a bar for each seeded day (today and two days ago), nothing on the others.
    await expect(page.locator("#chart-volume_minor rect.bar")).to_have_count(14)
    today = date.fromisoformat((await _drawn(page, "exceptions"))[0])
    assert await _drawn(page, "volume_minor") == [str(today - timedelta(days=2)), str(today)]
    assert await _drawn(page, "fee_minor") == [str(today - timedelta(days=2)), str(today)]
    await expect(page.locator("#chart-volume_minor .chart-total")).to_have_text("Total: 50.50 CNY")
    await expect(page.locator("#open-exceptions")).to_have_text("1")
    shot = tmp_path / "console-overview.png"
    await page.screenshot(path=str(shot), full_page=True)
    print(f"overview screenshot: {shot}")

    await page.get_by_role("link", name="Payment search").click()
    await page.get_by_label("Merchant reference").fill("ORDER-7")
    await page.get_by_role("button", name="Search").click()
    rows = page.locator("#results tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("id", seeded["payments"][0]["id"])
    await expect(rows.first).to_contain_text("38.00 CNY")

    await page.get_by_role("link", name="Exceptions").click()
    card = page.locator(f"[id='{seeded['exception']}']")
    await expect(card).to_have_attribute("data-status", "open")
    await expect(card.get_by_label("Payout or transfer references (comma separated)")).to_be_hidden()
    await card.get_by_label("Write off").check()
    await card.get_by_label("Reason").fill("unidentified deposit to suspense")
    await card.get_by_role("button", name="Actions").click()
    await expect(page.locator("#done")).to_contain_text(seeded["exception"])
    await expect(page.locator(f"[id='{seeded['exception']}']")).to_have_attribute("data-status", "resolved")
    after = await world.call("GET", f"/v1/operator/reconciliation/exceptions/{seeded['exception']}", headers=world.ops)
    assert after["status"] == "resolved"
    assert [a["action"] for a in after["actions"]] == ["write_off"]

    await page.get_by_role("link", name="Audit log").click()
    first = page.locator("#audit tbody tr").first
    await expect(first.locator(".action")).to_have_text("write_off")
    await expect(first.locator(".reason")).to_have_text("unidentified deposit to suspense")
    await expect(first).to_contain_text(OPERATOR_EMAIL)
    await expect(first).to_contain_text(seeded["exception"])

    terminal = await _terminal_seen(world, seeded["merchant"])
    await page.get_by_role("link", name="Merchants and terminals").click()
    await expect(page.locator(f"[id='{seeded['merchant'].id}']")).to_contain_text("Best Noodles")
    row = page.locator(f"[id='{terminal['id']}']")
    await expect(row.locator(".agent-version")).to_have_text("7.1.0")
    await expect(row.locator(".last-seen")).to_have_text(terminal["last_seen_at"][:16].replace("T", " "))
    await page.get_by_role("link", name="Batches and payouts").click()
    await expect(page.get_by_role("heading", name="Settlement batches")).to_be_visible()

    await page.get_by_role("button", name="Log out").click()
    await page.wait_for_url(f"{base}/console/login")
    await page.goto(f"{base}/console/audit")
    await page.wait_for_url(f"{base}/console/login")
    await context.close()


async def test_a_support_operator_sees_exceptions_but_cannot_resolve_them(
    world: World, browser: Browser, settings: Settings, clean_db: str,
) -> None:
    seeded = await _seed(world, clean_db)
    await _support_operator()
    base = settings.server.public_url
    context, page = await _login(browser, base, SUPPORT_EMAIL, SUPPORT_PASSWORD)
    await page.goto(f"{base}/console/exceptions")
    card = page.locator(f"[id='{seeded['exception']}']")
    await expect(card).to_be_visible()
    await expect(page.locator("#read-only")).to_be_visible()
    await expect(card.locator("form.resolve")).to_have_count(0)
    await expect(page.get_by_role("button", name="Actions")).to_have_count(0)
    csrf = await page.locator("form.logout input[name=csrf]").input_value()  # the session's own token
    forged = await page.request.post(f"{base}/console/exceptions/{seeded['exception']}/resolve",
                                     form={"csrf": csrf, "action": "write_off", "reason": "support tries"})
    assert forged.status == 403
    after = await world.call("GET", f"/v1/operator/reconciliation/exceptions/{seeded['exception']}", headers=world.ops)
    assert after["status"] == "open" and after["actions"] == []
    await context.close()


async def test_logged_out_pages_redirect_to_login_and_a_wrong_password_is_refused(
    world: World, browser: Browser, settings: Settings,
) -> None:
    base = settings.server.public_url
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    for path in ("/console/", "/console/exceptions", "/console/payments?reference=x", "/console"):
        await page.goto(f"{base}{path}")
        await page.wait_for_url(f"{base}/console/login")
    await page.get_by_label("Email").fill(OPERATOR_EMAIL)
    await page.get_by_label("Password").fill("wrong password")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#login-error")).to_have_text("Wrong email or password.")
    assert not [c for c in await context.cookies() if c["name"] == "console_session"]
    await context.close()


async def test_the_chinese_console(world: World, browser: Browser, settings: Settings, clean_db: str,
                                   tmp_path: Path) -> None:
    await _seed(world, clean_db)
    base = settings.server.public_url
    context, page = await _login(browser, base, language="zh-CN,zh;q=0.9")
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    await expect(page.get_by_role("heading", name="概览")).to_be_visible()
    await expect(page.locator("#chart-volume_minor .chart-title")).to_have_text("每日交易额")
    await page.get_by_role("link", name="English").click()
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await page.get_by_role("link", name="Exceptions").click()  # the choice is kept across pages
    await expect(page.get_by_role("heading", name="Exceptions")).to_be_visible()
    await page.get_by_role("link", name="中文").click()
    await expect(page.get_by_role("heading", name="对账异常")).to_be_visible()
    shot = tmp_path / "console-exceptions-zh.png"
    await page.screenshot(path=str(shot), full_page=True)
    print(f"exceptions screenshot: {shot}")
    await context.close()


async def test_a_post_without_the_sessions_csrf_token_is_refused(world: World, client: TestClient,
                                                                 clean_db: str) -> None:
    seeded = await _seed(world, clean_db)
    login = await client.post("/console/login", data={"email": OPERATOR_EMAIL, "password": OPERATOR_PASSWORD},
                              allow_redirects=False)
    assert login.status == 303 and "console_session" in login.cookies
    path = f"/console/exceptions/{seeded['exception']}/resolve"
    for csrf in (None, "", "0" * 64):
        data = {"action": "write_off", "reason": "forged"} | ({"csrf": csrf} if csrf is not None else {})
        refused = await client.post(path, data=data)
        assert refused.status == 403
        assert 'data-code="csrf_failed"' in await refused.text()
    page = await (await client.get("/console/exceptions")).text()
    csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert csrf is not None
    done = await client.post(path, data={"csrf": csrf.group(1), "action": "write_off", "reason": "real"})
    assert done.status == 200
    after = await world.call("GET", f"/v1/operator/reconciliation/exceptions/{seeded['exception']}", headers=world.ops)
    assert after["status"] == "resolved"


async def test_a_settlement_batch_shows_what_refunds_and_the_merchants_cashback_took(
    world: World, browser: Browser, settings: Settings, clean_db: str,
) -> None:
    """A capture with merchant-funded cashback and a partial refund of it, settled: the console's batch row
    shows the refunded amount and the cashback (net of what the refund took back) the merchant's net lacks."""
    m = await world.merchant(fee_bps=100)
    h = await world.holder(top_up=100_000)
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    await world.call("POST", "/v1/operator/campaigns", 201, headers=world.ops, json={
        "name": "Noodle cashback", "currency": "CNY", "rule": "cashback", "percent_bps": 500, "funded_by": "merchant",
        "budget": 1_000_000, "merchants": [m.id], "time_zone": "UTC",
        "starts_at": (now - timedelta(hours=1)).isoformat(), "ends_at": (now + timedelta(hours=2)).isoformat()})
    pid = (await world.payment(m, 10_000))["id"]
    paid = await world.pay(h, pid)  # fee 100, the merchant's cashback 500
    assert paid["cashback"]["amount"] == 500
    refund = await world.call("POST", f"/v1/payments/{pid}/refunds", 201, headers=m.headers,
                              json={"amount": 4_000})  # fee back 40, cashback back 200
    day = datetime.now(UTC).date() - timedelta(days=3)
    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute("UPDATE journal_entries SET created_at = $3 WHERE payment_id = $1 AND kind = 'capture'"
                           " OR refund_id = $2", decode(Kind.PAYMENT, pid), decode(Kind.REFUND, refund["id"]),
                           datetime(day.year, day.month, day.day, 10, tzinfo=UTC))
    finally:
        await conn.close()
    await world.call("POST", "/v1/operator/settlement_runs", headers=world.ops, json={"date": day.isoformat()})
    [batch] = (await world.call("GET", "/v1/settlement_batches", headers=m.headers))["data"]
    assert (batch["refunded"], batch["fee"], batch["cashback"], batch["net"]) == (4_000, 60, 300, 5_640)

    base = settings.server.public_url
    context, page = await _login(browser, base)
    await page.goto(f"{base}/console/settlement?merchant={m.id}")
    row = page.locator(f"#batches tr[id='{batch['id']}']")
    await expect(row.locator(".captured")).to_have_text("100.00 CNY")
    await expect(row.locator(".refunded")).to_have_text("40.00")
    await expect(row.locator(".fees")).to_have_text("0.60")
    await expect(row.locator(".cashback")).to_have_text("3.00")
    await expect(row.locator(".net")).to_have_text("56.40")
    await expect(page.locator("#batches th[title]")).to_have_text("Cashback")
    await context.close()


async def test_an_operator_checks_the_ledger_from_the_console_and_sees_it_pass_then_fail(
    world: World, browser: Browser, settings: Settings, clean_db: str, tmp_path: Path,
) -> None:
    await _seed(world, clean_db)
    svc = world.client.server.app[SERVICES]
    base = settings.server.public_url
    context, page = await _login(browser, base)
    await page.get_by_role("link", name="Ledger checks").click()
    await expect(page.get_by_role("heading", name="Ledger checks")).to_be_visible()
    await page.get_by_role("button", name="Check the ledger now").click()
    await expect(page.locator("#done")).to_contain_text("chk_")
    row = page.locator("#checks tbody tr").first
    check_id = await row.get_attribute("id")
    await expect(row).to_have_attribute("data-status", "queued")
    await expect(page.locator("meta[http-equiv=refresh]")).to_have_count(1)  # it refreshes while one is queued
    done = await invariant_checks.run_next(svc)
    assert done is not None and done.id == check_id and done.status == "passed"
    # The page's own refresh shows the outcome, and then refreshes no more.
    await expect(page.locator(f"[id='{check_id}']")).to_have_attribute("data-status", "passed")
    await expect(page.locator(f"[id='{check_id}'] .status")).to_have_text("Passed")
    total = store_invariants.count()
    await expect(page.locator(f"[id='{check_id}'] .progress")).to_have_text(f"{total} / {total}")
    await expect(page.locator("meta[http-equiv=refresh]")).to_have_count(0)
    events = await world.call("GET", "/v1/operator/events", headers=world.ops,
                              params={"type": "invariant_check.requested"})
    assert [e["data"]["object"]["id"] for e in events["data"]] == [check_id]

    conn = await asyncpg.connect(clean_db)
    try:
        account = await conn.fetchval("SELECT account_id FROM balances WHERE posted_minor > 0 ORDER BY 1 LIMIT 1")
        await conn.execute("UPDATE balances SET posted_minor = posted_minor + 1 WHERE account_id = $1 AND shard = 0",
                           account)
        try:
            await page.get_by_role("button", name="Check the ledger now").click()
            second = await page.locator("#checks tbody tr").first.get_attribute("id")
            assert second != check_id
            failed = await invariant_checks.run_next(svc)
            assert failed is not None and failed.status == "failed"
            await page.reload()
            await expect(page.locator(f"[id='{second}']")).to_have_attribute("data-status", "failed")
            await expect(page.locator(f"[id='{second}'] .status")).to_have_text("Violations found")
            await expect(page.locator(f"[id='{second}'] .outcome")).to_contain_text("balance_differs_from_postings")
            shot = tmp_path / "console-ledger.png"
            await page.screenshot(path=str(shot), full_page=True)
            print(f"ledger screenshot: {shot}")
        finally:
            await conn.execute("UPDATE balances SET posted_minor = posted_minor - 1"
                               " WHERE account_id = $1 AND shard = 0", account)
    finally:
        await conn.close()
    await context.close()
