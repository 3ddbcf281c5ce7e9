"""The EMVCo merchant-presented payload codec: published vectors, every refusal, round trips."""

from __future__ import annotations

import binascii
import functools
import random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.domain.emv_qr import (
    PAYLOAD_LENGTH_MAX,
    AdditionalData,
    AlternateLanguage,
    Amount,
    GuidTemplate,
    Initiation,
    MerchantPayload,
    NetworkAccount,
    QrFormatError,
    SubField,
    Tip,
    TipIndicator,
    crc16_ccitt_false,
    encode,
    format_amount,
    parse,
    parse_amount,
)

VECTOR_EMVCO = (
    "00020101021229300012D156000000000510A93FO3230Q31280012D15600000001030812345678520441115802CN"
    "5914BEST TRANSPORT6007BEIJING64200002ZH0104最佳运输0202北京540523.7253031565502016233030412340603***"
    "0708A60086670902ME91320016A0112233449988770708123456786304A13A"
)
VECTOR_JCB = (
    "0002010102121313JCB12345678900416MASTER12345678905204531153033925407999.1235802JP5906DONGRI"
    "6005TOKYO62240104hoge0504fuga0704piyo6304C343"
)
# The head of a valid payload and its mandatory merchant fields, for building faulty ones.
ACCOUNT = "2615" + "0011com.example"
HEAD = "000201010212" + ACCOUNT
MERCHANT = "52045812" + "5303156" + "5802CN" + "5905SHACK" + "6008SHANGHAI"


def tlv(id: str, value: str) -> str:
    return f"{id}{len(value):02d}{value}"


def with_crc(body: str) -> str:
    """``body`` closed by a correct CRC, computed here independently of the module."""
    body += "6304"
    return body + f"{binascii.crc_hqx(body.encode('utf-8'), 0xFFFF):04X}"


def split_top_level(text: str) -> list[tuple[str, str]]:
    """A test-side TLV splitter, so the shuffle property does not trust the parser's own."""
    items: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        id, length = text[position : position + 2], int(text[position + 2 : position + 4])
        items.append((id, text[position + 4 : position + 4 + length]))
        position += 4 + length
    return items


def refusal(text: str) -> QrFormatError:
    with pytest.raises(QrFormatError) as caught:
        parse(text)
    return caught.value


# -- CRC and published vectors ------------------------------------------------------------------


def test_crc_check_value() -> None:
    assert crc16_ccitt_false("123456789") == "29B1"


def test_crc_is_over_utf8_bytes() -> None:
    assert crc16_ccitt_false("北京") == f"{binascii.crc_hqx('北京'.encode(), 0xFFFF):04X}"


def test_emvco_vector_parses() -> None:
    payload = parse(VECTOR_EMVCO)
    assert payload.initiation is Initiation.DYNAMIC
    assert payload.accounts == (
        GuidTemplate("29", "D15600000000", (SubField("05", "A93FO3230Q"),)),
        GuidTemplate("31", "D15600000001", (SubField("03", "12345678"),)),
    )
    assert payload.merchant_category_code == "4111"
    assert payload.currency_numeric == "156"
    assert payload.amount == Amount(2372, 2)
    assert payload.tip == Tip(TipIndicator.PROMPT)
    assert (payload.country_code, payload.merchant_name, payload.merchant_city) == ("CN", "BEST TRANSPORT", "BEIJING")
    assert payload.additional_data == AdditionalData(
        store_label="1234", customer_label="***", terminal_label="A6008667", consumer_data_request="ME"
    )
    assert payload.alternate_language == AlternateLanguage("ZH", "最佳运输", "北京")
    assert payload.unreserved == (GuidTemplate("91", "A011223344998877", (SubField("07", "12345678"),)),)


