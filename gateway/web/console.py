"""The operator console: ``/console/`` (login, overview, settlement, exceptions, payments,
merchants and terminals, ledger checks, audit log).

Thin handlers: read the session cookie, call ``services.console``, render a template. The
session is the operator API's JWT in an HttpOnly, SameSite=Strict cookie scoped to ``/console``
(Secure when the gateway's public URL is https); every POST but the login carries the session's
CSRF token, checked before anything else. Pages answer with the checkout's headers (CSP of the
own origin only, no referrer, no caching) and charts are inline SVG drawn here, so the pages run
no script but ``console.js``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from gateway.api.routing import SERVICES
from gateway.auth.principals import Principal
from gateway.domain import checkout as rules
from gateway.errors import GatewayError, Unauthenticated
from gateway.services import console
from gateway.web import assets, i18n
from gateway.web.checkout import page_headers

COOKIE = "console_session"
LANG_COOKIE = "console_lang"
PATH = "/console"
CHART_WIDTH_PX = 420
CHART_HEIGHT_PX = 160
CHART_PAD_PX = 24
ACTIONS = ("write_off", "match", "reopen")
REASON_MAX = 500

Handler = Callable[[web.Request, Principal, str], Awaitable[web.StreamResponse]]


def _lang(request: web.Request) -> rules.Language:
    return rules.pick_language(request.query.get("lang") or request.cookies.get(LANG_COOKIE),
                               request.headers.get("Accept-Language"))


def _secure(request: web.Request) -> bool:
    return request.secure or request.app[SERVICES].settings.server.public_url.startswith("https://")


def _render(request: web.Request, template: str, context: dict[str, Any], status: int = 200,
            who: Principal | None = None, token: str | None = None) -> web.StreamResponse:
    lang = _lang(request)
    switch = [(code, i18n.LANGUAGE_NAMES[code], str(request.rel_url.update_query(lang=code)))
              for code in rules.LANGUAGES]
    svc = request.app[SERVICES]
    context = {"lang": lang, "t": i18n.CONSOLE[lang.code], "languages": switch, "static": assets.url,
               "who": who, "email": context.pop("email", ""), "path": request.path,
               "csrf": console.csrf_token(svc, token) if token else "", **context}
    response = aiohttp_jinja2.render_template(template, request, context, status=status)
    if "lang" in request.query and request.query["lang"] in rules.LANGUAGES:
        response.set_cookie(LANG_COOKIE, lang.code, path=PATH, httponly=True, samesite="Strict",
                            secure=_secure(request), max_age=365 * 86400)
    return page_headers(response)


def _to_login(request: web.Request) -> web.StreamResponse:
    response = web.Response(status=303, headers={"Location": f"{PATH}/login"})
    response.del_cookie(COOKIE, path=PATH)
    return page_headers(response)


def page(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A page for a logged-in operator: no session -> the login page; a POST without the session's
    CSRF token -> 403 before the handler runs."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        svc = request.app[SERVICES]
        token = request.cookies.get(COOKIE)
        try:
            who = await console.principal(svc, token)
        except Unauthenticated:
            return _to_login(request)
        assert token is not None
        if request.method == "POST":
            form = await request.post()
            sent = form.get("csrf")
            try:
                console.check_csrf(svc, token, sent if isinstance(sent, str) else None)
            except GatewayError as e:
                return _render(request, "console/error.html", {"error": e}, e.status, who, token)
        try:
            return await handler(request, who, token)
        except GatewayError as e:
            return _render(request, "console/error.html", {"error": e}, e.status, who, token)
    return wrapped


async def login_form(request: web.Request) -> web.StreamResponse:
    return _render(request, "console/login.html", {"failed": False})


async def login(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICES]
    form = await request.post()
    email, password = str(form.get("email", "")), str(form.get("password", ""))
    try:
        session = await console.login(svc, email, password, request.remote)
    except GatewayError as e:
        return _render(request, "console/login.html", {"failed": True, "email": email, "error": e}, e.status)
    response = web.Response(status=303, headers={"Location": f"{PATH}/"})
    response.set_cookie(COOKIE, session.token, path=PATH, httponly=True, samesite="Strict",
                        secure=_secure(request), max_age=session.expires_in_s)
    return page_headers(response)


@page
async def logout(request: web.Request, who: Principal, token: str) -> web.StreamResponse:
    return _to_login(request)


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str  # the day
    value: str  # as shown in the bar's tooltip


@dataclass(frozen=True, slots=True)
class Chart:
    key: str
    title: str
    total: str
    bars: list[Bar]
    ticks: list[tuple[float, str]]  # x, day label under the axis
    max_label: str


def _chart(key: str, title: str, total: str, days: list[console.Day], values: list[float],
           shown: list[str]) -> Chart:
    peak = max(values, default=0.0)
    top = peak or 1.0
    inner_w = CHART_WIDTH_PX - 2 * CHART_PAD_PX
    inner_h = CHART_HEIGHT_PX - 2 * CHART_PAD_PX
    step = inner_w / max(len(values), 1)
    bars: list[Bar] = []
    ticks: list[tuple[float, str]] = []
    for i, (d, v, text) in enumerate(zip(days, values, shown, strict=True)):
        h = inner_h * v / top
        x = CHART_PAD_PX + i * step
        bars.append(Bar(round(x + step * 0.15, 1), round(CHART_PAD_PX + inner_h - h, 1), round(step * 0.7, 1),
                        round(h, 1), d.day.isoformat(), text))
        if i % 2 == 0 or i == len(values) - 1:
            ticks.append((round(x + step / 2, 1), d.day.strftime("%m-%d")))
    return Chart(key, title, total, bars, ticks, shown[values.index(peak)] if peak else "0")


def _charts(view: console.Overview, t: dict[str, str]) -> list[Chart]:
    d = view.days
    scale = 10 ** view.exponent

    def money(name: str, title: str) -> Chart:
        raw = [getattr(x, name) for x in d]
        return _chart(name, title, f"{view.total(name)} {view.currency}", d, [v / scale for v in raw],
                      [console.amount_text(v, view.currency) for v in raw])

    rates = [x.match_rate_pct for x in d]
    entries, matched = sum(x.bank_entries for x in d), sum(x.bank_matched for x in d)
    return [
        money("volume_minor", t["chart_volume"]), money("fee_minor", t["chart_fees"]),
        money("payout_minor", t["chart_payouts"]),
        _chart("match_rate", t["chart_match"], f"{100 * matched / entries:.1f}%" if entries else t["no_data"], d,
               [r or 0.0 for r in rates], ["–" if r is None else f"{r:.1f}%" for r in rates]),
        _chart("exceptions", t["chart_exceptions"], str(sum(x.exceptions for x in d)), d,
               [float(x.exceptions) for x in d], [str(x.exceptions) for x in d]),
    ]


@page
async def overview(request: web.Request, who: Principal, token: str) -> web.StreamResponse:
    code = request.query.get("currency", "CNY")[:3].upper() or "CNY"
    view = await console.overview(request.app[SERVICES], code, datetime.now(UTC).date())
    t = i18n.CONSOLE[_lang(request).code]
    return _render(request, "console/overview.html", {
        "view": view, "charts": _charts(view, t), "days": console.OVERVIEW_DAYS,
        "width": CHART_WIDTH_PX, "height": CHART_HEIGHT_PX, "pad": CHART_PAD_PX}, who=who, token=token)


@page
async def settlement(request: web.Request, who: Principal, token: str) -> web.StreamResponse:
    q = request.query
    batches, payouts = await console.settlement(request.app[SERVICES], q.get("merchant"), q.get("from"), q.get("to"))
    return _render(request, "console/settlement.html", {
        "batches": batches, "payouts": payouts,
        "q": {"merchant": q.get("merchant", ""), "from": q.get("from", ""), "to": q.get("to", "")}},
        who=who, token=token)


async def _exceptions_page(request: web.Request, who: Principal, token: str, done: str | None = None,
                           status: int = 200) -> web.StreamResponse:
    chosen = request.query.get("status") or None
    found = await console.exceptions(request.app[SERVICES], chosen)
    return _render(request, "console/exceptions.html", {
        "exceptions": found, "chosen": chosen or "", "can_resolve": console.can_resolve(who),
        "money": console.amount_text, "done": done}, status, who, token)


@page
async def exceptions(request: web.Request, who: Principal, token: str) -> web.StreamResponse:
    return await _exceptions_page(request, who, token)


@page
async def resolve(request: web.Request, who: Principal, token: str) -> web.StreamResponse:
    form = await request.post()
    action = str(form.get("action", ""))
    reason = str(form.get("reason", ""))[:REASON_MAX]
    refs = [r.strip() for r in str(form.get("references", "")).split(",") if r.strip()][:100]
    exception = request.match_info["id"]
    t = i18n.CONSOLE[_lang(request).code]
    view = await console.resolve(request.app[SERVICES], who, exception, action, reason, refs,
                                 request.headers.get("X-Request-Id", ""))
    return await _exceptions_page(request, who, token,
                                  t["done"].format(action=t.get(action, action), id=view.id))


@page
async def payments(request: web.Request, who: Principal, token: str) -> web.StreamResponse:
    q = request.query
    search = console.Search(payment=q.get("payment", ""), reference=q.get("reference", ""), phone=q.get("phone", ""),
                            amount=q.get("amount", ""), currency=q.get("currency", "CNY")[:3].upper() or "CNY",
                            day=q.get("day", ""))
    found = await console.search_payments(request.app[SERVICES], search)
    return _render(request, "console/payments.html", {"search": search, "found": found}, who=who, token=token)


@page
async def merchants(request: web.Request, who: Principal, token: str) -> web.StreamResponse:
    found = await console.merchants(request.app[SERVICES])
    return _render(request, "console/merchants.html", {"merchants": found}, who=who, token=token)


@page
async def ledger(request: web.Request, who: Principal, token: str) -> web.StreamResponse:
    checks = await console.ledger_checks(request.app[SERVICES])
    asked = request.query.get("asked")  # the check the form just asked for (named only if it is listed)
    done = None
    if asked is not None and any(r.id == asked for r in checks.rows):
        done = i18n.CONSOLE[_lang(request).code]["check_asked"].format(id=asked)
    return _render(request, "console/ledger.html", {"checks": checks, "done": done}, who=who, token=token)


@page
async def check_ledger(request: web.Request, who: Principal, token: str) -> web.StreamResponse:
    """Post/redirect/get: the ledger page it answers with refreshes itself without asking again."""
    view = await console.check_ledger(request.app[SERVICES], who, request.headers.get("X-Request-Id", ""))
    return page_headers(web.Response(status=303, headers={"Location": f"{PATH}/ledger?asked={view.id}"}))


@page
async def audit(request: web.Request, who: Principal, token: str) -> web.StreamResponse:
    rows = await console.audit_log(request.app[SERVICES])
    return _render(request, "console/audit.html", {"rows": rows}, who=who, token=token)


async def _slash(request: web.Request) -> web.StreamResponse:
    return page_headers(web.Response(status=308, headers={"Location": f"{PATH}/"}))


def install(app: web.Application) -> None:
    """After ``web.checkout.install`` (which sets up the templates and the static assets)."""
    app.router.add_get(PATH, _slash)
    app.router.add_get(f"{PATH}/login", login_form)
    app.router.add_post(f"{PATH}/login", login)
    app.router.add_post(f"{PATH}/logout", logout)
    app.router.add_get(f"{PATH}/", overview)
    app.router.add_get(f"{PATH}/settlement", settlement)
    app.router.add_get(f"{PATH}/exceptions", exceptions)
    app.router.add_post(f"{PATH}/exceptions/{{id}}/resolve", resolve)
    app.router.add_get(f"{PATH}/payments", payments)
    app.router.add_get(f"{PATH}/merchants", merchants)
    app.router.add_get(f"{PATH}/ledger", ledger)
    app.router.add_post(f"{PATH}/ledger/checks", check_ledger)
    app.router.add_get(f"{PATH}/audit", audit)
