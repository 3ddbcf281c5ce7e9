"""Real processes for end-to-end tests: the gateway, the POS agent, the wallet phone.

- ``GatewayProcess``: ``gateway serve`` on a free port against its own fresh database (migrated,
  with an operator), restartable on the same port and database (outage tests), dropped at the end.
- ``Api``: the public HTTP API as an operator, merchant or wallet holder would use it.
- ``AgentProcess``: ``python -m pos_agent run --config FILE``; its JSON log lines are collected so a
  test can wait for one (``wait_log``).
- ``PhoneProcess``: ``python -m hardware.sim.phone`` with the keys from the gateway's wallet
  provisioning endpoint (key passed on stdin, never on the command line).
- ``Register``: an unmodified pyTeliumManager register in a thread, on one end of a pty null modem.

Every wait is bounded; every process is stopped (SIGTERM, then SIGKILL) by its owner. In a test
session every process's output is kept in a file of the secret canary's directory (``tests/canary.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from tests import canary
from tests.conftest import SMS_HOOK_SECRET, sms_gateway

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("E2E_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("E2E_REDIS_URL", "redis://127.0.0.1:6379/14")
OPERATOR_EMAIL = "ops@example.com"
OPERATOR_PASSWORD = "correct horse battery"
STOP_TIMEOUT_S = 5.0


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", 0))  # nfcpy's listener binds 0.0.0.0:PORT
        port: int = probe.getsockname()[1]
        return port


async def stop_process(process: asyncio.subprocess.Process, *, sig: int = signal.SIGTERM) -> int:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode


class GatewayProcess:
    """One ``gateway serve`` (its master and serving processes). By default against the machine's
    PostgreSQL and Redis; the fault harness passes its private cluster's URLs, extra ``GATEWAY_*``
    settings and its own log file."""

    def __init__(self, port: int, database: str, extra_env: dict[str, str] | None = None, *,
                 db_url: str | None = None, redis_url: str = REDIS_URL, log_path: Path | None = None) -> None:
        self.extra_env = extra_env or {}
        self.port = port
        self.database = database
        self.db_url = db_url or f"postgresql://postgres@127.0.0.1:5432/{database}"
        self.redis_url = redis_url
        self.url = f"http://127.0.0.1:{port}"
        self.process: asyncio.subprocess.Process | None = None
        self.log_path = log_path or canary.log_path(f"e2e-gateway-{database}.log")

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "GATEWAY_DATABASE_URL": self.db_url,
            "GATEWAY_REDIS_URL": self.redis_url,
            "GATEWAY_SERVER_PORT": str(self.port),
            "GATEWAY_SERVER_PUBLIC_URL": self.url,
            "GATEWAY_DATABASE_POOL_MIN": "1",
            "GATEWAY_DATABASE_POOL_MAX": "4",
            "GATEWAY_THROTTLE_ADDRESS_EXEMPT": "127.0.0.1,::1",  # every test client signs in from loopback
            # Sign-in codes go to the suite's SMS gateway simulator (tests.conftest), read by Shop.answer.
            "GATEWAY_SIGN_IN_SMS_HOOK_URL": sms_gateway().url,
            "GATEWAY_SIGN_IN_SMS_HOOK_SECRET": SMS_HOOK_SECRET,
            **self.extra_env,
        }

    @classmethod
    async def create(cls, extra_env: dict[str, str] | None = None) -> GatewayProcess:
        gateway = cls(free_tcp_port(), f"gateway_e2e_{os.getpid()}_{uuid.uuid4().hex[:8]}", extra_env)
        await gateway.cli("migrate")
        await gateway.cli("create-operator", "--email", OPERATOR_EMAIL, stdin=OPERATOR_PASSWORD + "\n")
        await gateway.start()
        return gateway

    async def cli(self, *args: str, stdin: str | None = None, timeout_s: float = 20.0) -> str:
        process = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "gateway"), *args, env=self.env, cwd=REPO_ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), timeout_s)
        finally:
            await stop_process(process, sig=signal.SIGKILL)
        with self.log_path.open("ab") as log_file:
            log_file.write(out)
        assert process.returncode == 0, (args, out.decode())
        return out.decode()

    async def start(self, *, timeout_s: float = 15.0) -> None:
        assert self.process is None or self.process.returncode is not None
        log_file = self.log_path.open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                str(VENV_BIN / "gateway"), "serve", "--port", str(self.port), env=self.env, cwd=REPO_ROOT,
                stdout=log_file, stderr=log_file)
        finally:
            log_file.close()
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.process.returncode is None, self.log_path.read_text()[-3000:]
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.url}/healthz", timeout=aiohttp.ClientTimeout(total=1)) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise AssertionError(f"gateway did not become healthy: {self.log_path.read_text()[-3000:]}")

    def pids(self) -> list[int]:
        """The master first, then its serving processes."""
        assert self.process is not None
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.process.pid:
                    children.append(int(stat.parent.name))
        return [self.process.pid, *children]

    def stall(self) -> None:
        """SIGSTOP every process: the master first, so that it restarts none."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the serving processes first: they beat their heartbeat before the master looks at it."""
        master, *serving = self.pids()
        for pid in [*serving, master]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    async def kill(self) -> None:
        """kill -9 of the master (its serving processes die with it): an outage, not a shutdown."""
        assert self.process is not None
        await stop_process(self.process, sig=signal.SIGKILL)
        # The kernel kills the serving processes as the master dies; wait until the last one has
        # let go of the socket, so that a restart on this port finds it free.
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
            except OSError:
                return
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.process is not None:
            await stop_process(self.process)

    async def drop(self) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            await conn.close()
        if canary.active() is None:
            with contextlib.suppress(FileNotFoundError):
                self.log_path.unlink()


