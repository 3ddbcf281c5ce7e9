"""Monthly budgets, the pure part: categories, threshold arithmetic, months.

Invariants:
- all arithmetic is on integers (minor units, whole percents): ``spent * 100 >= percent * amount``
  decides a threshold, with no division and so no rounding;
- a threshold is *crossed* by a step of spending from ``before`` to ``after`` exactly when
  ``before`` is below it and ``after`` at or above it; refunds make spending go down, so a later
  step may cross it again (the store keeps one reminder per budget, threshold and month);
- ``spent`` is net of refunds in the month and may be negative (a refund of last month's purchase);
  ``remaining`` is ``amount - spent`` (negative once over budget); ``percent_used`` is the floor of
  ``spent * 100 / amount``, never below 0.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Final

from gateway.domain import mcc

OVERALL: Final = "overall"
CATEGORIES: Final = (OVERALL, *mcc.GROUPS)
THRESHOLDS_PERCENT: Final = (80, 100)  # the reminders a budget gives, in the order they come
_MONTH_RE = re.compile(r"^([0-9]{4})-([0-9]{2})$")
YEAR_MIN = 1970
YEAR_MAX = 9998  # the month after must still be a date


def crossed(amount_minor: int, before_minor: int, after_minor: int,
            thresholds_percent: tuple[int, ...] = THRESHOLDS_PERCENT) -> list[int]:
    """The thresholds (percent of ``amount_minor``) that spending from ``before_minor`` to
    ``after_minor`` crosses upwards, in ascending order."""
    if amount_minor <= 0:
        raise ValueError("a budget's amount is positive")
    return [p for p in sorted(thresholds_percent)
            if before_minor * 100 < p * amount_minor <= after_minor * 100]


@dataclass(frozen=True, slots=True)
class Usage:
    spent_minor: int
    remaining_minor: int
    percent_used: int


def usage(amount_minor: int, spent_minor: int) -> Usage:
    if amount_minor <= 0:
        raise ValueError("a budget's amount is positive")
    return Usage(spent_minor, amount_minor - spent_minor, max(0, spent_minor * 100 // amount_minor))


def parse_month(text: str) -> date | None:
    """``"2026-12"`` -> 2026-12-01; None unless it is YYYY-MM with a real month in range."""
    found = _MONTH_RE.fullmatch(text)
    if found is None:
        return None
    year, month = int(found.group(1)), int(found.group(2))
    if not (YEAR_MIN <= year <= YEAR_MAX and 1 <= month <= 12):
        return None
    return date(year, month, 1)


def month_text(first_day: date) -> str:
    return f"{first_day.year:04d}-{first_day.month:02d}"
