"""Tap-to-result latency of ``NfcReader`` over nfcpy's udp driver on loopback.

Measures from the ``read_tap`` call to the ``TapResult`` (arm, sense, anticollision, RATS,
SELECT PPSE, SELECT AID, GPO with a fresh CVN 18 ARQC, DESELECT), with the phone simulator
already listening in a thread of the same process. For comparison it also times the same EMV
exchange in memory (card and terminal logic only, no radio).

Bounded: at most ``TAPS_MAX`` taps, each read times out after ``READ_TIMEOUT_S``; the run
stops by itself. Usage: ``python bench/tap_latency.py [--taps 50] [--gap-ms 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import socket
import statistics
import time

from hardware.nfc import NfcReader, WalletCard, WalletProvisioning
from hardware.nfc.card import WALLET_AID
from hardware.nfc.emv import TerminalData, run_fast_path
from hardware.sim.phone import PhoneSimulator

TAPS_MAX = 1000
READ_TIMEOUT_S = 3.0
STALL_MS = 500.0  # a poll lost while the phone rebinds its port costs nfcpy's 1 s sense wait


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", 0))
        port: int = probe.getsockname()[1]
        return port


def percentile(samples_ms: list[float], fraction: float) -> float:
    ordered = sorted(samples_ms)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def report(name: str, samples_ms: list[float]) -> None:
    print(
        f"{name:<28} n={len(samples_ms):<4} p50={percentile(samples_ms, 0.50):7.2f} ms"
        f"  p95={percentile(samples_ms, 0.95):7.2f} ms  max={max(samples_ms):7.2f} ms"
        f"  mean={statistics.fmean(samples_ms):7.2f} ms"
    )


def in_memory_samples(provisioning: WalletProvisioning, taps: int) -> list[float]:
    card = WalletCard(provisioning)
    samples_ms = []
    for _ in range(taps):
        card.reset()
        terminal = TerminalData(1_000, 978, 250, datetime.date.today(), os.urandom(4))
        started = time.perf_counter()
        run_fast_path(card.handle_apdu, terminal, [WALLET_AID])
        samples_ms.append((time.perf_counter() - started) * 1000)
    return samples_ms


async def udp_samples(provisioning: WalletProvisioning, taps: int, gap_s: float) -> list[float]:
    port = free_udp_port()
    phone = PhoneSimulator(f"udp:localhost:{port}", WalletCard(provisioning))
    phone.start()
    try:
        if not phone.wait_listening(2.0):
            raise RuntimeError("phone did not start")
        samples_ms = []
        async with NfcReader(f"udp:127.0.0.1:{port}") as reader:
            if not await reader.wait_connected(2.0):
                raise RuntimeError("reader did not open")
            for _ in range(taps):
                started = time.perf_counter()
                await reader.read_tap(1_000, 978, 250, timeout_s=READ_TIMEOUT_S)
                samples_ms.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(gap_s)
        return samples_ms
    finally:
        phone.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--taps", type=int, default=50)
    parser.add_argument("--gap-ms", type=float, default=20.0, help="pause between taps (phone rebinds)")
    args = parser.parse_args()
    taps = max(1, min(args.taps, TAPS_MAX))
    provisioning = WalletProvisioning("99012345678901234", 45, bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))

    report("in-memory EMV exchange", in_memory_samples(provisioning, taps))
    samples_ms = asyncio.run(udp_samples(provisioning, taps, args.gap_ms / 1000))
    report("udp tap-to-result", samples_ms)
    stalls = sum(sample > STALL_MS for sample in samples_ms)
    print(f"stalls over {STALL_MS:.0f} ms (lost poll): {stalls}")
    if stalls < len(samples_ms):
        report("udp tap-to-result, no stall", [sample for sample in samples_ms if sample <= STALL_MS])


if __name__ == "__main__":
    main()
