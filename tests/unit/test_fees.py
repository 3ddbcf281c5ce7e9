"""Fees: half-up integer rounding, bounded by the amount, and refunds that return exactly the fee."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.fees import FEE_BPS_MAX, fee_minor, refund_fee_minor
from gateway.domain.money import AMOUNT_MINOR_MAX

amounts_minor = st.integers(min_value=1, max_value=AMOUNT_MINOR_MAX)
rates_bps = st.integers(min_value=0, max_value=FEE_BPS_MAX)


@pytest.mark.parametrize(
    ("amount_minor", "rate_bps", "fixed_minor", "expected_minor"),
    [
        (10_000, 60, 0, 60),  # 0.60 % of 100.00
        (1_000, 60, 0, 6),
        (250, 60, 0, 2),  # 1.5 rounds half up to 2
        (249, 60, 0, 1),  # 1.494 rounds down
        (750, 60, 0, 5),  # 4.5 rounds half up to 5
        (83, 60, 0, 0),  # 0.498 rounds down
        (84, 60, 0, 1),  # 0.504 rounds up
        (1, 5_000, 0, 1),  # 0.5 rounds half up to 1
        (3, 5_000, 0, 2),  # 1.5 rounds half up to 2
        (1_000, 0, 0, 0),
        (1_000, FEE_BPS_MAX, 0, 1_000),
        (1_000, 60, 30, 36),
        (10, 60, 30, 10),  # the fixed part cannot take the fee above the amount
        (0, 60, 30, 0),
        (-100, 60, 30, 0),
        # Beyond float precision: 0.6 % of 10^15 - 1 is 5999999999999.994, exactly.
        (AMOUNT_MINOR_MAX - 1, 60, 0, 6_000_000_000_000),
    ],
)
def test_fee_examples(amount_minor: int, rate_bps: int, fixed_minor: int, expected_minor: int) -> None:
    assert fee_minor(amount_minor, rate_bps, fixed_minor) == expected_minor


@pytest.mark.parametrize("rate_bps", [-1, FEE_BPS_MAX + 1])
def test_rate_out_of_range_refused(rate_bps: int) -> None:
    with pytest.raises(ValueError):
        fee_minor(1_000, rate_bps)


@given(amount_minor=amounts_minor, rate_bps=rates_bps, fixed_minor=st.integers(min_value=0, max_value=AMOUNT_MINOR_MAX))
def test_fee_is_between_zero_and_the_amount(amount_minor: int, rate_bps: int, fixed_minor: int) -> None:
    fee = fee_minor(amount_minor, rate_bps, fixed_minor)
    assert 0 <= fee <= amount_minor


@given(amount_minor=amounts_minor, rate_bps=rates_bps)
def test_fee_is_the_exact_half_up_rounding(amount_minor: int, rate_bps: int) -> None:
    fee = fee_minor(amount_minor, rate_bps)
    # exact - fee is in [-1/2, 1/2): a tie (exact = n + 1/2) goes up to n + 1, an error of exactly -1/2.
    twice_error_bps = 2 * (amount_minor * rate_bps - fee * 10_000)
    assert -10_000 <= twice_error_bps < 10_000


@given(amount_minor=amounts_minor, low_bps=rates_bps, high_bps=rates_bps)
def test_fee_grows_with_the_rate(amount_minor: int, low_bps: int, high_bps: int) -> None:
    low_bps, high_bps = sorted((low_bps, high_bps))
    assert fee_minor(amount_minor, low_bps) <= fee_minor(amount_minor, high_bps)


@st.composite
def refund_splits(draw: st.DrawFn) -> tuple[int, int, list[int]]:
    """A captured amount, its fee, and the captured amount cut into positive partial refunds."""
    captured_minor = draw(st.integers(min_value=1, max_value=AMOUNT_MINOR_MAX))
    fee_total_minor = draw(st.integers(min_value=0, max_value=captured_minor))
    cut_count = min(captured_minor - 1, 30)
    cuts = (
        draw(st.sets(st.integers(min_value=1, max_value=captured_minor - 1), max_size=cut_count))
        if cut_count
        else set()
    )
    bounds = [0, *sorted(cuts), captured_minor]
    return captured_minor, fee_total_minor, [high - low for low, high in itertools.pairwise(bounds)]


@given(refund_splits())
def test_partial_refund_fees_sum_to_the_whole_fee(split: tuple[int, int, list[int]]) -> None:
    captured_minor, fee_total_minor, parts_minor = split
    refunded_before_minor = 0
    fee_parts_minor: list[int] = []
    for refund_minor in parts_minor:
        fee_back_minor = refund_fee_minor(captured_minor, fee_total_minor, refunded_before_minor, refund_minor)
        # The ledger's refund recipe requires 0 <= fee_back <= refund.
        assert 0 <= fee_back_minor <= refund_minor
        fee_parts_minor.append(fee_back_minor)
        refunded_before_minor += refund_minor
    assert sum(fee_parts_minor) == fee_total_minor


@given(refund_splits())
def test_partial_refund_fees_never_run_ahead_of_the_proportional_share(split: tuple[int, int, list[int]]) -> None:
    captured_minor, fee_total_minor, parts_minor = split
    refunded_minor = returned_minor = 0
    for refund_minor in parts_minor:
        returned_minor += refund_fee_minor(captured_minor, fee_total_minor, refunded_minor, refund_minor)
        refunded_minor += refund_minor
        assert returned_minor * captured_minor <= fee_total_minor * refunded_minor


def test_refund_fee_examples() -> None:
    # 100.00 captured with a 0.60 fee, refunded in three parts.
    assert refund_fee_minor(10_000, 60, 0, 3_333) == 19
    assert refund_fee_minor(10_000, 60, 3_333, 3_333) == 20
    assert refund_fee_minor(10_000, 60, 6_666, 3_334) == 21
    assert refund_fee_minor(10_000, 60, 0, 10_000) == 60
    assert refund_fee_minor(0, 60, 0, 0) == 0