class ApiError(AssertionError):
    pass


@dataclass
class Api:
    session: aiohttp.ClientSession
    base_url: str

    async def call(self, method: str, path: str, token: str | None = None, expect: int | tuple[int, ...] = 200,
                   **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with self.session.request(method, self.base_url + path, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=10), **kwargs) as resp:
            body = await resp.json(content_type=None)
            expected = (expect,) if isinstance(expect, int) else expect
            if resp.status not in expected:
                raise ApiError(f"{method} {path}: {resp.status} {body}")
            return body


@dataclass
class Holder:
    token: str
    phone: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Shop:
    """An operator, a merchant with a store and a terminal, as the gateway's public API builds them."""

    api: Api
    operator: str
    merchant: str
    secret: str
    store: str
    terminal: str

    @classmethod
    async def create(cls, api: Api, name: str = "好面馆 Best Noodles") -> Shop:
        operator = (await api.call("POST", "/v1/operator/sessions", expect=201,
                                   json={"email": OPERATOR_EMAIL, "password": OPERATOR_PASSWORD}))["token"]
        merchant = await api.call("POST", "/v1/merchants", operator, 201,
                                  json={"name": "Best Noodles", "mcc": "5812", "country": "CN", "city": "Beijing"})
        store = await api.call("POST", f"/v1/merchants/{merchant['id']}/stores", operator, 201,
                               json={"name": "Main street", "city": "Beijing"})
        secret = await api.call("POST", f"/v1/merchants/{merchant['id']}/api_keys", operator, 201,
                                json={"kind": "secret"})
        terminal = await api.call("POST", f"/v1/merchants/{merchant['id']}/terminals", operator, 201,
                                  json={"store": store["id"], "label": "Counter 1"})
        return cls(api, operator, merchant["id"], secret["secret"], store["id"], terminal["id"])

    async def enrolment_code(self) -> str:
        body = await self.api.call("POST", f"/v1/terminals/{self.terminal}/enrolment_codes", self.secret, 201,
                                   json={})
        code: str = body["code"]
        return code

    async def answer(self, phone: str, challenge: dict[str, Any]) -> str:
        """The code the challenge sent to the phone, read from the SMS gateway simulator, exchanged for a token."""
        code = await sms_gateway().code(phone, challenge["id"])
        verified = await self.api.call("POST", f"/v1/wallet/challenges/{challenge['id']}/verify", expect=201,
                                       json={"code": code})
        return str(verified["token"])

    async def sign_in(self, phone: str, device_id: str) -> str:
        """Log in on a device, answering the code challenge when the device is new to the holder."""
        answer = await self.api.call("POST", "/v1/wallet/sessions", expect=(201, 202), json={
            "phone": phone, "password": "s3cret-pass", "device_id": device_id})
        return str(answer["token"]) if answer["object"] == "token" else await self.answer(phone, answer)

    async def holder(self, top_up: int) -> Holder:
        phone = f"+86138{uuid.uuid4().int % 10**8:08d}"
        registered = await self.api.call("POST", "/v1/wallet/holders", expect=201, json={
            "phone": phone, "password": "s3cret-pass", "device_id": f"phone-{uuid.uuid4().hex[:8]}"})
        token = await self.answer(phone, registered["challenge"])
        bank = await self.api.call("POST", "/v1/wallet/bank_accounts", token, 201,
                                   json={"bank_name": "ICBC", "account_number": "6222020200112233445"})
        if top_up:
            await self.api.call("POST", "/v1/wallet/top_ups", token, 201,
                                json={"bank_account": bank["id"], "amount": top_up, "currency": "CNY"})
        return Holder(token, phone)

    async def available(self, holder: Holder) -> int:
        wallet = await self.api.call("GET", "/v1/wallet", holder.token)
        return next((b["available"] for b in wallet["balances"] if b["currency"] == "CNY"), 0)

    async def payments(self, reference_prefix: str) -> list[dict[str, Any]]:
        """The merchant's payments whose reference starts with ``reference_prefix`` (newest first)."""
        body = await self.api.call("GET", "/v1/payments", self.secret, params={"limit": "100"})
        return [p for p in body["data"] if (p.get("merchant_reference") or "").startswith(reference_prefix)]


