"""Daily settlement, the pure part: business days, batch arithmetic, payout references and dates.

Business day. A merchant's day ``D`` ends at its cutoff (a local wall-clock time in its IANA time
zone) on ``D``; a cutoff of 00:00 means midnight at the end of ``D``. The day covers the instants
``[end(D - 1), end(D))``: an entry at or after the cutoff belongs to the next day.
DST rule (one rule for both cases): the day ends at the FIRST instant at which the merchant's wall
clock reads the cutoff or later on that date. So a cutoff inside a spring-forward gap (02:30 in New
York) ends the day when the clocks jump (03:00 EDT), and a cutoff that happens twice in a fall-back
hour (01:30) ends it at the first occurrence (01:30 EDT).

Fees (``gateway.domain.fees``): fixed at capture time per capture, ``round_half_up(amount * bps /
10_000) + fixed``, never more than the amount; a refund gives back the share
``floor(fee * refunded_cumulative / captured)`` minus what earlier refunds gave back, so refunding
everything returns exactly the fee. A batch's fee is the sum of its captures' fees minus the fee its
refunds gave back (it can be negative).

Merchant-funded cashback (gateway/domain/promotions.py): a capture pays the holder the cashback its
merchant funds out of what the merchant receives, and a refund gives the merchant back the part it
claws back; a batch's cashback is the first less the second (it can be negative, as its fee can).

Batch arithmetic. ``net = captured - refunded - fee - cashback + carry_in``; a positive net is the payout, a
negative one is carried to the merchant's next batch of that currency (``carry_out``), never paid.
``carry_in <= 0`` and ``payout = max(net, 0)``, ``carry_out = min(net, 0)``; the store's table CHECK
enforces the same for every row.

No I/O, clock or randomness: times are passed in.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PAYOUT_REFERENCE_PREFIX = "PO"
_CUTOFF_RE = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])(?::([0-5][0-9]))?$")
_TZ_NAME_MAX = 64


class SettlementError(ValueError):
    """A setting or a figure settlement cannot use; the message names it."""


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (e.g. ``Asia/Shanghai``), or ``SettlementError``."""
    if not 1 <= len(name) <= _TZ_NAME_MAX or name.startswith("/") or ".." in name:
        raise SettlementError("timezone must be an IANA time zone name such as Europe/London")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettlementError("timezone must be an IANA time zone name such as Europe/London") from None


def cutoff(text: str) -> time:
    """A cutoff written ``HH:MM`` or ``HH:MM:SS`` (local wall-clock time)."""
    match = _CUTOFF_RE.match(text)
    if match is None:
        raise SettlementError("settlement_cutoff is a local time written HH:MM or HH:MM:SS")
    return time(int(match[1]), int(match[2]), int(match[3] or 0))


def _first_instant_reading(local: datetime, tz: ZoneInfo) -> datetime:
    """The first UTC instant at which the wall clock in ``tz`` reads ``local`` (naive) or later."""
    earlier = local.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if earlier.astimezone(tz).replace(tzinfo=None) == local:
        return earlier  # the time exists; fold=0 is its first occurrence if it repeats
    # In a gap: fold=1 reads it with the offset after the jump, which lands before the jump.
    low = local.replace(tzinfo=tz, fold=1).astimezone(UTC)
    high = earlier
    low, high = min(low, high), max(low, high)
    # Wall time grows with UTC time around a gap; transitions fall on whole seconds.
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).replace(tzinfo=None) >= local:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0) if high.microsecond else high


def day_end(day: date, tz: ZoneInfo, cut: time) -> datetime:
    """The UTC instant at which business day ``day`` ends (exclusive bound of its entries)."""
    if cut == time(0, 0):
        return _first_instant_reading(datetime.combine(day + timedelta(days=1), cut), tz)
    return _first_instant_reading(datetime.combine(day, cut), tz)


@dataclass(frozen=True, slots=True)
class Window:
    day: date
    start: datetime  # inclusive
    end: datetime  # exclusive


def window(day: date, tz: ZoneInfo, cut: time) -> Window:
    return Window(day, day_end(day - timedelta(days=1), tz, cut), day_end(day, tz, cut))


def business_day_of(at: datetime, tz: ZoneInfo, cut: time) -> date:
    """The business day an instant belongs to."""
    local_date = at.astimezone(tz).date()
    for day in (local_date - timedelta(days=1), local_date, local_date + timedelta(days=1)):
        w = window(day, tz, cut)
        if w.start <= at < w.end:
            return day
    raise AssertionError("every instant falls in one of three neighbouring business days")


@dataclass(frozen=True, slots=True)
class Line:
    """One settled movement: a capture (positive) or a refund (negative amount, fee and cashback)."""

    kind: str  # "capture" | "refund"
    amount_minor: int  # gross: captured amount, or the refund's amount as a positive figure
    fee_minor: int  # the capture's fee, or the fee the refund gave back
    cashback_minor: int = 0  # the merchant-funded cashback the capture paid, or the part the refund took back

    @property
    def net_minor(self) -> int:
        sign = 1 if self.kind == "capture" else -1
        return sign * (self.amount_minor - self.fee_minor - self.cashback_minor)


@dataclass(frozen=True, slots=True)
class Totals:
    capture_count: int
    refund_count: int
    captured_minor: int
    refunded_minor: int
    fee_minor: int
    carry_in_minor: int
    net_minor: int
    payout_minor: int
    carry_out_minor: int
    cashback_minor: int = 0


def totals(captured_minor: int, refunded_minor: int, fee_minor: int, carry_in_minor: int,
           capture_count: int = 0, refund_count: int = 0, cashback_minor: int = 0) -> Totals:
    if carry_in_minor > 0:
        raise SettlementError("only a negative net is carried over")
    net = captured_minor - refunded_minor - fee_minor - cashback_minor + carry_in_minor
    return Totals(capture_count, refund_count, captured_minor, refunded_minor, fee_minor, carry_in_minor, net,
                  max(net, 0), min(net, 0), cashback_minor)


def totals_of(lines: list[Line], carry_in_minor: int) -> Totals:
    captures = [line for line in lines if line.kind == "capture"]
    refunds = [line for line in lines if line.kind == "refund"]
    fee = sum(line.fee_minor for line in captures) - sum(line.fee_minor for line in refunds)
    cashback = sum(line.cashback_minor for line in captures) - sum(line.cashback_minor for line in refunds)
    return totals(sum(line.amount_minor for line in captures), sum(line.amount_minor for line in refunds), fee,
                  carry_in_minor, len(captures), len(refunds), cashback)


def payout_reference(batch_id: uuid.UUID) -> str:
    """The payout's pain.001 EndToEndId: ``PO`` + 16 upper-case hex digits derived from its batch, so a
    retried close gives the same reference (at most 35 characters, as ISO 20022 allows)."""
    return PAYOUT_REFERENCE_PREFIX + hashlib.sha256(batch_id.bytes).hexdigest()[:16].upper()


def execution_date(business_date: date) -> date:
    """The payout is executed on the first weekday after its business day (T+1, weekends skipped)."""
    day = business_date + timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day
