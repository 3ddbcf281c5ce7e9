"""Wallet holder endpoints."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.api import schema
from gateway.api.routing import Call, api
from gateway.auth.principals import PrincipalKind as P
from gateway.services import pay_codes, payments, pins, qr, sign_in, views, wallets
from gateway.services.idempotency import Reply


@api.route("POST", "/v1/wallet/holders", summary="Register a wallet holder; a code is sent to the phone",
           auth=None, body=schema.WalletLogin, response=sign_in.RegistrationView, status=201, tag="wallet",
           errors={400: ("invalid_phone", "weak_password"), 409: ("phone_taken",),
                   429: ("sign_in_codes_exhausted",), 503: ("code_sender_unavailable",)})
async def register(call: Call[schema.WalletLogin, None]) -> Any:
    """Register a wallet holder with a phone number and password. A one-time code is sent to the phone: verifying
    it (POST /v1/wallet/challenges/{id}/verify) proves the phone (verification level phone, tier 4) and signs the
    holder in, on device_id if given."""
    b = call.body
    return await wallets.register(call.svc, b.phone, b.password, b.device_id)


@api.route("POST", "/v1/wallet/sessions", summary="Log in: a token from a trusted device, else a code challenge",
           auth=None, body=schema.WalletLogin, response=(views.TokenView, sign_in.SignInChallengeView), status=201,
           tag="wallet", also_ok={202: "a sign_in_challenge instead of a token: the device is new to the holder (or"
                                       " the phone not proven yet); a code was sent to the phone"},
           errors={401: ("invalid_credentials",), 429: schema.SIGN_IN_CODES + ("sign_in_codes_exhausted",),
                   503: ("code_sender_unavailable",)})
async def login(call: Call[schema.WalletLogin, None]) -> Any:
    """Exchange a holder's phone and password for a short-lived wallet token (201) when device_id is a device the
    holder proved with a code; otherwise answer 202 with a sign_in_challenge (a code was sent to the phone) to
    verify at POST /v1/wallet/challenges/{id}/verify. device_id binds the token to the phone for pay-codes and
    taps. Failed attempts lock out for a while."""
    result = await wallets.login(call.svc, call.body.phone, call.body.password, call.body.device_id,
                                 call.client_address)
    if isinstance(result, sign_in.SignInChallengeView):
        return Reply(202, msgspec.json.encode(result))
    return result


@api.route("GET", "/v1/wallet", summary="The holder's balances per currency", auth={P.WALLET},
           response=views.WalletView, tag="wallet")
async def wallet(call: Call[None, None]) -> Any:
    """The holder (tier, PIN state, lock) and the wallet's balances per currency: available, held and total."""
    return await wallets.wallet(call.svc, call.who)


@api.route("POST", "/v1/wallet/bank_accounts", summary="Link a bank account (number stored masked and hashed)",
           auth={P.WALLET}, body=schema.LinkBankAccount, response=views.BankAccountView, status=201, tag="wallet",
           errors={400: ("invalid_bank_name", "invalid_account_number")}, idempotent=False)
async def link(call: Call[schema.LinkBankAccount, None]) -> Any:
    """Link a bank account for top-ups and withdrawals; the number is stored masked and hashed."""
    return await wallets.link_bank_account(call.svc, call.who, call.body.bank_name, call.body.account_number)


@api.route("GET", "/v1/wallet/bank_accounts", summary="Linked bank accounts", auth={P.WALLET},
           query=schema.PageQuery, response=views.BankAccountList, tag="wallet")
async def bank_accounts(call: Call[None, schema.PageQuery]) -> Any:
    """The holder's linked bank accounts, masked."""
    return await wallets.bank_accounts(call.svc, call.who, call.query.page())


def _transfer(kind: str, call: Call[schema.Transfer, None]) -> wallets.TransferRequest:
    b = call.body
    return wallets.TransferRequest(kind=kind, bank_account=b.bank_account, amount=b.amount, currency=b.currency)  # type: ignore[arg-type]


@api.route("POST", "/v1/wallet/top_ups", summary="Top up the wallet from a linked bank account", auth={P.WALLET},
           body=schema.Transfer, response=views.TransferView, status=201, tag="wallet",
           errors={400: schema.AMOUNT_CODES, 402: ("limit_exceeded", "currency_not_supported"),
                   404: ("resource_missing",)})
async def top_up(call: Call[schema.Transfer, None]) -> Any:
    """Move money from a linked bank account into the wallet, within the tier's balance cap."""
    return await wallets.transfer(call.svc, call.who, _transfer("top_up", call), call.identity())


@api.route("POST", "/v1/wallet/withdrawals", summary="Withdraw to a linked bank account", auth={P.WALLET},
           body=schema.Transfer, response=views.TransferView, status=201, tag="wallet",
           errors={400: schema.AMOUNT_CODES, 402: ("insufficient_funds", "currency_not_supported", "risk_declined"),
                   403: ("wallet_locked",), 404: ("resource_missing",)})
async def withdraw(call: Call[schema.Transfer, None]) -> Any:
    """Move money from the wallet to a linked bank account. A blocked wallet, or a blocked device (the
    session's), is declined (402 risk_declined, with the decision's id), nothing moved."""
    return await wallets.transfer(call.svc, call.who, _transfer("withdrawal", call), call.identity())


@api.route("GET", "/v1/wallet/transactions", summary="Wallet history, newest first, cursor paginated",
           auth={P.WALLET}, query=schema.HistoryQuery, response=views.TransactionList, tag="wallet",
           errors={400: ("invalid_currency", "invalid_cursor")})
