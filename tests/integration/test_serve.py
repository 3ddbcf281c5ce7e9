"""``gateway serve`` as an operator runs it: real processes on free ports, real signals, real PostgreSQL.

Every wait is bounded; every process group started here is SIGKILLed at the end whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from gateway.store import db
from tests.e2e.harness import free_tcp_port

WAIT_S = 15.0
PG = "postgresql://postgres@127.0.0.1:5432"


def _env(url: str, port: int, **settings: str) -> dict[str, str]:
    return {**os.environ, "GATEWAY_DATABASE_URL": url, "GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/15",
            "GATEWAY_SERVER_PORT": str(port), "GATEWAY_DATABASE_POOL_MIN": "1", "GATEWAY_DATABASE_POOL_MAX": "2",
            **{f"GATEWAY_{name.upper()}": value for name, value in settings.items()}}


def _cli(env: dict[str, str], *args: str, stdin: str = "", timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=timeout_s, check=False)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _metric_dirs(pid: int) -> set[Path]:
    """Where a process's multiprocess metric files are (prometheus_client maps them into memory)."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {Path(line.split()[-1]).parent for line in maps if line.endswith(".db") and "/" in line}


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(stat.parent.name))
    return found


async def _until(what: str, check: object, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {what}")


class Serve:
    """One ``gateway serve`` in its own session (so the whole group can be killed at the end)."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.env = env
        self.port = int(env["GATEWAY_SERVER_PORT"])
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", *args], env=env,
                                         stdout=out, stderr=out, start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    async def healthy(self, processes: int) -> set[int]:
        """Wait until ``processes`` serving processes exist and one answers; returns their pids."""
        async with aiohttp.ClientSession() as session:
            async def answers() -> bool:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.url}/healthz", timeout=aiohttp.ClientTimeout(total=1)) as resp:
                        return resp.status == 200
                return False

            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.log.read_text()[-3000:]
                if len(_children(self.proc.pid)) == processes and await answers():
                    return _children(self.proc.pid)
                await asyncio.sleep(0.1)
        raise AssertionError(f"gateway not healthy: {self.log.read_text()[-3000:]}")

    async def exit_code(self, timeout_s: float = WAIT_S) -> int:
        await _until("the master to exit", lambda: self.proc.poll() is not None, timeout_s)
        assert self.proc.returncode is not None
        return self.proc.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=WAIT_S)


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A database of its own (not there yet)."""
    url = f"{PG}/gateway_serve_{uuid.uuid4().hex[:10]}"
    try:
        yield url
    finally:
        await db.drop_database(url)


@pytest.fixture(scope="module")
def shared_database() -> Iterator[str]:
    """One database for the tests that only serve from it (each drop costs PostgreSQL a checkpoint)."""
    url = f"{PG}/gateway_serve_{uuid.uuid4().hex[:10]}"
    try:
        yield url
    finally:
        asyncio.run(db.drop_database(url))


@contextlib.asynccontextmanager
async def serving(env: dict[str, str], log: Path, *args: str) -> AsyncIterator[Serve]:
    gateway = Serve(env, log, *args)
    try:
        yield gateway
    finally:
        gateway.kill()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_drains_the_request_in_flight_then_every_process_exits(
        shared_database: str, tmp_path: Path, stop: signal.Signals) -> None:
    database = shared_database
    email = f"drain-{stop.name.lower()}@example.com"
    env = _env(database, free_tcp_port(), server_shutdown_grace_s="20", database_lock_timeout_s="20",
               database_statement_timeout_s="20", throttle_address_exempt="127.0.0.1")
    made = _cli(env, "create-operator", "--email", email, stdin="a-long-operator-password\n")
    assert made.returncode == 0, made.stderr
    async with serving(env, tmp_path / "serve.log", "--processes", "2") as gateway:
        pids = await gateway.healthy(2)
        started = [line for line in gateway.lines() if line["msg"] == "gateway started"]
        assert len(started) == 1 and started[0]["processes"] == 2 and started[0]["redis"] == "up"
        assert started[0]["database"] == db.address(database) and started[0]["mode"] == "test"

        dirs = [_metric_dirs(pid) for pid in pids]
        assert dirs[0] and all(found == dirs[0] for found in dirs)  # one directory, made by the master, for all
        (metrics_dir,) = dirs[0]

        second = _cli(env, "serve")  # a second gateway on the same port
        assert second.returncode == 2
        assert second.stderr == f"error: port 127.0.0.1:{gateway.port} is taken (server.port / --port)\n"

        holder = await asyncpg.connect(database)
        try:
            lock = holder.transaction()
            await lock.start()
            # The login reads operators: it waits on this lock, in flight, while the gateway is told to stop.
            await holder.execute("LOCK TABLE operators IN ACCESS EXCLUSIVE MODE")
            async with aiohttp.ClientSession() as session:
                login = asyncio.create_task(session.post(
                    f"{gateway.url}/v1/operator/sessions", json={"email": email, "password": "a-long-operator-password"},
                    timeout=aiohttp.ClientTimeout(total=WAIT_S)))
                deadline = time.monotonic() + WAIT_S
                while not await holder.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock'"):
                    assert time.monotonic() < deadline, "the login never waited on the lock"
                    await asyncio.sleep(0.05)
                os.killpg(gateway.proc.pid, stop)  # the whole group, as Ctrl-C in a terminal does
                await asyncio.sleep(1.0)
                assert gateway.proc.poll() is None and not login.done()  # draining, not gone
                await lock.commit()
                resp = await login
                assert resp.status == 201, await resp.text()
                resp.release()
        finally:
            await holder.close()
        assert await gateway.exit_code() == 0
        await _until("every serving process to exit", lambda: not any(_alive(pid) for pid in pids))
        assert [line["msg"] for line in gateway.lines()].count("gateway stopped") == 1
        assert not metrics_dir.exists()


async def test_a_killed_process_comes_back_and_all_die_with_the_master(shared_database: str, tmp_path: Path) -> None:
    env = _env(shared_database, free_tcp_port())
    async with serving(env, tmp_path / "serve.log", "--processes", "2") as gateway:
        first = await gateway.healthy(2)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        await _until("a new serving process", lambda: len(_children(gateway.proc.pid) - first) == 1)
        now = await gateway.healthy(2)
        assert victim not in now
        died = [line for line in gateway.lines() if line["msg"] == "serving process died; starting another"]
        assert [line["worker_pid"] for line in died] == [victim]

        (metrics_dir,) = _metric_dirs(min(now))
        os.kill(gateway.proc.pid, signal.SIGKILL)
        await _until("the serving processes to die with their master", lambda: not any(_alive(p) for p in now), 5)
    # A SIGKILLed master leaves its metrics directory behind; the next serve removes it (this one only
    # gets as far as the port, taken).
    assert metrics_dir.is_dir()
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        _one_error_line(await asyncio.to_thread(_cli, _env(shared_database, other.getsockname()[1]), "serve"))
    assert not metrics_dir.exists()


async def test_processes_that_keep_dying_stop_the_master(shared_database: str, tmp_path: Path) -> None:
    # Out of PostgreSQL's range (INT_MAX ms): only a serving process's pool sends it, and the server refuses
    # every session, so each one dies at start. The master's own connections do not carry it.
    env = _env(shared_database, free_tcp_port(), database_lock_timeout_s="3000000", server_crash_count_max="2",
               server_restart_backoff_max_s="0.2")
    async with serving(env, tmp_path / "serve.log", "--processes", "2") as gateway:
        assert await gateway.exit_code(30) == 1
        messages = [line["msg"] for line in gateway.lines()]
        assert "serving processes keep dying; stopping" in messages and "gateway stopped" in messages
        assert not _children(gateway.proc.pid)


def _cli_on_a_free_port(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``_cli`` on a port free a moment ago; again on another if a parallel test took it meanwhile."""
    for _ in range(5):
        done = _cli({**env, "GATEWAY_SERVER_PORT": str(free_tcp_port())}, *args)
        if "is taken (server.port" not in done.stderr:
            return done
    return done


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert len(errors) == 1 and errors[0].startswith("error: "), done.stderr
    return errors[0]


async def test_an_unreachable_database_is_waited_for_then_named(tmp_path: Path) -> None:
    closed = free_tcp_port()
    url = f"postgresql://postgres:hunter2-secret@127.0.0.1:{closed}/gateway"
    env = _env(url, free_tcp_port(), database_connect_wait_s="1.5")
    started = time.monotonic()
    done = await asyncio.to_thread(_cli, env, "serve")
    assert time.monotonic() - started >= 1.5
    line = _one_error_line(done)
    assert f"127.0.0.1:{closed}" in line and "database.url / GATEWAY_DATABASE_URL" in line
    waiting = [json.loads(x) for x in done.stderr.splitlines() if x.startswith("{")]
    assert [w["msg"].split(" at ")[0] for w in waiting] == ["database unreachable"]
    assert "database.url" in waiting[0]["msg"]
    assert "hunter2" not in done.stderr + done.stdout

    at_once = await asyncio.to_thread(_cli, {**env, "GATEWAY_DATABASE_CONNECT_WAIT_S": "0"}, "migrate")
    assert f"127.0.0.1:{closed}" in _one_error_line(at_once)


async def test_a_missing_settings_file_or_a_bad_setting_is_one_line(tmp_path: Path) -> None:
    env = _env(f"{PG}/gateway", free_tcp_port())
    missing = await asyncio.to_thread(_cli, {**env, "GATEWAY_CONFIG": str(tmp_path / "nope.toml")}, "serve")
    assert "settings file not found" in _one_error_line(missing)
    bad = await asyncio.to_thread(_cli, {**env, "GATEWAY_SERVER_SHUTDOWN_GRACE_S": "soon"}, "serve")
    assert "server.shutdown_grace_s" in _one_error_line(bad)
    negative = await asyncio.to_thread(_cli, {**env, "GATEWAY_SERVER_CRASH_COUNT_MAX": "0"}, "serve")
    assert "server.crash_count_max" in _one_error_line(negative)


async def test_a_database_or_redis_url_the_driver_cannot_read_is_one_line_naming_it(tmp_path: Path) -> None:
    env = _env(f"{PG}/gateway", free_tcp_port(), database_connect_wait_s="1")
    for setting, url in (("GATEWAY_DATABASE_URL", "postgresql://gw:hunter2-secret@127.0.0.1:badport/gateway"),
                         ("GATEWAY_DATABASE_URL", "postgresql://gw:hunter2-secret@127.0.0.1/gateway?sslmode=sometimes"),
                         ("GATEWAY_DATABASE_URL", "mysql://gw:hunter2-secret@127.0.0.1/gateway"),
                         ("GATEWAY_REDIS_URL", "redis://:hunter2-secret@127.0.0.1:99999/0"),
                         ("GATEWAY_REDIS_URL", "http://127.0.0.1:6379/0")):
        done = await asyncio.to_thread(_cli, {**env, setting: url}, "serve")
        line = _one_error_line(done)
        assert setting.removeprefix("GATEWAY_").lower().replace("_", ".", 1) in line, line
        assert "hunter2" not in done.stderr + done.stdout


async def test_migrate_status_pending_and_changed_files(database: str, tmp_path: Path) -> None:
    env = _env(database, free_tcp_port())
    names = [name for _, name, _ in db.migration_files()]
    before = await asyncio.to_thread(_cli, env, "migrate", "--status")
    assert before.returncode == 0 and f"0 applied, {len(names)} pending" in before.stdout

    applied = await asyncio.to_thread(_cli, env, "migrate")
    assert applied.returncode == 0
    logged = [json.loads(x)["migration"] for x in applied.stderr.splitlines() if '"migration applied"' in x]
    assert logged == names

    conn = await asyncpg.connect(database)
    try:
        last_version = db.migration_files()[-1][0]
        await conn.execute("DELETE FROM schema_migrations WHERE version = $1", last_version)
        status = await asyncio.to_thread(_cli, env, "migrate", "--status")
        assert status.returncode == 0, status.stderr
        rows = status.stdout.splitlines()
        assert rows[0].startswith(names[0]) and rows[0].split()[1][:4].isdigit()  # applied, with its time
        assert rows[len(names) - 1].split() == [names[-1], "pending"]
        assert rows[-1] == f"{len(names) - 1} applied, 1 pending"
        refused = await asyncio.to_thread(_cli, env, "serve", "--no-migrate")
        assert "pending" in _one_error_line(refused) and names[-1] in refused.stderr

        # A file changed after it was applied: its recorded SHA-256 no longer matches.
        await conn.execute("UPDATE schema_migrations SET checksum = repeat('0', 64) WHERE version = 1")
        changed = await asyncio.to_thread(_cli, env, "migrate", "--status")
        assert names[0] in _one_error_line(changed) and "CHANGED" in changed.stdout
        refusals = (["migrate"], ["serve"], ["serve", "--no-migrate"])
        answers = await asyncio.gather(*(  # at once, each serve on a port of its own
            asyncio.to_thread(_cli_on_a_free_port, env, *a) for a in refusals))
        for args, done in zip(refusals, answers, strict=True):
            assert "changed after they were applied" in _one_error_line(done), args
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(names) - 1  # nothing applied

        # A table from before checksums were kept: migrate records the current files' checksums.
        await conn.execute("ALTER TABLE schema_migrations DROP COLUMN checksum")
        await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", last_version, names[-1])
        upgraded = await asyncio.to_thread(_cli, env, "migrate")
        assert upgraded.returncode == 0, upgraded.stderr
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations WHERE checksum IS NOT NULL") == len(names)
        assert (await asyncio.to_thread(_cli, env, "migrate", "--status")).stdout.splitlines()[-1] == (
            f"{len(names)} applied, 0 pending")
    finally:
        await conn.close()


def test_version_and_plain_help() -> None:
    env = dict(os.environ)
    version = _cli(env, "--version")
    assert version.returncode == 0 and version.stdout.startswith("gateway ")
    for args in ([], ["serve"], ["migrate"], ["demo"]):
        shown = _cli(env, *args, "--help")
        assert shown.returncode == 0 and "``" not in shown.stdout, shown.stdout
    assert "--no-migrate" in _cli(env, "serve", "--help").stdout


def test_serve_binds_no_port_it_cannot_own() -> None:
    """A port held by another program's socket (not a gateway) is refused just the same."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        done = _cli(_env(f"{PG}/gateway", port), "serve")
    assert _one_error_line(done) == f"error: port 127.0.0.1:{port} is taken (server.port / --port)"
