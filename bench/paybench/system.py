"""The machine under test: the gateway's processes, CPU accounting from /proc, the databases, pgbench, the counter.

Only 127.0.0.1 is targeted, only databases whose name contains "bench" are dropped (parse_args checks both), and
the gateway's process group is killed on every exit path (Gateway.stop).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

import aiohttp
import redis.asyncio as aioredis
import asyncpg

from gateway.smssim import SmsGatewaySim
from paybench.config import (
    BIG_BATCH_ROWS,
    CLK_TCK,
    CURRENCY,
    LOCALHOST,
    PAY_CODE_TTL_S,
    QUIET_CORES_MAX,
    RATE_LIMIT_PER_S,
    READY_TIMEOUT_S,
    REPO,
    STOP_TIMEOUT_S,
    SUBPROCESS_TIMEOUT_S,
    TOKEN_TTL_S,
    Sizes,
    admin_url,
    db_name,
)


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


_sms: list[tuple[SmsGatewaySim, contextlib.AbstractContextManager[SmsGatewaySim]]] = []


def sms_gateway() -> SmsGatewaySim:
    """Where the gateways under test text their sign-in codes (a real HTTP server on loopback, in a thread
    for the whole run); ``load.seed`` reads the codes from it."""
    if not _sms:
        sim = SmsGatewaySim()
        serving = sim.in_thread()
        serving.__enter__()
        _sms.append((sim, serving))
    return _sms[0][0]


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
        # Sign-in codes (gateways before them ignore the setting).
        "GATEWAY_SIGN_IN_SMS_HOOK_URL": sms_gateway().url,
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


# The gateway's keys in Redis (accel.py: cached idempotent answers, token buckets, risk windows, pay-code
# throttles): those of earlier runs belong to a database the run has just re-created.
GATEWAY_KEY_PATTERNS = ("idem:*", "tb:*", "risk:w:*", "paycode:*")


async def clear_gateway_keys(redis_url: str) -> int:
    """Delete the gateway's keys from the run's Redis database; returns how many. Left in place, earlier
    runs' keys pile up (~2 per payment) and the key space's rehashing at each doubling lands on whichever
    phase crosses it (seen: ~100 us of Redis CPU per payment for a whole phase at 2^18 keys)."""
    client = aioredis.from_url(redis_url)
    removed = 0
    try:
        for pattern in GATEWAY_KEY_PATTERNS:
            batch: list[bytes] = []
            async for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    removed += await client.unlink(*batch)
                    batch = []
            if batch:
                removed += await client.unlink(*batch)
    finally:
        await client.aclose()
    return removed


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


async def wal_bytes(url: str) -> int:
    """Where PostgreSQL's write-ahead log is now, in bytes from its start: two readings bracket what a
    phase wrote (the whole server's, so a phase alone on the machine)."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return int(await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn", timeout=10))
    finally:
        await conn.close(timeout=10)


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

    Each payment comes with what the hot path's tables would hold for it: its event (``payment.canceled``,
    not deliverable, so the webhook fan-out skips it) and its create call's completed idempotency key.
    Canceled: no money moved, so no journal entries, postings, balances or fees are implied and the
    ledger's invariants hold as they were. The payments spread over the past year so that every index on
    payments grows; the keys over the last hours, inside the idempotency retention (the reaper must not
    spend the measured phase deleting them). Their ids are the gateway's own kind (``domain.ids.new``, UUIDv7
    of the row's creation time, oldest first), as a gateway that ran for that year would have made them.
    """
    started = time.perf_counter()
    conn = await asyncpg.connect(url, timeout=10)
    try:
        # RFC 9562 UUIDv7 of t: its Unix milliseconds in the first 48 bits, version 7, random bits after.
        await conn.execute(
            "CREATE FUNCTION pg_temp.uuid7_at(t timestamptz) RETURNS uuid LANGUAGE sql VOLATILE AS $$"
            " SELECT encode(set_byte(overlay(r PLACING substring(int8send((extract(epoch FROM t) * 1000)::bigint)"
            " FROM 3) FROM 1 FOR 6), 6, 112 | (get_byte(r, 6) & 15)), 'hex')::uuid"
            " FROM (SELECT uuid_send(gen_random_uuid()) AS r) AS x $$")
        for first in range(0, count, BIG_BATCH_ROWS):
            rows = min(BIG_BATCH_ROWS, count - first)
            await conn.execute(
                """
                WITH made AS (
                    INSERT INTO payments (id, merchant_id, amount_minor, currency, status, capture_method,
                                          expires_at, fee_bps, created_at, updated_at)
                    SELECT pg_temp.uuid7_at(t), $1, 100 + g % 100000, $2, 'canceled', 'automatic',
                           t + interval '15 minutes', 0, t, t + interval '15 minutes'
                      FROM generate_series($3::int + 1, $3::int + $4::int) AS g,
                           LATERAL (SELECT now() - interval '1 day' - ($5::int - g) * interval '3 seconds') AS at (t)
                    RETURNING id, amount_minor, updated_at
                ), evented AS (
                    INSERT INTO events (id, type, merchant_id, object_id, data, created_at, deliverable)
                    SELECT pg_temp.uuid7_at(updated_at), 'payment.canceled', $1, id,
                           jsonb_build_object('id', id, 'amount', amount_minor, 'status', 'canceled'), updated_at, false
                      FROM made
                )
                INSERT INTO idempotency_keys (principal, key, request_hash, method, path, response_status,
                                              response_body, created_at)
                SELECT 'bench-archive:' || $1::text, id::text, '\\x00', 'POST', '/v1/payments', 201, '\\x7b7d',
                       now() - row_number() OVER () * interval '1 millisecond' - $3::int * interval '1 millisecond'
                  FROM made
                """,
                merchant_id, CURRENCY, first, rows, count, timeout=3600,
            )
    finally:
        await conn.close(timeout=10)
    return time.perf_counter() - started


def _status_mb(gateway: Gateway, field: str) -> dict[int, float]:
    """A /proc/PID/status memory field of each serving process: the master's children, or the master serving alone."""
    assert gateway.proc is not None
    pids = [pid for pid in gateway.pids() if pid != gateway.proc.pid] or [gateway.proc.pid]
    found_mb: dict[int, float] = {}
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        found = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
        if found:
            found_mb[pid] = int(found.group(1)) / 1024
    return found_mb


