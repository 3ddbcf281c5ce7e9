"""The demo's web-shop order: a shop with a webhook receiver and a return page, the hosted checkout
page in headless Chromium, a wallet paying the page's QR code, the verified webhook.

The shop is the merchant's side: it verifies every webhook with the merchant client's
``verify_webhook`` (both signature formats) before it believes it. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from wallet_client import SignatureVerificationError, verify_webhook

WEBHOOK_WAIT_S = 20.0
REDIRECT_WAIT_S = 20.0
Call = Callable[..., Awaitable[tuple[int, Any, dict[str, str]]]]


class Shop:
    """A web shop on 127.0.0.1: ``/webhooks`` (verified, then queued) and the order's return page."""

    def __init__(self) -> None:
        self.secret = ""
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=100)
        self.refused = 0
        self.app = web.Application()
        self.app.router.add_post("/webhooks", self._webhook)
        self.app.router.add_get("/orders/done", self._done)
        self.runner = web.AppRunner(self.app, access_log=None)
        self.base = ""

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.base = f"http://{host}:{port}"

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def _webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = verify_webhook(body, request.headers, self.secret)
        except SignatureVerificationError:
            self.refused += 1
            return web.Response(status=400, text="bad signature")
        with contextlib.suppress(asyncio.QueueFull):
            self.events.put_nowait({"event": event, "id": request.headers.get("webhook-id"),
                                    "formats": [h for h in ("webhook-signature", "Wallet-Signature")
                                                if h in request.headers]})
        return web.Response(text="ok")

    async def _done(self, request: web.Request) -> web.Response:
        return web.Response(text=f"Thank you for order {request.query.get('order')}", content_type="text/plain")


async def order(call: Call, secret_key: str, payer_token: str, out_dir: Path, money: Callable[[int], str]) -> None:
    shop = Shop()
    await shop.start()
    try:
        _, endpoint, _ = await call("POST", "/v1/webhook_endpoints", secret_key,
                                    {"url": f"{shop.base}/webhooks", "enabled_events": ["payment.succeeded"],
                                     "description": "demo shop"}, key=str(uuid.uuid4()), expect=201)
        shop.secret = endpoint["secret"]
        print(f"   shop at {shop.base}; webhook endpoint {endpoint['id']} (secret shown once, kept by the shop)")
        _, payment, _ = await call("POST", "/v1/payments", secret_key, {
            "amount": 4_200, "currency": "CNY", "merchant_reference": "W-1001", "description": "Gift box",
            "return_url": f"{shop.base}/orders/done?order=W-1001", "cancel_url": f"{shop.base}/cart"},
            key="order-W-1001", expect=201)
        # The page shows the payment's current dynamic code: issue it here so the wallet can scan it.
        _, qr, _ = await call("POST", f"/v1/payments/{payment['id']}/qr_codes", secret_key, {"ttl": 300},
                              key=str(uuid.uuid4()), expect=201)
        print(f"   {payment['id']}: {money(payment['amount'])} CNY, checkout page {payment['checkout_url'].split('?')[0]}")
        final_url = await _pay_in_browser(call, payment, qr, payer_token, out_dir)
        print(f"   the browser returned to {final_url}")
        got = await asyncio.wait_for(shop.events.get(), WEBHOOK_WAIT_S)
        event = got["event"]
        print(f"   shop received {event['type']} {event['id']} for {event['data']['object']['id']}"
              f" (webhook-id {got['id']}; verified: {' and '.join(got['formats'])}); refused: {shop.refused}")
    finally:
        await shop.stop()


async def _pay_in_browser(call: Call, payment: dict[str, Any], qr: dict[str, Any], payer_token: str,
                          out_dir: Path) -> str:
    """Open the checkout page, screenshot it, pay its code from the wallet, follow the redirect."""
    from gateway.demo_browser import CHROMIUM_PATH, PHONE, chromium

    if importlib.util.find_spec("playwright") is None or not Path(CHROMIUM_PATH).exists():
        print("   (no headless browser here: pip install playwright, apt-get install chromium to see the page)")
        await _wallet_pays(call, qr, payer_token)
        return "(the page was not opened)"
    async with chromium() as browser:
        context = await browser.new_context(viewport={"width": PHONE[0], "height": PHONE[1]}, locale="en-US")
        page = await context.new_page()
        page.set_default_timeout(REDIRECT_WAIT_S * 1000)
        await page.goto(payment["checkout_url"], wait_until="load")
        await page.wait_for_function("Array.from(document.images).every(img => img.complete)")
        shot = out_dir / f"checkout-{payment['id']}.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(shot), full_page=True)
        shown = await page.get_attribute("#qr", "src") or ""
        token = qr["image_svg"].rstrip("/").split("/")[-2]  # /v1/qr_codes/{token}/image.svg
        print(f"   headless Chromium shows the page: {shot.resolve()}")
        print(f"   the page shows the code just issued: {token in shown}")
        await _wallet_pays(call, qr, payer_token)
        await page.wait_for_url("**/orders/done**")
        url: str = page.url
        await context.close()
        return url


async def _wallet_pays(call: Call, qr: dict[str, Any], payer_token: str) -> None:
    _, paid, _ = await call("POST", "/v1/wallet/qr/pay", payer_token, {"payload": qr["payload"]},
                            key=str(uuid.uuid4()), expect=200)
    print(f"   Alice's wallet scans the page's QR code and pays: {paid['status']}")
