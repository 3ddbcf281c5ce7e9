"""Declarative endpoints: one registry feeds both the router and ``/openapi.json``.

An endpoint declares who may call it, its body and query types and its response type; the
wrapper authenticates, rate-limits, parses strictly (unknown fields, wrong types, duplicate keys,
non-JSON media types and oversized bodies are 4xx naming the field), builds the idempotency
identity, and renders the result.

Credentials: none or invalid -> 401; a kind of credential the route never accepts (a wallet token
on an operator route, a publishable key where a secret key is needed) -> 401; an operator without
the role -> 403. Another tenant's object stays 404 (the services scope every lookup).

The declaration is also the route's contract in ``/openapi.json``: its description is the first
paragraph of the handler's docstring; its error answers are derived from what it declares
(credentials, body, query, path ids, idempotency, database) plus the ``errors`` its use case
raises. ``idempotent`` routes honour ``Idempotency-Key`` (by default every authenticated route
that is not a GET); a handler may build its request identity only on such a route.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec
from aiohttp import web

from gateway.auth.principals import Principal, PrincipalKind
from gateway.domain import throttle
from gateway.errors import Forbidden, InvalidRequest, PayloadTooLarge, RateLimited, Unauthenticated, UnsupportedMediaType
from gateway.logs import request_id_var
from gateway.services import tenants
from gateway.services.context import Services
from gateway.services.idempotency import KEY_LENGTH_MAX, Reply, RequestIdentity, cache_key, fingerprint

SERVICES: web.AppKey[Services] = web.AppKey("services", Services)
B = TypeVar("B")
Q = TypeVar("Q")
_PATH_RE = re.compile(r"at `\$((?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*)`")
_UNKNOWN_RE = re.compile(r"unknown field `([^`]+)`")
_MISSING_RE = re.compile(r"missing required field `([^`]+)`")
_NESTING_MAX = 32
_BRACKETED_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\[([^\[\]]*)\]")
_BRACKETED_FIELD_RE = re.compile(r"at `\$\.([A-Za-z_][A-Za-z0-9_]*\[[A-Za-z_][A-Za-z0-9_]*\])`")  # created[gte]


@dataclass
class Call(Generic[B, Q]):
    request: web.Request
    svc: Services
    principal: Principal | None
    body: B
    query: Q
    raw_params: Any
    prefetched: tuple[bytes | None, bool] = (None, False)
    idempotent: bool = False

    def match(self, name: str) -> str:
        return self.request.match_info[name]

    @property
    def client_address(self) -> str | None:
        """The client's address: the peer's, or behind a trusted proxy the one it forwarded."""
        return throttle.forwarded_client(self.request.remote, self.request.headers.getall("X-Forwarded-For", []),
                                         self.svc.settings.throttle.proxies())

    @property
    def who(self) -> Principal:
        assert self.principal is not None
        return self.principal

    def identity(self) -> RequestIdentity:
        # The route's declaration says whether keys are honoured; /openapi.json documents the header from it.
        assert self.idempotent, f"{self.request.method} {self.request.path} is not declared idempotent"
        key = self.request.headers.get("Idempotency-Key")
        if key is not None and not (1 <= len(key) <= KEY_LENGTH_MAX and key.isprintable()):
            raise InvalidRequest(
                f"Idempotency-Key must be 1-{KEY_LENGTH_MAX} printable characters",
                code="invalid_idempotency_key", param="Idempotency-Key",
            )
        scope = self.principal.idempotency_scope if self.principal else f"anonymous:{uuid.uuid4()}"
        method, path = self.request.method, self.request.path
        return RequestIdentity(
            scope=scope, key=key, method=method, path=path,
            fingerprint=fingerprint(method, path, self.raw_params), request_id=request_id_var.get() or "",
            cached=self.prefetched[0], prefetched=self.prefetched[1], actor=self.principal,
        )


Handler = Callable[[Call[Any, Any]], Awaitable[Any]]
# Error answers a use case gives beyond those the declaration implies: status -> the codes, or
# status -> the body type when that answer is not the error body (readiness's 503).
Errors = Mapping[int, tuple[str, ...] | type]


@dataclass
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    auth: frozenset[PrincipalKind] | None
    body: type | None
    query: type | None
    response: type | tuple[type, ...] | None  # a tuple: one of these, by who asks
    status: int
    roles: frozenset[str] | None = None
    tags: list[str] = field(default_factory=list)
    produces: str | None = None  # a media type other than JSON (images, metrics)
    body_max: Callable[[Services], int] | None = None  # a larger body cap than server.body_max_bytes
    errors: Errors = field(default_factory=dict)
    idempotent: bool = False
    database: bool = True  # False: the route answers without the database (no 503 for its loss)
    also_ok: dict[int, str] = field(default_factory=dict)  # other success statuses (same body): when each answers


def _param(message: str) -> str | None:
    bracketed = _BRACKETED_FIELD_RE.search(message)
    if bracketed:
        return bracketed.group(1)
    path = ""
    found = _PATH_RE.search(message)
    if found and found.group(1):
        path = found.group(1).lstrip(".").replace("][", ".").replace("[", ".").replace("]", "")
    named = _UNKNOWN_RE.search(message) or _MISSING_RE.search(message)
    if named:
        return f"{path}.{named.group(1)}" if path else named.group(1)
    return path or None


def _check_text(value: Any, path: str = "", depth: int = 0) -> None:
    """Refuse text PostgreSQL cannot store (NUL), text that is not Unicode (a lone surrogate such as
    ``"\\ud800"``, which JSON escapes allow but UTF-8 cannot encode) and absurd nesting, naming the field."""
    if depth > _NESTING_MAX:
        raise InvalidRequest("the body is nested too deeply", code="invalid_json", param=path or None)
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidRequest("text may not contain NUL characters", code="invalid_parameter", param=path or None)
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRequest("text must be valid Unicode (no lone surrogates)", code="invalid_json",
                                     param=path or None) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, path, depth + 1)
            _check_text(item, f"{path}.{key}" if path else str(key), depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_text(item, f"{path}.{index}" if path else str(index), depth + 1)


def _fold_brackets(params: dict[str, str], kind: type) -> dict[str, Any]:
    """``metadata[order_id]=123`` becomes ``{"metadata": {"order_id": "123"}}`` when the query type has a
    ``metadata`` field (and no field named ``metadata[order_id]`` itself, as ``created[gte]`` is)."""
    names = {f.encode_name for f in msgspec.structs.fields(kind)}
    folded: dict[str, Any] = {}
    for key, value in params.items():
        found = _BRACKETED_RE.fullmatch(key)
        if key in names or found is None or found.group(1) not in names:
            folded[key] = value
            continue
        group = folded.setdefault(found.group(1), {})
        if not isinstance(group, dict):
            raise InvalidRequest(f"{found.group(1)} is given both as a value and as {key}", code="invalid_parameter",
                                 param=key)
        group[found.group(2)] = value
    return folded


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return found


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(data: bytes) -> Any:
    """Strict JSON: UTF-8 only, no duplicate keys (``{"amount":1,"amount":1000}`` is refused, not
    read as 1000), no NaN or Infinity."""
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_object, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        key = exc.key.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate stays printable
        raise InvalidRequest(f"the key {key!r} appears twice in the body", code="duplicate_key", param=key) from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidRequest("the body is not valid UTF-8 JSON", code="invalid_json") from None


def _decode(raw: Any, kind: type[B], *, strict: bool, what: str) -> B:
    try:
        return msgspec.convert(raw, kind, strict=strict)
    except msgspec.ValidationError as exc:
        text = str(exc)
        param = _param(text)
        code = "unknown_parameter" if _UNKNOWN_RE.search(text) else "invalid_parameter"
        raise InvalidRequest(f"invalid {what}: {text}", code=code, param=param) from None


async def _read_capped(request: web.Request, cap_bytes: int) -> bytes:
    """The body of a route with its own cap (statement uploads), refused past the cap without reading it all."""
    if request.content_length is not None and request.content_length > cap_bytes:
        raise PayloadTooLarge(f"the body is larger than {cap_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > cap_bytes:
            raise PayloadTooLarge(f"the body is larger than {cap_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class Api:
    def __init__(self) -> None:
        self.endpoints: list[Endpoint] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        auth: set[PrincipalKind] | None,
        body: type | None = None,
        query: type | None = None,
        response: type | tuple[type, ...] | None = None,
        status: int = 200,
        roles: set[str] | None = None,
        tag: str = "general",
        produces: str | None = None,
        body_max: Callable[[Services], int] | None = None,
        errors: Errors | None = None,
        idempotent: bool | None = None,
        database: bool = True,
        also_ok: dict[int, str] | None = None,
    ) -> Callable[[Handler], Handler]:
        if idempotent is None:
            idempotent = method != "GET" and auth is not None

        def register(handler: Handler) -> Handler:
            self.endpoints.append(
                Endpoint(method, path, handler, summary, frozenset(auth) if auth is not None else None, body, query,
                         response, status, frozenset(roles) if roles else None, [tag], produces, body_max,
                         dict(errors or {}), idempotent, database, dict(also_ok or {}))
            )
            return handler

        return register

    def install(self, app: web.Application) -> None:
        for endpoint in self.endpoints:
            app.router.add_route(endpoint.method, endpoint.path, self._wrap(endpoint))

    @staticmethod
    def _wrap(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            svc = request.app[SERVICES]
            principal = None
            prefetched: tuple[bytes | None, bool] = (None, False)
            if endpoint.auth is not None:
                principal = await tenants.authenticate(svc, request.headers.get("Authorization"))
                if principal.kind not in endpoint.auth:
                    kinds = ", ".join(sorted(k.value for k in endpoint.auth))
                    raise Unauthenticated(f"this endpoint takes credentials of another kind ({kinds})",
                                          code="credential_not_accepted")
                if (endpoint.roles is not None and principal.kind is PrincipalKind.OPERATOR
                        and principal.role not in endpoint.roles):
                    raise Forbidden("this operator role may not do that", code="role_forbidden")
                idem_key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
                wait_s, cached, answered = await svc.accel.preflight(
                    principal.rate_limit_scope, svc.settings.auth.rate_limit_per_s,
                    cache_key(principal.idempotency_scope, idem_key) if idem_key else None,
                )
                if wait_s > 0:
                    raise RateLimited("too many requests; slow down and retry", retry_after_s=math.ceil(wait_s))
                prefetched = (cached, answered and idem_key is not None)
            raw_params: Any = {}
            body: Any = None
            if endpoint.body is not None:
                data = await (_read_capped(request, endpoint.body_max(svc)) if endpoint.body_max else request.read())
                if data.strip():
                    if request.content_type != "application/json":
                        raise UnsupportedMediaType("send the body as Content-Type: application/json",
                                                   param="Content-Type")
                    raw_params = parse_json(data)
                if not isinstance(raw_params, dict):
                    raise InvalidRequest("the body must be a JSON object", code="invalid_json")
                _check_text(raw_params)
                body = _decode(raw_params, endpoint.body, strict=True, what="body")
            query: Any = None
            if endpoint.query is not None:
                params = dict(request.query)
                if len(params) != len(request.query):
                    repeated = next(k for k in params if len(request.query.getall(k)) > 1)
                    raise InvalidRequest(f"the query parameter {repeated} is repeated", code="invalid_parameter",
                                         param=repeated)
                _check_text(params)
                query = _decode(_fold_brackets(params, endpoint.query), endpoint.query, strict=False, what="query")
            result = await endpoint.handler(Call(request, svc, principal, body, query, raw_params, prefetched,
                                                 endpoint.idempotent))
            if isinstance(result, web.StreamResponse):
                return result
            if isinstance(result, Reply):
                headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
                return web.Response(body=result.body, status=result.status, content_type="application/json",
                                    headers=headers)
            return web.Response(body=msgspec.json.encode(result), status=endpoint.status,
                                content_type="application/json")

        return handle


api = Api()
