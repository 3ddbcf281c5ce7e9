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

# A tap or pay-code naming the sale's payment settles it (200); without one it creates its own (201).
SETTLED_SALE_PAYMENT = {200: "OK: the existing payment named by `payment` (the counter sale's) was settled"}


@api.route("POST", "/v1/payments", summary="Create a payment", auth={P.MERCHANT, P.DEVICE}, body=schema.CreatePayment,
           response=views.PaymentView, status=201, tag="payments",
           errors={400: schema.AMOUNT_CODES + ("invalid_expiry", "invalid_url", "invalid_url_scheme", "url_too_long",
                                                "cancel_url_without_return_url") + schema.METADATA_CODES,
                   404: ("resource_missing",)})
async def create(call: Call[schema.CreatePayment, None]) -> Any:
    """Create a payment for the payer to pay: by wallet, QR code, pay-code, tap or the hosted checkout page
    (return_url). It waits in requires_payment_method until paid or expired."""
    b = call.body
    req = payments.NewPayment(
        amount=b.amount, currency=b.currency, capture_method=CaptureMethod(b.capture_method),  # type: ignore[arg-type]
        merchant_reference=b.merchant_reference, description=b.description, expires_in_s=b.expires_in, store=b.store,
        return_url=b.return_url, cancel_url=b.cancel_url, metadata=b.metadata,
    )
    return await payments.create(call.svc, call.who, req, call.identity())


@api.route("GET", "/v1/payments", summary="List payments, newest first", auth={P.MERCHANT, P.DEVICE},
           query=schema.PaymentQuery, response=views.PaymentList, tag="payments", errors={400: ("invalid_cursor",)})
async def list_all(call: Call[None, schema.PaymentQuery]) -> Any:
    """The merchant's payments, newest first, cursor paginated (starting_after, ending_before); a device sees
    its merchant's too (it changes only those made at its terminal)."""
    q = call.query
    return await payments.list_payments(call.svc, call.who, q.page(), payments.ListQuery(
        created_gte_s=q.created_gte, created_lt_s=q.created_lt, status=q.status,
        metadata=q.metadata, merchant_reference=q.merchant_reference))


@api.route("POST", "/v1/payments/{id}", summary="Update a payment's metadata (an empty value removes a key)",
           auth={P.MERCHANT, P.DEVICE}, body=schema.UpdatePayment, response=views.PaymentView, tag="payments",
           errors={400: schema.METADATA_CODES})
async def update(call: Call[schema.UpdatePayment, None]) -> Any:
    """Set, change or remove (an empty value) keys of the payment's metadata; the other keys stay."""
    return await payments.update(call.svc, call.who, call.match("id"), call.body.metadata, call.identity())


@api.route("GET", "/v1/payments/{id}", summary="Retrieve a payment (payers and publishable keys get the payer's view)",
           auth={P.MERCHANT, P.DEVICE, P.PUBLISHABLE, P.WALLET}, response=(views.PaymentView, views.PayerPaymentView),
           tag="payments")
async def retrieve(call: Call[None, None]) -> Any:
    """One payment. The merchant and its devices get the full view; a publishable key and the wallet holder who
    pays get the payer's view (no fees, no merchant internals)."""
    return await payments.get(call.svc, call.who, call.match("id"))


@api.route("POST", "/v1/payments/{id}/capture", summary="Capture an authorised payment, fully or partly",
           auth={P.MERCHANT}, body=schema.CapturePayment, response=views.PaymentView, tag="payments",
           errors={400: schema.AMOUNT_CODES, 409: ("payment_not_capturable", "authorization_expired")})
async def capture(call: Call[schema.CapturePayment, None]) -> Any:
    """Capture an authorised manual-capture payment, all of the authorisation or part of it (amount_to_capture);
    the rest is released."""
    amount = call.body.amount_to_capture
    return await payments.capture(call.svc, call.who, call.match("id"), amount, call.identity())  # type: ignore[arg-type]


@api.route("POST", "/v1/payments/{id}/cancel", summary="Cancel an unpaid or uncaptured payment (releases the hold)",
           auth={P.MERCHANT, P.DEVICE}, body=schema.CancelPayment, response=views.PaymentView, tag="payments",
           errors={409: ("payment_not_cancelable",)})
async def cancel(call: Call[schema.CancelPayment, None]) -> Any:
    """Cancel a payment that is not paid or not captured yet; a hold on the payer's wallet is released."""
    return await payments.cancel(call.svc, call.who, call.match("id"), call.identity())


