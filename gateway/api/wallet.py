"""Wallet holder endpoints."""

from __future__ import annotations

from typing import Any

from gateway.api import schema
from gateway.api.routing import Call, api
from gateway.auth.principals import PrincipalKind as P
from gateway.services import views, wallets


@api.route("POST", "/v1/wallet/holders", summary="Register a wallet holder", auth=None,
           body=schema.WalletCredentials, response=views.WalletHolderView, status=201, tag="wallet")
async def register(call: Call[schema.WalletCredentials, None]) -> Any:
    return await wallets.register(call.svc, call.body.phone, call.body.password)


@api.route("POST", "/v1/wallet/sessions", summary="Log in; returns a short-lived wallet token", auth=None,
           body=schema.WalletCredentials, response=views.TokenView, status=201, tag="wallet")
async def login(call: Call[schema.WalletCredentials, None]) -> Any:
    return await wallets.login(call.svc, call.body.phone, call.body.password)


@api.route("GET", "/v1/wallet", summary="The holder's balances per currency", auth={P.WALLET},
           response=views.WalletView, tag="wallet")
async def wallet(call: Call[None, None]) -> Any:
    return await wallets.wallet(call.svc, call.who)


@api.route("POST", "/v1/wallet/bank_accounts", summary="Link a bank account (number stored masked and hashed)",
           auth={P.WALLET}, body=schema.LinkBankAccount, response=views.BankAccountView, status=201, tag="wallet")
async def link(call: Call[schema.LinkBankAccount, None]) -> Any:
    return await wallets.link_bank_account(call.svc, call.who, call.body.bank_name, call.body.account_number)


@api.route("GET", "/v1/wallet/bank_accounts", summary="Linked bank accounts", auth={P.WALLET},
           response=views.BankAccountList, tag="wallet")
async def bank_accounts(call: Call[None, None]) -> Any:
    return await wallets.bank_accounts(call.svc, call.who)


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
    return await wallets.history(call.svc, call.who, q.currency, q.limit, q.starting_after)
