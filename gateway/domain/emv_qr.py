"""EMVCo merchant-presented QR payloads: a typed model, a canonical encoder and a strict parser.

The payload is a chain of data objects ``ID`` (2 digits) + ``LEN`` (2 digits) + ``VALUE``;
templates (26-51, 62, 64, 80-99) hold a chain of the same shape. ``63`` is the CRC.

Invariants:
- Pure: standard library only; no I/O, no clock, no randomness.
- ``LEN`` counts characters (Unicode code points, Python's ``len``), never UTF-8 bytes; the CRC
  alone is computed over the UTF-8 bytes (CRC-16/CCITT-FALSE up to and including ``"6304"``).
- Every model object checks its own limits when it is built, so a ``MerchantPayload`` that
  exists always encodes: ``encode`` cannot fail, and its output is at most
  ``PAYLOAD_LENGTH_MAX`` characters.
- ``encode`` writes the canonical order: ascending IDs, sub-IDs ascending inside templates,
  ``63`` last, the CRC in upper-case hex. ``parse(encode(p)) == p`` for every payload ``p``.
- ``parse`` accepts the data objects between ``00`` (first) and ``63`` (last) in any order and
  rejects everything else with one exception class, ``QrFormatError``, whose ``code`` is
  stable and whose ``id`` / ``sub_id`` name the offending field. Decisions:
  * the CRC hex digits are compared case-insensitively (wallet apps in the field accept
    lower-case too); ``encode`` always writes upper case;
  * nothing may follow the CRC, not even a newline: callers strip scanner suffixes;
  * field values must be non-empty and printable (``str.isprintable``): no control, format,
    surrogate or non-ASCII space characters;
  * IDs the specification reserves for future use (top level 65-79; 62 sub-IDs 00 and 10-49;
    64 sub-IDs 03-99) are refused as ``unknown_field``: this codec cannot vouch for them.
    Payment-system-specific 62 sub-IDs 50-99 and the unreserved templates 80-99 are kept raw;
  * amounts keep the number of decimals they were written with (``"23.70"`` is
    ``Amount(2370, 2)``); leading zeros are accepted and dropped on re-encoding. The check
    against the currency's exponent needs the ISO 4217 table, so it is the caller's, through
    ``parse_amount`` / ``Amount.to_minor``.
"""

from __future__ import annotations

import binascii
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

# EMVCo caps the whole payload at 512 characters; it also bounds the parser's work.
PAYLOAD_LENGTH_MAX: Final = 512
# ``LEN`` is two digits.
VALUE_LENGTH_MAX: Final = 99
AMOUNT_TEXT_LENGTH_MAX: Final = 13
# "0." plus the decimals must fit in the 13 characters of an amount.
AMOUNT_EXPONENT_MAX: Final = AMOUNT_TEXT_LENGTH_MAX - 2
PERCENTAGE_TEXT_LENGTH_MAX: Final = 5
GUID_LENGTH_MAX: Final = 32
MERCHANT_NAME_LENGTH_MAX: Final = 25
MERCHANT_CITY_LENGTH_MAX: Final = 15
POSTAL_CODE_LENGTH_MAX: Final = 10
ADDITIONAL_DATA_LENGTH_MAX: Final = 25

_CRC_HEADER: Final = "6304"
_CRC_INIT: Final = 0xFFFF
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")
_DECIMAL_RE: Final = re.compile(r"([0-9]+)(?:\.([0-9]+))?", re.ASCII)
_CONSUMER_DATA_LETTERS: Final = frozenset("AME")

_NETWORK_ACCOUNT_IDS: Final = range(2, 26)
_ACCOUNT_TEMPLATE_IDS: Final = range(26, 52)
_RESERVED_IDS: Final = range(65, 80)
_UNRESERVED_TEMPLATE_IDS: Final = range(80, 100)
_TEMPLATE_SUB_IDS: Final = range(1, 100)
_PAYMENT_SYSTEM_SUB_IDS: Final = range(50, 100)


