"""The gateway's own QR codes in the EMVCo merchant-presented format.

The gateway's merchant account template (ID 26) carries the scheme id (sub-ID 00) and a random
one-time token (sub-ID 01); the token, not anything else in the payload, is what the gateway
looks up. Dynamic codes (initiation 12) carry the amount and the payment's reference (62-05);
static codes (11) carry no amount: the payer types it in.

Invariant: ``token_of(parse(encode(p)), scheme_id)`` returns the token the code was made with;
a payload of another scheme yields ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.domain import emv_qr
from gateway.domain.emv_qr import (
    AdditionalData,
    AlternateLanguage,
    Amount,
    GuidTemplate,
    Initiation,
    MerchantPayload,
    SubField,
)

ACCOUNT_TEMPLATE_ID = "26"
TOKEN_SUB_ID = "01"


@dataclass(frozen=True, slots=True)
class MerchantFace:
    """What a payer's wallet shows of the merchant."""

    name: str
    city: str
    mcc: str
    country: str
    name_local: str | None = None
    city_local: str | None = None
    language_local: str | None = None


def _clip(text: str, length_max: int) -> str:
    return text[:length_max].strip() or "-"


def _base(
    scheme_id: str, token: str, merchant: MerchantFace, currency_numeric: int, initiation: Initiation,
    amount: Amount | None, additional: AdditionalData | None,
) -> MerchantPayload:
    alternate = None
    if merchant.name_local:
        alternate = AlternateLanguage(
            language=(merchant.language_local or "ZH").upper(),
            merchant_name=_clip(merchant.name_local, emv_qr.MERCHANT_NAME_LENGTH_MAX),
            merchant_city=_clip(merchant.city_local, emv_qr.MERCHANT_CITY_LENGTH_MAX) if merchant.city_local else None,
        )
    return MerchantPayload(
        accounts=(GuidTemplate(ACCOUNT_TEMPLATE_ID, scheme_id, (SubField(TOKEN_SUB_ID, token),)),),
        merchant_category_code=merchant.mcc,
        currency_numeric=f"{currency_numeric:03d}",
        country_code=merchant.country,
        merchant_name=_clip(merchant.name, emv_qr.MERCHANT_NAME_LENGTH_MAX),
        merchant_city=_clip(merchant.city, emv_qr.MERCHANT_CITY_LENGTH_MAX),
        initiation=initiation,
        amount=amount,
        additional_data=additional,
        alternate_language=alternate,
    )


def dynamic(
    scheme_id: str, token: str, merchant: MerchantFace, currency_numeric: int, amount_minor: int, exponent: int,
    reference: str, terminal_label: str | None = None,
) -> str:
    additional = AdditionalData(
        reference_label=_clip(reference, emv_qr.ADDITIONAL_DATA_LENGTH_MAX),
        terminal_label=_clip(terminal_label, emv_qr.ADDITIONAL_DATA_LENGTH_MAX) if terminal_label else None,
    )
    payload = _base(scheme_id, token, merchant, currency_numeric, Initiation.DYNAMIC,
                    Amount(amount_minor, exponent), additional)
    return emv_qr.encode(payload)


def static(scheme_id: str, token: str, merchant: MerchantFace, currency_numeric: int, store_label: str) -> str:
    additional = AdditionalData(store_label=_clip(store_label, emv_qr.ADDITIONAL_DATA_LENGTH_MAX))
    return emv_qr.encode(_base(scheme_id, token, merchant, currency_numeric, Initiation.STATIC, None, additional))


def token_of(payload: MerchantPayload, scheme_id: str) -> str | None:
    for account in payload.accounts:
        if isinstance(account, GuidTemplate) and account.guid == scheme_id:
            for field in account.fields:
                if field.id == TOKEN_SUB_ID:
                    return field.value
    return None
