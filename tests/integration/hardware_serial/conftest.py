"""Fixtures for the serial-device tests: real pty pairs, opened links, and a leak check."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from hardware.serial.transport import SerialLink, SerialSettings, open_serial
from hardware.sim.pty import PtyNullModem, PtyPort, RawPty, open_raw_pty


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
async def no_fd_leak() -> AsyncIterator[None]:
    # Async so that it runs inside the test's event loop: the loop's own descriptors are
    # present both before and after and do not count as leaks.
    before = _open_fds()
    yield
    leaked = {}
    for fd in _open_fds() - before:
        try:
            leaked[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            continue  # the descriptor listdir itself used
    assert not leaked, f"descriptors left open: {leaked}"


@pytest.fixture
def raw_pty() -> Iterator[RawPty]:
    with open_raw_pty() as pty:
        yield pty


@pytest.fixture
def null_modem() -> Iterator[PtyNullModem]:
    with PtyNullModem() as modem:
        yield modem


@pytest.fixture
def far_end(raw_pty: RawPty) -> PtyPort:
    """The device side of ``raw_pty``: a simulator or a hand-played register writes here."""
    return PtyPort(raw_pty.master_fd)


@pytest.fixture
async def link(raw_pty: RawPty) -> AsyncIterator[SerialLink]:
    """Our side of ``raw_pty``, opened like a real port."""
    serial_link = await open_serial(SerialSettings.usb_cdc(raw_pty.slave_path))
    yield serial_link
    await serial_link.close()
