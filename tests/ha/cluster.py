"""A high-availability PostgreSQL cluster of its own, built from nothing on this machine: one etcd
member and N Patroni-managed PostgreSQL 15 nodes (synchronous replication), each node its own
data directory, PostgreSQL port and REST port under one temporary directory, all on 127.0.0.1.

Each node's Patroni configuration is deploy/patroni/node.yml rendered with that node's fields, so
the test runs the configuration a deployment uses. Processes run as the ``postgres`` OS user when
we are root (PostgreSQL refuses root).

Invariants: every wait is bounded; ``destroy`` SIGKILLs every process it started (Patroni,
the postmasters they started, etcd), whatever state they are in, and removes the directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

from tests.e2e.harness import free_tcp_port
from tests.fault.cluster import PG_BIN, _as_postgres, _children

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_TEMPLATE = REPO_ROOT / "deploy" / "patroni" / "node.yml"
PATRONI = os.environ.get("HA_PATRONI", shutil.which("patroni") or "/usr/bin/patroni")
ETCD = os.environ.get("HA_ETCD", shutil.which("etcd") or "/usr/bin/etcd")
HOST = "127.0.0.1"
# Short timings for a test on one machine: a dead leader's lock expires after TTL seconds.
TTL_S = 10
LOOP_WAIT_S = 1
RETRY_TIMEOUT_S = 4
READY_TIMEOUT_S = 90.0


def missing_binaries() -> list[str]:
    """What this machine lacks to build the cluster (empty: it can)."""
    return [str(path) for path in (PATRONI, ETCD, str(PG_BIN / "postgres"), str(PG_BIN / "pg_rewind"))
            if not Path(path).is_file()]


def _get_json(url: str, timeout_s: float = 2.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - loopback REST API
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:  # Patroni answers 503 for "not the primary" with a body
        return exc.code, json.loads(exc.read() or b"null")


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a node: Patroni, its postmaster, the backends)."""
    pending = [pid]
    found: list[int] = []
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(_children(current))
    return found


def _kill(pids: list[int]) -> None:
    """SIGKILL them all in one go (collected beforehand: nothing gets to react in between)."""
    for each in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGCONT)
            os.kill(each, signal.SIGKILL)


@dataclass
class Node:
    name: str
    root: Path
    pg_port: int
    rest_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def config_path(self) -> Path:
        return self.root / "patroni.yml"

    @property
    def log_path(self) -> Path:
        return self.root / "patroni.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().split()[0])
        return None

    def status(self) -> dict[str, Any] | None:
        """Patroni's own view of this node (role, state, timeline), None if its REST API is down."""
        with contextlib.suppress(OSError, ValueError):
            _, body = _get_json(f"http://{HOST}:{self.rest_port}/patroni")
            return body if isinstance(body, dict) else None
        return None