def test_emvco_vector_round_trips_semantically() -> None:
    # The sample is not in canonical order (64 before 54, 53 after 54...), so the text changes.
    canonical = encode(parse(VECTOR_EMVCO))
    assert canonical != VECTOR_EMVCO
    assert parse(canonical) == parse(VECTOR_EMVCO)
    assert sorted(split_top_level(canonical)[:-1]) == sorted(split_top_level(VECTOR_EMVCO)[:-1])
    assert [id for id, _ in split_top_level(canonical)] == [
        "00", "01", "29", "31", "52", "53", "54", "55", "58", "59", "60", "62", "64", "91", "63"
    ]  # fmt: skip


def test_jcb_vector_parses() -> None:
    payload = parse(VECTOR_JCB)
    assert payload.accounts == (NetworkAccount("04", "MASTER1234567890"), NetworkAccount("13", "JCB1234567890"))
    assert payload.amount == Amount(999123, 3)
    assert payload.currency_numeric == "392"
    assert payload.additional_data == AdditionalData(bill_number="hoge", reference_label="fuga", terminal_label="piyo")


def test_jcb_vector_reencodes_with_accounts_ascending() -> None:
    # The vector lists account 13 before 04; the canonical text swaps them and so its CRC.
    expected = with_crc(
        "000201010212" + "0416MASTER1234567890" + "1313JCB1234567890" + "52045311530339254079"
        "99.1235802JP5906DONGRI6005TOKYO62240104hoge0504fuga0704piyo"
    )
    assert encode(parse(VECTOR_JCB)) == expected


def test_jcb_vector_amount_has_more_decimals_than_yen() -> None:
    # The codec keeps what is written; the currency rule is applied by the caller.
    amount = parse(VECTOR_JCB).amount
    assert amount is not None
    with pytest.raises(QrFormatError) as caught:
        amount.to_minor(0)
    assert caught.value.code == "bad_value"
    assert amount.to_minor(3) == 999123


def test_canonical_text_is_a_fixed_point() -> None:
    canonical = encode(parse(VECTOR_EMVCO))
    assert encode(parse(canonical)) == canonical


def test_lower_case_crc_is_accepted() -> None:
    assert parse(VECTOR_EMVCO[:-4] + VECTOR_EMVCO[-4:].lower()) == parse(VECTOR_EMVCO)


def test_encoded_crc_is_upper_case_hex() -> None:
    crc = encode(parse(VECTOR_JCB))[-4:]
    assert crc == crc.upper() and int(crc, 16) >= 0


# -- LEN counts characters --------------------------------------------------------------------


def test_chinese_length_counts_characters_not_bytes() -> None:
    name = "上海浦东咖啡馆"
    text = with_crc(HEAD + "52045812530315658" + "02CN" + tlv("59", name) + "6008SHANGHAI")
    assert tlv("59", name) == "5907上海浦东咖啡馆"
    assert parse(text).merchant_name == name
    assert "5907上海浦东咖啡馆" in encode(parse(text))


def test_chinese_length_written_in_bytes_is_refused() -> None:
    body = HEAD + "52045812530315658" + "02CN" + "5921上海浦东咖啡馆" + "6008SHANGHAI"
    assert refusal(with_crc(body)).code in {"bad_length", "bad_tlv", "truncated"}


def test_chinese_name_limit_is_25_characters() -> None:
    def text_for(name: str) -> str:
        return with_crc(HEAD + "52045812" + "5303156" + "5802CN" + tlv("59", name) + "6008SHANGHAI")

    assert parse(text_for("咖" * 25)).merchant_name == "咖" * 25
    error = refusal(text_for("咖" * 26))
    assert (error.code, error.id) == ("bad_length", "59")


# -- refusals -----------------------------------------------------------------------------------

