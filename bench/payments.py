"""Payments benchmark: confirmed wallet payments per second, end to end over HTTP, next to pgbench.

Run with the project's interpreter: ``.venv/bin/python bench/payments.py [--quick]``. It prints
figures and never asserts on timings; bench/README.md says what each figure means.

Steps, each bounded by a count, a duration or a timeout:
1. drop and re-create a dedicated database, migrate it, create an operator (``gateway
   create-operator``), start ``gateway serve`` with K processes on a free 127.0.0.1 port with a
   rate limit too high to throttle, wait until K serving processes exist, the port listens and
   /readyz answers 200;
2. seed through the public HTTP API: M merchants with secret keys, W wallet holders, each with a
   linked bank account and one top-up far above what the run can spend;
3. phases, each after ``VACUUM ANALYZE`` (autovacuum is off on these machines): warm-up,
   A (automatic capture, payers spread over the merchants), B (manual capture: create, pay,
   capture), A with every payer paying one merchant, then A paced open-loop at half of A's
   measured rate; optionally the half-load phase again while py-spy samples one gateway process;
4. the ledger invariant checker through GET /v1/operator/ledger/invariants;
5. the gateway is stopped, then pgbench tpcb-like runs on the same PostgreSQL in its own
   database, and the figures are printed next to the project's goals.

Invariants kept:
- only 127.0.0.1 targets are accepted, and only databases whose name contains "bench" are dropped;
- the gateway's process group (started here, in its own session) is killed on every exit path;
- a payment counts as confirmed only when the last HTTP call of its flow returned success and the
  payment's status ``succeeded``; every other outcome is an error counted by step, status and code;
- the in-flight holders of the closed loop are distinct (holder = payment index mod W, and the
  concurrency is below W), so the figures measure the gateway, not one wallet row's lock.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

REPO = Path(__file__).resolve().parent.parent
LOCALHOST = "127.0.0.1"
OPERATOR_EMAIL = "bench-operator@example.com"
OPERATOR_PASSWORD = "bench-operator-password"
HOLDER_PASSWORD = "bench-holder-password"
CURRENCY = "CNY"
TOP_UP_MINOR = 10**10  # per holder: ten thousand times more than any run spends, within tier 1's cap
TIER_PATH = "/v1/operator/wallet_holders/{id}/tier"
TIER_HIGHEST = 1  # a gateway with verification tiers caps the weaker tiers far below a benchmark's spend
RATE_LIMIT_PER_S = 10**9
TOKEN_TTL_S = 86_400  # wallet and operator tokens outlive any run

# Issue 12's table: every figure printed next to its goal.
GOAL_PGBENCH_RATIO_MIN = 1.5
GOAL_B_PGBENCH_RATIO_MIN = 1.0
GOAL_HALF_LOAD_P99_MS_MAX = 20.0
GOAL_ONE_MERCHANT_RATIO_MIN = 0.9
GOAL_REPLAY_RATIO_MIN = 3.0
GOAL_PAY_CODE_RATIO_MIN = 2.0
GOAL_BIG_RATIO_MIN = 0.9
GOAL_RSS_MB_MAX = 200.0
GOAL_TAP_P95_MS_MAX = 50.0
SWEEP_FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.2)  # of phase A's rate; 0.5 is the half-load phase
BIG_BATCH_ROWS = 1_000_000  # rows per INSERT of --big: bounds one statement's memory and WAL burst
PAY_CODE_TTL_S = 86_400  # pre-issued pay-codes must outlive the phase that charges them

SEED_CONCURRENCY = 8
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
SUBPROCESS_TIMEOUT_S = 120.0
PHASE_GRACE_S = 60.0  # a phase may overrun its duration cap by the in-flight requests' timeouts
QUIET_CORES_MAX = 0.2  # background load above this (other sessions' tests, builds) skews every figure
CLK_TCK = os.sysconf("SC_CLK_TCK")

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Sizes


@dataclass(frozen=True)
class Sizes:
    processes: int
    merchants: int
    holders: int
    concurrency: int
    count: int
    duration_s: float
    warmup: int
    amount_minor: int
    request_timeout_s: float
    inflight_max: int
    half_rate_per_s: float | None
    profile_s: float
    pgbench_scale: int
    pgbench_clients: int
    pgbench_threads: int
    pgbench_duration_s: int
    pool_max: int | None
    big: int
    tap_sales: int
    sweep_duration_s: float


QUICK = {
    "merchants": 3, "holders": 16, "concurrency": 8, "count": 300, "duration": 4.0, "warmup": 40,
    "pgbench_scale": 2, "pgbench_duration": 3, "tap_sales": 5, "sweep_duration": 2.0,
}


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Sizes]:
    p = argparse.ArgumentParser(prog="bench/payments.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"small sizes (~30 s) to validate the script: {QUICK}")
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/gateway_bench",
                   help="dropped and re-created; the name must contain 'bench'")
    p.add_argument("--pgbench-database", default="pgbench_bench", help="dropped and re-created; must contain 'bench'")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/14", help="never flushed")
    p.add_argument("--processes", type=int, default=2, help="gateway serve --processes")
    p.add_argument("--pool-max", type=int, default=None, help="database pool per process (unset: the gateway's setting)")
    p.add_argument("--merchants", type=int, default=20)
    p.add_argument("--holders", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=32, help="closed-loop payments in flight")
    p.add_argument("--count", type=int, default=5000, help="payments per phase (cap)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per phase (cap)")
    p.add_argument("--warmup", type=int, default=300, help="payments before the measured phases")
    p.add_argument("--amount", type=int, default=1000,
                   help="minor units per payment; above the gateway's PIN threshold (CNY 100000) payments fail")
    p.add_argument("--request-timeout", type=float, default=10.0, help="seconds per HTTP call")
    p.add_argument("--inflight-max", type=int, default=256, help="open-loop cap on payments in flight")
    p.add_argument("--half-rate", type=float, default=None,
                   help="open-loop payments/s (unset: half of phase A's measured rate)")
    p.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                   help="half load again while py-spy samples one gateway process (0: off)")
    p.add_argument("--pgbench-scale", type=int, default=10)
    p.add_argument("--pgbench-clients", type=int, default=16)
    p.add_argument("--pgbench-threads", type=int, default=2)
    p.add_argument("--pgbench-duration", type=int, default=15)
    p.add_argument("--skip-pgbench", action="store_true")
    p.add_argument("--gateway-src", default=str(REPO),
                   help="source tree to run the gateway from (holds gateway/), e.g. an exported commit")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help=f"before starting, wait up to this long for the machine to be idle (< {QUIET_CORES_MAX} cores busy)")
    p.add_argument("--log-dir", default=None, help="gateway log and profile go here (default: a new temp dir)")
    p.add_argument("--json", dest="json_path", default=None, help="also write the figures to this JSON file")
    p.add_argument("--plot", dest="plot_path", default=None,
                   help="PNG of p50/p99 against offered load (default: latency.png in the log directory)")
    p.add_argument("--sweep-duration", type=float, default=10.0,
                   help=f"seconds per open-loop step of the sweep over {SWEEP_FRACTIONS} of A's rate")
    p.add_argument("--big", type=int, default=0, metavar="N",
                   help="then generate N payments in SQL (a merchant the load never touches) and run A again")
    p.add_argument("--tap-sales", type=int, default=30, help="sales of bench/tap_to_approval.py (0: skip)")
    args = p.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    sizes = Sizes(
        processes=args.processes, merchants=args.merchants, holders=args.holders, concurrency=args.concurrency,
        count=args.count, duration_s=args.duration, warmup=args.warmup, amount_minor=args.amount,
        request_timeout_s=args.request_timeout, inflight_max=args.inflight_max, half_rate_per_s=args.half_rate,
        profile_s=args.profile, pgbench_scale=args.pgbench_scale, pgbench_clients=args.pgbench_clients,
        pgbench_threads=args.pgbench_threads, pgbench_duration_s=args.pgbench_duration, pool_max=args.pool_max,
        big=args.big, tap_sales=args.tap_sales, sweep_duration_s=args.sweep_duration,
    )
    positive = ("processes", "merchants", "holders", "concurrency", "count", "amount_minor", "inflight_max")
    for name in positive:
        if getattr(sizes, name) < 1:
            p.error(f"{name} must be at least 1")
    if sizes.concurrency >= sizes.holders:
        p.error("--concurrency must be below --holders, or in-flight payments would share a wallet")
    if not 0 < sizes.duration_s <= 3600 or sizes.profile_s < 0 or not 0 <= args.wait_quiet <= 3600:
        p.error("--duration must be in (0, 3600], --profile >= 0 and --wait-quiet in [0, 3600]")
    if not 0 < sizes.sweep_duration_s <= 3600 or not 0 <= sizes.big <= 10**8 or not 0 <= sizes.tap_sales <= 500:
        p.error("--sweep-duration must be in (0, 3600], --big in [0, 10^8], --tap-sales in [0, 500]")
    if not (Path(args.gateway_src) / "gateway" / "__main__.py").is_file():
        p.error(f"--gateway-src {args.gateway_src} holds no gateway package")
    _local(args.database_url, "--database-url", p)
    _local(args.redis_url, "--redis-url", p)
    for name in (db_name(args.database_url), args.pgbench_database):
        if "bench" not in name:
            p.error(f"refusing to drop database {name!r}: its name must contain 'bench'")
    return args, sizes


def _local(url: str, flag: str, p: argparse.ArgumentParser) -> None:
    if urlsplit(url).hostname != LOCALHOST:
        p.error(f"{flag} must point at {LOCALHOST}")


def db_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def admin_url(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/postgres"))


# ---------------------------------------------------------------------------------------------
# Figures


def percentile_ms(values_s: list[float], pct: float) -> float | None:
    """Nearest-rank percentile, in milliseconds."""
    if not values_s:
        return None
    ordered = sorted(values_s)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)] * 1000


def _pct(values_ms: list[float], pct: float) -> float | None:
    return percentile_ms([v / 1000 for v in values_ms], pct)


def fmt_ms(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:6.1f}"


@dataclass
class Recorder:
    """What one phase observed. Only the event loop touches it (no await between read and write)."""

    whole_s: list[float] = field(default_factory=list)
    call_s: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    attempted: int = 0
    confirmed: int = 0
    # (path, token, Idempotency-Key) of each confirmed payment's last call: what a replay phase re-sends.
    replayable: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class PhaseResult:
    name: str
    rec: Recorder
    elapsed_s: float
    cpu: dict[str, float]
    server_ms: dict[str, list[float]] = field(default_factory=dict)
    server_5xx: int = 0
    db_waits: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def rate_per_s(self) -> float:
        return self.rec.confirmed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def figures(self) -> dict[str, Any]:
        calls = {step: {"n": len(v), "p50_ms": percentile_ms(v, 50), "p99_ms": percentile_ms(v, 99)}
                 for step, v in self.rec.call_s.items()}
        return {
            "attempted": self.rec.attempted, "confirmed": self.rec.confirmed, "elapsed_s": self.elapsed_s,
            "payments_per_s": self.rate_per_s, "p50_ms": percentile_ms(self.rec.whole_s, 50),
            "p99_ms": percentile_ms(self.rec.whole_s, 99), "calls": calls, "errors": dict(self.rec.errors),
            "cpu_cores": self.cpu, "server_5xx": self.server_5xx, "db_waits": dict(self.db_waits),
            "server_calls": {step: {"n": len(v), "p50_ms": _pct(v, 50), "p99_ms": _pct(v, 99)}
                             for step, v in self.server_ms.items()},
        }

    def print(self) -> None:
        r = self.rec
        print(f"  confirmed {r.confirmed} of {r.attempted} attempted in {self.elapsed_s:.2f} s"
              f" -> {self.rate_per_s:,.1f} confirmed payments/s")
        print(f"  whole payment   p50 {fmt_ms(percentile_ms(r.whole_s, 50))} ms"
              f"   p99 {fmt_ms(percentile_ms(r.whole_s, 99))} ms   (n={len(r.whole_s)})")
        for step, values in r.call_s.items():
            print(f"  {step:<15} p50 {fmt_ms(percentile_ms(values, 50))} ms"
                  f"   p99 {fmt_ms(percentile_ms(values, 99))} ms   (n={len(values)})")
        if r.errors:
            print("  errors:")
            for what, n in r.errors.most_common():
                print(f"    {n:6d}  {what}")
        else:
            print("  errors: none")
        if self.server_ms:
            print("  server side (the gateway's own log: handler time, no queueing before it):")
            for step, values_ms in self.server_ms.items():
                print(f"  {step:<15} p50 {fmt_ms(_pct(values_ms, 50))} ms   p99 {fmt_ms(_pct(values_ms, 99))} ms"
                      f"   (n={len(values_ms)})")
            print(f"  5xx responses logged: {self.server_5xx}")
        if self.cpu:
            print(f"  cpu (cores busy on average): {_cpu_text(self.cpu)}")
        total = sum(self.db_waits.values())
        if total:
            shown = ", ".join(f"{what} {100 * n / total:.0f}%" for what, n in self.db_waits.most_common(8))
            print(f"  database backends of the gateway, by state / wait event (sampled): {shown}")


def _cpu_text(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())


# ---------------------------------------------------------------------------------------------
# CPU accounting from /proc: where the machine's cores went during a phase


def _proc_stats() -> Iterable[tuple[int, str, int, int]]:
    """(pid, comm, process group, utime+stime ticks) of every live process."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        rest = text[text.rindex(")") + 2:].split()
        yield int(entry.name), comm, int(rest[2]), int(rest[11]) + int(rest[12])


