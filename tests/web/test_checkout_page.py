"""The hosted checkout page in a real browser (Debian's Chromium driven by Playwright): amount and
QR code, paying by scanning the code the page shows, the way back to the shop, expiry and
cancellation, Chinese and English, the keyboard, a wrong secret, CORS from the shop's origin."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import zxingcpp
from aiohttp.test_utils import TestClient
from PIL import Image
from playwright.async_api import Browser, BrowserContext, Page, expect
from yarl import URL

from gateway.demo_browser import DESKTOP, PHONE, screenshot
from gateway.services.context import Services
from gateway.settings import Settings
from gateway.workers.expiry import tick
from tests.integration.world import Merchant, World
from tests.web.conftest import Shop

WAIT_MS = 15_000


async def _checkout(world: World, m: Merchant, shop: Shop, amount: int = 3_800, currency: str = "CNY",
                    **extra: Any) -> Any:
    return await world.payment(m, amount, currency, return_url=shop.return_url, cancel_url=shop.cancel_url,
                               description="2 bowls of noodles", **extra)


async def _open(browser: Browser, url: str, viewport: tuple[int, int] = PHONE,
                language: str = "en-US,en;q=0.9") -> tuple[BrowserContext, Page, Any]:
    context = await browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                        locale=language.split(",")[0], extra_http_headers={"Accept-Language": language})
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    response = await page.goto(url)
    return context, page, response


def _scan(png: bytes) -> str:
    found = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))
    assert len(found) == 1, found
    return str(found[0].text)


async def _qr_loaded(page: Page) -> int:
    await page.wait_for_function("document.getElementById('qr').complete")
    width: int = await page.locator("#qr").evaluate("img => img.naturalWidth")
    return width


async def test_a_wallet_pays_the_qr_the_page_shows_and_the_browser_lands_on_return_url(
    world: World, shop: Shop, browser: Browser, settings: Settings, tmp_path: Path,
) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    p = await _checkout(world, m, shop)
    assert p["checkout_url"].startswith(f"{settings.server.public_url}/checkout/{p['id']}?secret=cs_")
    context, page, response = await _open(browser, p["checkout_url"])
    assert response.status == 200
    assert response.headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'")
    assert response.headers["referrer-policy"] == "no-referrer"
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await expect(page.locator("#merchant-name")).to_have_text("Best Noodles")
    await expect(page.locator("#amount")).to_have_text("38.00")
    await expect(page.locator("#status")).to_have_text("Waiting for your payment…")
    assert await _qr_loaded(page) > 0
    assert "38.00 CNY" in (await page.locator("#qr").get_attribute("alt") or "")
    # Nothing wider than a phone's screen.
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE[0]
    shot = tmp_path / "checkout-phone.png"
    await page.screenshot(path=str(shot), full_page=True)
    print(f"phone screenshot: {shot}")

    payload = _scan(await page.locator("#qr").screenshot())
    paid = await world.call("POST", "/v1/wallet/qr/pay", headers=h.headers, json={"payload": payload})
    assert paid["id"] == p["id"] and paid["status"] == "succeeded"

    await page.wait_for_url(f"{shop.url}/done?**")
    landed = URL(page.url)
    assert (landed.query["order"], landed.query["payment"]) == ("42", p["id"])
    await expect(page.locator("h1")).to_have_text(f"Order paid: {p['id']}")
    after = await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers)
    assert after["status"] == "succeeded" and after["checkout_url"] is None
    # Back on the checkout URL once paid: straight to the shop again.
    await page.goto(p["checkout_url"])
    assert URL(page.url).query["payment"] == p["id"]
    await context.close()


async def test_a_payment_expiring_while_the_page_is_open_shows_the_expired_page(
    world: World, shop: Shop, browser: Browser, settings: Settings, clean_db: str,
) -> None:
    m = await world.merchant()
    p = await _checkout(world, m, shop)
    context, page, _ = await _open(browser, p["checkout_url"])
    assert await _qr_loaded(page) > 0
    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute("UPDATE payments SET expires_at = now() - interval '1 second' WHERE id = $1",
                           uuid.UUID(p["id"][4:]))
    finally:
        await conn.close()
    svc = await Services.start(settings)
    try:
        expired, _ = await tick(svc)  # the expiry worker's own pass
    finally:
        await svc.stop()
    assert expired == 1
    await expect(page.locator("h1")).to_have_text("This payment has expired")
    await expect(page.locator("#qr")).to_have_count(0)
    back = page.get_by_role("link", name="Back to the shop")
    await expect(back).to_have_attribute("href", shop.cancel_url)
    await back.click()
    await page.wait_for_url(shop.cancel_url)
    await context.close()


async def test_a_cancelled_payment_has_its_own_page_amount_in_its_currency(
    world: World, shop: Shop, browser: Browser,
) -> None:
    m = await world.merchant()
    p = await _checkout(world, m, shop, amount=1_250, currency="KWD")
    await world.call("POST", f"/v1/payments/{p['id']}/cancel", headers=m.headers, json={})
    context, page, response = await _open(browser, p["checkout_url"])
    assert response.status == 200
    await expect(page.locator("h1")).to_have_text("This payment was cancelled")
    await expect(page.locator(".amount-small")).to_have_text("1.250 KWD")
    await context.close()


async def test_chinese_from_accept_language_and_the_switch_to_english(
    world: World, shop: Shop, browser: Browser, tmp_path: Path,
) -> None:
    m = await world.merchant()
    p = await _checkout(world, m, shop, amount=1_200, currency="JPY")
    context, page, _ = await _open(browser, p["checkout_url"], language="zh-CN,zh;q=0.9,en;q=0.8")
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    await expect(page.locator("h1")).to_have_text("付款给 Best Noodles")
    await expect(page.locator("#amount")).to_have_text("1200")
    await expect(page.locator("#status")).to_have_text("正在等待付款…")
    assert "二维码" in (await page.locator("#qr").get_attribute("alt") or "")
    assert await _qr_loaded(page) > 0
    shot = tmp_path / "checkout-phone-zh.png"
    await page.screenshot(path=str(shot), full_page=True)
    print(f"Chinese screenshot: {shot}")
    await page.get_by_role("link", name="English").click()
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await expect(page.locator("h1")).to_have_text("Pay Best Noodles")
    await context.close()


async def test_the_keyboard_reaches_the_language_switch_with_a_visible_focus(
    world: World, shop: Shop, browser: Browser,
) -> None:
    m = await world.merchant()
    p = await _checkout(world, m, shop)
    context, page, _ = await _open(browser, p["checkout_url"])
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "English"
    await page.keyboard.press("Tab")
    focused = await page.evaluate("[document.activeElement.textContent, getComputedStyle(document.activeElement)"
                                  ".outlineStyle]")
    assert focused == ["中文", "solid"]
    await page.keyboard.press("Enter")
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    await expect(page.get_by_role("status")).to_have_text("正在等待付款…")
    await context.close()


async def test_a_wrong_or_missing_secret_is_a_404_page_that_tells_nothing(
    world: World, shop: Shop, browser: Browser, client: TestClient,
) -> None:
    m = await world.merchant()
    p = await _checkout(world, m, shop)
    url = URL(p["checkout_url"])
    secret = url.query["secret"]
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    other = f"pay_{uuid.uuid4().hex}"
    context = await browser.new_context()
    page = await context.new_page()
    for bad in (url.with_query(secret=wrong), url.with_query({}), url.with_path(f"/checkout/{other}")):
        response = await page.goto(str(bad))
        assert response is not None and response.status == 404
        await expect(page.locator("h1")).to_have_text("Page not found")
        content = await page.content()
        assert "Best Noodles" not in content and "38.00" not in content
    status = await client.get(f"/v1/checkout/{p['id']}/status", params={"secret": wrong})
    assert status.status == 404 and (await status.json())["error"]["code"] == "checkout_unknown"
    await context.close()


async def test_a_desktop_screen(world: World, shop: Shop, browser: Browser, tmp_path: Path) -> None:
    m = await world.merchant()
    p = await _checkout(world, m, shop)
    context, page, _ = await _open(browser, p["checkout_url"], viewport=DESKTOP)
    assert await _qr_loaded(page) > 0
    box = await page.locator("main").bounding_box()
    assert box is not None and box["width"] <= 480 and abs(box["x"] * 2 + box["width"] - DESKTOP[0]) < 20  # centred
    shot = tmp_path / "checkout-desktop.png"
    await page.screenshot(path=str(shot), full_page=True)
    print(f"desktop screenshot: {shot}")
    await context.close()


async def test_the_shops_own_page_reads_the_payment_with_its_publishable_key_cors(
    world: World, shop: Shop, browser: Browser, settings: Settings,
) -> None:
    m = await world.merchant()
    p = await _checkout(world, m, shop)
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(shop.cancel_url)  # any page of the shop's origin
    fetch = """async ([url, key]) => {
        try {
            const response = await fetch(url, key ? {headers: {Authorization: "Bearer " + key}} : {});
            return [response.status, (await response.json()).status];
        } catch (error) { return ["blocked", String(error)]; }
    }"""
    base = settings.server.public_url
    assert await page.evaluate(fetch, [f"{base}/v1/payments/{p['id']}", m.publishable]) == [
        200, "requires_payment_method"]
    status_url = f"{base}/v1/checkout/{p['id']}/status?secret={URL(p['checkout_url']).query['secret']}"
    assert await page.evaluate(fetch, [status_url, None]) == [200, "requires_payment_method"]
    # A secret key in a web page is refused by the browser: the response carries no CORS header.
    blocked = await page.evaluate(fetch, [f"{base}/v1/payments/{p['id']}", m.secret])
    assert blocked[0] == "blocked"
    await context.close()


async def test_the_demos_screenshot_helper_writes_a_phone_sized_png(world: World, shop: Shop, tmp_path: Path) -> None:
    m = await world.merchant()
    p = await _checkout(world, m, shop)
    shot = await screenshot(p["checkout_url"], tmp_path / "demo" / "checkout.png")
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.width == PHONE[0] and image.height >= PHONE[1]