REFUSALS: list[tuple[str, str, str, str | None, str | None]] = [
    # (case, text, code, id, sub_id)
    ("crc wrong", VECTOR_JCB[:-1] + "4", "crc_mismatch", "63", None),
    ("payload altered", VECTOR_JCB.replace("DONGRI", "DONGRA"), "crc_mismatch", "63", None),
    ("crc not hex", VECTOR_JCB[:-4] + "C34G", "bad_value", "63", None),
    ("crc length 05", HEAD + MERCHANT + "6305C343A", "bad_length", "63", None),
    ("crc absent", HEAD + MERCHANT, "missing_field", "63", None),
    ("empty text", "", "missing_field", "00", None),
    ("header cut", "0002015", "truncated", None, None),
    ("header cut in template", with_crc(HEAD + MERCHANT + tlv("62", "0104hoge05")), "truncated", "62", None),
    ("id not digits", with_crc(HEAD + "5A04" + "5812" + MERCHANT[8:]), "bad_tlv", None, None),
    ("len not digits", with_crc(HEAD + "52A45812" + MERCHANT[8:]), "bad_tlv", "52", None),
    ("len non-ascii digits", with_crc(HEAD + "52٠4" + "5812" + MERCHANT[8:]), "bad_tlv", "52", None),
    ("len in template not digits", with_crc(HEAD + MERCHANT + tlv("62", "05x4fuga")), "bad_tlv", "62", "05"),
    ("len overruns text", HEAD + MERCHANT + "6199123", "bad_length", "61", None),
    ("len overruns template", with_crc(HEAD + MERCHANT + tlv("62", "0509fuga")), "bad_length", "62", "05"),
    ("len 00", with_crc(HEAD + MERCHANT + "6100"), "bad_length", "61", None),
    ("duplicate top level", with_crc(HEAD + MERCHANT + "5905OTHER"), "duplicate_field", "59", None),
    ("duplicate in 62", with_crc(HEAD + MERCHANT + tlv("62", "0504fuga0504hoge")), "duplicate_field", "62", "05"),
    ("duplicate in 26", with_crc("000201" + tlv("26", "0003abc0101x0101y") + MERCHANT), "duplicate_field", "26", "01"),
    ("00 not first", with_crc("010212000201" + ACCOUNT + MERCHANT), "misplaced_field", "00", None),
    ("data after crc", VECTOR_JCB + "\n", "trailing_data", "63", None),
    ("field after crc", VECTOR_JCB + "6100", "trailing_data", "63", None),
    ("crc in the middle", with_crc(HEAD + "6304ABCD" + MERCHANT), "trailing_data", "63", None),
    ("payload format 02", with_crc("000202" + HEAD[6:] + MERCHANT), "bad_value", "00", None),
    ("initiation 13", with_crc("000201010213" + HEAD[12:] + MERCHANT), "bad_value", "01", None),
    ("no account", with_crc("000201010212" + MERCHANT), "missing_field", "02-51", None),
    ("template without guid", with_crc("000201" + tlv("26", "0103abc") + MERCHANT), "missing_field", "26", "00"),
    ("guid too long", with_crc("000201" + tlv("26", tlv("00", "g" * 33)) + MERCHANT), "bad_length", "26", "00"),
    ("unreserved without guid", with_crc(HEAD + MERCHANT + tlv("80", "0103abc")), "missing_field", "80", "00"),
    ("reserved 65", with_crc(HEAD + MERCHANT + "6502xx"), "unknown_field", "65", None),
    ("reserved 79", with_crc(HEAD + MERCHANT + "7902xx"), "unknown_field", "79", None),
    ("62 sub-ID 00", with_crc(HEAD + MERCHANT + tlv("62", "0002xx")), "unknown_field", "62", "00"),
    ("62 sub-ID 10", with_crc(HEAD + MERCHANT + tlv("62", "1002xx")), "unknown_field", "62", "10"),
    ("62 sub-ID 49", with_crc(HEAD + MERCHANT + tlv("62", "4902xx")), "unknown_field", "62", "49"),
    ("64 sub-ID 03", with_crc(HEAD + MERCHANT + tlv("64", "0002zh0102名字0302xx")), "unknown_field", "64", "03"),
    ("64 without name", with_crc(HEAD + MERCHANT + tlv("64", "0002zh")), "missing_field", "64", "01"),
    ("64 without language", with_crc(HEAD + MERCHANT + tlv("64", "0102名字")), "missing_field", "64", "00"),
    ("64 language not letters", with_crc(HEAD + MERCHANT + tlv("64", "0002z10102名字")), "bad_value", "64", "00"),
    ("mcc 3 digits", with_crc(HEAD + "5203581" + MERCHANT[8:]), "bad_value", "52", None),
    ("mcc letters", with_crc(HEAD + "520458A2" + MERCHANT[8:]), "bad_value", "52", None),
    ("currency 2 digits", with_crc(HEAD + "52045812" + "530215" + MERCHANT[15:]), "bad_value", "53", None),
    ("country lower case", with_crc(HEAD + MERCHANT.replace("5802CN", "5802cn")), "bad_value", "58", None),
    ("country 3 letters", with_crc(HEAD + MERCHANT.replace("5802CN", "5803CHN")), "bad_value", "58", None),
    (
        "city 16 characters",
        with_crc(HEAD + MERCHANT.replace("6008SHANGHAI", tlv("60", "C" * 16))),
        "bad_length",
        "60",
        None,
    ),
    ("postal code 11", with_crc(HEAD + MERCHANT + tlv("61", "1" * 11)), "bad_length", "61", None),
    ("name control char", with_crc(HEAD + MERCHANT.replace("5905SHACK", "5905SHA\x07K")), "bad_value", "59", None),
    ("62 value 26", with_crc(HEAD + MERCHANT + tlv("62", tlv("05", "r" * 26))), "bad_length", "62", "05"),
    ("62-09 bad letter", with_crc(HEAD + MERCHANT + tlv("62", "0902MX")), "bad_value", "62", "09"),
    ("62-09 repeated", with_crc(HEAD + MERCHANT + tlv("62", "0902MM")), "bad_value", "62", "09"),
    ("missing 52", with_crc(HEAD + MERCHANT[8:]), "missing_field", "52", None),
    ("missing 53", with_crc(HEAD + MERCHANT.replace("5303156", "")), "missing_field", "53", None),
    ("missing 58", with_crc(HEAD + MERCHANT.replace("5802CN", "")), "missing_field", "58", None),
    ("missing 59", with_crc(HEAD + MERCHANT.replace("5905SHACK", "")), "missing_field", "59", None),
    ("missing 60", with_crc(HEAD + MERCHANT.replace("6008SHANGHAI", "")), "missing_field", "60", None),
    ("tip indicator 04", with_crc(HEAD + MERCHANT + "550204"), "bad_value", "55", None),
    ("fixed fee without 56", with_crc(HEAD + MERCHANT + "550202"), "missing_field", "56", None),
    ("percentage without 57", with_crc(HEAD + MERCHANT + "550203"), "missing_field", "57", None),
    ("56 without 55", with_crc(HEAD + MERCHANT + "56041.00"), "missing_field", "55", None),
    ("56 with prompt", with_crc(HEAD + MERCHANT + "550201" + "56041.00"), "bad_value", "56", None),
    ("57 is 100", with_crc(HEAD + MERCHANT + "550203" + "5703100"), "bad_value", "57", None),
    ("57 is 0", with_crc(HEAD + MERCHANT + "550203" + "57040.00"), "bad_value", "57", None),
    ("57 six characters", with_crc(HEAD + MERCHANT + "550203" + "570612.345"), "bad_length", "57", None),
]