@dataclass(frozen=True)
class CpuSample:
    at_s: float
    machine_busy_ticks: int
    irq_ticks: int
    client_s: float
    ticks: dict[int, tuple[str, int]]  # pid -> (owner, utime+stime ticks)


def _owner(pid: int, comm: str, pgrp: int, gateway_pgid: int | None, database: str) -> str | None:
    """Which figure a process's CPU counts in; None for everything outside the benchmark ("other")."""
    if gateway_pgid is not None and pgrp == gateway_pgid:
        return "gateway"
    if comm.startswith("redis-server"):
        return "redis"
    if comm.startswith("postgres"):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
        # A backend's title names its database; other sessions' test databases are not ours.
        # The server's own processes (checkpointer, WAL writer, ...) are shared and counted here.
        words = title.split()
        is_backend = len(words) >= 4 and words[0] == "postgres:" and words[2] not in {"checkpointer", "background",
                                                                                     "walwriter", "autovacuum",
                                                                                     "logical", "stats"}
        return "postgres" if not is_backend or database in words else None
    return None


def cpu_sample(gateway_pgid: int | None, database: str = "") -> CpuSample:
    fields_ = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields_[3] + fields_[4]  # idle + iowait
    ticks: dict[int, tuple[str, int]] = {}
    for pid, comm, pgrp, used in _proc_stats():
        owner = _owner(pid, comm, pgrp, gateway_pgid, database)
        if owner is not None:
            ticks[pid] = (owner, used)
    t = os.times()
    return CpuSample(time.perf_counter(), sum(fields_[:8]) - idle, fields_[5] + fields_[6], t.user + t.system, ticks)


