"""Payments through real PostgreSQL failovers: ``./dev ha-test [--nodes 3] [--failovers 3] ...``

Builds an etcd member and N Patroni-managed PostgreSQL 15 nodes with synchronous replication
(tests/ha/cluster.py, from deploy/patroni/node.yml), a private Redis, and several ``gateway serve``
processes whose database URL lists every node with ``target_session_attrs=read-write`` (the driver
connects to whichever node is the primary now). The fault harness's bank client (keys journaled
first, each call retried under its key until a definite answer) drives payments throughout while
the primary goes, in turn: SIGKILL of its postmaster (Patroni, still alive, hands over at once:
``primary_start_timeout: 0``), SIGKILL of its whole node (Patroni too: the standby takes over
when the leader lock expires), a planned switchover (every node up, none writable for a moment).
After each failover the old primary is brought back and must rejoin as a standby of the new one
(``use_pg_rewind``).

Then, on the new primary, everything tests/fault/checker.py proves of a bank run: no acknowledged
payment lost, none charged twice, every balance and event as the client's answers say, the ledger
invariants hold, and no 500 (a call during the outage is a retryable 503). Printed: payments,
failovers, lost payments, and per failover the promotion time (kill -> a new writable primary) and
the time without service (the longest time no call succeeded, from the kill to the rejoining).

Invariants: every wait is bounded; every process started here is killed and every temporary
directory removed, on success, on failure and at interpreter exit.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import functools
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests import canary
from tests.e2e.harness import OPERATOR_EMAIL, OPERATOR_PASSWORD, Api, GatewayProcess, Shop, free_tcp_port
from tests.fault import checker
from tests.fault.bank import DRAIN_S, GIVE_UP_AFTER_STOP_S, TOP_UP_MINOR, Cleanup, _holder_ids, _kill_gateway, \
    _merchant_id, _snapshot
from tests.fault.client import BankClient, Observation
from tests.fault.cluster import RedisServer
from tests.fault.journal import Journal
from tests.fault.nemesis import Window
from tests.fault.schedule import Fault, FaultKind
from tests.ha.cluster import HACluster, Node

DATABASE = "gateway"
# What each failover does to the primary, in turn: SIGKILL of its postmaster, SIGKILL of its whole
# node, a planned switchover (demoted while every node is up: no host accepts writes for a moment).
KINDS = ("postmaster kill", "node kill", "switchover")
REJOIN_TIMEOUT_S = 90.0
PROMOTION_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Options:
    seed: int
    nodes: int = 3
    failovers: int = 3
    gateways: int = 3
    workers: int = 8
    merchants: int = 2
    holders: int = 6
    gap_s: float = 10.0      # load before each failover and after the last one


@dataclass
class Failover:
    kind: str
    old: str
    new: str | None = None
    promoted_s: float | None = None   # kill -> a writable primary on another node
    downtime_s: float | None = None   # the longest time without a successful call, from the kill on
    rejoined_s: float | None = None   # kill -> the old primary streaming again as a standby
    rewound: bool = False             # Patroni ran pg_rewind on the old primary


@dataclass
class Report:
    options: Options
    duration_s: float = 0.0
    attempted: int = 0
    confirmed: int = 0
    paid: int = 0
    refunds: int = 0
    lost: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    failovers: list[Failover] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        o = self.options
        out = [
            f"HA run seed={o.seed}: {o.nodes} Patroni nodes (synchronous_mode), {o.gateways} gateways, "
            f"{o.workers} workers, {self.duration_s:.1f} s",
            f"payments attempted: {self.attempted}, confirmed created: {self.confirmed}, paid: {self.paid}, "
            f"refunds: {self.refunds}",
            f"failovers: {len(self.failovers)}, acknowledged payments lost: {self.lost}",
            "HTTP statuses seen: " + ", ".join(f"{s} {n}" for s, n in sorted(self.statuses.items())),
        ]
        for i, f in enumerate(self.failovers, 1):
            def s(value: float | None) -> str:
                return f"{value:.1f} s" if value is not None else "never"
            out.append(f"  failover {i}: {f.kind} of {f.old} -> {f.new or 'none'} primary after "
                       f"{s(f.promoted_s)}; without service {s(f.downtime_s)}; {f.old} rejoined as standby after "
                       f"{s(f.rejoined_s)}{' (pg_rewind)' if f.rewound else ''}")
        out.append(f"anomalies: {len(self.anomalies)}")
        out += [f"  - {a}" for a in self.anomalies]
        return out


def downtime_s(observations: list[Observation], from_s: float, to_s: float) -> float | None:
    """The longest time without a successful answer between ``from_s`` (the fault) and ``to_s`` (the
    old primary rejoined), counted from the last success before the fault; None if none came after."""
    times = sorted(o.received_s for o in observations if o.status is not None and 200 <= o.status < 300)
    before = [t for t in times if t < from_s][-1:]
    during = [t for t in times if from_s <= t <= to_s]
    if not during:
        return None
    points = [*before, *during]
    return max((b - a for a, b in zip(points, points[1:], strict=False)), default=during[0] - from_s)


def _rewound(node: Node, offset: int) -> bool:
    return "pg_rewind" in node.log_path.read_text(errors="replace")[offset:]


async def _fail_over(cluster: HACluster, kind: str, now_s: Callable[[], float]) -> tuple[Failover, float, Window]:
    old = cluster.leader()
    assert old is not None, "no primary before the failover"
    failover = Failover(kind, old.name)
    log_offset = len(old.log_path.read_text(errors="replace"))
    if kind == "postmaster kill":
        cluster.kill_postmaster(old)
    elif kind == "node kill":
        await asyncio.to_thread(cluster.kill_node, old)
    kill_s = now_s()  # once the signals are sent: a call before that may still rightly succeed
    if kind == "switchover":  # timed from the request: it returns once the handover is done
        await asyncio.to_thread(cluster.switchover, old)
    window = Window(Fault(len(cluster.nodes), FaultKind.PG_CRASH, kill_s, 0.0, None), kill_s)

    def promoted() -> bool:
        leader = cluster.leader()
        return leader is not None and leader is not old
    await asyncio.to_thread(cluster.wait_for, promoted, "a standby to take over", PROMOTION_TIMEOUT_S)
    new = cluster.leader()
    failover.new = new.name if new else None
    failover.promoted_s = now_s() - kill_s
    window.end_s = now_s()
    if kind == "node kill":  # the host comes back: its Patroni starts and must follow the new primary
        await asyncio.to_thread(cluster.start_node, old)

    def rejoined() -> bool:
        me = next((m for m in cluster.members() if m.get("name") == old.name), None)
        leader = next((m for m in cluster.members() if m.get("role") == "leader"), None)
        return (me is not None and leader is not None and me.get("role") in ("replica", "sync_standby")
                and me.get("state") in ("running", "streaming") and me.get("timeline") == leader.get("timeline"))
    await asyncio.to_thread(cluster.wait_for, rejoined, f"{old.name} to rejoin as a standby", REJOIN_TIMEOUT_S)
    failover.rejoined_s = now_s() - kill_s
    failover.rewound = _rewound(old, log_offset)
    await asyncio.to_thread(cluster.wait_healthy, REJOIN_TIMEOUT_S)
    return failover, kill_s, window


async def run(options: Options, *, out: Callable[[str], None] = print, cleanup: Cleanup | None = None) -> Report:
    """One HA run; ``report.anomalies`` is empty when every check held."""
    started = time.monotonic()
    report = Report(options)
    cleanup = cleanup or Cleanup()
    workdir = Path(tempfile.mkdtemp(prefix="ha-run-"))
    cleanup.push(lambda: shutil.rmtree(workdir, ignore_errors=True))
    cluster = HACluster(options.nodes)
    cleanup.push(cluster.destroy)
    redis = RedisServer()
    cleanup.push(redis.destroy)
    gateways: list[GatewayProcess] = []
    kills: list[float] = []
    windows: list[Window] = []
    try:
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(redis.start)
        out(f"cluster up in {time.monotonic() - started:.1f} s: " + ", ".join(
            f"{m['name']} {m['role']} :{m['port']}" for m in cluster.members()))
        url = cluster.url(DATABASE)
        # Long enough to outlast the whole run: tokens signed at setup must not expire mid-load.
        overrides = {"GATEWAY_WORKERS_INTERVAL_S": "1.0", "GATEWAY_DATABASE_POOL_MAX": "6",
                     "GATEWAY_AUTH_WALLET_TOKEN_TTL_S": "7200", "GATEWAY_AUTH_OPERATOR_TOKEN_TTL_S": "7200",
                     "GATEWAY_IDEMPOTENCY_LOCK_TIMEOUT_S": "3"}
        for index in range(options.gateways):
            # Under pytest the secret canary scans what every gateway logged (tests/canary.py).
            log_path = (canary.log_path(f"ha-{options.seed}-gateway-{index}.log") if canary.active()
                        else workdir / f"gateway-{index}.log")
            gateway = GatewayProcess(free_tcp_port(), DATABASE, overrides, db_url=url, redis_url=redis.url,
                                     log_path=log_path)
            gateways.append(gateway)
            cleanup.push(functools.partial(_kill_gateway, gateway))
        await gateways[0].cli("migrate", timeout_s=60)
        await gateways[0].cli("create-operator", "--email", OPERATOR_EMAIL, stdin=OPERATOR_PASSWORD + "\n",
                              timeout_s=60)
        await asyncio.gather(*(g.start(timeout_s=60) for g in gateways))
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            api = Api(session, gateways[0].url)
            shops = [await Shop.create(api) for _ in range(options.merchants)]
            holders = [await shops[0].holder(top_up=TOP_UP_MINOR) for _ in range(options.holders)]
            world = checker.World([_merchant_id(s.merchant) for s in shops], await _holder_ids(url, holders),
                                  TOP_UP_MINOR)
            journal = Journal(workdir / "journal.sqlite3")
            cleanup.push(journal.close)
            t0 = time.monotonic()

            def now_s() -> float:
                return time.monotonic() - t0
            client = BankClient([g.url for g in gateways], session, journal, shops, holders, seed=options.seed, t0=t0)
            # The load runs until the last failover's gap is over (bounded: each failover's promotion
            # and rejoining have their own timeouts).
            stop_s = options.gap_s + options.failovers * (options.gap_s + PROMOTION_TIMEOUT_S + 2 * REJOIN_TIMEOUT_S)
            out(f"setup done in {t0 - started:.1f} s; load until the last failover is over")
            load = asyncio.create_task(client.run(options.workers, stop_s, stop_s + GIVE_UP_AFTER_STOP_S))
            try:
                for index in range(options.failovers):
                    await asyncio.sleep(options.gap_s)
                    kind = KINDS[index % len(KINDS)]
                    failover, kill_s, window = await _fail_over(cluster, kind, now_s)
                    report.failovers.append(failover)
                    kills.append(kill_s)
                    windows.append(window)
                    out(f"failover {index + 1} ({kind} of {failover.old}): {failover.new} primary after "
                        f"{failover.promoted_s:.1f} s, {failover.old} rejoined after {failover.rejoined_s:.1f} s")
                await asyncio.sleep(options.gap_s)
            finally:
                client.stop()  # whatever happened: calls under way still get their answers
            await asyncio.wait_for(load, stop_s + GIVE_UP_AFTER_STOP_S + 60)
            if client.unresolved:
                out(f"draining {len(client.unresolved)} unresolved calls")
                await client.drain(client.now_s() + DRAIN_S)
            await client.settle_late()
            journal.close()
            reader = Journal(workdir / "journal.sqlite3")
            ops = reader.load()
            reader.close()
        for failover, kill_s in zip(report.failovers, kills, strict=True):
            assert failover.rejoined_s is not None
            failover.downtime_s = downtime_s(client.stats.observations, kill_s, kill_s + failover.rejoined_s)
            if failover.downtime_s is None:
                report.anomalies.append(f"no call succeeded after the {failover.kind} of {failover.old}")
        snapshot = await _snapshot(url)  # on the new primary, through the same failover list
        report.anomalies += checker.check(ops, snapshot, world, client.stats.observations, windows,
                                          in_use_limit_s=10.0, gateway_count=options.gateways)
        report.attempted = sum(1 for op in ops if op.kind == "create")
        report.confirmed = sum(1 for op in ops if op.kind == "create" and op.answer and op.answer.status == 201)
        report.paid = sum(1 for op in ops if op.kind == "pay" and op.answer and op.answer.status == 200)
        report.refunds = sum(1 for op in ops if op.kind == "refund" and op.answer and op.answer.status == 201)
        confirmed = {checker._payment_id(op.answer.json()["id"]) for op in ops
                     if op.kind == "create" and op.answer and op.answer.status == 201}
        report.lost = len(confirmed - {p.id for p in snapshot.payments})
        report.statuses = dict(client.stats.statuses)
    finally:
        await asyncio.gather(*(g.stop() for g in gateways), return_exceptions=True)
        cleanup.run()
        report.duration_s = time.monotonic() - started
    for line in report.lines():
        out(line)
    return report


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through run()'s finally: processes killed, directories removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev ha-test", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3, help="Patroni nodes (2 or more)")
    parser.add_argument("--failovers", type=int, default=3, help="failovers: a postmaster kill, a node kill, a switchover, in turn")
    parser.add_argument("--gateways", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--gap", type=float, default=10.0, help="seconds of load before each failover")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    options = Options(seed, args.nodes, args.failovers, args.gateways, args.workers, gap_s=args.gap)
    cleanup = Cleanup()
    atexit.register(cleanup.run)
    signal.signal(signal.SIGTERM, _interrupt)
    report = asyncio.run(run(options, out=lambda line: print(line, flush=True), cleanup=cleanup))
    return 1 if report.anomalies else 0


if __name__ == "__main__":
    sys.exit(main())
