"""An attacker's relay at the counter: a wallet phone that captured one genuine GPO answer and
plays it back byte for byte on every later tap.

It is the real phone simulator (``hardware.sim.phone.PhoneSimulator`` over nfcpy's udp driver,
in a thread of the test process) around a ``WalletCard`` that answers SELECTs as the genuine
applet does and, once it has a cryptogram, never computes another: the same ATC, ARQC and
issuer data whatever amount or unpredictable number the reader sends.
"""

from __future__ import annotations

import threading
from typing import Any, Final

from hardware.nfc import apdu
from hardware.nfc.card import WalletCard, WalletProvisioning
from hardware.sim.phone import PhoneSimulator

GPO_INS: Final = 0xA8
LISTEN_READY_S: Final = 2.0
STOP_TIMEOUT_S: Final = 3.0


class ReplayingCard(WalletCard):
    """The genuine applet until its first cryptogram; that answer, replayed, ever after."""

    def __init__(self, provisioning: WalletProvisioning, *, atc: int) -> None:
        super().__init__(provisioning, atc=atc)
        self._lock = threading.Lock()
        self.captured: bytes | None = None
        self.replay_count = 0

    def handle_apdu(self, command: bytes) -> bytes:
        is_gpo = len(command) >= 2 and command[1] == GPO_INS
        with self._lock:
            if is_gpo and self.captured is not None:
                self.replay_count += 1
                return self.captured
        response = super().handle_apdu(command)
        if is_gpo and response[-2:] == apdu.SW_OK.to_bytes(2, "big"):  # a cryptogram
            with self._lock:
                self.captured = response
        return response


class RelayPhone:
    """``ReplayingCard`` in the field of the agent's reader on ``udp:127.0.0.1:PORT``."""

    def __init__(self, port: int, provisioning: dict[str, Any]) -> None:
        self.card = ReplayingCard(
            WalletProvisioning(token_pan=provisioning["token_pan"], psn=int(provisioning["psn"]),
                               icc_mk_ac=bytes.fromhex(provisioning["icc_master_key"]),
                               expiry_yymm=provisioning["expiry_yymm"]),
            atc=int(provisioning["atc"]))
        self._phone = PhoneSimulator(f"udp:127.0.0.1:{port}", self.card)

    def start(self) -> None:
        self._phone.start()
        assert self._phone.wait_listening(LISTEN_READY_S), "the relay phone is not listening"

    def stop(self) -> None:
        self._phone.stop(STOP_TIMEOUT_S)
        assert self._phone.error is None, self._phone.error
