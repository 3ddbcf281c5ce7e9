"""Tap-to-approval latency of the whole counter, every part a real process.

A gateway (``gateway serve``, fresh database), the POS agent (``python -m pos_agent run``), the
wallet phone simulator (``python -m hardware.sim.phone`` over nfcpy's udp driver) and an
unmodified pyTeliumManager register on a pty null modem run ``--sales`` sales one after the
other. The phone stays in the field, so each tap happens as soon as the agent arms its reader.

Reported per sale, from the agent's JSON log timestamps (ms resolution):
- ``armed->approved``: the reader armed -> the gateway's approval recorded: the NFC exchange
  (sense, RATS, SELECT PPSE, SELECT AID, GPO with a CVN 18 ARQC, DESELECT), the journal write
  (fsync) of the tap's key, ``POST /v1/tap_payments`` (cryptogram verified, ledger posted) and
  its journal write. This is tap-to-approval.
- ``tap->approved``: the tap read -> approval (the gateway part alone, with the journal writes).
and measured by the register: ``register request->answer``: the whole sale (the sale's payment
and QR created, tap settling that payment, approval, Concert answer). Its other spans, the
register's clock against the agent's log (one host, one clock; ms resolution):
- ``request->sale opened``: the Concert request (ENQ, frame, ACKs, EOT) and the sale's journal write;
- ``sale opened->armed``: the sale's payment and its QR code (two gateway calls, their journal writes);
- ``approved->answer``: the decision journalled, the receipt printed, the Concert answer delivered.

Bounded: each sale has the register's 20 s wait; everything is torn down at the end.
Usage: ``python bench/tap_to_approval.py [--sales 30]``
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402

from hardware.sim.printer_sim import PrinterSimulator  # noqa: E402
from hardware.sim.pty import PtyNullModem, PtyPort, open_raw_pty  # noqa: E402
from tests.e2e.harness import (  # noqa: E402
    AgentProcess,
    Api,
    GatewayProcess,
    PhoneProcess,
    Shop,
    agent_config,
    free_udp_port,
    register_payment,
)


def percentile(samples_ms: list[float], fraction: float) -> float:
    ordered = sorted(samples_ms)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def report(name: str, samples_ms: list[float]) -> None:
    print(f"{name:<28} n={len(samples_ms):<3} p50={percentile(samples_ms, 0.50):8.1f} ms"
          f"  p95={percentile(samples_ms, 0.95):8.1f} ms  max={max(samples_ms):8.1f} ms"
          f"  mean={statistics.fmean(samples_ms):8.1f} ms")


def ts(entry: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(str(entry["ts"])).timestamp() * 1000


async def main(sales: int) -> None:
    gateway = await GatewayProcess.create()
    agent: AgentProcess | None = None
    phone: PhoneProcess | None = None
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, gateway.url)
            shop = await Shop.create(api)
            holder = await shop.holder(top_up=500_000)
            provisioning = await api.call("POST", "/v1/wallet/tap_tokens", holder.token, 201, json={})
            with tempfile.TemporaryDirectory() as tmp, PtyNullModem() as modem, open_raw_pty() as prn:
                printer = PrinterSimulator(PtyPort(prn.master_fd))
                printing = asyncio.create_task(printer.run())
                nfc_port = free_udp_port()
                config = agent_config(Path(tmp), gateway_url=gateway.url, register=modem.path_b,
                                      nfc_port=nfc_port, scanner=None, display=None, printer=prn.slave_path)
                agent = AgentProcess(config)
                code, _, err = await agent.cli("enrol", "--code", await shop.enrolment_code())
                assert code == 0, err
                await agent.start()
                await agent.wait_log(lambda e: str(e.get("msg", "")).startswith("register link open"))
                phone = PhoneProcess(nfc_port, provisioning)
                await phone.start()
                register_ms: list[float] = []
                register_wall_ms: list[tuple[float, float]] = []  # (request, answer) on the logs' clock
                for index in range(sales):
                    started, started_wall_s = time.perf_counter(), time.time()
                    response = await asyncio.to_thread(register_payment, modem.path_a, round(1.00 + index / 100, 2),
                                                       waiting_timeout_s=20)
                    register_ms.append((time.perf_counter() - started) * 1000)
                    register_wall_ms.append((started_wall_s * 1000, time.time() * 1000))
                    assert response is not None and response.has_succeeded, response
                await asyncio.sleep(0.2)
                printing.cancel()
                logs = agent.logs
        armed_ms, tap_ms, opened_ms, opened_armed_ms, answer_ms = [], [], [], [], []
        for index, (request_ms, answered_ms) in enumerate(register_wall_ms, start=1):
            reference = f"E2E-{index:06d}"

            def first(suffix: str, ref: str = reference) -> dict[str, Any]:
                return next(e for e in logs if str(e.get("msg", "")).startswith(f"sale {ref}: {suffix}"))

            approved, armed = ts(first("authorising -> approved")), ts(first("reader armed"))
            opened = ts(next(e for e in logs if str(e.get("msg", "")).startswith(f"sale {reference}: ")
                             and str(e.get("msg", "")).endswith(" requested")))
            armed_ms.append(approved - armed)
            tap_ms.append(approved - ts(first("awaiting -> authorising on TapRead")))
            opened_ms.append(opened - request_ms)
            opened_armed_ms.append(armed - opened)
            answer_ms.append(answered_ms - approved)
        print(f"{sales} sales, gateway on {gateway.url}, phone on udp:{nfc_port}")
        report("request->sale opened", opened_ms)
        report("sale opened->armed", opened_armed_ms)
        report("armed->approved (tap)", armed_ms)
        report("tap->approved (gateway)", tap_ms)
        report("approved->answer", answer_ms)
        report("register request->answer", register_ms)
    finally:
        if phone is not None:
            await phone.stop()
        if agent is not None:
            await agent.stop()
        await gateway.stop()
        await gateway.drop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sales", type=int, default=30)
    args = parser.parse_args()
    if not 1 <= args.sales <= 500:
        parser.error("--sales must be 1..500")
    asyncio.run(main(args.sales))
