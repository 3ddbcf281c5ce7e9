"""OpenAPI 3.1 generated from the endpoint registry and the msgspec types it names.

Invariants: every operation names the credential kinds it accepts (one security scheme per kind),
has a description (the first paragraph of its handler's docstring), and lists the error answers
it can give: those its declaration implies (credentials, body, query, path ids, idempotency,
database) and those its use case raises (the route's ``errors``), each with the codes it may
carry and the one error body. Component names are the types' own names, never module-dotted.
"""

from __future__ import annotations

import inspect
import re
from collections import defaultdict
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from gateway.auth.principals import PrincipalKind
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.api.routing import Api, Endpoint


class ErrorDetail(msgspec.Struct):
    type: Literal["api_error", "invalid_request_error", "authentication_error", "permission_error", "card_error",
                  "idempotency_error", "rate_limit_error"]
    code: str
    message: str
    request_id: str | None
    param: str | None = None
    # Set by some refusals only: the payment's status (a refused transition), the cap of a
    # limit_exceeded decline, what remains refundable, the PIN tries left, the QR format error.
    status_now: str | None = None
    limit: Literal["balance_max", "payment_max", "daily_max"] | None = None
    limit_amount: int | None = None
    currency: str | None = None
    refundable_minor: int | None = None
    attempts_remaining: int | None = None
    qr_error: str | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


_STATUS_TEXT = {400: "Invalid request", 401: "Unauthenticated", 402: "Declined", 403: "Forbidden",
                404: "Not found", 409: "Conflict", 413: "Body too large", 415: "Unsupported media type",
                422: "Unprocessable", 429: "Rate limited", 503: "Unavailable"}

SCHEMES = {
    PrincipalKind.OPERATOR: ("operatorJwt", "JWT", "An operator's token from POST /v1/operator/sessions. The "
                             "operation's list names the operator roles it needs, if any."),
    PrincipalKind.MERCHANT: ("secretKey", "API key", "A merchant's secret API key, sk_test_... or sk_live_..."),
    PrincipalKind.PUBLISHABLE: ("publishableKey", "API key",
                                "A merchant's publishable API key, pk_test_... or pk_live_...: read-only checkout"),
    PrincipalKind.WALLET: ("walletJwt", "JWT", "A wallet holder's token from POST /v1/wallet/sessions"),
    PrincipalKind.DEVICE: ("deviceToken", "JWT", "An enrolled POS device's token from POST /v1/devices/enrolments "
                           "or POST /v1/devices/sessions"),
}

# The codes behind each error answer that a declaration implies (raised by routing.py, tenants.authenticate,
# the token verifier, the device principal and the store).
_CREDENTIALS = ("missing_credentials", "invalid_token", "token_expired", "credential_not_accepted")
_KEY_CREDENTIALS = ("invalid_api_key",)
_DEVICE_CREDENTIALS = ("device_revoked",)
_WALLET_CREDENTIALS = ("session_revoked",)
_BODY = ("invalid_json", "duplicate_key", "unknown_parameter", "invalid_parameter")
_QUERY = ("unknown_parameter", "invalid_parameter")
_IDEMPOTENCY_KEY = ("invalid_idempotency_key",)
_DATABASE = ("database_unavailable", "database_busy")
_RATE = ("rate_limited",)


def _declared_errors(ep: Endpoint) -> dict[int, list[str]]:
    found: dict[int, list[str]] = defaultdict(list)
    if ep.auth is not None:
        found[401] += _CREDENTIALS
        if ep.auth & {PrincipalKind.MERCHANT, PrincipalKind.PUBLISHABLE}:
            found[401] += _KEY_CREDENTIALS
        if ep.auth & {PrincipalKind.MERCHANT, PrincipalKind.PUBLISHABLE, PrincipalKind.DEVICE}:
            found[403].append("merchant_suspended")  # every credential of a suspended merchant
        if PrincipalKind.DEVICE in ep.auth:
            found[401] += _DEVICE_CREDENTIALS
        if PrincipalKind.WALLET in ep.auth:
            found[401] += _WALLET_CREDENTIALS
        if ep.roles is not None and PrincipalKind.OPERATOR in ep.auth:
            found[403].append("role_forbidden")
        found[429] += _RATE
    if ep.body is not None:
        found[400] += _BODY
        found[413].append("body_too_large")
        found[415].append("unsupported_media_type")
    if ep.query is not None:
        found[400] += _QUERY
    if _path_names(ep.path):
        found[404].append("resource_missing")
    if ep.idempotent:
        found[400] += _IDEMPOTENCY_KEY
        found[409].append("idempotency_key_in_use")
        found[422].append("idempotency_key_reused")
    if ep.database:
        found[503] += _DATABASE
    for status, codes in ep.errors.items():
        if isinstance(codes, tuple):
            found[status] += codes
    return {status: list(dict.fromkeys(codes)) for status, codes in sorted(found.items())}


def _path_names(path: str) -> list[str]:
    return re.findall(r"{(\w+)(?::[^}]*)?}", path)


def _openapi_path(path: str) -> str:
    """aiohttp's ``{name:regex}`` is ``{name}`` in OpenAPI."""
    return re.sub(r"{(\w+):[^}]*}", r"{\1}", path)


