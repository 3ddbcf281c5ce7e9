"""The counter as processes: gateway, POS agent, wallet phone, a PyPI register over a pty null
modem, and scanner/display/printer simulators on ptys. Each test gets its own gateway and
database; teardown stops every process and runs the gateway's ledger invariant checker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hardware.sim.display_sim import DisplaySimulator
from hardware.sim.printer_sim import PrinterSimulator
from hardware.sim.pty import PtyNullModem, PtyPort, RawPty, open_raw_pty
from hardware.sim.scanner_sim import ScannerSimulator
from tests.e2e.harness import (
    AgentProcess,
    Api,
    GatewayProcess,
    Holder,
    PhoneProcess,
    Shop,
    agent_config,
    free_udp_port,
    register_payment,
    register_refund,
)

REGISTER_THREAD_JOIN_S = 40.0


async def gateway_has_device_api(url: str) -> bool:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/openapi.json") as resp:
        paths = (await resp.json())["paths"]
    return "/v1/tap_payments" in paths and "/v1/devices/enrolments" in paths


@dataclass
class Counter:
    gateway: GatewayProcess
    api: Api
    shop: Shop
    agent: AgentProcess
    holder: Holder
    provisioning: dict[str, Any]
    nfc_port: int
    modem: PtyNullModem
    scanner: ScannerSimulator
    display: DisplaySimulator
    printer: PrinterSimulator
    tmp: Path
    phones: list[PhoneProcess] = field(default_factory=list)

    async def start_phone(self, atc: int | None = None) -> PhoneProcess:
        provisioning = dict(self.provisioning)
        if atc is not None:
            provisioning["atc"] = atc
        phone = PhoneProcess(self.nfc_port, provisioning)
        self.phones.append(phone)
        await phone.start()
        return phone

    async def stop_phones(self) -> None:
        for phone in self.phones:
            await phone.stop()

    def sell(self, amount: float, *, waiting_timeout_s: float = 25.0) -> asyncio.Task[Any]:
        """The register asks for ``amount``; the task ends with pyTeliumManager's answer (or None)."""
        return asyncio.create_task(asyncio.to_thread(
            register_payment, self.modem.path_a, amount, waiting_timeout_s=waiting_timeout_s))

    def refund(self, amount: float, sale_number: str) -> asyncio.Task[Any]:
        """The register asks to refund ``amount`` of the sale it was answered ``sale_number`` for."""
        return asyncio.create_task(asyncio.to_thread(
            register_refund, self.modem.path_a, amount, sale_number, waiting_timeout_s=25.0))

    async def payments_of_sale(self, sequence: int) -> list[dict[str, Any]]:
        """The sale's payment (reference ``E2E-000001``) and any its offline taps made (``E2E-000001-T1``)."""
        return await self.shop.payments(f"E2E-{sequence:06d}")

    async def waiting_for_payment(self, amount_text: str) -> None:
        """The sale's payment and QR code exist: the display invites the payer."""
        await self.display.wait_for_lines(amount_text, "Tap / scan QR", timeout_s=10)


@pytest.fixture
def counter_options() -> dict[str, Any]:
    """Agent settings of the counter under test (a test overrides this fixture to change them)."""
    return {}


@pytest.fixture
async def counter(tmp_path: Path, counter_options: dict[str, Any]) -> AsyncIterator[Counter]:
    gateway = await GatewayProcess.create()
    stack = contextlib.AsyncExitStack()
    tasks: list[asyncio.Task[Any]] = []
    try:
        stack.push_async_callback(gateway.drop)
        stack.push_async_callback(gateway.stop)
        if not await gateway_has_device_api(gateway.url):
            pytest.skip("the gateway does not serve the device API yet (docs/device-api.md)")
        session = await stack.enter_async_context(aiohttp.ClientSession())
        api = Api(session, gateway.url)
        shop = await Shop.create(api)
        holder = await shop.holder(top_up=100_000)
        provisioning = await api.call("POST", "/v1/wallet/tap_tokens", holder.token, 201, json={})

        modem = stack.enter_context(PtyNullModem())
        ptys: dict[str, RawPty] = {name: stack.enter_context(open_raw_pty()) for name in ("scan", "disp", "prn")}
        scanner = ScannerSimulator(PtyPort(ptys["scan"].master_fd))
        display = DisplaySimulator(PtyPort(ptys["disp"].master_fd))
        printer = PrinterSimulator(PtyPort(ptys["prn"].master_fd))
        tasks += [asyncio.create_task(display.run()), asyncio.create_task(printer.run())]

        nfc_port = free_udp_port()
        config = agent_config(tmp_path, gateway_url=gateway.url, register=modem.path_b, nfc_port=nfc_port,
                              scanner=ptys["scan"].slave_path, display=ptys["disp"].slave_path,
                              printer=ptys["prn"].slave_path, **counter_options)
        agent = AgentProcess(config)
        stack.push_async_callback(agent.stop)
        code, out, err = await agent.cli("enrol", "--code", await shop.enrolment_code())
        assert code == 0, err
        assert (tmp_path / "credentials.json").stat().st_mode & 0o777 == 0o600
        counter = Counter(gateway, api, shop, agent, holder, provisioning, nfc_port, modem, scanner, display,
                          printer, tmp_path)
        stack.push_async_callback(counter.stop_phones)
        await agent.start()
        await agent.wait_log(lambda e: str(e.get("msg", "")).startswith("register link open"))
        yield counter
        await counter.stop_phones()
        assert await agent.stop() == 0, agent.messages()[-10:]
        if gateway.process is None or gateway.process.returncode is not None:
            await gateway.start()
        check = await gateway.cli("check")
        assert "ledger invariants: OK" in check, check
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await stack.aclose()