def cpu_cores(a: CpuSample, b: CpuSample) -> dict[str, float]:
    """Average cores busy between two samples, by owner.

    ``postgres`` is the server's processes and the backends of the benchmark's database; ``kernel
    irq`` is interrupt and softirq time (loopback networking is largely there); ``other`` is the
    rest of the machine: other sessions' processes and backends.
    """
    wall_s = b.at_s - a.at_s
    if wall_s <= 0:
        return {}
    shares: dict[str, float] = collections.defaultdict(float)
    per_gateway: list[float] = []
    for pid, (owner, used) in b.ticks.items():
        before = a.ticks.get(pid)
        cores = (used - (before[1] if before else 0)) / CLK_TCK / wall_s
        shares[owner] += cores
        if owner == "gateway" and cores > 0.005:
            per_gateway.append(cores)
    shares["bench client"] = (b.client_s - a.client_s) / wall_s
    shares["kernel irq"] = (b.irq_ticks - a.irq_ticks) / CLK_TCK / wall_s
    machine = (b.machine_busy_ticks - a.machine_busy_ticks) / CLK_TCK / wall_s
    ordered = {k: shares[k] for k in ("gateway", "postgres", "redis", "bench client", "kernel irq")}
    ordered["other"] = max(0.0, machine - sum(ordered.values()))
    ordered["machine"] = machine
    ordered["of cores"] = float(os.cpu_count() or 1)
    for i, cores in enumerate(sorted(per_gateway, reverse=True)):
        ordered[f"gateway proc {i + 1}"] = cores
    return ordered


# ---------------------------------------------------------------------------------------------
# The gateway under test


class Gateway:
    """``gateway serve`` in its own session, so its whole process group can be killed."""

    def __init__(self, env: dict[str, str], port: int, processes: int, log_path: Path) -> None:
        self.env = env
        self.port = port
        self.processes = processes
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--port", str(self.port), "--processes",
                 str(self.processes)],
                env=self.env, cwd=self.env["PYTHONPATH"], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )

    @property
    def database(self) -> str:
        return db_name(self.env["GATEWAY_DATABASE_URL"])

    @property
    def pgid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def pids(self) -> list[int]:
        return [pid for pid, _, pgrp, _ in _proc_stats() if self.pgid is not None and pgrp == self.pgid]

    def serving_pid(self) -> int:
        """A process that serves requests: a forked child, or the parent itself when it serves alone."""
        assert self.proc is not None
        children = [pid for pid in self.pids() if pid != self.proc.pid]
        return children[0] if children else self.proc.pid

    def serving(self) -> int:
        """Serving processes started: the children, or the parent itself when it serves alone (older
        trees ran one process without a supervisor)."""
        assert self.proc is not None
        return max(1, len([pid for pid in self.pids() if pid != self.proc.pid]))

    def listeners(self) -> int:
        count = 0
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].split(":")[1], 16) == self.port:
                count += 1
        return count

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        last = "no answer yet"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}; log: {self.log_path}\n{self.log_tail()}")
            if self.listeners() >= 1 and self.serving() >= self.processes:
                try:
                    async with session.get(f"{self.base_url}/readyz") as resp:
                        last = f"{resp.status} {await resp.text()}"
                        if resp.status == 200:
                            return
                except (TimeoutError, aiohttp.ClientError) as exc:
                    last = type(exc).__name__
            await asyncio.sleep(0.2)
        raise RuntimeError(f"gateway not ready after {READY_TIMEOUT_S:.0f} s ({last}); log: {self.log_path}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the group, wait, then SIGKILL what is left. Safe to call more than once."""
        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self.pids():
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while self.pids() and time.monotonic() < deadline:
                self.proc.poll()
                time.sleep(0.1)
        self.proc.poll()
        left = self.pids()
        if left:
            print(f"WARNING: gateway processes still alive after SIGKILL: {left}", file=sys.stderr)


async def background_cores(wait_s: float) -> float:
    """Cores busy while this benchmark is idle, sampled over 1 s until below QUIET_CORES_MAX or ``wait_s`` is up."""
    deadline_s = time.perf_counter() + wait_s
    while True:
        before = cpu_sample(None)
        await asyncio.sleep(1.0)
        busy = cpu_cores(before, cpu_sample(None))["machine"]
        if busy < QUIET_CORES_MAX or time.perf_counter() >= deadline_s:
            return busy


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def gateway_env(args: argparse.Namespace, sizes: Sizes, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        # The gateway runs from this source tree (the repository, or e.g. an exported commit),
        # whatever the virtualenv's editable install points at; cwd is set to it as well.
        "PYTHONPATH": str(Path(args.gateway_src).resolve()),
        "GATEWAY_DATABASE_URL": args.database_url,
        "GATEWAY_REDIS_URL": args.redis_url,
        "GATEWAY_SERVER_HOST": LOCALHOST,
        "GATEWAY_SERVER_PORT": str(port),
        "GATEWAY_SERVER_PUBLIC_URL": f"http://{LOCALHOST}:{port}",
        "GATEWAY_AUTH_RATE_LIMIT_PER_S": str(RATE_LIMIT_PER_S),
        "GATEWAY_AUTH_WALLET_TOKEN_TTL_S": str(TOKEN_TTL_S),
        "GATEWAY_AUTH_OPERATOR_TOKEN_TTL_S": str(TOKEN_TTL_S),
        "GATEWAY_WALLET_PAY_CODE_TTL_S": str(PAY_CODE_TTL_S),
        # The bench signs its holders in from loopback in a burst: sign-in throttling is not measured here.
        "GATEWAY_THROTTLE_ADDRESS_EXEMPT": "127.0.0.1,::1",
        "GATEWAY_THROTTLE_OVERALL_PER_S": "100000",
        "GATEWAY_THROTTLE_OVERALL_BURST": "100000",
    })
    if sizes.pool_max is not None:
        env["GATEWAY_DATABASE_POOL_MAX"] = str(sizes.pool_max)
    return env


def run_cli(env: dict[str, str], *cli_args: str, stdin: str = "") -> str:
    done = subprocess.run([sys.executable, "-m", "gateway", *cli_args], env=env, cwd=env["PYTHONPATH"], input=stdin.encode(),
                          capture_output=True, check=False, timeout=SUBPROCESS_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"gateway {' '.join(cli_args)} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return done.stdout.decode()


# ---------------------------------------------------------------------------------------------
# Databases


async def recreate_database(url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url(url), timeout=10)
    try:
        quoted = await conn.fetchval("SELECT quote_ident($1)", name)
        await conn.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)", timeout=60)
        await conn.execute(f"CREATE DATABASE {quoted}", timeout=60)
    finally:
        await conn.close(timeout=10)


async def drop_database(url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url(url), timeout=10)
    try:
        quoted = await conn.fetchval("SELECT quote_ident($1)", name)
        await conn.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)", timeout=60)
    finally:
        await conn.close(timeout=10)


async def vacuum_analyze(url: str) -> float:
    started = time.perf_counter()
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute("VACUUM ANALYZE", timeout=600)
    finally:
        await conn.close(timeout=10)
    return time.perf_counter() - started


async def payment_counts(url: str) -> list[tuple[str, str, int]]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT capture_method, status, count(*) AS n FROM payments GROUP BY 1, 2 ORDER BY 1, 2", timeout=60
        )
    finally:
        await conn.close(timeout=10)
    return [(r["capture_method"], r["status"], r["n"]) for r in rows]


async def generate_payments(url: str, merchant_id: uuid.UUID, count: int) -> float:
    """``count`` canceled payments of ``merchant_id`` (a merchant the load never pays), in SQL; seconds taken.

    Canceled: no money moved, so no postings, balances or fees are implied and the ledger's invariants
    hold as they were. The rows spread over the past year so that every index on payments grows
    (primary key, merchant and created-at orders); the hot path's lookups by id then search 10^7 rows.
    """
    started = time.perf_counter()
    conn = await asyncpg.connect(url, timeout=10)
    try:
        for first in range(0, count, BIG_BATCH_ROWS):
            rows = min(BIG_BATCH_ROWS, count - first)
            await conn.execute(
                "INSERT INTO payments (id, merchant_id, amount_minor, currency, status, capture_method,"
                " expires_at, fee_bps, created_at, updated_at)"
                " SELECT gen_random_uuid(), $1, 100 + g % 100000, $2, 'canceled', 'automatic',"
                " t + interval '15 minutes', 0, t, t + interval '15 minutes'"
                " FROM generate_series(1, $3::int) AS g,"
                " LATERAL (SELECT now() - interval '1 day' - (g + $4::int) * interval '3 seconds') AS at (t)",
                merchant_id, CURRENCY, rows, first, timeout=3600,
            )
    finally:
        await conn.close(timeout=10)
    return time.perf_counter() - started