def _integers_only(schema: Any) -> Any:
    """Amounts are ``int | float`` in the body types only so that a fraction is refused with its own
    code (amount_too_precise); the contract is an integer, and the schema says so."""
    if isinstance(schema, dict):
        if schema.get("anyOf") == [{"type": "integer"}, {"type": "number"}]:
            rest = {k: v for k, v in schema.items() if k != "anyOf"}
            return {**rest, "type": "integer"}
        return {k: _integers_only(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_integers_only(item) for item in schema]
    return schema


def _description(ep: Endpoint) -> str | None:
    doc = inspect.getdoc(ep.handler)
    return doc.split("\n\n", 1)[0].replace("\n", " ") if doc else None


def _is_map(schema: dict[str, Any]) -> bool:
    """An object schema of free keys (a dict type), alone or beside null."""
    options = schema.get("anyOf", [schema])
    return any(o.get("type") == "object" and "additionalProperties" in o for o in options)


def _has_fields(kind: type | None) -> bool:
    return kind is not None and bool(msgspec.structs.fields(kind))


def _responses(ep: Endpoint) -> list[type]:
    if ep.response is None:
        return []
    return list(ep.response) if isinstance(ep.response, tuple) else [ep.response]


@lru_cache(maxsize=1)
def _render(api_id: int, api: Api) -> bytes:
    types: list[Any] = [ErrorBody]
    for ep in api.endpoints:
        types += [ep.body] if _has_fields(ep.body) else []
        types += _responses(ep)
        types += [t for t in ep.errors.values() if isinstance(t, type)]
        if ep.query is not None:
            types += [f.type for f in msgspec.structs.fields(ep.query)]
    schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    schemas, components = _integers_only(schemas), _integers_only(components)
    by_type = {id(t): s for t, s in zip(types, schemas, strict=True)}
    error_body = by_type[id(ErrorBody)]
    paths: dict[str, dict[str, Any]] = {}
    for ep in api.endpoints:
        op: dict[str, Any] = {"summary": ep.summary, "tags": ep.tags,
                              "operationId": ep.handler.__module__.rsplit(".", 1)[-1] + "_" + ep.handler.__name__}
        description = _description(ep)
        if description:
            op["description"] = description
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_names(ep.path)
        ]
        if ep.query is not None:
            for field in msgspec.structs.fields(ep.query):
                param = {"name": field.encode_name, "in": "query", "required": field.required,
                         "schema": by_type[id(field.type)]}
                if _is_map(param["schema"]):  # metadata[key]=value: one query parameter per key
                    param |= {"style": "deepObject", "explode": True}
                params.append(param)
        if ep.idempotent:
            params.append({"name": "Idempotency-Key", "in": "header", "required": False,
                           "schema": {"type": "string", "maxLength": 255},
                           "description": "Makes the request safe to retry: the first response is replayed."})
        if params:
            op["parameters"] = params
        if _has_fields(ep.body):
            assert ep.body is not None
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": by_type[id(ep.body)]}}}
        ok: dict[str, Any] = {"description": "OK"}
        answers = [by_type[id(t)] for t in _responses(ep)]
        if answers:
            ok["content"] = {"application/json": {"schema": answers[0] if len(answers) == 1 else {"oneOf": answers}}}
        elif ep.produces is not None:
            schema = {"type": "string"} if ep.produces.startswith("text/") else {"type": "string", "format": "binary"}
            ok["content"] = {ep.produces: {"schema": schema}}
        else:
            ok["content"] = {"application/json": {"schema": {"type": "object"}}}
        responses: dict[str, Any] = {str(ep.status): ok}
        for status, when in ep.also_ok.items():
            responses[str(status)] = {**ok, "description": when}
        for status, codes in _declared_errors(ep).items():
            answer: dict[str, Any] = {"description": f"{_STATUS_TEXT[status]}: {', '.join(codes)}",
                                      "content": {"application/json": {"schema": error_body}}}
            if status in (429, 503):
                answer["headers"] = {"Retry-After": {
                    "description": "Seconds to wait before retrying (a POST with the same Idempotency-Key)",
                    "schema": {"type": "integer"}}}
            responses[str(status)] = answer
        for status, kind in ep.errors.items():
            if isinstance(kind, type):
                responses[str(status)] = {"description": _STATUS_TEXT[status],
                                          "content": {"application/json": {"schema": by_type[id(kind)]}}}
        op["responses"] = dict(sorted(responses.items()))
        if ep.auth is not None:
            op["security"] = [
                {SCHEMES[kind][0]: sorted(ep.roles) if ep.roles and kind is PrincipalKind.OPERATOR else []}
                for kind in PrincipalKind if kind in ep.auth
            ]
        paths.setdefault(_openapi_path(ep.path), {})[ep.method.lower()] = op
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "Wallet payment gateway", "version": "1.0.0",
                 "description": "Amounts are integers in minor units of the currency. " + (GatewayError.__doc__ or "")},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {name: {"type": "http", "scheme": "bearer", "bearerFormat": fmt, "description": text}
                                for name, fmt, text in SCHEMES.values()},
        },
    }
    return msgspec.json.encode(doc)


def document(api: Api) -> bytes:
    return _render(id(api), api)
