"""The API's view of objects: what responses and event payloads contain. Pure functions of rows.

Amounts are integers in minor units of ``currency`` (Stripe's convention: 1050 CNY = 10.50 yuan).
Timestamps are RFC 3339 text (``datetime.isoformat()`` of an aware datetime: ``+00:00``, not ``Z``),
declared as such in the schema while staying ``str`` so that no answer changes its bytes. Statuses
and kinds are ``Literal`` types: the schema lists their values, the JSON is the same text.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import msgspec

from gateway.domain import ids, verification
from gateway.domain.ids import Kind

Timestamp = Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]
Date = Annotated[str, msgspec.Meta(extra_json_schema={"format": "date"})]
# The values of gateway.domain.payments.Status and CaptureMethod (a unit test keeps them equal).
PaymentStatus = Literal["requires_payment_method", "requires_action", "requires_capture", "succeeded", "canceled",
                        "expired"]
CaptureMethod = Literal["automatic", "manual"]
Channel = Literal["wallet", "qr", "pay_code", "tap"]
QrKind = Literal["dynamic", "static"]
ActiveOrRevoked = Literal["active", "revoked"]


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _metadata(row: Any) -> dict[str, str]:
    pairs: dict[str, str] = msgspec.json.decode(row["metadata"])  # jsonb read as text
    return pairs


class PaymentView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "payment"
    status: PaymentStatus
    amount: int
    currency: str
    capture_method: CaptureMethod
    channel: Channel | None
    amount_capturable: int
    amount_received: int
    amount_refunded: int
    fee: int
    merchant: str
    store: str | None
    terminal: str | None
    merchant_reference: str | None
    description: str | None
    expires_at: Timestamp
    authorization_expires_at: Timestamp | None
    confirm_by: str | None
    created_at: Timestamp
    updated_at: Timestamp
    metadata: dict[str, str]
    return_url: str | None = None
    cancel_url: str | None = None
    checkout_url: str | None = None  # the hosted checkout page (with its client secret): the merchant's only
    discount: DiscountView | None = None  # the promotion that discounted it, once paid (authorised: the one reserved)
    cashback: CashbackView | None = None  # the cashback its capture credited the payer


def payment_view(row: Any, checkout_url: str | None = None) -> PaymentView:
    return PaymentView(
        id=ids.encode(Kind.PAYMENT, row["id"]),
        status=row["status"],
        amount=row["amount_minor"],
        currency=row["currency"],
        capture_method=row["capture_method"],
        channel=row["channel"],
        amount_capturable=row["authorized_minor"] if row["status"] == "requires_capture" else 0,
        amount_received=row["captured_minor"],
        amount_refunded=row["refunded_minor"],
        fee=row["fee_minor"],
        merchant=ids.encode(Kind.MERCHANT, row["merchant_id"]),
        store=ids.encode(Kind.STORE, row["store_id"]) if row["store_id"] else None,
        terminal=ids.encode(Kind.TERMINAL, row["terminal_id"]) if row["terminal_id"] else None,
        merchant_reference=row["merchant_reference"],
        description=row["description"],
        expires_at=row["expires_at"].isoformat(),
        authorization_expires_at=_ts(row["authorization_expires_at"]),
        confirm_by=_ts(row["confirm_by"]),
        created_at=row["created_at"].isoformat(),
        updated_at=row["updated_at"].isoformat(),
        metadata=_metadata(row),
        return_url=row["return_url"],
        cancel_url=row["cancel_url"],
        checkout_url=checkout_url,
        discount=discount_view(row),
        cashback=cashback_view(row),
    )


class PaymentFxView(msgspec.Struct, kw_only=True):
    """A payment in a currency the wallet lacks, paid from another of its currencies: "you pay
    ``amount`` ``to_currency`` = ``from_amount`` ``from_currency`` at ``rate``, fee ``fee``"
    (gateway/services/fx_payments.py). Offered in a preview with its quote; recorded once paid."""

    object: str = "payment_fx"
    quote: str  # fxq_...: pay with it (``fx_quote``) to be charged exactly this
    conversion: str | None = None  # cnv_..., once paid
    from_currency: str
    from_amount: int  # minor units of from_currency the wallet pays
    to_currency: str  # the payment's currency
    to_amount: int  # minor units of to_currency bought: at least ``amount`` (any rounding excess stays the holder's)
    amount: int  # what the wallet pays of the payment: its amount less the discount offered or granted with it
    rate: str  # the holder's rate (spread taken): to_currency units per from_currency unit, exact
    fee: int
    fee_currency: str
    expires_at: Timestamp | None = None  # the quote's end (an offer)
    valid_for_s: int | None = None  # seconds left to pay with the quote (an offer)


class PayerPaymentView(msgspec.Struct, kw_only=True):
    """What a wallet holder (or a checkout page) sees of a payment: no fees, no merchant internals."""

    id: str
    object: str = "payment"
    status: PaymentStatus
    amount: int
    currency: str
    merchant_name: str
    description: str | None
    expires_at: Timestamp
    confirm_by: str | None = None
    discount: DiscountView | None = None  # the promotion that discounted it, once paid (authorised: the one reserved)
    discount_offer: DiscountOffer | None = None  # unpaid: the discount paying it now would get (a preview)
    cashback: CashbackView | None = None  # the cashback its capture credited the payer
    cashback_offer: CashbackOffer | None = None  # unpaid: the cashback paying it now would credit (a preview)
    fx: PaymentFxView | None = None  # paid from another currency: the conversion (its payer only)
    fx_offer: PaymentFxView | None = None  # unpaid, and the wallet lacks the currency: what paying from another costs


def payer_payment_view(row: Any, merchant_name: str, offer: DiscountOffer | None = None,
                       cashback_offer: CashbackOffer | None = None) -> PayerPaymentView:
    return PayerPaymentView(
        id=ids.encode(Kind.PAYMENT, row["id"]),
        status=row["status"],
        amount=row["amount_minor"],
        currency=row["currency"],
        merchant_name=merchant_name,
        description=row["description"],
        expires_at=row["expires_at"].isoformat(),
        confirm_by=_ts(row["confirm_by"]),
        discount=discount_view(row),
        discount_offer=offer,
        cashback=cashback_view(row),
        cashback_offer=cashback_offer,
    )


class CheckoutStatus(msgspec.Struct, kw_only=True):
    """What the hosted checkout page (or the shop's own page) polls: the payer's status and where to go."""

    object: str = "checkout_status"
    payment: str
    status: PaymentStatus
    redirect_url: str | None  # return_url with ?payment=, once paid
    cancel_url: str | None


class PayerPaymentList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[PayerPaymentView]
    has_more: bool


class RefundView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "refund"
    payment: str
    amount: int
    fee_returned: int
    currency: str
    reason: str | None
    status: Literal["succeeded"]
    created_at: Timestamp
    metadata: dict[str, str]
    discount_clawed_back: int = 0  # the part of the payment's bank-funded discount this refund took back
    cashback_clawed_back: int = 0  # the part of the payment's cashback this refund took back (not given to the holder)


def refund_view(row: Any) -> RefundView:
    return RefundView(
        id=ids.encode(Kind.REFUND, row["id"]),
        payment=ids.encode(Kind.PAYMENT, row["payment_id"]),
        amount=row["amount_minor"],
        fee_returned=row["fee_back_minor"],
        currency=row["currency"],
        reason=row["reason"],
        status=row["status"],
        created_at=row["created_at"].isoformat(),
        metadata=_metadata(row),
        discount_clawed_back=row.get("discount_clawed_back_minor") or 0,
        cashback_clawed_back=row.get("cashback_clawed_back_minor") or 0,
    )


class RefundList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[RefundView]
    has_more: bool


class PaymentList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[PaymentView]
    has_more: bool


class EventActor(msgspec.Struct, kw_only=True):
    """Who caused an audit event: ``operator``, ``api_key``, ``device``, ``wallet_holder`` or ``cli`` (no id)."""

    type: str
    id: str | None


class EventView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "event"
    type: str
    # Unix seconds (Stripe's convention); created_at has the same instant in RFC 3339
    created: Annotated[int, msgspec.Meta(description="Unix seconds", extra_json_schema={"format": "unix-time"})]
    data: dict[str, Any]
    created_at: Timestamp
    merchant: str | None = None  # None: an event of no merchant (wallet, operator, whole-gateway)
    actor: EventActor | None = None  # set on audit events (admin actions)
    request_id: str | None = None  # the API request that caused it, when one did


_ACTOR_KINDS = {"operator": Kind.OPERATOR, "api_key": Kind.API_KEY, "device": Kind.DEVICE,
                "wallet_holder": Kind.WALLET_HOLDER}


class EventList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[EventView]
    has_more: bool


def event_view(row: Any) -> EventView:
    actor_type, actor_id = row["actor_type"], row["actor_id"]
    return EventView(
        id=ids.encode(Kind.EVENT, row["id"]),
        type=row["type"],
        created=int(row["created_at"].timestamp()),
        data={"object": msgspec.json.decode(row["data"])},
        created_at=row["created_at"].isoformat(),
        merchant=ids.encode(Kind.MERCHANT, row["merchant_id"]) if row["merchant_id"] is not None else None,
        actor=None if actor_type is None else EventActor(
            type=actor_type, id=None if actor_id is None else ids.encode(_ACTOR_KINDS[actor_type], actor_id)),
        request_id=row["request_id"],
    )


class WebhookEndpointView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "webhook_endpoint"
    url: str
    description: str | None
    enabled_events: list[str]
    status: Literal["enabled", "disabled"]
    disabled_reason: str | None
    previous_secret_expires_at: Timestamp | None  # during a rotation's overlap both secrets sign
    created_at: Timestamp
    updated_at: Timestamp
    secret: str | None = None  # present only in the answers of create and rotate_secret


def webhook_endpoint_view(row: Any, secret: str | None = None) -> WebhookEndpointView:
    return WebhookEndpointView(
        id=ids.encode(Kind.WEBHOOK_ENDPOINT, row["id"]), url=row["url"], description=row["description"],
        enabled_events=list(row["enabled_events"]), status=row["status"], disabled_reason=row["disabled_reason"],
        previous_secret_expires_at=_ts(row["previous_secret_expires_at"]) if row["previous_secret_sealed"] else None,
        created_at=row["created_at"].isoformat(), updated_at=row["updated_at"].isoformat(), secret=secret,
    )


class WebhookEndpointList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[WebhookEndpointView]
    has_more: bool


class DeletedView(msgspec.Struct, kw_only=True):
    id: str
    object: str
    deleted: bool = True


class WebhookAttemptView(msgspec.Struct, kw_only=True):
    attempted_at: Timestamp
    status_code: int | None
    latency_ms: int
    error: str | None
    response_excerpt: str | None


class WebhookDeliveryView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "webhook_delivery"
    event: str
    event_type: str
    endpoint: str
    status: Literal["pending", "succeeded", "failed"]  # failed: retries exhausted
    attempt_count: int
    next_attempt_at: Timestamp | None
    delivered_at: Timestamp | None
    created_at: Timestamp
    attempts: list[WebhookAttemptView]  # the latest, newest first


def webhook_delivery_view(row: Any) -> WebhookDeliveryView:
    attempts = msgspec.json.decode(row["attempts"])
    return WebhookDeliveryView(
        id=ids.encode(Kind.WEBHOOK_DELIVERY, row["id"]), event=ids.encode(Kind.EVENT, row["event_id"]),
        event_type=row["event_type"], endpoint=ids.encode(Kind.WEBHOOK_ENDPOINT, row["endpoint_id"]),
        status=row["status"], attempt_count=row["attempt_count"],
        next_attempt_at=row["next_attempt_at"].isoformat() if row["status"] == "pending" else None,
        delivered_at=_ts(row["delivered_at"]), created_at=row["created_at"].isoformat(),
        attempts=[WebhookAttemptView(attempted_at=a["attempted_at"], status_code=a["status_code"],
                                     latency_ms=a["latency_ms"], error=a["error"],
                                     response_excerpt=a["response_excerpt"]) for a in attempts],
    )


class WebhookDeliveryList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[WebhookDeliveryView]
    has_more: bool


class MerchantView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "merchant"
    name: str
    mcc: str
    country: str
    city: str
    fee_bps: int
    status: Literal["active", "suspended"]
    created_at: Timestamp
    name_local: str | None = None
    city_local: str | None = None


def merchant_view(row: Any) -> MerchantView:
    return MerchantView(
        id=ids.encode(Kind.MERCHANT, row["id"]), name=row["name"], mcc=row["mcc"], country=row["country"],
        city=row["city"], fee_bps=row["fee_bps"], status=row["status"], created_at=row["created_at"].isoformat(),
        name_local=row["name_local"], city_local=row["city_local"],
    )


class MerchantList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[MerchantView]
    has_more: bool


class StoreView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "store"
    merchant: str
    name: str
    city: str
    created_at: Timestamp


def store_view(row: Any) -> StoreView:
    return StoreView(
        id=ids.encode(Kind.STORE, row["id"]), merchant=ids.encode(Kind.MERCHANT, row["merchant_id"]),
        name=row["name"], city=row["city"], created_at=row["created_at"].isoformat(),
    )


class TerminalView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "terminal"
    merchant: str
    store: str
    label: str
    status: ActiveOrRevoked
    created_at: Timestamp
    # Fleet health, from the last heartbeat of the terminal's agent (null: none reported yet).
    device: str | None = None
    agent_version: str | None = None
    last_seen_at: Timestamp | None = None
    offline_backlog_count: int | None = None
    offline_backlog_oldest_at: Timestamp | None = None


class TerminalList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[TerminalView]
    has_more: bool


def _iso(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())


def terminal_view(row: Any) -> TerminalView:
    """From a terminal row; the health columns are read when the row has them (``*_with_agent``)."""
    device_id = row.get("device_id")
    return TerminalView(
        id=ids.encode(Kind.TERMINAL, row["id"]), merchant=ids.encode(Kind.MERCHANT, row["merchant_id"]),
        store=ids.encode(Kind.STORE, row["store_id"]), label=row["label"], status=row["status"],
        created_at=row["created_at"].isoformat(),
        device=None if device_id is None else ids.encode(Kind.DEVICE, device_id),
        agent_version=row.get("agent_version"), last_seen_at=_iso(row.get("last_seen_at")),
        offline_backlog_count=row.get("offline_backlog_count"),
        offline_backlog_oldest_at=_iso(row.get("offline_backlog_oldest_at")),
    )


class ApiKeyView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "api_key"
    merchant: str
    kind: Literal["secret", "publishable"]
    prefix: str
    created_at: Timestamp
    revoked_at: Timestamp | None
    secret: str | None = None  # present only in the answer that created the key


class ApiKeyList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[ApiKeyView]
    has_more: bool


def api_key_view(row: Any, secret: str | None = None) -> ApiKeyView:
    return ApiKeyView(
        id=ids.encode(Kind.API_KEY, row["id"]), merchant=ids.encode(Kind.MERCHANT, row["merchant_id"]),
        kind=row["kind"], prefix=row["prefix"], created_at=row["created_at"].isoformat(),
        revoked_at=_ts(row["revoked_at"]), secret=secret,
    )


class TokenView(msgspec.Struct, kw_only=True):
    object: str = "token"
    token: str
    token_type: str = "Bearer"
    expires_in: int


class WalletHolderView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "wallet_holder"
    phone_masked: str
    tier: int
    created_at: Timestamp
    pin_set: bool | None = None
    payments_locked: bool | None = None
    verification_level: str | None = None  # none, phone, real_name, bank_card, in_person (domain.verification)


def mask_phone(phone: str) -> str:
    return phone[:3] + "*" * max(0, len(phone) - 7) + phone[-4:] if len(phone) > 7 else "*" * len(phone)


def holder_view(row: Any) -> WalletHolderView:
    return WalletHolderView(
        id=ids.encode(Kind.WALLET_HOLDER, row["id"]), phone_masked=mask_phone(row["phone"]), tier=row["tier"],
        created_at=row["created_at"].isoformat(),
        pin_set=row["pin_set"] if "pin_set" in row.keys() else None,
        payments_locked=(row["payments_locked_at"] is not None) if "payments_locked_at" in row.keys() else None,
        verification_level=(verification.Level(row["verification_level"]).label
                            if "verification_level" in row.keys() else None),
    )


class BalanceView(msgspec.Struct, kw_only=True):
    currency: str
    available: int
    held: int
    total: int


class WalletView(msgspec.Struct, kw_only=True):
    object: str = "wallet"
    holder: WalletHolderView
    balances: list[BalanceView]


class BankAccountView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "bank_account"
    bank_name: str
    number_masked: str
    created_at: Timestamp


def bank_account_view(row: Any) -> BankAccountView:
    return BankAccountView(
        id=ids.encode(Kind.BANK_ACCOUNT, row["id"]), bank_name=row["bank_name"],
        number_masked=row["number_masked"], created_at=row["created_at"].isoformat(),
    )


class BankAccountList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[BankAccountView]
    has_more: bool


class TransferView(msgspec.Struct, kw_only=True):
    id: str
    object: str
    bank_account: str
    amount: int
    currency: str
    balance_after: BalanceView
    created_at: Timestamp


class TransactionView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "wallet_transaction"
    kind: str
    amount: int
    currency: str
    payment: str | None
    refund: str | None
    transfer: str | None
    merchant_name: str | None
    created_at: Timestamp
    conversion: str | None = None  # a conversion's leg (kind "conversion"): its cnv_... id


class TransactionList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[TransactionView]
    has_more: bool
    next_cursor: str | None


class MerchantBalanceView(msgspec.Struct, kw_only=True):
    object: str = "balance"
    balances: list[BalanceView]


class InvariantReport(msgspec.Struct, kw_only=True):
    object: str = "invariant_report"
    ok: bool
    violations: dict[str, list[dict[str, Any]]]


class QrCodeView(msgspec.Struct, kw_only=True):
    object: str = "qr_code"
    kind: QrKind  # dynamic: one payment, amount inside; static: a store's, the payer enters the amount
    payload: str
    payment: str | None
    store: str | None
    expires_at: Timestamp | None
    image_png: str
    image_svg: str


class QrPreviewView(msgspec.Struct, kw_only=True):
    object: str = "qr_preview"
    kind: QrKind
    payment: str | None
    status: PaymentStatus | None
    merchant_name: str
    merchant_name_local: str | None
    store_name: str | None
    amount: int | None
    currency: str
    expires_at: Timestamp | None
    pin_required: bool
    discount_offer: DiscountOffer | None = None  # the discount paying it now would get
    cashback_offer: CashbackOffer | None = None  # the cashback paying it now would credit
    fx_offer: PaymentFxView | None = None  # the wallet lacks the currency: what paying from another costs


class PayCodeView(msgspec.Struct, kw_only=True):
    object: str = "pay_code"
    code: str
    expires_at: Timestamp
    device_id: str
    qr_svg: str


class SettlementBatchView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "settlement_batch"
    merchant: str
    currency: str
    business_date: Date
    window_start: Timestamp
    window_end: Timestamp
    timezone: str
    settlement_cutoff: str
    status: Literal["open", "closed", "paid", "reconciled"]
    capture_count: int
    refund_count: int
    captured: int
    refunded: int
    fee: int
    cashback: int = 0  # merchant-funded cashback its captures paid holders, less what its refunds took back
    carry_in: int
    net: int  # captured - refunded - fee - cashback + carry_in
    payout: int
    carry_out: int
    closed_at: Timestamp
    paid_at: Timestamp | None
    reconciled_at: Timestamp | None


def settlement_batch_view(row: Any) -> SettlementBatchView:
    return SettlementBatchView(
        id=ids.encode(Kind.SETTLEMENT_BATCH, row["id"]), merchant=ids.encode(Kind.MERCHANT, row["merchant_id"]),
        currency=row["currency"], business_date=row["business_date"].isoformat(),
        window_start=row["window_start"].isoformat(), window_end=row["window_end"].isoformat(),
        timezone=row["timezone"], settlement_cutoff=row["cutoff"].isoformat(), status=row["status"],
        capture_count=row["capture_count"], refund_count=row["refund_count"], captured=row["captured_minor"],
        refunded=row["refunded_minor"], fee=row["fee_minor"], cashback=row["cashback_minor"],
        carry_in=row["carry_in_minor"], net=row["net_minor"],
        payout=row["payout_minor"], carry_out=row["carry_out_minor"], closed_at=row["closed_at"].isoformat(),
        paid_at=_ts(row["paid_at"]), reconciled_at=_ts(row["reconciled_at"]),
    )


class SettlementBatchList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[SettlementBatchView]
    has_more: bool


class PayoutView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "payout"
    batch: str
    merchant: str
    amount: int
    currency: str
    reference: str
    status: Literal["pending", "paid", "reconciled", "failed"]
    execution_date: Date
    bank_account: str | None
    created_at: Timestamp
    paid_at: Timestamp | None
    reconciled_at: Timestamp | None


def payout_view(row: Any) -> PayoutView:
    account = row["bank_account_id"]
    return PayoutView(
        id=ids.encode(Kind.PAYOUT, row["id"]), batch=ids.encode(Kind.SETTLEMENT_BATCH, row["batch_id"]),
        merchant=ids.encode(Kind.MERCHANT, row["merchant_id"]), amount=row["amount_minor"], currency=row["currency"],
        reference=row["reference"], status=row["status"], execution_date=row["execution_date"].isoformat(),
        bank_account=None if account is None else ids.encode(Kind.MERCHANT_BANK_ACCOUNT, account),
        created_at=row["created_at"].isoformat(), paid_at=_ts(row["paid_at"]), reconciled_at=_ts(row["reconciled_at"]),
    )


class PayoutList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[PayoutView]
    has_more: bool


class SettlementTotal(msgspec.Struct, kw_only=True):
    currency: str
    batch_count: int
    captured: int
    refunded: int
    fee: int
    cashback: int = 0  # merchant-funded, net of refunds
    net: int
    payout: int
    carried: int


class SettlementRunView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "settlement_run"
    business_date: Date
    merchant: str | None
    created_at: Timestamp
    batches_closed_now: int
    batch_count: int
    payout_count: int
    payouts_without_account: int
    merchants_not_ended: list[str]
    totals: list[SettlementTotal]


class MerchantSettlementView(msgspec.Struct, kw_only=True):
    merchant: str
    object: str = "merchant_settlement"
    timezone: str
    settlement_cutoff: str
    fee_bps: int
    fee_fixed: int


def merchant_settlement_view(row: Any) -> MerchantSettlementView:
    return MerchantSettlementView(
        merchant=ids.encode(Kind.MERCHANT, row["id"]), timezone=row["timezone"],
        settlement_cutoff=row["settlement_cutoff"].isoformat(), fee_bps=row["fee_bps"],
        fee_fixed=row["fee_fixed_minor"],
    )


class PayoutAccountView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "payout_account"
    merchant: str
    holder_name: str
    bank_name: str
    bic: str | None
    number_masked: str
    created_at: Timestamp


def payout_account_view(row: Any) -> PayoutAccountView:
    return PayoutAccountView(
        id=ids.encode(Kind.MERCHANT_BANK_ACCOUNT, row["id"]), merchant=ids.encode(Kind.MERCHANT, row["merchant_id"]),
        holder_name=row["holder_name"], bank_name=row["bank_name"], bic=row["bic"],
        number_masked=row["number_masked"], created_at=row["created_at"].isoformat(),
    )


# --- holder notifications, budgets, time zone and spending insights (issue 13) ---------------------


class NotificationView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "notification"
    kind: str
    data: dict[str, Any]
    created_at: Timestamp
    read_at: Timestamp | None


def notification_view(row: Any) -> NotificationView:
    return NotificationView(id=ids.encode(Kind.NOTIFICATION, row["id"]), kind=row["kind"],
                            data=msgspec.json.decode(row["data"]), created_at=row["created_at"].isoformat(),
                            read_at=_ts(row["read_at"]))


class NotificationList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[NotificationView]
    has_more: bool


class BudgetView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "budget"
    category: str  # "overall" or an MCC group
    currency: str
    amount: int
    month: Annotated[str, msgspec.Meta(description="This month in the holder's time zone, YYYY-MM")]
    spent: int  # this month, net of refunds
    remaining: int  # amount - spent: negative once over budget
    percent_used: int  # floor(spent * 100 / amount), not below 0
    created_at: Timestamp
    updated_at: Timestamp


class BudgetList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[BudgetView]
    has_more: bool


class TimeZoneView(msgspec.Struct, kw_only=True):
    object: str = "time_zone"
    time_zone: str
    is_default: bool  # true until the holder sets its own


class SpendingTotal(msgspec.Struct, kw_only=True):
    total: int  # net of refunds
    count: int  # payments with a capture in the month


class CategorySpending(SpendingTotal, kw_only=True):
    category: str


class MerchantSpending(SpendingTotal, kw_only=True):
    merchant: str
    name: str


class CurrencySpending(SpendingTotal, kw_only=True):
    currency: str
    by_category: list[CategorySpending]
    by_merchant: list[MerchantSpending]


class InsightsView(msgspec.Struct, kw_only=True):
    object: str = "spending_insights"
    month: str
    time_zone: str
    currencies: list[CurrencySpending]


class DiscountView(msgspec.Struct, kw_only=True):
    """A promotion's benefit on a payment: ``funded_by`` ``bank`` (the promotions account paid it, the
    merchant received the full amount) or ``merchant`` (the merchant received amount - discount)."""

    campaign: str
    amount: int
    funded_by: Literal["bank", "merchant"]
    amount_paid_by_holder: int
    clawed_back: int  # taken back by refunds so far (bank-funded only)


def discount_view(row: Any) -> DiscountView | None:
    """The payment's discount; an open manual authorisation shows the one it reserved (what its full
    capture grants: the wallet holds amount - discount meanwhile)."""
    campaign = row.get("campaign_id")
    if campaign is None and row.get("reserved_campaign_id") is not None and row["status"] == "requires_capture":
        return DiscountView(campaign=campaign_id(row["reserved_campaign_id"]), amount=row["discount_reserved_minor"],
                            funded_by=row["reserved_funded_by"],
                            amount_paid_by_holder=row["amount_minor"] - row["discount_reserved_minor"], clawed_back=0)
    if campaign is None:
        return None
    # What the wallet paid: the capture less a bank-funded discount (the promotions account paid it), or the
    # capture itself when the merchant funded it (it sold for less). Captured at once that is amount -
    # discount; a partial manual capture of c keeping d (migration 0031): c - d, not amount - d (review R18).
    paid = row["captured_minor"] - (row["discount_minor"] if row["discount_funded_by"] == "bank" else 0)
    return DiscountView(campaign=campaign_id(campaign), amount=row["discount_minor"],
                        funded_by=row["discount_funded_by"], amount_paid_by_holder=paid,
                        clawed_back=row["discount_clawed_back_minor"])


class CashbackView(msgspec.Struct, kw_only=True):
    """The cashback a payment's capture credited its payer: ``funded_by`` ``bank`` (the promotions account
    paid it, the merchant received the capture less its fee) or ``merchant`` (the merchant's receivable paid
    it, in the capture's own entry: the merchant received the capture less its fee and the cashback)."""

    campaign: str
    amount: int
    funded_by: Literal["bank", "merchant"]
    clawed_back: int  # taken back by refunds so far (netted from what they gave the holder), back to its funder


def cashback_view(row: Any) -> CashbackView | None:
    campaign = row.get("cashback_campaign_id")
    if campaign is None:
        return None
    return CashbackView(campaign=campaign_id(campaign), amount=row["cashback_minor"],
                        funded_by=row["cashback_funded_by"], clawed_back=row["cashback_clawed_back_minor"])


class CashbackOffer(msgspec.Struct, kw_only=True):
    """The cashback paying now (and capturing the whole amount) would credit, while places and budget last."""

    campaign: str
    amount: int
    funded_by: Literal["bank", "merchant"]


class DiscountOffer(msgspec.Struct, kw_only=True):
    """The discount paying now would get, while the campaign's places and budget last."""

    campaign: str
    amount: int
    funded_by: Literal["bank", "merchant"]
    amount_to_pay: int


def campaign_id(value: uuid.UUID) -> str:
    return ids.encode(Kind.CAMPAIGN, value)


CampaignRule = Literal["percent", "fixed", "cashback", "gift_registration", "gift_first_payment"]


class CampaignView(msgspec.Struct, kw_only=True):
    id: str
    object: str = "campaign"
    name: str
    status: Literal["scheduled", "active", "ended"]
    currency: str
    rule: CampaignRule
    percent_bps: int
    fixed_amount: int
    cap: int | None
    funded_by: Literal["bank", "merchant"]
    time_zone: str
    starts_at: Timestamp
    ends_at: Timestamp
    merchants: list[str]
    stores: list[str]
    mccs: list[str]
    min_amount: int
    per_holder_limit: int | None
    budget: int
    spent: int
    clawed_back: int
    places: int | None
    places_taken: int
    ended_at: Timestamp | None
    created_at: Timestamp


def campaign_view(row: Any, at: datetime) -> CampaignView:
    """``at``: the moment its status is told for."""
    zone = ZoneInfo(row["time_zone"])
    if row["ended_at"] is not None or row["ends_at"] <= at:
        status: Literal["scheduled", "active", "ended"] = "ended"
    else:
        status = "scheduled" if at < row["starts_at"] else "active"
    return CampaignView(
        id=campaign_id(row["id"]), name=row["name"], status=status, currency=row["currency"].strip(),
        rule=row["rule"], percent_bps=row["percent_bps"], fixed_amount=row["fixed_minor"], cap=row["cap_minor"],
        funded_by=row["funded_by"], time_zone=row["time_zone"],
        starts_at=row["starts_at"].astimezone(zone).isoformat(), ends_at=row["ends_at"].astimezone(zone).isoformat(),
        merchants=[ids.encode(Kind.MERCHANT, m) for m in row["merchant_ids"]],
        stores=[ids.encode(Kind.STORE, m) for m in row["store_ids"]], mccs=list(row["mccs"]),
        min_amount=row["min_amount_minor"], per_holder_limit=row["per_holder_max"], budget=row["budget_minor"],
        spent=row["spent_minor"], clawed_back=row["clawed_back_minor"], places=row["places_max"],
        places_taken=row["places_taken"], ended_at=_ts(row["ended_at"]), created_at=row["created_at"].isoformat(),
    )


class CampaignList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[CampaignView]
    has_more: bool


class BenefitView(msgspec.Struct, kw_only=True):
    """A benefit the holder received: a discount or cashback (on which payment), or a gift (its id;
    a first-payment gift names its payment too); from which campaign, who funded it."""

    object: str = "benefit"
    kind: Literal["discount", "cashback", "gift_registration", "gift_first_payment"] = "discount"
    payment: str | None
    gift: str | None = None
    campaign: str
    campaign_name: str
    amount: int
    currency: str
    funded_by: Literal["bank", "merchant"]
    clawed_back: int
    created_at: Timestamp


def benefit_view(row: Any) -> BenefitView:
    gift = row["kind"].startswith("gift_")
    return BenefitView(
        kind=row["kind"], payment=ids.encode(Kind.PAYMENT, row["payment_id"]) if row["payment_id"] else None,
        gift=ids.encode(Kind.GIFT, row["id"]) if gift else None, campaign=campaign_id(row["campaign_id"]),
        campaign_name=row["campaign_name"], amount=row["amount_minor"], currency=row["currency"].strip(),
        funded_by=row["funded_by"], clawed_back=row["clawed_back_minor"], created_at=row["created_at"].isoformat(),
    )


class GiftView(msgspec.Struct, kw_only=True):
    """A gift a campaign gave: to which holder, on registration or with which first payment."""

    id: str
    object: str = "gift"
    kind: Literal["registration", "first_payment"]
    campaign: str
    holder: str
    payment: str | None
    amount: int
    currency: str
    created_at: Timestamp


def gift_view(row: Any) -> GiftView:
    return GiftView(
        id=ids.encode(Kind.GIFT, row["id"]), kind=row["kind"], campaign=campaign_id(row["campaign_id"]),
        holder=ids.encode(Kind.WALLET_HOLDER, row["holder_id"]),
        payment=ids.encode(Kind.PAYMENT, row["payment_id"]) if row["payment_id"] else None,
        amount=row["amount_minor"], currency=row["currency"].strip(), created_at=row["created_at"].isoformat(),
    )


class GiftList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[GiftView]
    has_more: bool


class HolderCampaignView(msgspec.Struct, kw_only=True):
    """A live campaign as a holder sees it: its terms and how many more benefits it gives this holder."""

    campaign: str
    name: str
    status: Literal["scheduled", "active", "ended"]
    currency: str
    rule: CampaignRule
    percent_bps: int
    fixed_amount: int
    cap: int | None
    min_amount: int
    starts_at: Timestamp
    ends_at: Timestamp
    uses_left: int | None  # None: no per-holder limit


class BenefitsView(msgspec.Struct, kw_only=True):
    object: str = "benefits"
    campaigns: list[HolderCampaignView]  # live campaigns the holder may still get a benefit from
    data: list[BenefitView]  # the discounts, cashback and gifts received, newest first
    has_more: bool