class ErrorCode(StrEnum):
    """Stable machine-readable reasons a payload is refused (compare with plain strings)."""

    TRUNCATED = "truncated"  # the text ends inside an ID + LEN header
    BAD_TLV = "bad_tlv"  # ID or LEN is not two ASCII digits
    BAD_LENGTH = "bad_length"  # LEN 00, LEN past the end, a value over its limit, payload over 512
    DUPLICATE_FIELD = "duplicate_field"
    MISSING_FIELD = "missing_field"
    MISPLACED_FIELD = "misplaced_field"  # 00 not first
    TRAILING_DATA = "trailing_data"  # anything after the CRC
    UNKNOWN_FIELD = "unknown_field"  # an ID reserved for future use, or outside its template's range
    BAD_VALUE = "bad_value"
    CRC_MISMATCH = "crc_mismatch"


class QrFormatError(ValueError):
    """A payload or model value that breaks the format.

    ``id`` is the top-level ID at fault ("54"), ``"02-51"`` when no merchant account
    information is present at all, or ``None`` for faults of the whole text (too long, cut
    inside a header). ``sub_id`` names the sub-field inside template ``id``.
    """

    def __init__(self, code: ErrorCode, message: str, *, id: str | None = None, sub_id: str | None = None) -> None:
        where = "" if id is None else f" [{id}]" if sub_id is None else f" [{id}.{sub_id}]"
        super().__init__(f"{code}: {message}{where}")
        self.code = code
        self.message = message
        self.id = id
        self.sub_id = sub_id


class Initiation(StrEnum):
    STATIC = "11"  # one code, many payments
    DYNAMIC = "12"  # one code, one order


class TipIndicator(StrEnum):
    PROMPT = "01"  # the wallet asks the consumer for a tip
    FEE_FIXED = "02"  # convenience fee in 56
    FEE_PERCENTAGE = "03"  # convenience fee percentage in 57


@dataclass(frozen=True, slots=True)
class Amount:
    """An exact non-negative decimal as written on the wire: ``amount_minor`` x 10^-``exponent``.

    ``Amount(2372, 2)`` is ``"23.72"``; ``Amount(1230, 0)`` is ``"1230"``. Its text is at
    most 13 characters. Field 57 uses it for a percentage: ``Amount(350, 2)`` is 3.50 %.
    """

    amount_minor: int
    exponent: int

    def __post_init__(self) -> None:
        for number in (self.amount_minor, self.exponent):
            if isinstance(number, bool) or not isinstance(number, int):
                raise TypeError("amount_minor and exponent must be int")
        if self.amount_minor < 0:
            raise QrFormatError(ErrorCode.BAD_VALUE, "an amount cannot be negative")
        if not 0 <= self.exponent <= AMOUNT_EXPONENT_MAX:
            raise QrFormatError(ErrorCode.BAD_VALUE, f"exponent must be 0..{AMOUNT_EXPONENT_MAX}")
        # Bound the integer before it is ever turned into text.
        if self.amount_minor >= 10**AMOUNT_TEXT_LENGTH_MAX or len(self.text) > AMOUNT_TEXT_LENGTH_MAX:
            raise QrFormatError(ErrorCode.BAD_LENGTH, f"amount text longer than {AMOUNT_TEXT_LENGTH_MAX}")

    @property
    def text(self) -> str:
        if self.exponent == 0:
            return str(self.amount_minor)
        units, fraction = divmod(self.amount_minor, 10**self.exponent)
        return f"{units}.{fraction:0{self.exponent}d}"

    def to_minor(self, exponent: int) -> int:
        """Minor units at a currency's ``exponent``; more decimals than it has is an error."""
        return _rescale(self, exponent, None)


@dataclass(frozen=True, slots=True)
class SubField:
    """A raw data object inside a template: the scheme's own meaning, kept verbatim."""

    id: str
    value: str


