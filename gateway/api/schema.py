"""Request bodies and query strings. Unknown fields are refused; lengths and ranges are bounded."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from gateway.domain import metadata
from gateway.services.pages import PageRequest

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
# Amounts are integers in minor units; a number with a fraction is accepted by the parser only to
# be refused with a precise error (amount_too_precise) instead of a generic type error.
Amount = Annotated[
    int | float,
    msgspec.Meta(description="Integer amount in the currency's minor units, e.g. 1050 for 10.50 CNY"),
]
Currency = Annotated[str, msgspec.Meta(min_length=3, max_length=3, description="ISO 4217 code, e.g. CNY")]
Limit = Annotated[int, msgspec.Meta(ge=1, le=100)]
Cursor = Annotated[str, msgspec.Meta(max_length=64, description="The id of an object of this list")]
# Up to 9999-12-31T23:59:59Z, the last second a timestamp (Python's and PostgreSQL's alike) holds.
UNIX_SECONDS_MAX = 253_402_300_799
UnixSeconds = Annotated[int, msgspec.Meta(ge=0, le=UNIX_SECONDS_MAX, description="Unix seconds")]
# Values are checked by gateway.domain.metadata (each refusal names its pair, metadata[key]); the
# schema says what they are.
Metadata = Annotated[dict[str, Any], msgspec.Meta(
    description="Your own string key-value pairs (an empty value unsets a key on update)",
    extra_json_schema={"maxProperties": metadata.KEYS_MAX,
                       "propertyNames": {"minLength": 1, "maxLength": metadata.KEY_LENGTH_MAX},
                       "additionalProperties": {"type": "string", "maxLength": metadata.VALUE_LENGTH_MAX}})]
# The payment statuses (gateway.domain.payments.Status, a unit test keeps them equal), inline so that
# a query parameter's schema needs no $defs of its own.
PaymentStatus = Literal["requires_payment_method", "requires_action", "requires_capture", "succeeded", "canceled",
                        "expired"]
MetadataMatch = Annotated[dict[str, str], msgspec.Meta(
    description="metadata[key]=value: only objects whose metadata has every pair given")]

# Error codes that the use cases of several routes raise, for the routes' ``errors`` declarations.
AMOUNT_CODES = ("invalid_amount", "amount_too_precise", "amount_too_large", "invalid_currency")
DECLINE_CODES = ("insufficient_funds", "limit_exceeded", "currency_not_supported", "merchant_unavailable",
                 "risk_declined")
FX_PAY_400 = ("quote_mismatch",)  # paying with an fx_quote (gateway/services/fx_payments.py)
FX_PAY_409 = ("quote_used", "quote_expired")
PIN_CODES = ("pin_required", "pin_not_set", "incorrect_pin")
STEP_UP_CODES = PIN_CODES + ("otp_required",)  # a holder paying itself: a risk rule may ask for a code too
SIGN_IN_CODES = ("sign_in_locked", "sign_in_rate_limited")
# A counter charge (tap, pay-code) that settles the sale's existing payment must match it.
SALE_PAYMENT_CODES = ("amount_mismatch", "merchant_reference_mismatch", "parameter_unexpected")
METADATA_CODES = ("metadata_too_many_keys", "metadata_key_invalid", "metadata_value_not_string", "metadata_value_too_long")


class Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class CreatePayment(Strict):
    amount: Amount
    currency: Currency
    capture_method: Literal["automatic", "manual"] = "automatic"
    merchant_reference: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    description: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    expires_in: Annotated[int, msgspec.Meta(description="Seconds the payment can be paid for")] | None = None
    store: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    return_url: Annotated[str, msgspec.Meta(description="Hosted checkout: where the payer returns when paid"
                                                        " (the payment id is added as ?payment=)")] | None = None
    cancel_url: Annotated[str, msgspec.Meta(description="Hosted checkout: where a payer who gives up goes")] | None = None
    metadata: Metadata | None = None


class UpdatePayment(Strict):
    metadata: Metadata | None = None


class CheckoutQuery(Strict):
    secret: Annotated[str, msgspec.Meta(max_length=100, description="The client secret of the checkout URL")]


class CapturePayment(Strict):
    amount_to_capture: Amount | None = None


class CancelPayment(Strict):
    reason: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class CreateRefund(Strict):
    amount: Amount | None = None
    reason: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    metadata: Metadata | None = None


Pin = Annotated[str, msgspec.Meta(min_length=1, max_length=12)]
Payload = Annotated[str, msgspec.Meta(min_length=1, max_length=600, description="The scanned EMV QR text")]


FxQuoteId = Annotated[str, msgspec.Meta(max_length=64, description="An fxq_... quote of this holder into the"
                                       " payment's currency (a preview's fx_offer.quote): pay from another currency")]


class PayPayment(Strict):
    pin: Pin | None = None
    fx_quote: FxQuoteId | None = None


class ConfirmPayment(Strict):
    pin: Pin | None = None
    otp: Annotated[str, msgspec.Meta(min_length=1, max_length=20, description="the one-time code sent to the "
                                     "phone, when the payment was held for one (or verify its challenge first)")
                   ] | None = None


class SetPin(Strict):
    pin: Pin
    current_pin: Pin | None = None


class IssueQr(Strict):
    ttl: Annotated[int, msgspec.Meta(description="Seconds the code is valid (not beyond the payment)")] | None = None
    terminal_label: Annotated[str, msgspec.Meta(max_length=25)] | None = None


class StaticQrQuery(Strict):
    currency: Currency


class QrPreview(Strict):
    payload: Payload


class QrPay(Strict):
    payload: Payload
    amount: Amount | None = None
    pin: Pin | None = None
    fx_quote: FxQuoteId | None = None


class IssuePayCode(Strict):
    pass


class ChargePayCode(Strict):
    pay_code: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    amount: Amount
    currency: Currency
    payment: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    """An open payment of this counter to settle; without it the charge creates its payment."""
    # capture_method (automatic unless given), description, store and metadata describe the payment the
    # charge creates; with ``payment`` they are refused: the named payment has its own.
    capture_method: Literal["automatic", "manual"] | None = None
    merchant_reference: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    description: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    store: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    metadata: Metadata | None = None


class SetTier(Strict):
    tier: Annotated[int, msgspec.Meta(ge=1, le=4)]


class Login(Strict):
    email: ShortText
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class WalletCredentials(Strict):
    phone: Annotated[str, msgspec.Meta(min_length=1, max_length=20)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class WalletLogin(WalletCredentials):
    device_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64, description="The wallet app's device")] | None = None


class LinkBankAccount(Strict):
    bank_name: ShortText
    account_number: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]


class Transfer(Strict):
    bank_account: Annotated[str, msgspec.Meta(max_length=64)]
    amount: Amount
    currency: Currency


class CreateMerchant(Strict):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    mcc: Annotated[str, msgspec.Meta(min_length=4, max_length=4)]
    country: Annotated[str, msgspec.Meta(min_length=2, max_length=2)]
    city: Annotated[str, msgspec.Meta(min_length=1, max_length=60)]
    fee_bps: int | None = None
    name_local: Annotated[str, msgspec.Meta(min_length=1, max_length=25)] | None = None
    city_local: Annotated[str, msgspec.Meta(min_length=1, max_length=15)] | None = None
    language_local: Annotated[str, msgspec.Meta(min_length=2, max_length=2)] | None = None


class CreateStore(Strict):
    name: ShortText
    city: Annotated[str, msgspec.Meta(min_length=1, max_length=60)]


class CreateTerminal(Strict):
    store: Annotated[str, msgspec.Meta(max_length=64)]
    label: ShortText


class CreateApiKey(Strict):
    kind: Literal["secret", "publishable"]


class Empty(Strict):
    pass


class PageQuery(Strict):
    """Every list: newest first, ``starting_after`` or ``ending_before`` an id from a previous page."""

    limit: Limit = 10
    starting_after: Cursor | None = None
    ending_before: Cursor | None = None

    def page(self) -> PageRequest:
        return PageRequest(self.limit, self.starting_after, self.ending_before)


class CreatedQuery(PageQuery):
    created_gte: UnixSeconds | None = msgspec.field(default=None, name="created[gte]")
    created_lt: UnixSeconds | None = msgspec.field(default=None, name="created[lt]")


class PaymentQuery(CreatedQuery):
    status: PaymentStatus | None = None
    merchant_reference: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    metadata: MetadataMatch | None = None


class RefundQuery(CreatedQuery):
    payment: Annotated[str, msgspec.Meta(max_length=64, description="Only this payment's refunds")] | None = None
    status: Literal["succeeded"] | None = None
    metadata: MetadataMatch | None = None


class MerchantQuery(PageQuery):
    limit: Limit = 20


class TapPayment(Strict):
    terminal_transaction_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    amount: Amount
    currency: Currency
    merchant_reference: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    offline_approved_at: Annotated[str, msgspec.Meta(max_length=40)] | None = None
    tap: dict[str, Any] = msgspec.field(default_factory=dict)
    payment: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    """An open payment of this counter to settle; without it the tap creates its payment."""


class EnrolDevice(Strict):
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class DeviceHeartbeat(Strict):
    agent_version: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    offline_backlog_count: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    offline_backlog_oldest_age_s: Annotated[int, msgspec.Meta(
        ge=0, le=366 * 86_400, description="Seconds since the oldest offline tap not yet forwarded was approved")
    ] | None = None


class RenewDevice(Strict):
    device: Annotated[str, msgspec.Meta(max_length=64)]
    device_secret: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class EventQuery(CreatedQuery):
    payment: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    type: Annotated[str, msgspec.Meta(max_length=64, description="An event type, or a family: payment.*")] | None = None


class OperatorEventQuery(EventQuery):
    merchant: Annotated[str, msgspec.Meta(max_length=64, description="Only this merchant's events")] | None = None


EventType = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class CreateWebhookEndpoint(Strict):
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    enabled_events: Annotated[list[EventType], msgspec.Meta(min_length=1, max_length=32,
                                                            description='Event types, or ["*"] for all')]
    description: Annotated[str, msgspec.Meta(max_length=500)] | None = None


class UpdateWebhookEndpoint(Strict):
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)] | None = None
    enabled_events: Annotated[list[EventType], msgspec.Meta(min_length=1, max_length=32)] | None = None
    description: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    disabled: bool | None = None


class RotateSecret(Strict):
    expires_in: Annotated[int, msgspec.Meta(ge=0, description="Seconds the previous secret keeps signing")] | None = None


class Redeliver(Strict):
    endpoint: Annotated[str, msgspec.Meta(max_length=64, description="Only to this endpoint")] | None = None


class DeliveryQuery(PageQuery):
    status: Literal["pending", "succeeded", "failed"] | None = None


class HistoryQuery(PageQuery):
    limit: Limit = 20
    currency: Currency | None = None


class SettlementRun(Strict):
    date: Annotated[str, msgspec.Meta(max_length=10, description="The business date, YYYY-MM-DD")]
    merchant: Annotated[str, msgspec.Meta(max_length=64, description="Only this merchant")] | None = None


class MerchantSettlement(Strict):
    timezone: Annotated[str, msgspec.Meta(max_length=64, description="IANA time zone, e.g. Asia/Shanghai")] | None = None
    settlement_cutoff: Annotated[str, msgspec.Meta(max_length=8, description="Local time the day ends, HH:MM")] | None = None
    fee_fixed: Annotated[int, msgspec.Meta(ge=0, description="Fixed fee per capture, minor units")] | None = None


class PayoutAccount(Strict):
    holder_name: Annotated[str, msgspec.Meta(min_length=1, max_length=70)]
    bank_name: ShortText
    account_number: Annotated[str, msgspec.Meta(min_length=8, max_length=42)]
    bic: Annotated[str, msgspec.Meta(min_length=8, max_length=11)] | None = None


# --- holder notifications, budgets, time zone and spending insights (issue 13) ---------------------


class NotificationQuery(PageQuery):
    unread: Annotated[bool, msgspec.Meta(description="true: only notifications not marked read")] | None = None


class PutBudget(Strict):
    category: Annotated[str, msgspec.Meta(max_length=32, description=(
        "overall, or a spending category (MCC group): groceries, dining, transport, shopping, travel,"
        " entertainment, health, utilities, other"))]
    currency: Currency
    amount: Amount


class SetTimeZone(Strict):
    time_zone: Annotated[str, msgspec.Meta(min_length=1, max_length=64, description="IANA time zone, e.g. Asia/Shanghai")]


class InsightsQuery(Strict):
    month: Annotated[str, msgspec.Meta(description="YYYY-MM in the holder's time zone; default: this month")] | None = None
    currency: Currency | None = None