BAD_AMOUNTS = [
    ("23.", "bad_value"),
    (".5", "bad_value"),
    ("1,00", "bad_value"),
    ("-1", "bad_value"),
    ("+1", "bad_value"),
    ("1e3", "bad_value"),
    ("1.2.3", "bad_value"),
    (" 12", "bad_value"),
    ("１２", "bad_value"),  # full-width digits are digits to str.isdigit, not to EMVCo
    ("0", "bad_value"),
    ("0.00", "bad_value"),
    ("12345678901.23", "bad_length"),
]


@pytest.mark.parametrize(
    ("text", "code", "id", "sub_id"), [case[1:] for case in REFUSALS], ids=[c[0] for c in REFUSALS]
)
def test_refusal(text: str, code: str, id: str | None, sub_id: str | None) -> None:
    error = refusal(text)
    assert (error.code, error.id, error.sub_id) == (code, id, sub_id), str(error)


@pytest.mark.parametrize(("amount", "code"), BAD_AMOUNTS)
def test_bad_amount_refused(amount: str, code: str) -> None:
    error = refusal(with_crc(HEAD + MERCHANT.replace("5802CN", tlv("54", amount) + "5802CN")))
    assert (error.code, error.id) == (code, "54")


def test_payload_over_512_characters_refused() -> None:
    error = refusal(VECTOR_JCB + "x" * (PAYLOAD_LENGTH_MAX + 1 - len(VECTOR_JCB)))
    assert (error.code, error.id) == ("bad_length", None)


