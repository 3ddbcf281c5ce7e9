"""A wallet phone doing host card emulation over nfcpy: the card end of a tap.

The phone listens as an ISO 14443-4 Type 4A target (SENS_RES ``4400``, a random 4-byte UID
starting ``08``, SAK ``20``), answers RATS with an ATS holding TA/TB/TC, then speaks ISO-DEP
(``hardware.sim.phone_isodep``) and hands each APDU to ``hardware.nfc.card.WalletCard``. With
the ``udp`` driver (``udp:127.0.0.1:PORT``) it meets ``hardware.nfc.reader.NfcReader`` on
loopback, so tests and a simulated counter run the production reader code.

Run it in-process (``PhoneSimulator.start``/``stop``) or as a process::

    python -m hardware.sim.phone --port 40123 --pan 99012345678901234 --psn 45 \\
        --icc-mk-hex - --atc-start 0 --taps 3   # "-": read the key from stdin (not in ps)

Invariants:
- One thread owns the ``ContactlessFrontend``; every nfcpy call in it is bounded (each listen
  window ``LISTEN_WINDOW_MIN_S``-``LISTEN_WINDOW_MAX_S``, each exchange ``command_timeout_s``,
  at most ``FRAMES_PER_ACTIVATION_MAX`` frames per activation).
- Listen windows are long and randomly sized. nfcpy's udp ``listen`` ends its window even in
  the middle of an anticollision, and every ``listen`` closes and rebinds the port, so a poll
  at a window's end is lost and costs the reader its 1 s sense timeout. Few window ends make
  that rare; random lengths keep the windows from locking in step with the reader's 1 s /
  0.5 s timeouts (fixed 0.5 s windows did, and lost every poll of a read). Between two taps
  the rebind is unavoidable: leave about 20 ms, as a real hand does.
- ``stop`` does not wait for the window to end: it pokes the listening socket with a frame
  that makes nfcpy's listen return at once.
- nfcpy's udp listener rebinds its port on every ``listen``; a bind that fails (port taken)
  makes ``listen`` return at once, which is detected and ends the phone with
  ``PhonePortBusy`` after ``BIND_FAILURES_MAX`` attempts instead of spinning.
- A tap counts when the card produced a cryptogram (its ATC moved); ``taps_max`` ends the
  phone after that many.
- Keys are never printed or logged; the PAN only masked.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final, cast

import nfc
import nfc.clf

from hardware.nfc.card import WalletCard, WalletProvisioning
from hardware.nfc.emv import mask_pan
from hardware.sim.phone_isodep import IsoDepListener, build_ats, parse_rats

log = logging.getLogger(__name__)

SENS_RES: Final = bytes.fromhex("4400")  # single-size UID, bit frame anticollision
SEL_RES: Final = bytes.fromhex("20")  # ISO 14443-4 compliant, no NFC-DEP
FRAMES_PER_ACTIVATION_MAX: Final = 64
BIND_FAILURES_MAX: Final = 40
BIND_RETRY_PAUSE_S: Final = 0.05
LISTEN_WINDOW_MIN_S: Final = 1.0
LISTEN_WINDOW_MAX_S: Final = 2.0
BIND_FAILURE_ELAPSED_S: Final = 0.2  # nfcpy's udp listen never returns sooner unless bind failed
STOP_POKE_INTERVAL_S: Final = 0.1
POKE_FRAME: Final = b"106A 00"  # not anticollision: nfcpy's listen returns it as a tt2_cmd
COMMAND_TIMEOUT_S: Final = 1.0
READY_MARGIN_S: Final = 0.02  # the socket binds right after the ready flag is set


class PhonePortBusy(RuntimeError):
    """Another listener holds the UDP port; nfcpy cannot bind it."""


def _udp_address(path: str) -> tuple[str, int]:
    kind, _, rest = path.partition(":")
    host, _, port = rest.rpartition(":")
    if kind != "udp" or not port.isdigit():
        raise ValueError(f"the phone simulator speaks nfcpy's udp driver: 'udp:HOST:PORT', got {path!r}")
    return socket.gethostbyname(host or "localhost"), int(port)


def random_uid() -> bytes:
    """A random single-size NFCID1 (first byte ``08``), new for each activation as phones do."""
    return b"\x08" + os.urandom(3)


class PhoneSimulator:
    def __init__(
        self,
        path: str,
        card: WalletCard,
        *,
        taps_max: int | None = None,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
        fwi: int = 10,
        uid_factory: Callable[[], bytes] = random_uid,
        on_tap: Callable[[int], None] | None = None,
    ) -> None:
        if taps_max is not None and taps_max < 1:
            raise ValueError("taps_max must be positive or None")
        self._path = path
        self._card = card
        self._taps_max = taps_max
        self._poke_address = _udp_address(path)
        self._command_timeout_s = command_timeout_s
        self._ats = build_ats(fwi=fwi)
        self._uid_factory = uid_factory
        self._on_tap = on_tap
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._taps = 0
        self._taps_changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def taps(self) -> int:
        return self._taps

    @property
    def card(self) -> WalletCard:
        return self._card

    def start(self) -> None:
        """Run the phone in a daemon thread (``run`` in the background)."""
        if self._thread is not None:
            raise RuntimeError("phone already started")
        self._thread = threading.Thread(target=self._run_in_thread, name=f"phone {self._path}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask ``run`` to return; safe from any thread and from signal handlers."""
        self._stop.set()
        self._poke()

    def stop(self, timeout_s: float = 3.0) -> None:
        """Stop the phone thread and wait for it (up to ``timeout_s``)."""
        self.request_stop()
        thread = self._thread
        if thread is None:
            return
        deadline = time.monotonic() + timeout_s
        while thread.is_alive() and time.monotonic() < deadline:
            thread.join(STOP_POKE_INTERVAL_S)
            self._poke()  # the first poke may have fallen between two listens
        if thread.is_alive():
            log.warning("phone thread did not stop within %.1f s", timeout_s)

    def _poke(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as poker:
            poker.sendto(POKE_FRAME, self._poke_address)

    def wait_listening(self, timeout_s: float) -> bool:
        ready = self._listening.wait(timeout_s)
        if ready:
            time.sleep(READY_MARGIN_S)
        return ready

    def wait_taps(self, count: int, timeout_s: float) -> bool:
        with self._taps_changed:
            return self._taps_changed.wait_for(lambda: self._taps >= count, timeout_s)

    def run(self) -> int:
        """Serve taps until ``stop`` or ``taps_max``; returns the number of taps served."""
        clf = nfc.ContactlessFrontend(self._path)
        try:
            bind_failures = 0
            while not self._stop.is_set() and (self._taps_max is None or self._taps < self._taps_max):
                target = nfc.clf.LocalTarget("106A", sens_res=SENS_RES, sdd_res=self._uid_factory(), sel_res=SEL_RES)
                self._listening.set()
                started = time.monotonic()
                activated = clf.listen(target, random.uniform(LISTEN_WINDOW_MIN_S, LISTEN_WINDOW_MAX_S))
                if activated is None:
                    if time.monotonic() - started < BIND_FAILURE_ELAPSED_S:
                        bind_failures += 1
                        if bind_failures >= BIND_FAILURES_MAX:
                            raise PhonePortBusy(f"cannot listen on {self._path}: port in use")
                        self._stop.wait(BIND_RETRY_PAUSE_S)
                    continue
                bind_failures = 0
                if activated.tt4_cmd is not None and self._serve_activation(clf, bytes(activated.tt4_cmd)):
                    self._count_tap()
            return self._taps
        finally:
            clf.close()

    def _run_in_thread(self) -> None:
        try:
            self.run()
        except Exception as error:  # noqa: BLE001 - kept for the owner to inspect
            log.error("phone stopped: %s", error)
            self.error = error

    def _serve_activation(self, clf: nfc.ContactlessFrontend, rats: bytes) -> bool:
        """One activation in the reader's field; True if the card produced a cryptogram."""
        try:
            fsd = parse_rats(rats)
        except ValueError:
            return False
        self._card.reset()
        atc_before = self._card.atc
        listener = IsoDepListener(self._card.handle_apdu, fsd)
        frame: bytes | None = self._ats
        for _ in range(FRAMES_PER_ACTIVATION_MAX):
            try:
                received = clf.exchange(bytearray(frame) if frame is not None else None, self._command_timeout_s)
            except nfc.clf.CommunicationError:
                break  # RFOFF or silence: the reader is gone
            if received is None:
                break
            frame = listener.on_block(bytes(cast(bytearray, received)))
            if listener.deselected:
                clf.exchange(bytearray(frame or b""), 0)  # send the DESELECT answer, wait for nothing
                break
        return self._card.atc != atc_before

    def _count_tap(self) -> None:
        with self._taps_changed:
            self._taps += 1
            self._taps_changed.notify_all()
        if self._on_tap is not None:
            self._on_tap(self._card.atc)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hardware.sim.phone", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="UDP port shared with the reader")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--pan", required=True, help="token PAN, 12-19 digits")
    parser.add_argument("--psn", type=int, default=0, help="PAN sequence number 0-99")
    parser.add_argument("--icc-mk-hex", required=True, help="ICC master key (AC), 32 hex digits; '-' reads stdin")
    parser.add_argument("--atc-start", type=int, default=0, help="counter value; the first tap uses ATC+1")
    parser.add_argument("--expiry", default="3012", help="YYMM")
    parser.add_argument("--dki", type=int, default=1, help="derivation key index put into 9F10")
    parser.add_argument("--taps", type=int, default=0, help="exit after this many taps (0: run until SIGTERM)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    key_hex = sys.stdin.readline().strip() if args.icc_mk_hex == "-" else args.icc_mk_hex
    # Messages never echo the key: argparse would print a rejected value verbatim.
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        print("phone: --icc-mk-hex must be 32 hex digits", file=sys.stderr)
        return 2
    try:
        provisioning = WalletProvisioning(
            token_pan=args.pan,
            psn=args.psn,
            icc_mk_ac=key,
            expiry_yymm=args.expiry,
            derivation_key_index=args.dki,
        )
        card = WalletCard(provisioning, atc=args.atc_start)
    except ValueError as error:  # these messages name the field, never its value
        print(f"phone: invalid provisioning: {error}", file=sys.stderr)
        return 2
    phone = PhoneSimulator(
        f"udp:{args.host}:{args.port}",
        card,
        taps_max=args.taps or None,
        on_tap=lambda atc: print(f"phone: tap atc={atc}", flush=True),
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: phone.request_stop())
    print(f"phone: ready udp:{args.host}:{args.port} pan={mask_pan(args.pan)} atc={card.atc}", flush=True)
    try:
        taps = phone.run()
    except PhonePortBusy as error:
        print(f"phone: {error}", file=sys.stderr)
        return 1
    print(f"phone: done taps={taps} atc={card.atc}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
