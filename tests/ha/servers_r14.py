"""Servers of the HA tests (replica reads, Redis Sentinel, HAProxy), each private, on 127.0.0.1 and free ports.

- ``Replica``: a hot standby made by ``pg_basebackup -R`` from a ``PostgresCluster`` (the fault harness's),
  streaming from it; every connection to it is logged, so a test can tell whether anything used it.
- ``SentinelGroup``: a Redis master, one replica and three sentinels (quorum 2) watching it.
- ``HAProxy``: ``haproxy`` running deploy/haproxy/haproxy.cfg, its addresses given by the environment.
- ``Bank``: gateways on those servers, a merchant and holders, and the fault harness's bank client (keys
  journaled first, retried until a definite answer) with its checker's verdict on what the database holds.

Invariants: every process started here is stopped and every temporary directory removed by the
``Cleanup`` that the caller runs in a ``finally`` (``tests.fault.bank.Cleanup``), whatever failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests import canary
from tests.e2e.harness import OPERATOR_EMAIL, OPERATOR_PASSWORD, REPO_ROOT, Api, GatewayProcess, Holder, Shop
from tests.e2e.harness import free_tcp_port
from tests.fault import bank, checker
from tests.fault.client import BankClient, Stats
from tests.fault.cluster import PG_BIN, READY_TIMEOUT_S, REDIS_SERVER, PostgresCluster, RedisServer
from tests.fault.journal import Journal, Op

DATABASE = "gateway_ha"
REDIS_SENTINEL = shutil.which("redis-sentinel") or "/usr/bin/redis-sentinel"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
HAPROXY_CONFIG = REPO_ROOT / "deploy" / "haproxy" / "haproxy.cfg"
TOP_UP_MINOR = 1_000_000


def need(*programs: str | Path) -> None:
    """Skip the test, naming what is missing, unless every program is installed."""
    missing = [str(p) for p in programs if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (apt-get install postgresql-15 redis-server redis-sentinel"
                    " haproxy)")


class Replica(PostgresCluster):
    """A streaming replica of ``primary`` (hot standby), on a port of its own."""

    def init_from(self, primary: PostgresCluster) -> None:
        self._run(str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                  "-D", str(self.data), "-R", "-X", "stream", "-c", "fast")
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as out:  # later lines win
            out.write("\n".join([
                "", f"port = {self.port}", f"unix_socket_directories = '{self.root}'", "hot_standby = on",
                "log_connections = on", "",
            ]))

    async def execute(self, sql: str) -> None:
        conn = await asyncpg.connect(self.url("postgres"), timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def connections_to(self, database: str) -> int:
        """Sessions ever opened on this server to ``database`` (from its log)."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return sum(1 for line in text.splitlines() if "connection authorized" in line and f"database={database}" in line)


async def caught_up(primary: PostgresCluster, replica: Replica, timeout_s: float = 20.0) -> None:
    """Wait until the replica has replayed everything the primary wrote so far."""
    conn = await asyncpg.connect(primary.url("postgres"), timeout=10)
    try:
        target = await conn.fetchval("SELECT pg_current_wal_lsn()")
    finally:
        await conn.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        conn = await asyncpg.connect(replica.url("postgres"), timeout=10)
        try:
            if await conn.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", target):
                return
        finally:
            await conn.close()
        await asyncio.sleep(0.1)
    raise AssertionError("the replica did not catch up")


class RedisNode(RedisServer):
    """``RedisServer`` with more arguments (``--replicaof``, ...)."""

    def __init__(self, *args: str) -> None:
        super().__init__()
        self.args = args

    def start(self) -> None:
        self.process = _spawn([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(self.root), "--protected-mode", "no", *self.args],
                              self.log_path)
        _wait_ping(self.port, self.process, self.log_path)


def _spawn(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)