def test_error_is_a_value_error_with_readable_message() -> None:
    error = refusal(VECTOR_JCB[:-1] + "4")
    assert isinstance(error, ValueError)
    assert str(error).startswith("crc_mismatch:") and "[63]" in str(error)


def test_crc_is_checked_before_values() -> None:
    # A bad value under a bad CRC reports the CRC: the text is not what was issued.
    text = with_crc(HEAD + MERCHANT.replace("5802CN", "5802cn"))
    assert refusal(text[:-1] + ("0" if text[-1] != "0" else "1")).code == "crc_mismatch"


# -- the model refuses what it cannot encode ---------------------------------------------------


def minimal(**changes: object) -> MerchantPayload:
    fields: dict[str, object] = {
        "accounts": (GuidTemplate("26", "com.example"),),
        "merchant_category_code": "5812",
        "currency_numeric": "156",
        "country_code": "CN",
        "merchant_name": "SHACK",
        "merchant_city": "SHANGHAI",
    }
    fields.update(changes)
    return MerchantPayload(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "code", "id"),
    [
        (lambda: minimal(accounts=()), "missing_field", "02-51"),
        (lambda: minimal(accounts=(NetworkAccount("13", "b"), NetworkAccount("04", "a"))), "bad_value", "04"),
        (lambda: minimal(accounts=(NetworkAccount("04", "a"), NetworkAccount("04", "b"))), "duplicate_field", "04"),
        (lambda: minimal(accounts=(GuidTemplate("80", "g"),)), "unknown_field", "80"),
        (lambda: minimal(unreserved=(GuidTemplate("26", "g"),)), "unknown_field", "26"),
        (lambda: NetworkAccount("26", "a"), "unknown_field", "26"),
        (lambda: GuidTemplate("52", "g"), "unknown_field", "52"),
        (lambda: GuidTemplate("26", "g", (SubField("00", "x"),)), "unknown_field", "26"),
        (lambda: GuidTemplate("26", "g" * 32, (SubField("01", "x" * 60),)), "bad_length", "26"),
        (lambda: AdditionalData(), "bad_length", "62"),
        (lambda: AdditionalData(payment_system_fields=(SubField("49", "x"),)), "unknown_field", "62"),
        (lambda: AdditionalData(bill_number="b" * 25, mobile_number="m" * 25, store_label="s" * 25, purpose="p" * 25), "bad_length", "62"),
        (lambda: Tip(TipIndicator.FEE_FIXED), "missing_field", "56"),
        (lambda: Tip(TipIndicator.PROMPT, fee_percentage=Amount(5, 0)), "bad_value", "57"),
        (lambda: AlternateLanguage("zh", ""), "bad_length", "64"),
        (lambda: minimal(amount=Amount(0, 2)), "bad_value", "54"),
        (lambda: minimal(merchant_name=""), "bad_length", "59"),
        (lambda: minimal(merchant_city="city\n"), "bad_value", "60"),
        (lambda: minimal(merchant_name="\u3000name"), "bad_value", "59"),
        (lambda: minimal(merchant_name="\ud800"), "bad_value", "59"),
        (lambda: minimal(unreserved=tuple(GuidTemplate(str(80 + i), "g" * 32, (SubField("01", "v" * 59),)) for i in range(5))), "bad_length", None),
    ],
)  # fmt: skip
def test_model_refuses(build: object, code: str, id: str | None) -> None:
    assert callable(build)
    with pytest.raises(QrFormatError) as caught:
        build()
    assert (caught.value.code, caught.value.id) == (code, id), str(caught.value)


