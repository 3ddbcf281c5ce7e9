"""A seeded, replayable bank run against real processes, in the style of Jepsen's bank test.

    python -m tests.fault.bank --duration 600 [--seed N] [--gateways 3] [--workers 16]

It creates a private PostgreSQL cluster and Redis server, starts several ``gateway serve``
processes, each on its own port (the client's attempts go round them), builds merchants and
topped-up wallets through the public API, then runs the bank client (tests/fault/client.py) while the nemesis (tests/fault/nemesis.py) plays a
schedule of faults that is a pure function of the seed (tests/fault/schedule.py). After healing
everything and draining the unresolved calls it reads the database and proves what
tests/fault/checker.py lists. The seed is printed first; ``--seed`` replays the same schedule.

Invariants: every wait is bounded; every process started here is stopped and every temporary
directory removed, on success, on failure and at interpreter exit (atexit, for the CLI).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import functools
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from gateway.domain.ids import Kind, decode
from gateway.store import invariants
from tests import canary
from tests.e2e.harness import OPERATOR_EMAIL, OPERATOR_PASSWORD, Api, GatewayProcess, Holder, Shop, free_tcp_port
from tests.fault import checker
from tests.fault.client import BankClient
from tests.fault.cluster import PostgresCluster, RedisServer
from tests.fault.journal import Journal
from tests.fault.nemesis import Nemesis, Window
from tests.fault.schedule import Fault, make_schedule

DATABASE = "gateway"
TOP_UP_MINOR = 500_000
DRAIN_S = 60.0
GIVE_UP_AFTER_STOP_S = 30.0


@dataclass(frozen=True)
class Options:
    seed: int
    duration_s: float = 60.0
    gateways: int = 3
    workers: int = 16
    merchants: int = 3
    holders: int = 6
    lock_timeout_s: float | None = 3.0   # None: the gateway's own default
    in_use_limit_s: float = 8.0
    stuck_limit_s: float = 6.0
    allow_500_in_faults: bool = False
    keep: bool = False


@dataclass
class Report:
    options: Options
    schedule: list[Fault]
    duration_s: float = 0.0
    attempted: int = 0
    confirmed: int = 0
    paid: int = 0
    refunds: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors_in_windows: Counter[str] = field(default_factory=Counter)
    windows: list[Window] = field(default_factory=list)
    recoveries_s: list[float | None] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    workdir: Path | None = None

    def lines(self) -> list[str]:
        faults = Counter(str(w.fault.kind) for w in self.windows)
        out = [
            f"seed: {self.options.seed}",
            f"duration: {self.duration_s:.1f} s (load {self.options.duration_s:.0f} s, "
            f"{self.options.gateways} gateways, {self.options.workers} workers)",
            f"payments attempted: {self.attempted}, confirmed created: {self.confirmed}, paid: {self.paid}, "
            f"refunds confirmed: {self.refunds}",
            "faults by kind: " + ", ".join(f"{kind} {count}" for kind, count in sorted(faults.items())),
            "HTTP statuses seen: " + ", ".join(f"{status} {count}" for status, count in sorted(self.statuses.items())),
            "HTTP 5xx other than 503 inside fault windows: "
            + (", ".join(f"{kind} {count}" for kind, count in sorted(self.errors_in_windows.items())) or "none"),
            "recovery after each fault (fault end -> first success):",
        ]
        for window, recovery in zip(self.windows, self.recoveries_s, strict=True):
            target = f" gateway {window.fault.target}" if window.fault.target is not None else ""
            took = f"{recovery:.2f} s" if recovery is not None else "never"
            out.append(f"  #{window.fault.index} {window.fault.kind}{target} at {window.start_s:.1f} s for "
                       f"{window.fault.duration_s} s -> {took}{' (' + window.error + ')' if window.error else ''}")
        out.append(f"anomalies: {len(self.anomalies)}")
        out += [f"  - {anomaly}" for anomaly in self.anomalies]
        if self.workdir is not None:
            out.append(f"kept: {self.workdir}")
        return out


class Cleanup:
    """Stops what a run started, in reverse order; safe to call twice (finally, then atexit)."""

    def __init__(self) -> None:
        self._steps: list[Callable[[], None]] = []

    def push(self, step: Callable[[], None]) -> None:
        self._steps.append(step)

    def run(self) -> None:
        while self._steps:
            step = self._steps.pop()
            with contextlib.suppress(Exception):
                step()


def _kill_gateway(gateway: GatewayProcess) -> None:
    process = gateway.process
    if process is not None and process.returncode is None:
        with contextlib.suppress(ProcessLookupError):  # its serving processes die with it (PR_SET_PDEATHSIG)
            os.kill(process.pid, signal.SIGCONT)
            os.kill(process.pid, signal.SIGKILL)


async def _snapshot(url: str) -> checker.Snapshot:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            payments = [checker.PaymentRow(r["id"], r["merchant_id"], r["payer_id"], r["amount_minor"], r["status"],
                                           r["captured_minor"], r["refunded_minor"], r["merchant_reference"])
                        for r in await conn.fetch("SELECT * FROM payments")]
            refunds = [checker.RefundRow(r["id"], r["payment_id"], r["amount_minor"])
                       for r in await conn.fetch("SELECT id, payment_id, amount_minor FROM refunds")]
            events: Counter[tuple[str, uuid.UUID]] = Counter()
            for r in await conn.fetch("SELECT type, object_id, count(*) AS n FROM events GROUP BY 1, 2"):
                events[(r["type"], r["object_id"])] = r["n"]
            keys = [checker.StoredKey(r["principal"], r["key"], r["response_status"],
                                      bytes(r["response_body"]) if r["response_body"] is not None else None)
                    for r in await conn.fetch("SELECT principal, key, response_status, response_body "
                                              "FROM idempotency_keys")]
            wallets = {r["owner_id"]: r["available"] for r in await conn.fetch(
                "SELECT a.owner_id, sum(b.posted_minor - b.held_minor) AS available FROM accounts a "
                "JOIN balances b ON b.account_id = a.id WHERE a.kind = 'wallet' AND a.currency = 'CNY' GROUP BY 1")}
            top_ups: dict[uuid.UUID, list[tuple[uuid.UUID, int]]] = {}
            for r in await conn.fetch("SELECT id, holder_id, amount_minor FROM transfers WHERE kind = 'top_up'"):
                top_ups.setdefault(r["holder_id"], []).append((r["id"], r["amount_minor"]))
        report = await invariants.check(conn)
        watcher = canary.active()
        if watcher is not None:  # no database row may hold a secret either
            watcher.scan(await canary.rows_as_text(conn), "the bank run's database")
    finally:
        await conn.close()
    return checker.Snapshot(payments, refunds, events, keys, wallets, top_ups, report)


async def _holder_ids(url: str, holders: list[Holder]) -> list[uuid.UUID]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = {r["phone"]: r["id"] for r in await conn.fetch("SELECT id, phone FROM wallet_holders")}
    finally:
        await conn.close()
    return [rows[h.phone] for h in holders]


def _merchant_id(text: str) -> uuid.UUID:
    value = decode(Kind.MERCHANT, text)
    assert value is not None, text
    return value


async def run(options: Options, *, out: Callable[[str], None] = print, cleanup: Cleanup | None = None) -> Report:
    """One bank run; ``report.anomalies`` is empty when every check held."""
    started = time.monotonic()
    schedule = make_schedule(options.seed, options.duration_s, options.gateways, options.lock_timeout_s or 30.0)
    report = Report(options, schedule)
    lock = f" --lock-timeout {options.lock_timeout_s:g}" if options.lock_timeout_s is not None else " --lock-timeout 0"
    out(f"bank run seed={options.seed}; {len(schedule)} faults scheduled (replay: ./dev faults --seed {options.seed} "
        f"--duration {options.duration_s:g} --gateways {options.gateways}{lock})")
    for fault in schedule:
        out(f"  #{fault.index} at {fault.at_s:.1f} s: {fault.kind} for {fault.duration_s} s"
            f"{f' (gateway {fault.target})' if fault.target is not None else ''}")
    cleanup = cleanup or Cleanup()
    workdir = Path(tempfile.mkdtemp(prefix="fault-bank-"))
    if not options.keep:
        cleanup.push(lambda: shutil.rmtree(workdir, ignore_errors=True))
    pg = PostgresCluster()
    cleanup.push(pg.destroy)
    redis = RedisServer()
    cleanup.push(redis.destroy)
    gateways: list[GatewayProcess] = []
    try:
        await asyncio.to_thread(pg.init)
        await asyncio.to_thread(pg.start)
        await asyncio.to_thread(redis.start)
        overrides = {
            "GATEWAY_WORKERS_INTERVAL_S": "1.0",
            "GATEWAY_DATABASE_POOL_MAX": "8",
            "GATEWAY_AUTH_WALLET_TOKEN_TTL_S": str(int(options.duration_s + 3600)),
            "GATEWAY_AUTH_OPERATOR_TOKEN_TTL_S": str(int(options.duration_s + 3600)),
        }
        if options.lock_timeout_s is not None:
            overrides["GATEWAY_IDEMPOTENCY_LOCK_TIMEOUT_S"] = str(int(options.lock_timeout_s))
        for index in range(options.gateways):
            # Under pytest the secret canary scans what every gateway logged (tests/canary.py).
            log_path = (canary.log_path(f"bank-{options.seed}-gateway-{index}.log") if canary.active()
                        else workdir / f"gateway-{index}.log")
            gateway = GatewayProcess(free_tcp_port(), DATABASE, overrides, db_url=pg.url(DATABASE), redis_url=redis.url,
                                     log_path=log_path)
            gateways.append(gateway)
            cleanup.push(functools.partial(_kill_gateway, gateway))
        await gateways[0].cli("migrate", timeout_s=60)
        await gateways[0].cli("create-operator", "--email", OPERATOR_EMAIL, stdin=OPERATOR_PASSWORD + "\n",
                              timeout_s=60)
        await asyncio.gather(*(g.start(timeout_s=30) for g in gateways))
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            api = Api(session, gateways[0].url)
            shops = [await Shop.create(api) for _ in range(options.merchants)]
            holders = [await shops[0].holder(top_up=TOP_UP_MINOR) for _ in range(options.holders)]
            world = checker.World([_merchant_id(s.merchant) for s in shops],
                                  await _holder_ids(pg.url(DATABASE), holders), TOP_UP_MINOR)
            journal = Journal(workdir / "journal.sqlite3")
            cleanup.push(journal.close)
            t0 = time.monotonic()
            client = BankClient([g.url for g in gateways], session, journal, shops, holders, seed=options.seed, t0=t0)
            nemesis = Nemesis(schedule, gateways, pg, redis, t0, pg.url(DATABASE), options.stuck_limit_s)
            out(f"setup done in {t0 - started:.1f} s; load for {options.duration_s:.0f} s")
            stop_s = options.duration_s
            load = asyncio.create_task(client.run(options.workers, stop_s, stop_s + GIVE_UP_AFTER_STOP_S))
            try:
                await asyncio.wait_for(nemesis.run(), options.duration_s + 120)
            finally:
                await nemesis.heal()
            await asyncio.wait_for(load, stop_s + GIVE_UP_AFTER_STOP_S + 60)
            await nemesis.check_gateways("after the load")
            if client.unresolved:
                out(f"draining {len(client.unresolved)} unresolved calls")
                await client.drain(client.now_s() + DRAIN_S)
            await client.settle_late()
            journal.close()
            reader = Journal(workdir / "journal.sqlite3")  # what a fresh reader finds on disk
            ops = reader.load()
            reader.close()
        snapshot = await _snapshot(pg.url(DATABASE))
        report.anomalies = nemesis.anomalies + checker.check(
            ops, snapshot, world, client.stats.observations, nemesis.windows,
            in_use_limit_s=options.in_use_limit_s, gateway_count=options.gateways,
            allow_500_in_faults=options.allow_500_in_faults)
        report.attempted = sum(1 for op in ops if op.kind == "create")
        report.confirmed = sum(1 for op in ops if op.kind == "create" and op.answer and op.answer.status == 201)
        report.paid = sum(1 for op in ops if op.kind == "pay" and op.answer and op.answer.status == 200)
        report.refunds = sum(1 for op in ops if op.kind == "refund" and op.answer and op.answer.status == 201)
        report.statuses = client.stats.statuses
        report.windows = nemesis.windows
        report.errors_in_windows = checker.errors_in_windows(client.stats.observations, nemesis.windows)
        report.recoveries_s = [checker.recovery_s(client.stats.observations, w) for w in nemesis.windows]
    finally:
        await asyncio.gather(*(g.stop() for g in gateways), return_exceptions=True)
        if options.keep:
            report.workdir = workdir
            for server, name in ((pg, "postgres.log"), (redis, "redis.log")):
                with contextlib.suppress(OSError):
                    shutil.copy(server.log_path, workdir / name)
        cleanup.run()
        report.duration_s = time.monotonic() - started
    for line in report.lines():
        out(line)
    return report


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through run()'s finally: processes stopped, directories removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fault.bank", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (faults within it)")
    parser.add_argument("--seed", type=int, default=None, help="replay this seed's schedule")
    parser.add_argument("--gateways", type=int, default=3)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--merchants", type=int, default=3)
    parser.add_argument("--holders", type=int, default=None, help="wallets (default: one per 30 s of load, 6 at least)")
    parser.add_argument("--lock-timeout", type=float, default=3.0,
                        help="GATEWAY_IDEMPOTENCY_LOCK_TIMEOUT_S (0: the gateway's own default)")
    parser.add_argument("--in-use-limit", type=float, default=8.0,
                        help="longest a key may answer idempotency_key_in_use before it is an anomaly")
    parser.add_argument("--stuck-limit", type=float, default=6.0,
                        help="longest a session may wait on a lock or idle in a transaction during a stall")
    parser.add_argument("--allow-500-in-faults", action="store_true",
                        help="a 500 answered during a fault window is not an anomaly (only outside them)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (journal, gateway logs)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    holders = args.holders if args.holders is not None else max(6, int(args.duration / 30))
    options = Options(seed, args.duration, args.gateways, args.workers, args.merchants, holders,
                      args.lock_timeout or None, args.in_use_limit, args.stuck_limit, args.allow_500_in_faults,
                      args.keep)
    cleanup = Cleanup()
    atexit.register(cleanup.run)
    signal.signal(signal.SIGTERM, _interrupt)
    report = asyncio.run(run(options, out=lambda line: print(line, flush=True), cleanup=cleanup))
    return 1 if report.anomalies else 0


if __name__ == "__main__":
    sys.exit(main())
