"""The hosted checkout page: ``GET /checkout/{payment_id}?secret=<client secret>[&lang=en|zh]``.

Thin handlers: parse, call ``services.checkout``, render a template. Every page answers with a
Content-Security-Policy of its own origin only, no referrer (the URL holds the client secret, which
must not travel to the shop or anywhere else in a Referer header) and no caching. A wrong or missing
secret is the same 404 page as an unknown payment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from yarl import URL

from gateway.api.routing import SERVICES
from gateway.domain import checkout as rules
from gateway.errors import NotFound
from gateway.services import checkout
from gateway.web import assets, i18n

TEMPLATES_DIR = Path(__file__).parent / "templates"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
POLL_INTERVAL_MS = 2000
POLL_COUNT_MAX = 450  # 15 minutes of polling per page load; then the page asks for a reload
QR_SIZE_PX = 256


def page_headers(response: web.StreamResponse) -> web.StreamResponse:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Vary"] = "Accept-Language"
    return response


def _render(request: web.Request, template: str, lang: rules.Language, context: dict[str, Any],
            status: int = 200) -> web.StreamResponse:
    switch = [(code, i18n.LANGUAGE_NAMES[code], str(request.rel_url.update_query(lang=code)))
              for code in rules.LANGUAGES]
    context = {"lang": lang, "t": i18n.MESSAGES[lang.code], "languages": switch, "static": assets.url, **context}
    return page_headers(aiohttp_jinja2.render_template(template, request, context, status=status))


async def page(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICES]
    lang = rules.pick_language(request.query.get("lang"), request.headers.get("Accept-Language"))
    text_id, secret = request.match_info["id"], request.query.get("secret", "")
    try:
        view = await checkout.page(svc, text_id, secret)
    except NotFound:
        return _render(request, "not_found.html", lang, {}, status=404)
    if view.redirect_url is not None:  # paid already: straight back to the shop
        return page_headers(web.Response(status=303, headers={"Location": view.redirect_url}))
    base = f"/checkout/{view.payment}"
    query = {"secret": secret}
    name = view.merchant_name_local if lang.code == "zh" and view.merchant_name_local else view.merchant_name
    context = {
        "page": view, "merchant": name, "qr_size": QR_SIZE_PX,
        "qr_src": str(URL(f"{base}/qr/{view.qr_token}/image.svg").with_query(query)) if view.qr_token else None,
        "status_url": str(URL(f"/v1/checkout/{view.payment}/status").with_query(query)),
        "self_url": str(request.rel_url), "poll_interval_ms": POLL_INTERVAL_MS, "poll_count_max": POLL_COUNT_MAX,
        "expires_at": view.expires_at.strftime("%H:%M"),
    }
    return _render(request, "checkout.html", lang, context)


async def qr_svg(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICES]
    try:
        body = await checkout.qr_image(svc, request.match_info["id"], request.query.get("secret", ""),
                                       request.match_info["token"], "svg")
    except NotFound:
        return web.Response(status=404, text="not found", headers={"Cache-Control": "no-store"})
    return web.Response(body=body, content_type="image/svg+xml",
                        headers={"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"})


def install(app: web.Application) -> None:
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True,
                         undefined=jinja2.StrictUndefined, default_helpers=False)
    app.router.add_get("/checkout/{id}", page)
    app.router.add_get("/checkout/{id}/qr/{token}/image.svg", qr_svg)
    assets.install(app)