def test_amount_type_checks() -> None:
    with pytest.raises(TypeError):
        Amount(True, 2)
    with pytest.raises(TypeError):
        Amount(1.5, 2)  # type: ignore[arg-type]


# -- amounts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "exponent", "minor"),
    [
        ("23.72", 2, 2372),
        ("23.7", 2, 2370),
        ("5", 2, 500),
        ("0.01", 2, 1),
        ("0.29", 2, 29),  # 0.29 * 100 is 28.999999999999996 in floats
        ("1230", 0, 1230),
        ("1.234", 3, 1234),
        ("007.50", 2, 750),
        ("9999999999.99", 2, 999999999999),
        ("999999999.999", 3, 999999999999),
        ("9999999999999", 0, 9999999999999),
        ("0.00000000001", 11, 1),
    ],
)
def test_parse_amount(text: str, exponent: int, minor: int) -> None:
    assert parse_amount(text, exponent) == minor


@pytest.mark.parametrize(
    ("text", "exponent", "code"),
    [
        ("23.720", 2, "bad_value"),  # more decimals than the currency, even zeros
        ("1.00", 0, "bad_value"),
        ("999.123", 0, "bad_value"),
        ("12345678901234", 0, "bad_length"),
        ("1.", 2, "bad_value"),
        ("", 2, "bad_value"),
    ],
)
def test_parse_amount_refuses(text: str, exponent: int, code: str) -> None:
    with pytest.raises(QrFormatError) as caught:
        parse_amount(text, exponent)
    assert (caught.value.code, caught.value.id) == (code, "54")


def test_parse_amount_refuses_impossible_exponent() -> None:
    with pytest.raises(ValueError):
        parse_amount("1", 12)
    with pytest.raises(ValueError):
        parse_amount("1", -1)


@pytest.mark.parametrize(
    ("minor", "exponent", "text"),
    [(2372, 2, "23.72"), (5, 2, "0.05"), (0, 2, "0.00"), (1230, 0, "1230"), (1, 3, "0.001"), (100, 2, "1.00")],
)
def test_format_amount(minor: int, exponent: int, text: str) -> None:
    assert format_amount(minor, exponent) == text


@pytest.mark.parametrize(
    ("minor", "exponent", "code"),
    [
        (-1, 2, "bad_value"),
        (1, 12, "bad_value"),
        (1, -1, "bad_value"),
        (10**13, 0, "bad_length"),
        (10**12, 2, "bad_length"),
    ],
)
def test_format_amount_refuses(minor: int, exponent: int, code: str) -> None:
    with pytest.raises(QrFormatError) as caught:
        format_amount(minor, exponent)
    assert caught.value.code == code


def test_huge_amount_is_refused_before_it_becomes_text() -> None:
    # str() of a 5,000-digit int raises a plain ValueError; the bound comes first.
    with pytest.raises(QrFormatError) as caught:
        Amount(10**5000, 0)
    assert caught.value.code == "bad_length"


@given(exponent=st.integers(0, 4), data=st.data())
def test_amount_text_round_trip(exponent: int, data: st.DataObject) -> None:
    minor = data.draw(st.integers(0, 10 ** (12 - exponent) - 1))
    text = format_amount(minor, exponent)
    assert len(text) <= 13
    assert parse_amount(text, exponent) == minor
    assert parse_amount(text, exponent + 1) == minor * 10


# -- properties ---------------------------------------------------------------------------------

