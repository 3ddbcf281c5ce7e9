"""Taps over nfcpy's real ``udp`` driver on loopback: a phone simulator thread as the card,
``NfcReader`` as the terminal, each test on its own free UDP port.

``expected_arqc`` is the issuer's recipe (what the gateway does with its IMK), written with
pyemv only. ``Plug`` makes the reader's device vanish and come back the way a pulled USB
reader does in nfcpy: every call raises ``OSError(ENODEV)`` and re-opening finds nothing.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import nfc.clf.device
import pytest

from tests.emv_issuer import derive_icc_mk, expected_arqc  # noqa: F401  (re-exported to the tests here)
from hardware.nfc import NfcReader, WalletCard, WalletProvisioning
from hardware.sim.phone import PhoneSimulator

IMK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
PAN = "99012345678901234"
PSN = 45


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("0.0.0.0", 0))  # nfcpy's listener binds 0.0.0.0:PORT
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def port() -> int:
    return free_udp_port()


@pytest.fixture
def reader_path(port: int) -> str:
    return f"udp:127.0.0.1:{port}"


@pytest.fixture
def provisioning() -> WalletProvisioning:
    return WalletProvisioning(PAN, PSN, derive_icc_mk(IMK, PAN, PSN))


@pytest.fixture
def start_phone(port: int, provisioning: WalletProvisioning) -> Iterator[Callable[..., PhoneSimulator]]:
    """Start a phone thread on the test's port (named ``localhost`` so ``Plug`` spares it)."""
    phones: list[PhoneSimulator] = []

    def start(atc: int = 0, **options: Any) -> PhoneSimulator:
        phone = PhoneSimulator(f"udp:localhost:{port}", WalletCard(provisioning, atc=atc), **options)
        phones.append(phone)
        phone.start()
        assert phone.wait_listening(2.0)
        return phone

    yield start
    for phone in phones:
        phone.stop()
        assert phone.error is None


@pytest.fixture
async def reader(reader_path: str) -> AsyncIterator[NfcReader]:
    async with NfcReader(reader_path) as nfc_reader:
        assert await nfc_reader.wait_connected(2.0)
        yield nfc_reader


class _Unpluggable:
    def __init__(self, device: Any, plug: Plug) -> None:
        self._device = device
        self._plug = plug

    def __getattr__(self, name: str) -> Any:
        if not self._plug.plugged:
            if name == "close":
                self._device.close()  # free the real socket, from the thread that owns it
            raise OSError(errno.ENODEV, "reader unplugged")
        return getattr(self._device, name)


class Plug:
    def __init__(self, path: str) -> None:
        self.path = path
        self.plugged = True

    def connect(self, original: Callable[[str], Any], path: str) -> Any:
        if path != self.path:
            return original(path)
        if not self.plugged:
            return None
        return _Unpluggable(original(path), self)

    def unplug(self) -> None:
        self.plugged = False

    def replug(self) -> None:
        self.plugged = True


@pytest.fixture
def plug(reader_path: str, monkeypatch: pytest.MonkeyPatch) -> Plug:
    socket_plug = Plug(reader_path)
    original = nfc.clf.device.connect
    monkeypatch.setattr(nfc.clf.device, "connect", lambda path: socket_plug.connect(original, path))
    return socket_plug