def peak_rss_mb(gateway: Gateway) -> dict[int, float]:
    """VmHWM (peak resident set since start, the seeding's Argon2 hashes included) of each serving process."""
    return _status_mb(gateway, "VmHWM")


def rss_mb(gateway: Gateway) -> float | None:
    """The largest VmRSS (resident set now) of the serving processes: read at the end of a load phase."""
    return max(_status_mb(gateway, "VmRSS").values(), default=None)


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
        self.failed: str | None = None  # why sampling stopped before the phase's end, if it did

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
        except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
                TimeoutError) as exc:  # the samples are a diagnosis: losing them never ends the benchmark
            self.failed = f"{type(exc).__name__}: {exc}"
        self._conn.terminate()

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


# Issue 12's figure: from the register's request to its answer (the whole counter sale, as the cashier waits).
_TAP_RE = re.compile(r"^register request->answer\s+n=(\d+)\s+p50=\s*([0-9.]+) ms\s+p95=\s*([0-9.]+) ms", re.MULTILINE)


def run_tap_to_approval(sales: int) -> tuple[float | None, str]:
    """p95 of register request->answer over ``sales`` sales (its own gateway and database), and its output or why not."""
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


Statements = dict[int, tuple[int, float, str]]  # queryid -> calls, total execution ms, text


async def statements(url: str) -> Statements | None:
    """pg_stat_statements as it stands (None: the server does not load it): two readings bracket what a
    block ran. Only for a server of the bench's own (``--statements``): the module must be preloaded, and
    ``track = all`` shows the statements inside the gateway's functions too."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        preloaded = await conn.fetchval("SELECT current_setting('shared_preload_libraries')", timeout=10)
        if "pg_stat_statements" not in preloaded:
            return None
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", timeout=10)
        rows = await conn.fetch("SELECT queryid, calls, total_exec_time, query FROM pg_stat_statements"
                                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
                                timeout=30)
        return {int(r["queryid"]): (int(r["calls"]), float(r["total_exec_time"]), str(r["query"])) for r in rows}
    finally:
        await conn.close(timeout=10)


def statements_lines(before: Statements, after: Statements, payments: int, top: int = 15) -> list[str]:
    """The statements that took the most time between two readings, per payment: wall time (a backend
    waiting for a lock or a core counts), calls per payment and the statement's start."""
    moved = []
    for queryid, (calls, total_ms, text) in after.items():
        calls_before, total_before, _ = before.get(queryid, (0, 0.0, text))
        if calls > calls_before:
            moved.append((total_ms - total_before, calls - calls_before, " ".join(text.split())[:110]))
    moved.sort(reverse=True)
    per = max(payments, 1)
    lines = [f"  statements (pg_stat_statements, wall time per payment): {sum(m[0] for m in moved) * 1e3 / per:,.0f} us"
             " in all"]
    lines += [f"    {ms * 1e3 / per:8,.1f} us {calls / per:5.2f}/payment  {text}" for ms, calls, text in moved[:top]]
    return lines
