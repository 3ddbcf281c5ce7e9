"""Wallet holder endpoints."""

from __future__ import annotations

from typing import Any

from gateway.api import schema
from gateway.api.routing import Call, api
from gateway.auth.principals import PrincipalKind as P
from gateway.services import pay_codes, payments, pins, qr, views, wallets


@api.route("POST", "/v1/wallet/holders", summary="Register a wallet holder", auth=None,
           body=schema.WalletCredentials, response=views.WalletHolderView, status=201, tag="wallet")
async def register(call: Call[schema.WalletCredentials, None]) -> Any:
    return await wallets.register(call.svc, call.body.phone, call.body.password)


@api.route("POST", "/v1/wallet/sessions", summary="Log in; returns a short-lived wallet token", auth=None,
           body=schema.WalletLogin, response=views.TokenView, status=201, tag="wallet")
async def login(call: Call[schema.WalletLogin, None]) -> Any:
    return await wallets.login(call.svc, call.body.phone, call.body.password, call.body.device_id, call.client_address)


@api.route("GET", "/v1/wallet", summary="The holder's balances per currency", auth={P.WALLET},
           response=views.WalletView, tag="wallet")
async def wallet(call: Call[None, None]) -> Any:
    return await wallets.wallet(call.svc, call.who)


@api.route("POST", "/v1/wallet/bank_accounts", summary="Link a bank account (number stored masked and hashed)",
           auth={P.WALLET}, body=schema.LinkBankAccount, response=views.BankAccountView, status=201, tag="wallet")
async def link(call: Call[schema.LinkBankAccount, None]) -> Any:
    return await wallets.link_bank_account(call.svc, call.who, call.body.bank_name, call.body.account_number)


@api.route("GET", "/v1/wallet/bank_accounts", summary="Linked bank accounts", auth={P.WALLET},
           query=schema.PageQuery, response=views.BankAccountList, tag="wallet")
async def bank_accounts(call: Call[None, schema.PageQuery]) -> Any:
    return await wallets.bank_accounts(call.svc, call.who, call.query.page())


def _transfer(kind: str, call: Call[schema.Transfer, None]) -> wallets.TransferRequest:
    b = call.body
    return wallets.TransferRequest(kind=kind, bank_account=b.bank_account, amount=b.amount, currency=b.currency)  # type: ignore[arg-type]


@api.route("POST", "/v1/wallet/top_ups", summary="Top up the wallet from a linked bank account", auth={P.WALLET},
           body=schema.Transfer, response=views.TransferView, status=201, tag="wallet")
async def top_up(call: Call[schema.Transfer, None]) -> Any:
    return await wallets.transfer(call.svc, call.who, _transfer("top_up", call), call.identity())


@api.route("POST", "/v1/wallet/withdrawals", summary="Withdraw to a linked bank account", auth={P.WALLET},
           body=schema.Transfer, response=views.TransferView, status=201, tag="wallet")
async def withdraw(call: Call[schema.Transfer, None]) -> Any:
    return await wallets.transfer(call.svc, call.who, _transfer("withdrawal", call), call.identity())


@api.route("GET", "/v1/wallet/transactions", summary="Wallet history, newest first, cursor paginated",
           auth={P.WALLET}, query=schema.HistoryQuery, response=views.TransactionList, tag="wallet")
async def history(call: Call[None, schema.HistoryQuery]) -> Any:
    q = call.query
    return await wallets.history(call.svc, call.who, q.currency, q.page())


@api.route("POST", "/v1/wallet/pin", summary="Set or change the payment PIN (changing needs current_pin)",
           auth={P.WALLET}, body=schema.SetPin, response=views.WalletHolderView, tag="wallet")
async def set_pin(call: Call[schema.SetPin, None]) -> Any:
    await pins.set_pin(call.svc, call.who.id, call.body.pin, call.body.current_pin)
    return (await wallets.wallet(call.svc, call.who)).holder


@api.route("POST", "/v1/wallet/qr/preview", summary="What a scanned QR code would pay: merchant, amount, expiry",
           auth={P.WALLET}, body=schema.QrPreview, response=views.QrPreview, tag="wallet")
async def qr_preview(call: Call[schema.QrPreview, None]) -> Any:
    return await qr.preview(call.svc, call.who, call.body.payload)


@api.route("POST", "/v1/wallet/qr/pay", summary="Pay a scanned QR code (static codes need the amount)",
           auth={P.WALLET}, body=schema.QrPay, response=views.PayerPaymentView, tag="wallet")
async def qr_pay(call: Call[schema.QrPay, None]) -> Any:
    b = call.body
    return await qr.pay(call.svc, call.who, b.payload, b.amount, b.pin, call.identity())  # type: ignore[arg-type]


@api.route("POST", "/v1/wallet/pay_codes", summary="A one-time pay-code for the counter to scan (about a minute)",
           auth={P.WALLET}, body=schema.IssuePayCode, response=views.PayCodeView, status=201, tag="wallet")
async def issue_pay_code(call: Call[schema.IssuePayCode, None]) -> Any:
    return await pay_codes.issue(call.svc, call.who, call.who.device_id)


@api.route("GET", "/v1/wallet/pending_payments", summary="Counter payments waiting for this holder's PIN",
           auth={P.WALLET}, query=schema.PageQuery, response=views.PayerPaymentList, tag="wallet")
async def pending(call: Call[None, schema.PageQuery]) -> Any:
    return await payments.awaiting_confirmation(call.svc, call.who, call.query.page())


@api.route("POST", "/v1/wallet/payments/{id}/confirm", summary="Confirm a counter payment with the PIN",
           auth={P.WALLET}, body=schema.ConfirmPayment, response=views.PayerPaymentView, tag="wallet")
async def confirm(call: Call[schema.ConfirmPayment, None]) -> Any:
    return await payments.confirm(call.svc, call.who, call.match("id"), call.body.pin, call.identity())
