"""/openapi.json as a client generator reads it: valid OpenAPI 3.1, every component named once by its
own name, integer amounts, enums for statuses, RFC 3339 timestamps, one security scheme per kind of
credential, and per operation its description and the error answers its declaration implies."""

from __future__ import annotations

import inspect
import json
import pathlib
import re
from collections import defaultdict
from typing import Any, get_args

import msgspec
import pytest
from openapi_spec_validator import validate

import gateway.app  # noqa: F401  (registers every route)
from gateway.api import openapi
from gateway.api.routing import Endpoint, api
from gateway.auth.principals import PrincipalKind
from gateway.domain import payments
from gateway.services import views

DOC: dict[str, Any] = json.loads(openapi.document(api))
SCHEMAS: dict[str, Any] = DOC["components"]["schemas"]
GATEWAY = pathlib.Path(gateway.app.__file__).parent


def _operation(ep: Endpoint) -> dict[str, Any]:
    return DOC["paths"][re.sub(r"{(\w+):[^}]*}", r"{\1}", ep.path)][ep.method.lower()]


def _properties() -> list[tuple[str, str, dict[str, Any]]]:
    return [(component, name, schema) for component, body in SCHEMAS.items()
            for name, schema in body.get("properties", {}).items()]


def _variants(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """A property's schemas without the ``null`` of an optional one."""
    return [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"] == "3.1.0"
    validate(DOC)


def test_every_component_is_named_by_its_type_alone_and_once() -> None:
    assert [name for name in SCHEMAS if "." in name] == []
    by_name: dict[str, set[type]] = defaultdict(set)
    for ep in api.endpoints:
        responses = ep.response if isinstance(ep.response, tuple) else (ep.response,)
        for kind in (ep.body, *responses):
            if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
                by_name[kind.__name__].add(kind)
    assert {name: kinds for name, kinds in by_name.items() if len(kinds) > 1} == {}
    referenced = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(DOC)))
    assert referenced <= set(SCHEMAS)


def test_amounts_are_integers_and_nothing_is_a_float() -> None:
    assert '"number"' not in json.dumps(DOC)
    amounts = [(c, n, s) for c, n, s in _properties() if n == "amount" or n.startswith("amount_")]
    assert len(amounts) > 10
    for component, name, schema in amounts:
        assert [v.get("type") for v in _variants(schema)] == ["integer"], (component, name, schema)


def test_a_post_without_fields_declares_no_body() -> None:
    bodiless = [ep for ep in api.endpoints if ep.body is not None and not msgspec.structs.fields(ep.body)]
    assert {ep.path for ep in bodiless} >= {"/v1/payments/{id}/reverse", "/v1/wallet/pay_codes"}
    for ep in api.endpoints:
        has_body = ep.body is not None and bool(msgspec.structs.fields(ep.body))
        assert ("requestBody" in _operation(ep)) == has_body, (ep.method, ep.path)
    assert "Empty" not in SCHEMAS


def test_retrieving_a_payment_answers_the_full_or_the_payer_view() -> None:
    ok = DOC["paths"]["/v1/payments/{id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"oneOf": [{"$ref": "#/components/schemas/PaymentView"},
                            {"$ref": "#/components/schemas/PayerPaymentView"}]}


def test_every_status_is_an_enum_and_payment_statuses_are_the_domain_ones() -> None:
    statuses = [(c, s) for c, n, s in _properties() if n == "status"]
    assert len(statuses) >= 12
    for component, schema in statuses:
        assert all("enum" in v for v in _variants(schema)), (component, schema)
    assert set(get_args(views.PaymentStatus)) == {s.value for s in payments.Status}
    assert set(get_args(views.CaptureMethod)) == {m.value for m in payments.CaptureMethod}


def test_answers_timestamps_are_date_time_and_dates_are_dates() -> None:
    bodies = {ep.body.__name__ for ep in api.endpoints if ep.body is not None}  # requests carry their own text
    stamps = [(c, n, s) for c, n, s in _properties()
              if c not in bodies and (n.endswith("_at") or n in ("window_start", "window_end"))]
    assert len(stamps) > 30
    for component, name, schema in stamps:
        assert [v.get("format") for v in _variants(schema)] == ["date-time"], (component, name)
    for component, name, schema in _properties():
        if name.endswith("_date"):
            assert [v.get("format") for v in _variants(schema)] == ["date"], (component, name)
    created = SCHEMAS["EventView"]["properties"]["created"]
    assert created["type"] == "integer" and created["format"] == "unix-time"