def peak_rss_mb(gateway: Gateway) -> dict[int, float]:
    """VmHWM (peak resident set) of each serving process: the master's children, or the master serving alone."""
    assert gateway.proc is not None
    pids = [pid for pid in gateway.pids() if pid != gateway.proc.pid] or [gateway.proc.pid]
    peaks: dict[int, float] = {}
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        if found:
            peaks[pid] = int(found.group(1)) / 1024
    return peaks


class DbWaits:
    """Samples what the gateway's database backends are doing, every ``interval_s``, during a phase.

    Each sample counts every backend of the benchmark's database by state and wait event:
    ``active`` (running on a CPU or waiting for one), ``active/Lock:transactionid`` (waiting for a
    row another transaction holds), ``active/LWLock:WALWrite`` or ``IO:WALSync`` (commit waits),
    ``idle in transaction`` (the gateway holds a transaction open between statements: a round
    trip), ``idle`` (a pooled connection nobody uses).
    """

    interval_s = 0.05

    def __init__(self, url: str) -> None:
        self.url = url
        self.counts: collections.Counter[str] = collections.Counter()
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> Self:
        self._conn = await asyncpg.connect(self.url, timeout=10)
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None and self._conn is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        await self._conn.close(timeout=10)

    async def _sample(self) -> None:
        assert self._conn is not None
        while True:
            rows = await self._conn.fetch(
                "SELECT state, wait_event_type, wait_event FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                timeout=5,
            )
            for r in rows:
                wait = f"/{r['wait_event_type']}:{r['wait_event']}" if r["wait_event_type"] else ""
                if r["state"] in {"idle", "idle in transaction"} and r["wait_event"] == "ClientRead":
                    wait = ""  # every idle backend waits for its client; the state says it
                self.counts[f"{r['state']}{wait}"] += 1
            await asyncio.sleep(self.interval_s)


# ---------------------------------------------------------------------------------------------
# HTTP


def error_code(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return raw[:80].decode(errors="replace")


def headers_for(token: str, idempotent: bool, key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if idempotent:
        headers["Idempotency-Key"] = key or uuid.uuid4().hex
    return headers


class Api:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url

    async def seed(self, method: str, path: str, expect: int, token: str | None = None,
                   body: dict[str, Any] | None = None) -> Any:
        """A set-up call: anything but the expected status stops the benchmark."""
        headers = headers_for(token, idempotent=method == "POST") if token else {}
        async with self.session.request(method, self.base_url + path, json=body, headers=headers) as resp:
            raw = await resp.read()
            if resp.status != expect:
                raise RuntimeError(f"{method} {path}: expected {expect}, got {resp.status}: {raw[:300]!r}")
            return json.loads(raw)

    async def timed(self, rec: Recorder, step: str, path: str, token: str, expect: int,
                    body: dict[str, Any], key: str | None = None) -> Any:
        """A measured POST with an Idempotency-Key (``key``, or a fresh one); None (and an error counted) unless it
        returned ``expect``."""
        started = time.perf_counter()
        try:
            async with self.session.post(self.base_url + path, json=body,
                                         headers=headers_for(token, True, key)) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            rec.errors[f"{step}: {type(exc).__name__}"] += 1
            return None
        if status != expect:
            rec.errors[f"{step}: HTTP {status} {error_code(raw)}"] += 1
            return None
        try:
            body_out = json.loads(raw)
        except ValueError:
            rec.errors[f"{step}: HTTP {status} with a body that is not JSON"] += 1
            return None
        rec.call_s[step].append(time.perf_counter() - started)
        return body_out


@dataclass(frozen=True)
class Merchant:
    id: str
    secret: str


@dataclass(frozen=True)
class Holder:
    id: str
    token: str


@dataclass(frozen=True)
class World:
    operator_token: str
    merchants: list[Merchant]
    holders: list[Holder]


async def bounded(coros: Iterable[Awaitable[T]], limit: int) -> list[T]:
    gate = asyncio.Semaphore(limit)

    async def one(c: Awaitable[T]) -> T:
        async with gate:
            return await c

    return list(await asyncio.gather(*(one(c) for c in coros)))


async def seed(api: Api, sizes: Sizes) -> World:
    op = await api.seed("POST", "/v1/operator/sessions", 201, body={"email": OPERATOR_EMAIL, "password": OPERATOR_PASSWORD})
    token = op["token"]
    # Gateways before verification tiers have no such endpoint (and no caps): skip the step there.
    has_tiers = TIER_PATH in (await api.seed("GET", "/openapi.json", 200)).get("paths", {})

    async def merchant(i: int) -> Merchant:
        m = await api.seed("POST", "/v1/merchants", 201, token,
                           {"name": f"Bench merchant {i}", "mcc": "5812", "country": "CN", "city": "Beijing"})
        key = await api.seed("POST", f"/v1/merchants/{m['id']}/api_keys", 201, token, {"kind": "secret"})
        return Merchant(m["id"], key["secret"])

    async def holder(i: int) -> Holder:
        credentials = {"phone": f"+8613{i:09d}", "password": HOLDER_PASSWORD}
        h = await api.seed("POST", "/v1/wallet/holders", 201, body=credentials)
        if has_tiers:
            await api.seed("POST", TIER_PATH.format(id=h["id"]), 200, token, {"tier": TIER_HIGHEST})
        # A device-bound session: pay-codes are issued only to a device.
        session = await api.seed("POST", "/v1/wallet/sessions", 201,
                                 body={**credentials, "device_id": f"bench-device-{i}"})
        bank = await api.seed("POST", "/v1/wallet/bank_accounts", 201, session["token"],
                              {"bank_name": "ICBC", "account_number": f"62220202{i:011d}"})
        await api.seed("POST", "/v1/wallet/top_ups", 201, session["token"],
                       {"bank_account": bank["id"], "amount": TOP_UP_MINOR, "currency": CURRENCY})
        return Holder(h["id"], session["token"])

    merchants = await bounded((merchant(i) for i in range(sizes.merchants)), SEED_CONCURRENCY)
    holders = await bounded((holder(i) for i in range(sizes.holders)), SEED_CONCURRENCY)
    return World(token, merchants, holders)


# ---------------------------------------------------------------------------------------------
# Load


@dataclass(frozen=True)
class Load:
    name: str
    manual: bool
    one_merchant: bool


LOAD_A = Load("A: automatic capture, payers spread over the merchants", manual=False, one_merchant=False)
LOAD_B = Load("B: manual capture (create, pay, capture), spread", manual=True, one_merchant=False)
LOAD_ONE = Load("A, one merchant: every payer pays the same merchant", manual=False, one_merchant=True)


async def pay_once(api: Api, rec: Recorder, load: Load, world: World, index: int, amount_minor: int,
                   intended_start_s: float | None = None) -> None:
    """One payment end to end; its whole latency runs from its intended start (open loop) or now."""
    started = time.perf_counter() if intended_start_s is None else intended_start_s
    merchant = world.merchants[0 if load.one_merchant else index % len(world.merchants)]
    holder = world.holders[index % len(world.holders)]
    rec.attempted += 1
    body: dict[str, Any] = {"amount": amount_minor, "currency": CURRENCY}
    if load.manual:
        body["capture_method"] = "manual"
    created = await api.timed(rec, "create", "/v1/payments", merchant.secret, 201, body)
    if created is None:
        return
    pid = created["id"]
    pay_path, pay_key = f"/v1/wallet/payments/{pid}/pay", uuid.uuid4().hex
    final = await api.timed(rec, "pay", pay_path, holder.token, 200, {}, key=pay_key)
    if final is None:
        return
    if load.manual:
        if final.get("status") != "requires_capture":
            rec.errors[f"pay: status {final.get('status')} (expected requires_capture)"] += 1
            return
        final = await api.timed(rec, "capture", f"/v1/payments/{pid}/capture", merchant.secret, 200, {})
        if final is None:
            return
    if confirm(rec, final, started) and not load.manual:
        rec.replayable.append((pay_path, holder.token, pay_key))


def confirm(rec: Recorder, final: dict[str, Any], started_s: float) -> bool:
    """Count a flow whose last call answered as confirmed if the payment ``succeeded``."""
    if final.get("status") != "succeeded":
        rec.errors[f"final: status {final.get('status')} (expected succeeded)"] += 1
        return False
    rec.confirmed += 1
    rec.whole_s.append(time.perf_counter() - started_s)
    return True


async def replay_once(api: Api, rec: Recorder, call: tuple[str, str, str]) -> None:
    """The pay call of a confirmed payment again, same Idempotency-Key: the stored answer, nothing moves."""
    started = time.perf_counter()
    path, token, key = call
    rec.attempted += 1
    final = await api.timed(rec, "replay pay", path, token, 200, {}, key=key)
    if final is not None:
        confirm(rec, final, started)


async def issue_pay_codes(api: Api, world: World, count: int) -> list[str]:
    """``count`` pay-codes, code i issued to holder i mod W (so charges in flight never share a wallet)."""
    async def one(i: int) -> str:
        issued = await api.seed("POST", "/v1/wallet/pay_codes", 201, world.holders[i % len(world.holders)].token, {})
        return str(issued["code"])

    return await bounded((one(i) for i in range(count)), SEED_CONCURRENCY)


async def charge_once(api: Api, rec: Recorder, world: World, codes: list[str], index: int,
                      amount_minor: int) -> None:
    """A counter payment in one call: the merchant charges a pay-code the holder showed."""
    started = time.perf_counter()
    merchant = world.merchants[index % len(world.merchants)]
    rec.attempted += 1
    final = await api.timed(rec, "pay-code charge", "/v1/pay_code_charges", merchant.secret, 201,
                            {"pay_code": codes[index], "amount": amount_minor, "currency": CURRENCY})
    if final is not None:
        confirm(rec, final, started)


async def closed_loop(api: Api, world: World, load: Load, sizes: Sizes, count: int, duration_s: float,
                      gateway: Gateway) -> PhaseResult:
    """``concurrency`` workers, each starting its next payment when the previous one ends."""
    return await closed_loop_of(load.name, lambda rec, i: pay_once(api, rec, load, world, i, sizes.amount_minor),
                                sizes, count, duration_s, gateway)


async def closed_loop_of(name: str, one: Callable[[Recorder, int], Awaitable[None]], sizes: Sizes, count: int,
                         duration_s: float, gateway: Gateway) -> PhaseResult:
    """``concurrency`` workers, each starting its next ``one(rec, index)`` when the previous one ends."""
    rec = Recorder()
    indices = itertools.count()
    async with DbWaits(gateway.env["GATEWAY_DATABASE_URL"]) as waits:
        before = cpu_sample(gateway.pgid, gateway.database)
        deadline_s = before.at_s + duration_s

        async def worker() -> None:
            while True:
                i = next(indices)
                if i >= count or time.perf_counter() >= deadline_s:
                    return
                await one(rec, i)

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(sizes.concurrency))),
                               timeout=duration_s + PHASE_GRACE_S)
        after = cpu_sample(gateway.pgid, gateway.database)
    return PhaseResult(name, rec, after.at_s - before.at_s, cpu_cores(before, after), db_waits=waits.counts)


