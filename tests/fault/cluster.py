"""Private servers for the fault harness: a PostgreSQL cluster and a Redis server of its own.

- ``PostgresCluster``: ``initdb`` into a temporary directory on a free port (as the ``postgres``
  OS user when we run as root: PostgreSQL refuses to run as root), fsync on, trust auth on
  127.0.0.1 only; it can be stopped in immediate mode (a crash: no checkpoint, WAL replay at the
  next start), started again, and paused (SIGSTOP of the postmaster and every backend).
- ``RedisServer``: ``redis-server`` on a free port, no persistence; killable, pausable, restartable
  on the same port.

Invariants: every command has a timeout; ``destroy`` stops whatever still runs (resuming paused
processes first, so they can die) and removes the temporary directory, whatever state it is in.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.e2e.harness import free_tcp_port

PG_BIN = Path(os.environ.get("FAULT_PG_BIN", "/usr/lib/postgresql/15/bin"))
REDIS_SERVER = os.environ.get("FAULT_REDIS_SERVER", shutil.which("redis-server") or "/usr/bin/redis-server")
COMMAND_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 30.0


def _as_postgres() -> list[str]:
    """The prefix that runs a command as the ``postgres`` OS user when we are root."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (PostgreSQL backends are children of the postmaster)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            # pid (comm) state ppid ...: comm may contain spaces, so split after the last ')'.
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found.append(int(entry.name))
    return found


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class PostgresCluster:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fault-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.port = free_tcp_port()
        self.paused: list[int] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o700)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout_s: float = COMMAND_TIMEOUT_S) -> str:
        done = subprocess.run([*_as_postgres(), *args], capture_output=True, text=True, timeout=timeout_s,
                              cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stdout}{done.stderr}")
        return done.stdout

    def init(self) -> None:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--locale=C.UTF-8")
        conf = self.data / "postgresql.conf"
        with conf.open("a", encoding="utf-8") as out:
            out.write("\n".join([
                "", f"port = {self.port}", "listen_addresses = '127.0.0.1'",
                f"unix_socket_directories = '{self.root}'", "fsync = on", "synchronous_commit = on",
                "max_connections = 100", "shared_buffers = 32MB", "autovacuum = on", "",
            ]))

    def start(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-w",
                  "-t", str(int(READY_TIMEOUT_S)), "start")

    def stop_immediate(self) -> None:
        """A crash of the database server: no shutdown checkpoint, every connection cut."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().split()[0])
        return None

    def pause(self) -> None:
        """SIGSTOP the postmaster first (no new backends), then every process it started."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        _signal([pid], signal.SIGSTOP)
        self.paused = [pid, *_children(pid)]
        _signal(self.paused[1:], signal.SIGSTOP)

    def resume(self) -> None:
        _signal(list(reversed(self.paused)), signal.SIGCONT)
        self.paused = []

    def destroy(self) -> None:
        self.resume()
        pid = self.postmaster_pid()
        if pid is not None:
            with contextlib.suppress(Exception):
                self.stop_immediate()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


class RedisServer:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fault-redis-"))
        self.port = free_tcp_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.root), "--protected-mode", "no"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()[-2000:]
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(16).startswith(b"+PONG"):
                        return
            time.sleep(0.05)
        raise RuntimeError(f"redis did not start: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=COMMAND_TIMEOUT_S)

    def pause(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
