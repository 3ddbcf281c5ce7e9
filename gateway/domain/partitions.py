"""Which monthly partitions a time-partitioned table keeps (pure: the clock is passed in).

A table partitioned by month of ``created_at`` (UTC) has every month from the one holding the
retention cutoff (``now - retention``) to ``ahead_months`` past the current month, so an insert always
finds its partition even if maintenance stops for that long. A month is dropped only once its whole
range is older than the cutoff: no row goes before it is ``retention`` old. Partitions are named
``<table>_pYYYYMM``; a partition of another name is never touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

AHEAD_MONTHS_MAX = 24
_NAME = re.compile(r"^(?P<table>[a-z_]+)_p(?P<year>\d{4})(?P<month>\d{2})$")


@dataclass(frozen=True, slots=True, order=True)
class Month:
    first_day: date  # always the 1st

    @classmethod
    def of(cls, moment: datetime) -> Month:
        utc = moment.astimezone(UTC)
        return cls(date(utc.year, utc.month, 1))

    def shifted(self, months: int) -> Month:
        index = self.first_day.year * 12 + self.first_day.month - 1 + months
        return Month(date(index // 12, index % 12 + 1, 1))

    @property
    def start(self) -> datetime:
        return datetime(self.first_day.year, self.first_day.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.shifted(1).start

    def name(self, table: str) -> str:
        return f"{table}_p{self.first_day:%Y%m}"


def parse_name(table: str, name: str) -> Month | None:
    """The month a partition of ``table`` named by ``Month.name`` holds; None for any other name."""
    found = _NAME.match(name)
    if found is None or found["table"] != table or not 1 <= int(found["month"]) <= 12:
        return None
    return Month(date(int(found["year"]), int(found["month"]), 1))


@dataclass(frozen=True, slots=True)
class Plan:
    create: tuple[Month, ...]  # oldest first
    drop: tuple[Month, ...]  # oldest first


def plan(existing: set[Month], now: datetime, retention: timedelta, ahead_months: int) -> Plan:
    if retention <= timedelta(0) or not 0 <= ahead_months <= AHEAD_MONTHS_MAX:
        raise ValueError(f"retention is positive and ahead_months in [0, {AHEAD_MONTHS_MAX}]")
    cutoff = now - retention
    month, last = Month.of(cutoff), Month.of(now).shifted(ahead_months)
    wanted: list[Month] = []
    while month <= last:
        wanted.append(month)
        month = month.shifted(1)
    return Plan(tuple(m for m in wanted if m not in existing),
                tuple(sorted(m for m in existing if m.end <= cutoff)))