async def open_loop(api: Api, world: World, load: Load, sizes: Sizes, rate_per_s: float, count: int,
                    duration_s: float, gateway: Gateway) -> PhaseResult:
    """Payments started on a fixed schedule whatever the gateway's pace (no coordinated omission)."""
    rec = Recorder()
    tasks: set[asyncio.Task[None]] = set()
    interval_s = 1.0 / rate_per_s
    async with DbWaits(gateway.env["GATEWAY_DATABASE_URL"]) as waits:
        before = cpu_sample(gateway.pgid, gateway.database)
        start_s = before.at_s
        for i in range(count):
            due_s = start_s + i * interval_s
            if due_s - start_s >= duration_s:
                break
            delay_s = due_s - time.perf_counter()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            if len(tasks) >= sizes.inflight_max:
                rec.errors["client: in-flight cap reached, payment not started"] += 1
                continue
            task = asyncio.create_task(pay_once(api, rec, load, world, i, sizes.amount_minor, intended_start_s=due_s))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=PHASE_GRACE_S)
        after = cpu_sample(gateway.pgid, gateway.database)
    return PhaseResult(f"{load.name}; open loop at {rate_per_s:,.1f}/s", rec, after.at_s - before.at_s,
                       cpu_cores(before, after), db_waits=waits.counts)


# ---------------------------------------------------------------------------------------------
# Profile of one gateway process


_FRAME_RE = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")
_AREAS = (
    ("asyncpg", "asyncpg"), ("aiohttp", "aiohttp"), ("redis", "redis"), ("logging", "logging"),
    ("json/", "json (stdlib)"), ("jwt", "jwt"), ("msgspec", "msgspec"), ("prometheus_client", "prometheus_client"),
    ("gateway/", "gateway"), ("asyncio", "asyncio"), ("uuid", "uuid"), ("multidict", "aiohttp"), ("yarl", "aiohttp"),
)


def _area(file: str) -> str:
    return next((name for needle, name in _AREAS if needle in file), "other")


_SEND_LEAF = "_SelectorSocketTransport.write (asyncio/selector_events.py)"


def _file(frame: str) -> str:
    found = _FRAME_RE.match(frame)
    return found["file"] if found else ""


def _share(n: int, total: int) -> str:
    return f"{100 * n / total:5.1f}%"


def summarise_profile(path: Path, top: int = 15) -> list[str]:
    """Summarise py-spy raw output: socket sends by caller, then self time of the rest, then inclusive time.

    py-spy counts a thread as active when it is runnable, so a process preempted inside a loopback
    ``send`` (the kernel wakes the receiving process there, which often takes the core) is sampled
    in ``transport.write``. On an oversubscribed machine that is mostly waiting for a core; it is
    shown apart, attributed to the library that sent, and the rest is broken down without it.
    """
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    senders: collections.Counter[str] = collections.Counter()
    total = sends = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not stack or not n_text.isdigit():
            continue
        n = int(n_text)
        frames = [f for f in stack.split(";") if _FRAME_RE.match(f)]
        if not frames:
            continue
        total += n
        for frame in dict.fromkeys(frames):
            inclusive[frame] += n
        if frames[-1] == _SEND_LEAF:
            sends += n
            caller = next((_area(_file(f)) for f in reversed(frames) if _area(_file(f)) != "asyncio"), "asyncio")
            senders[caller] += n
            continue
        own[frames[-1]] += n
        areas[_area(_file(frames[-1]))] += n
    if total == 0:
        return ["  (no samples)"]
    rest = max(1, total - sends)
    out = [f"  {total} samples of a runnable thread; {_share(sends, total)} inside a socket send, by sender:"]
    out += [f"    {_share(n, total)}  {name}" for name, n in senders.most_common()]
    out.append(f"  the other {total - sends} samples, self time by library:")
    out += [f"    {_share(n, rest)}  {name}" for name, n in areas.most_common()]
    out.append(f"  the other samples, top {top} functions by self time:")
    out += [f"    {_share(n, rest)}  {name}" for name, n in own.most_common(top)]
    out.append(f"  top {top} gateway functions by inclusive time (all samples):")
    skip = ("gateway/__main__.py", "gateway/cli.py")
    ours = [(f, n) for f, n in inclusive.most_common() if "gateway/" in f and not any(x in f for x in skip)][:top]
    out += [f"    {_share(n, total)}  {name}" for name, n in ours]
    out.append(f"  top {top} library functions by inclusive time (all samples):")
    libraries = {"asyncpg", "redis", "jwt", "logging", "msgspec", "prometheus_client", "json (stdlib)", "uuid"}
    theirs = [(f, n) for f, n in inclusive.most_common() if _area(_file(f)) in libraries][:top]
    out += [f"    {_share(n, total)}  {name}" for name, n in theirs]
    return out