@api.route("POST", "/v1/payments/{id}/refunds", summary="Refund a captured payment, fully or partly",
           auth={P.MERCHANT, P.DEVICE}, body=schema.CreateRefund, response=views.RefundView, status=201, tag="payments",
           errors={400: schema.AMOUNT_CODES + schema.METADATA_CODES,
                   409: ("payment_not_refundable", "payment_fully_refunded")})
async def refund(call: Call[schema.CreateRefund, None]) -> Any:
    """Refund a captured payment to the payer's wallet, all of what remains or part of it (amount); the fee is
    returned in proportion."""
    b = call.body
    return await payments.refund(call.svc, call.who, call.match("id"), b.amount, b.reason, call.identity(),  # type: ignore[arg-type]
                                 b.metadata)


def _refund_filter(q: schema.RefundQuery, payment: str | None, param: str) -> payments.ListQuery:
    return payments.ListQuery(created_gte_s=q.created_gte, created_lt_s=q.created_lt, status=q.status,
                              metadata=q.metadata, payment=payment, payment_param=param)


@api.route("GET", "/v1/payments/{id}/refunds", summary="List a payment's refunds, newest first", auth={P.MERCHANT},
           query=schema.RefundQuery, response=views.RefundList, tag="payments", errors={400: ("invalid_cursor",)})
async def refunds(call: Call[None, schema.RefundQuery]) -> Any:
    """The payment's refunds, newest first, cursor paginated; filters: created[gte|lt], status, metadata."""
    return await payments.list_refunds(call.svc, call.who, call.query.page(), _refund_filter(call.query, call.match("id"), "id"))


@api.route("GET", "/v1/refunds", summary="List refunds, newest first", auth={P.MERCHANT},
           query=schema.RefundQuery, response=views.RefundList, tag="payments", errors={400: ("invalid_cursor",)})
async def list_refunds(call: Call[None, schema.RefundQuery]) -> Any:
    """The merchant's refunds, newest first, cursor paginated; filters: payment, created[gte|lt], status,
    metadata."""
    return await payments.list_refunds(call.svc, call.who, call.query.page(), _refund_filter(call.query, call.query.payment,
                                                                                       "payment"))


@api.route("POST", "/v1/wallet/payments/{id}/pay", summary="Pay a payment from the holder's wallet",
           auth={P.WALLET}, body=schema.PayPayment, response=views.PayerPaymentView, tag="wallet",
           errors={400: schema.FX_PAY_400, 402: schema.DECLINE_CODES + schema.STEP_UP_CODES, 403: ("wallet_locked",),
                   409: ("payment_not_payable", "payment_expired") + schema.FX_PAY_409})
async def pay(call: Call[schema.PayPayment, None]) -> Any:
    """Pay the payment from the holder's wallet balance in its currency. Amounts above the holder's PIN
    threshold need the PIN. With fx_quote (the payer view's fx_offer.quote, or any quote of the holder into
    the payment's currency for at least its amount), from another currency through that quote, honoured once."""
    return await payments.pay(call.svc, call.who, call.match("id"), call.body.pin, call.identity(),
                              fx_quote=call.body.fx_quote)


@api.route("POST", "/v1/payments/{id}/qr_codes", summary="Issue a dynamic QR code for the payment (single use)",
           auth={P.MERCHANT, P.DEVICE}, body=schema.IssueQr, response=views.QrCodeView, status=201, tag="qr",
           errors={400: ("invalid_ttl", "qr_not_encodable"), 409: ("payment_not_payable",)})
async def issue_qr(call: Call[schema.IssueQr, None]) -> Any:
    """A dynamic EMV QR code for this payment (amount inside, single use), with links to its PNG and SVG images."""
    b = call.body
    return await qr.issue_dynamic(call.svc, call.who, call.match("id"), b.ttl, b.terminal_label, call.identity())


@api.route("GET", "/v1/stores/{id}/qr_code", summary="The store's static QR code (the payer enters the amount)",
           auth={P.MERCHANT}, query=schema.StaticQrQuery, response=views.QrCodeView, tag="qr",
           errors={400: ("invalid_currency", "qr_not_encodable"), 409: ("static_code_currency",)})
async def static_qr(call: Call[None, schema.StaticQrQuery]) -> Any:
    """The store's static EMV QR code in a currency: the payer scans it and enters the amount."""
    return await qr.static_for_store(call.svc, call.who, call.match("id"), call.query.currency)


async def _image(call: Call[None, None], fmt: str) -> web.Response:
    body = await qr.image(call.svc, call.who, call.match("token"), fmt)
    content_type = "image/png" if fmt == "png" else "image/svg+xml"
    return web.Response(body=body, content_type=content_type, headers={"Cache-Control": "private, max-age=300"})