_PRINTABLE = st.characters(codec="utf-8", categories=("L", "M", "N", "P", "S")) | st.characters(
    min_codepoint=0x4E00, max_codepoint=0x9FFF
)


@functools.cache
def texts(length_max: int) -> st.SearchStrategy[str]:
    return st.text(_PRINTABLE | st.just(" "), min_size=1, max_size=length_max).filter(str.isprintable)


@functools.cache
def ids(first: int, last: int, *, min_size: int = 0, max_size: int) -> st.SearchStrategy[list[str]]:
    """Distinct two-digit IDs in ascending order."""
    numbers = st.lists(st.integers(first, last), unique=True, min_size=min_size, max_size=max_size)
    return numbers.map(lambda found: [f"{n:02d}" for n in sorted(found)])


@functools.cache
def digits(count: int) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=count, max_size=count)


@st.composite
def guid_templates(draw: st.DrawFn, id: str) -> GuidTemplate:
    sub_ids = draw(ids(1, 99, max_size=3))
    return GuidTemplate(id, draw(texts(20)), tuple(SubField(sub_id, draw(texts(15))) for sub_id in sub_ids))


@st.composite
def accounts(draw: st.DrawFn) -> tuple[NetworkAccount | GuidTemplate, ...]:
    chosen = draw(ids(2, 51, min_size=1, max_size=2))
    return tuple(NetworkAccount(id, draw(texts(40))) if int(id) <= 25 else draw(guid_templates(id)) for id in chosen)


@functools.cache
def amounts(exponent_max: int, minor_max: int) -> st.SearchStrategy[Amount]:
    return st.builds(Amount, st.integers(1, minor_max), st.integers(0, exponent_max))


# Between 0 and 100 exclusive, in at most 5 characters ("99.99").
PERCENTAGES = st.integers(0, 2).flatmap(lambda e: st.builds(Amount, st.integers(1, 100 * 10**e - 1), st.just(e)))


TIPS = st.one_of(
    st.none(),
    st.just(Tip(TipIndicator.PROMPT)),
    st.builds(Tip, st.just(TipIndicator.FEE_FIXED), fee_fixed=amounts(2, 10**6)),
    st.builds(Tip, st.just(TipIndicator.FEE_PERCENTAGE), fee_percentage=PERCENTAGES),
)


ADDITIONAL_DATA_NAMES = (
    "bill_number", "mobile_number", "store_label", "loyalty_number",
    "reference_label", "customer_label", "terminal_label", "purpose",
)  # fmt: skip
CONSUMER_DATA_REQUESTS = st.none() | st.permutations("AME").flatmap(
    lambda letters: st.integers(1, 3).map(lambda n: "".join(letters[:n]))
)


@st.composite
def additional_data(draw: st.DrawFn) -> AdditionalData:
    # At most 3 named fields of 18 keep the template under its 99 characters.
    chosen = draw(st.lists(st.sampled_from(ADDITIONAL_DATA_NAMES), unique=True, max_size=3))
    values = {name: draw(texts(18)) for name in chosen}
    request = draw(CONSUMER_DATA_REQUESTS)
    extra = draw(ids(50, 99, max_size=1))
    fields = tuple(SubField(sub_id, draw(texts(12))) for sub_id in extra)
    assume(values or request or fields)
    return AdditionalData(consumer_data_request=request, payment_system_fields=fields, **values)


COUNTRIES = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=2, max_size=2)
INITIATIONS = st.none() | st.sampled_from(Initiation)
AMOUNTS = st.none() | amounts(4, 10**9)
POSTAL_CODES = st.none() | texts(10)
ALTERNATE_LANGUAGES = st.none() | st.builds(
    AlternateLanguage, st.text("abcdefghijklmnopqrstuvwxyzZH", min_size=2, max_size=2), texts(25), st.none() | texts(15)
)


