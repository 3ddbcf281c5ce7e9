"""The agent's lifecycle: enrol, recover, open devices, serve the register, forward, stop.

Invariants:
- The journal is opened (and must open) before anything can take a payment.
- At start-up, sales the journal shows as unfinished (the agent died during them, or before the
  register acknowledged their answer) are compensated before the first new sale: their payments
  reversed, their offline taps voided.
- A device the gateway refuses (revoked) does not take payments, not even offline: the agent
  exits with an error instead.
- Stopping (``stop`` set by SIGTERM/SIGINT) cancels the running sale, which compensates itself
  within its bounded clean-up, then closes devices, client and journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from dataclasses import dataclass
from typing import Final

from hardware.nfc import NfcReader
from pos_agent.checkout import CheckoutDevices, CheckoutRunner, compensate_sale
from pos_agent.credentials import load_credentials, save_credentials
from pos_agent.devices import Devices, DisplayPort, PrinterPort, ScannerFeed
from pos_agent.errors import DeviceAuthError, GatewayError
from pos_agent.forwarder import Forwarder
from pos_agent.gateway_client import Enrolment, GatewayClient
from pos_agent.health import heartbeat_forever
from pos_agent.journal import AsyncJournal, Journal
from pos_agent.refunds import CounterRefunds
from pos_agent.register import RegisterService
from pos_agent.settings import Settings

__all__ = ["Agent", "enrol", "enrolment_key"]

log = logging.getLogger(__name__)

READER_CONNECT_WAIT_S: Final = 2.0
STOP_TIMEOUT_S: Final = 15.0


def enrolment_key(code: str) -> str:
    """Derived from the code, so re-running ``enrol`` with the same code resends the same key."""
    return "enrol-" + hashlib.sha256(code.encode("utf-8")).hexdigest()[:40]


async def enrol(settings: Settings, code: str, *, name: str | None = None, force: bool = False) -> Enrolment:
    path = settings.credentials_path
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists: this agent is already enrolled (use --force to replace it)")
    async with GatewayClient(settings.gateway) as client:
        enrolment = await client.enrol(code, name or settings.agent.name, idempotency_key=enrolment_key(code))
    save_credentials(path, enrolment.credentials)
    return enrolment


@dataclass(slots=True)
class _Running:
    runner: CheckoutRunner
    forwarder: Forwarder


class Agent:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._running: _Running | None = None

    def cancel_sale(self, reason: str = "cancelled_by_cashier") -> bool:
        return self._running is not None and self._running.runner.cancel(reason)

    async def run(self, stop: asyncio.Event) -> None:
        settings = self._settings
        credentials = load_credentials(settings.credentials_path)
        journal = AsyncJournal.open(settings.journal_path)
        devices = Devices()
        try:
            async with GatewayClient(settings.gateway, credentials=credentials) as client:
                await self._first_contact(client)
                await recover(client, journal)
                devices = await open_devices(settings)
                forwarder = Forwarder(settings, client, journal)
                runner = CheckoutRunner(
                    settings, client, journal,
                    CheckoutDevices(reader=devices.reader, codes=devices.scanner, display=devices.display,
                                    printer=devices.printer),
                    drain_token=forwarder.drain_token, on_offline_approval=forwarder.wake,
                )
                self._running = _Running(runner, forwarder)
                tasks = {asyncio.create_task(forwarder.run_forever(), name="forwarder"),
                         asyncio.create_task(client.keep_token_fresh(), name="token"),
                         asyncio.create_task(heartbeat_forever(client, journal, settings.gateway.heartbeat_interval_s),
                                             name="heartbeat")}
                register = settings.devices.register
                if register is not None:
                    refunds = CounterRefunds(client, journal, terminal_label=settings.agent.terminal_label,
                                             timeout_s=settings.sale.sale_timeout_s)
                    service = RegisterService(register, settings.sale, runner, client, journal, refunds)
                    tasks.add(asyncio.create_task(service.run_forever(), name="register"))
                stopping = asyncio.create_task(stop.wait(), name="stop")
                log.info("agent ready", extra={"device": credentials.device, "terminal": credentials.terminal,
                                               "register": register.url if register else None})
                try:
                    done, _ = await asyncio.wait({*tasks, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    for task in done - {stopping}:
                        task.result()  # a service that ended on its own failed: surface it
                finally:
                    self._running = None
                    for task in (*tasks, stopping):
                        task.cancel()
                    await asyncio.wait({*tasks, stopping}, timeout=STOP_TIMEOUT_S)
                    log.info("agent stopping")
        finally:
            await devices.close()
            await journal.close()

    async def _first_contact(self, client: GatewayClient) -> None:
        try:
            await client.renew_token()
        except DeviceAuthError:
            raise
        except GatewayError as exc:
            log.warning("gateway not reachable at start (%s): offline taps only until it returns", exc)


async def recover(client: GatewayClient, journal: AsyncJournal) -> None:
    """Compensate every sale the register may not have recorded (see the module invariants)."""
    for sale in await journal.call(Journal.unfinished_sales):
        log.warning("sale %s was interrupted (%s): reversing its payments", sale.reference, sale.state.value)
        try:
            await compensate_sale(client, journal, sale.reference, None, void_offline=True)
        except GatewayError as exc:
            log.warning("sale %s: compensation queued for the forwarder: %s", sale.reference, exc)
        await journal.call(functools.partial(Journal.sale_voided, reference=sale.reference))


async def open_devices(settings: Settings) -> Devices:
    configured = settings.devices
    devices = Devices()
    if configured.nfc is not None:
        devices.reader = NfcReader(configured.nfc.path)
        await devices.reader.start()
        if not await devices.reader.wait_connected(READER_CONNECT_WAIT_S):
            log.warning("NFC reader %s not connected yet; it keeps trying", configured.nfc.path)
    if configured.scanner is not None:
        devices.scanner = ScannerFeed(configured.scanner)
        await devices.scanner.start()
    if configured.display is not None:
        devices.display = DisplayPort(configured.display)
        with contextlib.suppress(Exception):
            await devices.display.show("WELCOME", "")
    if configured.printer is not None:
        devices.printer = PrinterPort(configured.printer)
    return devices
