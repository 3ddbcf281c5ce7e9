"""The pure parts of budgets and notifications: the MCC groups (ISO 18245), the threshold arithmetic,
months, the push retry rule."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain import budgets, mcc, notifications


def test_ranges_are_sorted_disjoint_within_the_code_space_and_name_known_groups() -> None:
    previous_last = -1
    for first, last, group in mcc.RANGES:
        assert 0 <= first <= last <= 9999
        assert first > previous_last, (first, last)
        assert group in mcc.GROUPS and group != mcc.OTHER
        previous_last = last


@pytest.mark.parametrize(("code", "group"), [
    ("5411", "groceries"), ("5499", "groceries"), ("5462", "groceries"), ("5921", "groceries"),
    ("5812", "dining"), ("5814", "dining"), ("5811", "dining"), ("5813", "dining"),
    ("4111", "transport"), ("4121", "transport"), ("4131", "transport"), ("5541", "transport"),
    ("5542", "transport"), ("7523", "transport"), ("4784", "transport"),
    ("5311", "shopping"), ("5651", "shopping"), ("5732", "shopping"), ("5999", "shopping"), ("4812", "shopping"),
    ("3000", "travel"), ("3351", "travel"), ("3501", "travel"), ("4511", "travel"), ("4722", "travel"),
    ("7011", "travel"), ("7512", "travel"), ("4411", "travel"),
    ("7832", "entertainment"), ("7922", "entertainment"), ("7996", "entertainment"), ("5816", "entertainment"),
    ("5912", "health"), ("8011", "health"), ("8021", "health"), ("8062", "health"), ("8099", "health"),
    ("4119", "health"), ("0742", "health"),
    ("4900", "utilities"), ("4814", "utilities"), ("4899", "utilities"), ("5983", "utilities"),
    ("6011", "other"), ("6300", "other"), ("9311", "other"), ("8211", "other"), ("4829", "other"),
    ("1520", "other"), ("5045", "other"), ("0001", "other"), ("9999", "other"),
])
def test_well_known_codes_map_to_their_group(code: str, group: str) -> None:
    assert mcc.group(code) == group


@pytest.mark.parametrize("text", ["", "581", "58120", "58a2", "５８１２", " 5812", "-812"])
def test_anything_but_four_ascii_digits_is_other(text: str) -> None:
    assert mcc.group(text) == mcc.OTHER


@given(st.integers(min_value=0, max_value=9999))
def test_the_lookup_agrees_with_a_linear_scan_of_the_table(code: int) -> None:
    expected = next((g for first, last, g in mcc.RANGES if first <= code <= last), mcc.OTHER)
    assert mcc.group(f"{code:04d}") == expected


def test_the_sql_arrays_are_the_table() -> None:
    firsts, lasts, groups = mcc.sql_ranges()
    assert list(zip(firsts, lasts, groups, strict=True)) == list(mcc.RANGES)


def test_categories_are_overall_and_every_group() -> None:
    assert budgets.CATEGORIES == ("overall", *mcc.GROUPS)


@pytest.mark.parametrize(("amount", "before", "after", "crossed"), [
    (10000, 0, 7999, []),
    (10000, 0, 8000, [80]),  # exactly at the threshold counts
    (10000, 7999, 8000, [80]),
    (10000, 8000, 9999, []),  # already past 80: not crossed again
    (10000, 7000, 12000, [80, 100]),  # one payment over both
    (10000, 9999, 10000, [100]),
    (10000, 10000, 20000, []),
    (10000, 9000, 7000, []),  # a refund goes down: nothing crossed
    (10000, -500, 8000, [80]),  # a month that began with a refund of last month's purchase
    (3, 2, 3, [80, 100]),  # 80% of 3 is 2.4: 2 < 2.4 <= 3, so both; integers, no rounding
])
def test_crossing_is_from_below_to_at_or_above(amount: int, before: int, after: int, crossed: list[int]) -> None:
    assert budgets.crossed(amount, before, after) == crossed


def test_crossing_uses_no_rounding_at_odd_amounts() -> None:
    # 80% of 1001 is 800.8: 800 is below, 801 at or above.
    assert budgets.crossed(1001, 0, 800) == []
    assert budgets.crossed(1001, 800, 801) == [80]
    assert budgets.crossed(1, 0, 1) == [80, 100]


@given(st.integers(1, 10**12), st.integers(-10**12, 10**12), st.integers(-10**12, 10**12), st.integers(-10**12, 10**12))
def test_a_rise_in_two_steps_crosses_what_one_step_crosses(amount: int, a: int, b: int, c: int) -> None:
    low, mid, high = sorted((a, b, c))
    assert budgets.crossed(amount, low, mid) + budgets.crossed(amount, mid, high) == budgets.crossed(amount, low, high)


def test_a_budget_amount_is_positive() -> None:
    with pytest.raises(ValueError):
        budgets.crossed(0, 0, 1)
    with pytest.raises(ValueError):
        budgets.usage(-1, 0)


@pytest.mark.parametrize(("amount", "spent", "remaining", "percent"), [
    (10000, 0, 10000, 0), (10000, 8199, 1801, 81), (10000, 10000, 0, 100), (10000, 12345, -2345, 123),
    (10000, -300, 10300, 0), (3, 1, 2, 33), (3, 2, 1, 66),
])
def test_usage(amount: int, spent: int, remaining: int, percent: int) -> None:
    assert budgets.usage(amount, spent) == budgets.Usage(spent, remaining, percent)


@pytest.mark.parametrize(("text", "month"), [
    ("2026-12", date(2026, 12, 1)), ("1970-01", date(1970, 1, 1)), ("9998-12", date(9998, 12, 1)),
])
def test_months_parse(text: str, month: date) -> None:
    assert budgets.parse_month(text) == month
    assert budgets.month_text(month) == text


@pytest.mark.parametrize("text", ["2026-13", "2026-00", "2026-1", "26-12", "2026/12", "2026-12-01", "", "9999-12",
                                  "1969-12", "２０２６-12", "2026-12\n"])
def test_bad_months_are_none(text: str) -> None:
    assert budgets.parse_month(text) is None


def test_push_retries_are_bounded_and_jittered() -> None:
    rule = notifications.PushRetry(1.0, 8.0, 4)
    assert rule.next_delay_s(1, 0.999) == pytest.approx(0.999)
    assert rule.next_delay_s(3, 0.5) == pytest.approx(2.0)
    assert rule.next_delay_s(3, 0.0) == 0.0
    assert rule.next_delay_s(4, 0.5) is None  # the fourth attempt was the last
    with pytest.raises(ValueError):
        notifications.PushRetry(1.0, 8.0, 0)
    with pytest.raises(ValueError):
        notifications.PushRetry(2.0, 1.0, 3)


@pytest.mark.parametrize("kind", ["budget.reminder", "risk.alert", "sign_in.new_device"])
def test_kinds_are_family_dot_name(kind: str) -> None:
    assert notifications.check_kind(kind) == kind


@pytest.mark.parametrize("kind", ["budget", "Budget.reminder", "budget.", ".x", "a.b c", "x" * 70 + ".y"])
def test_other_kinds_are_refused(kind: str) -> None:
    with pytest.raises(ValueError):
        notifications.check_kind(kind)