async def history(call: Call[None, schema.HistoryQuery]) -> Any:
    """The wallet's postings, newest first: payments, refunds, top-ups and withdrawals, cursor paginated."""
    q = call.query
    return await wallets.history(call.svc, call.who, q.currency, q.page())


@api.route("POST", "/v1/wallet/pin", summary="Set or change the payment PIN (changing needs current_pin)",
           auth={P.WALLET}, body=schema.SetPin, response=views.WalletHolderView, tag="wallet",
           errors={400: ("invalid_pin",), 402: ("pin_required", "incorrect_pin"), 403: ("wallet_locked",)},
           idempotent=False)
async def set_pin(call: Call[schema.SetPin, None]) -> Any:
    """Set the payment PIN, or change it (current_pin is then needed). Wrong current PINs count towards the
    payment lock."""
    await pins.set_pin(call.svc, call.who.id, call.body.pin, call.body.current_pin)
    return (await wallets.wallet(call.svc, call.who)).holder


@api.route("POST", "/v1/wallet/qr/preview", summary="What a scanned QR code would pay: merchant, amount, expiry",
           auth={P.WALLET}, body=schema.QrPreview, response=views.QrPreviewView, tag="wallet",
           errors={400: ("invalid_qr_payload", "qr_code_altered", "qr_code_foreign"), 404: ("qr_code_unknown",),
                   409: ("qr_code_used", "qr_code_expired", "payment_canceled", "payment_expired")}, idempotent=False)
async def qr_preview(call: Call[schema.QrPreview, None]) -> Any:
    """What paying a scanned QR code would mean: merchant, store, amount (none for a static code), currency,
    expiry, and whether the PIN will be needed. Nothing is paid."""
    return await qr.preview(call.svc, call.who, call.body.payload)


@api.route("POST", "/v1/wallet/qr/pay", summary="Pay a scanned QR code (static codes need the amount)",
           auth={P.WALLET}, body=schema.QrPay, response=views.PayerPaymentView, tag="wallet",
           errors={400: schema.AMOUNT_CODES + ("invalid_qr_payload", "qr_code_altered", "qr_code_foreign",
                                                "amount_required", "amount_mismatch") + schema.FX_PAY_400,
                   402: schema.DECLINE_CODES + schema.STEP_UP_CODES, 403: ("wallet_locked",),
                   404: ("qr_code_unknown", "resource_missing"),
                   409: ("qr_code_used", "qr_code_expired", "payment_canceled", "payment_expired") + schema.FX_PAY_409})
async def qr_pay(call: Call[schema.QrPay, None]) -> Any:
    """Pay a scanned QR code from the wallet: a dynamic code pays its payment; a static code creates one for the
    amount given. With fx_quote (the preview's fx_offer.quote), from another currency at exactly that quote."""
    b = call.body
    return await qr.pay(call.svc, call.who, b.payload, b.amount, b.pin, call.identity(),  # type: ignore[arg-type]
                        fx_quote=b.fx_quote)


@api.route("POST", "/v1/wallet/pay_codes", summary="A one-time pay-code for the counter to scan (about a minute)",
           auth={P.WALLET}, body=schema.IssuePayCode, response=views.PayCodeView, status=201, tag="wallet",
           errors={400: ("device_required",), 409: ("pay_code_exhausted",)}, idempotent=False)
async def issue_pay_code(call: Call[schema.IssuePayCode, None]) -> Any:
    """A one-time pay-code (and its QR image) for the counter to scan, valid for about a minute and bound to the
    device the holder logged in with."""
    return await pay_codes.issue(call.svc, call.who, call.who.device_id)


@api.route("GET", "/v1/wallet/pending_payments", summary="Counter payments waiting for this holder's confirmation",
           auth={P.WALLET}, query=schema.PageQuery, response=views.PayerPaymentList, tag="wallet")
async def pending(call: Call[None, schema.PageQuery]) -> Any:
    """Counter payments of this holder that wait in requires_action for its confirmation (the PIN, or what a
    risk rule asked: the PIN or the one-time code)."""
    return await payments.awaiting_confirmation(call.svc, call.who, call.query.page())


@api.route("POST", "/v1/wallet/payments/{id}/confirm", summary="Confirm a counter payment (PIN, one-time code)",
           auth={P.WALLET}, body=schema.ConfirmPayment, response=views.PayerPaymentView, tag="wallet",
           errors={400: ("invalid_code_format",), 402: (*schema.STEP_UP_CODES, "risk_declined"),
                   403: ("wallet_locked", "incorrect_code", "challenge_dead"),
                   409: ("payment_not_confirmable", "confirmation_expired")})
async def confirm(call: Call[schema.ConfirmPayment, None]) -> Any:
    """Confirm a counter payment waiting for this holder: with the PIN above the PIN threshold or when a risk
    rule asked for it (wrong PINs count towards the payment lock); with the one-time code sent to the phone
    (otp) when a rule asked for one, unless its challenge was verified at
    POST /v1/wallet/risk_challenges/{id}/verify. Without it: 402 otp_required, naming the challenge. Each wrong
    code counts against the challenge. A block of the wallet or of the device (the code's, the session's)
    created since the charge declines it (402 risk_declined, with the decision's id): nothing is captured,
    the amount stays held until the charge is reversed at confirm_by."""
    b = call.body
    return await payments.confirm(call.svc, call.who, call.match("id"), b.pin, call.identity(), otp=b.otp)
