"""The counter's health: the heartbeat the agent sends the gateway, and the checks behind
``pos-agent status`` (the state now) and ``pos-agent doctor`` (does every configured device
answer, before the shop opens).

Invariants:
- The heartbeat never stops or slows the counter: it runs as its own task, each beat bounded by
  the client's timeouts and retry count; a failed beat is logged once per failing streak and
  the next one comes ``heartbeat_interval_s`` later. It carries the agent's version and the
  offline backlog (count, age of the oldest in seconds: the counter's clock never crosses the wire).
- ``status`` never opens a device: the running agent owns them (a second reader of a serial port
  would take its bytes, a USB NFC reader opens once). It says whether each device's node exists.
- ``doctor`` opens every configured device the way the agent does and has it answer what it can
  (the printer its real-time status, the NFC reader its connection); run it with the agent stopped.
- Every check is bounded and ends as one ``Check`` (one line); a failing device never raises.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hardware.nfc import NfcReader
from hardware.serial.display import CustomerDisplay
from hardware.serial.errors import SerialDeviceError
from hardware.serial.printer import ReceiptPrinter
from hardware.serial.transport import SerialLink, open_serial
from pos_agent.credentials import Credentials, load_credentials
from pos_agent.devices import serial_settings
from pos_agent.errors import AgentError, DeviceAuthError, GatewayError, JournalError
from pos_agent.gateway_client import GatewayClient
from pos_agent.journal import AsyncJournal, Backlog, Journal
from pos_agent.settings import SerialPortSettings, Settings

__all__ = ["Check", "agent_version", "doctor", "heartbeat_forever", "status"]

log = logging.getLogger(__name__)

DISTRIBUTION: Final = "wallet-gateway"
DEVICE_ANSWER_TIMEOUT_S: Final = 3.0
"""How long doctor waits for a device's answer (the printer's status, the NFC reader's connection)."""


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'FAIL':<4} {self.name}: {self.detail}"


def agent_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"  # run from a source tree that was never installed


# ---------------------------------------------------------------------------------------------
# Heartbeat


async def heartbeat_forever(client: GatewayClient, journal: AsyncJournal, interval_s: float) -> None:
    version = agent_version()
    failing = False
    while True:
        try:
            backlog = await journal.call(Journal.offline_backlog)
            await client.heartbeat(agent_version=version, backlog_count=backlog.count,
                                   backlog_oldest_age_s=backlog.oldest_age_s,
                                   idempotency_key=f"heartbeat-{uuid.uuid4()}")
        except (GatewayError, JournalError) as exc:
            if not failing:
                log.warning("heartbeat failed: %s", exc)
            failing = True
        else:
            if failing:
                log.info("heartbeat delivered again")
            failing = False
        await asyncio.sleep(interval_s)


# ---------------------------------------------------------------------------------------------
# Checks


async def _gateway_checks(settings: Settings) -> tuple[list[Check], Credentials | None]:
    credentials: Credentials | None = None
    try:
        credentials = load_credentials(settings.credentials_path)
        enrolment = Check("enrolment", True, f"device {credentials.device}, terminal {credentials.terminal},"
                                             f" merchant {credentials.merchant}")
    except AgentError as exc:
        enrolment = Check("enrolment", False, str(exc))
    url = settings.gateway.url
    try:
        async with GatewayClient(settings.gateway, credentials=credentials) as client:
            if credentials is None:
                await client.ping()
                gateway = Check("gateway", True, f"{url} answers")
            else:
                await client.renew_token()
                gateway = Check("gateway", True, f"{url} answers and accepts this device")
    except DeviceAuthError as exc:
        gateway = Check("gateway", False, f"{url} refuses this device: {exc}")
    except GatewayError as exc:
        gateway = Check("gateway", False, f"{url}: {exc}")
    return [enrolment, gateway], credentials


def _backlog_check(settings: Settings) -> tuple[Check, Backlog | None, dict[str, int]]:
    try:
        journal = Journal(settings.journal_path)
        try:
            backlog, counts = journal.offline_backlog(), journal.counts()
        finally:
            journal.close()
    except (JournalError, sqlite3.Error) as exc:
        return Check("offline backlog", False, f"journal {settings.journal_path}: {exc}"), None, {}
    detail = "no offline taps waiting" if backlog.count == 0 else (
        f"{backlog.count} offline tap(s) waiting for the gateway, the oldest for {backlog.oldest_age_s} s")
    return Check("offline backlog", True, detail), backlog, counts


