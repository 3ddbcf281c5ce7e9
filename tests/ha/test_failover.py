"""The short HA run (tests/ha/failover.py): two Patroni nodes with synchronous replication, two
gateways, payments throughout a postmaster kill, a whole-node kill and a switchover of the primary. Every
check of the bank checker must hold on the new primary, no acknowledged payment may be lost, each
failover must end with service back and the old primary streaming again as a standby.
``./dev ha-test`` is the long version (three nodes, three gateways)."""

from __future__ import annotations

import os
import pwd

import pytest

from tests.ha import failover
from tests.ha.cluster import missing_binaries


def _why_not() -> str | None:
    missing = missing_binaries()
    if missing:
        return f"needs Patroni, etcd and PostgreSQL 15 (apt-get install -y patroni etcd-server): missing {missing}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root needs the postgres OS user to run PostgreSQL"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


async def test_payments_survive_three_failovers() -> None:
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    report = await failover.run(failover.Options(seed=14, nodes=2, failovers=3, gateways=2, workers=6, gap_s=6.0),
                                out=out)
    summary = "\n".join(lines)
    assert report.anomalies == [], summary
    assert [f.kind for f in report.failovers] == ["postmaster kill", "node kill", "switchover"], summary
    assert report.lost == 0 and report.confirmed > 20 and report.paid > 0, summary
    for each in report.failovers:
        assert each.new is not None and each.new != each.old, summary
        assert each.downtime_s is not None and each.downtime_s < 40, summary
        assert each.rejoined_s is not None, summary
