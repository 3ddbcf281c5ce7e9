"""Merchant discount fees in integer arithmetic.

Invariant: ``0 <= fee_minor <= amount_minor``; rounding is half-up on exact integers, never floats.
A rate is expressed in basis points (1 bp = 0.01 %).
"""

from __future__ import annotations

FEE_BPS_MAX = 10_000


def fee_minor(amount_minor: int, rate_bps: int, fixed_minor: int = 0) -> int:
    if not 0 <= rate_bps <= FEE_BPS_MAX:
        raise ValueError("rate_bps out of range")
    if fixed_minor < 0:
        raise ValueError("fixed_minor must not be negative")
    if amount_minor <= 0:
        return 0
    proportional = (amount_minor * rate_bps + 5_000) // 10_000
    return min(amount_minor, proportional + fixed_minor)


def refund_fee_minor(captured_minor: int, fee_total_minor: int, refunded_before_minor: int, refund_minor: int) -> int:
    """The part of the original fee returned with a refund, so that refunding everything returns the whole fee.

    Computed as the difference of cumulative shares, so partial refunds never sum to more (or less) than the fee.
    """
    if captured_minor <= 0:
        return 0
    before = (fee_total_minor * refunded_before_minor) // captured_minor
    after = (fee_total_minor * (refunded_before_minor + refund_minor)) // captured_minor
    return after - before