@st.composite
def payloads(draw: st.DrawFn) -> MerchantPayload:
    unreserved_ids = draw(ids(80, 99, max_size=1))
    try:
        return MerchantPayload(
            accounts=draw(accounts()),
            merchant_category_code=draw(digits(4)),
            currency_numeric=draw(digits(3)),
            country_code=draw(COUNTRIES),
            merchant_name=draw(texts(25)),
            merchant_city=draw(texts(15)),
            initiation=draw(INITIATIONS),
            amount=draw(AMOUNTS),
            tip=draw(TIPS),
            postal_code=draw(POSTAL_CODES),
            additional_data=draw(st.none() | additional_data()),
            alternate_language=draw(ALTERNATE_LANGUAGES),
            unreserved=tuple(draw(guid_templates(id)) for id in unreserved_ids),
        )
    except QrFormatError as error:
        # Only the 512-character cap may refuse a payload drawn from valid parts.
        assert (error.code, error.id) == ("bad_length", None), str(error)
        assume(False)
        raise


@given(payloads())
def test_round_trip(payload: MerchantPayload) -> None:
    text = encode(payload)
    assert len(text) <= PAYLOAD_LENGTH_MAX
    assert parse(text) == payload
    assert encode(parse(text)) == text


@given(payloads(), st.randoms(use_true_random=False))
def test_any_order_between_00_and_63_parses_the_same(payload: MerchantPayload, shuffler: random.Random) -> None:
    items = split_top_level(encode(payload))
    middle = items[1:-1]
    shuffler.shuffle(middle)
    assert parse(with_crc("".join(tlv(id, value) for id, value in [items[0], *middle]))) == payload


@given(payloads(), st.data())
def test_any_ascii_substitution_is_refused(payload: MerchantPayload, data: st.DataObject) -> None:
    text = encode(payload)
    position = data.draw(st.integers(0, len(text) - 1))
    assume(0x20 <= ord(text[position]) <= 0x7E)
    # A different printable ASCII character: rotate by 1..94 within the 95 of them.
    replacement = chr(0x20 + (ord(text[position]) - 0x20 + data.draw(st.integers(1, 94))) % 95)
    # A case change inside the CRC is the one edit the case-insensitive comparison lets through.
    assume(not (position >= len(text) - 4 and replacement.upper() == text[position].upper()))
    with pytest.raises(QrFormatError):
        parse(text[:position] + replacement + text[position + 1 :])


@given(st.text(max_size=600) | st.text("0123456789ABCDEF.", max_size=200))
def test_arbitrary_text_raises_only_qr_format_error(text: str) -> None:
    try:
        parse(text)
    except QrFormatError:
        pass


@given(payloads(), st.data())
def test_truncated_payload_is_refused(payload: MerchantPayload, data: st.DataObject) -> None:
    text = encode(payload)
    cut = data.draw(st.integers(0, len(text) - 1))
    with pytest.raises(QrFormatError):
        parse(text[:cut])


@given(st.lists(st.tuples(st.integers(0, 99), texts(30) | digits(2) | st.just("0002zh0102名字")), max_size=12))
def test_well_framed_fields_parse_or_raise_qr_format_error(fields: list[tuple[int, str]]) -> None:
    # Framing and CRC are right, so this reaches the placement and value rules for every ID.
    text = with_crc("000201" + "".join(tlv(f"{id:02d}", value) for id, value in fields))
    try:
        payload = parse(text)
    except QrFormatError:
        return
    assert parse(encode(payload)) == payload


@given(payloads(), st.data())
def test_edited_payload_with_fresh_crc_parses_or_raises_qr_format_error(
    payload: MerchantPayload, data: st.DataObject
) -> None:
    body = encode(payload)[:-8]
    start = data.draw(st.integers(0, len(body)))
    end = data.draw(st.integers(start, min(len(body), start + 6)))
    body = body[:start] + data.draw(st.text("0123456789AZaz.*中 ", max_size=6)) + body[end:]
    try:
        edited = parse(with_crc(body))
    except QrFormatError:
        return
    assert parse(encode(edited)) == edited