@api.route("GET", "/v1/qr_codes/{token}/image.png", summary="The QR code as a PNG image",
           auth={P.MERCHANT, P.DEVICE, P.PUBLISHABLE}, tag="qr", produces="image/png",
           errors={404: ("qr_code_unknown",)})
async def qr_png(call: Call[None, None]) -> Any:
    """The QR code's image as PNG."""
    return await _image(call, "png")


@api.route("GET", "/v1/qr_codes/{token}/image.svg", summary="The QR code as an SVG image",
           auth={P.MERCHANT, P.DEVICE, P.PUBLISHABLE}, tag="qr", produces="image/svg+xml",
           errors={404: ("qr_code_unknown",)})
async def qr_svg(call: Call[None, None]) -> Any:
    """The QR code's image as SVG."""
    return await _image(call, "svg")


@api.route("POST", "/v1/pay_code_charges", summary="Charge a scanned pay-code (may need the payer's PIN)",
           auth={P.MERCHANT, P.DEVICE}, body=schema.ChargePayCode, response=views.PaymentView, status=201, tag="pay_codes",
           also_ok=SETTLED_SALE_PAYMENT,
           errors={400: schema.AMOUNT_CODES + schema.METADATA_CODES + schema.SALE_PAYMENT_CODES + ("pay_code_foreign",),
                   402: schema.DECLINE_CODES, 403: ("wallet_locked",),
                   404: ("pay_code_unknown", "resource_missing"),
                   409: ("pay_code_used", "pay_code_expired", "payment_not_payable")})
async def charge_pay_code(call: Call[schema.ChargePayCode, None]) -> Any:
    """Create a payment and pay it with the pay-code a wallet shows, scanned at the counter. Above the holder's
    PIN threshold, or when a risk rule asks for the PIN or a one-time code, the payment waits in requires_action
    (the amount held) for the holder to confirm it in the app; poll it for its final status."""
    b = call.body
    req = pay_codes.Charge(pay_code=b.pay_code, amount=b.amount, currency=b.currency,  # type: ignore[arg-type]
                           merchant_reference=b.merchant_reference, description=b.description, store=b.store,
                           capture_method=CaptureMethod(b.capture_method) if b.capture_method else None,
                           payment=b.payment, metadata=b.metadata)
    return await pay_codes.charge(call.svc, call.who, req, call.identity())


@api.route("POST", "/v1/payments/{id}/reverse", summary="Undo a sale: cancel if uncaptured, refund in full if captured",
           auth={P.MERCHANT, P.DEVICE}, body=schema.Empty, response=views.PaymentView, tag="payments")
async def reverse(call: Call[schema.Empty, None]) -> Any:
    """Undo a sale whatever it reached, for a counter that cannot know the outcome of a charge: cancel it if
    nothing was captured, refund the rest if it was."""
    return await payments.reverse(call.svc, call.who, call.match("id"), call.identity())


@api.route("POST", "/v1/tap_payments", summary="Authorise an NFC tap (idempotent by terminal_transaction_id)",
           auth={P.DEVICE}, body=schema.TapPayment, response=views.PaymentView, status=201, tag="taps",
           also_ok=SETTLED_SALE_PAYMENT,
           errors={400: schema.AMOUNT_CODES + ("invalid_tap_data", "amount_mismatch", "merchant_reference_mismatch"),
                   402: schema.DECLINE_CODES + ("cryptogram_invalid", "atc_replayed", "amount_mismatch",
                                                "tap_token_unknown", "tap_token_revoked"),
                   403: ("wallet_locked",), 404: ("resource_missing",),
                   409: ("payment_not_payable", "terminal_transaction_id_used"), 503: ("taps_not_configured",)})
async def tap(call: Call[schema.TapPayment, None]) -> Any:
    """Authorise an NFC tap from an enrolled device: the card cryptogram (ARQC) is verified and its counter must
    move forward. The terminal's transaction id is the idempotency key."""
    b = call.body
    # The terminal's transaction id IS the idempotency key (whatever header came with it): a tap
    # retried under any key replays the first answer.
    identity = replace(call.identity(), key=f"tap:{b.terminal_transaction_id}", prefetched=False)
    req = taps.TapRequest(terminal_transaction_id=b.terminal_transaction_id, amount=b.amount,  # type: ignore[arg-type]
                          currency=b.currency, merchant_reference=b.merchant_reference, tap=b.tap,
                          payment=b.payment)
    return await taps.authorize(call.svc, call.who, req, identity)
