"""Money: ISO 4217 exponents, exact decimal parsing, formatting round trips, amount validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.money import (
    AMOUNT_MINOR_MAX,
    Currency,
    Money,
    check_amount,
    currency,
    currency_by_numeric,
)
from gateway.errors import InvalidRequest

# One currency per exponent this gateway commonly moves.
CODE_BY_EXPONENT = {0: "JPY", 2: "CNY", 3: "KWD"}


def refused(call: object, *args: object, **kwargs: object) -> InvalidRequest:
    assert callable(call)
    with pytest.raises(InvalidRequest) as caught:
        call(*args, **kwargs)
    assert caught.value.status == 400
    return caught.value


# -- currencies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "exponent", "numeric"), [("JPY", 0, 392), ("CNY", 2, 156), ("KWD", 3, 414), ("USD", 2, 840)]
)
def test_currency_carries_its_iso_exponent(code: str, exponent: int, numeric: int) -> None:
    assert currency(code) == Currency(code=code, exponent=exponent, numeric=numeric)


def test_currency_code_is_case_insensitive_and_normalised() -> None:
    assert currency("cny") == currency("CNY")
    assert currency("cny").code == "CNY"


@pytest.mark.parametrize(
    "code",
    [
        "XXX",  # "no currency": has no exponent
        "XTS",  # test code: no exponent
        "XAU",  # gold: no exponent
        "XDR",  # SDR: no exponent
        "ABC",  # well formed, not assigned
        "CN",
        "CNYY",
        "",
        "C1Y",
        "CN ",
        "ÄÖÜ",
        156,
        None,
        b"CNY",
    ],
)
def test_unknown_or_malformed_currency_is_invalid_currency(code: object) -> None:
    error = refused(currency, code)
    assert error.code == "invalid_currency"
    assert error.param == "currency"


def test_invalid_currency_names_the_param_given() -> None:
    error = refused(currency, "ZZZ", param="settlement_currency")
    assert (error.code, error.param) == ("invalid_currency", "settlement_currency")
    assert error.body("req_1")["error"]["param"] == "settlement_currency"


def test_currency_by_numeric() -> None:
    assert currency_by_numeric(156) == currency("CNY")
    assert currency_by_numeric(392) == currency("JPY")
    assert currency_by_numeric(999) is None  # XXX has no exponent
    assert currency_by_numeric(1) is None


# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code", "amount_minor"),
    [
        ("23.72", "CNY", 2372),
        ("0.10", "CNY", 10),
        ("0.1", "CNY", 10),
        ("7", "CNY", 700),
        ("0", "CNY", 0),
        ("1230", "JPY", 1230),
        ("1.234", "KWD", 1234),
        ("0.005", "KWD", 5),
        ("0.05", "KWD", 50),
        # Exact where a float would not be: 0.29 * 100 == 28.999999999999996.
        ("0.29", "CNY", 29),
        ("9999999999999.99", "CNY", 999999999999999),
    ],
)
def test_parse_is_exact(text: str, code: str, amount_minor: int) -> None:
    money = Money.parse(text, code)
    assert money.amount_minor == amount_minor
    assert type(money.amount_minor) is int
    assert money.currency == currency(code)


@pytest.mark.parametrize(
    ("text", "code"), [("23.721", "CNY"), ("1.0", "JPY"), ("1.5", "JPY"), ("0.0001", "KWD"), ("1.230", "CNY")]
)
def test_parse_refuses_more_decimals_than_the_exponent(text: str, code: str) -> None:
    error = refused(Money.parse, text, code)
    assert (error.code, error.param) == ("amount_too_precise", "amount")


@pytest.mark.parametrize(
    "text",
    [
        "1e3", "-1", "01", "00", " 1", "1 ", "", "+1", "1.", ".5", "1,00", "1_000", "0x10", "NaN", "inf",
        "１", "٣", "1.2.3", "\t1",
        pytest.param("1\n", id="trailing_newline"),  # must not slip past the regex's end anchor
    ],
)  # fmt: skip
def test_parse_refuses_anything_but_a_plain_decimal(text: str) -> None:
    error = refused(Money.parse, text, "CNY")
    assert (error.code, error.param) == ("invalid_amount", "amount")


def test_parse_names_the_param_given() -> None:
    assert refused(Money.parse, "abc", "CNY", param="amount_to_capture").param == "amount_to_capture"


def test_parse_refuses_unknown_currency_before_the_amount() -> None:
    error = refused(Money.parse, "1.00", "XTS")
    assert (error.code, error.param) == ("invalid_currency", "currency")


@pytest.mark.parametrize(
    ("text", "code"), [("10000000000000000", "JPY"), ("1000000000000.001", "KWD"), ("10000000000000.01", "CNY")]
)
def test_parse_refuses_amounts_above_the_maximum(text: str, code: str) -> None:
    assert refused(Money.parse, text, code).code == "amount_too_large"


def test_parse_accepts_exactly_the_maximum() -> None:
    assert Money.parse("1000000000000000", "JPY").amount_minor == AMOUNT_MINOR_MAX
    assert Money.parse("1000000000000.000", "KWD").amount_minor == AMOUNT_MINOR_MAX


# -- formatting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount_minor", "code", "text"),
    [
        (1230, "CNY", "12.30"),
        (5, "CNY", "0.05"),
        (0, "CNY", "0.00"),
        (1230, "JPY", "1230"),
        (0, "JPY", "0"),
        (5, "KWD", "0.005"),
        (1234567, "KWD", "1234.567"),
        (-1230, "CNY", "-12.30"),
        (-5, "KWD", "-0.005"),
    ],
)
def test_format(amount_minor: int, code: str, text: str) -> None:
    money = Money(amount_minor, currency(code))
    assert money.format() == text
    assert str(money) == f"{text} {code}"


@given(
    amount_minor=st.integers(min_value=0, max_value=AMOUNT_MINOR_MAX),
    exponent=st.sampled_from(sorted(CODE_BY_EXPONENT)),
)
def test_parse_of_format_round_trips(amount_minor: int, exponent: int) -> None:
    code = CODE_BY_EXPONENT[exponent]
    text = Money(amount_minor, currency(code)).format()
    assert Money.parse(text, code).amount_minor == amount_minor


# -- amount validation --------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [1, 1050, AMOUNT_MINOR_MAX])
def test_check_amount_accepts_positive_ints(amount: int) -> None:
    assert check_amount(amount) == amount


def test_check_amount_zero_only_when_allowed() -> None:
    assert refused(check_amount, 0).code == "invalid_amount"
    assert check_amount(0, allow_zero=True) == 0


@pytest.mark.parametrize(
    ("amount", "code"),
    [
        (True, "invalid_amount"),
        (False, "invalid_amount"),
        (10.5, "amount_too_precise"),
        (0.01, "amount_too_precise"),
        (10.0, "invalid_amount"),
        (0.0, "invalid_amount"),
        (-1, "invalid_amount"),
        (-AMOUNT_MINOR_MAX, "invalid_amount"),
        (AMOUNT_MINOR_MAX + 1, "amount_too_large"),
        (10**30, "amount_too_large"),
        ("1050", "invalid_amount"),
        (None, "invalid_amount"),
    ],
)
def test_check_amount_refuses(amount: object, code: str) -> None:
    error = refused(check_amount, amount, "amount_to_capture")
    assert (error.code, error.param) == (code, "amount_to_capture")


def test_check_amount_refuses_zero_bool_even_when_zero_allowed() -> None:
    assert refused(check_amount, False, allow_zero=True).code == "invalid_amount"


def test_money_of_validates_both_parts() -> None:
    assert Money.of(1050, "CNY") == Money(1050, currency("CNY"))
    assert refused(Money.of, 10.5, "CNY").code == "amount_too_precise"
    assert refused(Money.of, 1050, "XTS").code == "invalid_currency"


@pytest.mark.parametrize("amount", [1.0, True, "1", None])
def test_money_refuses_non_int_amounts(amount: object) -> None:
    with pytest.raises(TypeError):
        Money(amount, currency("CNY"))  # type: ignore[arg-type]


def test_money_is_bounded_both_ways() -> None:
    cny = currency("CNY")
    assert Money(-AMOUNT_MINOR_MAX, cny).amount_minor == -AMOUNT_MINOR_MAX
    for amount in (AMOUNT_MINOR_MAX + 1, -AMOUNT_MINOR_MAX - 1):
        with pytest.raises(ValueError):
            Money(amount, cny)
