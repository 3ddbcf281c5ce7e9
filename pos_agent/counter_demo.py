"""A counter sale by NFC tap with every device simulated, narrated device by device.

``run`` (or ``python -m pos_agent.counter_demo``) sets up one checkout counter against a running
gateway and sells once:

1. the merchant's secret key asks for a one-time enrolment code for the terminal, and a fresh
   agent enrols with it (credentials in a temporary folder, removed at the end);
2. ptys stand in for the cables: a null modem to the cash register, one each for the customer
   display, the receipt printer and the barcode scanner; the NFC reader talks nfcpy's udp driver
   on a free loopback port. ``python -m pos_agent run`` is started on that configuration;
3. the wallet holder logs in on a phone (a device id), provisions it for taps and the phone
   simulator (``python -m hardware.sim.phone``, key on stdin) is held to the reader;
4. an unmodified pyTeliumManager register asks the agent for the amount over the null modem, the
   phone taps, and what each device shows is printed as it happens: the display's screens, the
   printed slips, the register's answer, then the payment as the gateway has it.

Invariants:
- Every wait is bounded (``*_S`` constants); the register's own timeouts bound its thread.
- Every process, pty, task and the temporary folder are released on every exit path (one
  ``AsyncExitStack``); a child that ignores SIGTERM is killed.
- Secrets never reach a command line or the output: the merchant key and wallet password come on
  stdin (``-``), the enrolment code is used in-process, the phone's key goes to its stdin.
- A sale that is not approved online (a payment id the gateway confirms as succeeded) is an error:
  ``run`` raises ``CounterDemoError`` and the command exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

import aiohttp
import iso4217

from hardware.nfc.emv import mask_pan
from hardware.sim.display_sim import DisplayScreen
from hardware.sim.printer_sim import PrintedReceipt, PrinterSimulator
from hardware.sim.pty import PtyNullModem, PtyPort, PtyPortClosedError, open_raw_pty
from pos_agent.agent import enrol
from pos_agent.currency import format_amount
from pos_agent.errors import GatewayError
from pos_agent.settings import AgentSettings, GatewaySettings, Settings

__all__ = ["CounterDemoError", "CounterResult", "RegisterAnswer", "main", "run"]

HTTP_TIMEOUT_S: Final = 10.0
AGENT_READY_S: Final = 20.0
PHONE_READY_S: Final = 10.0
CHILD_STOP_S: Final = 15.0
"""The agent's own stop bound: it cancels and compensates a running sale before it exits."""
STDIN_WRITE_S: Final = 2.0
TASK_STOP_S: Final = 2.0
SALE_TIMEOUT_S: Final = 20.0
REGISTER_RESULT_S: Final = 25.0
REGISTER_IO_TIMEOUT_S: Final = 3.0
REGISTER_WAIT_S: Final = 30.0
"""How long the register waits for the answer (longer than the agent's sale)."""
REGISTER_JOIN_S: Final = REGISTER_WAIT_S + 4 * REGISTER_IO_TIMEOUT_S
RECEIPT_WAIT_S: Final = 5.0
SIMULATOR_READ_S: Final = 1.0
KEPT_MAX: Final = 500
TAIL_LINES: Final = 8
QR_SHOWN_CHARS: Final = 32
PHONE_DEVICE_ID: Final = "counter-demo-phone"
TERMINAL_LABEL: Final = "DEMO"
AGENT_NAME: Final = "counter demo agent"
COLUMN: Final = 9
AGENT_NARRATED: Final = (" requested", " reader armed", " -> ", "reversed ")
CURRENCY_EXPONENT: Final = 2
"""pyTeliumManager's register takes amounts as floats with two decimals (Concert carries minor units)."""

T = TypeVar("T")


class CounterDemoError(RuntimeError):
    """A step of the counter sale failed; the message names the step."""


@dataclass(frozen=True, slots=True)
class RegisterAnswer:
    """What pyTeliumManager's register received from the agent."""

    succeeded: bool
    amount_minor: int
    currency_numeric: str
    sale_number: str
    report: str


