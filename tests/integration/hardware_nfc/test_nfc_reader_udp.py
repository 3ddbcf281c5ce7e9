"""NfcReader against the phone simulator over nfcpy's real udp driver (loopback).

Each test takes its own UDP port; phones and readers are stopped at teardown. Timings: the udp
driver waits 1 s per sense when nobody answers, so cancels and closes take up to about 1 s.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import IMK, PAN, PSN, Plug, derive_icc_mk, expected_arqc

from hardware.nfc import (
    CardError,
    NfcReader,
    ReaderBusy,
    ReaderUnavailable,
    TapCancelled,
    TapTimeout,
)
from hardware.nfc.emv import Tag
from hardware.sim.phone import PhoneSimulator

REPO_ROOT = Path(__file__).resolve().parents[3]
StartPhone = Callable[..., PhoneSimulator]


async def test_tap_end_to_end_arqc_verifies_and_atc_increments(reader: NfcReader, start_phone: StartPhone) -> None:
    phone = start_phone(atc=99)
    first = await reader.read_tap(4_250, 978, 250, timeout_s=3.0)
    await asyncio.sleep(0.02)  # the phone rebinds its port between activations
    second = await reader.read_tap(1, 978, 250, timeout_s=3.0)

    assert (first.atc, second.atc) == (100, 101)
    assert phone.wait_taps(2, 1.0) and phone.card.atc == 101
    for tap, amount in ((first, "000000004250"), (second, "000000000001")):
        assert tap.token_pan == PAN and tap.psn == PSN
        assert tap.terminal_value(Tag.AMOUNT_AUTHORISED) == bytes.fromhex(amount)
        assert tap.terminal_value(Tag.TRANSACTION_CURRENCY) == bytes.fromhex("0978")
        assert tap.arqc == expected_arqc(IMK, tap)
    assert first.terminal.unpredictable_number != second.terminal.unpredictable_number
    assert PAN not in repr(first)


async def test_no_phone_times_out(reader: NfcReader) -> None:
    started = time.monotonic()
    with pytest.raises(TapTimeout):
        await reader.read_tap(100, 978, 250, timeout_s=0.5)
    assert 0.45 <= time.monotonic() - started < 0.8


async def test_disarm_while_armed_then_rearm(reader: NfcReader, start_phone: StartPhone) -> None:
    armed = asyncio.create_task(reader.read_tap(100, 978, 250, timeout_s=5.0))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    reader.disarm()
    with pytest.raises(TapCancelled):
        await armed
    assert time.monotonic() - started < 0.1

    phone = start_phone()
    tap = await reader.read_tap(200, 978, 250, timeout_s=4.0)  # re-armed while the thread winds down
    assert tap.atc == 1 and phone.wait_taps(1, 1.0)


async def test_task_cancellation_disarms(reader: NfcReader, start_phone: StartPhone) -> None:
    armed = asyncio.create_task(reader.read_tap(100, 978, 250, timeout_s=5.0))
    await asyncio.sleep(0.2)
    armed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await armed
    start_phone()
    assert (await reader.read_tap(300, 978, 250, timeout_s=4.0)).atc == 1


async def test_one_read_at_a_time(reader: NfcReader) -> None:
    armed = asyncio.create_task(reader.read_tap(100, 978, 250, timeout_s=5.0))
    await asyncio.sleep(0.05)
    with pytest.raises(ReaderBusy):
        await reader.read_tap(100, 978, 250, timeout_s=1.0)
    reader.disarm()
    with pytest.raises(TapCancelled):
        await armed


async def test_card_without_an_accepted_application(reader_path: str, start_phone: StartPhone) -> None:
    start_phone()
    async with NfcReader(reader_path, accepted_aids=[bytes.fromhex("A0000000031010")]) as reader:
        with pytest.raises(CardError) as raised:
            await reader.read_tap(100, 978, 250, timeout_s=3.0)
    assert raised.value.reason == "no_accepted_application"


async def test_unplugged_idle_reader_comes_back_within_2_s(
    plug: Plug, reader_path: str, start_phone: StartPhone
) -> None:
    states: list[bool] = []
    async with NfcReader(reader_path, on_state_change=states.append) as reader:
        assert await reader.wait_connected(2.0)
        plug.unplug()
        await _until(lambda: not reader.connected, within_s=1.5)  # idle health check
        with pytest.raises(ReaderUnavailable):
            await reader.read_tap(100, 978, 250, timeout_s=0.3)

        plug.replug()
        replugged = time.monotonic()
        assert await reader.wait_connected(2.0)
        assert time.monotonic() - replugged < 2.0
        start_phone()
        assert (await reader.read_tap(100, 978, 250, timeout_s=3.0)).atc == 1
    assert states == [True, False, True]


async def test_armed_read_survives_a_reconnect(plug: Plug, reader: NfcReader, start_phone: StartPhone) -> None:
    armed = asyncio.create_task(reader.read_tap(700, 978, 250, timeout_s=4.5))
    await asyncio.sleep(0.1)
    plug.unplug()
    await _until(lambda: not reader.connected, within_s=1.5)  # the next sense fails
    plug.replug()
    assert await reader.wait_connected(2.0)
    start_phone()
    tap = await armed
    assert tap.terminal.amount_minor == 700 and tap.arqc == expected_arqc(IMK, tap)


async def test_absent_reader_is_unavailable() -> None:
    async with NfcReader("tty:USB99:pn532") as reader:  # nfcpy: ENODEV on every open
        assert not await reader.wait_connected(0.2)
        with pytest.raises(ReaderUnavailable):
            await reader.read_tap(100, 978, 250, timeout_s=0.3)
        assert not reader.connected


async def test_closed_reader_refuses_reads(reader_path: str) -> None:
    reader = NfcReader(reader_path)
    await reader.start()
    armed = asyncio.create_task(reader.read_tap(100, 978, 250, timeout_s=5.0))
    await asyncio.sleep(0.05)
    await reader.close()
    with pytest.raises(ReaderUnavailable):
        await armed
    with pytest.raises(ReaderUnavailable):
        await reader.read_tap(100, 978, 250, timeout_s=1.0)


async def test_phone_as_a_process(reader: NfcReader, port: int) -> None:
    key_hex = derive_icc_mk(IMK, PAN, PSN).hex().upper()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hardware.sim.phone",
        *("--port", str(port), "--host", "localhost", "--pan", PAN, "--psn", str(PSN)),
        *("--icc-mk-hex", "-", "--atc-start", "7", "--taps", "1"),
        cwd=REPO_ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(key_hex.encode() + b"\n")
        await asyncio.wait_for(process.stdin.drain(), 1.0)
        ready = await asyncio.wait_for(process.stdout.readline(), 5.0)
        assert ready.startswith(b"phone: ready")
        tap = await reader.read_tap(999, 978, 250, timeout_s=4.0)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 3.0)
    finally:
        if process.returncode is None:
            process.kill()
            await asyncio.wait_for(process.wait(), 3.0)
    assert process.returncode == 0
    assert tap.atc == 8 and tap.arqc == expected_arqc(IMK, tap)
    output = (ready + stdout + stderr).decode()
    assert key_hex not in output.upper() and PAN not in output
    assert "tap atc=8" in output


async def _until(condition: Callable[[], bool], *, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