def _wait_ping(port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()[-2000:]
        with contextlib.suppress(OSError):
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as probe:
                probe.sendall(b"PING\r\n")
                if probe.recv(16).startswith(b"+PONG"):
                    return
        time.sleep(0.05)
    raise RuntimeError(f"redis did not start: {log_path.read_text()[-2000:]}")


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait(timeout=30)


class SentinelGroup:
    """A master, its replica and three sentinels (quorum 2, a master is down after 1 s unanswered)."""

    SERVICE = "ha-r14"

    def __init__(self) -> None:
        self.master = RedisNode()
        self.replica = RedisNode("--replicaof", "127.0.0.1", str(self.master.port))
        self.root = Path(tempfile.mkdtemp(prefix="ha-sentinel-"))
        self.ports = [free_tcp_port() for _ in range(3)]
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        for n, port in enumerate(self.ports):
            conf = self.root / f"sentinel-{n}.conf"  # sentinels rewrite their file: one each, writable
            conf.write_text("\n".join([
                f"port {port}", "bind 127.0.0.1", "protected-mode no", f"dir {self.root}",
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 2",
                f"sentinel down-after-milliseconds {self.SERVICE} 1000",
                f"sentinel failover-timeout {self.SERVICE} 10000",
                f"sentinel parallel-syncs {self.SERVICE} 1", "",
            ]))
            self.processes.append(_spawn([REDIS_SENTINEL, str(conf)], self.root / f"sentinel-{n}.log"))
            _wait_ping(port, self.processes[-1], self.root / f"sentinel-{n}.log")

    async def master_port(self) -> int:
        """The master's port as the sentinels name it now."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.ports[0])
        try:
            writer.write(f"SENTINEL get-master-addr-by-name {self.SERVICE}\r\n".encode())
            lines = (await asyncio.wait_for(reader.read(256), 5)).decode().split("\r\n")
        finally:
            writer.close()
        return int(lines[4])  # *2, $len, host, $len, port

    def destroy(self) -> None:
        for process in self.processes:
            _stop(process)
        self.master.destroy()
        self.replica.destroy()
        shutil.rmtree(self.root, ignore_errors=True)


class HAProxy:
    """deploy/haproxy/haproxy.cfg in front of ``backends`` (``host:port`` each)."""

    def __init__(self, backends: list[str]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ha-haproxy-"))
        self.port = free_tcp_port()
        self.backends = backends
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "haproxy.log"
        self.stats_socket = self.root / "stats.sock"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "GATEWAY_LB_BIND": f"127.0.0.1:{self.port}", "HAPROXY_STATS_SOCKET": str(self.stats_socket),
               **{f"GATEWAY_{n + 1}": address for n, address in enumerate(self.backends)}}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([HAPROXY, "-db", "-f", str(HAPROXY_CONFIG)], env=env, stdout=log,
                                            stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()[-2000:]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"haproxy did not start: {self.log_path.read_text()[-2000:]}")

    def server_states(self) -> dict[str, str]:
        """Each backend server's state (UP, DOWN, ...) from the stats socket."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        states = {}
        for line in data.decode().splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[0] == "gateways" and fields[1] not in ("BACKEND", "FRONTEND"):
                states[fields[1]] = fields[17]
        return states

    def destroy(self) -> None:
        _stop(self.process)
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Bank:
    """Gateways on a private primary, one merchant and holders, and the bank client's checks."""

    pg: PostgresCluster
    gateways: list[GatewayProcess]
    session: aiohttp.ClientSession
    shops: list[Shop]
    holders: list[Holder]
    workdir: Path

    @classmethod
    async def start(cls, cleanup: bank.Cleanup, session: aiohttp.ClientSession, pg: PostgresCluster, redis_url: str,
                    count: int, env: dict[str, str] | None = None, holders: int = 4) -> Bank:
        workdir = Path(tempfile.mkdtemp(prefix="ha-bank-"))
        cleanup.push(lambda: shutil.rmtree(workdir, ignore_errors=True))
        overrides = {"GATEWAY_DATABASE_POOL_MAX": "6", "GATEWAY_WORKERS_INTERVAL_S": "1.0", **(env or {})}
        gateways = []
        for index in range(count):
            log_path = (canary.log_path(f"ha-r14-{os.getpid()}-{index}.log") if canary.active()
                        else workdir / f"gateway-{index}.log")
            gateway = GatewayProcess(free_tcp_port(), DATABASE, overrides, db_url=pg.url(DATABASE),
                                     redis_url=redis_url, log_path=log_path)
            gateways.append(gateway)
            cleanup.push(functools.partial(bank._kill_gateway, gateway))
        await gateways[0].cli("migrate", timeout_s=60)
        await gateways[0].cli("create-operator", "--email", OPERATOR_EMAIL, stdin=OPERATOR_PASSWORD + "\n",
                              timeout_s=60)
        await asyncio.gather(*(g.start(timeout_s=30) for g in gateways))
        api = Api(session, gateways[0].url)
        shop = await Shop.create(api)
        wallets = [await shop.holder(top_up=TOP_UP_MINOR) for _ in range(holders)]
        return cls(pg, gateways, session, [shop], wallets, workdir)

    async def run(self, urls: list[str], duration_s: float, during: Callable[[BankClient], Awaitable[None]] | None = None,
                  workers: int = 6, seed: int = 14) -> tuple[list[Op], list[str], Stats]:
        """Payments (create, pay, some refunds) through ``urls`` for ``duration_s`` while ``during(client)`` runs (the faults); then
        every op journaled so far (each run its own ``seed``, so its own keys) and the checker's anomalies, and what the client saw of each attempt (lost or doubled payments, refunds, balances, events,
        idempotency, ledger invariants, calls that never got a definite answer)."""
        journal = Journal(self.workdir / "journal.sqlite3")
        try:
            client = BankClient(urls, self.session, journal, self.shops, self.holders, seed=seed, t0=time.monotonic())
            load = asyncio.create_task(client.run(workers, duration_s, duration_s + 20))
            if during is not None:
                await during(client)
            await asyncio.wait_for(load, duration_s + 60)
            if client.unresolved:
                await client.drain(client.now_s() + 20)
            await client.settle_late()
        finally:
            journal.close()
        reader = Journal(self.workdir / "journal.sqlite3")
        ops = reader.load()
        reader.close()
        snap = await bank._snapshot(self.pg.url(DATABASE))
        world = checker.World([bank._merchant_id(s.merchant) for s in self.shops],
                              await bank._holder_ids(self.pg.url(DATABASE), self.holders), TOP_UP_MINOR)
        anomalies = [*checker.check_payments(ops, snap, world), *checker.check_refunds(ops, snap),
                     *checker.check_balances(ops, snap, world), *checker.check_events(snap),
                     *checker.check_idempotency(ops, snap), *checker.check_invariants(snap),
                     *checker.check_liveness(ops)]
        return ops, anomalies, client.stats


def paid(ops: list[Op]) -> int:
    return sum(1 for op in ops if op.kind == "pay" and op.answer is not None and op.answer.status == 200)