@dataclass(frozen=True, slots=True)
class NetworkAccount:
    """Merchant account information 02-25: one primitive value reserved for a card network."""

    id: str
    value: str

    def __post_init__(self) -> None:
        if not _in_range(self.id, _NETWORK_ACCOUNT_IDS):
            raise QrFormatError(ErrorCode.UNKNOWN_FIELD, "network account IDs are 02-25", id=self.id)
        _check_text(self.value, VALUE_LENGTH_MAX, self.id)


@dataclass(frozen=True, slots=True)
class GuidTemplate:
    """A template whose sub-ID 00 is a globally unique id: accounts 26-51 and unreserved 80-99.

    ``fields`` are the sub-IDs 01-99 in ascending order.
    """

    id: str
    guid: str
    fields: tuple[SubField, ...] = ()

    def __post_init__(self) -> None:
        if not (_in_range(self.id, _ACCOUNT_TEMPLATE_IDS) or _in_range(self.id, _UNRESERVED_TEMPLATE_IDS)):
            raise QrFormatError(ErrorCode.UNKNOWN_FIELD, "GUID templates are 26-51 and 80-99", id=self.id)
        _check_text(self.guid, GUID_LENGTH_MAX, self.id, "00")
        _check_sub_fields(self.fields, _TEMPLATE_SUB_IDS, VALUE_LENGTH_MAX, self.id)
        _check_template_length(self.id, _template_items(self))


@dataclass(frozen=True, slots=True)
class Tip:
    """Fields 55-57: the tip or convenience fee, with its amount when the indicator needs one."""

    indicator: TipIndicator
    fee_fixed: Amount | None = None  # 56, present exactly when the indicator is FEE_FIXED
    fee_percentage: Amount | None = None  # 57, present exactly when the indicator is FEE_PERCENTAGE

    def __post_init__(self) -> None:
        _check_conditional(self.fee_fixed, self.indicator is TipIndicator.FEE_FIXED, "56")
        _check_conditional(self.fee_percentage, self.indicator is TipIndicator.FEE_PERCENTAGE, "57")
        if self.fee_percentage is not None:
            percentage = self.fee_percentage
            if len(percentage.text) > PERCENTAGE_TEXT_LENGTH_MAX:
                raise QrFormatError(ErrorCode.BAD_LENGTH, "a percentage has at most 5 characters", id="57")
            if not 0 < percentage.amount_minor < 100 * 10**percentage.exponent:
                raise QrFormatError(ErrorCode.BAD_VALUE, "a percentage lies between 0 and 100", id="57")


@dataclass(frozen=True, slots=True)
class AdditionalData:
    """Template 62. A dynamic code binds its payment through ``reference_label`` (62-05)."""

    bill_number: str | None = None  # 01
    mobile_number: str | None = None  # 02
    store_label: str | None = None  # 03
    loyalty_number: str | None = None  # 04
    reference_label: str | None = None  # 05
    customer_label: str | None = None  # 06
    terminal_label: str | None = None  # 07
    purpose: str | None = None  # 08
    consumer_data_request: str | None = None  # 09: letters A (address), M (mobile), E (email)
    payment_system_fields: tuple[SubField, ...] = ()  # 50-99, ascending

    def __post_init__(self) -> None:
        named = self.named_fields()
        for sub_id, value in named:
            if value is not None:
                _check_text(value, ADDITIONAL_DATA_LENGTH_MAX, "62", sub_id)
        request = self.consumer_data_request
        if request is not None and (len(set(request)) != len(request) or not set(request) <= _CONSUMER_DATA_LETTERS):
            raise QrFormatError(
                ErrorCode.BAD_VALUE, "consumer data request is distinct letters of A, M, E", id="62", sub_id="09"
            )
        _check_sub_fields(self.payment_system_fields, _PAYMENT_SYSTEM_SUB_IDS, VALUE_LENGTH_MAX, "62")
        items = _additional_data_items(self)
        if not items:
            raise QrFormatError(ErrorCode.BAD_LENGTH, "an additional data template cannot be empty", id="62")
        _check_template_length("62", items)

    def named_fields(self) -> tuple[tuple[str, str | None], ...]:
        """The sub-IDs 01-09 and their values; the one map from sub-ID to attribute."""
        return (
            ("01", self.bill_number),
            ("02", self.mobile_number),
            ("03", self.store_label),
            ("04", self.loyalty_number),
            ("05", self.reference_label),
            ("06", self.customer_label),
            ("07", self.terminal_label),
            ("08", self.purpose),
            ("09", self.consumer_data_request),
        )


