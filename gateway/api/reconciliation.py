"""Operator reconciliation: import a bank statement, list the exceptions, resolve one.

The statement travels as JSON, ``{"format": "camt053"|"csv"|null, "content_base64": "..."}``, so
the one strict JSON body rule holds for every route (no raw-body route type); this route alone
takes a larger body (``reconciliation.api_body_max_bytes``), and the decoded file is capped again
(``reconciliation.statement_max_bytes``) before it is parsed.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

import msgspec

from gateway.api import schema
from gateway.api.routing import Call, api
from gateway.auth.principals import PrincipalKind as P
from gateway.errors import InvalidRequest
from gateway.services import reconciliation
from gateway.services.context import Services

RESOLVERS = set(reconciliation.RESOLVER_ROLES)
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
Ref = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class ImportStatement(schema.Strict):
    content_base64: str
    format: Literal["camt053", "csv"] | None = None


class ExceptionQuery(schema.PageQuery):
    limit: schema.Limit = 20
    status: Literal["open", "resolved", "cleared"] | None = None
    kind: Literal["missing_at_bank", "amount_mismatch", "unknown_entry", "duplicate_entry"] | None = None
    currency: schema.Currency | None = None


class Resolve(schema.Strict):
    action: Literal["match", "write_off", "reopen"]
    reason: Reason
    bank_entries: Annotated[list[Ref], msgspec.Meta(max_length=100)] | None = None
    references: Annotated[list[Ref], msgspec.Meta(max_length=100)] | None = None


def _body_max(svc: Services) -> int:
    return svc.settings.reconciliation.api_body_max_bytes


@api.route("POST", "/v1/operator/bank_statements", summary="Import a bank statement (camt.053 or CSV) and match it",
           auth={P.OPERATOR}, roles=RESOLVERS, body=ImportStatement, response=reconciliation.ImportSummary,
           status=201, tag="reconciliation", body_max=_body_max,
           errors={400: ("invalid_parameter",), 413: ("statement_too_large",),
                   422: ("malformed_statement", "hostile_xml")})
async def import_statement(call: Call[ImportStatement, None]) -> Any:
    """Import a bank statement (camt.053 XML or CSV, base64 in JSON), match its entries against expected
    movements, and open exceptions for what does not match. A statement imported again changes nothing."""
    try:
        data = base64.b64decode(call.body.content_base64, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("content_base64 is not base64", code="invalid_parameter", param="content_base64") from None
    return await reconciliation.import_statement(call.svc, call.who, data, call.body.format, call.identity())


@api.route("GET", "/v1/operator/reconciliation/exceptions", summary="List reconciliation exceptions, newest first",
           auth={P.OPERATOR}, query=ExceptionQuery, response=reconciliation.ExceptionList, tag="reconciliation",
           errors={400: ("invalid_currency",)})
async def list_exceptions(call: Call[None, ExceptionQuery]) -> Any:
    """Reconciliation exceptions, newest first, filtered by status, kind and currency, cursor paginated."""
    q = call.query
    return await reconciliation.list_exceptions(call.svc, q.status, q.kind, q.currency, q.page())


@api.route("GET", "/v1/operator/reconciliation/exceptions/{id}", summary="Retrieve an exception and its actions",
           auth={P.OPERATOR}, response=reconciliation.ExceptionView, tag="reconciliation")
async def get_exception(call: Call[None, None]) -> Any:
    """One reconciliation exception with the operator actions taken on it."""
    return await reconciliation.get_exception(call.svc, call.match("id"))


@api.route("POST", "/v1/operator/reconciliation/exceptions/{id}/resolve",
           summary="Resolve an exception: match by hand, write off with a reason, or reopen",
           auth={P.OPERATOR}, roles=RESOLVERS, body=Resolve, response=reconciliation.ExceptionView,
           tag="reconciliation",
           errors={409: ("invalid_state_transition", "already_matched", "amounts_differ", "nothing_to_resolve",
                "nothing_to_write_off")})
async def resolve(call: Call[Resolve, None]) -> Any:
    """Resolve an exception: match bank entries and expected movements by hand, write the difference off with a
    reason, or reopen a resolved one."""
    b = call.body
    return await reconciliation.resolve(call.svc, call.who, call.match("id"), b.action, b.reason, b.bank_entries,
                                        b.references, call.identity())
