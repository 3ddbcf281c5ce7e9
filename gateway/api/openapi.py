"""OpenAPI 3.1 generated from the endpoint registry and the msgspec types it names."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.api.routing import Api


class ErrorDetail(msgspec.Struct):
    type: str
    code: str
    message: str
    request_id: str | None
    param: str | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


_STATUS_TEXT = {400: "Invalid request", 401: "Unauthenticated", 402: "Declined", 403: "Forbidden",
                404: "Not found", 409: "Conflict", 413: "Body too large", 422: "Idempotency error",
                429: "Rate limited", 503: "Unavailable, retry with the same Idempotency-Key"}


@lru_cache(maxsize=1)
def _render(api_id: int, api: Api) -> bytes:
    types: list[Any] = [ErrorBody]
    for ep in api.endpoints:
        types += [t for t in (ep.body, ep.response) if t is not None]
    schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    by_type = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for ep in api.endpoints:
        op: dict[str, Any] = {"summary": ep.summary, "tags": ep.tags, "operationId": ep.handler.__module__.rsplit(".", 1)[-1] + "_" + ep.handler.__name__}
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", ep.path)
        ]
        if ep.query is not None:
            for field in msgspec.structs.fields(ep.query):
                schema = msgspec.json.schema(field.type)
                params.append({"name": field.encode_name, "in": "query", "required": field.required, "schema": schema})
        if ep.method == "POST":
            params.append({"name": "Idempotency-Key", "in": "header", "required": False,
                           "schema": {"type": "string", "maxLength": 255},
                           "description": "Makes the request safe to retry: the first response is replayed."})
        if params:
            op["parameters"] = params
        if ep.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": by_type[ep.body]}}}
        ok: dict[str, Any] = {"description": "OK"}
        if ep.response is not None:
            ok["content"] = {"application/json": {"schema": by_type[ep.response]}}
        elif ep.produces is not None:
            schema = {"type": "string"} if ep.produces.startswith("text/") else {"type": "string", "format": "binary"}
            ok["content"] = {ep.produces: {"schema": schema}}
        else:
            ok["content"] = {"application/json": {"schema": {"type": "object"}}}
        responses: dict[str, Any] = {str(ep.status): ok}
        for status, text in _STATUS_TEXT.items():
            responses[str(status)] = {"description": text, "content": {"application/json": {"schema": by_type[ErrorBody]}}}
        op["responses"] = responses
        if ep.auth is not None:
            op["security"] = [{"bearer": []}]
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "Wallet payment gateway", "version": "1.0.0",
                 "description": "Amounts are integers in minor units of the currency. " + (GatewayError.__doc__ or "")},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "Secret/publishable API key, or a JWT"}}},
    }
    return msgspec.json.encode(doc)


def document(api: Api) -> bytes:
    return _render(id(api), api)