@dataclass(frozen=True, slots=True)
class AlternateLanguage:
    """Template 64: the merchant's name and city in another language (e.g. Chinese)."""

    language: str  # 00: ISO 639 alpha-2, either case ("ZH" appears in the EMVCo sample)
    merchant_name: str  # 01
    merchant_city: str | None = None  # 02

    def __post_init__(self) -> None:
        if not (len(self.language) == 2 and self.language.isascii() and self.language.isalpha()):
            raise QrFormatError(ErrorCode.BAD_VALUE, "language is two ASCII letters", id="64", sub_id="00")
        _check_text(self.merchant_name, MERCHANT_NAME_LENGTH_MAX, "64", "01")
        if self.merchant_city is not None:
            _check_text(self.merchant_city, MERCHANT_CITY_LENGTH_MAX, "64", "02")
        _check_template_length("64", _alternate_language_items(self))


@dataclass(frozen=True, slots=True)
class MerchantPayload:
    """One merchant-presented payload, without its CRC (``encode`` computes it).

    ``accounts`` (02-51) and ``unreserved`` (80-99) are in ascending ID order.
    """

    accounts: tuple[NetworkAccount | GuidTemplate, ...]
    merchant_category_code: str  # 52, ISO 18245
    currency_numeric: str  # 53, ISO 4217 numeric ("156")
    country_code: str  # 58, ISO 3166-1 alpha-2, upper case
    merchant_name: str  # 59
    merchant_city: str  # 60
    initiation: Initiation | None = None  # 01
    amount: Amount | None = None  # 54, absent when the consumer types it in
    tip: Tip | None = None  # 55-57
    postal_code: str | None = None  # 61
    additional_data: AdditionalData | None = None  # 62
    alternate_language: AlternateLanguage | None = None  # 64
    unreserved: tuple[GuidTemplate, ...] = ()  # 80-99

    def __post_init__(self) -> None:
        if not self.accounts:
            raise QrFormatError(
                ErrorCode.MISSING_FIELD, "at least one merchant account (02-51) is required", id="02-51"
            )
        _check_ascending(self.accounts, None)
        for account in self.accounts:
            if isinstance(account, GuidTemplate) and not _in_range(account.id, _ACCOUNT_TEMPLATE_IDS):
                raise QrFormatError(ErrorCode.UNKNOWN_FIELD, "account templates are 26-51", id=account.id)
        _check_ascending(self.unreserved, None)
        for template in self.unreserved:
            if not _in_range(template.id, _UNRESERVED_TEMPLATE_IDS):
                raise QrFormatError(ErrorCode.UNKNOWN_FIELD, "unreserved templates are 80-99", id=template.id)
        if not _is_ascii_digits(self.merchant_category_code, 4):
            raise QrFormatError(ErrorCode.BAD_VALUE, "merchant category code is 4 digits", id="52")
        if not _is_ascii_digits(self.currency_numeric, 3):
            raise QrFormatError(ErrorCode.BAD_VALUE, "currency is 3 ISO 4217 numeric digits", id="53")
        if self.amount is not None and self.amount.amount_minor == 0:
            raise QrFormatError(ErrorCode.BAD_VALUE, "an amount, when present, is not zero", id="54")
        country = self.country_code
        if not (len(country) == 2 and country.isascii() and country.isalpha() and country.isupper()):
            raise QrFormatError(ErrorCode.BAD_VALUE, "country is two upper-case ASCII letters", id="58")
        _check_text(self.merchant_name, MERCHANT_NAME_LENGTH_MAX, "59")
        _check_text(self.merchant_city, MERCHANT_CITY_LENGTH_MAX, "60")
        if self.postal_code is not None:
            _check_text(self.postal_code, POSTAL_CODE_LENGTH_MAX, "61")
        length = sum(4 + len(value) for _, value in _payload_items(self)) + len(_CRC_HEADER) + 4
        if length > PAYLOAD_LENGTH_MAX:
            raise QrFormatError(ErrorCode.BAD_LENGTH, f"payload would be {length} > {PAYLOAD_LENGTH_MAX} characters")