class AgentProcess:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.process: asyncio.subprocess.Process | None = None
        self.logs: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    async def cli(self, *args: str, timeout_s: float = 20.0) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pos_agent", *args, "--config", str(self.config_path), cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout_s)
        finally:
            await stop_process(process, sig=signal.SIGKILL)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    async def status(self) -> dict[str, int]:
        """The journal's counts from ``pos-agent status --json`` (exit 1 when a check fails: gateway down)."""
        code, out, err = await self.cli("status", "--json")
        assert code in (0, 1), err
        counts: dict[str, int] = json.loads(out)["journal"]
        return counts

    async def start(self) -> None:
        first_new = len(self.logs)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pos_agent", "run", "--config", str(self.config_path), cwd=REPO_ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read_logs(self.process))
        await self.wait_log(lambda e: e.get("msg") == "agent ready", timeout_s=15, after=first_new)

    async def _read_logs(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        with canary.log_path(f"e2e-agent-{process.pid}.log").open("ab") as log_file:
            while line := await process.stderr.readline():
                log_file.write(line)
                try:
                    entry = json.loads(line)
                except ValueError:
                    entry = {"msg": line.decode(errors="replace").rstrip(), "level": "RAW"}
                async with self._changed:
                    self.logs.append(entry)
                    self._changed.notify_all()

    async def wait_log(self, match: Callable[[dict[str, Any]], bool], *, timeout_s: float = 10.0,
                       after: int = 0) -> dict[str, Any]:
        """The first log entry (from index ``after``) that ``match`` accepts."""
        def found() -> dict[str, Any] | None:
            return next((e for e in self.logs[after:] if match(e)), None)

        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: found() is not None or (
                    self.process is not None and self.process.returncode is not None))
        except TimeoutError:
            raise AssertionError(f"no matching agent log within {timeout_s} s; last: {self.logs[-8:]}") from None
        entry = found()
        assert entry is not None, f"agent exited: {self.logs[-8:]}"
        return entry

    def messages(self) -> list[str]:
        return [str(e.get("msg")) for e in self.logs]

    def send_signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def stop(self, *, sig: int = signal.SIGTERM) -> int:
        code = 0
        if self.process is not None:
            code = await stop_process(self.process, sig=sig)
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=STOP_TIMEOUT_S)
        return code