async def profiled_phase(api: Api, world: World, sizes: Sizes, rate_per_s: float, gateway: Gateway,
                         log_dir: Path) -> tuple[list[str], PhaseResult | None]:
    """Phase A paced at ``rate_per_s`` (half load) while py-spy samples one gateway process.

    Half load, not full: on a saturated machine a runnable process waits for a core and py-spy
    still samples it, so the profile would show waiting where it should show work.
    """
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return ["  py-spy not found (install it with .venv/bin/pip install py-spy)"], None
    out_path = log_dir / "profile.txt"
    pid = gateway.serving_pid()
    seconds = max(1, round(sizes.profile_s))
    proc = await asyncio.create_subprocess_exec(
        spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "500", "--format", "raw",
        "--nolineno", "--nonblocking", "--output", str(out_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        result = await open_loop(api, world, LOAD_A, sizes, rate_per_s, 10**9, float(seconds), gateway)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=seconds + SUBPROCESS_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), timeout=10)
    lines = [
        f"  profiled gateway pid {pid} for {seconds} s while phase A ran paced at {result.rate_per_s:,.1f} payments/s",
        f"  raw stacks: {out_path}",
        f"  cpu (cores busy on average): {_cpu_text(result.cpu)}",
    ]
    if proc.returncode != 0 or not out_path.exists():
        return lines + [f"  py-spy failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}"], result
    return lines + summarise_profile(out_path), result


# ---------------------------------------------------------------------------------------------
# pgbench


_TPS_RE = re.compile(r"^tps = ([0-9.]+) \(without initial connection", re.MULTILINE)


def run_pgbench(url: str, database: str, sizes: Sizes) -> tuple[float | None, str]:
    """pgbench -i, then the bounded tpcb-like run; (tps, the command line) or (None, why not)."""
    parts = urlsplit(url)
    conn_args = ["-h", parts.hostname or LOCALHOST, "-p", str(parts.port or 5432), "-U", parts.username or "postgres"]
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        return None, "pgbench not found"
    init = subprocess.run([pgbench, *conn_args, "-i", "-q", "-s", str(sizes.pgbench_scale), database],
                          capture_output=True, check=False, timeout=600)
    if init.returncode != 0:
        return None, f"pgbench -i failed: {init.stderr.decode()[-500:]}"
    cmd = [pgbench, *conn_args, "-c", str(sizes.pgbench_clients), "-j", str(sizes.pgbench_threads),
           "-T", str(sizes.pgbench_duration_s), "-M", "prepared", "-b", "tpcb-like", database]
    shown = " ".join(["pgbench", *cmd[1 + len(conn_args):]])
    done = subprocess.run(cmd, capture_output=True, check=False, timeout=sizes.pgbench_duration_s + SUBPROCESS_TIMEOUT_S)
    found = _TPS_RE.search(done.stdout.decode())
    if done.returncode != 0 or found is None:
        return None, f"{shown} failed ({done.returncode}): {done.stderr.decode()[-500:]}"
    return float(found.group(1)), shown


# ---------------------------------------------------------------------------------------------
# The counter: bench/tap_to_approval.py, whole processes over nfcpy's udp driver and a pty


_TAP_RE = re.compile(r"^armed->approved \(tap\)\s+n=(\d+)\s+p50=\s*([0-9.]+) ms\s+p95=\s*([0-9.]+) ms", re.MULTILINE)


def run_tap_to_approval(sales: int) -> tuple[float | None, str]:
    """p95 of armed->approved over ``sales`` sales (its own gateway and database), and its output or why not."""
    cmd = [sys.executable, str(REPO / "bench" / "tap_to_approval.py"), "--sales", str(sales)]
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, check=False, timeout=60 + 20 * sales)
    except subprocess.TimeoutExpired:
        return None, "tap_to_approval.py timed out"
    out = done.stdout.decode(errors="replace")
    found = _TAP_RE.search(out)
    if done.returncode != 0 or found is None:
        return None, f"tap_to_approval.py failed ({done.returncode}): {done.stderr.decode(errors='replace')[-800:]}"
    return float(found.group(3)), out.strip()


# ---------------------------------------------------------------------------------------------
# Latency against offered load


def write_plot(points: list[dict[str, Any]], peak_per_s: float, path: Path) -> str:
    """p50 and p99 of a whole payment against the offered rate; where it went, or why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: render to a file
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (the [test] extra has it): no plot"
    measured = [pt for pt in points if pt["p50_ms"] is not None]
    if not measured:
        return "no payment confirmed in the sweep: no plot"
    offered = [pt["offered_per_s"] for pt in measured]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(offered, [pt["p50_ms"] for pt in measured], "o-", label="p50")
    ax.plot(offered, [pt["p99_ms"] for pt in measured], "s-", label="p99")
    ax.axhline(GOAL_HALF_LOAD_P99_MS_MAX, color="grey", linestyle=":", label=f"p99 goal at half load ({GOAL_HALF_LOAD_P99_MS_MAX:g} ms)")
    ax.axvline(peak_per_s, color="grey", linestyle="--", label=f"phase A peak ({peak_per_s:,.1f}/s)")
    ax.set_xlabel("offered payments/s (open loop)")
    ax.set_ylabel("whole payment latency, ms")
    ax.set_yscale("log")
    ax.set_title("bench/payments.py: latency against offered load (automatic capture, spread)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


# ---------------------------------------------------------------------------------------------
# The run


def banner(text: str) -> None:
    print(f"\n== {text} ==", flush=True)


def goal_line(label: str, value: float | None, unit: str, goal: str, met: bool | None) -> str:
    shown = "n/a" if value is None else f"{value:,.2f}{unit}"
    verdict = "not measured" if met is None else ("met" if met else "MISSED")
    return f"  {label:<44} {shown:>12}   goal {goal:<9} -> {verdict}"


def gateway_errors(log_path: Path, shown_max: int = 5) -> tuple[int, list[str]]:
    """Error-level lines in the gateway's JSON log (500s are logged with their traceback)."""
    count, shown = 0, list[str]()
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            if "Traceback" in line or "Error" in line:
                count += 1
                if len(shown) < shown_max:
                    shown.append(line[:300])
            continue
        if isinstance(record, dict) and record.get("level") in {"error", "critical"}:
            count += 1
            if len(shown) < shown_max:
                exc = str(record.get("exc", "")).strip().splitlines()
                shown.append(f"{record.get('msg')} {record.get('path', '')} {exc[-1] if exc else ''}".strip())
    return count, shown


