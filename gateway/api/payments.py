"""Merchant-facing payment endpoints and the wallet holder's pay endpoint."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import web

from gateway.api import schema
from gateway.api.routing import Call, api
from gateway.auth.principals import PrincipalKind as P
from gateway.domain.payments import CaptureMethod
from gateway.services import pay_codes, payments, qr, taps, views


@api.route("POST", "/v1/payments", summary="Create a payment", auth={P.MERCHANT, P.DEVICE}, body=schema.CreatePayment,
           response=views.PaymentView, status=201, tag="payments")
async def create(call: Call[schema.CreatePayment, None]) -> Any:
    b = call.body
    req = payments.NewPayment(
        amount=b.amount, currency=b.currency, capture_method=CaptureMethod(b.capture_method),  # type: ignore[arg-type]
        merchant_reference=b.merchant_reference, description=b.description, expires_in_s=b.expires_in, store=b.store,
        return_url=b.return_url, cancel_url=b.cancel_url, metadata=b.metadata,
    )
    return await payments.create(call.svc, call.who, req, call.identity())


@api.route("GET", "/v1/payments", summary="List payments, newest first", auth={P.MERCHANT, P.DEVICE},
           query=schema.PaymentQuery, response=views.PaymentList, tag="payments")
async def list_all(call: Call[None, schema.PaymentQuery]) -> Any:
    q = call.query
    return await payments.list_payments(call.svc, call.who, q.page(), payments.ListQuery(
        created_gte_s=q.created_gte, created_lt_s=q.created_lt, status=q.status,
        metadata=q.metadata, merchant_reference=q.merchant_reference))


@api.route("POST", "/v1/payments/{id}", summary="Update a payment's metadata (an empty value removes a key)",
           auth={P.MERCHANT, P.DEVICE}, body=schema.UpdatePayment, response=views.PaymentView, tag="payments")
async def update(call: Call[schema.UpdatePayment, None]) -> Any:
    return await payments.update(call.svc, call.who, call.match("id"), call.body.metadata, call.identity())


@api.route("GET", "/v1/payments/{id}", summary="Retrieve a payment (payers and publishable keys get the payer's view)",
           auth={P.MERCHANT, P.DEVICE, P.PUBLISHABLE, P.WALLET}, response=views.PaymentView, tag="payments")
async def retrieve(call: Call[None, None]) -> Any:
    return await payments.get(call.svc, call.who, call.match("id"))


@api.route("POST", "/v1/payments/{id}/capture", summary="Capture an authorised payment, fully or partly",
           auth={P.MERCHANT}, body=schema.CapturePayment, response=views.PaymentView, tag="payments")
async def capture(call: Call[schema.CapturePayment, None]) -> Any:
    amount = call.body.amount_to_capture
    return await payments.capture(call.svc, call.who, call.match("id"), amount, call.identity())  # type: ignore[arg-type]


@api.route("POST", "/v1/payments/{id}/cancel", summary="Cancel an unpaid or uncaptured payment (releases the hold)",
           auth={P.MERCHANT, P.DEVICE}, body=schema.CancelPayment, response=views.PaymentView, tag="payments")
async def cancel(call: Call[schema.CancelPayment, None]) -> Any:
    return await payments.cancel(call.svc, call.who, call.match("id"), call.identity())


@api.route("POST", "/v1/payments/{id}/refunds", summary="Refund a captured payment, fully or partly",
           auth={P.MERCHANT}, body=schema.CreateRefund, response=views.RefundView, status=201, tag="payments")
async def refund(call: Call[schema.CreateRefund, None]) -> Any:
    b = call.body
    return await payments.refund(call.svc, call.who, call.match("id"), b.amount, b.reason, call.identity(),  # type: ignore[arg-type]
                                 b.metadata)


def _refund_filter(q: schema.RefundQuery, payment: str | None, param: str) -> payments.ListQuery:
    return payments.ListQuery(created_gte_s=q.created_gte, created_lt_s=q.created_lt, status=q.status,
                              metadata=q.metadata, payment=payment, payment_param=param)


@api.route("GET", "/v1/payments/{id}/refunds", summary="List a payment's refunds, newest first", auth={P.MERCHANT},
           query=schema.RefundQuery, response=views.RefundList, tag="payments")
async def refunds(call: Call[None, schema.RefundQuery]) -> Any:
    return await payments.list_refunds(call.svc, call.who, call.query.page(), _refund_filter(call.query, call.match("id"), "id"))


@api.route("GET", "/v1/refunds", summary="List refunds, newest first", auth={P.MERCHANT},
           query=schema.RefundQuery, response=views.RefundList, tag="payments")
async def list_refunds(call: Call[None, schema.RefundQuery]) -> Any:
    return await payments.list_refunds(call.svc, call.who, call.query.page(), _refund_filter(call.query, call.query.payment,
                                                                                       "payment"))


@api.route("POST", "/v1/wallet/payments/{id}/pay", summary="Pay a payment from the holder's wallet",
           auth={P.WALLET}, body=schema.PayPayment, response=views.PayerPaymentView, tag="wallet")
async def pay(call: Call[schema.PayPayment, None]) -> Any:
    return await payments.pay(call.svc, call.who, call.match("id"), call.body.pin, call.identity())


@api.route("POST", "/v1/payments/{id}/qr_codes", summary="Issue a dynamic QR code for the payment (single use)",
           auth={P.MERCHANT, P.DEVICE}, body=schema.IssueQr, response=views.QrCodeView, status=201, tag="qr")
async def issue_qr(call: Call[schema.IssueQr, None]) -> Any:
    b = call.body
    return await qr.issue_dynamic(call.svc, call.who, call.match("id"), b.ttl, b.terminal_label, call.identity())


@api.route("GET", "/v1/stores/{id}/qr_code", summary="The store's static QR code (the payer enters the amount)",
           auth={P.MERCHANT}, query=schema.StaticQrQuery, response=views.QrCodeView, tag="qr")
async def static_qr(call: Call[None, schema.StaticQrQuery]) -> Any:
    return await qr.static_for_store(call.svc, call.who, call.match("id"), call.query.currency)


async def _image(call: Call[None, None], fmt: str) -> web.Response:
    body = await qr.image(call.svc, call.who, call.match("token"), fmt)
    content_type = "image/png" if fmt == "png" else "image/svg+xml"
    return web.Response(body=body, content_type=content_type, headers={"Cache-Control": "private, max-age=300"})


@api.route("GET", "/v1/qr_codes/{token}/image.png", summary="The QR code as a PNG image",
           auth={P.MERCHANT, P.DEVICE, P.PUBLISHABLE}, tag="qr", produces="image/png")
async def qr_png(call: Call[None, None]) -> Any:
    return await _image(call, "png")


@api.route("GET", "/v1/qr_codes/{token}/image.svg", summary="The QR code as an SVG image",
           auth={P.MERCHANT, P.DEVICE, P.PUBLISHABLE}, tag="qr", produces="image/svg+xml")
async def qr_svg(call: Call[None, None]) -> Any:
    return await _image(call, "svg")


@api.route("POST", "/v1/pay_code_charges", summary="Charge a scanned pay-code (may need the payer's PIN)",
           auth={P.MERCHANT, P.DEVICE}, body=schema.ChargePayCode, response=views.PaymentView, status=201, tag="pay_codes")
async def charge_pay_code(call: Call[schema.ChargePayCode, None]) -> Any:
    b = call.body
    req = pay_codes.Charge(pay_code=b.pay_code, amount=b.amount, currency=b.currency,  # type: ignore[arg-type]
                           merchant_reference=b.merchant_reference, description=b.description, store=b.store,
                           capture_method=CaptureMethod(b.capture_method), metadata=b.metadata)
    return await pay_codes.charge(call.svc, call.who, req, call.identity())


@api.route("POST", "/v1/payments/{id}/reverse", summary="Undo a sale: cancel if uncaptured, refund in full if captured",
           auth={P.MERCHANT, P.DEVICE}, body=schema.Empty, response=views.PaymentView, tag="payments")
async def reverse(call: Call[schema.Empty, None]) -> Any:
    return await payments.reverse(call.svc, call.who, call.match("id"), call.identity())


@api.route("POST", "/v1/tap_payments", summary="Authorise an NFC tap (idempotent by terminal_transaction_id)",
           auth={P.DEVICE}, body=schema.TapPayment, response=views.PaymentView, status=201, tag="taps")
async def tap(call: Call[schema.TapPayment, None]) -> Any:
    b = call.body
    # The terminal's transaction id IS the idempotency key (whatever header came with it): a tap
    # retried under any key replays the first answer.
    identity = replace(call.identity(), key=f"tap:{b.terminal_transaction_id}", prefetched=False)
    req = taps.TapRequest(terminal_transaction_id=b.terminal_transaction_id, amount=b.amount,  # type: ignore[arg-type]
                          currency=b.currency, merchant_reference=b.merchant_reference, tap=b.tap)
    return await taps.authorize(call.svc, call.who, req, identity)