@dataclass(frozen=True, slots=True)
class CounterResult:
    register: RegisterAnswer
    display_screens: tuple[tuple[str, str], ...]
    """Every screen the customer display showed, in order (20 columns each)."""
    receipt_lines: tuple[str, ...]
    payment_id: str
    payment_status: str
    wallet_available_before_minor: int
    wallet_available_after_minor: int


def say(device: str, text: str, *more: str) -> None:
    print(f"{device:<{COLUMN}} {text}", flush=True)
    for line in more:
        print(f"{'':<{COLUMN}} {line}", flush=True)


class _Feed(Generic[T]):
    """Items as they arrive (the last ``KEPT_MAX``) and a bounded wait for one that matches."""

    def __init__(self) -> None:
        self.items: deque[T] = deque(maxlen=KEPT_MAX)
        self.ended = False
        self._changed = asyncio.Condition()

    async def put(self, item: T) -> None:
        async with self._changed:
            self.items.append(item)
            self._changed.notify_all()

    async def end(self) -> None:
        async with self._changed:
            self.ended = True
            self._changed.notify_all()

    async def wait_for(self, match: Callable[[T], bool], *, timeout_s: float, what: str) -> T:
        def found() -> T | None:
            return next((item for item in self.items if match(item)), None)

        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: found() is not None or self.ended)
        except TimeoutError:
            raise CounterDemoError(f"no {what} within {timeout_s:g} s") from None
        item = found()
        if item is None:
            raise CounterDemoError(f"no {what}: its source ended")
        return item