def crc16_ccitt_false(text: str) -> str:
    """CRC-16/CCITT-FALSE of the UTF-8 bytes of ``text``, as 4 upper-case hex digits."""
    return f"{binascii.crc_hqx(text.encode('utf-8'), _CRC_INIT):04X}"


def encode(payload: MerchantPayload) -> str:
    """The canonical payload text, CRC included."""
    body = _tlv(_payload_items(payload)) + _CRC_HEADER
    return body + crc16_ccitt_false(body)


def parse(text: str) -> MerchantPayload:
    """The payload in ``text``, or ``QrFormatError`` naming the first fault found.

    Faults are looked for in this order: the framing of the top level (headers, lengths, 00
    first, 63 last), duplicates, the CRC, then each field's value.
    """
    if len(text) > PAYLOAD_LENGTH_MAX:
        raise QrFormatError(ErrorCode.BAD_LENGTH, f"payload longer than {PAYLOAD_LENGTH_MAX} characters")
    fields: dict[str, str] = {}
    crc_text: str | None = None
    for id, value, end in _split(text, None):
        if not fields and id != "00":
            raise QrFormatError(ErrorCode.MISPLACED_FIELD, "a payload starts with ID 00", id="00")
        if id in fields:
            raise QrFormatError(ErrorCode.DUPLICATE_FIELD, "ID appears twice", id=id)
        if id == "63":
            if len(value) != 4:
                raise QrFormatError(ErrorCode.BAD_LENGTH, "the CRC has length 04", id="63")
            if end != len(text):
                raise QrFormatError(ErrorCode.TRAILING_DATA, "nothing may follow the CRC", id="63")
            crc_text = value
        fields[id] = value
    if not fields:
        raise QrFormatError(ErrorCode.MISSING_FIELD, "empty payload", id="00")
    if crc_text is None:
        raise QrFormatError(ErrorCode.MISSING_FIELD, "the CRC (63) must end the payload", id="63")
    if not set(crc_text) <= _HEX_DIGITS:
        raise QrFormatError(ErrorCode.BAD_VALUE, "the CRC is 4 hex digits", id="63")
    if crc_text.upper() != crc16_ccitt_false(text[: -len(crc_text)]):
        raise QrFormatError(ErrorCode.CRC_MISMATCH, "CRC does not match the payload", id="63")
    return _build(fields)


def parse_amount(text: str, exponent: int) -> int:
    """Minor units of a 54-style decimal string at a currency's ``exponent``, exactly.

    ``parse_amount("23.7", 2) == 2370``; ``parse_amount("23.701", 2)`` and
    ``parse_amount("1.00", 0)`` raise: more decimals than the currency has.
    """
    return _rescale(_amount_from_text(text, "54"), exponent, "54")


def format_amount(amount_minor: int, exponent: int) -> str:
    """The 54-style decimal string of ``amount_minor`` at ``exponent``: ``(2372, 2) -> "23.72"``."""
    return Amount(amount_minor, exponent).text


def _rescale(amount: Amount, exponent: int, id: str | None) -> int:
    if not 0 <= exponent <= AMOUNT_EXPONENT_MAX:
        raise ValueError(f"exponent must be 0..{AMOUNT_EXPONENT_MAX}")
    if amount.exponent > exponent:
        raise QrFormatError(ErrorCode.BAD_VALUE, f"more than {exponent} decimals for this currency", id=id)
    scale: int = 10 ** (exponent - amount.exponent)
    return amount.amount_minor * scale


