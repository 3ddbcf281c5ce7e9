"""The HA run's figure of time without service (tests/ha/failover.py), on observations made up here."""

from __future__ import annotations

from tests.fault.client import Observation
from tests.ha.failover import downtime_s


def _success(at_s: float) -> Observation:
    return Observation("k", "create", at_s - 0.01, at_s, 201, None, None)


def _unavailable(at_s: float) -> Observation:
    return Observation("k", "create", at_s - 0.01, at_s, 503, "database_unavailable", None)


def test_the_longest_gap_from_the_last_success_before_the_fault() -> None:
    steady = [_success(i / 10) for i in range(100)]             # every 0.1 s until 9.9 s
    after = [_success(14.0 + i / 10) for i in range(50)]        # back at 14.0 s
    outage = [_unavailable(10.0 + i / 2) for i in range(8)]      # 503s do not count as service
    assert round(downtime_s([*steady, *outage, *after], 10.0, 20.0) or 0, 2) == 4.1


def test_a_handover_that_served_throughout_shows_only_the_usual_gap() -> None:
    steady = [_success(i / 10) for i in range(200)]
    assert round(downtime_s(steady, 10.0, 15.0) or 0, 2) == 0.1


def test_no_success_after_the_fault_is_no_figure() -> None:
    assert downtime_s([_success(1.0), _unavailable(12.0)], 10.0, 20.0) is None