def test_one_security_scheme_per_credential_kind_and_each_operation_names_its_own() -> None:
    schemes = DOC["components"]["securitySchemes"]
    assert sorted(schemes) == sorted(name for name, _, _ in openapi.SCHEMES.values())
    assert len(schemes) == len(PrincipalKind)
    for ep in api.endpoints:
        op = _operation(ep)
        if ep.auth is None:
            assert "security" not in op, ep.path
            continue
        named = {name: roles for requirement in op["security"] for name, roles in requirement.items()}
        assert set(named) == {openapi.SCHEMES[kind][0] for kind in ep.auth}, ep.path
        if ep.roles and PrincipalKind.OPERATOR in ep.auth:
            assert named["operatorJwt"] == sorted(ep.roles), ep.path
    wallet_only = DOC["paths"]["/v1/wallet"]["get"]["security"]
    assert wallet_only == [{"walletJwt": []}]


def test_every_operation_has_a_description_from_its_docstring() -> None:
    for ep in api.endpoints:
        doc = inspect.getdoc(ep.handler)
        assert doc, f"{ep.handler.__module__}.{ep.handler.__name__} has no docstring"
        assert _operation(ep)["description"] == doc.split("\n\n", 1)[0].replace("\n", " ")


def test_errors_follow_the_declaration() -> None:
    for ep in api.endpoints:
        op = _operation(ep)
        answers = {int(status) for status in op["responses"]}
        where = (ep.method, ep.path)
        if ep.auth is not None:
            assert {401, 429} <= answers, where
        if ep.roles is not None:
            assert 403 in answers, where
        if ep.body is not None:
            assert {400, 413, 415} <= answers, where
        assert (400 in answers) == (ep.body is not None or ep.query is not None or ep.idempotent
                                    or 400 in ep.errors), where
        if "{" in ep.path:
            assert 404 in answers, where
        header = [p for p in op.get("parameters", []) if p["name"] == "Idempotency-Key"]
        assert bool(header) == ep.idempotent, where
        if ep.idempotent:
            assert {409, 422} <= answers, where
        assert (503 in answers) == (ep.database or 503 in ep.errors), where
        for status, answer in op["responses"].items():
            if int(status) >= 400:
                declared = ep.errors.get(int(status))
                body = declared.__name__ if isinstance(declared, type) else "ErrorBody"
                assert answer["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{body}"}
    pay = DOC["paths"]["/v1/wallet/payments/{id}/pay"]["post"]["responses"]
    assert "insufficient_funds" in pay["402"]["description"]
    assert "Retry-After" in pay["503"]["headers"]
    assert set(DOC["paths"]["/healthz"]["get"]["responses"]) == {"200"}


def test_a_route_is_declared_idempotent_exactly_when_its_handler_builds_a_request_identity() -> None:
    for ep in api.endpoints:
        assert ("call.identity()" in inspect.getsource(ep.handler)) == ep.idempotent, (ep.method, ep.path)


@pytest.mark.parametrize("code", sorted({code for ep in api.endpoints for codes in ep.errors.values()
                                         if isinstance(codes, tuple) for code in codes}))
def test_every_declared_error_code_is_one_the_gateway_raises(code: str) -> None:
    source = "\n".join(path.read_text() for path in GATEWAY.rglob("*.py") if "api" not in path.parts)
    dynamic = {"payment_canceled", "payment_expired"}  # qr.py: f"payment_{status}"
    assert f'"{code}"' in source or code in dynamic, code


def test_metadata_search_is_a_deep_object_query_parameter() -> None:
    """``metadata[order_id]=123``: the list endpoints that search metadata declare it as a deepObject."""
    searched = [(path, method, p) for path, item in DOC["paths"].items() for method, op in item.items()
                for p in op.get("parameters", []) if p["in"] == "query" and p["name"] == "metadata"]
    assert {path for path, _, _ in searched} >= {"/v1/payments", "/v1/refunds", "/v1/payments/{id}/refunds"}
    for path, method, param in searched:
        assert (param.get("style"), param.get("explode")) == ("deepObject", True), (path, method)
    plain = [p for item in DOC["paths"].values() for op in item.values() for p in op.get("parameters", [])
             if p["in"] == "query" and p["name"] != "metadata"]
    assert plain and all("style" not in p for p in plain)


def test_counter_charges_declare_both_answers_created_and_settled() -> None:
    """A tap or a pay-code charge creates its payment (201) or settles the sale's existing one (200)."""
    for path in ("/v1/tap_payments", "/v1/pay_code_charges"):
        ok = {status: answer for status, answer in DOC["paths"][path]["post"]["responses"].items()
              if status.startswith("2")}
        assert set(ok) == {"200", "201"}, path
        assert ok["200"]["content"] == ok["201"]["content"]