class _Child:
    """A Python child process whose merged output lines are kept, and passed to ``on_line``."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, on_line: Callable[[str], None]) -> None:
        self.name = name
        self.lines: _Feed[str] = _Feed()
        self._process = process
        self._on_line = on_line
        self._reader = asyncio.create_task(self._read(), name=f"{name} output")

    @classmethod
    async def start(cls, name: str, args: Sequence[str], *, on_line: Callable[[str], None],
                    stdin_line: str | None = None) -> _Child:
        stdin = asyncio.subprocess.DEVNULL if stdin_line is None else asyncio.subprocess.PIPE
        process = await asyncio.create_subprocess_exec(
            sys.executable, *args, stdin=stdin, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        child = cls(name, process, on_line)
        if stdin_line is not None:
            try:
                assert process.stdin is not None
                process.stdin.write(stdin_line.encode() + b"\n")
                await asyncio.wait_for(process.stdin.drain(), STDIN_WRITE_S)
                process.stdin.close()
            except BaseException:
                await child.stop()
                raise
        return child

    async def _read(self) -> None:
        assert self._process.stdout is not None
        try:
            while raw := await self._process.stdout.readline():
                line = raw.decode(errors="replace").rstrip()
                await self.lines.put(line)
                self._on_line(line)
        finally:
            await self.lines.end()

    def tail(self) -> str:
        return "\n".join(list(self.lines.items)[-TAIL_LINES:])

    async def wait_line(self, match: Callable[[str], bool], *, timeout_s: float, what: str) -> str:
        try:
            return await self.lines.wait_for(match, timeout_s=timeout_s, what=what)
        except CounterDemoError as exc:
            raise CounterDemoError(f"{self.name}: {exc}; its last output:\n{self.tail()}") from None

    async def stop(self) -> None:
        process = self._process
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), CHILD_STOP_S)
            except TimeoutError:
                process.kill()
                await asyncio.wait_for(process.wait(), CHILD_STOP_S)
        await asyncio.wait({self._reader}, timeout=CHILD_STOP_S)


class _Gateway:
    """The gateway's public HTTP API as a merchant and a wallet holder use it."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")

    async def call(self, method: str, path: str, token: str | None, *, expect: int,
                   body: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with self._session.request(method, self._base_url + path, json=body, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as resp:
                data = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise CounterDemoError(f"{method} {path}: gateway unreachable or not answering JSON ({exc!r})") from exc
        if status != expect or not isinstance(data, dict):
            error = data.get("error") if isinstance(data, dict) else None
            detail = f"{error.get('code')}: {error.get('message')}" if isinstance(error, dict) else repr(data)[:200]
            raise CounterDemoError(f"{method} {path}: HTTP {status} {detail}")
        return data

    async def available_minor(self, token: str, currency: str) -> int:
        wallet = await self.call("GET", "/v1/wallet", token, expect=200)
        return next((int(b["available"]) for b in wallet["balances"] if b["currency"] == currency), 0)


class _DisplayRecorder:
    """The customer display (``DisplayScreen``) on a pty, reporting each new screen.

    The agent draws a screen with one write, which the pty hands over in one read; screens written
    faster than they are read arrive together and only the last of them is reported.
    """

    def __init__(self, port: PtyPort) -> None:
        self._port = port
        self.screen = DisplayScreen()
        self.screens: list[tuple[str, str]] = []

    async def run(self) -> None:
        shown = self.screen.lines
        while True:
            try:
                self.screen.feed(await self._port.read_some(timeout_s=SIMULATOR_READ_S))
            except TimeoutError:
                continue
            except PtyPortClosedError:
                return
            lines = self.screen.lines
            if lines != shown and any(line.strip() for line in lines):
                self.screens.append(lines)
                say("display", f"|{lines[0]}|", f"|{lines[1]}|")
            shown = lines


async def _print_receipts(printer: PrinterSimulator, receipts: _Feed[PrintedReceipt]) -> None:
    while True:
        try:
            receipt = await printer.next_receipt(timeout_s=SIMULATOR_READ_S)
        except TimeoutError:
            continue
        qr = [f"[QR code: {p[:QR_SHOWN_CHARS]}... ({len(p)} characters)]" for p in receipt.qr_payloads]
        kind = "QR slip" if receipt.qr_payloads else "receipt"
        say("printer", f"{kind}, cut:", *(f"  {line.rstrip()}" for line in receipt.lines), *(f"  {q}" for q in qr))
        await receipts.put(receipt)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", 0))  # nfcpy's udp listener binds 0.0.0.0:PORT
        port: int = probe.getsockname()[1]
        return port


def _toml(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def _agent_config(folder: Path, *, base_url: str, merchant_name: str, currency: str, currency_numeric: int,
                  register: str, nfc_port: int, display: str, printer: str, scanner: str) -> Path:
    lines = [
        "[agent]", f"name = {_toml(AGENT_NAME)}", f"terminal_label = {_toml(TERMINAL_LABEL)}",
        f"merchant_name = {_toml(merchant_name)}", 'log_level = "INFO"',
        "[gateway]", f"url = {_toml(base_url)}", 'credentials_path = "credentials.json"',
        "[sale]", f"currency = {_toml(currency)}", f"currency_numeric = {currency_numeric}",
        f"sale_timeout_s = {SALE_TIMEOUT_S}", "status_poll_interval_s = 0.3",
        "[journal]", 'path = "journal.sqlite3"',
        "[devices.register]", f"url = {_toml(register)}", "handshake_step_s = 1.0", f"result_s = {REGISTER_RESULT_S}",
        "[devices.nfc]", f'path = "udp:127.0.0.1:{nfc_port}"',
        "[devices.display]", f"url = {_toml(display)}",
        "[devices.printer]", f"url = {_toml(printer)}",
        "[devices.scanner]", f"url = {_toml(scanner)}",
    ]
    path = folder / "agent.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _agent_entry(line: str) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except ValueError:
        return {"msg": line, "level": "RAW"}
    return entry if isinstance(entry, dict) else {"msg": line, "level": "RAW"}


def _narrate_agent(line: str) -> None:
    """The sale's steps from the agent's log (its summary line repeats the register's answer)."""
    entry = _agent_entry(line)
    message = str(entry.get("msg", ""))
    if entry.get("level") != "info" or any(part in message for part in AGENT_NARRATED):
        say("agent", message)


def _narrate_phone(line: str) -> None:
    if line.startswith("phone: tap atc="):
        say("phone", f"tapped: the card answered the reader with a cryptogram (ATC {line.split('=', 1)[1]})")
    elif not line.startswith(("phone: ready", "phone: done")):
        say("phone", line)


def _register_sale(path: str, amount: float, currency: str) -> RegisterAnswer | None:
    """One sale from an unmodified pyTeliumManager register (blocking: run it in a thread)."""
    from telium import Telium, TeliumAsk  # type: ignore[import-untyped]

    ask = TeliumAsk.new_payment(amount, target_currency=currency, collect_payment_source_info=True)
    device = Telium(path, timeout=REGISTER_IO_TIMEOUT_S)
    try:
        if not device.ask(ask):
            raise CounterDemoError("register: the agent did not acknowledge the request")
        response = device.verify(ask, waiting_timeout=REGISTER_WAIT_S)
    finally:
        device.close()
    if response is None:
        return None
    return RegisterAnswer(
        succeeded=bool(response.has_succeeded), amount_minor=round(float(response.amount) * 10**CURRENCY_EXPONENT),
        currency_numeric=str(response.currency_numeric), sale_number=str(response.transaction_id).strip(),
        report=str(response.repport).strip())


@dataclass(slots=True)
class _Counter:
    """The counter's running parts, all owned by the caller's exit stack."""

    modem: PtyNullModem
    display: _DisplayRecorder
    receipts: _Feed[PrintedReceipt]
    nfc_port: int


async def _enrol(gateway: _Gateway, merchant_secret: str, terminal_id: str, folder: Path, base_url: str) -> str:
    """Enrol a fresh agent on the terminal (credentials in ``folder``); the merchant's name for
    the receipts."""
    code = await gateway.call("POST", f"/v1/terminals/{terminal_id}/enrolment_codes", merchant_secret,
                              expect=201, body={})
    say("gateway", f"one-time enrolment code issued for terminal {terminal_id} (expires {code['expires_at']})")
    settings = Settings(agent=AgentSettings(name=AGENT_NAME),
                        gateway=GatewaySettings(url=base_url, credentials_path=str(folder / "credentials.json")))
    try:
        enrolment = await asyncio.wait_for(enrol(settings, code["code"]), HTTP_TIMEOUT_S)
    except (GatewayError, OSError, TimeoutError) as exc:
        raise CounterDemoError(f"enrolment failed: {exc}") from exc
    credentials = enrolment.credentials
    merchant = await gateway.call("GET", f"/v1/merchants/{credentials.merchant}", merchant_secret, expect=200)
    merchant_name = " ".join(filter(None, (merchant.get("name_local"), merchant["name"])))
    say("agent", f"enrolled as device {credentials.device} on {credentials.terminal} ({merchant_name})")
    return merchant_name


async def _start_counter(stack: contextlib.AsyncExitStack, folder: Path, *, base_url: str, merchant_name: str,
                         currency: str, currency_numeric: int) -> _Counter:
    """The ptys and device simulators, then ``python -m pos_agent run`` on them, ready for a sale."""
    modem = stack.enter_context(PtyNullModem())
    display_pty, printer_pty, scanner_pty = (stack.enter_context(open_raw_pty()) for _ in range(3))
    display = _DisplayRecorder(PtyPort(display_pty.master_fd))
    printer = PrinterSimulator(PtyPort(printer_pty.master_fd), read_timeout_s=SIMULATOR_READ_S)
    receipts: _Feed[PrintedReceipt] = _Feed()
    tasks = [asyncio.create_task(display.run(), name="display"),
             asyncio.create_task(printer.run(), name="printer"),
             asyncio.create_task(_print_receipts(printer, receipts), name="receipts")]
    stack.push_async_callback(_cancel, tasks)

    nfc_port = _free_udp_port()
    config = _agent_config(folder, base_url=base_url, merchant_name=merchant_name, currency=currency,
                           currency_numeric=currency_numeric, register=modem.path_b, nfc_port=nfc_port,
                           display=display_pty.slave_path, printer=printer_pty.slave_path,
                           scanner=scanner_pty.slave_path)
    agent = await _Child.start("agent", ["-m", "pos_agent", "run", "--config", str(config)], on_line=_narrate_agent)
    stack.push_async_callback(agent.stop)
    await agent.wait_line(lambda line: _agent_entry(line).get("msg") == "agent ready",
                          timeout_s=AGENT_READY_S, what="'agent ready'")
    await agent.wait_line(lambda line: str(_agent_entry(line).get("msg")).startswith("register link open"),
                          timeout_s=AGENT_READY_S, what="register link")
    say("agent", "running (python -m pos_agent run) with",
        f"register  Concert on {modem.path_b} (null modem)", f"display   {display_pty.slave_path}",
        f"printer   {printer_pty.slave_path}", f"scanner   {scanner_pty.slave_path}",
        f"NFC       udp:127.0.0.1:{nfc_port} (nfcpy's udp driver)")
    return _Counter(modem, display, receipts, nfc_port)


async def _start_phone(stack: contextlib.AsyncExitStack, gateway: _Gateway, nfc_port: int, *, phone: str,
                       password: str, currency: str) -> tuple[str, int]:
    """Log the holder in on a phone, provision it for taps, hold it to the reader. Returns the
    wallet session token and the available balance before the sale."""
    body = {"phone": phone, "password": password, "device_id": PHONE_DEVICE_ID}
    token: str = (await gateway.call("POST", "/v1/wallet/sessions", None, expect=201, body=body))["token"]
    before_minor = await gateway.available_minor(token, currency)
    tap = await gateway.call("POST", "/v1/wallet/tap_tokens", token, expect=201, body={})
    say("wallet", f"{phone} logged in on {PHONE_DEVICE_ID}: available {format_amount(before_minor, currency)};"
        f" tap token {mask_pan(tap['token_pan'])} provisioned")
    child = await _Child.start("phone", [
        "-m", "hardware.sim.phone", "--port", str(nfc_port), "--host", "127.0.0.1", "--pan", tap["token_pan"],
        "--psn", str(tap["psn"]), "--icc-mk-hex", "-", "--atc-start", str(tap["atc"]),
        "--expiry", tap["expiry_yymm"]], on_line=_narrate_phone, stdin_line=tap["icc_master_key"])
    stack.push_async_callback(child.stop)
    await child.wait_line(lambda line: line.startswith("phone: ready"), timeout_s=PHONE_READY_S, what="ready")
    say("phone", "held to the reader (python -m hardware.sim.phone)")
    return token, before_minor


async def _sell(modem: PtyNullModem, amount_minor: int, currency: str) -> RegisterAnswer:
    say("register", f"asks the payment terminal for {format_amount(amount_minor, currency)}"
        f" (pyTeliumManager on {modem.path_a})")
    try:
        answer = await asyncio.wait_for(
            asyncio.to_thread(_register_sale, modem.path_a, amount_minor / 10**CURRENCY_EXPONENT, currency),
            REGISTER_JOIN_S)
    except TimeoutError:
        raise CounterDemoError(f"register: no answer within {REGISTER_JOIN_S:g} s") from None
    except CounterDemoError:
        raise
    except Exception as exc:  # pyTeliumManager and pyserial raise their own untyped exception classes
        raise CounterDemoError(f"register: {type(exc).__name__}: {exc}") from exc
    if answer is None:
        raise CounterDemoError("register: gave up waiting for the terminal's answer")
    say("register", f"answer: {'success' if answer.succeeded else 'refused'},"
        f" {format_amount(answer.amount_minor, currency)} (currency {answer.currency_numeric}),"
        f" sale {answer.sale_number}, report {answer.report!r}")
    return answer


async def run(base_url: str, merchant_secret: str, terminal_id: str, wallet_phone: str, wallet_password: str,
              amount_minor: int, currency: str) -> CounterResult:
    """Sell ``amount_minor`` at a simulated counter of ``terminal_id``, paid by the holder's phone."""
    try:
        entry = iso4217.Currency(currency)
    except ValueError:
        raise CounterDemoError(f"unknown currency {currency!r}") from None
    if entry.exponent != CURRENCY_EXPONENT:
        raise CounterDemoError(f"the demo's register speaks {CURRENCY_EXPONENT} decimals; {currency} has"
                               f" {entry.exponent}")
    if amount_minor <= 0:
        raise CounterDemoError("the amount must be positive")
    base_url = base_url.rstrip("/")
    stack = contextlib.AsyncExitStack()
    try:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        gateway = _Gateway(session, base_url)
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="counter-demo-")))
        merchant_name = await _enrol(gateway, merchant_secret, terminal_id, folder, base_url)
        counter = await _start_counter(stack, folder, base_url=base_url, merchant_name=merchant_name,
                                       currency=currency, currency_numeric=int(entry.number))
        wallet, before_minor = await _start_phone(stack, gateway, counter.nfc_port, phone=wallet_phone,
                                                  password=wallet_password, currency=currency)
        answer = await _sell(counter.modem, amount_minor, currency)
        method, _, payment_id = answer.report.partition(" ")
        if not answer.succeeded or method != "tap" or not payment_id.startswith("pay_"):
            raise CounterDemoError(f"the sale was not approved online by tap: {answer.report!r}")
        if answer.amount_minor != amount_minor:
            raise CounterDemoError(f"the register was answered for {answer.amount_minor}, not {amount_minor}")
        receipt = await counter.receipts.wait_for(lambda r: any(payment_id in line for line in r.lines),
                                                  timeout_s=RECEIPT_WAIT_S, what=f"receipt naming {payment_id}")
        payment = await gateway.call("GET", f"/v1/payments/{payment_id}", merchant_secret, expect=200)
        say("gateway", f"{payment_id}: {payment['status']}, {format_amount(payment['amount'], payment['currency'])}"
            f" by {payment['channel']} on {payment['terminal']}, reference {payment['merchant_reference']}")
        if payment["status"] != "succeeded" or payment["amount"] != amount_minor:
            raise CounterDemoError(f"the gateway has {payment_id} as {payment['status']} for {payment['amount']}")
        after_minor = await gateway.available_minor(wallet, currency)
        say("wallet", f"available {format_amount(before_minor, currency)} -> {format_amount(after_minor, currency)}")
        return CounterResult(register=answer, display_screens=tuple(counter.display.screens),
                             receipt_lines=receipt.lines, payment_id=payment_id, payment_status=payment["status"],
                             wallet_available_before_minor=before_minor, wallet_available_after_minor=after_minor)
    finally:
        await stack.aclose()


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks, timeout=TASK_STOP_S)