class GatewayLog:
    """Reads the gateway's JSON log incrementally: the request lines written since the last read."""

    STEPS: ClassVar[dict[str, str]] = {"/v1/payments": "create", "/v1/wallet/payments/{id}/pay": "pay", "/v1/payments/{id}/capture": "capture"}

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def attach(self, result: PhaseResult) -> PhaseResult:
        """Give ``result`` the server-side view of the requests logged since the previous call.

        Between phases only VACUUM runs, so these are exactly the phase's requests: the gateway logs
        a request before it sends the response, and its stderr is line-buffered.
        """
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        complete = data[:data.rfind(b"\n") + 1]
        self.offset += len(complete)
        server_ms: dict[str, list[float]] = collections.defaultdict(list)
        for line in complete.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or record.get("msg") != "request":
                continue
            if int(record.get("status", 0)) >= 500:
                result.server_5xx += 1
            step = self.STEPS.get(str(record.get("route")))
            if step is not None and int(record.get("status", 0)) < 400:
                server_ms[step].append(float(record.get("duration_ms", 0.0)))
        result.server_ms = dict(server_ms)
        return result


async def run(args: argparse.Namespace, sizes: Sizes, gateway: Gateway, log_dir: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {"sizes": sizes.__dict__, "phases": {}}
    env = gateway.env
    glog = GatewayLog(gateway.log_path)
    banner("setup")
    idle_busy = await background_cores(args.wait_quiet)
    print(f"  background load before start: {idle_busy:.2f} cores busy of {os.cpu_count()}"
          + ("" if idle_busy < QUIET_CORES_MAX else "  WARNING: other processes are running; figures will be low"))
    await recreate_database(args.database_url, db_name(args.database_url))
    print(f"  database {db_name(args.database_url)} re-created; {run_cli(env, 'migrate').strip()}")
    run_cli(env, "create-operator", "--email", OPERATOR_EMAIL, "--role", "admin", stdin=OPERATOR_PASSWORD + "\n")
    gateway.start()
    timeout = aiohttp.ClientTimeout(total=sizes.request_timeout_s)
    connector = aiohttp.TCPConnector(limit=max(sizes.concurrency, sizes.inflight_max), limit_per_host=0,
                                     keepalive_timeout=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await gateway.wait_ready(session)
        print(f"  gateway from {env['PYTHONPATH']} ready on {gateway.base_url} with {sizes.processes} process(es),"
              f" pids {gateway.pids()}; log {gateway.log_path}")
        api = Api(session, gateway.base_url)

        banner("seed (public API)")
        started = time.perf_counter()
        world = await seed(api, sizes)
        print(f"  {len(world.merchants)} merchants with secret keys, {len(world.holders)} holders topped up with"
              f" {TOP_UP_MINOR} minor units each, in {time.perf_counter() - started:.1f} s")

        async def vacuum() -> None:
            print(f"  (VACUUM ANALYZE took {await vacuum_analyze(args.database_url):.1f} s)")

        banner(f"warm-up: {sizes.warmup} payments, not reported")
        await vacuum()
        glog.attach(PhaseResult("seed", Recorder(), 0.0, {}))  # skip the seeding requests
        warm = glog.attach(await closed_loop(api, world, LOAD_A, sizes, sizes.warmup, sizes.duration_s, gateway))
        print(f"  confirmed {warm.rec.confirmed} of {warm.rec.attempted}; errors {dict(warm.rec.errors) or 'none'};"
              f" 5xx logged {warm.server_5xx}")

        results: dict[str, PhaseResult] = {}
        for key, load in (("A", LOAD_A), ("B", LOAD_B), ("one_merchant", LOAD_ONE)):
            banner(f"{load.name}; closed loop, concurrency {sizes.concurrency},"
                   f" {sizes.count} payments or {sizes.duration_s:g} s")
            await vacuum()
            results[key] = glog.attach(
                await closed_loop(api, world, load, sizes, sizes.count, sizes.duration_s, gateway))
            results[key].print()
        peak = results["A"].rate_per_s

        replayable = results["A"].rec.replayable
        banner(f"idempotent replays: A's {len(replayable)} pay calls again with their Idempotency-Key, closed loop,"
               f" {sizes.count} replays or {sizes.duration_s:g} s")
        if replayable:
            results["replays"] = glog.attach(await closed_loop_of(
                "replays of A's pay calls", lambda rec, i: replay_once(api, rec, replayable[i % len(replayable)]),
                sizes, sizes.count, sizes.duration_s, gateway))
            results["replays"].print()
        else:
            print("  skipped: phase A confirmed nothing")

        banner(f"pay-code charges (one call per payment), closed loop, {sizes.count} charges or {sizes.duration_s:g} s")
        started = time.perf_counter()
        codes = await issue_pay_codes(api, world, sizes.count)
        print(f"  {len(codes)} pay-codes issued beforehand (not measured) in {time.perf_counter() - started:.1f} s")
        await vacuum()
        glog.attach(PhaseResult("pay-code issue", Recorder(), 0.0, {}))  # skip the issuing requests
        results["pay_code"] = glog.attach(await closed_loop_of(
            "pay-code charges", lambda rec, i: charge_once(api, rec, world, codes, i, sizes.amount_minor),
            sizes, len(codes), sizes.duration_s, gateway))
        results["pay_code"].print()

        half_rate = sizes.half_rate_per_s or peak / 2
        banner(f"half load: A paced open loop at {half_rate:,.1f} payments/s,"
               f" {sizes.count} payments or {sizes.duration_s:g} s")
        if half_rate > 0:
            await vacuum()
            results["half_load"] = glog.attach(await open_loop(api, world, LOAD_A, sizes, half_rate, sizes.count,
                                                              sizes.duration_s, gateway))
            results["half_load"].print()
        else:
            print("  skipped: phase A confirmed nothing")

        sweep: list[dict[str, Any]] = []
        banner(f"sweep: A paced open loop at {', '.join(f'{f:g}' for f in SWEEP_FRACTIONS)} of A's {peak:,.1f}/s,"
               f" {sizes.sweep_duration_s:g} s each")
        for fraction in SWEEP_FRACTIONS if peak > 0 else ():
            await vacuum()
            step = glog.attach(await open_loop(api, world, LOAD_A, sizes, fraction * peak, 10**9,
                                               sizes.sweep_duration_s, gateway))
            point = {"fraction": fraction, "offered_per_s": fraction * peak, **step.figures()}
            sweep.append(point)
            print(f"  {fraction:4.2f} x peak: offered {fraction * peak:8,.1f}/s, confirmed {step.rate_per_s:8,.1f}/s,"
                  f" p50 {fmt_ms(point['p50_ms'])} ms, p99 {fmt_ms(point['p99_ms'])} ms,"
                  f" errors {sum(step.rec.errors.values())}")
        plot_path = Path(args.plot_path) if args.plot_path else log_dir / "latency.png"
        plot = write_plot(sweep, peak, plot_path)
        print(f"  plot: {plot}")

        big_s: float | None = None
        if sizes.big:
            banner(f"A again with {sizes.big:,} more payments in the database")
            archive = await api.seed("POST", "/v1/merchants", 201, world.operator_token,
                                     {"name": "Bench archive merchant", "mcc": "5812", "country": "CN",
                                      "city": "Beijing"})
            # The API's id is "mer_" + the row's uuid in hex.
            archive_id = uuid.UUID(hex=str(archive["id"]).rpartition("_")[2])
            big_s = await generate_payments(args.database_url, archive_id, sizes.big)
            print(f"  {sizes.big:,} canceled payments of a merchant the load never pays generated in SQL in"
                  f" {big_s:.1f} s")
            await vacuum()
            glog.attach(PhaseResult("generation", Recorder(), 0.0, {}))
            results["A_big"] = glog.attach(
                await closed_loop(api, world, LOAD_A, sizes, sizes.count, sizes.duration_s, gateway))
            results["A_big"].print()

        # VmHWM is each process's peak since it started: read after every load phase, before the stop.
        rss_mb = peak_rss_mb(gateway)
        print("\n  gateway serving processes, peak RSS (VmHWM): "
              + ", ".join(f"pid {pid} {mb:,.1f} MB" for pid, mb in rss_mb.items()))

        profile: list[str] = []
        profiled: PhaseResult | None = None
        if sizes.profile_s > 0 and half_rate > 0:
            banner(f"profile: A paced at {half_rate:,.1f}/s again, py-spy on one gateway process"
                   f" for {sizes.profile_s:g} s")
            await vacuum()
            profile, profiled = await profiled_phase(api, world, sizes, half_rate, gateway, log_dir)
            print("\n".join(profile))

        banner("ledger invariants (GET /v1/operator/ledger/invariants)")
        report = await api.seed("GET", "/v1/operator/ledger/invariants", 200, world.operator_token)
        invariants_ok = bool(report.get("ok"))
        print("  OK" if invariants_ok else f"  BROKEN: {json.dumps(report.get('violations'))[:2000]}")
    gateway.stop()

    counts = await payment_counts(args.database_url)
    # Replays create nothing: the payments the client made are every other phase's confirmations.
    every_phase = [warm, *results.values(), *([profiled] if profiled else [])]
    confirmed_total = sum(r.rec.confirmed for r in every_phase if r is not results.get("replays"))
    confirmed_total += sum(pt["confirmed"] for pt in sweep)
    print("  payments in the database by capture method and status: "
          + ", ".join(f"{m}/{s} {n}" for m, s, n in counts))
    print(f"  succeeded in the database: {sum(n for _, s, n in counts if s == 'succeeded')};"
          f" confirmed by this client (all phases but the replays): {confirmed_total}")
    n_errors, shown = gateway_errors(gateway.log_path)
    print(f"  error-level lines in the gateway log: {n_errors}")
    for line in shown:
        print(f"    {line}")

    tps: float | None = None
    if not args.skip_pgbench:
        banner("pgbench on the same PostgreSQL (gateway stopped)")
        await recreate_database(args.database_url, args.pgbench_database)
        try:
            tps, how = await asyncio.to_thread(run_pgbench, args.database_url, args.pgbench_database, sizes)
        finally:
            await drop_database(args.database_url, args.pgbench_database)
        print(f"  {how}: " + (f"{tps:,.1f} tps" if tps is not None else "no figure"))

    tap_p95: float | None = None
    if sizes.tap_sales:
        banner(f"tap to approval: bench/tap_to_approval.py --sales {sizes.tap_sales} (its own gateway and database)")
        tap_p95, tap_out = await asyncio.to_thread(run_tap_to_approval, sizes.tap_sales)
        print("\n".join(f"  {line}" for line in tap_out.splitlines()))

    a = results["A"]
    half = results.get("half_load")

    def ratio(key: str, base: float | None) -> float | None:
        return results[key].rate_per_s / base if key in results and base else None

    goals = [
        ("payments_A_over_pgbench", "payments/s (A) / pgbench tps", ratio("A", tps), "x", ">=",
         GOAL_PGBENCH_RATIO_MIN),
        ("payments_B_over_pgbench", "payments/s (B) / pgbench tps", ratio("B", tps), "x", ">=",
         GOAL_B_PGBENCH_RATIO_MIN),
        ("one_merchant_over_spread", "one merchant / spread (A)", ratio("one_merchant", peak), "x", ">=",
         GOAL_ONE_MERCHANT_RATIO_MIN),
        ("half_load_p99_ms", "p99 whole payment at half load (A)",
         percentile_ms(half.rec.whole_s, 99) if half else None, " ms", "<=", GOAL_HALF_LOAD_P99_MS_MAX),
        ("replays_over_payments", "idempotent replays/s / payments/s (A)", ratio("replays", peak), "x", ">=",
         GOAL_REPLAY_RATIO_MIN),
        ("pay_code_over_pgbench", "pay-code charges/s / pgbench tps", ratio("pay_code", tps), "x", ">=",
         GOAL_PAY_CODE_RATIO_MIN),
        ("big_over_empty", f"A with {sizes.big or 'N (--big N)'} more payments / A", ratio("A_big", peak), "x", ">=",
         GOAL_BIG_RATIO_MIN),
        ("gateway_rss_mb_max", "gateway peak RSS per process (largest)", max(rss_mb.values(), default=None), " MB",
         "<=", GOAL_RSS_MB_MAX),
        ("tap_to_approval_p95_ms", "tap-to-approval p95 (armed->approved)", tap_p95, " ms", "<=",
         GOAL_TAP_P95_MS_MAX),
    ]
    banner("summary" + ("  (QUICK MODE: sizes too small for the figures to mean anything)" if args.quick else ""))
    for key, label in (("A", "A automatic capture, spread"), ("B", "B manual capture, spread"),
                       ("one_merchant", "A one merchant"), ("replays", "idempotent replays of A's pay calls"),
                       ("pay_code", "pay-code charges (one call)"), ("A_big", f"A with {sizes.big:,} more payments")):
        if key in results:
            print(f"  confirmed per s, {label:<38}: {results[key].rate_per_s:10,.1f}")
    print("  pgbench tpcb-like tps                                      : "
          + (f"{tps:10,.1f}" if tps is not None else "       n/a"))
    print(f"  A p50 / p99 whole payment at full load            : {fmt_ms(percentile_ms(a.rec.whole_s, 50))} /"
          f" {fmt_ms(percentile_ms(a.rec.whole_s, 99))} ms")
    if half:
        per_call = ", ".join(f"{s} {fmt_ms(percentile_ms(v, 99)).strip()} ms" for s, v in half.rec.call_s.items())
        print(f"  half load p99 per call                            : {per_call}")
    if big_s is not None:
        print(f"  generating {sizes.big:,} payments in SQL took {big_s:.1f} s")
    print(f"  latency against offered load: {plot}")
    print("  goals (issue 12):")
    for _, label, value, unit, op, goal in goals:
        print(goal_line(label, value, unit, f"{op} {goal:g}{unit}",
                        None if value is None else (value >= goal if op == ">=" else value <= goal)))
    print(f"  ledger invariants: {'OK' if invariants_ok else 'BROKEN'};"
          f" error-level lines in the gateway log: {n_errors}")
    errors_total = sum((r.rec.errors for r in every_phase), collections.Counter())
    print(f"  client-side errors, all phases incl. warm-up (not the sweep): {dict(errors_total) or 'none'}")
    measured = [r for r in results.values() if r.cpu]
    other = sum(r.cpu["other"] * r.elapsed_s for r in measured) / max(1e-9, sum(r.elapsed_s for r in measured))
    if idle_busy >= QUIET_CORES_MAX or other >= QUIET_CORES_MAX:
        print(f"  WARNING: processes outside this benchmark used {other:.2f} cores on average during the measured"
              f" phases ({idle_busy:.2f} before start): every figure above is understated")

    figures["phases"] = {k: r.figures() for k, r in results.items()}
    figures.update({
        "pgbench_tps": tps, "goals": {key: {"value": value, "goal": f"{op} {goal:g}",
                                            "met": None if value is None else (value >= goal if op == ">=" else value <= goal)}
                                      for key, _, value, _, op, goal in goals},
        "sweep": sweep, "plot": plot, "gateway_peak_rss_mb": rss_mb, "big_payments": sizes.big,
        "big_generation_s": big_s, "tap_to_approval_p95_ms": tap_p95,
        "invariants_ok": invariants_ok, "gateway_error_lines": n_errors,
        "background_cores_before": idle_busy, "background_cores_during": other,
        "payments_in_db": counts, "profile": profile,
    })
    return figures


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the gateway


def main(argv: list[str] | None = None) -> int:
    args, sizes = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    gateway = Gateway(gateway_env(args, sizes, port), port, sizes.processes, log_dir / "gateway.log")
    started = time.perf_counter()
    try:
        figures = asyncio.run(run(args, sizes, gateway, log_dir))
    finally:
        gateway.stop()
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(figures, indent=2, default=str))
    print(f"\n(total {time.perf_counter() - started:.0f} s; logs in {log_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