def _amount_from_text(text: str, id: str) -> Amount:
    if len(text) > AMOUNT_TEXT_LENGTH_MAX:
        raise QrFormatError(ErrorCode.BAD_LENGTH, f"an amount has at most {AMOUNT_TEXT_LENGTH_MAX} characters", id=id)
    match = _DECIMAL_RE.fullmatch(text)
    if match is None:
        raise QrFormatError(ErrorCode.BAD_VALUE, "an amount is digits with an optional '.' and decimals", id=id)
    fraction = match.group(2) or ""
    return Amount(int(match.group(1) + fraction), len(fraction))


def _split(text: str, parent_id: str | None) -> Iterator[tuple[str, str, int]]:
    """The data objects of ``text`` as (id, value, end offset), checking only the framing."""
    position = 0
    while position < len(text):
        if len(text) - position < 4:
            raise QrFormatError(ErrorCode.TRUNCATED, "text ends inside an ID + LEN header", id=parent_id)
        id, length_text = text[position : position + 2], text[position + 2 : position + 4]
        field_id, sub_id = _where(parent_id, id)
        if not _is_ascii_digits(id, 2):
            raise QrFormatError(ErrorCode.BAD_TLV, f"ID {id!r} is not two digits", id=parent_id)
        if not _is_ascii_digits(length_text, 2):
            raise QrFormatError(ErrorCode.BAD_TLV, f"LEN {length_text!r} is not two digits", id=field_id, sub_id=sub_id)
        length = int(length_text)
        start, end = position + 4, position + 4 + length
        if length == 0:
            raise QrFormatError(ErrorCode.BAD_LENGTH, "LEN 00: a present field has a value", id=field_id, sub_id=sub_id)
        if end > len(text):
            raise QrFormatError(ErrorCode.BAD_LENGTH, f"LEN {length} runs past the end", id=field_id, sub_id=sub_id)
        yield id, text[start:end], end
        position = end