def _secret(value: str) -> str:
    """``-`` reads the value from the next line of stdin (keeps it out of ``ps``)."""
    return sys.stdin.readline().rstrip("\n") if value == "-" else value


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pos_agent.counter_demo", description=__doc__.splitlines()[0],
                                     epilog="With both secrets '-', stdin holds the merchant key, then the password.")
    parser.add_argument("--gateway", required=True, help="the gateway's base URL")
    parser.add_argument("--merchant-secret", default="-", help="merchant secret key; '-' (default) reads stdin")
    parser.add_argument("--terminal", required=True, help="terminal id (ter_...)")
    parser.add_argument("--phone", required=True, help="the wallet holder's phone number")
    parser.add_argument("--password", default="-", help="the wallet password; '-' (default) reads stdin")
    parser.add_argument("--amount-minor", type=int, default=2_600, help="amount in minor units (default 2600)")
    parser.add_argument("--currency", default="CNY")
    return parser.parse_args(argv)


async def _run_until_signalled(args: argparse.Namespace, merchant_secret: str, password: str) -> CounterResult:
    """``run``, cancelled by SIGTERM as by Ctrl-C, so its clean-up stops the agent and the phone."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run(args.gateway, merchant_secret, args.terminal, args.phone, password, args.amount_minor,
                     args.currency)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    merchant_secret = _secret(args.merchant_secret)
    password = _secret(args.password)
    if not merchant_secret or not password:
        print("counter demo: the merchant secret and the wallet password are required", file=sys.stderr)
        return 2
    try:
        asyncio.run(_run_until_signalled(args, merchant_secret, password))
    except (CounterDemoError, TimeoutError) as exc:
        print(f"counter demo failed: {exc or 'timed out'}", file=sys.stderr)
        return 1
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("counter demo stopped", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