def _configured_ports(settings: Settings) -> list[tuple[str, SerialPortSettings]]:
    d = settings.devices
    named: list[tuple[str, SerialPortSettings | None]] = [
        ("register link", d.register), ("scanner", d.scanner), ("display", d.display), ("printer", d.printer)]
    return [(name, port) for name, port in named if port is not None]


def _device_presence(settings: Settings) -> list[Check]:
    checks = []
    if settings.devices.nfc is not None:
        checks.append(Check(f"NFC reader {settings.devices.nfc.path}", True, "configured (doctor probes it)"))
    for name, port in _configured_ports(settings):
        if not port.url.startswith("/"):
            checks.append(Check(f"{name} {port.url}", True, "configured (doctor probes it)"))
        elif Path(port.url).exists():
            checks.append(Check(f"{name} {port.url}", True, "device present"))
        else:
            checks.append(Check(f"{name} {port.url}", False, "no such device"))
    return checks


async def status(settings: Settings) -> tuple[list[Check], dict[str, object]]:
    """Enrolment, gateway, each device (present or not), the offline backlog; and the same as data."""
    gateway_checks, _ = await _gateway_checks(settings)
    backlog_check, backlog, counts = _backlog_check(settings)
    devices = _device_presence(settings)
    checks = [*gateway_checks, *devices, backlog_check]
    report: dict[str, object] = {
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
        "offline_backlog": None if backlog is None else {"count": backlog.count, "oldest_age_s": backlog.oldest_age_s},
        "journal": counts,
    }
    return checks, report


async def _probe_serial(name: str, port: SerialPortSettings,
                        answer: Callable[[SerialLink], Awaitable[str]]) -> Check:
    label = f"{name} {port.url}"
    try:
        link = await open_serial(serial_settings(port))
    except SerialDeviceError as exc:
        return Check(label, False, str(exc))
    try:
        return Check(label, True, await answer(link))
    except SerialDeviceError as exc:
        return Check(label, False, str(exc))
    finally:
        await link.close()


async def _port_opens(link: SerialLink) -> str:
    return "port opens"


async def _display_answers(link: SerialLink) -> str:
    await CustomerDisplay(link).initialize()
    return "took the initialise command"


async def _printer_answers(link: SerialLink) -> str:
    found = await ReceiptPrinter(link).status(timeout_s=DEVICE_ANSWER_TIMEOUT_S)
    if not found.online:
        raise SerialDeviceError("the printer reports itself offline (cover open or error)")
    if found.paper_out:
        raise SerialDeviceError("the printer is out of paper")
    return "online, paper loaded"


async def _probe_nfc(path: str) -> Check:
    label = f"NFC reader {path}"
    try:
        reader = NfcReader(path)
    except ValueError as exc:
        return Check(label, False, str(exc))
    await reader.start()
    try:
        if await reader.wait_connected(DEVICE_ANSWER_TIMEOUT_S):
            return Check(label, True, "connected")
        return Check(label, False, f"not connected within {DEVICE_ANSWER_TIMEOUT_S:g} s")
    finally:
        await reader.close()


_ANSWERS: Final[dict[str, Callable[[SerialLink], Awaitable[str]]]] = {
    "register link": _port_opens,  # the register speaks first (Concert): there is nothing to ask it
    "scanner": _port_opens,  # a scanner only sends
    "display": _display_answers,
    "printer": _printer_answers,
}


async def doctor(settings: Settings) -> list[Check]:
    """Enrolment, gateway, then every configured device made to answer; one check each."""
    checks, _ = await _gateway_checks(settings)
    if settings.devices.nfc is not None:
        checks.append(await _probe_nfc(settings.devices.nfc.path))
    for name, port in _configured_ports(settings):
        checks.append(await _probe_serial(name, port, _ANSWERS[name]))
    if len(checks) == 2:
        checks.append(Check("devices", False, "none configured ([devices.*] sections)"))
    return checks
