"""Settlement: operator runs, payouts and merchant settings; merchants' batches, payouts and reports."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api import schema
from gateway.api.routing import Call, api
from gateway.auth.principals import PrincipalKind as P
from gateway.services import settlement, views

SETTLEMENT = {"admin", "settlement"}


@api.route("POST", "/v1/operator/settlement_runs", summary="Close a business day (all merchants or one)",
           auth={P.OPERATOR}, roles=SETTLEMENT, body=schema.SettlementRun, response=views.SettlementRunView,
           tag="settlement", errors={400: ("invalid_date",), 404: ("resource_missing",), 503: ("settlement_busy",)})
async def start_run(call: Call[schema.SettlementRun, None]) -> Any:
    """Close the business day for every merchant or one: each merchant's captures and refunds of the day become
    a batch and a payout, written as files (pain.001, CSV)."""
    return await settlement.start_run(call.svc, call.body.date, call.body.merchant, call.identity())


@api.route("GET", "/v1/operator/settlement_runs/{id}/files/{name:.+}",
           summary="A file of the run: manifest.json, pain001.xml, payouts.csv, merchants/{id}/summary|detail.csv|json",
           auth={P.OPERATOR}, roles=SETTLEMENT, tag="settlement", produces="application/octet-stream")
async def run_file(call: Call[None, None]) -> Any:
    """A file of a settlement run by name: manifest.json, pain001.xml, payouts.csv, or a merchant's summary or
    detail report."""
    name = call.match("name")
    body = await settlement.run_file(call.svc, call.match("id"), name)
    kind = {"csv": "text/csv", "json": "application/json", "xml": "application/xml"}[name.rsplit(".", 1)[-1]]
    return web.Response(body=body, content_type=kind, charset="utf-8")


@api.route("POST", "/v1/operator/payouts/{id}/mark_paid", summary="Mark a payout paid (payable -> clearing)",
           auth={P.OPERATOR}, roles=SETTLEMENT, body=schema.Empty, response=views.PayoutView, tag="settlement",
           errors={409: ("payout_not_pending",)})
async def mark_paid(call: Call[schema.Empty, None]) -> Any:
    """Mark a pending payout paid once the bank executed it: the amount moves from payable to clearing."""
    return await settlement.mark_paid(call.svc, call.match("id"), call.identity())


@api.route("POST", "/v1/operator/merchants/{id}/settlement", summary="Set a merchant's time zone, cutoff, fixed fee",
           auth={P.OPERATOR}, roles=SETTLEMENT, body=schema.MerchantSettlement,
           response=views.MerchantSettlementView, tag="settlement",
           errors={400: ("invalid_settlement_setting", "invalid_fee")}, idempotent=False)
async def set_merchant_settlement(call: Call[schema.MerchantSettlement, None]) -> Any:
    """Set the time zone and cutoff that end a merchant's business day and its fixed fee per capture."""
    b = call.body
    return await settlement.set_merchant_settlement(call.svc, call.match("id"), b.timezone, b.settlement_cutoff,
                                                    b.fee_fixed, who=call.who)


@api.route("POST", "/v1/operator/merchants/{id}/payout_account", summary="Set a merchant's payout bank account",
           auth={P.OPERATOR}, roles=SETTLEMENT, body=schema.PayoutAccount, response=views.PayoutAccountView,
           status=201, tag="settlement", errors={400: ("invalid_account_number", "invalid_bic")}, idempotent=False)
async def set_payout_account(call: Call[schema.PayoutAccount, None]) -> Any:
    """Set the bank account a merchant's payouts go to; the number is stored masked and sealed."""
    b = call.body
    return await settlement.set_payout_account(call.svc, call.match("id"), b.holder_name, b.bank_name,
                                               b.account_number, b.bic, who=call.who)


@api.route("GET", "/v1/settlement_batches", summary="The merchant's settlement batches, newest first",
           auth={P.MERCHANT}, query=schema.PageQuery, response=views.SettlementBatchList, tag="settlement",
           errors={400: ("invalid_cursor",), 404: ("resource_missing",)})
async def list_batches(call: Call[None, schema.PageQuery]) -> Any:
    """The merchant's settlement batches, newest first, cursor paginated."""
    return await settlement.list_batches(call.svc, call.who, call.query.page())


@api.route("GET", "/v1/settlement_batches/{id}", summary="Retrieve a settlement batch",
           auth={P.MERCHANT, P.OPERATOR}, response=views.SettlementBatchView, tag="settlement")
async def get_batch(call: Call[None, None]) -> Any:
    """One settlement batch: its window, counts, amounts, fee, payout and carry."""
    return await settlement.get_batch(call.svc, call.who, call.match("id"))


@api.route("GET", "/v1/settlement_batches/{id}/report.csv", summary="A batch's detail report (CSV)",
           auth={P.MERCHANT, P.OPERATOR}, tag="settlement", produces="text/csv")
async def report_csv(call: Call[None, None]) -> Any:
    """A batch's detail report, one line per capture and refund, as CSV."""
    body = await settlement.batch_report(call.svc, call.who, call.match("id"), "csv")
    return web.Response(body=body, content_type="text/csv", charset="utf-8")


@api.route("GET", "/v1/settlement_batches/{id}/report.json", summary="A batch's detail report (JSON)",
           auth={P.MERCHANT, P.OPERATOR}, tag="settlement", produces="application/json")
async def report_json(call: Call[None, None]) -> Any:
    """A batch's detail report, one line per capture and refund, as JSON."""
    body = await settlement.batch_report(call.svc, call.who, call.match("id"), "json")
    return web.Response(body=body, content_type="application/json")


@api.route("GET", "/v1/payouts", summary="The merchant's payouts, newest first", auth={P.MERCHANT},
           query=schema.PageQuery, response=views.PayoutList, tag="settlement",
           errors={400: ("invalid_cursor",), 404: ("resource_missing",)})
async def list_payouts(call: Call[None, schema.PageQuery]) -> Any:
    """The merchant's payouts, newest first, cursor paginated."""
    return await settlement.list_payouts(call.svc, call.who, call.query.page())