def _split_template(value: str, parent_id: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for sub_id, sub_value, _ in _split(value, parent_id):
        if sub_id in fields:
            raise QrFormatError(ErrorCode.DUPLICATE_FIELD, "sub-ID appears twice", id=parent_id, sub_id=sub_id)
        fields[sub_id] = sub_value
    return fields


def _build(fields: dict[str, str]) -> MerchantPayload:
    if fields["00"] != "01":
        raise QrFormatError(ErrorCode.BAD_VALUE, "payload format indicator is 01", id="00")
    for id in fields:
        if _in_range(id, _RESERVED_IDS):
            raise QrFormatError(ErrorCode.UNKNOWN_FIELD, "IDs 65-79 are reserved for future use", id=id)
    for id in ("52", "53", "58", "59", "60"):
        if id not in fields:
            raise QrFormatError(ErrorCode.MISSING_FIELD, "mandatory field absent", id=id)
    initiation = fields.get("01")
    if initiation is not None and initiation not in {member.value for member in Initiation}:
        raise QrFormatError(ErrorCode.BAD_VALUE, "point of initiation is 11 or 12", id="01")
    accounts: list[NetworkAccount | GuidTemplate] = []
    unreserved: list[GuidTemplate] = []
    for id in sorted(fields):
        if _in_range(id, _NETWORK_ACCOUNT_IDS):
            accounts.append(NetworkAccount(id, fields[id]))
        elif _in_range(id, _ACCOUNT_TEMPLATE_IDS):
            accounts.append(_build_guid_template(id, fields[id]))
        elif _in_range(id, _UNRESERVED_TEMPLATE_IDS):
            unreserved.append(_build_guid_template(id, fields[id]))
    amount = fields.get("54")
    postal_code = fields.get("61")
    additional_data = fields.get("62")
    alternate_language = fields.get("64")
    return MerchantPayload(
        accounts=tuple(accounts),
        merchant_category_code=fields["52"],
        currency_numeric=fields["53"],
        country_code=fields["58"],
        merchant_name=fields["59"],
        merchant_city=fields["60"],
        initiation=None if initiation is None else Initiation(initiation),
        amount=None if amount is None else _amount_from_text(amount, "54"),
        tip=_build_tip(fields),
        postal_code=postal_code,
        additional_data=None if additional_data is None else _build_additional_data(additional_data),
        alternate_language=None if alternate_language is None else _build_alternate_language(alternate_language),
        unreserved=tuple(unreserved),
    )


def _build_guid_template(id: str, value: str) -> GuidTemplate:
    sub = _split_template(value, id)
    guid = sub.pop("00", None)
    if guid is None:
        raise QrFormatError(ErrorCode.MISSING_FIELD, "a template starts with its GUID", id=id, sub_id="00")
    return GuidTemplate(id, guid, _sub_fields(sub))


def _build_tip(fields: dict[str, str]) -> Tip | None:
    indicator = fields.get("55")
    fee_fixed = fields.get("56")
    fee_percentage = fields.get("57")
    if indicator is None:
        if fee_fixed is not None or fee_percentage is not None:
            raise QrFormatError(ErrorCode.MISSING_FIELD, "a convenience fee needs its indicator", id="55")
        return None
    if indicator not in {member.value for member in TipIndicator}:
        raise QrFormatError(ErrorCode.BAD_VALUE, "tip indicator is 01, 02 or 03", id="55")
    return Tip(
        TipIndicator(indicator),
        fee_fixed=None if fee_fixed is None else _amount_from_text(fee_fixed, "56"),
        fee_percentage=None if fee_percentage is None else _amount_from_text(fee_percentage, "57"),
    )


def _build_additional_data(value: str) -> AdditionalData:
    sub = _split_template(value, "62")
    for sub_id in sub:
        if not ("01" <= sub_id <= "09" or _in_range(sub_id, _PAYMENT_SYSTEM_SUB_IDS)):
            raise QrFormatError(ErrorCode.UNKNOWN_FIELD, "62 sub-IDs 00 and 10-49 are reserved", id="62", sub_id=sub_id)
    return AdditionalData(
        bill_number=sub.pop("01", None),
        mobile_number=sub.pop("02", None),
        store_label=sub.pop("03", None),
        loyalty_number=sub.pop("04", None),
        reference_label=sub.pop("05", None),
        customer_label=sub.pop("06", None),
        terminal_label=sub.pop("07", None),
        purpose=sub.pop("08", None),
        consumer_data_request=sub.pop("09", None),
        payment_system_fields=_sub_fields(sub),
    )


def _build_alternate_language(value: str) -> AlternateLanguage:
    sub = _split_template(value, "64")
    for sub_id in sub:
        if sub_id not in {"00", "01", "02"}:
            raise QrFormatError(ErrorCode.UNKNOWN_FIELD, "64 sub-IDs 03-99 are reserved", id="64", sub_id=sub_id)
    for sub_id in ("00", "01"):
        if sub_id not in sub:
            raise QrFormatError(ErrorCode.MISSING_FIELD, "language and name are mandatory", id="64", sub_id=sub_id)
    return AlternateLanguage(sub["00"], sub["01"], sub.get("02"))


def _sub_fields(sub: dict[str, str]) -> tuple[SubField, ...]:
    return tuple(SubField(sub_id, sub[sub_id]) for sub_id in sorted(sub))


def _payload_items(payload: MerchantPayload) -> list[tuple[str, str]]:
    """Every top-level (id, value) but the CRC, in canonical order."""
    items = [("00", "01")]
    if payload.initiation is not None:
        items.append(("01", payload.initiation.value))
    for account in payload.accounts:
        value = account.value if isinstance(account, NetworkAccount) else _tlv(_template_items(account))
        items.append((account.id, value))
    items += [("52", payload.merchant_category_code), ("53", payload.currency_numeric)]
    if payload.amount is not None:
        items.append(("54", payload.amount.text))
    if payload.tip is not None:
        items.append(("55", payload.tip.indicator.value))
        if payload.tip.fee_fixed is not None:
            items.append(("56", payload.tip.fee_fixed.text))
        if payload.tip.fee_percentage is not None:
            items.append(("57", payload.tip.fee_percentage.text))
    items += [("58", payload.country_code), ("59", payload.merchant_name), ("60", payload.merchant_city)]
    if payload.postal_code is not None:
        items.append(("61", payload.postal_code))
    if payload.additional_data is not None:
        items.append(("62", _tlv(_additional_data_items(payload.additional_data))))
    if payload.alternate_language is not None:
        items.append(("64", _tlv(_alternate_language_items(payload.alternate_language))))
    items += [(template.id, _tlv(_template_items(template))) for template in payload.unreserved]
    return items


def _template_items(template: GuidTemplate) -> list[tuple[str, str]]:
    return [("00", template.guid), *((field.id, field.value) for field in template.fields)]


def _additional_data_items(data: AdditionalData) -> list[tuple[str, str]]:
    named = [(sub_id, value) for sub_id, value in data.named_fields() if value is not None]
    return named + [(field.id, field.value) for field in data.payment_system_fields]


def _alternate_language_items(language: AlternateLanguage) -> list[tuple[str, str]]:
    items = [("00", language.language), ("01", language.merchant_name)]
    if language.merchant_city is not None:
        items.append(("02", language.merchant_city))
    return items


def _tlv(items: Sequence[tuple[str, str]]) -> str:
    return "".join(f"{id}{len(value):02d}{value}" for id, value in items)


def _check_text(value: str, length_max: int, id: str, sub_id: str | None = None) -> None:
    if not value or len(value) > length_max:
        raise QrFormatError(ErrorCode.BAD_LENGTH, f"length must be 1..{length_max}", id=id, sub_id=sub_id)
    if not value.isprintable():
        raise QrFormatError(ErrorCode.BAD_VALUE, "value has non-printable characters", id=id, sub_id=sub_id)


def _check_template_length(id: str, items: Sequence[tuple[str, str]]) -> None:
    length = sum(4 + len(value) for _, value in items)
    if length > VALUE_LENGTH_MAX:
        raise QrFormatError(ErrorCode.BAD_LENGTH, f"template is {length} > {VALUE_LENGTH_MAX} characters", id=id)


def _check_sub_fields(fields: tuple[SubField, ...], allowed: range, length_max: int, parent_id: str) -> None:
    for field in fields:
        if not _in_range(field.id, allowed):
            raise QrFormatError(
                ErrorCode.UNKNOWN_FIELD, "sub-ID outside the template's range", id=parent_id, sub_id=field.id
            )
        _check_text(field.value, length_max, parent_id, field.id)
    _check_ascending(fields, parent_id)


def _check_ascending(fields: Sequence[SubField | NetworkAccount | GuidTemplate], parent_id: str | None) -> None:
    """Strictly ascending IDs: the canonical order, and no duplicates."""
    for before, after in itertools.pairwise(fields):
        if before.id >= after.id:
            code = ErrorCode.DUPLICATE_FIELD if before.id == after.id else ErrorCode.BAD_VALUE
            field_id, sub_id = _where(parent_id, after.id)
            raise QrFormatError(code, "IDs must be unique and ascending", id=field_id, sub_id=sub_id)


def _check_conditional(amount: Amount | None, expected: bool, id: str) -> None:
    if expected and amount is None:
        raise QrFormatError(ErrorCode.MISSING_FIELD, "the tip indicator requires this fee", id=id)
    if not expected and amount is not None:
        raise QrFormatError(ErrorCode.BAD_VALUE, "the tip indicator does not allow this fee", id=id)
    if amount is not None and amount.amount_minor == 0:
        raise QrFormatError(ErrorCode.BAD_VALUE, "a convenience fee is not zero", id=id)


def _where(parent_id: str | None, id: str) -> tuple[str, str | None]:
    """(id, sub_id) of a data object found at the top level or inside template ``parent_id``."""
    return (id, None) if parent_id is None else (parent_id, id)


def _in_range(id: str, ids: range) -> bool:
    return _is_ascii_digits(id, 2) and int(id) in ids


def _is_ascii_digits(text: str, length: int) -> bool:
    return len(text) == length and text.isascii() and text.isdigit()