class PhoneProcess:
    """``python -m hardware.sim.phone`` provisioned by the gateway; ``atc`` follows its taps."""

    def __init__(self, port: int, provisioning: dict[str, Any]) -> None:
        self.port = port
        self.provisioning = provisioning
        self.atc = int(provisioning["atc"])
        self.process: asyncio.subprocess.Process | None = None
        self.tap_times: list[float] = []
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self.log_path = canary.log_path(f"e2e-phone-{port}.log")

    async def start(self) -> None:
        p = self.provisioning
        with self.log_path.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "hardware.sim.phone", "--port", str(self.port), "--host", "127.0.0.1",
                "--pan", p["token_pan"], "--psn", str(p["psn"]), "--icc-mk-hex", "-", "--atc-start", str(self.atc),
                "--expiry", p["expiry_yymm"], cwd=REPO_ROOT,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log_file)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(p["icc_master_key"].encode() + b"\n")
        await asyncio.wait_for(self.process.stdin.drain(), 2)
        ready = await asyncio.wait_for(self.process.stdout.readline(), 10)
        assert ready.startswith(b"phone: ready"), ready
        self._reader = asyncio.create_task(self._read(self.process, ready))

    async def _read(self, process: asyncio.subprocess.Process, first: bytes) -> None:
        assert process.stdout is not None
        with self.log_path.open("ab") as log_file:
            log_file.write(first)
            while line := await process.stdout.readline():
                log_file.write(line)
                await self._follow(line.decode())

    async def _follow(self, text: str) -> None:
        if text.startswith("phone: tap atc="):
            async with self._changed:
                self.atc = int(text.split("=", 1)[1])
                self.tap_times.append(time.monotonic())
                self._changed.notify_all()

    async def wait_taps(self, count: int, timeout_s: float = 10) -> None:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: len(self.tap_times) >= count)

    async def stop(self, *, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            await stop_process(self.process, sig=sig)
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=STOP_TIMEOUT_S)
            self._reader = None


def register_payment(path: str, amount: float, *, waiting_timeout_s: float) -> Any:
    """One sale from an unmodified pyTeliumManager register (blocking: run it in a thread)."""
    from telium import Telium, TeliumAsk  # type: ignore[import-untyped]

    ask = TeliumAsk.new_payment(amount, target_currency="CNY", collect_payment_source_info=True)
    device = Telium(path, timeout=3)
    try:
        assert device.ask(ask), "the agent did not acknowledge the request"
        return device.verify(ask, waiting_timeout=waiting_timeout_s)
    finally:
        device.close()


def register_refund(path: str, amount: float, sale_number: str, *, waiting_timeout_s: float) -> Any:
    """A refund (Concert credit) of ``amount`` of the sale the agent answered with ``sale_number``
    (its private data), from an unmodified pyTeliumManager register (blocking: run it in a thread)."""
    from telium import Telium, TeliumAsk

    ask = TeliumAsk.new_payment(amount, payment_mode="credit", target_currency="CNY", collect_payment_source_info=True)
    ask._private = sale_number.ljust(10)  # the library leaves the request's private data blank
    device = Telium(path, timeout=3)
    try:
        assert device.ask(ask), "the agent did not acknowledge the request"
        return device.verify(ask, waiting_timeout=waiting_timeout_s)
    finally:
        device.close()


def agent_config(tmp: Path, *, gateway_url: str, register: str, nfc_port: int | None, scanner: str | None,
                 display: str | None, printer: str | None, print_qr_slip: bool = False, **sale: Any) -> Path:
    sale_settings = {"sale_timeout_s": 15.0, "status_poll_interval_s": 0.3, "qr_ttl_s": 120,
                     "resolve_query_interval_s": 0.3, "cleanup_timeout_s": 5.0, **sale}
    lines = [
        "[agent]", 'name = "e2e counter"', 'terminal_label = "E2E"', 'merchant_name = "好面馆 Best Noodles"',
        'log_level = "INFO"',
        "[gateway]", f'url = "{gateway_url}"', 'credentials_path = "credentials.json"', "connect_timeout_s = 1.0",
        "request_timeout_s = 4.0", "retry_count_max = 3", "backoff_base_s = 0.05", "backoff_max_s = 0.2",
        "heartbeat_interval_s = 0.5",
        "[sale]", *(f"{key} = {value!r}" for key, value in sale_settings.items()),
        "[offline]", "tap_amount_max_minor = 20000", "token_count_max = 2", "token_amount_max_minor = 30000",
        "[forwarder]", "interval_s = 0.5", "backoff_max_s = 1.0",
        "[journal]", 'path = "journal.sqlite3"',
        "[devices.register]", f'url = "{register}"', "handshake_step_s = 1.0", "result_s = 20.0",
    ]
    if nfc_port is not None:
        lines += ["[devices.nfc]", f'path = "udp:127.0.0.1:{nfc_port}"']
    if scanner:
        lines += ["[devices.scanner]", f'url = "{scanner}"']
    if display:
        lines += ["[devices.display]", f'url = "{display}"']
    if printer:
        lines += ["[devices.printer]", f'url = "{printer}"', f"print_qr_slip = {str(print_qr_slip).lower()}"]
    path = tmp / "agent.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

