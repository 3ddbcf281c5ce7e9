"""Hosted checkout over the API: checkout_url and its secret, redirect URL checks, the status
endpoint, CORS headers, the page's security headers and the static assets' caching."""

from __future__ import annotations

from typing import Any

import pytest
from yarl import URL

from tests.integration.world import World, auth

SHOP = "https://shop.example/orders/42"


async def _checkout(world: World, **extra: Any) -> tuple[Any, Any]:
    m = await world.merchant()
    p = await world.payment(m, 3_800, return_url=f"{SHOP}?step=done", cancel_url=f"{SHOP}/cart", **extra)
    return m, p


async def test_the_merchant_sees_checkout_url_and_the_payer_does_not(world: World) -> None:
    m, p = await _checkout(world)
    url = URL(p["checkout_url"])
    assert url.path == f"/checkout/{p['id']}" and url.query["secret"].startswith("cs_")
    assert p["id"][4:] not in url.query["secret"]
    assert (p["return_url"], p["cancel_url"]) == (f"{SHOP}?step=done", f"{SHOP}/cart")
    got = await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers)
    listed = await world.call("GET", "/v1/payments", headers=m.headers)
    assert got["checkout_url"] == p["checkout_url"] == listed["data"][0]["checkout_url"]
    h = await world.holder()
    for who in (auth(m.publishable), h.headers):
        payer = await world.call("GET", f"/v1/payments/{p['id']}", headers=who)
        assert "checkout_url" not in payer and "return_url" not in payer
    # The secret is not kept with the payment's history.
    events = await world.call("GET", "/v1/events", headers=m.headers)
    assert url.query["secret"] not in str(events)
    plain = await world.payment(m, 100)
    assert plain["checkout_url"] is None


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"return_url": "ftp://shop.example/x"}, "return_url", "invalid_url_scheme"),
    ({"return_url": "/relative/path"}, "return_url", "invalid_url_scheme"),
    ({"return_url": "https://"}, "return_url", "invalid_url"),
    ({"return_url": "https://user:pw@shop.example/"}, "return_url", "invalid_url"),
    ({"return_url": "https://shop.example/a b"}, "return_url", "invalid_url"),
    ({"return_url": "https://shop.example/" + "a" * 2048}, "return_url", "url_too_long"),
    ({"return_url": SHOP, "cancel_url": "javascript:alert(1)"}, "cancel_url", "invalid_url_scheme"),
    ({"cancel_url": SHOP}, "cancel_url", "cancel_url_without_return_url"),
])
async def test_redirect_urls_are_checked_naming_the_parameter(world: World, body: dict[str, str], param: str,
                                                              code: str) -> None:
    m = await world.merchant()
    error = await world.call("POST", "/v1/payments", 400, headers=m.headers,
                             json={"amount": 100, "currency": "CNY", **body})
    assert (error["error"]["param"], error["error"]["code"]) == (param, code)


async def test_the_status_endpoint_follows_the_payment_by_its_secret(world: World) -> None:
    m, p = await _checkout(world)
    secret = URL(p["checkout_url"]).query["secret"]
    path = f"/v1/checkout/{p['id']}/status"
    before = await world.call("GET", path, params={"secret": secret})
    assert before == {"object": "checkout_status", "payment": p["id"], "status": "requires_payment_method",
                      "redirect_url": None, "cancel_url": f"{SHOP}/cart"}
    for wrong in ({"secret": secret[:-2]}, {"secret": ""}):
        assert (await world.call("GET", path, 404, params=wrong))["error"]["code"] == "checkout_unknown"
    await world.call("GET", path, 400)  # the secret is required
    h = await world.holder(top_up=5_000)
    await world.pay(h, p["id"])
    after = await world.call("GET", path, params={"secret": secret})
    assert after["status"] == "succeeded"
    assert after["redirect_url"] == f"{SHOP}?step=done&payment={p['id']}"
    assert (await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers))["checkout_url"] is None


async def test_cors_for_publishable_keys_and_the_checkout_status(world: World) -> None:
    m, p = await _checkout(world)
    origin = {"Origin": "https://shop.example"}
    pre = await world.client.options(f"/v1/payments/{p['id']}", headers={
        **origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"})
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "*"
    assert pre.headers["Access-Control-Allow-Methods"] == "GET"
    assert pre.headers["Access-Control-Allow-Headers"] == "Authorization"
    assert "Access-Control-Allow-Credentials" not in pre.headers
    public = await world.client.get(f"/v1/payments/{p['id']}", headers={**origin, **auth(m.publishable)})
    assert public.status == 200 and public.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in public.headers
    private = await world.client.get(f"/v1/payments/{p['id']}", headers={**origin, **m.headers})
    assert private.status == 200 and "Access-Control-Allow-Origin" not in private.headers
    secret = URL(p["checkout_url"]).query["secret"]
    status = await world.client.get(f"/v1/checkout/{p['id']}/status", params={"secret": secret}, headers=origin)
    assert status.headers["Access-Control-Allow-Origin"] == "*"
    # Endpoints a browser has no business calling get no CORS at all.
    create = await world.client.options("/v1/payments", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in create.headers


async def test_the_page_answers_with_its_security_headers_and_versioned_assets(world: World) -> None:
    _, p = await _checkout(world)
    url = URL(p["checkout_url"])
    page = await world.client.get(url.path_qs)
    assert page.status == 200 and page.content_type == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["Referrer-Policy"] == "no-referrer" and page.headers["Cache-Control"] == "no-store"
    html = await page.text()
    assert '<html lang="en">' in html
    css = next(part.split('"')[0] for part in html.split('href="')[1:] if part.startswith("/static/checkout.css"))
    versioned = await world.client.get(css)
    assert versioned.status == 200 and versioned.content_type == "text/css"
    assert versioned.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    again = await world.client.get(css, headers={"If-None-Match": versioned.headers["ETag"]})
    assert again.status == 304
    plain = await world.client.get("/static/checkout.js")
    assert plain.status == 200 and plain.headers["Cache-Control"] == "public, max-age=300"
    for missing in ("/static/nothing.css", "/static/..%2Fcheckout.py"):
        assert (await world.client.get(missing)).status == 404
    escaped = await world.client.get(url.path_qs + "&lang=<script>")
    assert escaped.status == 200 and "<script>" not in (await escaped.text()).split("</head>")[1].split("<script src")[0]
