"""The monthly partition plan: which months to create ahead and which to drop past retention."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from gateway.domain.partitions import Month, parse_name, plan
from gateway.settings import load

NOW = datetime(2026, 12, 2, 20, 0, tzinfo=UTC)


def months(*firsts: str) -> tuple[Month, ...]:
    return tuple(Month(date.fromisoformat(f + "-01")) for f in firsts)


def test_month_arithmetic_crosses_years_and_names_the_partition() -> None:
    assert Month(date(2026, 11, 1)).shifted(3) == Month(date(2027, 2, 1))
    assert Month(date(2026, 1, 1)).shifted(-1) == Month(date(2025, 12, 1))
    assert Month(date(2026, 12, 1)).end == datetime(2027, 1, 1, tzinfo=UTC)
    assert Month.of(datetime(2026, 12, 31, 23, 30, tzinfo=UTC)) == Month(date(2026, 12, 1))
    assert Month(date(2026, 3, 1)).name("events") == "events_p202603"
    assert parse_name("events", "events_p202603") == Month(date(2026, 3, 1))
    assert parse_name("events", "events_p202613") is None
    assert parse_name("events", "payments_p202603") is None
    assert parse_name("events", "events_default") is None


def test_a_fresh_table_gets_the_retention_window_and_the_months_ahead() -> None:
    got = plan(set(), NOW, timedelta(days=40), ahead_months=2)
    # cutoff 2026-10-23: October still holds rows younger than the retention
    assert got.create == months("2026-10", "2026-11", "2026-12", "2027-01", "2027-02")
    assert got.drop == ()


def test_a_month_goes_only_once_all_of_it_is_past_retention() -> None:
    existing = set(months("2026-09", "2026-10", "2026-11", "2026-12", "2027-01", "2027-02"))
    got = plan(existing, NOW, timedelta(days=40), ahead_months=2)
    assert got == plan(existing, NOW, timedelta(days=40), ahead_months=2)
    assert got.drop == months("2026-09")  # ends 2026-10-01, before the cutoff 2026-10-23
    assert got.create == ()
    # the cutoff exactly at a month's end drops it; a second earlier keeps it
    at_end = datetime(2026, 10, 1, tzinfo=UTC) + timedelta(days=40)
    assert plan(existing, at_end, timedelta(days=40), 2).drop == months("2026-09")
    assert plan(existing, at_end - timedelta(seconds=1), timedelta(days=40), 2).drop == ()


def test_nonsense_is_refused() -> None:
    with pytest.raises(ValueError):
        plan(set(), NOW, timedelta(0), 1)
    with pytest.raises(ValueError):
        plan(set(), NOW, timedelta(days=1), 25)


@pytest.mark.parametrize(("section", "values", "message"), [
    ("idempotency", {"retention_s": 86399}, "idempotency.retention_s is at least 86400"),
    ("partitions", {"events_retention_s": 86400}, "at least webhooks.retry_window_s"),
    ("partitions", {"ahead_months": 0}, "ahead_months"),
])
def test_retention_settings_below_what_is_promised_are_refused(
        section: str, values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load(env={}, **{section: values})