@dataclass
class HACluster:
    size: int = 3
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ha-pg-")))
    nodes: list[Node] = field(default_factory=list)
    etcd: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o700)
        self.etcd_port, self.etcd_peer_port = free_tcp_port(), free_tcp_port()
        for index in range(self.size):
            node_root = self.root / f"node{index}"
            node_root.mkdir()
            if os.geteuid() == 0:
                os.chown(node_root, pwd.getpwnam("postgres").pw_uid, pwd.getpwnam("postgres").pw_gid)
            node_root.chmod(0o700)
            self.nodes.append(Node(f"node{index}", node_root, free_tcp_port(), free_tcp_port()))

    def url(self, database: str) -> str:
        """libpq's failover list: the client tries each host and keeps the one that accepts writes."""
        hosts = ",".join(f"{HOST}:{node.pg_port}" for node in self.nodes)
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"

    def node_url(self, node: Node, database: str) -> str:
        return f"postgresql://postgres@{HOST}:{node.pg_port}/{database}"

    def _popen(self, args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            return subprocess.Popen([*_as_postgres(), *args], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                    cwd=self.root, start_new_session=True)

    def render(self, node: Node) -> str:
        return Template(NODE_TEMPLATE.read_text(encoding="utf-8")).substitute(
            NAME=node.name, HOST=HOST, REST_PORT=node.rest_port, PG_PORT=node.pg_port,
            ETCD_HOSTS=f"{HOST}:{self.etcd_port}", TTL=TTL_S, LOOP_WAIT=LOOP_WAIT_S, RETRY_TIMEOUT=RETRY_TIMEOUT_S,
            REPLICATION_USER="replicator", AUTH_METHOD="trust", DATA_DIR=node.data, BIN_DIR=PG_BIN,
            RUN_DIR=node.root)

    def start_etcd(self) -> None:
        data = self.root / "etcd"
        self.etcd = self._popen([
            ETCD, "--name", "etcd0", "--data-dir", str(data),
            "--listen-client-urls", f"http://{HOST}:{self.etcd_port}",
            "--advertise-client-urls", f"http://{HOST}:{self.etcd_port}",
            "--listen-peer-urls", f"http://{HOST}:{self.etcd_peer_port}",
            "--initial-advertise-peer-urls", f"http://{HOST}:{self.etcd_peer_port}",
            "--initial-cluster", f"etcd0=http://{HOST}:{self.etcd_peer_port}",
            "--listen-metrics-urls", f"http://{HOST}:{free_tcp_port()}",
        ], self.root / "etcd.log")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.etcd.poll() is None, (self.root / "etcd.log").read_text()[-2000:]
            with contextlib.suppress(OSError, ValueError):
                if _get_json(f"http://{HOST}:{self.etcd_port}/health")[1].get("health") == "true":
                    return
            time.sleep(0.1)
        raise RuntimeError(f"etcd did not start: {(self.root / 'etcd.log').read_text()[-2000:]}")

    def start_node(self, node: Node) -> None:
        assert not node.running
        node.config_path.write_text(self.render(node), encoding="utf-8")
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(node.config_path, user.pw_uid, user.pw_gid)
        node.process = self._popen([PATRONI, str(node.config_path)], node.log_path)

    def start(self) -> None:
        """etcd, then the first node (it bootstraps the cluster), then the others (they clone it)."""
        self.start_etcd()
        self.start_node(self.nodes[0])
        self.wait_for(lambda: self.leader() is self.nodes[0], "the first node to become the primary")
        for node in self.nodes[1:]:
            self.start_node(node)
        self.wait_healthy()

    def leader(self) -> Node | None:
        """The node that is a running, writable primary (Patroni's /primary answers 200 there)."""
        for node in self.nodes:
            if node.running:
                with contextlib.suppress(OSError, ValueError):
                    if _get_json(f"http://{HOST}:{node.rest_port}/primary")[0] == 200:
                        return node
        return None

    def members(self) -> list[dict[str, Any]]:
        """The cluster as Patroni reports it (name, role, state, lag) from any node that answers."""
        for node in self.nodes:
            if node.running:
                with contextlib.suppress(OSError, ValueError):
                    status, body = _get_json(f"http://{HOST}:{node.rest_port}/cluster")
                    if status == 200:
                        return list(body.get("members", []))
        return []

    def wait_for(self, condition: Any, what: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}; members: {self.members()}; "
                           f"logs: {self.tails()}")

    def wait_healthy(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Every running node streaming from one primary, one of them the synchronous standby."""
        def healthy() -> bool:
            members = self.members()
            running = sum(1 for node in self.nodes if node.running)
            roles = [m.get("role") for m in members if m.get("state") in ("running", "streaming")]
            return (len(roles) == running and roles.count("leader") == 1
                    and (running < 2 or "sync_standby" in roles))
        self.wait_for(healthy, "every node up with a synchronous standby", timeout_s)

    def switchover(self, node: Node) -> None:
        """A planned handover (maintenance): Patroni demotes ``node`` and promotes its synchronous standby."""
        candidate = next(m["name"] for m in self.members() if m.get("role") == "sync_standby")
        request = urllib.request.Request(
            f"http://{HOST}:{node.rest_port}/switchover", method="POST",
            data=json.dumps({"leader": node.name, "candidate": candidate}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as resp:  # noqa: S310 - loopback REST API
            assert resp.status == 200, resp.read()

    def kill_postmaster(self, node: Node) -> int:
        """SIGKILL the node's postmaster only (Patroni lives on and sees it gone)."""
        pid = node.postmaster_pid()
        assert pid is not None, f"{node.name} has no postmaster"
        os.kill(pid, signal.SIGKILL)
        return pid

    def kill_node(self, node: Node) -> None:
        """The whole host dies: Patroni, its postmaster and every backend, SIGKILLed together."""
        roots = [p for p in (node.process.pid if node.process else None, node.postmaster_pid()) if p is not None]
        _kill([pid for root in roots for pid in _tree(root)])
        if node.process is not None:
            node.process.wait(timeout=30)

    def tails(self, chars: int = 1500) -> dict[str, str]:
        found: dict[str, str] = {}
        for path in [self.root / "etcd.log", *(n.log_path for n in self.nodes)]:
            with contextlib.suppress(OSError):
                found[path.parent.name + "/" + path.name] = path.read_text(errors="replace")[-chars:]
        return found

    def destroy(self) -> None:
        for node in self.nodes:
            for pid in (node.process.pid if node.process else None, node.postmaster_pid()):
                if pid is not None:
                    _kill(_tree(pid))
            if node.process is not None:
                with contextlib.suppress(Exception):
                    node.process.wait(timeout=10)
        if self.etcd is not None:
            _kill(_tree(self.etcd.pid))
            with contextlib.suppress(Exception):
                self.etcd.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)
