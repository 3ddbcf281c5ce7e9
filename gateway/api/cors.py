"""CORS for what a shop's own web page calls from the browser: the routes that take publishable keys
and the hosted checkout's status (authorised by the client secret in its URL).

Policy:
- Preflight ``OPTIONS`` on those routes is answered for any origin (a publishable key is public by
  design and works from any shop's page): ``GET``, the ``Authorization`` header, cached 10 minutes.
- Their responses carry ``Access-Control-Allow-Origin: *``, never ``Allow-Credentials``: the gateway
  uses no cookies; a page sends its key in ``Authorization`` explicitly, so no ambient credential
  of the visitor can be used by another site.
- A response to a secret key gets no CORS header at all: the browser refuses to hand it to the page,
  so a secret key put in a web page fails at once instead of working and leaking.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from gateway.api.routing import Api
from gateway.auth import api_keys
from gateway.auth.principals import PrincipalKind

BROWSER_PATHS: web.AppKey[frozenset[str]] = web.AppKey("cors_paths", frozenset)
ALLOWED_METHODS = "GET"
ALLOWED_HEADERS = "Authorization"
EXPOSED_HEADERS = "Request-Id, Retry-After"
PREFLIGHT_MAX_AGE_S = 600


def browser_paths(registry: Api, also: Iterable[str] = ()) -> frozenset[str]:
    taking_publishable = {e.path for e in registry.endpoints
                          if e.method == "GET" and e.auth is not None and PrincipalKind.PUBLISHABLE in e.auth}
    return frozenset(taking_publishable | set(also))


def _secret_key(request: web.Request) -> bool:
    authorization = request.headers.get("Authorization", "")
    return authorization.startswith("Bearer ") and api_keys.kind_of(authorization[7:].strip()) == "secret"


async def _preflight(request: web.Request) -> web.Response:
    response = web.Response(status=204)
    if request.headers.get("Access-Control-Request-Method") == ALLOWED_METHODS:
        response.headers.update({
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
        })
    return response


async def _allow_origin(request: web.Request, response: web.StreamResponse) -> None:
    resource = request.match_info.route.resource
    if (resource is None or "Origin" not in request.headers
            or resource.canonical not in request.app[BROWSER_PATHS] or _secret_key(request)):
        return
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS


def install(app: web.Application, paths: frozenset[str]) -> None:
    app[BROWSER_PATHS] = paths
    for path in sorted(paths):
        app.router.add_route("OPTIONS", path, _preflight)
    app.on_response_prepare.append(_allow_origin)
