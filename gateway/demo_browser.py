"""Headless Chromium for the demo and the browser tests: Debian's ``chromium`` driven by Playwright.

Playwright is imported lazily, when a browser is wanted: it belongs to the demo's screenshot and to
the tests (the ``browser`` and ``test`` extras), never to a serving gateway. The browser is the
system's (``apt-get install chromium``); Playwright's own download (``playwright install``) is never
used, as it needs the internet. Every wait is bounded by ``timeout_s``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.async_api import Browser

CHROMIUM_PATH = "/usr/bin/chromium"
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run")
PHONE = (390, 844)
DESKTOP = (1280, 800)
TIMEOUT_S = 30.0


@asynccontextmanager
async def chromium(executable: str = CHROMIUM_PATH, timeout_s: float = TIMEOUT_S) -> AsyncIterator[Browser]:
    """A headless browser (a fresh profile each time), closed on exit."""
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS), headless=True,
                                               timeout=timeout_s * 1000)
        try:
            yield browser
        finally:
            await browser.close()


async def screenshot(url: str, path: Path, *, viewport: tuple[int, int] = PHONE, locale: str = "en-US",
                     timeout_s: float = TIMEOUT_S) -> Path:
    """Open ``url``, wait until it and its images have loaded, write a full-page PNG to ``path``."""
    async with chromium(timeout_s=timeout_s) as browser:
        context = await browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, locale=locale)
        page = await context.new_page()
        page.set_default_timeout(timeout_s * 1000)
        await page.goto(url, wait_until="load")
        await page.wait_for_function("Array.from(document.images).every(img => img.complete)")
        path.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(path), full_page=True)
        await context.close()
    return path
